"""The mini world's model architectures: real transformers / diffusers classes at CPU size.

* tokenizer: a word-level ``PreTrainedTokenizerFast`` (supports ``add_tokens``);
* CLIP: ``CLIPModel`` (pre-LN text transformer, learned absolute positions, causal mask,
  final LayerNorm; a small ViT image tower). The conditioning encoder is its text model,
  pretrained against a CNN image tower; the evaluator is a second one (other seed, other
  width, its own ViT);
* VAE: ``AutoencoderKL``, 32 px -> 16 x 16 x 4 latents (the first world's: 8 x 8 x 16);
* UNet: ``UNet2DConditionModel`` with cross-attention at 8 x 8 and 4 x 4;
* the attribute read-out: a small CNN with one head per ground-truth attribute.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from dti.io import DTIError, atomic_path, load_tensors, save_tensors

from . import world

MAX_TOKENS = 24
SPECIALS = ("<unk>", "<end>", "<start>")  # ids 0, 1, 2; <end> is also the padding
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def make_tokenizer(words: list[str] | None = None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = world.vocabulary() if words is None else words
    vocab = {t: i for i, t in enumerate(list(SPECIALS) + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+|[^\w\s]+, as world.split_words
    tok.post_processor = processors.TemplateProcessing(
        single="<start> $A <end>", special_tokens=[("<start>", vocab["<start>"]), ("<end>", vocab["<end>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<start>", eos_token="<end>", unk_token="<unk>",
                                   pad_token="<end>", model_max_length=MAX_TOKENS)


def clip_config(vocab_size: int, hidden: int, layers: int = 4, heads: int = 4):
    from transformers import CLIPConfig

    # eos_token_id != 2 makes CLIP pool at the first <end>, not at the largest id (its legacy rule).
    text = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=MAX_TOKENS, bos_token_id=2, eos_token_id=1,
                pad_token_id=1, hidden_act="gelu")
    vision = dict(image_size=world.SIZE, patch_size=4, hidden_size=hidden, intermediate_size=4 * hidden,
                  num_hidden_layers=layers, num_attention_heads=heads, hidden_act="gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": world.SIZE}, crop_size={"height": world.SIZE, "width": world.SIZE},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> CLIP-normalised float [N, 3, H, W], as ``image_processor`` does."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def vae_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1], as the pipelines' image processor does."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


VAE_FACTORS = (2, 4)  # the VAE's downsampling: 32 px -> 16 x 16 x 4 or 8 x 8 x 16 latents


def check_vae_factor(factor: int):
    if factor not in VAE_FACTORS:
        raise DTIError(f"vae_factor must be one of {', '.join(map(str, VAE_FACTORS))}, not {factor}")


def make_vae(factor: int = 4):
    """factor 4: the first world's VAE (8 x 8 x 16 latents); factor 2: 16 x 16 x 4, nearer the identity,
    so it reconstructs small shapes and thin stripes that the first one blurred."""
    from diffusers import AutoencoderKL

    check_vae_factor(factor)
    channels, latent = ((16, 32, 64), 16) if factor == 4 else ((16, 32), 4)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=channels,
                         layers_per_block=1, latent_channels=latent, norm_num_groups=8, sample_size=world.SIZE)


def make_unet(cross_attention_dim: int, vae_factor: int = 4):
    """Cross-attention at the two coarsest resolutions (8 x 8 and 4 x 4 for either VAE)."""
    from diffusers import UNet2DConditionModel

    check_vae_factor(vae_factor)
    if vae_factor == 4:
        layout = dict(in_channels=16, block_out_channels=(64, 128, 128),
                      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    else:
        layout = dict(in_channels=4, block_out_channels=(32, 64, 128),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    return UNet2DConditionModel(sample_size=world.SIZE // vae_factor, out_channels=layout["in_channels"],
                                layers_per_block=1, cross_attention_dim=cross_attention_dim, attention_head_dim=8,
                                norm_num_groups=32, **layout)


ENCODER_UPSAMPLE = 2  # the image encoder sees scenes at twice their size: its stem divides by four


def make_image_encoder():
    """The image encoder (``ResNetModel``): 128 pooled features. (A ConvNeXt of the same size learned the
    class of a shape several times more slowly.)"""
    from transformers import ResNetConfig, ResNetModel

    return ResNetModel(ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
                                    layer_type="basic", downsample_in_first_stage=False))


def image_encoder_processor():
    """Pixels in [-1, 1], each repeated ENCODER_UPSAMPLE times in both directions (``encoder_pixels``)."""
    from transformers import ConvNextImageProcessor

    side = world.SIZE * ENCODER_UPSAMPLE
    return ConvNextImageProcessor(size={"shortest_edge": side}, crop_pct=1.0, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3, resample=0)  # 0: nearest


def encoder_upsample(pixels: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] pixels in [-1, 1] -> each repeated ENCODER_UPSAMPLE times in both directions."""
    return nn.functional.interpolate(pixels, scale_factor=ENCODER_UPSAMPLE, mode="nearest")


def encoder_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> the image encoder's input, as ``image_encoder_processor`` makes it (and training
    feeds it, augmented in between)."""
    return encoder_upsample(vae_pixels(images))


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                clip_sample=False, timestep_spacing="trailing", steps_offset=1)


SAMPLERS = ("ddim", "dpm")  # DDIM; DPM-Solver++ (2M), which needs fewer steps for the same images


def check_sampler(name: str):
    if name not in SAMPLERS:
        raise DTIError(f"sampler must be one of {', '.join(SAMPLERS)}, not {name!r}")


def make_sampler(name: str):
    """The exported pipeline's scheduler: the training noise schedule (``scheduler_config``) under ``name``."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    check_sampler(name)
    if name == "ddim":
        return DDIMScheduler(**scheduler_config())
    config = {k: v for k, v in scheduler_config().items() if k != "clip_sample"}  # DDIM's own option
    return DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2)


def conv_features(width: int) -> nn.Sequential:
    """32-px image -> [2 * width, 4, 4] feature map (convolutions see shape, which a ViT this small does not)."""
    def block(i, o, stride):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.GroupNorm(8, o), nn.SiLU())

    return nn.Sequential(block(3, width, 1), block(width, width, 1), block(width, 2 * width, 2),
                         block(2 * width, 2 * width, 2), block(2 * width, 2 * width, 2))


class ImageTower(nn.Module):
    """The conditioning CLIP's image tower (pretraining only; it is not shipped): a CNN whose
    output takes the place of the ViT's pooled output. A 4-layer ViT on 32-px scenes reads
    class at 0.26 (chance 0.17) even when trained to, and a blind image tower teaches the text
    encoder to mute class words."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.features = conv_features(width)
        self.pool = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, out), nn.LayerNorm(out))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(pixels))


class Readout(nn.Module):
    """Predicts every attribute of ``world.HEADS`` from a 32-px RGB image in [-1, 1]."""

    def __init__(self, width: int = 48):
        super().__init__()
        self.width = width
        self.features = conv_features(width)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({h: nn.Linear(256, len(v)) for h, v in world.HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(self.features(x))
        return {h: head(z) for h, head in self.heads.items()}

    def save(self, folder: Path):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(self.state_dict(), folder / "model.safetensors")
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps({"width": self.width, "heads": {h: list(v) for h, v in world.HEADS.items()}},
                                      indent=1) + "\n")

    @classmethod
    def load(cls, folder, device="cpu") -> "Readout":
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
        if config is None:
            raise DTIError(f"{folder}: not an attribute read-out folder (no config.json)")
        if config["heads"] != {h: list(v) for h, v in world.HEADS.items()}:
            raise DTIError(f"{folder}: the read-out's heads do not match this world's attributes")
        model = cls(config["width"])
        model.load_state_dict(load_tensors(folder / "model.safetensors"))
        return model.to(device).eval()

    @torch.no_grad()
    def predict(self, images) -> dict[str, list]:
        """Attribute values (names, or counts) for PIL images or a uint8 [N, H, W, 3] array."""
        import numpy as np

        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.stack([np.asarray(im.convert("RGB").resize((world.SIZE, world.SIZE)))
                                                for im in images]))
        device = next(self.parameters()).device
        logits = self(vae_pixels(images).to(device))
        return {h: [world.HEADS[h][i] for i in v.argmax(-1).tolist()] for h, v in logits.items()}


class Evaluator:
    """The evaluator CLIP of a world folder: CLIP-I / CLIP-T-style embeddings, and a patch-feature
    image embedding (mean of the vision tower's last patch states: the DINO analogue)."""

    def __init__(self, folder, device="cpu"):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.processor = CLIPImageProcessor.from_pretrained(folder)
        self.device = torch.device(device)

    def _pixels(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):  # uint8 [N, H, W, 3]
            return clip_pixels(images).to(self.device)
        images = [im.convert("RGB") for im in images]
        return self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, torch.float32)

    @torch.no_grad()
    def image_embeddings(self, images, kind: str = "clip") -> torch.Tensor:
        out = self.model.vision_model(pixel_values=self._pixels(images))
        if kind == "clip":
            feats = self.model.visual_projection(out.pooler_output)
        elif kind == "patch":
            feats = out.last_hidden_state[:, 1:].mean(dim=1)
        else:
            raise DTIError(f"unknown image embedding kind {kind!r} (clip, patch)")
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        # World captions carry no punctuation; the scoring texts' final period would be an unknown word.
        texts = [t.strip().rstrip(".").strip() for t in texts]
        ids = self.tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        feats = self.model.text_projection(self.model.text_model(input_ids=ids).pooler_output)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
