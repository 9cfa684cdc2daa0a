"""The quickstart in a real JupyterLab and a real browser (#6): Debian's chromium, driven by
Playwright through its executable path (nothing downloads a browser). The panel appears, its
Plotly chart gets points while later cells run, Stop ends the run, and a screenshot is kept
in build/screenshots/."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "screenshots"
TOKEN = "nbaccel-test"


def find_chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "Debian's chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs it, so CI must have it")
    pytest.skip(message)


@pytest.fixture
def lab(tmp_path, cache):
    """JupyterLab on a free local port, serving a copy of the notebooks."""
    root = tmp_path / "lab"
    shutil.copytree(ROOT / "notebooks", root)
    # The other views run after the quickstart's cells, in its kernel (no second start).
    quickstart = nbformat.read(root / "quickstart.ipynb", 4)
    quickstart.cells += [nbformat.v4.new_code_cell(source) for source in VIEWS.values()]
    nbformat.write(quickstart, root / "quickstart.ipynb")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Render every cell (JupyterLab 4 otherwise draws only those in view), no news popup.
    settings = tmp_path / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    # autoStartDefaultKernel: no "Select Kernel" dialog over the notebook when the
    # kernel list loads late on a first start (make demo ships the same setting).
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none", "autoStartDefaultKernel": true}'
    )
    (settings / "apputils-extension").mkdir()
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    env = dict(
        os.environ,
        NBACCEL_CACHE=str(cache),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True",
            f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "lab.log").read_text()
                assert time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# The other views a user sees, each kept as a screenshot: the picker panel (%fasttrain
# with no data), a finished run's panel on a Kaggle-style train/ + test/ folder (its test
# split scored at the end), and the comparison view. Appended to the quickstart's copy.
VIEWS = {
    "setup": """import shutil
from pathlib import Path

digits = nbaccel.datasets.digits(range(3))
kaggle = Path("kaggle")
shutil.copytree(digits / "train", kaggle / "train", dirs_exist_ok=True)
shutil.copytree(digits / "val", kaggle / "test", dirs_exist_ok=True)""",
    "picker": "%fasttrain",
    "finished": "run = %fasttrain kaggle --backbone test_resnet --pretrained no "
    "--image-size 32 --epochs 3 --stop none --wait",
    "comparison": "cmp = %fasttrain digits --backbone test_resnet --pretrained no "
    "--image-size 32 --epochs 2 --compare",
    "comparison-wait": "cmp.wait();",
    "batch": "run.show_batch()",
    "interpretation": "run.interpret()",
}


def run_cell(page, cell) -> None:
    """Clicks into a code cell, runs it (Ctrl+Enter) and waits for its execution count.
    A freshly opened notebook can drop the first key press while its editor settles, so
    an unchanged "[ ]" prompt after a few seconds gets one more press."""
    prompt = cell.locator(".jp-InputPrompt")
    for attempt in range(2):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Control+Enter")
        try:
            page.wait_for_function(
                "p => /\\[(\\d+|\\*)\\]/.test(p.textContent)",
                arg=prompt.element_handle(),
                timeout=5_000,
            )
            break
        except Exception:
            if attempt:
                raise
    # Then until it has finished ("[*]" is running), and did not fail.
    page.wait_for_function(
        "p => /\\[\\d+\\]/.test(p.textContent)",
        arg=prompt.element_handle(),
        timeout=300_000,  # a bound, not a wait: the cell's own end is awaited
    )
    errors = cell.locator(".jp-OutputArea-output[data-mime-type*='stderr']")
    assert "Error" not in " ".join(errors.all_inner_texts()), errors.all_inner_texts()


def test_quickstart_panel_charts_and_stop_in_chromium(lab):
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{lab}/lab/tree/quickstart.ipynb?token={TOKEN}")
            page.wait_for_selector(
                ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000
            )
            # Run the cells one at a time down to "the notebook stays usable" (the cell
            # after %fasttrain), as a reader would; the last cell (run.wait()) is left.
            notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", 4)
            magic = next(
                i
                for i, cell in enumerate(notebook.cells)
                if cell.source.startswith("run = %fasttrain")
            )
            cells = page.locator(".jp-Notebook .jp-Cell")
            for index, cell in enumerate(notebook.cells[: magic + 3]):
                if cell.cell_type == "code":
                    run_cell(page, cells.nth(index))

            # The panel is shown and its chart gets points while the run trains.
            plot = cells.nth(magic).locator(".js-plotly-plot")
            plot.wait_for(timeout=180_000)
            page.wait_for_function(
                """plot => {
                    const loss = (plot.data || []).find(t => t.name === 'train loss');
                    return loss && (loss.x || []).length >= 2;
                }""",
                arg=plot.element_handle(),
                timeout=120_000,
            )
            usable = page.locator(
                ".jp-OutputArea-output pre", has_text="epochs done so far"
            )
            usable.wait_for(timeout=60_000)
            assert usable.inner_text().startswith("running")  # ran while it trained
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            cells.nth(magic).screenshot(path=str(SCREENSHOTS / "running.png"))

            # The run's own panel's Stop (the source model's panel above has one too).
            cells.nth(magic).get_by_role("button", name="Stop").click()
            status = cells.nth(magic).get_by_text("stopped (user)")
            status.wait_for(timeout=60_000)
            points = plot.evaluate(
                "plot => Object.fromEntries(plot.data.map(t => [t.name, (t.x || []).length]))"
            )
            assert points["train loss"] >= 2 and points["images/s"] >= 2, points
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shot = SCREENSHOTS / "quickstart.png"
            cells.nth(magic).screenshot(path=str(shot))  # the cell with its panel
            assert shot.stat().st_size > 10_000

            # The other views, below the quickstart's own cells, in the same kernel.
            first = len(notebook.cells)
            for index, name in enumerate(VIEWS, start=first):
                run_cell(page, cells.nth(index))
                if name in ("picker", "finished", "comparison-wait"):
                    view = "comparison" if name == "comparison-wait" else name
                    cell = cells.nth(index if view != "comparison" else index - 1)
                    cell.scroll_into_view_if_needed()
                    page.wait_for_timeout(500)  # Plotly's last redraw
                    cell.screenshot(path=str(SCREENSHOTS / f"{view}.png"))
                if name in ("batch", "interpretation"):
                    cells.nth(index).locator("img").first.wait_for(timeout=60_000)
            texts = cells.nth(first + 2).inner_text()
            assert "finished (epochs)" in texts and "test_acc" in texts, texts
            assert "speedup at equal accuracy" in cells.nth(first + 3).inner_text()
            batch = cells.nth(first + 5)
            assert batch.locator("img").count() == 16, batch.inner_text()
            batch.screenshot(path=str(SCREENSHOTS / "batch.png"))

            # run.interpret(): a click on the heatmap's top-left cell (true 0, predicted
            # 0) shows that cell's images below it.
            interpretation = cells.nth(first + 6)
            heatmap = interpretation.locator(".js-plotly-plot .nsewdrag").first
            heatmap.wait_for(timeout=60_000)
            box = heatmap.bounding_box()
            page.mouse.click(box["x"] + box["width"] / 6, box["y"] + box["height"] / 6)
            picked = interpretation.get_by_text("true 0, predicted 0")
            picked.wait_for(timeout=30_000)
            interpretation.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            interpretation.screenshot(path=str(SCREENSHOTS / "interpretation.png"))

            # The finished run's panel: its batch and its interpretation, opened there.
            finished = cells.nth(first + 2)
            finished.get_by_text("where the model is wrong").click()
            table = finished.locator("th", has_text="precision")  # the per-class table
            table.wait_for(timeout=60_000)
            finished.get_by_text("training batch").click()
            finished.get_by_text("as the model sees them").wait_for(timeout=30_000)
            finished.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            finished.screenshot(path=str(SCREENSHOTS / "finished-sections.png"))
            # ... and its data audit (the run's model), with its tabs of findings.
            finished.get_by_text("where the model is wrong").click()  # fold it again
            finished.get_by_text("training batch").click()
            finished.get_by_text("data audit").click()
            finished.get_by_text("likely mislabels:").first.wait_for(timeout=60_000)
            finished.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            finished.screenshot(path=str(SCREENSHOTS / "finished-audit.png"))
        except BaseException:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(
                path=str(SCREENSHOTS / "quickstart-failed.png"), full_page=True
            )
            raise
        finally:
            browser.close()
