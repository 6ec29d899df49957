"""What every analysis needs: a pipeline's text encoders without the rest, and run records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from dti.embeddings import read_run, run_method  # noqa: E402
from dti.families import FAMILIES, detect_family  # noqa: E402
from dti.io import atomic_path, read_json  # noqa: E402

METHOD_COLOURS = {"ti": "tab:red", "crossinit": "tab:orange", "dti": "tab:blue", "ti_rescaled": "tab:purple"}


@dataclass
class TextEncoder:
    name: str          # the pipeline component name: text_encoder, text_encoder_2
    tokenizer: object
    model: torch.nn.Module

    @property
    def table(self) -> torch.Tensor:
        """The raw input-embedding table (Gemma-2's scale is applied later, inside the model)."""
        return self.model.get_input_embeddings().weight.detach().float()


def load_text_encoders(model: str, device: str = "cpu") -> list[TextEncoder]:
    """Only the tokenizers and text encoders of a diffusers pipeline (hub id or folder), float32, eval."""
    import transformers
    from diffusers import DiffusionPipeline

    family = FAMILIES[detect_family(model)]
    index = DiffusionPipeline.load_config(model)
    out = []
    for enc_name, tok_name in zip(family.encoder_names, family.tokenizer_names):
        # the classes the pipeline itself uses (model_index.json), e.g. CLIPTextModelWithProjection
        tokenizer = getattr(transformers, index[tok_name][1]).from_pretrained(model, subfolder=tok_name)
        encoder_cls = getattr(transformers, index[enc_name][1])
        encoder = encoder_cls.from_pretrained(model, subfolder=enc_name, dtype=torch.float32).to(device).eval()
        out.append(TextEncoder(enc_name, tokenizer, encoder.requires_grad_(False)))
    return out


def learned_vectors(run_dirs) -> list[dict]:
    """One entry per run: its name, method, initializer word and each encoder's [k, d] learned vectors."""
    out = []
    for run in sorted(Path(r) for r in run_dirs):
        record, rows = read_run(run)
        out.append({"run": run_label(run), "method": run_method(record),
                    "initializer": record["config"].get("initializer"),
                    "vectors": dict(zip(record["encoders"], rows))})
    return out


def run_label(run: Path) -> str:
    """A run's name in tables: its folder and the one above (``<subject>/seed0`` in the workflow's layout)."""
    return f"{run.parent.name}/{run.name}"


def read_record(run: Path) -> dict:
    """A run's record (run.json) alone, finished or not (``read_run`` also loads the vectors of a finished one)."""
    return read_json(Path(run) / "run.json")


def save_figure(fig, out_dir: Path, name: str, caption: str):
    """PNG and PDF, and a one-sentence caption for the report; each written under a temporary name first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        with atomic_path(out_dir / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
    with atomic_path(out_dir / f"{name}.caption.txt") as tmp:
        tmp.write_text(caption + "\n")
    plt.close(fig)


def write_csv(df: pd.DataFrame, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
