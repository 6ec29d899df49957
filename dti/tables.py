"""The paper's two tables from aggregated scores, as CSV, Markdown and LaTeX.

* main: one row per method, image and text fidelity (mean over subjects, 95% interval);
* ablation: one row per ablation cell (optimizer, m*, kappa), the default DTI row included.

With ``paper`` (a model key of ``dti/resources/paper_numbers.json``) the paper's reported
numbers stand beside ours in every format, with whether each lies inside our 95% interval. With
``preset`` (the workflow's preset) the Markdown table warns when the paper's numbers came from
another preset. The Markdown table says whether our image scores used masked references.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd

from .io import DTIError, atomic_path

METHOD_ORDER = ["ti", "ti_rescaled", "crossinit", "dti"]
METHOD_NAMES = {"ti": "TI", "ti_rescaled": "TI-rescaled", "crossinit": "CrossInit", "dti": "DTI"}


def _paper_data() -> dict:
    return json.loads(resources.files("dti.resources").joinpath("paper_numbers.json").read_text())


def paper_numbers(table: str, model: str | None) -> dict:
    if not model:
        return {}
    data = _paper_data()
    if model not in data[table]:
        raise DTIError(f"no reported {table} numbers for {model!r}; known: {', '.join(sorted(data[table]))}")
    return data[table][model]


def paper_preset(model: str | None) -> str | None:
    """The preset of ours that matches the protocol behind ``model``'s printed numbers."""
    return _paper_data()["preset"].get(model) if model else None


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
            if len(hit) > 1:  # aggregate keeps masked and unmasked apart: one mean would mix protocols
                raise DTIError(f"{metric!r} scores of {label!r} mix reference kinds "
                               f"({', '.join(map(str, hit.get('references', [])))})")
            r = hit.iloc[0]
            row.update({f"{axis}_mean": r["mean"], f"{axis}_ci_low": r["ci_low"], f"{axis}_ci_high": r["ci_high"]})
            row["subjects"] = f"{int(r['n_subjects'])}/{int(r['n_expected_subjects'])}"
            if axis == "image":  # empty: scores from before `dti score` recorded it
                refs = r["references"] if "references" in r and pd.notna(r["references"]) else ""
        rows.append({**row, "image_references": refs})
    return pd.DataFrame(rows)


def _inside(value, low, high):
    """Whether the paper's ``value`` lies in our interval; None when either is missing."""
    if value is None or pd.isna(value) or pd.isna(low) or pd.isna(high):
        return None
    return bool(low <= value <= high)


def with_paper(table: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """``table`` with the paper's numbers per row and whether each lies inside our 95% interval."""
    table = table.copy()
    for i, axis in enumerate(("image", "text")):
        values = [paper[label][i] if label in paper else None for label in table["label"]]
        table[f"paper_{axis}"] = values
        table[f"paper_{axis}_inside"] = [_inside(v, lo, hi) for v, lo, hi in
                                         zip(values, table[f"{axis}_ci_low"], table[f"{axis}_ci_high"])]
    return table


def _references_line(table: pd.DataFrame, paper: bool) -> str:
    kinds = sorted(set(table.get("image_references", pd.Series(dtype=str)).fillna("")))
    ours = {("masked",): "masked references (backgrounds removed)",
            ("unmasked",): "unmasked references (whole photos)"}.get(tuple(kinds), "references of unrecorded or "
                                                                                  "mixed kinds")
    line = f"Our image scores used {ours}."
    if paper:
        line += (" The paper's DINOv2 numbers came from masked references (the authors mask reference backgrounds "
                 "with masks they do not publish)" + (": ours are not directly comparable." if kinds != ["masked"]
                                                       else "."))
    return line


def _yes_no(value) -> str:
    return "" if value is None or pd.isna(value) else ("yes" if value else "no")


def _latex(text: str) -> str:
    return (text.replace("_", r"\_").replace("m*", r"$m^*$").replace("kappa", r"$\kappa$"))


def _fmt(mean, low, high) -> str:
    return "n/a" if pd.isna(mean) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def write(table: pd.DataFrame, out_dir, name: str, title: str, image_metric: str, text_metric: str,
          paper: dict | None = None, names: dict | None = None, preset: str | None = None,
          paper_from: str | None = None):
    """``name``.csv (tidy numbers), ``name``.md and ``name``.tex, with the paper's numbers when given
    (``table`` then has with_paper's columns). ``preset``: ours; ``paper_from``: the preset matching the
    paper's numbers (a mismatch prints a warning)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = names or {}
    csv = table.copy()
    for column in ("paper_image_inside", "paper_text_inside"):
        if column in csv:  # true / false / empty (no paper number, or no interval of ours)
            csv[column] = [{True: "true", False: "false"}.get(v, "") for v in csv[column]]
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        csv.to_csv(tmp, index=False)
    header = f"| | image ({image_metric}) | text ({text_metric}) | subjects |"
    rule = "|---|---|---|---|"
    if paper:
        header += " paper image | paper text | paper image inside | paper text inside |"
        rule += "---|---|---|---|"
    lines = [f"**{title}** (mean over subjects, 95% bootstrap interval)", ""]
    if preset:
        lines.append(f"Preset: `{preset}`.")
        if paper and paper_from and preset != paper_from:
            lines.append(f"**Warning**: the paper's numbers correspond to preset `{paper_from}`, these runs used "
                         f"`{preset}`: the protocols differ, so compare with care.")
    lines += [_references_line(table, bool(paper)), "", header, rule]
    columns = "lcccc" if paper else "lcc"
    tex = [f"\\begin{{tabular}}{{{columns}}}", r"\toprule",
           f"& Image ({_latex(image_metric)}) & Text ({_latex(text_metric)})"
           + (" & Paper image & Paper text" if paper else "") + " \\\\", r"\midrule"]
    for r in table.itertuples():
        shown = names.get(r.label, r.label)
        line = (f"| {shown} | {_fmt(r.image_mean, r.image_ci_low, r.image_ci_high)} | "
                f"{_fmt(r.text_mean, r.text_ci_low, r.text_ci_high)} | {r.subjects} |")
        row = f"{_latex(shown)} & {r.image_mean:.3f} & {r.text_mean:.3f}"
        if paper:
            known = r.paper_image is not None and pd.notna(r.paper_image)
            line += (f" {r.paper_image:.3f} | {r.paper_text:.3f} |" if known else " | |")
            line += f" {_yes_no(r.paper_image_inside)} | {_yes_no(r.paper_text_inside)} |"
            row += f" & {r.paper_image:.3f} & {r.paper_text:.3f}" if known else " & -- & --"
        lines.append(line)
        tex.append(row + " \\\\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out_dir / f"{name}.tex") as tmp:
        tmp.write_text("\n".join(tex) + "\n")


def main_table(summary, out_dir, image_metric: str, text_metric: str, model_label: str, paper: str | None = None,
               preset: str | None = None):
    summary = _read_summary(summary)
    present = list(dict.fromkeys(summary["method"]))
    # the paper's order, then any other method (a newly registered one) in the summary's order
    methods = [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]
    table = fidelity_rows(summary, image_metric, text_metric, methods)
    table.insert(0, "model", model_label)
    if preset:
        table.insert(1, "preset", preset)
    numbers = paper_numbers("main", paper)
    if numbers:
        table = with_paper(table, numbers)
    write(table, out_dir, "main", f"Main table: {model_label}", image_metric, text_metric,
          numbers, METHOD_NAMES, preset, paper_preset(paper))
    return table


def ablation_table(cells: dict[str, Path], default_summary, out_dir, image_metric: str, text_metric: str,
                   default_cell: str, paper: str | None = None, preset: str | None = None):
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
    if preset:
        table.insert(0, "preset", preset)
    numbers = paper_numbers("ablation", paper)
    if numbers:
        table = with_paper(table, numbers)
    write(table, out_dir, "ablation", "Ablation of DTI (optimizer, m*, kappa); last row: the default",
          image_metric, text_metric, numbers, preset=preset, paper_from=paper_preset(paper))
    return table
