"""Contextual map (paper Fig. 1b): each encoder's last hidden state at a word's position, for
related and unrelated words and for each method's learned token, projected to 2-D by the
principal components of the words. A token whose norm drowns its context sits apart from
every word; one that is contextualised sits among the related words."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from analysis.common import learned_vectors, load_text_encoders, place_labels, save_figure, write_csv
from analysis.labels import colour, marker, method_label, method_order
from analysis.residual_stagnation import prompt_with_slots, word_tokens

TEMPLATE = "a photo of a {}"
WORDS = {
    "related": ["cat", "kitten", "dog", "puppy", "tiger", "lion", "wolf", "fox", "bear", "rabbit"],
    "unrelated": ["forest", "grass", "car", "house", "river", "mountain", "cup", "chair", "book", "tree"],
}


@torch.no_grad()
def last_state(enc, template: str, word: str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The last hidden state at the word's last token; with ``rows`` ([k, d], raw-table space) the
    word's tokens are replaced by k slots holding those rows (a learned token in context)."""
    if rows is None:  # the word itself: its own tokens, the last one read
        ids, word_positions = word_tokens(enc.tokenizer, template, word)
        positions = word_positions[-1:]
    else:
        ids, positions = prompt_with_slots(enc.tokenizer, template, word, rows.shape[0])
    embed = enc.model.get_input_embeddings()
    embed_scale = getattr(embed, "scalar_embed_scale", 1.0)  # Gemma-2 scales rows inside its embedding module

    def put_rows(_module, _args, out):
        if rows is None:
            return out
        out = out.clone()
        out[0, positions] = (rows * embed_scale).to(out.dtype)
        return out

    handle = embed.register_forward_hook(put_rows)
    try:
        input_ids = torch.tensor([ids], device=embed.weight.device)
        hidden = enc.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
    finally:
        handle.remove()
    return hidden[0, positions[-1]].float().cpu()


def contextual_map(encoders, runs: list[dict], template: str = TEMPLATE, words=WORDS,
                   anchor: str = "dog") -> pd.DataFrame:
    """2-D coordinates of every word and learned token, per encoder (PCA fitted on the words)."""
    out = []
    for enc in encoders:
        points = []  # (label, kind, method, last hidden state): the words first, then the learned tokens
        for kind, group in words.items():
            points += [(word, kind, "", last_state(enc, template, word)) for word in group]
        n_words = len(points)
        for run in runs:
            points.append((run["run"], "learned", run["method"],
                           last_state(enc, template, anchor, run["vectors"][enc.name].float())))
        states = torch.stack([state for *_, state in points]).double()
        centre = states[:n_words].mean(dim=0)
        _, _, components = torch.linalg.svd(states[:n_words] - centre, full_matrices=False)  # rows: the words' PCs
        coords = (states - centre) @ components[:2].T
        for (label, kind, method, _), (pc1, pc2) in zip(points, coords.tolist()):
            out.append({"encoder": enc.name, "label": label, "kind": kind, "method": method, "pc1": pc1, "pc2": pc2})
    return pd.DataFrame(out, columns=["encoder", "label", "kind", "method", "pc1", "pc2"])


WORD_COLOURS = {"related": "tab:green", "unrelated": "0.45"}


def plot(df: pd.DataFrame, out_dir: Path, labels: dict | None = None):
    """``labels``: encoder name -> its name for readers."""
    labels = labels or {}
    encoders = list(dict.fromkeys(df["encoder"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(6 * len(encoders), 4.8), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        panel = df[df["encoder"] == enc]
        for kind, shade in WORD_COLOURS.items():
            group = panel[panel["kind"] == kind]
            ax.scatter(group["pc1"], group["pc2"], s=14, color=shade, label=f"{kind} words")
        learned = panel[panel["kind"] == "learned"]
        for method in method_order(learned["method"]):  # hollow, so that tokens at one spot all show
            g = learned[learned["method"] == method]
            count = f" ({len(g)} tokens)" if len(g) > 1 else ""
            ax.scatter(g["pc1"], g["pc2"], s=70, marker=marker(method), facecolors="none", lw=1.4,
                       edgecolors=colour(method), label=method_label(method) + count, zorder=3)
        ax.set_xlabel("principal component 1 (of the words)")
        ax.set_ylabel("principal component 2")
        ax.set_title(labels.get(enc, enc))
        ax.margins(0.12)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    for ax, enc in zip(axes[0], encoders):  # labels last: they are placed in the final layout
        panel = df[df["encoder"] == enc]
        learned = panel["kind"] == "learned"
        if panel.loc[learned, "method"].duplicated().any():  # many tokens per method: the legend names them
            marks = [(x, y, x, y) for x, y in zip(panel.loc[learned, "pc1"], panel.loc[learned, "pc2"])]
            panel = panel[~learned]
        else:
            marks = []
        shown = [WORD_COLOURS.get(k, colour(m)) for k, m in zip(panel["kind"], panel["method"])]
        texts = [method_label(m) if k == "learned" else w for k, m, w in zip(panel["kind"], panel["method"],
                                                                            panel["label"])]
        place_labels(ax, panel["pc1"].to_numpy(), panel["pc2"].to_numpy(), texts, shown, obstacles=marks)
    save_figure(fig, out_dir, "contextual_map",
                "Last-layer hidden states at the token's position in 'a photo of a ...' for related and unrelated "
                "words and each method's learned token, projected on the words' first two principal components.")
    return fig


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="base pipeline (hub id or folder)")
    parser.add_argument("--runs", nargs="*", default=[], help="finished run directories to place among the words")
    parser.add_argument("--template", default=TEMPLATE, help="prompt with {} where the word or token goes")
    parser.add_argument("--related", nargs="+", default=WORDS["related"], help="words related to the concepts")
    parser.add_argument("--unrelated", nargs="+", default=WORDS["unrelated"], help="words unrelated to them")
    parser.add_argument("--figures", required=True)
    parser.add_argument("--tables", required=True)
    return parser


def analyse(args, encoders):
    """Write the tables and figures of ``args`` (from ``parser()``) with the text encoders already loaded."""
    words = {"related": args.related, "unrelated": args.unrelated}
    df = contextual_map(encoders, learned_vectors(args.runs), args.template, words)
    write_csv(df, Path(args.tables) / "contextual_map.csv")
    plot(df, Path(args.figures), {e.name: e.label for e in encoders})


def main(argv=None):
    args = parser().parse_args(argv)
    analyse(args, load_text_encoders(args.model))


if __name__ == "__main__":
    main()
