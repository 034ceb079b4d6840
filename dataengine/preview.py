"""Pictures of decoded clips, for people who would rather look than read."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from dataengine.records import DecodedClip


def contact_sheet(
    clips: Sequence[DecodedClip],
    view: str,
    path: Path,
    captions: Sequence[str] | None = None,
    frames_per_clip: int = 6,
    tile_h: int = 96,
) -> Path:
    """Write a JPEG grid: one row per clip, ``frames_per_clip`` evenly spaced frames of ``view`` per row.

    Each row is labelled with the clip's source name, time span, id and, when given, its caption (the start
    of it, wrapped). Returns ``path``.
    """
    label_w, pad = 220, 4
    rows = [_row(c, view, frames_per_clip, tile_h) for c in clips]
    width = label_w + max((r.width for r in rows), default=tile_h)
    sheet = Image.new("RGB", (width, max(1, len(rows)) * (tile_h + pad)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (clip, row) in enumerate(zip(clips, rows, strict=True)):
        y = i * (tile_h + pad)
        sheet.paste(row, (label_w, y))
        name = Path(clip.clip.uri).name
        label = f"{name[:30]}\n{clip.clip.start_s:.2f}-{clip.clip.end_s:.2f} s\n{clip.clip.clip_id[:12]}"
        if captions is not None:
            label += "\n" + "\n".join(textwrap.wrap(captions[i], 34)[:3])
        draw.text((6, y + 6), label, fill=(230, 230, 230))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=88)
    return path


def _row(clip: DecodedClip, view: str, n: int, tile_h: int) -> Image.Image:
    tiles = []
    for frame_HWC in clip.views[view].subsample(n).frames_THWC:
        im = Image.fromarray(frame_HWC)
        tiles.append(im.resize((max(1, round(im.width * tile_h / im.height)), tile_h)))
    row = Image.new("RGB", (sum(t.width for t in tiles) + 2 * len(tiles), tile_h), (24, 24, 24))
    x = 0
    for tile in tiles:
        row.paste(tile, (x, 0))
        x += tile.width + 2
    return row
