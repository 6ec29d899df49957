"""The mini world's scores, registered with ``dti.metrics`` (entry point ``dti.metrics``):

* backbone ``mini``, the evaluator CLIP: ``mini_patch`` (mean patch state, the DINO analogue)
  and ``mini_clip_i`` image similarity, ``mini_clip_t`` text similarity;
* backbone ``mini_object``, the image encoder: ``mini_object`` image similarity (the main table's image
  metric, the DINO analogue: ``mini_patch`` could not tell the subjects apart);
* backbone ``readout``, the attribute read-out: the share of the prompt's asked attributes
  that an image shows (``attr_prompt``, text fidelity) and of the subject's own class, colour
  and pattern (``attr_subject``, identity);
* protocol ``mini``: all six.

The backbones are folders of a world (``experiments/mini/world/evaluator``, ``.../image_encoder``,
``.../readout``) with no default: pass ``--model-id mini=PATH`` (and so on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from dti.io import DTIError, read_json
from dti.metrics import Backbone, Metric, register_backbone, register_metric, register_protocol

from .models import Evaluator, Readout
from .world import subject_expectation


def _folder(model_id: str) -> str:
    if not Path(model_id).is_dir():
        raise DTIError(f"no folder {model_id}")
    return model_id


@register_backbone
class EvaluatorBackbone(Backbone):
    """The evaluator CLIP; views "clip" (its projected embedding) and "patch" (mean patch state)."""

    name = "mini"

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        super().__init__(model_id, device, batch_size)
        self.model = Evaluator(_folder(model_id), self.device)

    def image_embeddings(self, images, view: str = "clip"):
        return self._batched(images, lambda batch: self.model.image_embeddings(batch, view), "images")

    def text_embeddings(self, texts: list[str]):
        return self.model.text_embeddings(texts)


@register_backbone
class ObjectEncoderBackbone(Backbone):
    """The image encoder of a world (``image_encoder/``, a ``ResNetModel``): its pooled features, trained to
    name the object whatever the scene around it, so that two images score high when they show the same object."""

    name = "mini_object"

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        from transformers import AutoImageProcessor, ResNetModel

        super().__init__(model_id, device, batch_size)
        self.model = ResNetModel.from_pretrained(_folder(model_id), dtype=torch.float32).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_id)

    def image_embeddings(self, images, view: str = "clip"):
        @torch.no_grad()
        def embed(batch):
            pixels = self.processor(images=[im.convert("RGB") for im in batch], return_tensors="pt")["pixel_values"]
            features = self.model(pixel_values=pixels.to(self.device, torch.float32)).pooler_output.flatten(1)
            return torch.nn.functional.normalize(features.float(), dim=-1).cpu()
        return self._batched(images, embed, "images")


@register_backbone
class ReadoutBackbone(Backbone):
    """The attribute read-out: every attribute of ``world.HEADS`` per image."""

    name = "readout"

    def __init__(self, model_id: str, device="cpu", batch_size: int = 16):
        super().__init__(model_id, device, batch_size)
        self.model = Readout.load(_folder(model_id), self.device)

    def predict(self, images) -> dict[str, list]:
        return self.model.predict(images)


def mini_expectations(prompt_sets, subjects) -> Callable:
    """``f(subject, prompt_set, prompt_index) -> {"prompt": ..., "subject": ...}`` from a mini world's
    prompt sets (with their ``attributes``) and subjects table (class, colour, pattern, second_colour)."""
    from dti.data import read_subjects

    sets = read_json(prompt_sets)
    table = {r["subject"]: r for r in read_subjects(subjects)}
    columns = set(next(iter(table.values()), {}))
    missing = [c for c in ("class", "colour", "pattern", "second_colour") if table and c not in columns]
    if missing:  # another world's table, or the first mini world's (no mark colours)
        raise DTIError(f"{subjects} has no {', '.join(missing)} column: the attribute metrics need a mini world's")

    def expect(subject: str, prompt_set: str, index: int) -> dict:
        if subject not in table:
            raise DTIError(f"subject {subject!r} is not in {subjects}")
        attributes = sets.get(prompt_set, {}).get("attributes")
        if attributes is None:
            raise DTIError(f"prompt set {prompt_set!r} in {prompt_sets} has no 'attributes' list")
        if not 0 <= int(index) < len(attributes):
            raise DTIError(f"prompt {index} of set {prompt_set!r} has no attributes in {prompt_sets}")
        prompt = dict(attributes[int(index)])
        row = table[subject]
        own = subject_expectation(row["class"], row["colour"], row["pattern"], row["second_colour"], prompt)
        return {"prompt": prompt, "subject": own}
    return expect


for _metric in [Metric("mini_object", "mini_object", "image"),
                Metric("mini_patch", "mini", "image", view="patch"),
                Metric("mini_clip_i", "mini", "image"),
                Metric("mini_clip_t", "mini", "text"),
                Metric("attr_prompt", "readout", "attributes", view="prompt", expectations=mini_expectations),
                Metric("attr_subject", "readout", "attributes", view="subject", expectations=mini_expectations)]:
    register_metric(_metric)
register_protocol("mini", ["mini_object", "mini_patch", "mini_clip_i", "mini_clip_t", "attr_prompt", "attr_subject"])
del _metric
