"""A real kernel through nbclient (#3): training runs in the background while later cells
execute, the panel's widgets update from the training side, and a wait cell ends it."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

EPOCHS = 5  # seconds of training: the cells after the magic run meanwhile


def test_kernel_stays_responsive_while_a_run_trains(tmp_path, digits_high):
    cells = [
        "%load_ext nbaccel",
        f"run = %fasttrain {digits_high} --backbone test_resnet --pretrained no "
        f"--image-size 32 --epochs {EPOCHS} --stop none",
        # Runs while the model trains: the kernel is not blocked by the run.
        "status_during, epochs_during = run.status, len(run.history)\n"
        "print(status_during, epochs_during, 6 * 7)",
        "run.wait()\n"
        f"assert run.status == 'finished' and len(run.history) == {EPOCHS}, run\n"
        "print(run.status, len(run.history))",
    ]
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells]
    )
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    magic_outputs = notebook.cells[1].outputs
    assert any(
        "application/vnd.jupyter.widget-view+json" in out.get("data", {})
        for out in magic_outputs
    ), magic_outputs  # the panel was shown at once
    status, epochs, answer = notebook.cells[2].outputs[0]["text"].split()
    assert status == "running" and int(epochs) < EPOCHS and answer == "42"
    assert notebook.cells[3].outputs[0]["text"].split() == ["finished", str(EPOCHS)]

    # Values set from the run's publisher thread reached the front end over the comm.
    state = notebook.metadata.widgets["application/vnd.jupyter.widget-state+json"]
    texts = [
        model["state"].get("value", "")
        for model in state["state"].values()
        if model["model_name"] in ("HTMLModel", "LabelModel")
    ]
    assert any("finished" in text and "(epochs)" in text for text in texts), texts
    assert any(f"epoch {EPOCHS}/{EPOCHS}" in text for text in texts), texts
