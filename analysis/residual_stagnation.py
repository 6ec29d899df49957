"""How far a token's hidden state turns through the residual stream, against the token's norm.

In a pre-norm encoder each block adds bounded updates to the residual stream:
``x_L = x_0 + Σ u_i``, with one update from every attention and every MLP sub-layer. With
``S_L = Σ ‖u_i‖`` at the token's position, ``x_L`` lies in a ball of radius ``S_L`` around
``x_0``, so whenever ``‖x_0‖ > S_L`` the angle obeys ``sin ∠(x_L, x_0) ≤ S_L / ‖x_0‖``. A token
with a huge norm therefore leaves the encoder pointing where it came in.

The updates are read with forward hooks on what each block actually adds: CLIP's ``self_attn``
and ``mlp`` outputs, and Gemma-2's ``post_attention_layernorm`` and ``post_feedforward_layernorm``
outputs (Gemma-2 normalises each sub-layer's output before the residual addition). ``x_0`` is the
first layer's input (CLIP: token + position embedding; Gemma-2: the scaled embedding) and ``x_L``
the last layer's output before the final norm. Rows are written for every depth ``L``, since
SDXL conditions on the penultimate layer.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from analysis.common import learned_vectors, load_text_encoders, save_figure, write_csv
from analysis.labels import colour, marker, method_label, method_order
from dti.families import vocab_norm_stats

SCALES = (0.5, 1, 2, 4, 8, 16)
TEMPLATE = "a photo of {}"
NOT_APPLICABLE = "bound not applicable (S_L >= |x_0|)"
COLUMNS = ["encoder", "condition", "scale", "method", "run", "vector", "position", "layer", "token_norm",
           "x0_norm", "S_L", "update_norm", "angle_deg", "bound_deg", "bound_applicable", "note"]


def residual_updates(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[list[torch.nn.Module]]]:
    """The layers, and per layer the modules whose outputs are added to the residual stream, in order."""
    core = getattr(model, "text_model", model)
    encoder = getattr(core, "encoder", None)
    if encoder is not None and hasattr(encoder, "layers"):  # CLIP: x + attn(LN1 x), then x + mlp(LN2 x)
        layers = list(encoder.layers)
        return layers, [[layer.self_attn, layer.mlp] for layer in layers]
    layers = list(getattr(core, "layers", []))
    if layers and hasattr(layers[0], "post_feedforward_layernorm"):  # Gemma-2: the sub-layers' outputs are normed first
        return layers, [[layer.post_attention_layernorm, layer.post_feedforward_layernorm] for layer in layers]
    raise ValueError(f"{type(model).__name__}: no known residual layout (CLIP encoder or Gemma-2 decoder)")


def word_tokens(tokenizer, template: str, word: str) -> tuple[list[int], list[int]]:
    """Token ids of ``template`` with ``word`` in it, and the positions of the word's tokens.

    The word's tokens are found by character offsets, because a tokenizer may split a word
    differently alone than after a space (SentencePiece's ``▁dog`` vs ``d o g``).
    """
    start = template.index("{}")
    end = start + len(word)
    encoded = tokenizer(template.format(word), return_offsets_mapping=True)
    positions = [i for i, (tok_start, tok_end) in enumerate(encoded["offset_mapping"])
                 if tok_end > tok_start and tok_start < end and tok_end > start]
    if not positions:
        raise ValueError(f"{word!r} has no tokens in {template.format(word)!r}")
    return encoded["input_ids"], positions


def prompt_with_slots(tokenizer, template: str, word: str, k: int) -> tuple[list[int], list[int]]:
    """Token ids of ``template`` with ``word`` in it, its tokens replaced by ``k`` slots, and the slots' positions."""
    ids, positions = word_tokens(tokenizer, template, word)
    first, last = positions[0], positions[-1]
    # The slots keep the word's first token id; the hook replaces their rows anyway.
    return ids[:first] + [ids[first]] * k + ids[last + 1:], list(range(first, first + k))


@torch.no_grad()
def trace(enc, ids: list[int], rows: torch.Tensor, positions: list[int]) -> dict[str, torch.Tensor]:
    """Run the encoder with ``rows`` (raw-table space, [k, d]) at ``positions``; the residual stream there.

    Returns ``x0`` [k, d], ``outputs`` [L, k, d] (each layer's output) and ``updates`` [L, 2, k, d].
    """
    model = enc.model
    layers, added = residual_updates(model)
    embed = model.get_input_embeddings()
    embed_scale = getattr(embed, "scalar_embed_scale", 1.0)  # Gemma-2 scales rows inside its embedding module
    pos = torch.tensor(positions)
    seen: dict[str, list] = {"x0": [], "outputs": [], "updates": []}

    def put_rows(_module, _args, out):
        out = out.clone()
        out[0, pos] = (rows * embed_scale).to(out.dtype)
        return out

    def first_input(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen["x0"].append(hidden[0, pos].float())

    def keep(key):
        def hook(_module, _args, out):
            out = out[0] if isinstance(out, tuple) else out  # CLIPAttention returns (output, weights)
            seen[key].append(out[0, pos].float())
        return hook

    handles = [embed.register_forward_hook(put_rows),
               layers[0].register_forward_pre_hook(first_input, with_kwargs=True)]
    for layer, modules in zip(layers, added):
        handles += [m.register_forward_hook(keep("updates")) for m in modules]
        handles.append(layer.register_forward_hook(keep("outputs")))
    try:
        input_ids = torch.tensor([ids], device=embed.weight.device)
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    finally:
        for h in handles:
            h.remove()
    n = len(layers)
    return {"x0": seen["x0"][0], "outputs": torch.stack(seen["outputs"]),
            "updates": torch.stack(seen["updates"]).reshape(n, 2, len(positions), -1)}


def angle_rows(stream: dict[str, torch.Tensor], slot: int) -> list[dict]:
    """Per depth L: the measured angle ∠(x_L, x_0), S_L, and the bound where it applies (``stream``: from trace)."""
    x0 = stream["x0"][slot].double()
    x0_norm = x0.norm().item()
    update_norms = stream["updates"][:, :, slot].double().norm(dim=-1).sum(dim=1).cumsum(0)
    out = []
    for layer, (x_l, s_l) in enumerate(zip(stream["outputs"][:, slot].double(), update_norms.tolist()), start=1):
        cos = torch.nn.functional.cosine_similarity(x_l, x0, dim=0).clamp(-1, 1).item()
        applicable = x0_norm > s_l
        out.append(dict(layer=layer, x0_norm=x0_norm, S_L=s_l, update_norm=(x_l - x0).norm().item(),
                        angle_deg=math.degrees(math.acos(cos)),
                        bound_deg=math.degrees(math.asin(s_l / x0_norm)) if applicable else np.nan,
                        bound_applicable=applicable, note="" if applicable else NOT_APPLICABLE))
    return out


def stagnation_encoder(enc, runs: list[dict], scales=SCALES, template: str = TEMPLATE,
                       initializer: str = "dog") -> list[dict]:
    """Rows of one encoder: the initializer row's direction swept over norms, then each run's vectors as trained."""
    table = enc.table
    mean = vocab_norm_stats(table)["mean"]
    ids, slots = prompt_with_slots(enc.tokenizer, template, initializer, 1)
    direction = table[ids[slots[0]]] / table[ids[slots[0]]].norm()
    out = []
    for scale in scales:
        for r in angle_rows(trace(enc, ids, (direction * (scale * mean))[None], slots), 0):
            out.append(dict(encoder=enc.name, condition="sweep_initializer_direction", scale=float(scale), method="",
                            run="", vector=0, position=slots[0], token_norm=scale * mean, **r))
    for run in runs:
        vectors = run["vectors"].get(enc.name)
        if vectors is None:
            continue
        vectors = vectors.float()
        if vectors.shape[1] != table.shape[1]:
            raise ValueError(f"run {run['run']}: {enc.name} vectors have width {vectors.shape[1]}, "
                             f"the encoder {table.shape[1]}; was it trained on another model?")
        run_ids, run_slots = prompt_with_slots(enc.tokenizer, template, run["initializer"], len(vectors))
        stream = trace(enc, run_ids, vectors, run_slots)
        for j, v in enumerate(vectors):
            for r in angle_rows(stream, j):
                out.append(dict(encoder=enc.name, condition="learned", scale=v.norm().item() / mean,
                                method=run["method"], run=run["run"], vector=j, position=run_slots[j],
                                token_norm=v.norm().item(), **r))
    return out


def stagnation_model(model: str, run_dirs=(), scales=SCALES, template: str = TEMPLATE, initializer: str = "dog",
                     encoders=None) -> pd.DataFrame:
    """The tidy table of every text encoder of a pipeline (``encoders``: already loaded ones)."""
    encoders = encoders if encoders is not None else load_text_encoders(model)
    runs = learned_vectors(run_dirs) if run_dirs else []
    rows = [r for enc in encoders for r in stagnation_encoder(enc, runs, scales, template, initializer)]
    return pd.DataFrame(rows, columns=COLUMNS).astype({"vector": "Int64"})


def plot_stagnation(df: pd.DataFrame, out_dir: Path, name: str = "residual_stagnation", labels: dict | None = None):
    """Angle and bound at the last layer, per encoder (``labels``: encoder name -> its name for readers).
    The bound is drawn, and named in the legend, only where it applies (|x_0| > S_L); a panel where it
    applies nowhere says so."""
    labels = labels or {}
    last = df[df["layer"] == df.groupby("encoder")["layer"].transform("max")]
    encoders = list(dict.fromkeys(last["encoder"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(4.8 * len(encoders), 3.8), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        panel = last[last["encoder"] == enc]
        sweep = panel[panel["condition"] == "sweep_initializer_direction"]
        ax.plot(sweep["scale"], sweep["angle_deg"], "o-", color="0.2", label="measured angle (word direction)")
        if sweep["bound_deg"].notna().any():
            ax.plot(sweep["scale"], sweep["bound_deg"], "--", color="0.5", label="bound arcsin(S_L/|x_0|)")
        learned = panel[panel["condition"] == "learned"]
        for method in method_order(learned["method"]):
            g = learned[learned["method"] == method]
            ax.scatter(g["scale"], g["angle_deg"], marker=marker(method), s=45, color=colour(method), zorder=3,
                       label=f"{method_label(method)} token")
            if g["bound_deg"].notna().any():
                ax.scatter(g["scale"], g["bound_deg"], marker="_", s=80, color=colour(method), zorder=3,
                           label=f"{method_label(method)} token's bound")
        if panel["bound_deg"].isna().all():
            ax.text(0.03, 0.04, "bound not drawn: it applies only where |x_0| > S_L,\nwhich no norm shown here reaches",
                    transform=ax.transAxes, fontsize=7, color="0.35")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("token norm / vocabulary mean norm")
        ax.set_ylabel("angle between x_L and x_0 (degrees)")
        ax.set_title(f"{labels.get(enc, enc)} (L = {int(panel['layer'].max())})")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: no point hidden
    save_figure(fig, out_dir, name,
                "Angle between the placeholder's hidden state after the last encoder layer and its input, against "
                "the token's norm relative to the vocabulary mean (line: the initializer word's direction; markers: "
                "learned tokens as trained), with the bound arcsin(S_L/|x_0|) from the summed norms S_L of the "
                "sub-layer updates, drawn only where it applies (|x_0| > S_L).")
    return fig


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="diffusers pipeline (hub id or folder)")
    parser.add_argument("--runs", nargs="*", default=[], help="run directories trained on that model")
    parser.add_argument("--figures", required=True, help="folder for the figure (PNG, PDF, caption)")
    parser.add_argument("--tables", required=True, help="folder for the tidy CSV table")
    parser.add_argument("--template", default=TEMPLATE, help="prompt with {} where the token goes")
    parser.add_argument("--initializer", default="dog", help="word whose embedding direction is swept over norms")
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    return parser


def analyse(args, encoders):
    """Write the tables and figures of ``args`` (from ``parser()``) with the text encoders already loaded."""
    df = stagnation_model(args.model, args.runs, args.scales, args.template, args.initializer, encoders)
    write_csv(df, Path(args.tables) / "residual_stagnation.csv")
    plot_stagnation(df, Path(args.figures), labels={e.name: e.label for e in encoders})


def main(argv=None):
    args = parser().parse_args(argv)
    analyse(args, load_text_encoders(args.model))


if __name__ == "__main__":
    main()
