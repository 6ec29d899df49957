"""A figure of images laid out in inches: reference strips on top, then a grid with row labels on the
left and column titles above. Placing every axes by hand keeps the cells square and the gaps small
whatever the number of rows, which subplot grids with equal-aspect images do not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

GAP = 0.06  # inches between cells
TITLE = 0.5  # inches above everything, for the figure title
CAPTION = 0.28  # inches above a reference strip or the grid, for its caption / column titles


def _show(fig, box, image):
    """One image in an axes at ``box`` (left, bottom, width, height in inches); None: an empty cell."""
    width, height = fig.get_size_inches()
    left, bottom, w, h = box
    ax = fig.add_axes((left / width, bottom / height, w / width, h / height))
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7, color="0.4", transform=ax.transAxes)
        return ax
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            image = im.convert("RGB")
    ax.imshow(image)
    return ax


def image_grid(cells: list[list], row_labels: list[str], col_titles: list[str], title: str,
               references: list[tuple[str, list]] = (), size: float = 1.3, label_width: float = 2.0,
               wrap: int = 28, label_size: float = 7):
    """``cells[i][j]``: an image (file or PIL image, None for a gap); ``references``: strips of
    (caption, images) side by side above the grid, at most 0.8 of the cells' size; row labels are
    wrapped at ``wrap`` characters, column titles to the cells' width. Returns the figure."""
    n_rows, n_cols = len(cells), len(col_titles)
    strips = [(caption, images) for caption, images in references if images]
    grid_width = n_cols * (size + GAP)
    # references as wide as the grid where they fit at half a cell or more, at most 0.8 of one
    n_refs = sum(len(images) for _, images in strips)
    room = (grid_width - 0.3 * max(len(strips) - 1, 0)) / max(n_refs, 1) - GAP
    ref = min(max(room, 0.5 * size), 0.8 * size)
    strip_widths = [len(images) * (ref + GAP) for _, images in strips]
    width = label_width + max(grid_width, sum(strip_widths) + 0.3 * max(len(strips) - 1, 0)) + 0.1
    band = CAPTION + ref + 0.15 if strips else 0
    col_titles = [textwrap.fill(col, max(int(size * 14), 8)) for col in col_titles]  # ~14 characters an inch
    head = CAPTION + 0.13 * max((col.count("\n") for col in col_titles), default=0)
    height = TITLE + band + head + n_rows * (size + GAP) + 0.1
    fig = plt.figure(figsize=(width, height))
    fig.text(0.5, 1 - 0.2 / height, title, ha="center", va="top", fontsize=9, wrap=True)
    top = height - TITLE  # inches from the bottom, moving down
    left = label_width
    for (caption, images), strip in zip(strips, strip_widths):
        fig.text(left / width, (top - CAPTION + 0.06) / height, caption, fontsize=7.5, va="bottom")
        for k, image in enumerate(images):
            _show(fig, (left + k * (ref + GAP), top - CAPTION - ref, ref, ref), image)
        left += strip + 0.3
    top -= band
    for j, col in enumerate(col_titles):
        fig.text((label_width + j * (size + GAP) + size / 2) / width, (top - head + 0.05) / height, col,
                 ha="center", va="bottom", fontsize=8)
    top -= head
    for i, (row, label) in enumerate(zip(cells, row_labels)):
        bottom = top - (i + 1) * (size + GAP) + GAP
        fig.text((label_width - 0.08) / width, (bottom + size / 2) / height, textwrap.fill(label, wrap),
                 ha="right", va="center", fontsize=label_size)
        for j, image in enumerate(row):
            _show(fig, (label_width + j * (size + GAP), bottom, size, size), image)
    return fig
