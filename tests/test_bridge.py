"""The bridge's throttle (#3): redraws are rate-limited, deferred rather than dropped."""

from __future__ import annotations

import threading

import nbaccel
from nbaccel.ui import panel_for
from nbaccel.ui.bridge import Throttle
from tests.conftest import SMALL, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_calls_inside_the_interval_wait_for_the_next_tick():
    clock, calls = FakeClock(), []
    throttle = Throttle(lambda: calls.append(clock.now), interval=3600, clock=clock)
    throttle()
    throttle()
    throttle()
    assert calls == [100.0]  # the 2nd and 3rd are deferred to one timer, not run
    clock.now += 1
    throttle(now=True)  # the last event of a run draws at once
    assert calls == [100.0, 101.0]
    throttle.cancel()
    wait_for(lambda: not any(t.name == "nbaccel-redraw" for t in threading.enumerate()))


def test_a_deferred_call_runs_once_the_interval_has_passed():
    calls = []
    throttle = Throttle(lambda: calls.append(1), interval=0.05)
    throttle()
    throttle()
    assert len(calls) == 1
    wait_for(lambda: len(calls) == 2, timeout=10)


def test_a_panel_opened_mid_run_replays_what_it_missed(digits_high):
    run = nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=3, stop="none", **SMALL
    )
    wait_for(lambda: len(run.history) >= 1)
    panel = panel_for(run, charts="widget")
    run.wait(timeout=60)
    val_loss = next(t for t in panel.chart.widget.data if t.name == "val loss")
    assert list(val_loss.x) == [1, 2, 3]
    assert "finished" in panel.status.value
    assert not any(t.name == "nbaccel-redraw" for t in threading.enumerate())
