"""The paper's two tables from aggregated scores, as CSV, Markdown and LaTeX.

* main: one row per method, image and text fidelity (mean over subjects, 95% interval);
* ablation: one row per ablation cell (optimizer, m*, kappa), the default DTI row included.

With ``paper`` (a model key of ``dti/resources/paper_numbers.json``) the paper's reported
numbers stand beside ours in every format, with whether each lies inside our 95% interval. With
``preset`` (the workflow's preset) the Markdown table warns when the paper's numbers came from
another preset. The Markdown table says whether our image scores used masked references.

CSV is for programs: method and cell ids, plain numbers. Markdown and LaTeX are for readers:
display names (TI-rescaled; an ablation cell by how it differs from the default, e.g. "kappa = 0"),
an arrow on every metric (all of them are higher-is-better) and each column's best value in bold.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from . import stats
from .io import DTIError, atomic_path, read_json
from .methods import display_name

METHOD_ORDER = ["ti", "ti_rescaled", "crossinit", "dti"]
OPTIMIZER_NAMES = {"rsgd": "RSGD", "adamw": "AdamW"}
CELL = re.compile(r"^(?P<optimizer>[^,]+), m\*=(?P<m_star>[^,]+), kappa=(?P<kappa>[^,]+)$")  # cell_label's form
ARROW = {"md": "↑", "tex": r"$\uparrow$"}  # every image/text similarity and accuracy metric: higher is better


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
    """An ablation cell's id (the CSV's ``label``, the paper numbers' key)."""
    return f"{direction_optimizer}, m*={m_star}, kappa={float(kappa)}"


def _number(text: str) -> str:
    """A setting as people write it: 0.0001 -> 1e-4, 5.0 -> 5; words (mean, min) as they are."""
    try:
        x = float(text)
    except ValueError:
        return text
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return f"{x:g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _cell_settings(label: str) -> dict | None:
    match = CELL.match(label)
    if match is None:
        return None
    p = match.groupdict()
    return {"optimizer": OPTIMIZER_NAMES.get(p["optimizer"], p["optimizer"]), "m_star": f"m* = {_number(p['m_star'])}",
            "kappa": f"kappa = {_number(p['kappa'])}"}


def cell_display(label: str, default: str) -> str:
    """An ablation cell for readers: what it changes from the default ("kappa = 0", "AdamW"), or the
    default row marked with its settings; a label not in cell_label's form stays as it is."""
    shown, base = _cell_settings(label), _cell_settings(default)
    if shown is None:
        return label
    if label == default:
        return f"DTI (default: {', '.join(shown.values())})"
    if base is None:
        return ", ".join(shown.values())
    return ", ".join(v for key, v in shown.items() if v != base[key]) or label


def default_cell_label(run_dirs) -> str:
    """The default ablation row's label, read from the DTI runs behind it (the settings they recorded)."""
    from .embeddings import run_method

    labels = {}
    for run in run_dirs:
        record = read_json(Path(run) / "run.json")
        if run_method(record) != "dti":
            raise DTIError(f"{run} is a {run_method(record)!r} run; the default ablation row comes from DTI runs")
        cfg = record["config"]
        labels.setdefault(cell_label(cfg["direction_optimizer"], cfg["m_star"], cfg["kappa"]), run)
    if not labels:
        raise DTIError("no DTI runs given to read the default ablation cell from")
    if len(labels) > 1:
        raise DTIError(f"the default DTI runs differ in settings: {'; '.join(f'{k} ({v})' for k, v in labels.items())}")
    return next(iter(labels))


def _read_summary(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DTIError(f"summary {path} not found")
    return pd.read_csv(path)


def fidelity_rows(summary: pd.DataFrame, image_metric: str, text_metric: str, labels: list[str],
                  extra_metrics: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per label (the summary's ``method`` column): image/text mean, interval, subjects; and the same
    for each of ``extra_metrics`` (columns named by the metric: ``attr_prompt_mean``, ...)."""
    rows = []
    for label in labels:
        row = {"label": label}
        for axis, metric in (("image", image_metric), ("text", text_metric), *((m, m) for m in extra_metrics)):
            hit = summary[(summary["method"] == label) & (summary["metric"] == metric)]
            if hit.empty:
                raise DTIError(f"no {metric!r} scores for {label!r} in the summary")
            if len(hit) > 1:  # aggregate keeps masked and unmasked apart: one mean would mix protocols
                raise DTIError(f"{metric!r} scores of {label!r} mix reference kinds "
                               f"({', '.join(map(str, hit.get('references', [])))})")
            r = hit.iloc[0]
            row.update({f"{axis}_mean": r["mean"], f"{axis}_ci_low": r["ci_low"], f"{axis}_ci_high": r["ci_high"],
                        # why an interval is missing (dti.stats: fewer than 5 subjects, a missing subject, ...)
                        f"{axis}_note": r["note"] if "note" in r and pd.notna(r["note"]) else ""})
            if axis in ("image", "text"):  # the fidelity columns' subjects (an extra metric may ask fewer images)
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
    return (text.replace("_", r"\_").replace("m*", r"$m^*$").replace("kappa", r"$\kappa$").replace("<", "$<$"))


def _best(values) -> list[bool]:
    """Which entries hold the column's best (highest) value as shown (3 decimals); none in a one-row column."""
    shown = [None if v is None or pd.isna(v) else round(float(v), 3) for v in values]
    top = max((v for v in shown if v is not None), default=None)
    return [len(shown) > 1 and v is not None and v == top for v in shown]


def _value(value, bold: bool, fmt: str) -> str:
    text = f"{value:.3f}"
    if bold:
        text = f"**{text}**" if fmt == "md" else f"\\textbf{{{text}}}"
    return text


def _fmt(mean, low, high, bold: bool = False, fmt: str = "md", note: str = "") -> str:
    """Mean with its interval: ``0.512 [0.401, 0.620]`` (TeX: the interval smaller); without an interval,
    the mean and why there is none (``note``, e.g. "n too small for an interval: n=3 < 5")."""
    if pd.isna(mean):
        return "n/a"
    text = _value(mean, bold, fmt)
    if pd.isna(low) or pd.isna(high):
        if not note:
            return text
        return f"{text} ({note})" if fmt == "md" else f"{text} {{\\scriptsize ({_latex(note)})}}"
    interval = f"[{low:.3f}, {high:.3f}]"
    return f"{text} {interval}" if fmt == "md" else f"{text} {{\\scriptsize {interval}}}"


def _paper_value(value, bold: bool, fmt: str) -> str:
    if value is None or pd.isna(value):
        return "" if fmt == "md" else "--"
    return _value(value, bold, fmt)


def write(table: pd.DataFrame, out_dir, name: str, title: str, image_metric: str, text_metric: str,
          paper: dict | None = None, names: dict | None = None, preset: str | None = None,
          paper_from: str | None = None, extra_metrics: tuple[str, ...] = ()):
    """``name``.csv (tidy numbers), ``name``.md and ``name``.tex, with the paper's numbers when given
    (``table`` then has with_paper's columns). ``names``: label -> what readers see. ``preset``: ours;
    ``paper_from``: the preset matching the paper's numbers (a mismatch prints a warning). ``extra_metrics``:
    further columns after text (``fidelity_rows``), higher is better."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = names or {}
    csv = table.copy()
    for column in ("paper_image_inside", "paper_text_inside"):
        if column in csv:  # true / false / empty (no paper number, or no interval of ours)
            csv[column] = [{True: "true", False: "false"}.get(v, "") for v in csv[column]]
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        csv.to_csv(tmp, index=False)

    axes = ["image", "text", *extra_metrics]  # the column prefixes of fidelity_rows
    best = {column: _best(table[column]) for column in (f"{axis}_mean" for axis in axes)}
    if paper:
        best.update({column: _best(table[column]) for column in ("paper_image", "paper_text")})
    up_md, up_tex = ARROW["md"], ARROW["tex"]
    header = (f"| | image ({image_metric}) {up_md} | text ({text_metric}) {up_md} |"
              + "".join(f" {m} {up_md} |" for m in extra_metrics) + " subjects |")
    rule = "|---|---|---|" + "---|" * len(extra_metrics) + "---|"
    if paper:
        header += f" paper image {up_md} | paper text {up_md} | paper image inside | paper text inside |"
        rule += "---|---|---|---|"
    lines = [f"**{title}** (mean over subjects, 95% BCa bootstrap interval over subjects, none below 5 subjects; "
             f"{up_md}: higher is better, best in bold)", ""]
    if preset:
        lines.append(f"Preset: `{preset}`.")
        if paper and paper_from and preset != paper_from:
            lines.append(f"**Warning**: the paper's numbers correspond to preset `{paper_from}`, these runs used "
                         f"`{preset}`: the protocols differ, so compare with care.")
    lines += [_references_line(table, bool(paper)), "", header, rule]
    columns = "l" + "c" * (len(axes) + 1) + ("cc" if paper else "")
    tex = [r"% needs \usepackage{booktabs}", f"\\begin{{tabular}}{{{columns}}}", r"\toprule",
           f"& Image ({_latex(image_metric)}) {up_tex} & Text ({_latex(text_metric)}) {up_tex}"
           + "".join(f" & {_latex(m)} {up_tex}" for m in extra_metrics) + " & Subjects"
           + (f" & Paper image {up_tex} & Paper text {up_tex}" if paper else "") + " \\\\", r"\midrule"]
    for i, r in enumerate(table.to_dict("records")):
        shown = names.get(r["label"], r["label"])
        cells = [([r[f"{a}_mean"], r[f"{a}_ci_low"], r[f"{a}_ci_high"], best[f"{a}_mean"][i]], r.get(f"{a}_note", ""))
                 for a in axes]
        line = "| " + " | ".join([shown, *(_fmt(*v, note=note) for v, note in cells), r["subjects"]]) + " |"
        row = " & ".join([_latex(shown), *(_fmt(*v, fmt="tex", note=note) for v, note in cells), r["subjects"]])
        if paper:
            pi, pt = (_paper_value(r[c], best[c][i], "md") for c in ("paper_image", "paper_text"))
            line += f" {pi} | {pt} | {_yes_no(r['paper_image_inside'])} | {_yes_no(r['paper_text_inside'])} |"
            row += "".join(f" & {_paper_value(r[c], best[c][i], 'tex')}" for c in ("paper_image", "paper_text"))
        lines.append(line)
        tex.append(row + " \\\\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out_dir / f"{name}.tex") as tmp:
        tmp.write_text("\n".join(tex) + "\n")


def main_table(summary, out_dir, image_metric: str, text_metric: str, model_label: str, paper: str | None = None,
               preset: str | None = None, extra_metrics: tuple[str, ...] = ()):
    summary = _read_summary(summary)
    present = list(dict.fromkeys(summary["method"]))
    # the paper's order, then any other method (a newly registered one) in the summary's order
    methods = [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]
    table = fidelity_rows(summary, image_metric, text_metric, methods, tuple(extra_metrics))
    table.insert(0, "model", model_label)
    if preset:
        table.insert(1, "preset", preset)
    numbers = paper_numbers("main", paper)
    if numbers:
        table = with_paper(table, numbers)
    write(table, out_dir, "main", f"Main table: {model_label}", image_metric, text_metric,
          numbers, {m: display_name(m) for m in methods}, preset, paper_preset(paper), tuple(extra_metrics))
    return table


def ablation_table(cells: dict[str, Path], default_summary, out_dir, image_metric: str, text_metric: str,
                   default_cell: str | None, paper: str | None = None, preset: str | None = None,
                   default_runs=()):
    """``cells``: label -> summary.csv of that cell (its runs' ``method`` is ``dti``); the default
    DTI row comes from ``default_summary`` (the main table's) and is labelled ``default_cell``, or,
    when that is None, by the settings recorded in ``default_runs`` (the DTI runs behind it)."""
    default_cell = default_cell or default_cell_label(default_runs)
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
    names = {label: cell_display(label, default_cell) for label in table["label"]}
    title = ("Ablation of DTI: each row changes the setting it names (direction optimizer, fixed norm, prior "
             "concentration kappa); last row: the default")
    write(table, out_dir, "ablation", title, image_metric, text_metric, numbers, names, preset=preset,
          paper_from=paper_preset(paper))
    if (Path(default_summary).parent / "per_subject.csv").is_file():  # as `dti aggregate` writes beside summary.csv
        paired = ablation_paired(cells, default_summary)
        with atomic_path(out_dir / "ablation_paired.csv") as tmp:
            paired.to_csv(tmp, index=False)
        with atomic_path(out_dir / "ablation_paired.md") as tmp:
            tmp.write_text(ablation_paired_markdown(paired, names))
    return table


ABLATION_PAIRED_COLUMNS = ["cell", "metric", "references", "n_subjects", "diff_mean", "ci_low", "ci_high", "note"]


def _per_subject(summary) -> pd.DataFrame:
    path = Path(summary).parent / "per_subject.csv"
    if not path.is_file():
        raise DTIError(f"{path} is missing: the paired ablation table needs every cell's per-subject scores "
                       "(`dti aggregate` writes them beside summary.csv)")
    frame = pd.read_csv(path)
    frame = frame[frame["method"] == "dti"]
    if "references" not in frame:
        frame = frame.assign(references="")
    return frame.set_index(["metric", "references", "subject"])["mean"]


def ablation_paired(cells: dict[str, Path], default_summary) -> pd.DataFrame:
    """One row per (cell, metric): the cell minus the default cell over the default's subjects, each
    subject's difference taken after averaging its seeds (per_subject.csv), with a BCa interval
    (dti/stats.py; none below 5 subjects, a note instead)."""
    default = _per_subject(default_summary)
    rows = []
    for label, summary in cells.items():
        cell = _per_subject(summary)
        for (metric, references), ours in default.groupby(level=[0, 1], sort=True):
            ours = ours.droplevel([0, 1])
            theirs = cell[(cell.index.get_level_values(0) == metric) & (cell.index.get_level_values(1) == references)]
            # a subject the cell lacks makes the difference NaN, with a note naming it (stats.paired)
            estimate = stats.paired(theirs.droplevel([0, 1]), ours, sorted(ours.index))
            rows.append({"cell": label, "metric": metric, "references": references, "n_subjects": estimate.n,
                         "diff_mean": estimate.mean, "ci_low": estimate.low, "ci_high": estimate.high,
                         "note": estimate.note})
    return pd.DataFrame(rows, columns=ABLATION_PAIRED_COLUMNS)


def ablation_paired_markdown(paired: pd.DataFrame, names: dict) -> str:
    lines = ["**Ablation, paired: each cell minus the default, per metric** (mean over subjects of the per-subject "
             "difference, seeds averaged first; 95% BCa interval over subjects, none below 5 subjects)", "",
             "| cell | metric | n | difference [95% interval] |", "|---|---|---|---|"]
    for r in paired.itertuples():
        interval = stats.interval_text(r.ci_low, r.ci_high, r.note if isinstance(r.note, str) else "")
        lines.append(f"| {names.get(r.cell, r.cell)} | {r.metric} | {r.n_subjects} | {r.diff_mean:+.3f} {interval} |")
    return "\n".join(lines) + "\n"
