"""The stopping grammar (#2): parsing, bad terms, and when each rule fires."""

import pytest

from nbaccel.core.stopping import (
    MaxEpochs,
    Patience,
    Target,
    TimeLimit,
    parse_stop_rule,
)


def rows(*val_losses, acc=None):
    return [
        dict(
            epoch=i + 1,
            val_loss=v,
            val_acc=(acc or [0.0] * len(val_losses))[i],
            train_loss=v,
        )
        for i, v in enumerate(val_losses)
    ]


def test_each_term_parses_to_its_rule():
    rule = parse_stop_rule(
        "patience:3,delta:0.01 | target:val_acc>=0.95 | time:10m | epochs:7"
    )
    assert rule.rules == (
        Patience(3, 0.01),
        Target("val_acc", ">=", 0.95),
        TimeLimit(600.0),
        MaxEpochs(7),
    )
    assert parse_stop_rule("time:90s").time_limit_s == 90
    assert parse_stop_rule("time:1h").time_limit_s == 3600
    assert parse_stop_rule("none").rules == ()


def test_patience_counts_epochs_without_improvement():
    rule = parse_stop_rule("patience:2")
    assert rule.check(rows(1.0, 0.9, 0.95), 0) is None
    assert rule.check(rows(1.0, 0.9, 0.95, 0.96), 0) == "patience"


def test_patience_delta_requires_a_real_improvement():
    rule = parse_stop_rule("patience:1,delta:0.1")
    assert rule.check(rows(1.0, 0.95), 0) == "patience"  # 0.05 better is not enough
    assert rule.check(rows(1.0, 0.85), 0) is None


def test_patience_can_monitor_accuracy_which_goes_up():
    rule = parse_stop_rule("patience:1,monitor:val_acc")
    assert rule.monitor == "val_acc"
    assert rule.check(rows(1, 1, acc=[0.5, 0.6]), 0) is None
    assert rule.check(rows(1, 1, acc=[0.6, 0.5]), 0) == "patience"


def test_first_rule_that_fires_gives_the_reason():
    rule = parse_stop_rule("target:val_acc>=0.9 | epochs:2")
    assert rule.check(rows(1.0, acc=[0.95]), 0) == "target"
    assert rule.check(rows(1.0, 1.0, acc=[0.1, 0.2]), 0) == "epochs"
    assert parse_stop_rule("time:5s").check([], 6.0) == "time"


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("patience:x", "patience:x"),
        ("patience:3 | target:acc>0.5", "target:acc>0.5"),
        ("target:val_acc=0.9", "target:val_acc=0.9"),
        ("time:soon", "time:soon"),
        ("epochs:0", "epochs:0"),
        ("patiense:3", "patiense:3"),
        ("patience:3,gamma:1", "patience:3,gamma:1"),
        ("patience:", "patience:"),
    ],
)
def test_a_bad_term_is_a_value_error_naming_it(text, bad):
    with pytest.raises(ValueError, match="bad stop rule term") as info:
        parse_stop_rule(text)
    assert repr(bad) in str(info.value)
    assert "Grammar" in str(info.value)


def test_an_empty_rule_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        parse_stop_rule("  ")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("target:val_acc>=1.5", "can never be met: an accuracy lies between 0 and 1"),
        ("target:val_acc>1", "can never be met: an accuracy lies between 0 and 1"),
        ("patience:3 | target:val_loss<0", "can never be met: a loss is >= 0"),
        ("time:-5s", "duration must be > 0, got -5"),
        ("time:0m", "duration must be > 0, got 0"),
    ],
)
def test_an_impossible_rule_is_refused_with_the_reason(text, why):
    """(#14) A rule that can never fire is refused up front, saying why."""
    with pytest.raises(ValueError, match="bad stop rule term") as info:
        parse_stop_rule(text)
    assert why in str(info.value)
    assert parse_stop_rule("target:val_acc>=1").rules  # reachable: kept
