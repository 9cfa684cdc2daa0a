"""Writes the README's table of fasttrain() options from their one definition (TrainConfig's
fields): run `python scripts/make_readme.py` after changing an option. A test fails when the
README's table and the definitions disagree."""

from __future__ import annotations

import re
from pathlib import Path

from nbaccel import list_options

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- options: written by scripts/make_readme.py from TrainConfig -->"
END = "<!-- /options -->"


def options_table() -> str:
    """One row per option: keyword, flag, default and what it does."""
    rows = ["| keyword | flag | default | what it does |", "|---|---|---|---|"]
    for spec in list_options():
        what = spec.help.replace("|", "\\|")
        rows.append(f"| `{spec.name}` | `{spec.flag}` | `{spec.default!r}` | {what} |")
    return "\n".join(rows)


def main() -> None:
    text = README.read_text()
    block = f"{BEGIN}\n{options_table()}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block to fill")
    README.write_text(pattern.sub(lambda _: block, text))


if __name__ == "__main__":
    main()
