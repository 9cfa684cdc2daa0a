"""Writes notebooks/*.ipynb (sources only, no outputs): edit the cells here, then run
`python scripts/make_notebooks.py` from the repository root."""

import nbformat
from nbformat.v4 import new_code_cell as code
from nbformat.v4 import new_markdown_cell as md
from nbformat.v4 import new_notebook

REPO = "nbaccel/nbaccel"
meta = {
    "kernelspec": {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    },
    "language_info": {"name": "python"},
}


def write(name, cells):
    nb = new_notebook(cells=cells, metadata=meta)
    for i, c in enumerate(nb.cells):
        c["id"] = f"{name[:8]}-{i}"
    nbformat.write(nb, f"notebooks/{name}.ipynb")


# --wait: the cell blocks until the source model is trained, its panel live meanwhile.
# Trained once: a second run of the notebook (or time_saved after the quickstart) reuses it.
source_cell = code("""from pathlib import Path

if not Path("digits0-4.pth").exists():  # trained once, then reused
    low = nbaccel.datasets.digits(range(5))
    source = %fasttrain low --backbone resnet18 --pretrained no --image-size 32 --epochs 2 --stop none --wait
    source.save("digits0-4.pth")  # a weights file: --pretrained digits0-4.pth loads it""")

write(
    "quickstart",
    [
        md("""# nbaccel quickstart

Fine-tune an image model from a notebook, with live charts, on data that ships with
scikit-learn (8x8 scans of handwritten digits, upscaled to 32 px), so everything here runs
offline on a CPU in about a minute.

**About the weights.** Fine-tuning starts from pretrained weights. This notebook cannot
download timm's hub weights (Binder and CI have no internet), so step 1 *pretrains a small
source model on digits 0-4* and saves it (once: delete digits0-4.pth to train it again); it
stands in for hub weights. Step 2 fine-tunes it
on digits 5-9. With internet access use `--pretrained yes` and a timm backbone such as
`convnext_tiny` instead."""),
        code("""%load_ext nbaccel
import nbaccel

target = nbaccel.datasets.digits(range(5, 10))  # a folder: train/ and val/, one subfolder per digit
target"""),
        md("## 1. A source model on digits 0-4 (standing in for hub weights)"),
        source_cell,
        md("""## 2. Fine-tune on digits 5-9

The panel appears at once and the model trains in a background thread: the charts grow while
you run the next cells. `--freeze` is left on `auto`, which keeps a pretrained backbone's
early layers frozen (the status line says which and why). The Stop button
(or `run.stop()`) ends the run; kernel Interrupt does not reach the training thread."""),
        code(
            "run = %fasttrain target --backbone resnet18 --pretrained digits0-4.pth --image-size 32 --epochs 6"
        ),
        md("The notebook stays usable while it trains:"),
        code('print(run.status, "-", len(run.history), "epochs done so far")'),
        md("""## 3. Predictions

`run.wait()` blocks until the run has ended (while a cell blocks, the panel's buttons wait
too). `run.model` then holds the best epoch's weights; `run.predict` takes image paths, a
folder, arrays or tensors; `run.save("model.pth")` and `run.export("model.onnx")` keep it."""),
        code("""run.wait()
images = sorted((target / "val").rglob("*.png"))[::36]
labels, probabilities = run.predict(images)
for path, label, p in zip(images, labels, probabilities.max(axis=1)):
    print(f"true {path.parent.name}  predicted {label}  ({p:.0%})")
print(f"best epoch {run.best['epoch']}: val_acc {run.best['val_acc']:.3f}")"""),
        md("""## 4. What it saw, and where it is wrong

`run.show_batch()` shows training images exactly as the model was fed them (through the
training transform, the normalisation undone), with their labels:"""),
        code("run.show_batch(8)"),
        md("""`run.interpret()` scores the validation images with the best weights: the confusion matrix
(counts, and each true class's share; click a cell to see its images), precision, recall
and F1 per class, top-k accuracy, and the images with the highest loss. In code:
`.confusion_matrix`, `.per_class`, `.top_k_accuracy(k)`, `.top_losses(k)`,
`.cell(true, predicted)`. The run's panel above has both as sections too, made when
opened."""),
        code("run.interpret()"),
    ],
)

write(
    "time_saved",
    [
        md("""# Time saved, at equal accuracy

nbaccel exists to get you a model **as good as a careful full fine-tune, sooner**. The
**baseline** is that fine-tune written by hand: the same data, backbone, weights and epoch
budget, every layer trained at one learning rate, fp32, timm's own head, nothing cached or
compiled, plain AdamW, no early stopping.

`--compare` trains nbaccel's run (its defaults) and then the baseline for real, and times
both to the **baseline's best validation accuracy**: the speedup is the baseline's time to
that accuracy over nbaccel's. A run that never reaches it saved nothing, however soon it
ended (`cmp.speedup` is then `None`, and the verdict says so).

As in the quickstart, a source model pretrained on digits 0-4 stands in for hub weights
(the quickstart's own, when it has been run here)."""),
        code("""%load_ext nbaccel
import nbaccel

target = nbaccel.datasets.digits(range(5, 10))"""),
        source_cell,
        md("""nbaccel's defaults on the transfer to digits 5-9, then the baseline; both are shown
live, accuracy against wall time. For a pretrained backbone nbaccel freezes the early
layers (low-level features), starts the new head at zero, re-estimates the BatchNorm
statistics before each evaluation, uses torch's fused AdamW, and on a CPU with bf16 times
bf16 against fp32 and keeps the faster."""),
        code(
            "cmp = %fasttrain target --backbone resnet18 --pretrained digits0-4.pth --image-size 32 --epochs 5 --compare"
        ),
        md("""## The headline: time to the same accuracy

`cmp.verdict` says it in words; `cmp.time_to_target` has both times, `cmp.best` both best
accuracies."""),
        code("""cmp.wait()
print(cmp.verdict)
print("best val_acc:", cmp.best)
print("time to the baseline's best:", cmp.time_to_target)"""),
        md("""## Where the time goes, epoch for epoch

The live headline during a run (`run.savings`) compares the **same epochs**: it projects the
baseline's time for the run's epoch budget from a few timed steps, and splits the
difference by cause. `cmp.accelerated.savings.by_cause`; the rows add up to `saved_s`:

- **frozen layers**: the baseline's step (every layer trained, fp32) against a step with the
  run's frozen groups, both timed on the run's batches, times the epochs.
- **fused optimizer**: plain AdamW against torch's fused AdamW, timed on the same gradients.
- **precision**: fp32 against the run's precision (zero when the run trains in fp32).
- **caching**: the frozen features computed once instead of every epoch (or decoded images
  kept in memory), on every epoch after the first.
- **compile**: what torch.compile saves per step less its compile time (zero when not
  compiled, the default on a CPU).
- **early stop**: epochs of the budget the run did not need, at the baseline's epoch time
  (a run stopped by hand counts nothing here).
- **calibration**: what timing the steps cost; it is part of the run's time, so it is a cost.
- **other**: set-up, and the measured epochs against their mean.

`projection error` is the projected baseline time over the measured one: 1.0 is exact.
Equal epochs are not equal accuracy: only the comparison above says whether the time saved
bought the same model."""),
        code("""for cause, seconds, how in cmp.accelerated.savings.by_cause:
    print(f"{cause:15} {seconds:+6.1f} s   {how}")
print("projection error:", cmp.projection_error)"""),
    ],
)

write(
    "colab_kaggle",
    [
        md(f"""# nbaccel on Colab or Kaggle

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/notebooks/colab_kaggle.ipynb)
[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/{REPO}/blob/main/notebooks/colab_kaggle.ipynb)

Switch the runtime to a GPU first (Colab: Runtime > Change runtime type; Kaggle: Settings >
Accelerator). nbaccel keeps the preinstalled torch; it only adds what is missing."""),
        code(f'''# NBVAL_SKIP
# (skipped in the project's tests: it needs internet)
%pip install -q "nbaccel @ git+https://github.com/{REPO}"'''),
        code("""%load_ext nbaccel
import nbaccel
from pathlib import Path

# Your images: one subfolder per class (or train/ and val/ with class subfolders inside).
# Colab: upload or mount Drive; Kaggle: "Add data", then e.g. /kaggle/input/<dataset>.
DATA = Path("/content/photos")
if not DATA.exists():  # no folder here: the bundled digits stand in
    DATA = nbaccel.datasets.digits(range(5))  # digits 0-4: a few seconds an epoch
DATA"""),
        md("""Fine-tune a backbone with timm's published (hub) weights. Colab and Kaggle render custom
widgets unreliably, so the charts use the `html` backend there (chosen automatically; set here
explicitly)."""),
        code("""# NBVAL_SKIP
# (skipped in the project's tests: it downloads hub weights)
run = %fasttrain DATA --backbone convnext_tiny --pretrained yes --freeze auto --precision auto --stop patience:3 --charts html"""),
        md("""Without internet (and in this project's tests) the same call with random weights and a
small input size:"""),
        code("""if "run" not in globals():
    run = %fasttrain DATA --backbone resnet18 --pretrained no --image-size 32 --epochs 1 --charts html"""),
        code("""run.wait()
run.history[-1]"""),
        md("""## Two GPUs (Kaggle's "GPU T4 x2")

`--devices 2` trains in two processes, one per GPU, data-parallel (PyTorch's
DistributedDataParallel): each takes half of every epoch at `--batch-size` images a step, so
an epoch has half the steps, and the panel and charts are those of any run. `--devices all`
takes every GPU. Without GPUs (here, offline) the two processes share the CPU's cores."""),
        code("""run = %fasttrain DATA --backbone resnet18 --pretrained no --image-size 32 --epochs 1 --devices 2 --charts html
run.wait()
print(run.events[0].devices, "processes:", run.history[-1])"""),
        md("""## Runs that survive the session

Colab and Kaggle end sessions without asking (idle time-outs, usage limits, a kernel out of
memory). Every run saves a checkpoint after each epoch (written atomically: the last and the
best weights, the optimizer, the schedule, the stopping state, the RNGs and the history). By
default it goes under `~/.cache/nbaccel/runs`, which dies with the session, so on Colab point
`--checkpoint-dir` at Google Drive:"""),
        code("""# NBVAL_SKIP
# (skipped in the project's tests: Colab only)
from google.colab import drive
drive.mount("/content/drive")"""),
        code("""CHECKPOINTS = Path("/content/drive/MyDrive/nbaccel-runs")
if not CHECKPOINTS.parent.exists():  # no Drive here: nbaccel's own cache folder
    CHECKPOINTS = None
run = %fasttrain DATA --backbone resnet18 --pretrained no --image-size 32 --epochs 1 --checkpoint-dir {CHECKPOINTS} --charts html
run.wait()
nbaccel.runs(CHECKPOINTS)[:3]"""),
        md("""In a new session, mount Drive again, run the cells up to `DATA`, and go on where the run
stopped: the same history, stopping state and RNGs, so it ends with the weights an
uninterrupted run would have had. `--epochs` and `--stop` may change (here: one epoch more);
every other choice comes from the checkpoint. `--resume latest` picks the newest run of the
same data and backbone; `nbaccel.load_run(path)` looks at a saved run without training."""),
        code("""latest = nbaccel.runs(CHECKPOINTS)[0]
run = %fasttrain DATA --resume {latest.path} --epochs 2 --charts html
run.wait()
[row["epoch"] for row in run.history]"""),
    ],
)
