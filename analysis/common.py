"""What every analysis needs: a pipeline's text encoders without the rest, run records, and figure helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from analysis.labels import encoder_label  # noqa: E402
from dti.embeddings import read_run, run_method  # noqa: E402
from dti.families import FAMILIES, detect_family  # noqa: E402
from dti.inspection import text_encoders  # noqa: E402
from dti.io import atomic_path, read_json  # noqa: E402


@dataclass
class TextEncoder:
    name: str          # the pipeline component name: text_encoder, text_encoder_2
    tokenizer: object
    model: torch.nn.Module
    family: str | None = None

    @property
    def label(self) -> str:
        """The encoder's name for readers (CLIP ViT-L, OpenCLIP bigG, Gemma-2, mini-world CLIP)."""
        return encoder_label(self.family, self.name, self.table.shape[1])

    @property
    def table(self) -> torch.Tensor:
        """The raw input-embedding table (Gemma-2's scale is applied later, inside the model)."""
        return self.model.get_input_embeddings().weight.detach().float()


def load_text_encoders(model: str, device: str = "cpu") -> list[TextEncoder]:
    """Only the tokenizers and text encoders of a diffusers pipeline (hub id or folder), float32, eval."""
    family = FAMILIES[detect_family(model)]
    return [TextEncoder(name, tokenizer, encoder.to(device), family.name)
            for name, tokenizer, encoder in text_encoders(model, family, dtype=torch.float32)]


def learned_vectors(run_dirs) -> list[dict]:
    """One entry per run: its name, method, initializer word and each encoder's [k, d] learned vectors."""
    out = []
    for run in sorted(Path(r) for r in run_dirs):
        record, rows = read_run(run)
        out.append({"run": run_label(run), "method": run_method(record),
                    "initializer": record["config"].get("initializer"),
                    "vectors": dict(zip(record["encoders"], rows))})
    return out


def run_encoder_labels(run) -> dict[str, str]:
    """Each text encoder of a finished run by the model it is (from its family and its vectors' width)."""
    record, rows = read_run(run)
    family = record["config"].get("family")
    return {enc: encoder_label(family, enc, r.shape[1]) for enc, r in zip(record["encoders"], rows)}


def run_label(run: Path) -> str:
    """A run's name in tables: its folder and the one above (``<subject>/seed0`` in the workflow's layout)."""
    return f"{run.parent.name}/{run.name}"


def read_record(run: Path) -> dict:
    """A run's record (run.json) alone, finished or not (``read_run`` also loads the vectors of a finished one)."""
    return read_json(Path(run) / "run.json")


def save_figure(fig, out_dir: Path, name: str, caption: str):
    """PNG and PDF, and a one-sentence caption for the report; each written under a temporary name first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        with atomic_path(out_dir / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
    with atomic_path(out_dir / f"{name}.caption.txt") as tmp:
        tmp.write_text(caption + "\n")
    plt.close(fig)


def write_csv(df: pd.DataFrame, path: Path, float_format: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)


# Offsets tried around a point (points; text alignment), nearest first: right, above, left, below, diagonals.
_DIRECTIONS = [(1, 0, "left", "center"), (0, 1, "center", "bottom"), (-1, 0, "right", "center"),
               (0, -1, "center", "top"), (1, 1, "left", "bottom"), (-1, 1, "right", "bottom"),
               (-1, -1, "right", "top"), (1, -1, "left", "top")]


def place_labels(ax, xs, ys, texts, colours=None, fontsize: float = 7, rings=(4, 12, 22, 34, 48), obstacles=()):
    """Label points without overprinting. Each label takes the nearest offset around its point whose
    text meets no other label, no point and no obstacle (``(x0, y0, x1, y1)`` in data units, e.g. error
    bars) and stays inside the axes; one set away from its point gets a thin leader line. Points drawn
    at one spot share one label ("a / b"). Call it once the axes' limits and size are final: the check
    is done in display space. Returns each label's text and its box there (pixels)."""
    colours = list(colours) if colours is not None else ["black"] * len(texts)
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pixels = ax.transData.transform(np.column_stack([xs, ys]))
    groups: list[list[int]] = []  # points within 3 pixels of a group's first share its label
    for i, p in enumerate(pixels):
        home = next((g for g in groups if np.hypot(*(pixels[g[0]] - p)) < 3), None)
        home.append(i) if home is not None else groups.append([i])
    radius = fontsize * fig.dpi / 72 * 0.6  # a marker's room around its point
    taken = [_box(px - radius, py - radius, px + radius, py + radius) for px, py in pixels]
    for x0, y0, x1, y1 in (o for o in obstacles if np.isfinite(o).all()):  # a missing interval is no bar
        (a, b), (c, d) = ax.transData.transform([(x0, y0), (x1, y1)])
        taken.append(_box(min(a, c) - 1.5, min(b, d) - 1.5, max(a, c) + 1.5, max(b, d) + 1.5))
    frame = ax.get_window_extent(renderer)
    # the crowded points choose first, while there is room
    order = sorted(groups, key=lambda g: -int((np.hypot(*(pixels - pixels[g[0]]).T) < 40).sum()))
    placed = []
    for members in order:
        i = members[0]
        text = " / ".join(dict.fromkeys(texts[j] for j in members))
        shade = colours[i] if len({colours[j] for j in members}) == 1 else "0.2"
        others = [b for k, b in enumerate(taken) if k not in members]
        other_points = [b for k, b in enumerate(taken[:len(pixels)]) if k not in members]
        best = None
        for ring in rings:
            for dx, dy, ha, va in _DIRECTIONS:
                offset = (dx * ring, dy * ring)
                ann = ax.annotate(text, (xs[i], ys[i]), xytext=offset, textcoords="offset points", ha=ha, va=va,
                                  fontsize=fontsize)
                box = ann.get_window_extent(renderer)
                ann.remove()
                # a leader line through another point would tie the label to the wrong one
                end = np.clip(pixels[i], [box.x0, box.y0], [box.x1, box.y1])
                path = pixels[i] + np.linspace(0.2, 1, 8)[:, None] * (end - pixels[i])
                crossed = sum(b.contains(*q) for b in other_points for q in path)
                clash = sum(_overlap(box, other) for other in others) + _outside(box, frame) + 100 * crossed
                if best is None or clash < best[0]:
                    best = (clash, offset, ha, va, box)
                if clash == 0:
                    break
            if best[0] == 0:
                break
        _, offset, ha, va, box = best
        far = max(abs(offset[0]), abs(offset[1])) > rings[0]
        ax.annotate(text, (xs[i], ys[i]), xytext=offset, textcoords="offset points", ha=ha, va=va,
                    fontsize=fontsize, color=shade, bbox=dict(fc="white", ec="none", alpha=0.75, pad=0.3),
                    arrowprops=dict(arrowstyle="-", lw=0.5, color=shade, shrinkA=0, shrinkB=3) if far else None)
        taken.append(box)
        placed.append((text, box))
    return placed


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def _overlap(a, b) -> float:
    """The area two display boxes share."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def _outside(box, frame) -> float:
    """The area of ``box`` outside ``frame``."""
    return box.width * box.height - _overlap(box, frame)
