"""Text as people read it: durations, parameter counts, and the panel's status lines."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Optional

from nbaccel.core import (
    Comparison,
    Progress,
    RunEnded,
    RunStarted,
    Savings,
)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_saved(seconds: float) -> str:
    """ "12 s saved", or "12 s lost" when the run is slower than the baseline."""
    return f"{format_seconds(abs(seconds))} {'saved' if seconds >= -0.5 else 'lost'}"


def format_count(count: int) -> str:
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    if count >= 1e3:
        return f"{count / 1e3:.1f}k"
    return str(count)


def savings_html(
    savings: Optional[Savings], progress: Optional[Progress], best: Optional[dict]
) -> str:
    """The headline: saved so far and projected (or measured) for the same epochs as the
    baseline, with the run's best accuracy beside it (the time is compared at equal epochs;
    only compare() compares at equal accuracy), and a tooltip that says how each number
    was obtained."""
    if savings is None:
        return ""
    if savings.final and savings.epochs_run == 0:
        return "time saved: not measured (the run ended before its first epoch)"
    epochs = savings.epochs_compared
    pace = f"{savings.speedup:.2f}x the baseline's speed"  # measured, once final
    if savings.final:
        headline = (
            f"<b>{format_saved(savings.saved_s)}</b> ({pace}): "
            f"{format_seconds(savings.actual_s)} measured vs "
            f"{format_seconds(savings.baseline_s)} projected for the baseline"
        )
    else:
        done = (
            (progress.epoch - 1 + progress.step / progress.steps_per_epoch)
            if progress
            else 0.0
        )
        elapsed = progress.elapsed_s if progress else savings.calibration_s
        projected = savings.projected_at(done, elapsed)  # the chart's projection too
        speed = savings.baseline_s / projected if projected > 0 else float("inf")
        headline = (
            f"<b>{format_saved(savings.saved_at(done, elapsed))} so far</b>, "
            f"{format_saved(savings.baseline_s - projected)} projected "
            f"({speed:.2f}x the baseline's speed)"
        )
    headline = f"for the same {epochs} epoch{'s' * (epochs != 1)}: {headline}"
    if best is not None:
        headline += (
            f" · this run's best val_acc {best['val_acc']:.3f} (epoch {best['epoch']})"
        )
    causes = "; ".join(
        f"{cause} {seconds:+.1f} s ({how})" for cause, seconds, how in savings.by_cause
    )
    tooltip = (
        f"Baseline: {savings.baseline_how}.\nThis run: {savings.actual_how}.\n"
        f"By cause: {causes}."
    )
    return (  # the dotted underline says: hover for how it was measured
        f"<span title='{html.escape(tooltip, quote=True)}' "
        f"style='border-bottom:1px dotted;cursor:help'>time saved: {headline}</span>"
    )


def status_html(
    status: str,
    start: Optional[RunStarted],
    end: Optional[RunEnded],
    best: Optional[dict],
    stop_requested: bool,
    notes: Sequence[str] = (),
    recall: Sequence[float] = (),
) -> str:
    """The status line: what is happening, the setup and speed-ups, the best epoch so
    far (with its lowest per-class recall, from `recall`), a class-weighted loss, and any
    change of course (notes)."""
    if start is None:
        return "starting…"
    setup = (
        f"{html.escape(start.backbone)} ({html.escape(start.pretrained)}) on "
        f"{start.device}"
        + (
            f" and {start.devices - 1} more ({start.devices} processes)"
            if start.devices > 1
            else ""
        )
        + f", {start.precision} · {start.freeze_depth}/"
        f"{len(start.layer_groups)} groups frozen, "
        f"{format_count(start.trainable_params)} of {format_count(start.total_params)} "
        f"parameters train · {start.train_images} train / {start.val_images} val"
        + (f" / {start.test_images} test" if start.test_images else "")
        + " images"
    )
    used = [line.split(":")[0] for line in start.speedups if ": on (" in line]
    if used:
        details = html.escape("\n".join(start.speedups), quote=True)
        setup += f" · <span title='{details}'>{html.escape(', '.join(used))}</span>"
    # What freeze="auto" chose and why (or the user's own depth), on a line of its own,
    # then any change of course.
    below = f"<br><small>frozen: {html.escape(start.freeze_reason)}</small>"
    if start.balance and not start.balance.startswith("balance: off"):
        below += f"<br><small>{html.escape(start.balance)}</small>"
    below += "".join(f"<br><i>{html.escape(note)}</i>" for note in notes)
    best_text = (
        f" · best epoch {best['epoch']}: val_acc {best['val_acc']:.3f}, "
        f"val_loss {best['val_loss']:.4f}"
        if best
        else ""
    )
    scored = [(r, name) for r, name in zip(recall, start.class_names) if r == r]
    if best and scored:  # the class the best weights find hardest (NaN: no image)
        lowest, name = min(scored)
        best_text += f", lowest recall {lowest:.2f} (class {html.escape(name)})"
    if end is None:
        word = "stopping at the next step" if stop_requested else status
        return f"<b>{word}</b> · {setup}{best_text}{below}"
    color = {"finished": "#1b7f3b", "stopped": "#8a6d00", "failed": "#b00020"}
    why = html.escape(end.reason.splitlines()[0] if end.reason else "")
    return (
        f"<b style='color:{color[end.status]}'>{end.status}</b> ({why}) after "
        f"{format_seconds(end.elapsed_s)}{best_text}{test_html(end)} · {setup}{below}"
    )


def test_html(end: RunEnded) -> str:
    """The test split's score, once, at the end ("" when the data has none)."""
    test = end.test
    if test is None:
        return ""
    if test.error is not None:
        return f" · <b>test split not scored</b>: {html.escape(test.error)}"
    return (
        f" · <b>test_acc {test.test_acc:.3f}</b> (test_loss {test.test_loss:.4f}, "
        f"{test.images} images, epoch {test.epoch}'s weights)"
    )


def comparison_status_html(comparison: Comparison) -> str:
    """Where each of the two runs is."""
    parts = []
    for name, run in comparison.runs().items():
        history = run.history
        where = (
            f"epoch {history[-1]['epoch']}/{run.config.epochs}, "
            f"val_acc {history[-1]['val_acc']:.3f}"
            if history
            else "no epoch yet"
        )
        parts.append(f"{name}: <b>{run.status}</b> ({where})")
    return " · ".join(parts)


def comparison_summary_html(comparison: Comparison) -> str:
    """The figures of an ended comparison as a table, or nothing while it runs: both runs'
    best accuracy side by side, each one's time to the target ("not reached" plainly), the
    speedup at equal accuracy, and how well the projection held."""
    if comparison.status != "finished":
        return ""

    def seconds(value: Optional[float]) -> str:
        return "<b>not reached</b>" if value is None else f"{value:.1f} s"

    target, best, reached = (
        comparison.target,
        comparison.best,
        comparison.time_to_target,
    )
    speedup = comparison.speedup
    rows = [
        ("", "accelerated", "baseline"),
        ("best val_acc", f"{best['accelerated']:.3f}", f"{best['baseline']:.3f}"),
        (
            f"time to val_acc {target:.3f}",
            seconds(reached["accelerated"]),
            seconds(reached["baseline"]),
        ),
        (
            "wall time, whole run",
            seconds(comparison.accelerated_s),
            seconds(comparison.measured_baseline_s),
        ),
        (
            "speedup at equal accuracy",
            "none" if speedup is None else f"{speedup:.2f}x",
            "",
        ),
        (
            "the baseline's time, projected / measured",
            f"{comparison.projection_error:.2f}"
            if comparison.projection_error is not None
            else "",
            "",
        ),
    ]
    body = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<p>{html.escape(comparison.verdict)}</p><table>{body}</table>"
