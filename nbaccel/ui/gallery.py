"""Images as embedded thumbnails (base64 PNG in HTML, so they stay in the saved notebook),
for every view that shows images: the top losses, a clicked cell, a training batch."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from typing import Optional

from PIL import Image

THUMBNAIL = 96  # px, the longer side


def png_base64(image: Image.Image, side: int = THUMBNAIL) -> str:
    """`image` as base64 PNG, its longer side `side` px (small scans scaled up)."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.convert("RGB").resize(size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def card_html(image: Optional[Image.Image], lines: list[str]) -> str:
    """One captioned thumbnail; None (a file that does not decode) shows as a grey
    square saying so."""
    picture = (
        f"<img src='data:image/png;base64,{png_base64(image)}' "
        f"style='image-rendering:pixelated;width:{THUMBNAIL}px'/>"
        if image is not None
        else f"<div style='width:{THUMBNAIL}px;height:{THUMBNAIL}px;background:#eee;"
        "display:flex;align-items:center;justify-content:center'>unreadable</div>"
    )
    return (
        "<figure style='display:inline-block;margin:4px;text-align:center;"
        f"font-size:11px;vertical-align:top'>{picture}"
        f"<figcaption>{'<br>'.join(html.escape(line) for line in lines)}</figcaption>"
        "</figure>"
    )


def cards_html(cards: Iterable[tuple[Optional[Image.Image], list[str]]]) -> str:
    """One captioned thumbnail per (image, caption lines), wrapping as the width allows."""
    return f"<div>{''.join(card_html(image, lines) for image, lines in cards)}</div>"
