"""Image and text fidelity scores of generated images, as in the paper's tables.

Image fidelity compares a generated image with every reference photo of its subject
(cosine of embeddings, averaged over the references); text fidelity compares it with its
scoring text. Protocols name the metric sets of the two tables:

* ``paper``: DINOv2 image similarity and the SigLIP match probability
  ``sigmoid(exp(logit_scale) * cos + logit_bias)``;
* ``dreambooth``: DINO ViT-S/16 and CLIP-I image similarity, CLIP-T and the raw SigLIP cosine;
* ``mini``: the mini world's evaluator CLIP (patch-feature image similarity, the DINO analogue;
  CLIP-I; CLIP-T) and its attribute read-out: the share of the prompt's asked attributes that
  the image shows (``attr_prompt``, text fidelity) and of the subject's own class, colour and
  pattern (``attr_subject``, identity).

Each backbone is loaded once per job and run batched, in eval mode, without gradients, in
float32. Model ids are configuration: a hub id or a local folder for the transformers
backbones; for CLIP, open_clip's ``arch/pretrained`` (``ViT-B-32/openai``), ``local-dir:/path``
or ``hf-hub:org/repo``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .io import DTIError

__all__ = ["DEFAULT_MODEL_IDS", "METRICS", "PROTOCOLS", "Metric", "Backbones", "parse_model_ids", "score_images",
           "score_manifest"]

DEFAULT_MODEL_IDS = {
    "dinov2": "facebook/dinov2-base",
    "dino": "facebook/dino-vits16",
    "clip": "ViT-B-32/openai",
    "siglip": "google/siglip-base-patch16-512",
    "mini": "experiments/mini/world/evaluator",
    "readout": "experiments/mini/world/readout",
}


@dataclass(frozen=True)
class Metric:
    """``kind``: "image" (against the subject's references), "text" (against the scoring text) or
    "attributes" (the read-out against what the image should show).
    ``probability``: report SigLIP's sigmoid match probability instead of the cosine.
    ``view``: which embedding of the backbone (the mini evaluator has two)."""

    name: str
    backbone: str
    kind: str
    probability: bool = False
    view: str = "clip"


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("dinov2", "dinov2", "image"),
    Metric("dino", "dino", "image"),
    Metric("clip_i", "clip", "image"),
    Metric("clip_t", "clip", "text"),
    Metric("siglip", "siglip", "text", probability=True),
    Metric("siglip_cos", "siglip", "text"),
    Metric("mini_patch", "mini", "image", view="patch"),
    Metric("mini_clip_i", "mini", "image"),
    Metric("mini_clip_t", "mini", "text"),
    Metric("attr_prompt", "readout", "attributes", view="prompt"),
    Metric("attr_subject", "readout", "attributes", view="subject"),
]}

PROTOCOLS: dict[str, list[str]] = {
    "paper": ["dinov2", "siglip"],
    "dreambooth": ["dino", "clip_i", "clip_t", "siglip_cos"],
    "mini": ["mini_patch", "mini_clip_i", "mini_clip_t", "attr_prompt", "attr_subject"],
}

MANIFEST_COLUMNS = ["run", "method", "subject", "prompt_index", "prompt", "scoring_text", "seed", "file",
                    "height", "width"]
OUTPUT_COLUMNS = ["run", "method", "subject", "prompt_index", "prompt", "scoring_text", "seed", "file",
                  "metric", "value", "references"]


def parse_model_ids(items: list[str]) -> dict[str, str]:
    """``["dinov2=PATH", ...]`` (the command lines' ``--model-id``) as a dict."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise DTIError(f"--model-id expects BACKBONE=ID, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def _check_metric_names(metric_names) -> list[str]:
    if isinstance(metric_names, str):
        metric_names = [metric_names]
    names = list(dict.fromkeys(metric_names))  # de-duplicated, order kept
    if not names:
        raise DTIError(f"no metrics given; valid metrics: {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise DTIError(f"unknown metric(s) {', '.join(map(repr, unknown))}; valid metrics: {', '.join(METRICS)}")
    return names


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- #
# Backbones
# --------------------------------------------------------------------------- #
class Backbones:
    """The backbones that ``metric_names`` need, each loaded once.

    ``model_ids`` overrides entries of ``DEFAULT_MODEL_IDS`` (keys: dinov2, dino, clip, siglip).
    Embeddings come back on the CPU, float32, L2-normalised, one row per input.
    """

    def __init__(self, metric_names, model_ids: dict | None = None, device="cpu", batch_size: int = 16):
        self.metric_names = _check_metric_names(metric_names)
        unknown = sorted(set(model_ids or {}) - set(DEFAULT_MODEL_IDS))
        if unknown:
            raise DTIError(f"unknown backbone(s) {', '.join(unknown)} in model ids; valid: {', '.join(DEFAULT_MODEL_IDS)}")
        if int(batch_size) < 1:
            raise DTIError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        needed = list(dict.fromkeys(METRICS[n].backbone for n in self.metric_names))
        self.model_ids = {b: str((model_ids or {}).get(b) or DEFAULT_MODEL_IDS[b]) for b in needed}
        self._models: dict[str, dict] = {}
        for backbone in needed:
            users = [n for n in self.metric_names if METRICS[n].backbone == backbone]
            model_id = self.model_ids[backbone]
            try:
                loaded = self._load(backbone, model_id)
            except DTIError as e:
                raise DTIError(f"cannot load model '{model_id}' for metric(s) {', '.join(users)}: {e}") from None
            except Exception as e:  # the loaders raise OSError, ValueError, RuntimeError, ... for a bad id
                raise DTIError(f"cannot load model '{model_id}' for metric(s) {', '.join(users)}: "
                               f"{_one_line(e)}") from e
            self._models[backbone] = loaded

    @property
    def backbones(self) -> list[str]:
        return list(self._models)

    # -- loading ---------------------------------------------------------- #
    def _load(self, backbone: str, model_id: str) -> dict:
        if backbone == "clip":
            return self._load_open_clip(model_id)
        if backbone in ("mini", "readout"):
            from .mini.models import Evaluator, Readout

            if not Path(model_id).is_dir():
                raise DTIError(f"no folder {model_id}")
            return {"model": Evaluator(model_id, self.device) if backbone == "mini" else Readout.load(model_id, self.device)}
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor

        # transformers 5 loads in the checkpoint's dtype by default; scores are float32.
        model, info = AutoModel.from_pretrained(model_id, dtype=torch.float32, output_loading_info=True)
        # A checkpoint that does not fit the architecture would silently score with random
        # weights; the unused pooler head of ViT checkpoints is the one tolerated gap.
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
        missing += sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DTIError(f"checkpoint lacks or mismatches weights ({', '.join(missing[:3])}{more})")
        model = model.to(self.device).eval()
        if backbone == "siglip":
            if not all(hasattr(model, a) for a in ("get_image_features", "get_text_features", "logit_scale", "logit_bias")):
                raise DTIError(f"{type(model).__name__} is not a SigLIP image-text model")
            processor = AutoProcessor.from_pretrained(model_id)
            # The length SigLIP was trained with (64 for the released models): pad to it.
            max_length = getattr(model.config.text_config, "max_position_embeddings", None) or 64
            return {"model": model, "processor": processor, "max_length": int(max_length)}
        return {"model": model, "processor": AutoImageProcessor.from_pretrained(model_id)}

    def _load_open_clip(self, model_id: str) -> dict:
        import open_clip

        if model_id.startswith(("local-dir:", "hf-hub:")):
            name, pretrained, tokenizer_name = model_id, None, model_id
        else:
            # "arch/tag" or "arch/<weights file>"; a bare arch has no weights and is refused below.
            name, _, pretrained = model_id.partition("/")
            pretrained = pretrained or None
            tokenizer_name = name
        # OpenAI's (and some LAION) weights were trained with QuickGELU, which the plain
        # arch configs do not use; open_clip only warns about the mismatch.
        quick_gelu = bool(pretrained and open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
        # create_model_from_pretrained = create_model_and_transforms' eval transform, plus an
        # error (instead of random weights) when no weights are found.
        model, preprocess = open_clip.create_model_from_pretrained(
            name, pretrained=pretrained, precision="fp32", device=self.device, force_quick_gelu=quick_gelu)
        tokenizer = open_clip.get_tokenizer(tokenizer_name)
        return {"model": model.eval(), "preprocess": preprocess, "tokenizer": tokenizer}

    def _get(self, backbone: str) -> dict:
        if backbone not in self._models:
            raise DTIError(f"backbone '{backbone}' is not loaded (loaded: {', '.join(self._models) or 'none'})")
        return self._models[backbone]

    # -- embeddings ------------------------------------------------------- #
    @torch.inference_mode()
    def image_embeddings(self, backbone: str, images, view: str = "clip") -> torch.Tensor:
        """[N, D] L2-normalised image features (DINO/DINOv2: the CLS token)."""
        m = self._get(backbone)
        if backbone == "mini":
            return torch.cat([m["model"].image_embeddings(images[i:i + self.batch_size], view)
                              for i in range(0, len(images), self.batch_size)])
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start:start + self.batch_size]]
            if backbone == "clip":
                pixels = torch.stack([m["preprocess"](im) for im in batch]).to(self.device, torch.float32)
                feats = m["model"].encode_image(pixels)
            else:
                processor = m["processor"].image_processor if backbone == "siglip" else m["processor"]
                pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device, torch.float32)
                if backbone == "siglip":
                    feats = _pooled(m["model"].get_image_features(pixel_values=pixels))
                else:
                    feats = m["model"](pixel_values=pixels).last_hidden_state[:, 0]
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        if not out:
            raise DTIError("no images to embed")
        return torch.cat(out)

    @torch.inference_mode()
    def text_embeddings(self, backbone: str, texts) -> torch.Tensor:
        """[N, D] L2-normalised text features (CLIP or SigLIP)."""
        if backbone not in ("clip", "siglip", "mini"):
            raise DTIError(f"backbone '{backbone}' has no text encoder (text backbones: clip, siglip, mini)")
        m = self._get(backbone)
        texts = [str(t) for t in texts]
        if backbone == "mini":
            return m["model"].text_embeddings(texts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            if backbone == "clip":
                feats = m["model"].encode_text(m["tokenizer"](batch).to(self.device))
            else:
                # Only input_ids: SigLIP was trained attending to the padding, as its own
                # tokenizer (which returns no attention mask) feeds it.
                ids = m["processor"].tokenizer(batch, padding="max_length", max_length=m["max_length"],
                                               truncation=True, return_tensors="pt")["input_ids"]
                feats = _pooled(m["model"].get_text_features(input_ids=ids.to(self.device)))
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        if not out:
            raise DTIError("no texts to embed")
        return torch.cat(out)

    def siglip_logit_params(self) -> tuple[float, float]:
        """SigLIP's learned (logit_scale, logit_bias); probability = sigmoid(exp(scale) * cos + bias)."""
        model = self._get("siglip")["model"]
        return float(model.logit_scale.detach().reshape(-1)[0]), float(model.logit_bias.detach().reshape(-1)[0])


def _pooled(features):
    # transformers 5 returns a model output from get_*_features; 4.x returned the tensor.
    return features if isinstance(features, torch.Tensor) else features.pooler_output


# --------------------------------------------------------------------------- #
# Scoring
# --------------------------------------------------------------------------- #
def score_images(backbones: Backbones, metric_names, images, texts, references,
                 expected: list[dict] | None = None) -> dict[str, list[float]]:
    """Score one subject's generated ``images`` (with their scoring ``texts``) against its ``references``.

    Returns ``{metric: [value per image]}``. References and distinct texts are embedded once per
    backbone; image metrics average the cosine over all references. Attribute metrics need
    ``expected``: per image, ``{"prompt": {head: value}, "subject": {head: value}}``.
    """
    names = _check_metric_names(metric_names)
    missing = [n for n in names if METRICS[n].backbone not in backbones.backbones]
    if missing:
        raise DTIError(f"metric(s) {', '.join(missing)} need backbones that were not loaded")
    images, texts = list(images), [str(t) for t in texts]
    if len(texts) != len(images):
        raise DTIError(f"{len(images)} images but {len(texts)} scoring texts")
    if not images:
        return {n: [] for n in names}
    if not references and any(METRICS[n].kind == "image" for n in names):
        raise DTIError("image metrics need at least one reference image")

    if any(METRICS[n].kind == "attributes" for n in names) and (expected is None or len(expected) != len(images)):
        raise DTIError("attribute metrics need the expected attributes of every image")
    image_emb: dict[tuple, torch.Tensor] = {}
    ref_emb: dict[tuple, torch.Tensor] = {}
    text_emb: dict[str, torch.Tensor] = {}
    predicted = None
    distinct = list(dict.fromkeys(texts))
    text_row = torch.tensor([distinct.index(t) for t in texts])
    result = {}
    for name in names:
        metric = METRICS[name]
        b, key = metric.backbone, (metric.backbone, metric.view)
        if metric.kind == "attributes":
            if predicted is None:
                predicted = backbones._get(b)["model"].predict(images)
            result[name] = [attribute_share(predicted, i, e[metric.view]) for i, e in enumerate(expected)]
            continue
        if key not in image_emb:
            image_emb[key] = backbones.image_embeddings(b, images, metric.view)
        if metric.kind == "image":
            if key not in ref_emb:
                ref_emb[key] = backbones.image_embeddings(b, list(references), metric.view)
            values = (image_emb[key] @ ref_emb[key].T).mean(dim=1)
        else:
            if b not in text_emb:
                text_emb[b] = backbones.text_embeddings(b, distinct)[text_row]
            values = (image_emb[key] * text_emb[b]).sum(dim=1)
            if metric.probability:
                scale, bias = backbones.siglip_logit_params()
                values = torch.sigmoid(values * math.exp(scale) + bias)
        result[name] = [float(v) for v in values]
    return result


def attribute_share(predicted: dict[str, list], index: int, wanted: dict) -> float:
    """Share of the ``wanted`` attributes the read-out sees in image ``index`` (NaN when none asked)."""
    if not wanted:
        return math.nan
    return sum(predicted[h][index] == v for h, v in wanted.items()) / len(wanted)


def mini_expectations(prompt_sets, subjects) -> callable:
    """``f(subject, prompt_set, prompt_index) -> {"prompt": ..., "subject": ...}`` from a mini world's
    prompt sets (with their ``attributes``) and subjects table (class, colour, pattern)."""
    import json

    from .data import read_subjects

    sets = json.loads(Path(prompt_sets).read_text())
    table = {r["subject"]: r for r in read_subjects(subjects)}

    def expect(subject: str, prompt_set: str, index: int) -> dict:
        if subject not in table:
            raise DTIError(f"subject {subject!r} is not in {subjects}")
        attributes = sets.get(prompt_set, {}).get("attributes")
        if attributes is None:
            raise DTIError(f"prompt set {prompt_set!r} in {prompt_sets} has no 'attributes' list")
        prompt = dict(attributes[int(index)])
        row = table[subject]
        own = {"class": row["class"], "colour": row["colour"], "pattern": row["pattern"]}
        if prompt.get("count") == 2:  # two objects: the read-out says only how many
            own = {}
        own = {k: v for k, v in own.items() if k not in prompt}  # a recolouring prompt overrides the colour
        return {"prompt": prompt, "subject": own}
    return expect


def _open_image(path: Path, what: str, load: bool = True):
    """The image at ``path``, decoded (``load``) or only its header read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if load:
                im.load()
            return im
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DTIError(f"{what} {path} is not a readable image ({_one_line(e)})") from None


def _reference_files(references: Path, subject: str) -> list[Path]:
    folder = references / subject
    if not folder.is_dir():
        raise DTIError(f"subject '{subject}' has no reference folder {folder}")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise DTIError(f"subject '{subject}' has no reference images in {folder}")
    return files


def _reference_mask(masks: Path, subject: str, reference: Path, size, load: bool = True):
    path = masks / subject / f"{reference.stem}.png"
    if not path.is_file():
        raise DTIError(f"reference {reference} has no mask {path}")
    mask = _open_image(path, "mask", load)
    if mask.mode not in ("1", "L", "I", "I;16", "F"):
        raise DTIError(f"mask {path} has mode {mask.mode}; a single-channel (L or 1) mask is needed")
    if mask.size != size:
        raise DTIError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its reference {reference} "
                       f"is {size[0]}x{size[1]}")
    return mask


def _check_references(files: list[Path], subject: str, masks: Path | None):
    """Headers only: every reference is an image and, with masks, has a fitting mask."""
    for path in files:
        size = _open_image(path, f"reference of subject '{subject}'", load=False).size
        if masks is not None:
            _reference_mask(masks, subject, path, size, load=False)


def _load_references(files: list[Path], subject: str, masks: Path | None):
    import numpy as np
    from PIL import Image

    out = []
    for path in files:
        image = _open_image(path, f"reference of subject '{subject}'").convert("RGB")
        if masks is not None:
            keep = np.asarray(_reference_mask(masks, subject, path, image.size)) > 0
            # background (mask 0) to black, as the masked-reference protocol scores the subject alone
            image = Image.fromarray(np.where(keep[..., None], np.asarray(image), 0).astype(np.uint8), "RGB")
        out.append(image)
    return out


def _read_manifest(manifest: Path):
    import pandas as pd

    if not manifest.is_file():
        raise DTIError(f"manifest {manifest}: no such file")
    try:
        # keep_default_na=False: a prompt such as "None" or "NA" stays text.
        df = pd.read_csv(manifest, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DTIError(f"manifest {manifest} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DTIError(f"manifest {manifest} is not a readable CSV ({_one_line(e)})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DTIError(f"manifest {manifest} lacks required column(s) {', '.join(missing)}")
    if df.empty:
        raise DTIError(f"manifest {manifest} is empty (no rows)")
    return df


def score_manifest(manifest, references, metric_names, model_ids=None, device="cpu", batch_size: int = 16,
                   masks=None, expectations=None):
    """Score every image of a sample manifest; one row per (manifest row, metric).

    ``references/<subject>/`` holds each subject's reference photos (every non-hidden file an
    image); with ``masks``, ``masks/<subject>/<stem>.png`` blacks out each reference's
    background (mask 0). A row whose image file is missing gets NaN for every metric.
    Inputs are all checked before any model is loaded. The model ids used are in
    ``frame.attrs["model_ids"]``. Attribute metrics need ``expectations`` (``mini_expectations``);
    they have no row for an image that asks none of their attributes (e.g. identity in a
    two-object prompt), so that "not asked" never reads as a missing image.
    """
    import pandas as pd

    names = _check_metric_names(metric_names)
    manifest = Path(manifest)
    references = Path(references)
    masks = Path(masks) if masks is not None else None
    df = _read_manifest(manifest)
    need_refs = any(METRICS[n].kind == "image" for n in names)
    if any(METRICS[n].kind == "attributes" for n in names) and expectations is None:
        raise DTIError("attribute metrics need the world's prompt sets and subjects table (--prompt-sets, --subjects)")

    # Check every input first: a bad file should fail in seconds, not after model loading.
    paths, present = [], []
    for row in df.itertuples(index=False):
        path = manifest.parent / str(row.file)
        paths.append(path)
        present.append(path.is_file())
        if not path.is_file():
            continue
        header = _open_image(path, "generated image", load=False)
        mode, size = header.mode, header.size
        if mode != "RGB":
            raise DTIError(f"generated image {path} has mode {mode}; RGB is needed")
        try:
            expected = (int(row.width), int(row.height))
        except (TypeError, ValueError):
            raise DTIError(f"manifest {manifest}: height/width of {row.file} are not integers") from None
        if size != expected:
            raise DTIError(f"generated image {path} is {size[0]}x{size[1]} but the manifest says "
                           f"{expected[0]}x{expected[1]} (width x height)")
    subjects = list(dict.fromkeys(str(s) for s in df["subject"]))
    ref_files = {}
    if need_refs:
        if masks is not None and not masks.is_dir():
            raise DTIError(f"masks folder {masks} does not exist")
        for subject in subjects:
            ref_files[subject] = _reference_files(references, subject)
            _check_references(ref_files[subject], subject, masks)

    backbones = Backbones(names, model_ids=model_ids, device=device, batch_size=batch_size)
    values = {n: [math.nan] * len(df) for n in names}
    not_asked = {n: set() for n in names}  # attribute metrics with nothing to check in an image: no row
    subject_col = [str(s) for s in df["subject"]]
    texts_col = [str(t) for t in df["scoring_text"]]
    for subject in subjects:
        rows = [i for i, s in enumerate(subject_col) if s == subject and present[i]]
        if not rows:
            continue
        refs = _load_references(ref_files[subject], subject, masks) if need_refs else []
        images = [_open_image(paths[i], "generated image") for i in rows]
        expected = None
        if expectations is not None:
            expected = [expectations(subject, str(df["prompt_set"].iloc[i]) if "prompt_set" in df.columns else "",
                                     int(df["prompt_index"].iloc[i])) for i in rows]
        scores = score_images(backbones, names, images, [texts_col[i] for i in rows], refs, expected)
        for name in names:
            if METRICS[name].kind == "attributes":
                not_asked[name].update(i for i, e in zip(rows, expected) if not e[METRICS[name].view])
        for name in names:
            for i, v in zip(rows, scores[name]):
                values[name][i] = v

    label = "masked" if masks is not None else "unmasked"
    keep = df[OUTPUT_COLUMNS[:8]].reset_index(drop=True)
    frames = []
    for name in names:
        part = keep.copy()
        part["metric"] = name
        part["value"] = pd.Series(values[name], dtype="float64")
        part["references"] = label
        part["_order"] = range(len(part))
        frames.append(part.drop(index=sorted(not_asked[name])))
    # Manifest order, then metric order within each image.
    out = pd.concat(frames, ignore_index=True)
    out["_metric"] = out["metric"].map({n: k for k, n in enumerate(names)})
    out = out.sort_values(["_order", "_metric"], kind="stable").drop(columns=["_order", "_metric"])
    out = out.reset_index(drop=True)[OUTPUT_COLUMNS]
    out.attrs["model_ids"] = dict(backbones.model_ids)
    return out
