"""What a run learned, per text encoder (``dti inspect``): each vector's norm against the vocabulary's,
its nearest vocabulary words by cosine and by Euclidean distance, and its angle to the initializer.

The two rankings agree for a vector of in-distribution norm; for one far off the vocabulary's norm
range the Euclidean neighbours are just the rows nearest that norm, whatever their meaning.
Only the tokenizers and text encoders are loaded, never the denoiser or the VAE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .embeddings import fixed_norms, read_run, run_method
from .families import family_class, vocab_norm_stats
from .io import DTIError, one_line
from .runs import model_revision

TOP = 5


def text_encoders(model: str, family, revision: str | None = None, dtype="auto"):
    """(component name, tokenizer, frozen encoder in eval mode) per text encoder of a diffusers pipeline,
    read with the classes its model_index.json names (e.g. CLIPTextModelWithProjection), one at a time."""
    import transformers
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(model, revision=revision)
        for enc_name, tok_name in zip(family.encoder_names, family.tokenizer_names):
            tokenizer = getattr(transformers, index[tok_name][1]).from_pretrained(model, subfolder=tok_name,
                                                                                  revision=revision)
            encoder = getattr(transformers, index[enc_name][1]).from_pretrained(model, subfolder=enc_name,
                                                                                revision=revision, dtype=dtype)
            yield enc_name, tokenizer, encoder.eval().requires_grad_(False)
    except Exception as exc:  # noqa: BLE001 - the loaders raise many types; report one line
        raise DTIError(f"cannot load the text encoders of {model!r}: {one_line(exc)}") from None


def load_vocabularies(model: str, family, revision: str | None = None) -> list[tuple]:
    """(tokenizer, float32 input-embedding table) per text encoder; each encoder is dropped once read."""
    return [(tokenizer, encoder.get_input_embeddings().weight.detach().float())
            for _, tokenizer, encoder in text_encoders(model, family, revision)]


def nearest(table: torch.Tensor, v: torch.Tensor, k: int):
    """The ``k`` vocabulary rows nearest ``v`` by cosine (largest first) and by Euclidean distance (smallest
    first), as (values, indices) pairs: the two rankings differ for a vector far off the vocabulary's norm."""
    v = v.float()
    cos = F.normalize(table, dim=1) @ F.normalize(v, dim=0)
    dist = (table - v).norm(dim=1)
    return torch.topk(cos, min(k, len(cos))), torch.topk(dist, min(k, len(dist)), largest=False)


def _token(tokenizer, idx: int) -> str:
    return tokenizer.convert_ids_to_tokens(idx) or f"#{idx}"


def vector_report(v: torch.Tensor, table: torch.Tensor, tokenizer, init_row: torch.Tensor, top: int = TOP) -> dict:
    """One learned vector against its encoder's vocabulary table."""
    v = v.float()
    norms = table.norm(dim=1)
    norms = norms[norms > 0]  # as the vocabulary statistics count them
    norm = v.norm().item()
    by_cos, by_dist = nearest(table, v, top)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, F.cosine_similarity(v, init_row.float(), dim=0).item()))))
    return {
        "norm": norm,
        "norm_percentile": 100.0 * (norms <= norm).float().mean().item(),
        "norm_to_mean": norm / norms.mean().item(),
        "norm_in_vocab_range": norms.min().item() <= norm <= norms.max().item(),
        "angle_to_initializer_deg": angle,
        "nearest_cosine": [{"token": _token(tokenizer, i), "id": i, "cosine": c}
                           for c, i in zip(by_cos.values.tolist(), by_cos.indices.tolist())],
        "nearest_euclidean": [{"token": _token(tokenizer, i), "id": i, "distance": d}
                              for d, i in zip(by_dist.values.tolist(), by_dist.indices.tolist())],
    }


def inspect_run(run_dir: str | Path, vocabularies: list[tuple] | None = None, top: int = TOP) -> dict:
    """The report of a finished run; ``vocabularies`` (per encoder: tokenizer, table) are loaded from the
    run's base model when not given."""
    record, rows = read_run(run_dir)
    cfg = record["config"]
    family = family_class(cfg["family"])
    vocabularies = vocabularies or load_vocabularies(cfg["model"], family, model_revision(record))
    initializer = cfg["initializer"].lower() if family.lower_case_prompts else cfg["initializer"]
    m_star = fixed_norms(record)
    encoders = []
    for i, (name, vectors, (tokenizer, table)) in enumerate(zip(record["encoders"], rows, vocabularies)):
        init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
        if len(init_ids) != vectors.shape[0]:
            raise DTIError(f"initializer {initializer!r} gives {len(init_ids)} tokens in {name}, but the run has "
                           f"{vectors.shape[0]} vectors: is this the run's base model?")
        if table.shape[1] != vectors.shape[1]:
            raise DTIError(f"{name} is {table.shape[1]} wide, the run's vectors {vectors.shape[1]}: "
                           "is this the run's base model?")
        stats = vocab_norm_stats(table)
        encoders.append({
            "encoder": name, "vocab_norms": {k: stats[k] for k in ("min", "mean", "max")},
            "m_star": None if m_star is None else m_star[i],
            "vectors": [{"token": token, "initializer_token": _token(tokenizer, init_id),
                         **vector_report(v, table, tokenizer, table[init_id], top)}
                        for token, v, init_id in zip(record["tokens"], vectors, init_ids)],
        })
    return {"run": str(run_dir), "method": run_method(record), "family": family.name, "base_model": cfg["model"],
            "initializer": cfg["initializer"], "encoders": encoders}


def _words(items: list[dict], key: str) -> str:
    return ", ".join(f"{it['token']} ({it[key]:.3f})" for it in items)


def format_report(report: dict) -> str:
    """The report as readable text."""
    lines = [f"run {report['run']}: {report['method']} on {report['base_model']} ({report['family']}), "
             f"initializer {report['initializer']!r}"]
    for enc in report["encoders"]:
        vocab = enc["vocab_norms"]
        fixed = "" if enc["m_star"] is None else f"; m* {enc['m_star']:.4g}"
        lines.append(f"\n{enc['encoder']}: vocabulary norms min {vocab['min']:.4g}, mean {vocab['mean']:.4g}, "
                     f"max {vocab['max']:.4g}{fixed}")
        for v in enc["vectors"]:
            lines += [
                f"  {v['token']}: norm {v['norm']:.4g} = {v['norm_to_mean']:.2f} x the mean, percentile "
                f"{v['norm_percentile']:.1f} of the vocabulary's norms"
                + ("" if v["norm_in_vocab_range"] else " (outside their range)"),
                f"    angle to the initializer {v['initializer_token']}: {v['angle_to_initializer_deg']:.1f} deg",
                f"    nearest by cosine:    {_words(v['nearest_cosine'], 'cosine')}",
                f"    nearest by Euclidean: {_words(v['nearest_euclidean'], 'distance')}",
            ]
    return "\n".join(lines)


def inspect_text(run_dir: str | Path, as_json: bool = False) -> str:
    report = inspect_run(run_dir)
    return json.dumps(report, indent=2) if as_json else format_report(report)
