"""nbaccel.audit() on the digits with injected faults: recall and false alarms per fault.

    python benchmarks/audit_faults.py                       # test_resnet and resnet18 from
                                                            # digits 0-4, EfficientNet-Lite0
    python benchmarks/audit_faults.py --backbones test_resnet

Each backbone's weights: test_resnet and resnet18 pretrained here on digits 0-4 (32 px, 5
epochs, as tests/conftest.py's source_weights), tf_efficientnet_lite0 with real ImageNet
weights (nbaccel.datasets.efficientnet_lite0(), 96 px). One JSON line per backbone.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import nbaccel

ROUTES = {  # backbone -> (image size, near-duplicate threshold)
    "test_resnet": (32, 0.9995),
    "resnet18": (32, 0.9995),
    "tf_efficientnet_lite0": (96, 0.98),
}


def score(audit: nbaccel.Audit, faults: dict) -> dict:
    """Per fault type: found (injected faults the audit names), injected, flagged (what
    the audit reports for that finding) and false (flagged with no injected fault in it).

    A copy is found when one group holds both the original and the copy; a group of
    copies is a false alarm when it holds no injected pair."""
    pairs = {
        "exact_duplicates": faults["exact_duplicates"] + faults["leakage"][:5],
        "near_duplicates": faults["leakage"][5:],
        "leakage": faults["leakage"],
    }
    result = {}
    for finding, injected in pairs.items():
        groups = [{str(item) for item in g["items"]} for g in getattr(audit, finding)]
        found = sum(any({str(a), str(b)} <= g for g in groups) for a, b in injected)
        false = sum(not any({str(a), str(b)} <= g for a, b in injected) for g in groups)
        result[finding] = _figures(found, len(injected), len(groups), false)
    for finding in ("mislabels", "outliers", "corrupt"):
        injected = {str(p) for p in faults[finding]}
        flagged = {str(p) for p in audit.files(finding)}
        result[finding] = _figures(
            len(injected & flagged),
            len(injected),
            len(flagged),
            len(flagged - injected),
        )
    return result


def _figures(found: int, injected: int, flagged: int, false: int) -> dict:
    return dict(
        found=found,
        injected=injected,
        recall=round(found / injected, 3),
        flagged=flagged,
        false=false,
        false_share=round(false / flagged, 3) if flagged else 0.0,
    )


def source_weights(backbone: str, cache: Path) -> Path:
    """`backbone` trained 5 epochs on digits 0-4 at 32 px, saved as a state dict."""
    path = cache / f"{backbone}_digits0-4.pth"
    if not path.is_file():
        low = nbaccel.datasets.digits(range(5), root=cache)
        run = nbaccel.fasttrain(
            low,
            backbone=backbone,
            pretrained=False,
            image_size=32,
            precision="fp32",
            epochs=5,
            stop="none",
            background=False,
            checkpoint=False,
        )
        torch.save(run.model.state_dict(), path)
    return path


def measure(backbone: str, root: Path) -> dict:
    folder, faults = nbaccel.datasets.digits_with_faults(root / "faults")
    if backbone == "tf_efficientnet_lite0":
        weights = nbaccel.datasets.efficientnet_lite0()
    else:
        weights = source_weights(backbone, root)
    size, near = ROUTES[backbone]
    audit = nbaccel.audit(
        folder,
        backbone=backbone,
        pretrained=weights,
        image_size=size,
        near_duplicate=near,
    )
    return dict(
        name="audit_faults",
        backbone=backbone,
        weights=str(weights.name),
        image_size=size,
        near_duplicate=near,
        images=len(audit.items),
        features_s=round(audit.timings["features_s"], 2),
        checks_s=round(audit.timings["checks_s"], 3),
        device=f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
        **score(audit, faults),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(ROUTES))
    parser.add_argument("--root", default=None, help="a cache folder (default: temp)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="nbaccel-audit-"))
    for backbone in args.backbones:
        start = time.perf_counter()
        result = measure(backbone, root)
        result["total_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
