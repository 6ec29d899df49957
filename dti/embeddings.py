"""A run's learned vectors: reading them, TI-rescaled runs, and loading them into stock pipelines.

How each family writes and loads its files lives on the family (``dti.families``); this module
reads a run folder and hands the vectors to the right family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import parse_m_star
from .families import ENCODER_FILES, FAMILIES
from .io import DTIError, load_tensors, read_json, write_json
from .methods import METHODS
from .runs import LOCK, RECORD, check_run_folder, check_vectors, folder_lock


def run_method(record: dict) -> str:
    """A run's method: post-hoc and interpolated runs name theirs; trained runs carry it in their config."""
    return record.get("method") or record["config"]["method"]


def fixed_norms(record: dict) -> list[float] | None:
    """The norm each encoder's vectors are held at, as a number per encoder (DTI's m*, TI-rescaled's
    target), or None for a method that leaves norms free. A DTI run that predates ``m_star_values``
    resolves its statistic from the vocabulary norms it recorded."""
    encoders = record["encoders"]
    if "rescale_norms" in record:
        return [float(record["rescale_norms"][e]) for e in encoders]
    if record["config"]["method"] != "dti":
        return None
    if "m_star_values" in record:
        return [float(m) for m in record["m_star_values"]]
    m_star = parse_m_star(record["config"]["m_star"])
    return [float(m_star) if isinstance(m_star, float) else record["vocab_norms"][e][m_star] for e in encoders]


def read_run(run_dir: str | Path) -> tuple[dict, list[torch.Tensor]]:
    """The run record and each encoder's [k, d] vectors of a finished run (trained or rescaled)."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise DTIError(f"{run_dir} is not a run directory (no run.json)")
    record = read_json(run_dir / "run.json")
    if record.get("status") != "complete":
        raise DTIError(f"{run_dir} holds an unfinished run (status {record.get('status')!r})")
    placeholder = record["tokens"][0]
    rows = []
    for file in ENCODER_FILES[:len(record["encoders"])]:
        tensors = load_tensors(run_dir / file)
        if placeholder not in tensors:
            raise DTIError(f"{run_dir / file} has no vectors for {placeholder!r}")
        rows.append(tensors[placeholder])
    check_vectors(rows, f"the vectors of {run_dir}")
    return record, rows


def rescale(run_dir: str | Path, out_dir: str | Path, stat: str = "mean") -> Path:
    """TI-rescaled (``methods.TIRescaled``): a TI run's vectors scaled to a vocabulary-norm statistic.
    ``out_dir`` must be new, or hold this same rescale (a rerun writes it again)."""
    return rescale_group([(run_dir, out_dir)], stat)[0]


def rescale_group(pairs: list[tuple[str | Path, str | Path]], stat: str = "mean") -> list[Path]:
    """Several TI runs rescaled in one process, each ``(run_dir, out_dir)`` as ``rescale`` does it. Every
    pair is checked before any folder is written, so a bad one leaves all of them as they were."""
    method = METHODS["ti_rescaled"]
    outs = [Path(out) for _, out in pairs]
    if len({o.resolve() for o in outs}) != len(outs):
        raise DTIError("two rescaled runs have the same --out")
    prepared = []
    for run_dir, out_dir in pairs:
        record, rows = read_run(run_dir)
        source = record["config"]["method"]
        if source != method.source_method:
            raise DTIError(f"rescale takes a {method.source_method.upper()} run; {run_dir} is a {source} run")
        norms = method.target_norms(record["vocab_norms"], record["encoders"], stat)
        scaled = method.rescale(rows, norms)
        check_vectors(scaled, f"the rescaled vectors of {run_dir}")
        out_dir = check_run_folder(out_dir)
        _check_rescale_target(Path(run_dir), out_dir, stat)  # before the lock file: a refused folder stays as it was
        prepared.append((run_dir, out_dir, record, scaled, norms))
    written = []
    for run_dir, out_dir, record, scaled, norms in prepared:
        with folder_lock(out_dir, f"run folder {out_dir}"):
            _check_rescale_target(Path(run_dir), out_dir, stat)
            written.append(_write_rescaled(run_dir, out_dir, stat, method, record, scaled, norms))
    return written


def _check_rescale_target(run_dir: Path, out_dir: Path, stat: str):
    """Refuse to write over anything but this same rescale (never over its own source run)."""
    if out_dir.resolve() == run_dir.resolve():
        raise DTIError(f"--out {out_dir} is the TI run itself; choose another folder")
    present = [p for p in out_dir.iterdir() if p.name != LOCK] if out_dir.is_dir() else []
    if not present:
        return
    try:
        old = read_json(out_dir / RECORD)
    except DTIError:
        old = {}
    same = (old.get("method") == METHODS["ti_rescaled"].name and old.get("rescale_stat") == stat
            and Path(str(old.get("source_run"))).resolve() == run_dir.resolve())
    if not same:
        raise DTIError(f"--out {out_dir} already holds something other than this rescale of {run_dir} "
                       f"(stat {stat}); choose another folder")


def _write_rescaled(run_dir, out_dir: Path, stat: str, method, record: dict, scaled, norms) -> Path:
    cfg = record["config"]
    meta = {"method": method.name, "family": cfg["family"], "base_model": cfg["model"],
            "placeholder": cfg["placeholder"], "source_run": str(run_dir), "stat": stat,
            "steps": cfg["steps"], "seed": cfg["seed"]}
    new_record = {**record, "method": method.name, "source_run": str(run_dir), "rescale_stat": stat,
                  "rescale_norms": dict(zip(record["encoders"], norms)),
                  "final_norms": {e: r.norm(dim=1).tolist() for e, r in zip(record["encoders"], scaled)}}
    # run.json first, as a run writes it: a rescale cut off before its files is this same rescale, redone
    write_json({**new_record, "status": "running"}, out_dir / RECORD)
    FAMILIES[cfg["family"]].write_embedding_files(out_dir, record["tokens"][0], scaled, meta)
    write_json(new_record, out_dir / RECORD)
    return out_dir


@dataclass
class Concept:
    """A concept loaded into a pipeline. Use ``prompt()`` to write its placeholder into a prompt."""

    placeholder: str
    tokens: list[str]
    family: str

    def prompt(self, template: str) -> str:
        """``template`` with ``{}`` replaced by the concept's token(s), as its family's pipeline reads them."""
        return template.format(FAMILIES[self.family].token_string(self.tokens))


def load_embeddings(pipe, run_dir: str | Path) -> Concept:
    """Load a run's learned vectors into a stock SD, SDXL or SANA pipeline."""
    record, rows = read_run(run_dir)
    family = FAMILIES[record["config"]["family"]]
    cls_name = type(pipe).__name__
    if cls_name not in family.pipeline_classes:
        raise DTIError(f"{run_dir} was trained on a {family.name} pipeline, not a {cls_name}")
    tokens = record["tokens"]
    family.load_concept(pipe, tokens, rows)
    return Concept(placeholder=tokens[0], tokens=tokens, family=family.name)
