"""Interpolating between two learned concepts, and what the images along the path look like.

DTI concepts share one norm ``m*`` and differ only in direction, so the natural path between two
of them is the great circle: ``e(t) = m* · slerp(v_a, v_b, t)``, which stays at the in-distribution
norm for every t. TI concepts have free norms and are compared along the straight line
``(1 - t) a + t b``. Each point of the path is written as an ordinary run directory, sampled with
``dti.sample`` and scored against both concepts' references (image fidelity) and class nouns
(text fidelity).

Outputs: ``interpolation.csv`` (tidy: t, mode, template, seed, metric, against, value, file),
``interpolation_grid_<method>`` (the two concepts' reference images, then the images: rows: prompt
and seed, columns: t) and ``interpolation_scores_<method>`` (mean score against t, per metric and
concept), where ``<method>`` is the two runs' method (``dti``, ``ti``), so that the figures of two
interpolations never share a name.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from PIL import Image

from analysis.common import save_figure, write_csv
from analysis.image_grid import image_grid
from analysis.labels import method_label
from dti.embeddings import read_run, run_method
from dti.families import FAMILIES, placeholder_tokens
from dti.io import DTIError, content_digest, write_json
from dti.metrics import parse_model_ids

MODES = ("slerp", "lerp")
CONCEPT_COLOURS = {"a": "tab:blue", "b": "tab:orange"}
SUBJECT = "interpolation"  # the images' subject folder inside each t's sample folder


def interpolate_vectors(a: torch.Tensor, b: torch.Tensor, t: float, mode: str = "slerp",
                        norm: float | None = None) -> torch.Tensor:
    """The point at ``t`` between ``a`` and ``b`` ([k, d], one interpolation per row).

    ``slerp``: the unit directions follow their great circle at constant angular speed; each row
    then gets length ``norm`` (DTI: m*), or with ``norm=None`` the linear blend of the two rows'
    lengths. ``lerp``: ``(1 - t) a + t b`` (``norm`` must be None). At t = 0 and t = 1 the inputs
    come back bit for bit when their length is already ``norm`` (DTI vectors are m* · v, equal to
    m* up to float32 rounding), so the path's ends are the source concepts themselves.
    """
    if mode not in MODES:
        raise DTIError(f"unknown interpolation mode {mode!r}; choose slerp or lerp")
    if a.shape != b.shape or a.dim() != 2:
        raise DTIError(f"interpolation needs two [k, d] tensors of one shape, got {list(a.shape)} and {list(b.shape)}")
    t = float(t)
    if not math.isfinite(t):
        raise DTIError(f"t must be a finite number, got {t}")
    a64, b64 = a.double(), b.double()
    if mode == "lerp":
        if norm is not None:
            raise DTIError("a norm applies to slerp only; lerp keeps the blend's own length")
        return ((1 - t) * a64 + t * b64).to(a.dtype)
    na, nb = a64.norm(dim=1, keepdim=True), b64.norm(dim=1, keepdim=True)
    if (na == 0).any() or (nb == 0).any():
        raise DTIError("slerp needs non-zero vectors (a zero row has no direction)")
    length = (1 - t) * na + t * nb if norm is None else torch.full_like(na, float(norm))
    if t in (0.0, 1.0):
        end, end_norm = (a, na) if t == 0.0 else (b, nb)
        if torch.allclose(end_norm, length, rtol=1e-6, atol=0):
            return end.clone()
    ua, ub = a64 / na, b64 / nb
    # 2·atan2(|ua - ub|, |ua + ub|) is accurate at small and large angles, unlike acos(ua · ub).
    omega = 2 * torch.atan2((ua - ub).norm(dim=1, keepdim=True), (ua + ub).norm(dim=1, keepdim=True))
    if (omega > math.pi - 1e-6).any():
        raise DTIError("slerp between opposite directions is undefined (no unique great circle)")
    near = omega < 1e-8  # sin(omega) ~ 0: the great circle is the chord; normalised lerp is exact to rounding
    sin = torch.where(near, torch.ones_like(omega), torch.sin(omega))
    u = torch.where(near, (1 - t) * ua + t * ub, (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / sin)
    u = u / u.norm(dim=1, keepdim=True)
    return (length * u).to(a.dtype)


def t_label(t: float) -> str:
    return f"{float(t):g}"


def t_placeholder(placeholder: str, t: float) -> str:
    """A placeholder of its own for point t (``<dog>`` -> ``<dog@0.25>``): closed by ``>`` so no
    point's token is a prefix of another's, and lower-case when the source is (SANA)."""
    stem = placeholder[1:-1] if placeholder.startswith("<") and placeholder.endswith(">") else placeholder
    return f"<{stem}@{t_label(t)}>"


def check_pair(run_a, run_b) -> tuple[dict, list[torch.Tensor], dict, list[torch.Tensor]]:
    """Both runs' records and vectors, refused with one line naming the first difference."""
    rec_a, rows_a = read_run(run_a)
    rec_b, rows_b = read_run(run_b)
    for key, what in (("family", "family"), ("model", "base model")):
        if rec_a["config"][key] != rec_b["config"][key]:
            raise DTIError(f"the runs differ in {what}: {rec_a['config'][key]!r} ({run_a}) vs "
                           f"{rec_b['config'][key]!r} ({run_b})")
    if rec_a["encoders"] != rec_b["encoders"]:
        raise DTIError(f"the runs differ in text encoders: {rec_a['encoders']} vs {rec_b['encoders']}")
    for enc, ra, rb in zip(rec_a["encoders"], rows_a, rows_b):
        if ra.shape != rb.shape:
            raise DTIError(f"the runs differ in vectors per encoder: {ra.shape[0]} vs {rb.shape[0]} in {enc} "
                           f"({run_a} vs {run_b})")
    return rec_a, rows_a, rec_b, rows_b


def _slerp_norms(rec_a: dict, rec_b: dict) -> list[float | None]:
    """Per encoder: the common m* of two DTI runs; None (blend the lengths) otherwise."""
    ma, mb = rec_a.get("m_star_values"), rec_b.get("m_star_values")
    if run_method(rec_a) != "dti" or run_method(rec_b) != "dti" or not ma or not mb:
        return [None] * len(rec_a["encoders"])
    return [x if math.isclose(x, y, rel_tol=1e-6) else None for x, y in zip(ma, mb)]


def write_interpolated_runs(run_a, run_b, ts, out_dir, mode: str | None = None,
                            own_placeholders: bool = False) -> list[Path]:
    """One run directory per t, ``out_dir/t_<t>/``, loadable by ``dti.load_embeddings`` and sampled
    by ``dti.sample.sample`` like a trained run.

    ``mode`` defaults to slerp when both runs are DTI runs and lerp otherwise. The placeholder is
    run_a's; ``own_placeholders`` gives each t its own (``t_placeholder``) so that every point can
    be loaded into one pipeline side by side.
    """
    rec_a, rows_a, rec_b, rows_b = check_pair(run_a, run_b)
    both_dti = run_method(rec_a) == "dti" and run_method(rec_b) == "dti"
    mode = mode or ("slerp" if both_dti else "lerp")
    if mode not in MODES:
        raise DTIError(f"unknown interpolation mode {mode!r}; choose slerp or lerp")
    ts = [float(t) for t in ts]
    if not ts:
        raise DTIError("no interpolation points (ts) given")
    labels = [t_label(t) for t in ts]
    if len(set(labels)) != len(labels):
        raise DTIError(f"interpolation points repeat: {', '.join(labels)}")
    norms = _slerp_norms(rec_a, rec_b) if mode == "slerp" else [None] * len(rows_a)
    source_cfg = rec_a["config"]  # the training configuration of run a, which every point inherits
    sources = [str(Path(run_a).resolve()), str(Path(run_b).resolve())]
    out = []
    for t, label in zip(ts, labels):
        rows = [interpolate_vectors(a, b, t, mode, n) for a, b, n in zip(rows_a, rows_b, norms)]
        placeholder = t_placeholder(rec_a["tokens"][0], t) if own_placeholders else rec_a["tokens"][0]
        tokens = placeholder_tokens(placeholder, rows[0].shape[0]) if own_placeholders else rec_a["tokens"]
        run_dir = Path(out_dir) / f"t_{label}"
        meta = {"method": "interpolation", "family": source_cfg["family"], "base_model": source_cfg["model"],
                "placeholder": placeholder, "tokens": json.dumps(tokens), "run_a": sources[0], "run_b": sources[1],
                "t": label, "mode": mode}
        FAMILIES[source_cfg["family"]].write_embedding_files(run_dir, placeholder, rows, meta)
        record = {**rec_a, "config": {**source_cfg, "placeholder": placeholder}, "tokens": tokens,
                  "method": "interpolation", "source_runs": sources, "t": t, "mode": mode, "status": "complete",
                  "source_methods": [run_method(rec_a), run_method(rec_b)],
                  "final_norms": {e: r.norm(dim=1).tolist() for e, r in zip(rec_a["encoders"], rows)},
                  "vectors_sha256": content_digest(rows)}
        if mode == "slerp":  # per encoder: the m* the path keeps, or "blend" (linear blend of the two lengths)
            record["slerp_norms"] = {e: "blend" if n is None else n for e, n in zip(rec_a["encoders"], norms)}
        write_json(record, run_dir / "run.json")
        out.append(run_dir)
    return out


def _reference_images(folder) -> list[Image.Image]:
    from dti.data import list_images, open_rgb

    return [open_rgb(path, "reference") for path in list_images(folder)]


def path_methods(record: dict) -> list[str]:
    """The methods of an interpolated run's two sources: one (``["dti"]``), or two when they differ."""
    return list(dict.fromkeys(record["source_methods"]))


def _check_templates(templates) -> list[str]:
    templates = [str(t) for t in templates]
    if not templates:
        raise DTIError("no prompt templates given")
    for template in templates:
        if "{}" not in template:
            raise DTIError(f"template {template!r} has no {{}} where the concept goes")
    return templates


def interpolation(run_a, run_b, ts, templates, seeds, class_noun_a: str, class_noun_b: str, references_a,
                  references_b, out_dir, metric_ids: dict | None = None, sample_cfg=None,
                  image_metric: str = "dinov2", text_metric: str = "siglip", mode: str | None = None,
                  figures=None, tables=None, batch_size: int = 16, grid_rows: int = 12) -> pd.DataFrame:
    """Interpolate, sample every t with one pipeline, score against both concepts, tabulate and plot.

    ``out_dir`` receives ``runs/t_<t>/`` and ``images/t_<t>/``; the CSV goes to ``tables``
    (default ``out_dir/tables``), the figures to ``figures`` (default ``out_dir/figures``).
    Returns the tidy score table.
    """
    from dti.devices import resolve_device
    from dti.metrics import METRICS, Backbones, score_images
    from dti.sample import SampleConfig, sample

    sample_cfg = sample_cfg or SampleConfig()
    out_dir = Path(out_dir)
    figures = Path(figures) if figures else out_dir / "figures"
    tables = Path(tables) if tables else out_dir / "tables"
    templates = _check_templates(templates)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise DTIError("no seeds given")
    for name, kind in ((image_metric, "image"), (text_metric, "text")):
        if name not in METRICS or METRICS[name].kind != kind:
            valid = ", ".join(n for n, m in METRICS.items() if m.kind == kind)
            raise DTIError(f"{name!r} is not a {kind} metric; {kind} metrics: {valid}")
    # Every input is checked before any model loads: a bad path should fail in seconds.
    refs = {"a": _reference_images(references_a), "b": _reference_images(references_b)}
    nouns = {"a": str(class_noun_a), "b": str(class_noun_b)}
    run_dirs = write_interpolated_runs(run_a, run_b, ts, out_dir / "runs", mode, own_placeholders=True)
    record, _ = read_run(run_dirs[0])
    mode = record["mode"]
    family, model = record["config"]["family"], record["config"]["model"]
    concepts = {"a": read_run(run_a)[0]["config"]["placeholder"], "b": read_run(run_b)[0]["config"]["placeholder"]}

    # One pipeline for every t. load_embeddings adds the concept's tokens to the tokenizer and
    # diffusers refuses a token it already has, so each t carries its own placeholder
    # (<x@0.5>, ...). The images do not depend on the token's name or id, only on its vectors,
    # and unlike unloading tokens between points this works the same for SD, SDXL and SANA.
    pipe = None
    manifests = {}
    for k, run_dir in enumerate(run_dirs, 1):
        t_run, _ = read_run(run_dir)
        if pipe is None:
            pipe = FAMILIES[family].load_pipeline(model, *sample_cfg.placement())
            pipe.set_progress_bar_config(disable=True)  # one plain line per point instead (below)
        # A rerun keeps a point's intact images only if its vectors, the model, the prompts and the
        # settings are those they were made from: dti.sample checks its own stamp (sample.json).
        manifests[t_run["t"]] = sample(run_dir, out_dir / "images" / run_dir.name, SUBJECT, nouns["a"], templates,
                                       seeds, "interpolation", sample_cfg, pipe=pipe)
        print(f"interpolation ({mode}): t = {t_label(t_run['t'])} sampled ({k}/{len(run_dirs)} points, "
              f"{len(templates) * len(seeds)} images each)", flush=True)
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    backbones = Backbones([image_metric, text_metric], model_ids=metric_ids,
                          device=str(resolve_device(sample_cfg.device)), batch_size=batch_size)
    rows = []
    for t, manifest in manifests.items():
        frame = pd.read_csv(manifest, keep_default_na=False)
        images = []
        for file in frame["file"]:
            with Image.open(Path(manifest).parent / file) as im:
                images.append(im.convert("RGB"))
        for against in ("a", "b"):
            # the scoring text of subject X, as dti.sample writes it: the template with X's class noun
            texts = [templates[i].format(nouns[against]) + "." for i in frame["prompt_index"]]
            scores = score_images(backbones, [image_metric, text_metric], images, texts, refs[against])
            for metric, values in scores.items():
                for row, value in zip(frame.itertuples(index=False), values):
                    rows.append({"t": t, "mode": mode, "template": int(row.prompt_index), "seed": int(row.seed),
                                 "metric": metric, "against": against, "value": value,
                                 "file": str(Path(manifest).parent / row.file)})
    df = pd.DataFrame(rows).sort_values(["t", "template", "seed", "metric", "against"], kind="stable")
    df = df.reset_index(drop=True)
    write_csv(df, tables / "interpolation.csv")
    path = {"methods": path_methods(record), "mode": mode, "concepts": concepts, "nouns": nouns}
    plot_grid(df, templates, path, figures, grid_rows, refs)
    plot_scores(df, path, figures)
    return df


PATHS = {"slerp": "slerp (great circle at a fixed norm)", "lerp": "lerp (straight line)"}


def _path_name(path: dict) -> str:
    """The figures' suffix: the method's id (``dti``, ``ti``), so that two interpolations never share a name."""
    return "_".join(path["methods"])


def _path_title(path: dict) -> str:
    """``DTI, slerp (...): <a> (t = 0) → <b> (t = 1)``."""
    who = " / ".join(method_label(m) for m in path["methods"])
    a, b = path["concepts"]["a"], path["concepts"]["b"]
    return f"{who}, {PATHS.get(path['mode'], path['mode'])}: {a} (t = 0) → {b} (t = 1)"


def plot_grid(df: pd.DataFrame, templates: list[str], path: dict, out_dir: Path, max_rows: int = 12,
              references: dict | None = None, n_references: int = 4):
    """The two concepts' reference images on top, then one row per (prompt, seed) and one column per t.
    ``path``: methods, mode, concepts (placeholders of a and b) and nouns, as ``interpolation`` passes it."""
    cells = df[["t", "template", "seed", "file"]].drop_duplicates(["t", "template", "seed"])
    ts = sorted(cells["t"].unique())
    keys = sorted(set(zip(cells["template"], cells["seed"])))
    shown = keys[:max_rows]
    files = {(r.t, r.template, r.seed): r.file for r in cells.itertuples()}
    stem = path["concepts"]["a"].strip("<>")
    # the prompt as sampled, with t for each point's own token (<a@0.25>, ...)
    rows = [f"{templates[template].format(f'<{stem}@t>')} (seed {seed})" for template, seed in shown]
    strips = [(f"concept {key} (t = {0 if key == 'a' else 1}): {path['concepts'][key]} ({path['nouns'][key]}), "
               f"references", (references or {}).get(key, [])[:n_references]) for key in ("a", "b")]
    fig = image_grid([[files[(t, template, seed)] for t in ts] for template, seed in shown], rows,
                     [f"t = {t_label(t)}" for t in ts], _path_title(path), strips)
    more = f" (first {len(shown)} of {len(keys)} prompt/seed rows)" if len(shown) < len(keys) else ""
    save_figure(fig, out_dir, f"interpolation_grid_{_path_name(path)}",
                f"{_path_title(path)}. Top: the two concepts' reference images. Below: images sampled at each "
                f"interpolation point t (columns), one row per prompt and seed{more}; <{stem}@t> is the token at t.")
    return fig


def plot_scores(df: pd.DataFrame, path: dict, out_dir: Path):
    metrics = list(dict.fromkeys(df["metric"]))
    means = df.groupby(["metric", "against", "t"])["value"].mean().reset_index()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for against, g in means[means["metric"] == metric].groupby("against"):
            ax.plot(g["t"], g["value"], marker="o", color=CONCEPT_COLOURS[against],
                    label=f"against {against}: {path['concepts'][against]} ({path['nouns'][against]})")
        ax.set_xticks(sorted(means["t"].unique()))
        ax.set_xlabel("interpolation point t (0: concept a, 1: concept b)")
        ax.set_ylabel(f"mean {metric} ↑")
        ax.set_title(metric)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)  # below: no point hidden
    fig.suptitle(_path_title(path), fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, out_dir, f"interpolation_scores_{_path_name(path)}",
                f"{_path_title(path)}: mean fidelity of the images sampled at each point t, scored against each "
                f"concept's reference images (image metric) and class noun (text metric), one line per metric "
                f"and concept.")
    return fig


def _read_templates(prompts: str, live: bool, prompts_file: str | None) -> list[str]:
    """A text file (one template per line), or a prompt set by name."""
    from dti.data import read_prompt_set

    path = Path(prompts)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return read_prompt_set(prompts, live, prompts_file)


def main(argv=None) -> int:
    from dti.sample import SampleConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-a", required=True, help="finished run of concept a (t = 0)")
    parser.add_argument("--run-b", required=True, help="finished run of concept b (t = 1)")
    parser.add_argument("--ts", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1],
                        help="interpolation points (default 0 0.25 0.5 0.75 1)")
    parser.add_argument("--mode", choices=MODES, help="default: slerp for two DTI runs, lerp otherwise")
    parser.add_argument("--prompts", default="dti_simple",
                        help="a text file with one template per line ({} marks the concept), or a prompt set name")
    parser.add_argument("--prompts-file", help="prompt sets JSON (default: dti/resources/dreambooth/prompt_sets.json)")
    parser.add_argument("--live", action="store_true", help="use the prompt set's live-subject list")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    parser.add_argument("--references-a", required=True, help="folder of concept a's reference images")
    parser.add_argument("--references-b", required=True, help="folder of concept b's reference images")
    parser.add_argument("--class-a", required=True, help="class noun of concept a, for text fidelity")
    parser.add_argument("--class-b", required=True, help="class noun of concept b, for text fidelity")
    parser.add_argument("--image-metric", default="dinov2", help="image fidelity metric (default dinov2)")
    parser.add_argument("--text-metric", default="siglip", help="text fidelity metric (default siglip)")
    parser.add_argument("--model-id", action="append", default=[], metavar="BACKBONE=ID",
                        help="hub id or local path of a metric backbone (dinov2, dino, clip, siglip); repeatable")
    parser.add_argument("--figures", required=True, help="folder for the figures (PNG, PDF, caption)")
    parser.add_argument("--tables", required=True, help="folder for the tidy CSV table")
    parser.add_argument("--work", required=True, help="folder for the interpolated runs and their images")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="sampling setting (as `python -m dti sample --set`), e.g. steps=30; repeatable")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # loading bars write carriage returns into the job's log
    transformers_logging.disable_progress_bar()
    try:
        interpolation(args.run_a, args.run_b, args.ts, _read_templates(args.prompts, args.live, args.prompts_file),
                      args.seeds, args.class_a, args.class_b, args.references_a, args.references_b, args.work,
                      metric_ids=parse_model_ids(args.model_id), sample_cfg=SampleConfig().set(args.assignments),
                      image_metric=args.image_metric, text_metric=args.text_metric, mode=args.mode,
                      figures=args.figures, tables=args.tables)
    except DTIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
