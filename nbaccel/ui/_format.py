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


def format_count(count: int) -> str:
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    if count >= 1e3:
        return f"{count / 1e3:.1f}k"
    return str(count)


def savings_html(savings: Optional[Savings], progress: Optional[Progress]) -> str:
    """The headline: saved so far and projected (or measured), with a tooltip that
    says how each number was obtained."""
    if savings is None:
        return ""
    if savings.final and savings.epochs_run == 0:
        return "time saved: not measured (the run ended before its first epoch)"
    pace = f"{savings.speedup:.2f}x the baseline's speed"
    if savings.final:
        headline = (
            f"<b>{format_seconds(savings.saved_s)} saved</b> against the baseline "
            f"({pace}): {format_seconds(savings.actual_s)} measured vs "
            f"{format_seconds(savings.baseline_s)} projected for the baseline"
        )
    else:
        done = (
            (progress.epoch - 1 + progress.step / progress.steps_per_epoch)
            if progress
            else 0.0
        )
        elapsed = progress.elapsed_s if progress else savings.calibration_s
        headline = (
            f"<b>{format_seconds(savings.saved_at(done, elapsed))} saved so far</b>, "
            f"{format_seconds(savings.saved_s)} projected ({pace})"
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
) -> str:
    """The status line: what is happening, the setup and speed-ups, the best epoch so
    far, and any change of course (notes)."""
    if start is None:
        return "starting…"
    setup = (
        f"{html.escape(start.backbone)} ({html.escape(start.pretrained)}) on "
        f"{start.device}, {start.precision} · {start.freeze_depth}/"
        f"{len(start.layer_groups)} groups frozen, "
        f"{format_count(start.trainable_params)} of {format_count(start.total_params)} "
        f"parameters train · {start.train_images} train / {start.val_images} val images"
    )
    used = [line.split(":")[0] for line in start.speedups if ": on (" in line]
    if used:
        details = html.escape("\n".join(start.speedups), quote=True)
        setup += f" · <span title='{details}'>{html.escape(', '.join(used))}</span>"
    for note in notes:
        setup += f"<br><i>{html.escape(note)}</i>"
    best_text = (
        f" · best epoch {best['epoch']}: val_acc {best['val_acc']:.3f}, "
        f"val_loss {best['val_loss']:.4f}"
        if best
        else ""
    )
    if end is None:
        word = "stopping at the next step" if stop_requested else status
        return f"<b>{word}</b> · {setup}{best_text}"
    color = {"finished": "#1b7f3b", "stopped": "#8a6d00", "failed": "#b00020"}
    why = html.escape(end.reason.splitlines()[0] if end.reason else "")
    return (
        f"<b style='color:{color[end.status]}'>{end.status}</b> ({why}) after "
        f"{format_seconds(end.elapsed_s)}{best_text} · {setup}"
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
    """The figures of an ended comparison as a table, or nothing while it runs."""
    if comparison.status != "finished":
        return ""

    def seconds(value: Optional[float]) -> str:
        return "never" if value is None else f"{value:.1f} s"

    reached = comparison.time_to_target
    rows = [
        (
            "baseline, projected by the accelerated run",
            seconds(comparison.projected_baseline_s),
        ),
        ("baseline, measured", seconds(comparison.measured_baseline_s)),
        (
            "projection error (projected / measured)",
            f"{comparison.projection_error:.2f}",
        ),
        ("accelerated, measured", seconds(comparison.accelerated_s)),
        ("speedup (baseline / accelerated)", f"{comparison.speedup:.2f}x"),
        (
            f"time to val_acc {comparison.target:.3f}: baseline",
            seconds(reached["baseline"]),
        ),
        (
            f"time to val_acc {comparison.target:.3f}: accelerated",
            seconds(reached["accelerated"]),
        ),
    ]
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"
