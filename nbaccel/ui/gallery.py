"""Images as embedded thumbnails (base64 PNG in HTML, so they stay in the saved notebook),
for every view that shows images: the top losses, a clicked cell, a training batch."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable

from PIL import Image

THUMBNAIL = 96  # px, the longer side


def png_base64(image: Image.Image, side: int = THUMBNAIL) -> str:
    """`image` as base64 PNG, its longer side `side` px (small scans scaled up)."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.convert("RGB").resize(size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def cards_html(cards: Iterable[tuple[Image.Image, list[str]]]) -> str:
    """One captioned thumbnail per (image, caption lines), wrapping as the width allows."""
    figures = "".join(
        "<figure style='display:inline-block;margin:4px;text-align:center;"
        "font-size:11px'>"
        f"<img src='data:image/png;base64,{png_base64(image)}' "
        f"style='image-rendering:pixelated;width:{THUMBNAIL}px'/>"
        f"<figcaption>{'<br>'.join(html.escape(line) for line in lines)}</figcaption>"
        "</figure>"
        for image, lines in cards
    )
    return f"<div>{figures}</div>"
