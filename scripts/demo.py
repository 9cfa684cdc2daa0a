"""The demo from a script: pretrain a small model on digits 0-4, then fine-tune it on 5-9.

The 0-4 weights stand in for timm's hub weights, which need internet access. Run it with
`make demo`; the notebook version with live charts comes with nbaccel's front end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import nbaccel


def show(event: nbaccel.Event) -> None:
    """A subscriber: prints what a panel would show."""
    if isinstance(event, nbaccel.RunStarted):
        print(
            f"  {event.backbone} on {event.device} ({event.precision}), "
            f"{event.train_images} train / {event.val_images} val images, "
            f"{event.trainable_params:,} of {event.total_params:,} parameters train"
        )
        print(f"  {event.freeze_reason}")
    elif isinstance(event, nbaccel.EpochEnded):
        print(
            f"  epoch {event.epoch}: train_loss {event.train_loss:.3f}  "
            f"val_loss {event.val_loss:.3f}  val_acc {event.val_acc:.3f}  "
            f"{event.images_per_s:.0f} img/s  {event.epoch_s:.1f}s"
        )
    elif isinstance(event, nbaccel.RunEnded):
        print(f"  ended: {event.status} ({event.reason}) after {event.elapsed_s:.1f}s")


def main() -> int:
    common = dict(backbone="resnet18", image_size=32)
    print(
        "1) Pretraining resnet18 from scratch on digits 0-4 (stands in for hub weights)"
    )
    source = nbaccel.fasttrain(
        nbaccel.datasets.digits(range(5)), pretrained=False, epochs=3, **common
    )
    source.subscribe(show)
    source.wait()
    weights = Path(tempfile.gettempdir()) / "nbaccel-demo-digits0-4.pth"
    torch.save(source.model.state_dict(), weights)

    print(
        "2) Fine-tuning those weights on digits 5-9 (freeze='auto', stop='patience:2')"
    )
    run = nbaccel.fasttrain(
        nbaccel.datasets.digits(range(5, 10)),
        pretrained=weights,
        epochs=8,
        stop="patience:2",
        **common,
    )
    run.subscribe(show)
    run.wait()
    print(f"best epoch: {run.best}")
    return 0 if run.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
