"""Pipeline families: how each kind of diffusers pipeline is conditioned, noised and saved.

One adapter per family (SD-style, SDXL, SANA). Prompts are encoded by the pipeline's
own ``encode_prompt``, so training sees exactly the conditioning that sampling sees;
the learned rows enter through a wrapper around each encoder's input embedding.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from .io import DTIError
from .methods import EncoderSlot

FAMILIES: dict[str, type["Family"]] = {}


def register(cls):
    FAMILIES[cls.name] = cls
    return cls


def detect_family(model: str) -> str:
    """Read the pipeline class from ``model_index.json`` (local directory or hub id)."""
    from diffusers import DiffusionPipeline  # here, not at the top: light commands skip loading diffusers

    try:
        index = DiffusionPipeline.load_config(model)
    except Exception as exc:  # noqa: BLE001 - the loaders raise many types; report one line
        raise DTIError(f"cannot read model_index.json of {model!r}: {str(exc).splitlines()[0]}") from None
    cls_name = index.get("_class_name", "")
    for family in FAMILIES.values():
        if cls_name in family.pipeline_classes:
            return family.name
    raise DTIError(f"{model!r} is a {cls_name or 'unknown'} pipeline; supported: "
                   + ", ".join(c for f in FAMILIES.values() for c in f.pipeline_classes))


def placeholder_tokens(placeholder: str, k: int) -> list[str]:
    """The k token names of a k-vector concept, in diffusers' multi-vector convention."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, k)]


class LearnedRows(torch.nn.Module):
    """An input embedding whose new token ids read learned rows; every original row untouched.

    The learned rows are set per step (``rows``) and are not registered as parameters,
    so the encoder's own dtype and parameter list are unchanged.
    """

    def __init__(self, base: torch.nn.Embedding, first_id: int, k: int):
        super().__init__()
        self.base, self.first_id, self.k = base, first_id, k
        self.rows: torch.Tensor | None = None
        # Gemma-2 scales its embedding inside the module; learned rows live in the raw table's space.
        self.scale = getattr(base, "scalar_embed_scale", 1.0)

    @property
    def weight(self):
        return self.base.weight

    def forward(self, ids):
        out = self.base(ids.clamp(max=self.base.num_embeddings - 1))
        if self.rows is None:
            return out
        slot = ids - self.first_id
        is_new = (slot >= 0) & (slot < self.k)
        rows = (self.rows * self.scale).to(out.dtype)[slot.clamp(0, self.k - 1)]
        return torch.where(is_new.unsqueeze(-1), rows, out)


def initializer_positions(input_ids: list[int], init_ids: list[int]) -> list[int]:
    """Positions of the initializer's tokens in its padded encoding, wherever the padding and
    special tokens put them (right- or left-padded, with or without BOS)."""
    k = len(init_ids)
    for start in range(len(input_ids) - k + 1):
        if input_ids[start:start + k] == list(init_ids):
            return list(range(start, start + k))
    raise DTIError("the initializer's tokens are not in its own encoding (truncated?)")


def vocab_norm_stats(weight: torch.Tensor) -> dict[str, float]:
    norms = weight.detach().float().norm(dim=1)
    norms = norms[norms > 0]
    return {"mean": norms.mean().item(), "min": norms.min().item(), "max": norms.max().item(),
            "std": norms.std().item()}


class Family:
    name = ""
    pipeline_classes: tuple[str, ...] = ()
    encoder_names: tuple[str, ...] = ("text_encoder",)
    tokenizer_names: tuple[str, ...] = ("tokenizer",)
    lower_case_prompts = False
    pass_attention_mask = False  # whether the pipeline gives its text encoder an attention mask
    denoiser_name = "unet"

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype, cfg=None):
        self.pipe, self.device, self.dtype, self.cfg = pipe, device, dtype, cfg
        self.encoders = [getattr(pipe, n) for n in self.encoder_names]
        self.tokenizers = [getattr(pipe, n) for n in self.tokenizer_names]
        self.wrappers: list[LearnedRows] = []
        self.tokens: list[str] = []
        for module in self.encoders + [getattr(pipe, self.denoiser_name)]:
            module.requires_grad_(False).eval()
        pipe.vae.requires_grad_(False).eval()

    @classmethod
    def load(cls, model: str, device: torch.device, dtype: torch.dtype, cfg=None) -> "Family":
        from diffusers import DiffusionPipeline

        kwargs = {"safety_checker": None} if cls.name == "sd" else {}
        try:
            pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise DTIError(f"cannot load pipeline {model!r}: {str(exc).splitlines()[0]}") from None
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), device, dtype, cfg)

    # --- tokens ---------------------------------------------------------------
    def add_concept(self, placeholder: str, initializer: str) -> list[EncoderSlot]:
        """Add the placeholder's k tokens to every tokenizer and wrap every encoder's input embedding."""
        if self.lower_case_prompts and placeholder != placeholder.lower():
            raise DTIError(f"placeholder {placeholder!r} must be lower-case: the {self.name} pipeline "
                           "lower-cases prompts")
        if self.lower_case_prompts:
            initializer = initializer.lower()  # as the pipeline will see it in prompts
        slots, ks = [], set()
        for enc_name, tok, enc in zip(self.encoder_names, self.tokenizers, self.encoders):
            init_ids = tok(initializer, add_special_tokens=False).input_ids
            if not initializer.strip() or not init_ids or tok.unk_token_id in init_ids:
                raise DTIError(f"initializer {initializer!r} does not tokenize into known tokens of {enc_name}")
            ks.add(len(init_ids))
            tokens = placeholder_tokens(placeholder, len(init_ids))
            for t in tokens:
                pieces = tok.tokenize(t)
                if t in tok.get_vocab() or (len(pieces) == 1 and tok.convert_tokens_to_ids(pieces[0]) != tok.unk_token_id):
                    raise DTIError(f"placeholder token {t!r} is already in the vocabulary of {enc_name}; "
                                   "choose a new string such as <sks>")
            if tok.add_tokens(tokens) != len(tokens):
                raise DTIError(f"placeholder {placeholder!r} could not be added to the tokenizer of {enc_name}")
            ids = tok.convert_tokens_to_ids(tokens)
            if ids != list(range(ids[0], ids[0] + len(ids))):
                raise DTIError(f"the tokens of {placeholder!r} did not get consecutive ids in {enc_name}")
            base = enc.get_input_embeddings()
            wrapper = LearnedRows(base, ids[0], len(ids))
            enc.set_input_embeddings(wrapper)
            self.wrappers.append(wrapper)
            rows = base.weight[torch.tensor(init_ids, device=base.weight.device)].detach().float()
            slots.append(EncoderSlot(
                name=enc_name, initializer_rows=rows, vocab_norms=vocab_norm_stats(base.weight),
                contextual_init=self._contextual_init_fn(tok, enc, initializer, init_ids)))
            self.tokens = tokens
        if len(ks) != 1:
            raise DTIError(f"initializer {initializer!r} has different token counts per encoder: {sorted(ks)}")
        return slots

    def _contextual_init_fn(self, tok, enc, initializer, init_ids):
        """CrossInit's start: the encoder's last hidden state at the initializer's own tokens."""
        def compute():
            batch = tok(initializer, padding="max_length", max_length=self.text_length(tok), truncation=True,
                        return_tensors="pt")
            positions = initializer_positions(batch.input_ids[0].tolist(), init_ids)
            kwargs = {"attention_mask": batch.attention_mask.to(self.device)} if self.pass_attention_mask else {}
            with torch.no_grad():
                hidden = enc(batch.input_ids.to(self.device), **kwargs).last_hidden_state[0]
            return hidden[positions].float()
        return compute

    def text_length(self, tok) -> int:
        return tok.model_max_length

    def prompt_token_string(self) -> str:
        """What replaces ``{}`` in a template; SD and SDXL pipelines expand multi-vector tokens themselves."""
        return self.tokens[0]

    def set_rows(self, rows: list[torch.Tensor] | None):
        for wrapper, r in zip(self.wrappers, rows or [None] * len(self.wrappers)):
            wrapper.rows = r

    # --- images ---------------------------------------------------------------
    @property
    def pixels_per_latent(self) -> int:
        return self.pipe.vae_scale_factor

    @torch.no_grad()
    def encode_images(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Latents of each [3, H, W] image in [-1, 1], once per run, with the VAE in float32."""
        vae = self.pipe.vae
        if vae.dtype != torch.float32:
            vae.to(torch.float32)
        out = []
        for x in pixels:
            enc = vae.encode(x[None].to(self.device, torch.float32))
            lat = enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latent
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            out.append(((lat - shift) * vae.config.scaling_factor)[0])
        vae.to("cpu")  # never needed again in training
        return out

    # --- loss -----------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> dict:
        raise NotImplementedError

    def loss(self, latents: torch.Tensor, cond: dict, batch: dict, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


@register
class StableDiffusion(Family):
    """SD-style: one CLIP text encoder, DDPM noise, epsilon or v prediction from the scheduler."""

    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)

    def __init__(self, *args, **kwargs):
        from diffusers import DDPMScheduler

        super().__init__(*args, **kwargs)
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)

    def encode_prompts(self, prompts):
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return {"encoder_hidden_states": embeds}

    def extra_unet_kwargs(self, cond, batch):
        return {}

    def loss(self, latents, cond, batch, gen):
        sched = self.noise_scheduler
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(self.device)
        noisy = sched.add_noise(latents, noise, t)
        if sched.config.prediction_type == "epsilon":
            target = noise
        elif sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, t)
        else:
            raise DTIError(f"unsupported prediction type {sched.config.prediction_type!r}")
        pred = self.pipe.unet(noisy.to(self.dtype), t, encoder_hidden_states=cond["encoder_hidden_states"],
                              added_cond_kwargs=self.extra_unet_kwargs(cond, batch)).sample
        return F.mse_loss(pred.float(), target.float())


@register
class StableDiffusionXL(StableDiffusion):
    """SDXL: the token goes into both encoders; pooled output of encoder 2 and size/crop time ids."""

    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")

    def encode_prompts(self, prompts):
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled": pooled}

    def extra_unet_kwargs(self, cond, batch):
        time_ids = torch.tensor(batch["time_ids"], dtype=self.dtype, device=self.device)
        return {"text_embeds": cond["pooled"].to(self.dtype), "time_ids": time_ids}


@register
class Sana(Family):
    """SANA 1.5: Gemma-2 encoder, flow matching with uniform t, 300-token window."""

    name = "sana"
    pipeline_classes = ("SanaPipeline",)
    lower_case_prompts = True
    denoiser_name = "transformer"
    pass_attention_mask = True

    def text_length(self, tok):
        return self.cfg.max_sequence_length if self.cfg else 300

    def prompt_token_string(self):
        return " ".join(self.tokens)  # SANA has no loader that expands multi-vector tokens

    def encode_prompts(self, prompts):
        chi = None
        if self.cfg is not None and self.cfg.complex_human_instruction:
            chi = inspect.signature(self.pipe.__call__).parameters["complex_human_instruction"].default
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=self.device,
            max_sequence_length=self.text_length(None), complex_human_instruction=chi)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def loss(self, latents, cond, batch, gen):
        # Flow matching: x_t = (1 - s) x + s e, target e - x, t uniform over the training steps (no shift).
        n = 1000
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        t = torch.randint(0, n, (latents.shape[0],), generator=gen).to(self.device)
        sigma = ((t + 1).float() / n).view(-1, 1, 1, 1)
        noisy = (1 - sigma) * latents + sigma * noise
        transformer = self.pipe.transformer
        timestep = (sigma.flatten() * n * transformer.config.timestep_scale).to(self.dtype)
        pred = transformer(hidden_states=noisy.to(self.dtype), timestep=timestep, **{
            k: (v.to(self.dtype) if v.is_floating_point() else v) for k, v in cond.items()}).sample
        if pred.shape[1] == 2 * latents.shape[1]:  # learned-variance heads
            pred = pred.chunk(2, dim=1)[0]
        return F.mse_loss(pred.float(), (noise - latents).float())
