"""Pipeline families: how each kind of diffusers pipeline is loaded, conditioned, noised, sampled
and how its learned embeddings are saved and loaded.

One adapter per family (SD-style, SDXL, SANA), in a registry. Prompts are encoded by the
pipeline's own ``encode_prompt``, so training sees exactly the conditioning that sampling sees;
the learned rows enter through a wrapper around each encoder's input embedding.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from .io import DTIError, one_line, save_tensors
from .methods import EncoderSlot

FAMILIES: dict[str, type["Family"]] = {}

ZERO_PAD = "<zero-pad>"  # the token of the zero-pad augmentation (``TrainConfig.zero_pad``): a zero row

# File of each text encoder's vectors, in the layout ``pipe.load_textual_inversion`` reads.
ENCODER_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
SDXL_SINGLE_FILE = "learned_embeds_sdxl.safetensors"  # clip_l / clip_g keys (A1111, ComfyUI, kohya)


def register(cls):
    FAMILIES[cls.name] = cls
    return cls


def check_revision(model: str, revision: str | None):
    """A revision names a version of a hub repository; a local folder has only the one it holds."""
    if revision is not None and Path(model).is_dir():
        raise DTIError(f"revision {revision!r} was given, but {model} is a local folder (revisions are for hub ids)")


def snapshot_commit(path: str | Path) -> str | None:
    """The commit of a file fetched from the hub, read from its cache path ``.../snapshots/<commit>/...``."""
    parts = Path(path).parts
    for name, commit in zip(parts, parts[1:]):
        if name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", commit):
            return commit
    return None


def hub_commit(model: str, revision: str | None = None) -> str | None:
    """The commit a hub id's ``revision`` (None: the default branch) resolves to, from the hub or, offline,
    from the local cache; None for a local folder, or when neither knows it."""
    if Path(model).is_dir():
        return None
    from huggingface_hub import hf_hub_download

    try:
        return snapshot_commit(hf_hub_download(model, "model_index.json", revision=revision))
    except Exception:  # noqa: BLE001 - offline and not cached, unknown id, ...: the caller says so
        return None


def detect_family(model: str, revision: str | None = None) -> str:
    """Read the pipeline class from ``model_index.json`` (local directory, or hub id at ``revision``)."""
    from diffusers import DiffusionPipeline  # here, not at the top: light commands skip loading diffusers

    check_revision(model, revision)
    try:
        index = DiffusionPipeline.load_config(model, revision=revision)
    except Exception as exc:  # noqa: BLE001 - the loaders raise many types; report one line
        raise DTIError(f"cannot read model_index.json of {model!r}: {one_line(exc)}") from None
    cls_name = index.get("_class_name", "")
    if Path(model).is_dir():  # a local folder: every component it names must be there
        named = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
        missing = [name for name in named if not (Path(model) / name).is_dir()]
        if missing:
            raise DTIError(f"model folder {model} lacks {', '.join(missing)}, named in its model_index.json")
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

    The new ids are consecutive from ``first_id``: one block of rows per concept, in the order the
    concepts were added (a group of runs trains several concepts in one pipeline). The learned rows
    (``rows``, all blocks concatenated) are set per step and are not registered as parameters, so
    the encoder's own dtype and parameter list are unchanged.
    """

    def __init__(self, base: torch.nn.Embedding, first_id: int, k: int):
        super().__init__()
        self.base, self.first_id, self.k = base, first_id, k
        self.rows: torch.Tensor | None = None
        self.zero_id: int | None = None  # the zero-pad token's id, whose row is zero (``zero_pad``)
        # Gemma-2 scales its embedding inside the module; learned rows live in the raw table's space.
        self.scale = getattr(base, "scalar_embed_scale", 1.0)

    @property
    def weight(self):
        return self.base.weight

    def forward(self, ids):
        out = self.base(ids.clamp(max=self.base.num_embeddings - 1))
        if self.zero_id is not None:
            out = out.masked_fill((ids == self.zero_id).unsqueeze(-1), 0.0)
        if self.rows is None:
            return out
        if self.rows.shape[0] != self.k:
            raise DTIError(f"{self.rows.shape[0]} learned rows were set for {self.k} new tokens")
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


def check_words_kept(tokenizer, new_ids: list[int], placeholder: str, texts: list[str]):
    """A tokenizer matches an added token anywhere, also inside a word ("hoto" splits "photo"): refuse
    a placeholder whose tokens turn up in texts that do not contain it."""
    new = set(new_ids)
    for text in texts:
        for word in text.split():
            if new & set(tokenizer(word, add_special_tokens=False).input_ids):
                raise DTIError(f"placeholder {placeholder!r} changes how the word {word!r} tokenizes (it is found "
                               "inside it); choose a string that is in no word, such as <sks>")


def vocab_norm_stats(weight: torch.Tensor) -> dict[str, float]:
    norms = weight.detach().float().norm(dim=1)
    norms = norms[norms > 0]
    return {"mean": norms.mean().item(), "min": norms.min().item(), "max": norms.max().item(),
            "std": norms.std().item()}


def family_class(name: str) -> type["Family"]:
    if name not in FAMILIES:
        raise DTIError(f"unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


class Family:
    """Base class of a pipeline family. A subclass sets

    * ``name``, ``pipeline_classes`` (the diffusers classes it adapts), ``encoder_names`` and
      ``tokenizer_names`` (pipeline components), ``denoiser_name``;
    * ``train_defaults`` and ``sample_defaults``: the protocol's values for this family;
    * ``pipeline_kwargs``: extra ``from_pretrained`` arguments;

    and implements ``encode_prompts(prompts)`` (the conditioning the denoiser gets) and
    ``loss(latents, cond, batch, gen)`` (the training objective). It may override
    ``token_string`` (how a k-vector placeholder is written in a prompt), ``write_embedding_files``
    and ``load_concept`` (the embedding files and how a stock pipeline takes them), and
    ``sample_kwargs`` (family-only arguments of the pipeline call).
    """

    name = ""
    pipeline_classes: tuple[str, ...] = ()
    encoder_names: tuple[str, ...] = ("text_encoder",)
    tokenizer_names: tuple[str, ...] = ("tokenizer",)
    lower_case_prompts = False
    pass_attention_mask = False  # whether the pipeline gives its text encoder an attention mask
    denoiser_name = "unet"
    needs_gpu = False  # its released models train on a GPU: "auto" on a machine without one is refused
    zero_pad_joiner = " "  # between zero-pad tokens (the authors' SD/SDXL form; their SANA form has none)
    instruction_prefix = False  # whether sampling prepends the pipeline's complex-human-instruction
    train_defaults: dict = {}
    sample_defaults: dict = {}
    pipeline_kwargs: dict = {}

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype, cfg=None):
        self.pipe, self.device, self.dtype, self.cfg = pipe, device, dtype, cfg
        self.encoders = [getattr(pipe, n) for n in self.encoder_names]
        self.tokenizers = [getattr(pipe, n) for n in self.tokenizer_names]
        self.wrappers: list[LearnedRows] = []
        self.tokens: list[str] = []  # the last concept's
        self.concepts: list[list[str]] = []  # every concept's tokens, in the order their rows are set
        for module in self.encoders + [getattr(pipe, self.denoiser_name)]:
            module.requires_grad_(False).eval()
        pipe.vae.requires_grad_(False).eval()

    @classmethod
    def load_pipeline(cls, model: str, device: torch.device, dtype: torch.dtype, revision: str | None = None):
        """The stock diffusers pipeline (a hub id at ``revision``), on ``device`` in ``dtype``, progress bars off."""
        from diffusers import DiffusionPipeline

        check_revision(model, revision)
        try:
            pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype, revision=revision, **cls.pipeline_kwargs)
        except Exception as exc:  # noqa: BLE001 - the loaders raise many types; report one line
            raise DTIError(f"cannot load pipeline {model!r}: {one_line(exc)}") from None
        if type(pipe).__name__ not in cls.pipeline_classes:
            raise DTIError(f"{model!r} is a {type(pipe).__name__}, not a {cls.name} pipeline")
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    @classmethod
    def load(cls, model: str, device: torch.device, dtype: torch.dtype, cfg=None, revision: str | None = None
             ) -> "Family":
        """The adapter around a freshly loaded pipeline, ready for training."""
        return cls(cls.load_pipeline(model, device, dtype, revision), device, dtype, cfg)

    # --- learned embeddings: files and stock pipelines --------------------------
    @classmethod
    def token_string(cls, tokens: list[str]) -> str:
        """What replaces ``{}`` in a prompt: SD and SDXL pipelines expand multi-vector tokens themselves."""
        return tokens[0]

    @classmethod
    def write_embedding_files(cls, run_dir, placeholder: str, rows: list[torch.Tensor], metadata: dict):
        """One file per encoder, ``{placeholder: [k, d]}``, as ``load_textual_inversion`` reads it."""
        for file, r in zip(ENCODER_FILES, rows):
            save_tensors({placeholder: r.float()}, Path(run_dir) / file, metadata)

    @classmethod
    def load_concept(cls, pipe, tokens: list[str], rows: list[torch.Tensor]):
        """Add a concept's tokens and vectors to a stock pipeline, with diffusers' own loader."""
        for enc_name, tok_name, r in zip(cls.encoder_names, cls.tokenizer_names, rows):
            pipe.load_textual_inversion({tokens[0]: r}, token=tokens[0], text_encoder=getattr(pipe, enc_name),
                                        tokenizer=getattr(pipe, tok_name))

    # --- sampling ---------------------------------------------------------------
    @classmethod
    def default_image_size(cls, pipe) -> int | None:
        """The image side when the protocol names none (SD-style: the pipeline's own size)."""
        return None

    @classmethod
    def sample_kwargs(cls, settings: dict) -> dict:
        """Arguments of the pipeline call that only this family has."""
        return {}

    # --- tokens ---------------------------------------------------------------
    def add_concept(self, placeholder: str, initializer: str, texts: list[str] = ()) -> list[EncoderSlot]:
        """Add the placeholder's k tokens to every tokenizer and wrap every encoder's input embedding
        (a further concept extends the wrapper: its ids follow the previous concept's). ``texts``
        (the training templates without the placeholder) must tokenize as before."""
        if self.lower_case_prompts and placeholder != placeholder.lower():
            raise DTIError(f"placeholder {placeholder!r} must be lower-case: the {self.name} pipeline "
                           "lower-cases prompts")
        if self.lower_case_prompts:
            initializer = initializer.lower()  # as the pipeline will see it in prompts
        slots, ks, first_concept = [], set(), not self.wrappers
        for e, (enc_name, tok, enc) in enumerate(zip(self.encoder_names, self.tokenizers, self.encoders)):
            init_ids = tok(initializer, add_special_tokens=False).input_ids
            if not initializer.strip() or not init_ids or tok.unk_token_id in init_ids:
                raise DTIError(f"initializer {initializer!r} does not tokenize into known tokens of {enc_name}")
            ks.add(len(init_ids))
            tokens = placeholder_tokens(placeholder, len(init_ids))
            for t in tokens:
                pieces = tok.tokenize(t)
                one_known_piece = len(pieces) == 1 and tok.convert_tokens_to_ids(pieces[0]) != tok.unk_token_id
                if t in tok.get_vocab() or one_known_piece:
                    raise DTIError(f"placeholder token {t!r} is already in the vocabulary of {enc_name}; "
                                   "choose a new string such as <sks>")
            zero_id = None
            if first_concept and self.cfg is not None and self.cfg.zero_pad:
                # Before the placeholder: SDXL's encoder 2 pools at the largest id of a prompt, which must
                # stay the placeholder's.
                if tok.add_tokens([ZERO_PAD]) != 1:
                    raise DTIError(f"the zero-pad token {ZERO_PAD!r} could not be added to the tokenizer of {enc_name}")
                zero_id = tok.convert_tokens_to_ids(ZERO_PAD)
            if tok.add_tokens(tokens) != len(tokens):
                raise DTIError(f"placeholder {placeholder!r} could not be added to the tokenizer of {enc_name}")
            ids = tok.convert_tokens_to_ids(tokens)
            start = ids[0] if first_concept else self.wrappers[e].first_id + self.wrappers[e].k
            if ids != list(range(start, start + len(ids))):
                raise DTIError(f"the tokens of {placeholder!r} did not get consecutive ids in {enc_name}")
            check_words_kept(tok, ids, placeholder, [t.lower() if self.lower_case_prompts else t for t in texts])
            if first_concept:
                base = enc.get_input_embeddings()
                wrapper = LearnedRows(base, ids[0], len(ids))
                wrapper.zero_id = zero_id
                enc.set_input_embeddings(wrapper)
                self.wrappers.append(wrapper)
            else:
                wrapper = self.wrappers[e]
                base = wrapper.base
                wrapper.k += len(ids)
            rows = base.weight[torch.tensor(init_ids, device=base.weight.device)].detach().float()
            slots.append(EncoderSlot(
                name=enc_name, initializer_rows=rows, vocab_norms=vocab_norm_stats(base.weight),
                contextual_init=self._contextual_init_fn(tok, enc, initializer, init_ids)))
            self.tokens = tokens
        if len(ks) != 1:
            raise DTIError(f"initializer {initializer!r} has different token counts per encoder: {sorted(ks)}")
        self.concepts.append(self.tokens)
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

    def zero_padded(self, prompt: str, n: int) -> str:
        """``prompt`` after n zero-pad tokens (the zero-pad augmentation)."""
        return f"{self.zero_pad_joiner.join([ZERO_PAD] * n)} {prompt}" if n else prompt

    def set_rows(self, rows: list[torch.Tensor] | None):
        """Per encoder, the learned rows of every concept, concatenated in the order they were added (None: unset)."""
        for wrapper, r in zip(self.wrappers, rows or [None] * len(self.wrappers)):
            wrapper.rows = r

    # --- images ---------------------------------------------------------------
    @property
    def pixels_per_latent(self) -> int:
        return self.pipe.vae_scale_factor

    @torch.no_grad()
    def encode_images(self, pixels: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The VAE posterior of each [3, H, W] image in [-1, 1] as (mean, std) in the denoiser's latent
        scale, once per run, with the VAE in float32; a deterministic encoder (SANA's DC-AE) has std 0."""
        vae = self.pipe.vae
        vae.to(self.device)  # also when an earlier run of a group left it on the CPU
        if vae.dtype != torch.float32:
            vae.to(torch.float32)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        scale = vae.config.scaling_factor
        out = []
        for x in pixels:
            enc = vae.encode(x[None].to(self.device, torch.float32))
            if hasattr(enc, "latent_dist"):
                mean, std = enc.latent_dist.mode()[0], enc.latent_dist.std[0]
            else:
                mean, std = enc.latent[0], torch.zeros_like(enc.latent[0])
            out.append(((mean - shift) * scale, std * scale))
        vae.to("cpu")  # never needed again in training
        return out

    # --- loss -----------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> dict:
        raise NotImplementedError

    def draw_noise(self, shape: torch.Size, gen: torch.Generator) -> dict:
        """One micro-batch's noise and timesteps, drawn from one run's generator."""
        raise NotImplementedError

    def losses(self, latents: torch.Tensor, cond: dict, batch: dict, noise: dict, sizes: list[int]
               ) -> list[torch.Tensor]:
        """The training objective of consecutive slices of the batch (one per run of a group, ``sizes``
        samples each): one forward pass for all, one mean squared error per slice."""
        raise NotImplementedError

    def loss(self, latents: torch.Tensor, cond: dict, batch: dict, gen: torch.Generator) -> torch.Tensor:
        """The objective of one run's micro-batch, its noise drawn from ``gen``."""
        return self.losses(latents, cond, batch, self.draw_noise(latents.shape, gen), [latents.shape[0]])[0]


def slice_losses(pred: torch.Tensor, target: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Mean squared error of each consecutive slice of the batch (one slice: exactly ``F.mse_loss``)."""
    out, start = [], 0
    for n in sizes:
        out.append(F.mse_loss(pred[start:start + n].float(), target[start:start + n].float()))
        start += n
    if start != pred.shape[0]:
        raise DTIError(f"slices of {sum(sizes)} samples for a batch of {pred.shape[0]}")
    return out


@register
class StableDiffusion(Family):
    """SD-style: one CLIP text encoder, DDPM noise, epsilon or v prediction from the scheduler."""

    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    # SD-style has no launcher of its own and follows SDXL's (paper spec).
    train_defaults = dict(resolution=512, batch_size=4, grad_accum=1, steps=400, weight_decay=1e-2, kappa=1e-4,
                          adamw_lr=5e-4)
    sample_defaults = dict(steps=50, guidance_scale=7.5)
    pipeline_kwargs = {"safety_checker": None}  # scores must see every image

    def __init__(self, *args, **kwargs):
        from diffusers import DDPMScheduler

        super().__init__(*args, **kwargs)
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)

    @classmethod
    def default_image_size(cls, pipe):
        return pipe.unet.config.sample_size * pipe.vae_scale_factor

    def encode_prompts(self, prompts):
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return {"encoder_hidden_states": embeds}

    def extra_unet_kwargs(self, cond, batch):
        return {}

    def draw_noise(self, shape, gen):
        noise = torch.randn(shape, generator=gen).to(self.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (shape[0],), generator=gen)
        return {"noise": noise, "t": t.to(self.device)}

    def losses(self, latents, cond, batch, noise, sizes):
        sched, eps, t = self.noise_scheduler, noise["noise"], noise["t"]
        noisy = sched.add_noise(latents, eps, t)
        if sched.config.prediction_type == "epsilon":
            target = eps
        elif sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, eps, t)
        else:
            raise DTIError(f"unsupported prediction type {sched.config.prediction_type!r}")
        pred = self.pipe.unet(noisy.to(self.dtype), t, encoder_hidden_states=cond["encoder_hidden_states"],
                              added_cond_kwargs=self.extra_unet_kwargs(cond, batch)).sample
        return slice_losses(pred, target, sizes)


@register
class StableDiffusionXL(StableDiffusion):
    """SDXL: the token goes into both encoders; pooled output of encoder 2 and size/crop time ids."""

    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    needs_gpu = True
    train_defaults = dict(resolution=768, batch_size=4, grad_accum=1, steps=400, weight_decay=1e-2, kappa=1e-4,
                          adamw_lr=5e-4)
    sample_defaults = dict(height=1024, width=1024, steps=50, guidance_scale=5.0)
    pipeline_kwargs = {}

    @classmethod
    def write_embedding_files(cls, run_dir, placeholder, rows, metadata):
        super().write_embedding_files(run_dir, placeholder, rows, metadata)
        save_tensors({"clip_l": rows[0].float(), "clip_g": rows[1].float()}, Path(run_dir) / SDXL_SINGLE_FILE, metadata)

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
    instruction_prefix = True
    needs_gpu = True
    zero_pad_joiner = ""
    denoiser_name = "transformer"
    pass_attention_mask = True
    # adamw_lr: the authors ablate AdamW on SDXL only; their SDXL value, for lack of another.
    train_defaults = dict(resolution=1024, batch_size=2, grad_accum=2, steps=500, weight_decay=0.0, kappa=5e-5,
                          adamw_lr=5e-4)
    sample_defaults = dict(height=1024, width=1024, steps=20, guidance_scale=4.5)

    def text_length(self, tok):
        return self.cfg.max_sequence_length if self.cfg else 300

    @classmethod
    def token_string(cls, tokens):
        return "".join(tokens)  # no loader expands multi-vector tokens; the authors write them unspaced

    @classmethod
    def load_concept(cls, pipe, tokens, rows):
        # SANA's pipeline has no textual-inversion loader: add the tokens and write their rows.
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

    @classmethod
    def sample_kwargs(cls, settings):
        kwargs = {"use_resolution_binning": settings["resolution_binning"]}
        if not settings["complex_human_instruction"]:
            kwargs["complex_human_instruction"] = None
        return kwargs

    def encode_prompts(self, prompts):
        instruction = None
        if self.cfg is not None and self.cfg.complex_human_instruction:
            instruction = inspect.signature(self.pipe.__call__).parameters["complex_human_instruction"].default
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=self.device,
            max_sequence_length=self.text_length(None), complex_human_instruction=instruction)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def draw_noise(self, shape, gen):
        noise = torch.randn(shape, generator=gen).to(self.device)
        t = torch.randint(0, self.pipe.scheduler.config.num_train_timesteps, (shape[0],), generator=gen)
        return {"noise": noise, "t": t.to(self.device)}

    def losses(self, latents, cond, batch, noise, sizes):
        # Flow matching: x_t = (1 - s) x + s e, target e - x, t uniform over the training steps. No flow shift:
        # the authors' protocol; the flow_shift in SANA's scheduler configs is the sampler's (README).
        n = self.pipe.scheduler.config.num_train_timesteps
        eps, t = noise["noise"], noise["t"]
        sigma = ((t + 1).float() / n).view(-1, 1, 1, 1)
        noisy = (1 - sigma) * latents + sigma * eps
        transformer = self.pipe.transformer
        # float32 even when the transformer runs in bf16: bf16 would round t by up to 4 of 1000
        timestep = sigma.flatten() * n * transformer.config.timestep_scale
        pred = transformer(hidden_states=noisy.to(self.dtype), timestep=timestep, **{
            k: (v.to(self.dtype) if v.is_floating_point() else v) for k, v in cond.items()}).sample
        if pred.shape[1] == 2 * latents.shape[1]:  # learned-variance heads
            pred = pred.chunk(2, dim=1)[0]
        return slice_losses(pred, eps - latents, sizes)
