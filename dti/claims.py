"""The paper's claims that a run can test, each with its measured effect and a verdict.

    claims_table(results)  ->  one row per claim;  write_claims(results)  ->  tables/claims.{csv,md}

Every claim is computed from the run's own tables (``<results>/tables/*.csv`` and the ablation
cells' ``<results>/ablation/<cell>/tables/per_subject.csv``) as an **effect** whose sign the claim
predicts (``direction``: +1, the claim says the effect is above zero; -1, below). The effect is a
mean over subjects: a run's value first (several encoders or vectors: as each claim's ``measure``
says), then the mean over a subject's training seeds, then over subjects, with a 95% BCa interval
over subjects (dti/stats.py). A comparison of two methods or cells is paired: the difference is
taken per subject, then bootstrapped.

Verdict rules, in order:

1. no effect (a method, cell or subject missing from the run): **not measured**, the note says what;
2. fewer than 5 subjects, hence no interval: **inconclusive (n=N)**;
3. an interval that could not be computed: **inconclusive (no interval)**;
4. the interval lies strictly on the side of zero the claim predicts: **reproduced**;
5. it lies strictly on the other side: **contradicted**;
6. otherwise it contains zero: **inconclusive (interval spans 0)**.

When all subjects give the same value, the interval is [mean, mean] (BCa is undefined there; the
note says so) and rules 4-6 apply to it. The paper's number, where it reports one, is the same
effect computed from its printed tables (``dti/resources/paper_numbers.json``, SDXL by default,
whose ablation it is); it is shown beside ours and takes no part in the verdict: the worlds differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats
from .io import DTIError, atomic_path
from .tables import CELL, paper_numbers

# (image, text) metric of each scoring protocol (the workflow's choice): the first pair the run has
PROTOCOL_METRICS = (("dinov2", "siglip"), ("dino", "clip_t"), ("mini_object", "mini_clip_t"),
                    ("mini_patch", "mini_clip_t"))
RUN = re.compile(r"(?P<subject>.+)/seed(?P<seed>\d+)")  # a run's label in the analysis tables
CELL_FOLDER = re.compile(r"direction_optimizer~(?P<direction_optimizer>.+?)_m_star~(?P<m_star>.+?)_kappa~(?P<kappa>.+)")
PAPER_DEFAULT = {"direction_optimizer": "rsgd", "m_star": "mean", "kappa": 0.0001}  # the paper's ablation default
NAN = float("nan")
COLUMNS = ["claim", "statement", "measure", "source", "n", "effect", "ci_low", "ci_high", "paper", "paper_note",
           "verdict", "note"]


def _missing(why: str) -> stats.Estimate:
    return stats.Estimate(NAN, NAN, NAN, 0, why)


class Inputs:
    """A results folder's tables, read once each; a missing table is a one-line error naming it."""

    def __init__(self, results: str | Path, image_metric: str | None = None, text_metric: str | None = None):
        self.results, self._tables = Path(results), {}
        if not (self.results / "tables").is_dir():
            raise DTIError(f"results folder {self.results} has no tables/ folder; run the workflow first")
        self.metrics = {"image": image_metric, "text": text_metric}
        if None in self.metrics.values():
            present = set(self.table("main_scores/per_subject.csv")["metric"])
            pair = next((p for p in PROTOCOL_METRICS if set(p) <= present), None)
            if pair is None:
                raise DTIError(f"{self.results}/tables/main_scores/per_subject.csv has none of the protocols' metric "
                               f"pairs {PROTOCOL_METRICS}; name the image and text metrics")
            self.metrics = {"image": image_metric or pair[0], "text": text_metric or pair[1]}

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            path = self.results / "tables" / name
            if not path.is_file():
                raise DTIError(f"claims need {path}, which is missing; run the workflow's tables and analyses first")
            self._tables[name] = pd.read_csv(path)
        return self._tables[name]

    def default_cell(self) -> dict | None:
        """The default ablation cell's settings: the ablation table's last row (None: no ablation table)."""
        path = self.results / "tables" / "ablation.csv"
        if not path.is_file():
            return None
        match = CELL.match(str(self.table("ablation.csv")["label"].iloc[-1]))
        if match is None:
            raise DTIError(f"{path}: the last row's label is not a cell's (optimizer, m*=..., kappa=...)")
        return {"direction_optimizer": match["optimizer"], "m_star": match["m_star"], "kappa": match["kappa"]}

    def cell_scores(self, change: dict | None) -> tuple[pd.DataFrame | None, str]:
        """One ablation cell's per-subject scores: the default (``change`` None) or the default with
        ``change`` applied; (None, why) when the run has no such cell."""
        default = self.default_cell()
        if default is None:
            return None, "no ablation table in this run"
        if change is None:
            folder, what = self.results / "ablation" / "default", "the default cell"
        else:
            wanted = {**default, **change}
            folders = [f for f in sorted((self.results / "ablation").glob("*")) if _cell_matches(f.name, wanted)]
            what = ", ".join(f"{k}={v}" for k, v in change.items())
            if not folders:
                return None, f"no ablation cell with {what}"
            folder = folders[0]
        path = folder / "tables" / "per_subject.csv"
        if not path.is_file():
            raise DTIError(f"claims need {path} ({what}), which is missing; run the ablation first")
        return pd.read_csv(path), ""


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _cell_matches(name: str, wanted: dict) -> bool:
    match = CELL_FOLDER.fullmatch(name)
    return match is not None and all(_same(match[k], wanted[k]) for k in ("direction_optimizer", "m_star", "kappa"))


def by_subject(frame: pd.DataFrame, value: str) -> pd.Series:
    """Per-run values (a ``run`` column, ``<subject>/seed<N>``) -> per-subject values, seeds averaged."""
    runs = frame["run"].astype(str)
    parts = runs.str.extract(f"^{RUN.pattern}$")  # a label of another form: its own subject, seed unknown
    frame = frame.assign(subject=parts["subject"].fillna(runs), train_seed=pd.to_numeric(parts["seed"]))
    return stats.seed_average(frame, ["subject"], value).set_index("subject")[value]


def _scores(per_subject: pd.DataFrame, method: str, metric: str, source: str) -> pd.Series:
    rows = per_subject[(per_subject["method"] == method) & (per_subject["metric"] == metric)]
    if rows["subject"].duplicated().any():  # aggregate keeps masked and unmasked apart: never mix them
        raise DTIError(f"{source}: {method} {metric} scores mix reference kinds; one claim needs one kind")
    return rows.set_index("subject")["mean"]


def _paired(a: pd.Series, b: pd.Series, a_name: str, b_name: str) -> stats.Estimate:
    for series, name in ((a, a_name), (b, b_name)):
        if series.empty:
            return _missing(f"no {name} values in this run")
    return stats.paired(a, b)


# --- the measures -------------------------------------------------------------------------------

def _method_scores(a: str, b: str, axis: str) -> Callable[[Inputs], stats.Estimate]:
    def measure(inputs: Inputs) -> stats.Estimate:
        table, metric = inputs.table("main_scores/per_subject.csv"), inputs.metrics[axis]
        source = "main_scores/per_subject.csv"
        return _paired(_scores(table, a, metric, source), _scores(table, b, metric, source), a, b)
    return measure


def _cell_scores(a: dict | None, b: dict | None, axis: str) -> Callable[[Inputs], stats.Estimate]:
    """Cell ``a`` - cell ``b`` (None: the default cell; a dict: the default with those settings changed)."""
    def measure(inputs: Inputs) -> stats.Estimate:
        sides = []
        for change in (a, b):
            frame, why = inputs.cell_scores(change)
            if frame is None:
                return _missing(why)
            sides.append(_scores(frame, "dti", inputs.metrics[axis], "ablation per_subject.csv"))
        return _paired(*sides, *(f"cell {change or 'default'}" for change in (a, b)))
    return measure


def _ti_norm_beyond_vocabulary(inputs: Inputs) -> stats.Estimate:
    norms, vocab = inputs.table("final_norms.csv"), inputs.table("vocab_norms.csv")
    ti = norms[norms["method"] == "ti"].merge(vocab[["encoder", "max"]], on="encoder", how="left")
    if ti.empty:
        return _missing("no ti runs in final_norms.csv")
    ti["beyond"] = ti["norm"] / ti["max"] - 1.0
    per_run = ti.groupby("run", as_index=False)["beyond"].agg(lambda v: v.min(skipna=False))
    return stats.bca(by_subject(per_run, "beyond").to_numpy())


def _position_at_m_star(inputs: Inputs) -> stats.Estimate:
    probe = inputs.table("positional_probe.csv")
    ti = probe[probe["method"] == "ti"]
    if ti.empty:
        return _missing("no ti token in positional_probe.csv")
    wide = ti.pivot_table(index=["run", "encoder", "vector"], columns="condition", values="accuracy", aggfunc="mean")
    if not {"learned", "learned_rescaled"} <= set(wide.columns):
        return _missing("positional_probe.csv lacks the learned or learned_rescaled rows of ti")
    gain = (wide["learned_rescaled"] - wide["learned"]).rename("gain").reset_index()
    return stats.bca(by_subject(gain.groupby("run", as_index=False)["gain"].mean(), "gain").to_numpy())


def _context_distance(inputs: Inputs) -> stats.Estimate:
    """Per learned token: its distance in the 2-D contextual map to the nearest related word."""
    cmap = inputs.table("contextual_map.csv")
    rows = []
    for encoder, g in cmap.groupby("encoder"):
        words = g[g["kind"] == "related"][["pc1", "pc2"]].to_numpy(float)
        for r in g[g["kind"] == "learned"].itertuples():
            d = np.hypot(words[:, 0] - r.pc1, words[:, 1] - r.pc2).min() if len(words) else NAN
            rows.append({"run": r.label, "method": r.method, "encoder": encoder, "distance": d})
    tokens = pd.DataFrame(rows, columns=["run", "method", "encoder", "distance"])
    per = {m: by_subject(t.groupby("run", as_index=False)["distance"].mean(), "distance")
           for m, t in tokens.groupby("method")}
    return _paired(per.get("ti", pd.Series(dtype=float)), per.get("dti", pd.Series(dtype=float)), "ti", "dti")


def _final_cosine(inputs: Inputs) -> stats.Estimate:
    curves = inputs.table("training_curves.csv")
    last = curves.loc[curves.groupby(["method", "run", "encoder", "vector"])["step"].idxmax()]
    per = {m: by_subject(t.groupby("run", as_index=False)["cos_to_initializer"].mean(), "cos_to_initializer")
           for m, t in last.groupby("method")}
    return _paired(per.get("dti", pd.Series(dtype=float)), per.get("ti", pd.Series(dtype=float)), "dti", "ti")


# --- the claims -----------------------------------------------------------------------------------

def _main_paper(a: str, b: str, axis: str) -> Callable[[dict], float]:
    i = {"image": 0, "text": 1}[axis]
    return lambda p: p["main"][a][i] - p["main"][b][i]


def _cell_paper(a: dict | None, b: dict | None, axis: str) -> Callable[[dict], float]:
    from .tables import cell_label

    def label(change):
        return cell_label(**{**PAPER_DEFAULT, **(change or {})})
    i = {"image": 0, "text": 1}[axis]
    return lambda p: p["ablation"][label(a)][i] - p["ablation"][label(b)][i]


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    measure: str  # the effect, in words
    source: str  # the tables it reads
    direction: int  # +1: the claim predicts effect > 0; -1: effect < 0
    compute: Callable[[Inputs], stats.Estimate]
    paper: Callable[[dict], float] | None = None  # the same effect from the paper's printed numbers
    paper_note: str = ""


ADAMW, M_MIN, M_5, KAPPA_0 = ({"direction_optimizer": "adamw"}, {"m_star": "min"}, {"m_star": "5.0"}, {"kappa": 0.0})
MAIN, CELLS = "main_scores/per_subject.csv", "ablation/<cell>/tables/per_subject.csv"

CLAIMS = [
    Claim("ti_norm_leaves_vocabulary", "TI's learned token norm leaves the vocabulary's norm range",
          "TI final norm / vocabulary max norm - 1 (smallest over encoders and vectors)",
          "final_norms.csv, vocab_norms.csv", +1, _ti_norm_beyond_vocabulary,
          paper_note="SDXL: TI tokens ~21 and ~35 against vocabulary norms ~0.39 and ~0.45"),
    Claim("position_lost_at_ti_norm", "Positional information is lost at TI's norm and kept at m*",
          "probe accuracy of TI's token rescaled to m* - as trained", "positional_probe.csv", +1,
          _position_at_m_star, paper=lambda p: 1.0, paper_note="probe 1.0 at norm <= 1, 0 for TI tokens"),
    Claim("dti_text_over_ti", "DTI's text fidelity exceeds TI's", "text: DTI - TI", MAIN, +1,
          _method_scores("dti", "ti", "text"), _main_paper("dti", "ti", "text")),
    Claim("dti_image_over_ti_rescaled", "DTI keeps more of the subject than TI-rescaled",
          "image: DTI - TI-rescaled", MAIN, +1, _method_scores("dti", "ti_rescaled", "image"),
          _main_paper("dti", "ti_rescaled", "image")),
    Claim("dti_image_below_ti", "DTI's subject fidelity is below TI's (the paper reports a drop on SDXL)",
          "image: DTI - TI", MAIN, -1, _method_scores("dti", "ti", "image"), _main_paper("dti", "ti", "image")),
    Claim("m_star_5_hurts_text", "m* = 5.0 (out of distribution) hurts text fidelity",
          "text: m*=5.0 cell - default", CELLS, -1, _cell_scores(M_5, None, "text"), _cell_paper(M_5, None, "text")),
    Claim("m_star_min_hurts_image", "m* = min hurts image fidelity", "image: m*=min cell - default", CELLS, -1,
          _cell_scores(M_MIN, None, "image"), _cell_paper(M_MIN, None, "image")),
    Claim("m_star_min_hurts_text", "m* = min hurts text fidelity", "text: m*=min cell - default", CELLS, -1,
          _cell_scores(M_MIN, None, "text"), _cell_paper(M_MIN, None, "text")),
    Claim("kappa_raises_text", "kappa > 0 raises text fidelity over kappa = 0", "text: default - kappa=0 cell",
          CELLS, +1, _cell_scores(None, KAPPA_0, "text"), _cell_paper(None, KAPPA_0, "text")),
    Claim("kappa_costs_image", "kappa > 0 costs image fidelity against kappa = 0", "image: default - kappa=0 cell",
          CELLS, -1, _cell_scores(None, KAPPA_0, "image"), _cell_paper(None, KAPPA_0, "image")),
    Claim("rsgd_over_adamw_image", "RSGD beats AdamW on the direction: image fidelity",
          "image: default (RSGD) - AdamW cell", CELLS, +1, _cell_scores(None, ADAMW, "image"),
          _cell_paper(None, ADAMW, "image")),
    Claim("rsgd_over_adamw_text", "RSGD beats AdamW on the direction: text fidelity",
          "text: default (RSGD) - AdamW cell", CELLS, +1, _cell_scores(None, ADAMW, "text"),
          _cell_paper(None, ADAMW, "text")),
    Claim("dti_token_in_context", "DTI's token sits among its class words in context, TI's away",
          "distance to the nearest related word in the contextual map: TI - DTI", "contextual_map.csv", +1,
          _context_distance, paper_note="Fig. 1b, no number"),
    Claim("dti_keeps_initializer_direction", "DTI's cosine to its initializer stays higher than TI's",
          "final cosine to the initializer word: DTI - TI (mean over encoders and vectors)", "training_curves.csv",
          +1, _final_cosine),
]


def verdict(estimate: stats.Estimate, direction: int) -> str:
    """The module docstring's rules."""
    if np.isnan(estimate.mean):
        return "not measured"
    if estimate.n < stats.MIN_SUBJECTS:
        return f"inconclusive (n={estimate.n})"
    if not estimate.has_interval:
        return "inconclusive (no interval)"
    if estimate.low > 0 or estimate.high < 0:
        return "reproduced" if (estimate.low > 0) == (direction > 0) else "contradicted"
    return "inconclusive (interval spans 0)"


def _paper_tables(paper: str | None) -> dict:
    if not paper:
        return {}
    out = {"main": paper_numbers("main", paper)}  # an unknown model is an error here
    try:
        out["ablation"] = paper_numbers("ablation", paper)
    except DTIError:  # the paper has an ablation for SDXL only
        pass
    return out


def claims_table(results: str | Path, paper: str | None = "sdxl", image_metric: str | None = None,
                 text_metric: str | None = None) -> pd.DataFrame:
    """One row per claim of ``CLAIMS`` (see the module docstring); the metrics default to the first
    protocol pair that the main scores have."""
    numbers = _paper_tables(paper)  # an unknown paper model fails before any table is read
    return _table(Inputs(results, image_metric, text_metric), numbers)


def _table(inputs: Inputs, numbers: dict) -> pd.DataFrame:
    rows = []
    for claim in CLAIMS:
        estimate = claim.compute(inputs)
        try:
            reported = round(claim.paper(numbers), 6) if claim.paper and numbers else NAN  # printed to 3 digits
        except KeyError:
            reported = NAN
        rows.append({"claim": claim.id, "statement": claim.statement, "measure": claim.measure,
                     "source": claim.source, "n": estimate.n, "effect": estimate.mean, "ci_low": estimate.low,
                     "ci_high": estimate.high, "paper": reported, "paper_note": claim.paper_note,
                     "verdict": verdict(estimate, claim.direction), "note": estimate.note})
    return pd.DataFrame(rows, columns=COLUMNS)


def _number(x: float) -> str:
    return "" if np.isnan(x) else f"{x:+.3f}"


def claims_markdown(table: pd.DataFrame, paper: str | None, metrics: dict) -> str:
    lines = [f"**Claims of the paper tested in this run** (image: {metrics['image']}, text: {metrics['text']}; "
             "effect: mean over subjects, 95% BCa interval over subjects, paired per subject; "
             f"paper: the same effect from its {paper or 'no'} numbers)", "",
             "| claim | effect measured | n | effect [95% interval] | paper | verdict |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        interval = f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if not (np.isnan(r.ci_low) or np.isnan(r.ci_high)) else ""
        effect = " ".join(x for x in (_number(r.effect), interval, f"({r.note})" if r.note else "") if x)
        reported = " ".join(x for x in (_number(r.paper), f"({r.paper_note})" if r.paper_note else "") if x)
        lines.append(f"| {r.statement} | {r.measure} | {r.n} | {effect} | {reported} | {r.verdict} |")
    kinds = table["verdict"].str.split(" \\(").str[0]  # "inconclusive (n=3)" -> "inconclusive"
    counts = [f"{(kinds == k).sum()} {k}" for k in ("reproduced", "contradicted", "inconclusive", "not measured")
              if k != "not measured" or (kinds == k).any()]
    lines += ["", f"Of {len(table)} claims: {', '.join(counts)}."]
    return "\n".join(lines) + "\n"


def write_claims(results: str | Path, out_dir: str | Path | None = None, paper: str | None = "sdxl",
                 image_metric: str | None = None, text_metric: str | None = None) -> Path:
    """``claims.csv`` and ``claims.md`` in ``out_dir`` (default: ``<results>/tables``)."""
    out_dir = Path(out_dir) if out_dir is not None else Path(results) / "tables"
    if out_dir.exists() and not out_dir.is_dir():
        raise DTIError(f"claims output {out_dir} is a file; give a folder")
    numbers = _paper_tables(paper)
    inputs = Inputs(results, image_metric, text_metric)
    table = _table(inputs, numbers)
    with atomic_path(out_dir / "claims.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_dir / "claims.md") as tmp:
        tmp.write_text(claims_markdown(table, paper, inputs.metrics))
    return out_dir
