"""Learned-embedding files: writing them, rescaling TI runs, and loading them into pipelines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import parse_m_star
from .io import DTIError, load_tensors, read_json, save_tensors, write_json

# File of each text encoder's vectors, in the layout ``pipe.load_textual_inversion`` reads.
ENCODER_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
SDXL_SINGLE_FILE = "learned_embeds_sdxl.safetensors"  # clip_l / clip_g keys (A1111, ComfyUI, kohya)


def write_embedding_files(run_dir: Path, family: str, placeholder: str, rows: list[torch.Tensor], metadata: dict):
    run_dir = Path(run_dir)
    for file, r in zip(ENCODER_FILES, rows):
        save_tensors({placeholder: r.float()}, run_dir / file, metadata)
    if family == "sdxl":
        save_tensors({"clip_l": rows[0].float(), "clip_g": rows[1].float()}, run_dir / SDXL_SINGLE_FILE, metadata)


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
    return record, rows


def rescale(run_dir: str | Path, out_dir: str | Path, stat: str = "mean") -> Path:
    """TI-rescaled: each vector of a TI run scaled to its encoder's vocabulary-norm statistic."""
    record, rows = read_run(run_dir)
    method = record["config"]["method"]
    if method != "ti":
        raise DTIError(f"rescale takes a TI run; {run_dir} is a {method} run")
    target = parse_m_star(stat)
    norms = [float(target) if isinstance(target, float) else record["vocab_norms"][enc][target]
             for enc in record["encoders"]]
    scaled = [r * (m / r.norm(dim=1, keepdim=True)) for r, m in zip(rows, norms)]
    out_dir = Path(out_dir)
    cfg = record["config"]
    meta = {"method": "ti_rescaled", "family": cfg["family"], "base_model": cfg["model"],
            "placeholder": cfg["placeholder"], "source_run": str(run_dir), "stat": stat,
            "steps": cfg["steps"], "seed": cfg["seed"]}
    write_embedding_files(out_dir, cfg["family"], record["tokens"][0], scaled, meta)
    new_record = {**record, "method": "ti_rescaled", "source_run": str(run_dir), "rescale_stat": stat,
                  "rescale_norms": dict(zip(record["encoders"], norms)),
                  "final_norms": {e: r.norm(dim=1).tolist() for e, r in zip(record["encoders"], scaled)}}
    write_json(new_record, out_dir / "run.json")
    return out_dir


@dataclass
class Concept:
    """A concept loaded into a pipeline. Use ``prompt()`` to write its placeholder into a prompt."""

    placeholder: str
    tokens: list[str]
    family: str

    def prompt(self, template: str) -> str:
        """``template`` with ``{}`` replaced by the concept's token(s).

        SD and SDXL pipelines expand a multi-vector placeholder themselves; SANA's does not.
        """
        return template.format(" ".join(self.tokens) if self.family == "sana" else self.placeholder)


def load_embeddings(pipe, run_dir: str | Path) -> Concept:
    """Load a run's learned vectors into a stock SD, SDXL or SANA pipeline."""
    from .families import FAMILIES

    record, rows = read_run(run_dir)
    family = record["config"]["family"]
    cls_name = type(pipe).__name__
    if cls_name not in FAMILIES[family].pipeline_classes:
        raise DTIError(f"{run_dir} was trained on a {family} pipeline, not a {cls_name}")
    tokens = record["tokens"]
    if family in ("sd", "sdxl"):
        encoders = [(pipe.text_encoder, pipe.tokenizer)]
        if family == "sdxl":
            encoders.append((pipe.text_encoder_2, pipe.tokenizer_2))
        for (enc, tok), r in zip(encoders, rows):
            pipe.load_textual_inversion({tokens[0]: r}, token=tokens[0], text_encoder=enc, tokenizer=tok)
    else:
        tok, enc = pipe.tokenizer, pipe.text_encoder
        if any(t in tok.get_vocab() for t in tokens):
            raise DTIError(f"the tokenizer already has a token named {tokens[0]!r}")
        tok.add_tokens(tokens)
        ids = tok.convert_tokens_to_ids(tokens)
        if max(ids) >= enc.get_input_embeddings().num_embeddings:
            enc.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        weight = enc.get_input_embeddings().weight
        with torch.no_grad():
            weight[torch.tensor(ids, device=weight.device)] = rows[0].to(weight.device, weight.dtype)
    return Concept(placeholder=tokens[0], tokens=tokens, family=family)
