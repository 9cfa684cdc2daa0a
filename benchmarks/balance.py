"""How balance="auto" was chosen: minority-class recall on class-imbalanced digits.

    python benchmarks/balance.py [--seeds 3] [--ratios 1 2 3 5 10]

The digits transfer task (resnet18 pretrained here on digits 0-4, tuned on 5-9 at 32 px,
nbaccel's defaults otherwise: 20 epochs, patience:3). One class keeps all its training
images, each other class 1/ratio of them (the majority class rotates with the seed); the
validation split stays whole, so its accuracy is the mean recall over classes. Three
remedies: none (balance="off"), the class-weighted loss (balance="weights"), and balanced
sampling as oversampling (each minority image repeated up to the majority's count, as a
folder of copies, balance="off"). One JSON line per run, then a summary per ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import pretrain_source  # noqa: E402

import nbaccel  # noqa: E402

REMEDIES = ("off", "weights", "oversample")


def imbalanced(
    source: Path, target: Path, majority: str, ratio: float, repeat: bool
) -> None:
    """`source`'s train/ and val/ with every class but `majority` cut to 1/ratio in train/;
    with `repeat`, the cut classes' files copied until they match the majority's count."""
    shutil.copytree(source / "val", target / "val")
    classes = sorted(p.name for p in (source / "train").iterdir())
    biggest = len(list((source / "train" / majority).iterdir()))
    for name in classes:
        files = sorted((source / "train" / name).iterdir())
        keep = files if name == majority else files[: max(1, round(len(files) / ratio))]
        out = target / "train" / name
        out.mkdir(parents=True)
        count = max(biggest, len(keep)) if repeat else len(keep)
        for i in range(count):  # cyclically: each kept image about equally often
            file = keep[i % len(keep)]
            shutil.copy(file, out / f"{i // len(keep)}-{file.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratios", type=float, nargs="*", default=[1, 2, 3, 5, 10])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nbaccel-balance-"))
    weights = pretrain_source(root)
    task = nbaccel.datasets.digits(range(5, 10), root=root)
    classes = sorted(p.name for p in (task / "train").iterdir())
    results: dict = {}
    for ratio in args.ratios:
        for seed in range(args.seeds):
            majority = classes[seed % len(classes)]
            for remedy in REMEDIES:
                folder = root / f"r{ratio}-s{seed}-{remedy}"
                imbalanced(task, folder, majority, ratio, remedy == "oversample")
                run = nbaccel.fasttrain(
                    folder,
                    backbone="resnet18",
                    pretrained=weights,
                    image_size=32,
                    seed=seed,
                    balance="weights" if remedy == "weights" else "off",
                    baseline="off",
                    checkpoint=False,
                    background=False,
                )
                best = next(
                    e
                    for e in reversed(run.events)
                    if type(e).__name__ == "EpochEnded" and e.epoch == run.best["epoch"]
                )
                recall = dict(zip(run.class_names, best.class_recall))
                minority = statistics.mean(
                    v for k, v in recall.items() if k != majority
                )
                line = dict(
                    ratio=ratio,
                    seed=seed,
                    remedy=remedy,
                    majority=majority,
                    minority_recall=round(minority, 4),
                    majority_recall=round(recall[majority], 4),
                    val_acc=round(run.best["val_acc"], 4),
                    epochs=len(run.history),
                    elapsed_s=round(run.history[-1]["elapsed_s"], 1),
                )
                print(json.dumps(line), flush=True)
                results.setdefault((ratio, remedy), []).append(line)
                shutil.rmtree(folder)
    for (ratio, remedy), lines in results.items():
        mean = {
            key: round(statistics.mean(line[key] for line in lines), 4)
            for key in ("minority_recall", "majority_recall", "val_acc", "elapsed_s")
        }
        print(json.dumps(dict(summary=True, ratio=ratio, remedy=remedy, **mean)))
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
