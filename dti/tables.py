"""The paper's two tables from aggregated scores, as CSV, Markdown and LaTeX.

* main: one row per method, image and text fidelity (mean over subjects, 95% interval);
* ablation: one row per ablation cell (optimizer, m*, kappa), the default DTI row included.

With ``paper`` (a model key of ``dti/resources/paper_numbers.json``) the paper's reported
numbers stand beside ours in the Markdown table.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd

from .io import DTIError, atomic_path

METHOD_ORDER = ["ti", "ti_rescaled", "crossinit", "dti"]
METHOD_NAMES = {"ti": "TI", "ti_rescaled": "TI-rescaled", "crossinit": "CrossInit", "dti": "DTI"}


def paper_numbers(table: str, model: str | None) -> dict:
    if not model:
        return {}
    data = json.loads(resources.files("dti.resources").joinpath("paper_numbers.json").read_text())
    if model not in data[table]:
        raise DTIError(f"no reported {table} numbers for {model!r}; known: {', '.join(sorted(data[table]))}")
    return data[table][model]


def cell_label(direction_optimizer: str, m_star, kappa) -> str:
    return f"{direction_optimizer}, m*={m_star}, kappa={float(kappa)}"


def _read_summary(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DTIError(f"summary {path} not found")
    return pd.read_csv(path)


def fidelity_rows(summary: pd.DataFrame, image_metric: str, text_metric: str, labels: list[str]) -> pd.DataFrame:
    """One row per label (the summary's ``method`` column): image/text mean, interval, subjects."""
    rows = []
    for label in labels:
        row = {"label": label}
        for axis, metric in (("image", image_metric), ("text", text_metric)):
            hit = summary[(summary["method"] == label) & (summary["metric"] == metric)]
            if hit.empty:
                raise DTIError(f"no {metric!r} scores for {label!r} in the summary")
            r = hit.iloc[0]
            row.update({f"{axis}_mean": r["mean"], f"{axis}_ci_low": r["ci_low"], f"{axis}_ci_high": r["ci_high"]})
            row["subjects"] = f"{int(r['n_subjects'])}/{int(r['n_expected_subjects'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def _latex(text: str) -> str:
    return (text.replace("_", r"\_").replace("m*", r"$m^*$").replace("kappa", r"$\kappa$"))


def _fmt(mean, low, high) -> str:
    return "n/a" if pd.isna(mean) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def write(table: pd.DataFrame, out_dir, name: str, title: str, image_metric: str, text_metric: str,
          paper: dict | None = None, names: dict | None = None):
    """``name``.csv (tidy numbers), ``name``.md (with the paper's numbers when given), ``name``.tex."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = names or {}
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    header = f"| | image ({image_metric}) | text ({text_metric}) | subjects |"
    rule = "|---|---|---|---|"
    if paper:
        header, rule = header + " paper image | paper text |", rule + "---|---|"
    lines = [f"**{title}** (mean over subjects, 95% bootstrap interval)", "", header, rule]
    tex = [r"\begin{tabular}{lcc}", r"\toprule",
           f"& Image ({_latex(image_metric)}) & Text ({_latex(text_metric)}) \\\\", r"\midrule"]
    for r in table.itertuples():
        shown = names.get(r.label, r.label)
        line = (f"| {shown} | {_fmt(r.image_mean, r.image_ci_low, r.image_ci_high)} | "
                f"{_fmt(r.text_mean, r.text_ci_low, r.text_ci_high)} | {r.subjects} |")
        if paper:
            ref = paper.get(r.label)
            line += f" {ref[0]:.3f} | {ref[1]:.3f} |" if ref else " | |"
        lines.append(line)
        tex.append(f"{_latex(shown)} & {r.image_mean:.3f} & {r.text_mean:.3f} \\\\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out_dir / f"{name}.tex") as tmp:
        tmp.write_text("\n".join(tex) + "\n")


def main_table(summary, out_dir, image_metric: str, text_metric: str, model_label: str, paper: str | None = None):
    summary = _read_summary(summary)
    methods = [m for m in METHOD_ORDER if m in set(summary["method"])]
    table = fidelity_rows(summary, image_metric, text_metric, methods)
    table.insert(0, "model", model_label)
    write(table, out_dir, "main", f"Main table: {model_label}", image_metric, text_metric,
          paper_numbers("main", paper), METHOD_NAMES)
    return table


def ablation_table(cells: dict[str, Path], default_summary, out_dir, image_metric: str, text_metric: str,
                   default_cell: str, paper: str | None = None):
    """``cells``: label -> summary.csv of that cell (its runs' ``method`` is ``dti``); the default
    DTI row comes from ``default_summary`` (the main table's)."""
    frames = []
    for label, path in list(cells.items()) + [(default_cell, default_summary)]:
        s = _read_summary(path)
        s = s[s["method"] == "dti"].copy()
        s["method"] = label
        frames.append(s)
    combined = pd.concat(frames, ignore_index=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "ablation_summary.csv") as tmp:
        combined.to_csv(tmp, index=False)
    table = fidelity_rows(combined, image_metric, text_metric, list(cells) + [default_cell])
    write(table, out_dir, "ablation", "Ablation of DTI (optimizer, m*, kappa); last row: the default",
          image_metric, text_metric, paper_numbers("ablation", paper))
    return table
