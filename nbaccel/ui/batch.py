"""run.show_batch()'s view: the training images as the model sees them, with their labels,
as static HTML (it is the same in every backend and stays in the saved notebook)."""

from __future__ import annotations

import html

from IPython.display import HTML, display
from PIL import Image

from nbaccel.core import BatchPreview
from nbaccel.ui.gallery import cards_html


def batch_html(preview: BatchPreview) -> str:
    """A title line (size, augmentation), then one thumbnail per image, captioned with its
    label."""
    count, height, width = preview.images.shape[:3]
    title = (
        f"<div><b>{count} training images as the model sees them</b> ({width}x{height} "
        f"px, augment={html.escape(preview.augment)}, normalisation undone)</div>"
    )
    cards = (
        (Image.fromarray(image), [label])
        for image, label in zip(preview.images, preview.label_names)
    )
    return title + cards_html(cards)


def show_batch(preview: BatchPreview) -> None:
    """run.show_batch() as a cell's last line: the grid."""
    display(HTML(batch_html(preview)))
