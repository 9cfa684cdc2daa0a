"""Import rules (#2): the core runs with the notebook libraries absent; import is cheap."""

import subprocess
import sys

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
