"""Stopping rules: parse `"patience:3 | target:val_acc>=0.95 | time:10m"` into rule objects.

Each rule looks at the history of epoch rows (and the elapsed time) and says whether it fires;
the first rule that fires ends the run with that rule's reason.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union

METRICS = ("val_loss", "val_acc", "train_loss")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_GRAMMAR = (
    "patience:N[,delta:D][,monitor:METRIC] | target:METRIC>=VALUE | time:90s|10m|1h "
    "| epochs:N | none, terms joined by '|'"
)


def is_better(metric: str, value: float, best: float, delta: float = 0.0) -> bool:
    """True if `value` improves on `best` by more than `delta` (losses go down, acc up)."""
    if metric.endswith("acc"):
        return value > best + delta
    return value < best - delta


@dataclass(frozen=True)
class Patience:
    """Fires when `monitor` has not improved by more than `delta` for `epochs` epochs."""

    epochs: int
    delta: float = 0.0
    monitor: str = "val_loss"
    reason = "patience"

    def fires(self, history: Sequence[dict], elapsed_s: float) -> bool:
        best_index = 0
        for index, row in enumerate(history):
            if is_better(
                self.monitor,
                row[self.monitor],
                history[best_index][self.monitor],
                self.delta,
            ):
                best_index = index
        return len(history) - 1 - best_index >= self.epochs


@dataclass(frozen=True)
class Target:
    """Fires when the last epoch's `metric` meets `value` (e.g. val_acc >= 0.95)."""

    metric: str
    op: str
    value: float
    reason = "target"

    def fires(self, history: Sequence[dict], elapsed_s: float) -> bool:
        return bool(history) and _COMPARE[self.op](history[-1][self.metric], self.value)


@dataclass(frozen=True)
class TimeLimit:
    """Fires once `seconds` of training time (pauses excluded) have passed."""

    seconds: float
    reason = "time"

    def fires(self, history: Sequence[dict], elapsed_s: float) -> bool:
        return elapsed_s >= self.seconds


@dataclass(frozen=True)
class MaxEpochs:
    """Fires after `epochs` completed epochs."""

    epochs: int
    reason = "epochs"

    def fires(self, history: Sequence[dict], elapsed_s: float) -> bool:
        return len(history) >= self.epochs


Rule = Union[Patience, Target, TimeLimit, MaxEpochs]


@dataclass(frozen=True)
class StopRule:
    """A parsed stopping rule: its terms, in the order written."""

    text: str
    rules: tuple[Rule, ...]

    @property
    def monitor(self) -> str:
        """The metric that decides the best epoch: the patience term's, else val_loss."""
        return next(
            (r.monitor for r in self.rules if isinstance(r, Patience)), "val_loss"
        )

    @property
    def time_limit_s(self) -> Optional[float]:
        """The time budget in seconds, checked between steps, or None."""
        return min(
            (r.seconds for r in self.rules if isinstance(r, TimeLimit)), default=None
        )

    def check(self, history: Sequence[dict], elapsed_s: float) -> Optional[str]:
        """The reason of the first rule that fires, or None."""
        return next((r.reason for r in self.rules if r.fires(history, elapsed_s)), None)


def parse_stop_rule(text: str) -> StopRule:
    """Parses the stopping grammar into a StopRule.

    Args:
        text: e.g. "patience:3", "patience:5,delta:0.01 | time:10m", "target:val_acc>=0.95",
            "epochs:4" or "none".

    Returns:
        The parsed StopRule.

    Raises:
        ValueError: naming the bad term and showing the grammar.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"stop rule must be a non-empty string like 'patience:3', got {text!r}"
        )
    terms = [term.strip() for term in text.split("|")]
    rules = []
    for term in terms:
        if term.lower() == "none":
            continue
        try:
            rules.append(_parse_term(term))
        except ValueError as error:
            raise ValueError(
                f"bad stop rule term {term!r} in {text!r}: {error}. Grammar: {_GRAMMAR}"
            ) from None
    return StopRule(text=text.strip(), rules=tuple(rules))


def _parse_term(term: str) -> Rule:
    kind, _, rest = term.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if not rest:
        raise ValueError("missing a value after ':'")
    if kind == "patience":
        return _parse_patience(rest)
    if kind == "target":
        match = re.fullmatch(r"(\w+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)", rest)
        if not match:
            raise ValueError("expected METRIC>=VALUE, e.g. target:val_acc>=0.95")
        metric, op, value = match.groups()
        return _possible(Target(_check_metric(metric), op, _number(value, "target")))
    if kind == "time":
        match = re.fullmatch(r"([-+]?[0-9.]+)\s*([smh]?)", rest.lower())
        if not match:
            raise ValueError("expected a duration like 90s, 10m or 1h")
        seconds = (
            _number(match.group(1), "duration") * _TIME_UNITS[match.group(2) or "s"]
        )
        return TimeLimit(_positive(seconds, "duration"))
    if kind == "epochs":
        return MaxEpochs(_positive_int(rest, "epochs"))
    raise ValueError(f"unknown rule {kind!r}")


def _parse_patience(rest: str) -> Patience:
    epochs_text, *options = [part.strip() for part in rest.split(",")]
    settings: dict = {"epochs": _positive_int(epochs_text, "patience")}
    for option in options:
        key, _, value = option.partition(":")
        key = key.strip().lower()
        if key == "delta":
            settings["delta"] = _number(value, "delta")
            if settings["delta"] < 0:
                raise ValueError("delta must be >= 0")
        elif key == "monitor":
            settings["monitor"] = _check_metric(value.strip())
        else:
            raise ValueError(
                f"unknown patience option {key!r} (use delta:D or monitor:METRIC)"
            )
    return Patience(**settings)


def _possible(target: Target) -> Target:
    """Refuses a target no epoch can meet: accuracies lie in [0, 1], losses are >= 0."""
    low, high = (0.0, 1.0) if target.metric.endswith("acc") else (0.0, math.inf)
    value, op = target.value, target.op
    never = (
        (op == ">=" and value > high)
        or (op == ">" and value >= high)
        or (op == "<=" and value < low)
        or (op == "<" and value <= low)
    )
    if never:
        what = "an accuracy lies between 0 and 1" if high == 1.0 else "a loss is >= 0"
        raise ValueError(f"{target.metric}{op}{value:g} can never be met: {what}")
    return target


def _check_metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return name


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite")
    return value


def _positive(value: float, what: str) -> float:
    if value <= 0:
        raise ValueError(f"{what} must be > 0, got {value:g}")
    return value


def _positive_int(text: str, what: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {text.strip()!r}")
    return int(text)
