"""How much position information survives in the first block's normalised input, against the token's norm.

A pre-LN encoder with an additive learned position embedding sees a token through
``LN1(e + p_pos)``. LayerNorm is scale invariant, so ``LN1(m·v + p) = LN1(v + p/m)``: the
larger the token's norm ``m``, the less of the position is left. A small classifier is
trained to read the position from ``LN1(e + p_pos)`` of ordinary vocabulary rows at every
position, then tested on held-out rows rescaled to ``s ×`` the vocabulary's mean norm and
on the learned vectors of runs (as trained, and rescaled to the mean norm, so that norm and
direction can be told apart). Encoders whose positions are rotary (Gemma-2) have no
additive position embedding; they get a row saying so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from matplotlib.lines import Line2D

from analysis.common import learned_vectors, load_text_encoders, save_figure, write_csv
from analysis.labels import colour, method_label, method_order
from dti.families import vocab_norm_stats

SCALES = (0.5, 1, 2, 4, 8, 16)
NOT_APPLICABLE = "not applicable: no additive position embedding (rotary positions)"
COLUMNS = ["encoder", "condition", "scale", "method", "run", "vector", "accuracy", "chance"]


def additive_positions(model: torch.nn.Module):
    """The position table and the first block's pre-attention LayerNorm, or None when positions are not added.

    CLIPTextModel holds its parts directly; CLIPTextModelWithProjection one level down, in ``text_model``.
    """
    core = getattr(model, "text_model", model)
    position = getattr(getattr(core, "embeddings", None), "position_embedding", None)
    layers = getattr(getattr(core, "encoder", None), "layers", None)
    if position is None or not layers or not hasattr(layers[0], "layer_norm1"):
        return None
    return position.weight.detach().float(), layers[0].layer_norm1


def ordinary_ids(enc) -> torch.Tensor:
    """Ids of real vocabulary rows: no special or added tokens, no all-zero (unused) rows."""
    table = enc.table
    keep = table.norm(dim=1) > 0
    special = [i for i in enc.tokenizer.all_special_ids if i is not None and i < len(table)]
    keep[torch.tensor(special, dtype=torch.long)] = False
    return keep.nonzero().flatten()


@torch.no_grad()
def normalised_inputs(rows: torch.Tensor, positions: torch.Tensor, ln) -> tuple[torch.Tensor, torch.Tensor]:
    """``LN1(row + p_pos)`` for every row at every position, with the position as label."""
    x = ln((rows[:, None, :] + positions[None]).to(ln.weight.dtype)).float()
    labels = torch.arange(positions.shape[0]).repeat(rows.shape[0])
    return x.reshape(-1, rows.shape[1]), labels


def train_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int, hidden: int = 256,
                steps: int = 300, lr: float = 1e-2) -> torch.nn.Module:
    """A 1-hidden-layer MLP, full-batch Adam; seeded inside a forked RNG so callers' streams are untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(hidden, n_classes))
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    return probe.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(probe, x: torch.Tensor, y: torch.Tensor) -> float:
    return (probe(x).argmax(dim=1) == y).sum().item() / len(y)  # an exact fraction, not a float32 mean


def probe_encoder(enc, runs: list[dict], scales=SCALES, seed: int = 0, n_train: int = 64, n_test: int = 32,
                  **probe_kwargs) -> list[dict]:
    """Accuracy rows of one encoder: held-out vocabulary directions at each scale, then each run's vectors."""
    parts = additive_positions(enc.model)
    if parts is None:
        return [dict(encoder=enc.name, condition=NOT_APPLICABLE, scale=np.nan, method="", run="", vector=np.nan,
                     accuracy=np.nan, chance=np.nan)]
    positions, ln = parts
    n_pos = positions.shape[0]
    chance = 1.0 / n_pos
    table = enc.table
    mean = vocab_norm_stats(table)["mean"]
    ids = ordinary_ids(enc)
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    train_rows, test_rows = table[order[:n_train]], table[order[n_train:n_train + n_test]]

    # Trained on ordinary rows at their own norms: the probe knows positions as ordinary tokens carry them.
    probe = train_probe(*normalised_inputs(train_rows, positions, ln), n_pos, seed, **probe_kwargs)
    out = []
    unit = test_rows / test_rows.norm(dim=1, keepdim=True)
    for scale in scales:
        acc = accuracy(probe, *normalised_inputs(unit * (scale * mean), positions, ln))
        out.append(dict(encoder=enc.name, condition="vocabulary", scale=float(scale), method="", run="",
                         vector=np.nan, accuracy=acc, chance=chance))
    for run in runs:
        vectors = run["vectors"].get(enc.name)
        if vectors is None:
            continue
        if vectors.shape[1] != table.shape[1]:
            raise ValueError(f"run {run['run']}: {enc.name} vectors have width {vectors.shape[1]}, "
                             f"the encoder {table.shape[1]}; was it trained on another model?")
        for j, v in enumerate(vectors.float()):
            norm = v.norm().item()
            for condition, row in (("learned", v), ("learned_rescaled", v * (mean / norm))):
                acc = accuracy(probe, *normalised_inputs(row[None], positions, ln))
                out.append(dict(encoder=enc.name, condition=condition, scale=row.norm().item() / mean,
                                method=run["method"], run=run["run"], vector=j, accuracy=acc, chance=chance))
    return out


def probe_model(model: str, run_dirs=(), scales=SCALES, seed: int = 0, encoders=None, **kwargs) -> pd.DataFrame:
    """The tidy accuracy table of every text encoder of a pipeline (``encoders``: already loaded ones)."""
    encoders = encoders if encoders is not None else load_text_encoders(model)
    runs = learned_vectors(run_dirs) if run_dirs else []
    rows = [r for enc in encoders for r in probe_encoder(enc, runs, scales, seed, **kwargs)]
    return pd.DataFrame(rows, columns=COLUMNS).astype({"vector": "Int64"})


NUDGE = 1.1  # learned tokens are spread sideways by method (x this factor per method) so that none hides another


def _legend(methods: list[str], counts: dict | None = None) -> list:
    """Colour says the method (with its number of learned vectors), the marker how the token was fed: one
    entry each, all of them drawn."""
    counts = counts or {}
    handles = [Line2D([], [], marker="o", color="0.2", label="vocabulary directions"),
               Line2D([], [], ls=":", color="0.6", label="chance")]
    handles += [Line2D([], [], ls="", marker="o", color=colour(m),
                       label=method_label(m) + (f" ({counts[m]} vectors)" if counts.get(m, 1) > 1 else ""))
                for m in methods]
    handles += [Line2D([], [], ls="", marker="D", ms=5, color="0.3", label="learned token, as trained"),
                Line2D([], [], ls="", marker="s", ms=9, mfc="none", mec="0.3", label="same direction at the mean norm")]
    return handles


def plot_probe(df: pd.DataFrame, out_dir: Path, name: str = "positional_probe", labels: dict | None = None):
    """``labels``: encoder name -> its name for readers."""
    labels = labels or {}
    encoders = list(dict.fromkeys(df["encoder"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(5 * len(encoders), 3.8), squeeze=False)
    drawn = None  # the last panel with data: the legend goes beside it
    for ax, enc in zip(axes[0], encoders):
        panel = df[df["encoder"] == enc]
        ax.set_title(labels.get(enc, enc))
        if (panel["condition"] == NOT_APPLICABLE).any():
            ax.text(0.5, 0.5, "not applicable:\nrotary positions,\nno additive position embedding",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        vocab = panel[panel["condition"] == "vocabulary"]
        ax.plot(vocab["scale"], vocab["accuracy"], "o-", color="0.2")
        ax.axhline(vocab["chance"].iloc[0], color="0.6", ls=":", lw=1)
        learned = panel[panel["condition"].str.startswith("learned")]
        methods = method_order(learned["method"])
        for i, method in enumerate(methods):
            nudge, c = NUDGE ** (i - (len(methods) - 1) / 2), colour(method)
            for condition, style in (("learned_rescaled", dict(marker="s", s=80, facecolors="none", edgecolors=c)),
                                     ("learned", dict(marker="D", s=26, color=c))):  # the small filled one on top
                g = learned[(learned["method"] == method) & (learned["condition"] == condition)]
                ax.scatter(g["scale"] * nudge, g["accuracy"], zorder=3, lw=1.3, **style)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("token norm / vocabulary mean norm")
        ax.set_ylabel("position-probe accuracy (all positions)")
        counts = learned[learned["condition"] == "learned"].groupby("method").size().to_dict()
        drawn = (ax, methods, counts)
    if drawn:
        drawn[0].legend(handles=_legend(drawn[1], drawn[2]), fontsize=7, loc="center left",
                        bbox_to_anchor=(1.02, 0.5))
    save_figure(fig, out_dir, name,
                "Accuracy of an MLP probe reading the position from the first block's normalised input "
                "LN1(e + p_pos), over all positions, against the token's norm relative to the vocabulary mean "
                "(line: held-out vocabulary directions; filled diamonds: learned tokens as trained; hollow squares: "
                "the same directions at the mean norm; colour: method, learned tokens nudged sideways by method so "
                "that none hides another; dotted: chance).")
    return fig


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="diffusers pipeline (hub id or folder) to probe")
    parser.add_argument("--runs", nargs="*", default=[], help="run directories trained on that model")
    parser.add_argument("--figures", required=True, help="folder for the figure (PNG, PDF, caption)")
    parser.add_argument("--tables", required=True, help="folder for the tidy CSV table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--train-rows", type=int, default=64,
                        help="vocabulary rows the probe learns from, at every position")
    parser.add_argument("--test-rows", type=int, default=32, help="held-out vocabulary rows tested at every position")
    parser.add_argument("--hidden", type=int, default=256, help="width of the probe's hidden layer")
    parser.add_argument("--steps", type=int, default=300, help="full-batch Adam steps")
    return parser


def analyse(args, encoders):
    """Write the tables and figures of ``args`` (from ``parser()``) with the text encoders already loaded."""
    df = probe_model(args.model, args.runs, args.scales, args.seed, encoders, n_train=args.train_rows,
                     n_test=args.test_rows, hidden=args.hidden, steps=args.steps)
    write_csv(df, Path(args.tables) / "positional_probe.csv")
    plot_probe(df, Path(args.figures), labels={e.name: e.label for e in encoders})


def main(argv=None):
    args = parser().parse_args(argv)
    analyse(args, load_text_encoders(args.model))


if __name__ == "__main__":
    main()
