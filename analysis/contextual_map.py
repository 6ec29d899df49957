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

from analysis.common import METHOD_COLOURS, learned_vectors, load_text_encoders, save_figure, write_csv
from analysis.residual_stagnation import prompt_with_slots

TEMPLATE = "a photo of a {}"
WORDS = {
    "related": ["cat", "kitten", "dog", "puppy", "tiger", "lion", "wolf", "fox", "bear", "rabbit"],
    "unrelated": ["forest", "grass", "car", "house", "river", "mountain", "cup", "chair", "book", "tree"],
}


@torch.no_grad()
def last_state(enc, template: str, word: str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The last hidden state at the word's last token; with ``rows`` ([k, d], raw-table space) the
    word's tokens are replaced by k slots holding those rows (a learned token in context)."""
    k = 1 if rows is None else rows.shape[0]
    ids, positions = prompt_with_slots(enc.tokenizer, template, word, k)
    if rows is None:  # the word itself: its own tokens, last one taken
        enc_ids = enc.tokenizer(template.format(word), return_offsets_mapping=True)
        start = template.index("{}")
        hits = [i for i, (a, b) in enumerate(enc_ids["offset_mapping"]) if b > a and a < start + len(word) and b > start]
        ids, positions = enc_ids["input_ids"], [hits[-1]]
    embed = enc.model.get_input_embeddings()
    scale = getattr(embed, "scalar_embed_scale", 1.0)  # Gemma-2 scales rows inside its embedding module

    def put_rows(_module, _args, out):
        if rows is None:
            return out
        out = out.clone()
        out[0, positions] = (rows * scale).to(out.dtype)
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
        labels, kinds, methods, states = [], [], [], []
        for kind, group in words.items():
            for word in group:
                labels.append(word), kinds.append(kind), methods.append(""), states.append(last_state(enc, template, word))
        n_words = len(states)
        for run in runs:
            labels.append(run["run"]), kinds.append("learned"), methods.append(run["method"])
            states.append(last_state(enc, template, anchor, run["vectors"][enc.name].float()))
        x = torch.stack(states).double()
        centre = x[:n_words].mean(dim=0)
        _, _, v = torch.linalg.svd(x[:n_words] - centre, full_matrices=False)
        xy = (x - centre) @ v[:2].T
        for label, kind, method, (a, b) in zip(labels, kinds, methods, xy.tolist()):
            out.append({"encoder": enc.name, "label": label, "kind": kind, "method": method, "pc1": a, "pc2": b})
    return pd.DataFrame(out, columns=["encoder", "label", "kind", "method", "pc1", "pc2"])


def plot(df: pd.DataFrame, out_dir: Path):
    encoders = list(dict.fromkeys(df["encoder"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(5.5 * len(encoders), 4.4), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        d = df[df["encoder"] == enc]
        for kind, colour in (("related", "tab:green"), ("unrelated", "0.5")):
            w = d[d["kind"] == kind]
            ax.scatter(w["pc1"], w["pc2"], s=14, color=colour, label=f"{kind} words")
            for r in w.itertuples():
                ax.annotate(r.label, (r.pc1, r.pc2), fontsize=7, color=colour, xytext=(2, 2), textcoords="offset points")
        for method, g in d[d["kind"] == "learned"].groupby("method"):
            ax.scatter(g["pc1"], g["pc2"], s=60, marker="*", color=METHOD_COLOURS.get(method), label=method)
        ax.set_xlabel("principal component 1 (of the words)")
        ax.set_ylabel("principal component 2")
        ax.set_title(enc)
        ax.legend(fontsize=7)
    save_figure(fig, out_dir, "contextual_map",
                "Last-layer hidden states at the token's position in 'a photo of a ...' for related and unrelated "
                "words and each method's learned token, projected on the words' first two principal components.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="base pipeline (hub id or folder)")
    parser.add_argument("--runs", nargs="*", default=[], help="finished run directories to place among the words")
    parser.add_argument("--template", default=TEMPLATE, help="prompt with {} where the word or token goes")
    parser.add_argument("--related", nargs="+", default=WORDS["related"], help="words related to the concepts")
    parser.add_argument("--unrelated", nargs="+", default=WORDS["unrelated"], help="words unrelated to them")
    parser.add_argument("--figures", required=True)
    parser.add_argument("--tables", required=True)
    args = parser.parse_args(argv)
    words = {"related": args.related, "unrelated": args.unrelated}
    df = contextual_map(load_text_encoders(args.model), learned_vectors(args.runs), args.template, words)
    write_csv(df, Path(args.tables) / "contextual_map.csv")
    plot(df, Path(args.figures))


if __name__ == "__main__":
    main()
