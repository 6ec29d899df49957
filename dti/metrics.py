"""Image and text fidelity scores of generated images, as in the paper's tables.

Image fidelity compares a generated image with every reference photo of its subject
(cosine of embeddings, averaged over the references); text fidelity compares it with its
scoring text. Protocols name the metric sets of the two tables:

* ``paper``: DINOv2 image similarity and the SigLIP match probability
  ``sigmoid(exp(logit_scale) * cos + logit_bias)``;
* ``dreambooth``: DINO ViT-S/16 and CLIP-I image similarity, CLIP-T and the raw SigLIP cosine.

A third kind, attribute metrics, asks a backbone's read-out which attributes an image shows
and scores the share it was meant to show. Backbones, metrics and protocols are registries
(``register_backbone``, ``register_metric``, ``register_protocol``); packages add their own
through the ``dti.metrics`` entry-point group, loaded at the end of this module (the mini
world's ``mini`` protocol comes that way).

Each backbone is loaded once per job and run batched, in eval mode, without gradients, in
float32. Model ids are configuration: a hub id or a local folder for the transformers
backbones; for CLIP, open_clip's ``arch/pretrained`` (``ViT-B-32/openai``), ``local-dir:/path``
or ``hf-hub:org/repo``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .io import DTIError, one_line

__all__ = ["BACKBONES", "METRICS", "PROTOCOLS", "Backbone", "Backbones", "ClsTokenBackbone", "DINOBackbone",
           "DINOv2Backbone", "Metric", "OpenCLIPBackbone", "ScoringInputs", "SigLIPBackbone", "TransformersBackbone",
           "check_inputs", "expectations_for", "main_metrics", "parse_model_ids", "protocol_metrics",
           "register_backbone", "register_metric", "register_protocol", "score_images", "score_inputs",
           "score_manifest", "write_scores"]

KINDS = ("image", "text", "attributes")


# --------------------------------------------------------------------------- #
# Backbones
# --------------------------------------------------------------------------- #
class Backbone:
    """One scoring model, loaded once per job. A subclass, registered with ``register_backbone``,
    provides:

    * ``name``: its key in ``Metric.backbone`` and ``--model-id NAME=ID``;
    * ``default_id``: the model id used when none is given (None: one must be given);
    * ``__init__(model_id, device, batch_size)``: loads the model; a bad id raises DTIError or the
      loader's own error (``Backbones`` turns either into one line);
    * ``image_embeddings(images, view)`` (image and text metrics): [N, D] float32 L2-normalised
      CPU features of a list of PIL images (``view`` picks one of several embeddings; most
      backbones have one);
    * optional ``text_embeddings(texts)``: [N, D] features in the same space (text metrics);
    * optional ``logit_params()``: (logit_scale, logit_bias) of a sigmoid match probability
      (``Metric.probability``);
    * optional ``predict(images)``: ``{attribute: [value per image]}`` (attribute metrics).
    """

    name: str = ""
    default_id: str | None = None

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        self.model_id, self.device, self.batch_size = str(model_id), torch.device(device), int(batch_size)

    def image_embeddings(self, images, view: str = "clip") -> torch.Tensor:
        raise DTIError(f"backbone '{self.name}' has no image embeddings")

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        raise DTIError(f"backbone '{self.name}' has no text encoder")

    def logit_params(self) -> tuple[float, float]:
        raise DTIError(f"backbone '{self.name}' has no match probability")

    def predict(self, images) -> dict[str, list]:
        raise DTIError(f"backbone '{self.name}' has no attribute read-out")

    def _batched(self, items, embed: Callable, what: str) -> torch.Tensor:
        """``embed`` on ``items`` in batches of ``batch_size``, the rows concatenated."""
        out = [embed(items[i:i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        if not out:
            raise DTIError(f"no {what} to embed")
        return torch.cat(out)


BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(cls: type[Backbone]) -> type[Backbone]:
    """Class decorator: make ``cls`` the backbone called ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Backbone) and cls.name):
        raise DTIError(f"{cls!r} is not a Backbone subclass with a name")
    _claim(BACKBONES, cls.name, cls, "backbone")
    BACKBONES[cls.name] = cls
    return cls


def _claim(registry: dict, name: str, new, what: str):
    # A module imported twice (a reload, a plugin imported before dti.metrics) registers the same
    # thing again; a different one under a taken name would silently change what is scored.
    old = registry.get(name)
    if old is not None and _identity(old) != _identity(new):
        raise DTIError(f"{what} '{name}' is already registered ({_identity(old)})")


def _identity(thing) -> str:
    if isinstance(thing, type):
        return f"{thing.__module__}.{thing.__qualname__}"
    return repr(thing)


def _unit(features) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1).cpu()


def _rgb(images) -> list:
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


def _pooled(features):
    # transformers 5 returns a model output from get_*_features; 4.x returned the tensor.
    return features if isinstance(features, torch.Tensor) else features.pooler_output


class TransformersBackbone(Backbone):
    """A transformers ``AutoModel`` checkpoint, refused when it does not fit its architecture."""

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        from transformers import AutoModel

        super().__init__(model_id, device, batch_size)
        # transformers 5 loads in the checkpoint's dtype by default; scores are float32.
        model, info = AutoModel.from_pretrained(model_id, dtype=torch.float32, output_loading_info=True)
        # A checkpoint that does not fit the architecture would silently score with random
        # weights; the unused pooler head of ViT checkpoints is the one tolerated gap.
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
        missing += sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DTIError(f"checkpoint lacks or mismatches weights ({', '.join(missing[:3])}{more})")
        self.model = model.to(self.device).eval()


class ClsTokenBackbone(TransformersBackbone):
    """A ViT whose CLS token is the image embedding (DINO, DINOv2)."""

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        from transformers import AutoImageProcessor

        super().__init__(model_id, device, batch_size)
        self.processor = AutoImageProcessor.from_pretrained(model_id)

    def image_embeddings(self, images, view: str = "clip") -> torch.Tensor:
        def embed(batch):
            pixels = self.processor(images=_rgb(batch), return_tensors="pt")["pixel_values"]
            return _unit(self.model(pixel_values=pixels.to(self.device, torch.float32)).last_hidden_state[:, 0])
        return self._batched(images, embed, "images")


@register_backbone
class DINOv2Backbone(ClsTokenBackbone):
    name, default_id = "dinov2", "facebook/dinov2-base"


@register_backbone
class DINOBackbone(ClsTokenBackbone):
    name, default_id = "dino", "facebook/dino-vits16"


@register_backbone
class OpenCLIPBackbone(Backbone):
    """open_clip's CLIP: CLIP-I (image-image) and CLIP-T (image-text) cosines."""

    name, default_id = "clip", "ViT-B-32/openai"

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        import open_clip

        super().__init__(model_id, device, batch_size)
        if model_id.startswith(("local-dir:", "hf-hub:")):
            arch, pretrained, tokenizer_name = model_id, None, model_id
        else:
            # "arch/tag" or "arch/<weights file>"; a bare arch has no weights and is refused below.
            arch, _, pretrained = model_id.partition("/")
            pretrained = pretrained or None
            tokenizer_name = arch
        # OpenAI's (and some LAION) weights were trained with QuickGELU, which the plain
        # arch configs do not use; open_clip only warns about the mismatch.
        quick_gelu = bool(pretrained and open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))
        # create_model_from_pretrained = create_model_and_transforms' eval transform, plus an
        # error (instead of random weights) when no weights are found.
        model, self.preprocess = open_clip.create_model_from_pretrained(
            arch, pretrained=pretrained, precision="fp32", device=self.device, force_quick_gelu=quick_gelu)
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name)
        self.model = model.eval()

    def image_embeddings(self, images, view: str = "clip") -> torch.Tensor:
        def embed(batch):
            pixels = torch.stack([self.preprocess(im) for im in _rgb(batch)]).to(self.device, torch.float32)
            return _unit(self.model.encode_image(pixels))
        return self._batched(images, embed, "images")

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        return self._batched(texts, lambda batch: _unit(self.model.encode_text(self.tokenizer(batch).to(self.device))),
                             "texts")


@register_backbone
class SigLIPBackbone(TransformersBackbone):
    """SigLIP: image-text cosine and its learned sigmoid match probability."""

    name, default_id = "siglip", "google/siglip-base-patch16-512"

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        from transformers import AutoProcessor

        super().__init__(model_id, device, batch_size)
        if not all(hasattr(self.model, a) for a in ("get_image_features", "get_text_features", "logit_scale",
                                                    "logit_bias")):
            raise DTIError(f"{type(self.model).__name__} is not a SigLIP image-text model")
        self.processor = AutoProcessor.from_pretrained(model_id)
        # The length SigLIP was trained with (64 for the released models): pad to it.
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", None) or 64)

    def image_embeddings(self, images, view: str = "clip") -> torch.Tensor:
        def embed(batch):
            pixels = self.processor.image_processor(images=_rgb(batch), return_tensors="pt")["pixel_values"]
            return _unit(_pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, torch.float32))))
        return self._batched(images, embed, "images")

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        def embed(batch):
            # Only input_ids: SigLIP was trained attending to the padding, as its own
            # tokenizer (which returns no attention mask) feeds it.
            ids = self.processor.tokenizer(batch, padding="max_length", max_length=self.max_length, truncation=True,
                                           return_tensors="pt")["input_ids"]
            return _unit(_pooled(self.model.get_text_features(input_ids=ids.to(self.device))))
        return self._batched(texts, embed, "texts")

    def logit_params(self) -> tuple[float, float]:
        """(logit_scale, logit_bias); probability = sigmoid(exp(scale) * cos + bias)."""
        return (float(self.model.logit_scale.detach().reshape(-1)[0]),
                float(self.model.logit_bias.detach().reshape(-1)[0]))


# --------------------------------------------------------------------------- #
# Metrics and protocols
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Metric:
    """``kind``: "image" (against the subject's references), "text" (against the scoring text) or
    "attributes" (the backbone's read-out against what the image should show).
    ``probability``: report the backbone's sigmoid match probability instead of the cosine.
    ``view``: which embedding of the backbone (the mini evaluator has two); for attribute metrics,
    which part of an image's expectations (``{view: {attribute: value}}``) is scored.
    ``expectations``: attribute metrics: ``f(prompt_sets, subjects) -> expect``, where
    ``expect(subject, prompt_set, prompt_index)`` gives an image's expectations."""

    name: str
    backbone: str
    kind: str
    probability: bool = False
    view: str = "clip"
    expectations: Callable | None = field(default=None, compare=False, repr=False)


METRICS: dict[str, Metric] = {}
PROTOCOLS: dict[str, list[str]] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric``; its backbone must be registered first."""
    if metric.backbone not in BACKBONES:
        raise DTIError(f"metric '{metric.name}' needs unknown backbone '{metric.backbone}'; "
                       f"valid: {', '.join(BACKBONES)}")
    if metric.kind not in KINDS:
        raise DTIError(f"metric '{metric.name}' has kind {metric.kind!r}; valid: {', '.join(KINDS)}")
    if metric.kind == "attributes" and metric.expectations is None:
        raise DTIError(f"attribute metric '{metric.name}' needs its expectations")
    _claim(METRICS, metric.name, metric, "metric")
    METRICS[metric.name] = metric
    return metric


def register_protocol(name: str, metric_names: list[str]) -> list[str]:
    """Name a set of registered metrics (``dti score --protocol NAME``)."""
    names = _check_metric_names(metric_names)
    _claim(PROTOCOLS, name, names, "protocol")
    PROTOCOLS[name] = names
    return names


def protocol_metrics(protocol: str, kind: str) -> list[str]:
    """``protocol``'s metrics of one kind (see ``KINDS``), in the protocol's order."""
    return [n for n in PROTOCOLS[protocol] if METRICS[n].kind == kind]


def main_metrics(protocol: str) -> tuple[str, str]:
    """The image and text metric of ``protocol``'s main table: its first metric of each kind."""
    first = {kind: protocol_metrics(protocol, kind)[:1] for kind in ("image", "text")}
    missing = [kind for kind, names in first.items() if not names]
    if missing:
        raise DTIError(f"protocol {protocol!r} has no {' or '.join(missing)} metric for the main table")
    return first["image"][0], first["text"][0]


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


# The paper's and DreamBooth's metrics; plugins add theirs (``_load_plugins``).
for _metric in [Metric("dinov2", "dinov2", "image"),
                Metric("dino", "dino", "image"),
                Metric("clip_i", "clip", "image"),
                Metric("clip_t", "clip", "text"),
                Metric("siglip", "siglip", "text", probability=True),
                Metric("siglip_cos", "siglip", "text")]:
    register_metric(_metric)
register_protocol("paper", ["dinov2", "siglip"])
register_protocol("dreambooth", ["dino", "clip_i", "clip_t", "siglip_cos"])
del _metric


def _model_ids(names: list[str], model_ids: dict | None) -> dict[str, str]:
    """The model id of every backbone that ``names`` need: the given one, else the default."""
    model_ids = model_ids or {}
    unknown = sorted(set(model_ids) - set(BACKBONES))
    if unknown:
        raise DTIError(f"unknown backbone(s) {', '.join(unknown)} in model ids; valid: {', '.join(BACKBONES)}")
    out = {}
    for backbone in dict.fromkeys(METRICS[n].backbone for n in names):
        model_id = model_ids.get(backbone) or BACKBONES[backbone].default_id
        if not model_id:
            users = [n for n in names if METRICS[n].backbone == backbone]
            raise DTIError(f"metric(s) {', '.join(users)} need backbone '{backbone}', which has no default model: "
                           f"pass --model-id {backbone}=PATH")
        out[backbone] = str(model_id)
    return out


def expectations_for(metric_names, prompt_sets, subjects) -> Callable | None:
    """The ``expect`` function of the attribute metrics among ``metric_names``, read from a world's
    prompt sets and subjects table; None when none of them is an attribute metric."""
    makers = list(dict.fromkeys(METRICS[n].expectations for n in _check_metric_names(metric_names)
                                if METRICS[n].expectations is not None))
    if len(makers) > 1:
        raise DTIError("these attribute metrics read their expectations differently; score them in separate runs")
    return makers[0](prompt_sets, subjects) if makers else None


class Backbones:
    """The backbones that ``metric_names`` need, each loaded once.

    ``model_ids`` overrides the backbones' default ids (keys: the names in ``BACKBONES``); a
    backbone without a default needs one. Embeddings come back on the CPU, float32,
    L2-normalised, one row per input. ``backbones[name]`` is the loaded ``Backbone``.
    """

    def __init__(self, metric_names, model_ids: dict | None = None, device="cpu", batch_size: int = 16):
        self.metric_names = _check_metric_names(metric_names)
        self.model_ids = _model_ids(self.metric_names, model_ids)
        if int(batch_size) < 1:
            raise DTIError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self._models: dict[str, Backbone] = {}
        for backbone, model_id in self.model_ids.items():
            users = [n for n in self.metric_names if METRICS[n].backbone == backbone]
            try:
                loaded = BACKBONES[backbone](model_id, self.device, self.batch_size)
            except DTIError as e:
                raise DTIError(f"cannot load model '{model_id}' for metric(s) {', '.join(users)}: {e}") from None
            except Exception as e:  # the loaders raise OSError, ValueError, RuntimeError, ... for a bad id
                raise DTIError(f"cannot load model '{model_id}' for metric(s) {', '.join(users)}: "
                               f"{one_line(e)}") from e
            self._models[backbone] = loaded

    @property
    def backbones(self) -> list[str]:
        return list(self._models)

    def __getitem__(self, backbone: str) -> Backbone:
        if backbone not in self._models:
            raise DTIError(f"backbone '{backbone}' is not loaded (loaded: {', '.join(self._models) or 'none'})")
        return self._models[backbone]

    @torch.inference_mode()
    def image_embeddings(self, backbone: str, images, view: str = "clip") -> torch.Tensor:
        """[N, D] L2-normalised image features (DINO/DINOv2: the CLS token)."""
        return self[backbone].image_embeddings(images, view)

    @torch.inference_mode()
    def text_embeddings(self, backbone: str, texts) -> torch.Tensor:
        """[N, D] L2-normalised text features."""
        text = [n for n, cls in BACKBONES.items() if cls.text_embeddings is not Backbone.text_embeddings]
        if backbone not in text:
            raise DTIError(f"backbone '{backbone}' has no text encoder (text backbones: {', '.join(text)})")
        return self[backbone].text_embeddings([str(t) for t in texts])


# --------------------------------------------------------------------------- #
# Scoring
# --------------------------------------------------------------------------- #
@torch.inference_mode()
def score_images(backbones: Backbones, metric_names, images, texts, references,
                 expected: list[dict] | None = None) -> dict[str, list[float]]:
    """Score one subject's generated ``images`` (with their scoring ``texts``) against its ``references``.

    Returns ``{metric: [value per image]}``. References and distinct texts are embedded once per
    backbone; image metrics average the cosine over all references. Attribute metrics need
    ``expected``: per image, ``{view: {attribute: value}}`` (``Metric.expectations``).
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
    predicted: dict[str, dict] = {}
    distinct = list(dict.fromkeys(texts))
    text_row = torch.tensor([distinct.index(t) for t in texts])
    result = {}
    for name in names:
        metric = METRICS[name]
        b, key = metric.backbone, (metric.backbone, metric.view)
        if metric.kind == "attributes":
            if b not in predicted:
                predicted[b] = backbones[b].predict(images)
            result[name] = [attribute_share(predicted[b], i, e[metric.view]) for i, e in enumerate(expected)]
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
                scale, bias = backbones[b].logit_params()
                values = torch.sigmoid(values * math.exp(scale) + bias)
        result[name] = [float(v) for v in values]
    return result


def attribute_share(predicted: dict[str, list], index: int, wanted: dict) -> float:
    """Share of the ``wanted`` attributes the read-out sees in image ``index`` (NaN when none asked)."""
    if not wanted:
        return math.nan
    return sum(predicted[h][index] == v for h, v in wanted.items()) / len(wanted)


# --------------------------------------------------------------------------- #
# Manifests: check, score, write
# --------------------------------------------------------------------------- #
def _open_image(path: Path, what: str):
    """The image at ``path``, fully decoded and upright (``dti.data.open_image``: a truncated file or
    a decompression bomb fails in one line naming it)."""
    from .data import open_image

    return open_image(path, what)


def _reference_files(references: Path, subject: str) -> list[Path]:
    folder = references / subject
    if not folder.is_dir():
        raise DTIError(f"subject '{subject}' has no reference folder {folder}")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise DTIError(f"subject '{subject}' has no reference images in {folder}")
    return files


def _reference_mask(masks: Path, subject: str, reference: Path, size):
    path = masks / subject / f"{reference.stem}.png"
    if not path.is_file():
        raise DTIError(f"reference {reference} has no mask {path}")
    mask = _open_image(path, "mask")
    if mask.mode not in ("1", "L", "I", "I;16", "F"):
        raise DTIError(f"mask {path} has mode {mask.mode}; a single-channel (L or 1) mask is needed")
    if mask.size != size:
        raise DTIError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its reference {reference} "
                       f"is {size[0]}x{size[1]}")
    return mask


def _reference(path: Path, subject: str):
    """A reference photo as training reads it (``dti.data.open_rgb``: upright, 16-bit scaled, 8-bit RGB)."""
    from .data import open_rgb

    return open_rgb(path, f"reference of subject '{subject}'")


def _check_references(files: list[Path], subject: str, masks: Path | None):
    """Every reference decodes fully to RGB and, with masks, has a fitting mask. Decoding (not only
    the header) costs little beside scoring and catches a truncated file before any model loads."""
    for path in files:
        size = _reference(path, subject).size
        if masks is not None:
            _reference_mask(masks, subject, path, size)


def _load_references(files: list[Path], subject: str, masks: Path | None):
    import numpy as np
    from PIL import Image

    out = []
    for path in files:
        image = _reference(path, subject)
        if masks is not None:
            keep = np.asarray(_reference_mask(masks, subject, path, image.size)) > 0
            # background (mask 0) to black, as the masked-reference protocol scores the subject alone
            image = Image.fromarray(np.where(keep[..., None], np.asarray(image), 0).astype(np.uint8), "RGB")
        out.append(image)
    return out


def subject_references(references, subject: str, masks=None) -> list:
    """A subject's reference photos exactly as scoring reads them (every non-hidden file of
    ``references/<subject>/``, sorted; with ``masks``, the background blacked out)."""
    files = _reference_files(Path(references), subject)
    return _load_references(files, subject, Path(masks) if masks is not None else None)


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
        raise DTIError(f"manifest {manifest} is not a readable CSV ({one_line(e)})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DTIError(f"manifest {manifest} lacks required column(s) {', '.join(missing)}")
    if df.empty:
        raise DTIError(f"manifest {manifest} is empty (no rows)")
    return df


@dataclass
class ScoringInputs:
    """What ``check_inputs`` found: a manifest's rows and files, ready to score."""

    manifest: Path
    frame: object                        # the manifest (pandas DataFrame)
    metric_names: list[str]
    model_ids: dict[str, str]            # per backbone needed
    paths: list[Path]                    # per row, its image
    present: list[bool]                  # per row, whether the image exists (else NaN scores)
    subjects: list[str]                  # in manifest order
    references: dict[str, list[Path]]    # per subject; empty when no image metric needs them
    masks: Path | None
    expectations: Callable | None


def check_inputs(manifest, references, metric_names, model_ids=None, masks=None, expectations=None) -> ScoringInputs:
    """Check every input of ``score_manifest`` without loading a model: a bad file should fail in
    seconds, not after model loading. Reads the manifest and decodes every generated image, reference
    and mask (a DTIError names the first bad one)."""
    names = _check_metric_names(metric_names)
    model_ids = _model_ids(names, model_ids)
    manifest = Path(manifest)
    references = Path(references)
    masks = Path(masks) if masks is not None else None
    df = _read_manifest(manifest)
    if any(METRICS[n].kind == "attributes" for n in names) and expectations is None:
        raise DTIError("attribute metrics need the world's prompt sets and subjects table (--prompt-sets, --subjects)")

    paths, present = [], []
    for row in df.itertuples(index=False):
        path = manifest.parent / str(row.file)
        paths.append(path)
        present.append(path.is_file())
        if not path.is_file():
            continue
        # decoded in full: a truncated image must fail here, before any model loads (they are small)
        image = _open_image(path, "generated image")
        mode, size = image.mode, image.size
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
    if any(METRICS[n].kind == "image" for n in names):
        if masks is not None and not masks.is_dir():
            raise DTIError(f"masks folder {masks} does not exist")
        for subject in subjects:
            ref_files[subject] = _reference_files(references, subject)
            _check_references(ref_files[subject], subject, masks)
    return ScoringInputs(manifest, df, names, model_ids, paths, present, subjects, ref_files, masks, expectations)


def score_inputs(inputs: ScoringInputs, device="cpu", batch_size: int = 16, backbones: "Backbones | None" = None):
    """Score checked inputs; one row per (manifest row, metric), in manifest order, then metric order.

    A row whose image file is missing gets NaN for every metric. Attribute metrics have no row
    for an image that asks none of their attributes (e.g. identity in a two-object prompt), so
    that "not asked" never reads as a missing image. The model ids used are in
    ``frame.attrs["model_ids"]``.
    """
    import pandas as pd

    df, names = inputs.frame, inputs.metric_names
    if backbones is None:  # else: loaded once for several manifests, with these metrics and model ids
        backbones = Backbones(names, model_ids=inputs.model_ids, device=device, batch_size=batch_size)
    values = {n: [math.nan] * len(df) for n in names}
    not_asked = {n: set() for n in names}  # attribute metrics with nothing to check in an image: no row
    subject_col = [str(s) for s in df["subject"]]
    texts_col = [str(t) for t in df["scoring_text"]]
    for subject in inputs.subjects:
        rows = [i for i, s in enumerate(subject_col) if s == subject and inputs.present[i]]
        if not rows:
            continue
        refs = (_load_references(inputs.references[subject], subject, inputs.masks)
                if subject in inputs.references else [])
        images = [_open_image(inputs.paths[i], "generated image") for i in rows]
        expected = None
        if inputs.expectations is not None:
            sets = [str(df["prompt_set"].iloc[i]) if "prompt_set" in df.columns else "" for i in rows]
            expected = [inputs.expectations(subject, s, int(df["prompt_index"].iloc[i])) for s, i in zip(sets, rows)]
        scores = score_images(backbones, names, images, [texts_col[i] for i in rows], refs, expected)
        for name in names:
            if METRICS[name].kind == "attributes":
                not_asked[name].update(i for i, e in zip(rows, expected) if not e[METRICS[name].view])
        for name in names:
            for i, v in zip(rows, scores[name]):
                values[name][i] = v

    label = "masked" if inputs.masks is not None else "unmasked"
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


def score_manifest(manifest, references, metric_names, model_ids=None, device="cpu", batch_size: int = 16,
                   masks=None, expectations=None):
    """Score every image of a sample manifest: ``check_inputs``, then ``score_inputs``.

    ``references/<subject>/`` holds each subject's reference photos (every non-hidden file an
    image); with ``masks``, ``masks/<subject>/<stem>.png`` blacks out each reference's
    background (mask 0). Attribute metrics need ``expectations`` (``expectations_for``).
    """
    inputs = check_inputs(manifest, references, metric_names, model_ids, masks, expectations)
    return score_inputs(inputs, device, batch_size)


def check_scores_out(out) -> Path:
    """Refuse, before any model loads, an ``--out`` that cannot take the scores: a folder, or a
    place whose nearest existing folder is a file or not writable."""
    import os

    out = Path(out)
    for path in (out, Path(f"{out}.json"), Path(f"{out}.lock")):
        if path.is_dir():
            raise DTIError(f"scores output {path} is a folder; give the path of a CSV file to write")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DTIError(f"scores output {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DTIError(f"scores output {out}: folder {folder} is not writable")
    return out


def write_scores(frame, out, about: dict) -> str:
    """Write ``frame`` to the CSV ``out`` and, beside it, ``out.json``: ``about`` (what was scored),
    the model ids used and the package versions."""
    from .io import atomic_path, package_versions, write_json

    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    write_json({**about, "model_ids": frame.attrs.get("model_ids", about.get("model_ids")),
                "versions": package_versions()}, f"{out}.json")
    return str(out)


def _load_plugins():
    """Import every module of the ``dti.metrics`` entry-point group; each registers its backbones,
    metrics and protocols on import. Here, at the end, so that a plugin can import this module."""
    from importlib.metadata import entry_points

    for plugin in entry_points(group="dti.metrics"):
        try:
            plugin.load()
        except DTIError:
            raise
        except Exception as e:  # a broken plugin must not pass for "no such metric"
            raise DTIError(f"score plugin '{plugin.name}' ({plugin.value}) failed to load: {one_line(e)}") from e


_load_plugins()
