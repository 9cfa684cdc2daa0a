"""The notebooks run under nbval (pyproject's addopts); these also run on Colab's package
versions, in .venv-colab (`make test-colab`, issue #12)."""

from __future__ import annotations

import pytest

COLAB = {"quickstart.ipynb"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in COLAB:
            item.add_marker(pytest.mark.colab)
