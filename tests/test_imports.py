"""Import rules (#2): the core runs with the notebook libraries absent; import is cheap."""

import ast
import subprocess
import sys
from pathlib import Path

BLOCK = "import sys\nfor name in ('IPython', 'ipywidgets', 'plotly', 'anywidget'):\n    sys.modules[name] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )


def test_core_imports_and_trains_with_notebook_libraries_blocked(tmp_path):
    code = BLOCK + (
        "import nbaccel, nbaccel.core\n"
        f"path = nbaccel.datasets.digits(range(2), root={str(tmp_path)!r})\n"
        "run = nbaccel.fasttrain(path, backbone='test_resnet', pretrained=False, image_size=32,"
        " epochs=1, background=False)\n"
        "print(run.status, len(run.history))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["finished", "1"]


def test_blocking_really_blocks():
    result = run_python(BLOCK + "import plotly\n")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_import_loads_no_notebook_library_and_starts_no_cuda():
    code = (
        "import sys, nbaccel, torch\n"
        "print(sorted(m for m in ('IPython', 'ipywidgets', 'plotly') if m in sys.modules))\n"
        "print(torch.cuda.is_initialized())\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "False"]


# --- the import structure (#11) ------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "nbaccel"


def import_graph() -> dict[str, set[str]]:
    """module -> the nbaccel modules it imports, read from the source: module-level,
    function-level and `if TYPE_CHECKING:` imports alike."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def longest_chain(graph: dict[str, set[str]], start: str, inside: str) -> list[str]:
    """The longest path of imports from `start` that stays inside the `inside` package;
    raises on a cycle."""

    def walk(module: str, path: tuple[str, ...]) -> list[str]:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        best = [module]
        for dependency in sorted(graph[module]):
            if dependency.startswith(inside):
                chain = [module, *walk(dependency, (*path, module))]
                best = chain if len(chain) > len(best) else best
        return best

    return walk(start, ())


def test_no_import_cycle_anywhere_in_the_package():
    graph = import_graph()
    assert "nbaccel.core.loop" in graph and "nbaccel.ui.bridge" in graph
    for module in graph:
        longest_chain(graph, module, "nbaccel")  # raises naming the cycle


def test_the_core_import_chain_is_at_most_seven_modules_deep():
    graph = import_graph()
    chain = longest_chain(graph, "nbaccel.core", "nbaccel.core")  # its __init__ first
    assert len(chain) <= 7, " -> ".join(chain)


def test_events_is_a_leaf():
    assert import_graph()["nbaccel.core.events"] == set()
