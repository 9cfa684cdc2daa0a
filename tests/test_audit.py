"""nbaccel.audit() and run.audit() (#13): on the digits with injected faults, the audit finds
at least 90% of the exact duplicates, train/val duplicates and wrong labels with fewer than
10% false alarms; unreadable files are listed, not fatal; the view renders in both backends."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import nbaccel
from benchmarks.audit_faults import score
from nbaccel.ui import AuditView


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return nbaccel.datasets.digits_with_faults(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def found(faulty, source_weights):
    folder, _ = faulty
    # test_resnet from digits 0-4 packs distinct digits up to cosine 0.9989 (a re-encoded
    # copy: 0.9998 and more), so its near-duplicate threshold is higher than the default.
    return nbaccel.audit(
        folder,
        backbone="test_resnet",
        pretrained=source_weights,
        image_size=32,
        near_duplicate=0.9995,
    )


def test_it_finds_the_injected_faults_with_few_false_alarms(faulty, found):
    figures = score(found, faulty[1])
    for finding in ("exact_duplicates", "leakage", "mislabels"):
        assert figures[finding]["recall"] >= 0.9, (finding, figures)
        assert figures[finding]["false_share"] < 0.1, (finding, figures)
    assert figures["corrupt"] == dict(
        found=5, injected=5, recall=1.0, flagged=5, false=0, false_share=0.0
    )
    exact = found.exact_duplicates[0]
    assert exact["similarity"] == 1.0 and len(exact["items"]) == 2
    leak = next(g for g in found.leakage if g["kind"] == "exact")
    assert sorted(leak["splits"]) == ["train", "val"]
    assert found.timings["checks_s"] < 30


def test_unreadable_files_are_listed_and_the_rest_audited(faulty, found):
    folder, faults = faulty
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert len(found.items) == len(files)  # every file, the unreadable ones too
    listed = {str(row["item"]) for row in found.corrupt}
    assert listed == {str(p) for p in faults["corrupt"]}
    assert all("Error" in row["error"] for row in found.corrupt)
    counts = Counter(p.parent.name for p in files)
    assert found.balance["counts"] == {name: counts[name] for name in found.class_names}
    assert found.balance["ratio"] == pytest.approx(
        max(counts.values()) / min(counts.values())
    )
    assert set(found.files("corrupt")) == set(faults["corrupt"])
    copies = {str(p) for pair in faults["exact_duplicates"] for p in pair}
    assert copies <= {str(p) for p in found.files("exact_duplicates")}
    assert len(found.files("leakage")) == 2 * len(found.leakage)
    with pytest.raises(ValueError, match="no finding 'typos'"):
        found.files("typos")
    assert "unreadable files: 5" in found.summary()


def test_run_audit_votes_with_the_runs_predictions(trained, digits_high):
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    result = trained.audit()  # near copies by pixels: the model packs each class
    files = list(digits_high.rglob("*.png"))
    assert len(result.items) == len(files) and not result.corrupt
    # the digits have no two scans alike, by bytes or by pixels
    assert not result.exact_duplicates and not result.near_duplicates
    assert not result.leakage
    # with its features as a copy test too, this model's classes collapse into "copies"
    assert trained.audit(near_duplicate=0.98).near_duplicates
    labels, probabilities = trained.predict([r["item"] for r in result.mislabels])
    for row, label, p in zip(result.mislabels, labels, probabilities):
        if "run" in row["why"]:
            assert label == row["suggested"] != row["label"] and p.max() >= 0.9
    after = trained.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_both_backends_render_the_view(found):
    view = AuditView(found, charts="html")
    summary, *findings = view.bundles()
    assert "likely mislabels" in summary["text/plain"]
    assert summary["text/html"].count("background:#4c78a8") == 10  # a bar per digit
    assert len(findings) == 6
    pictures = [b["text/html"].count("data:image/png;base64,") for b in findings]
    assert pictures[0] == 2 * min(12, len(found.exact_duplicates))
    assert pictures[3] == min(12, len(found.mislabels))
    assert findings[5]["text/html"].count("unreadable</div>") == 5
    widget = AuditView(found, charts="widget").widget
    tabs = widget.children[1]
    assert len(tabs.children) == 6
    titles = [tabs.get_title(i) for i in range(6)]
    assert titles[0] == f"exact duplicates ({len(found.exact_duplicates)})"
    assert np.all([isinstance(t, str) for t in titles])


def test_photos_of_any_size_are_audited_and_a_copy_across_splits_counted_once():
    """Photo-sized images (a side over 255 px broke the pixel hash once), each a
    different 4 x 4 colour grid at 300 x 320 px; one is there twice, across the splits:
    one exact group, one leak of the exact kind (not again as a near one)."""
    rng = np.random.default_rng(0)
    grids = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    images = grids.repeat(75, axis=1).repeat(80, axis=2)  # 12 x 300 x 320 x 3
    images[11] = images[0]
    labels = np.tile([0, 1], 6)
    labels[11] = labels[0]
    result = nbaccel.audit(
        (images, labels),
        backbone="test_resnet",
        pretrained=False,
        image_size=32,
        device="cpu",
        val=0.5,
        near_duplicate=1.0,  # random weights' features all look alike: pixels decide
    )
    assert len(result.items) == 12 and not result.corrupt
    (group,) = result.exact_duplicates
    for index in group["indices"]:
        assert np.array_equal(np.asarray(result.load(index)), images[0])
    exact = [leak for leak in result.leakage if leak["kind"] == "exact"]
    assert len(exact) == (len(set(group["splits"])) > 1)
    assert not [leak for leak in result.leakage if leak["kind"] == "near"]


def test_a_similarity_outside_0_to_1_is_refused(trained):
    with pytest.raises(ValueError, match="near_duplicate is a cosine similarity"):
        trained.audit(near_duplicate=98)
