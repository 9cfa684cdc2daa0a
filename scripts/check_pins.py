"""Prints each pinned package's installed version; exits 1 if one differs from its pin.

python scripts/check_pins.py constraints.txt constraints-colab.txt

Run after installing with `pip install -c` of the same files (make setup-colab, issue #12):
pip cannot upgrade a constrained package, and this proves that nothing did.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def pins(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


def main(paths: list[str]) -> int:
    wrong = []
    for path in paths:
        for name, pinned in pins(Path(path)).items():
            try:
                installed = version(name)
            except PackageNotFoundError:
                installed = "missing"
            # torch's local tag (2.14.1+cpu) is the same release as the pin 2.14.1
            same = installed.split("+")[0] == pinned.split("+")[0]
            print(
                f"  {name:<16} {installed:<12} {'ok' if same else 'pinned ' + pinned}"
            )
            if not same:
                wrong.append(name)
    if wrong:
        print(f"check_pins: not as pinned: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
