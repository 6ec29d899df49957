"""Tiny, random-weight but architecturally real diffusers pipelines.

Everything here is built from configs in code, so tests, demos and CPU
benchmarks can exercise the real loading / tokenizing / denoising code paths of
Stable Diffusion 1.x/2.x, SDXL and SANA without downloading any weights.

* The CLIP tokenizer is the genuine 49408-token CLIP BPE, rebuilt from the
  merges file that ships inside the ``open_clip_torch`` wheel, so token ids
  match ``openai/clip-vit-large-patch14`` exactly (textual-inversion code
  depends on real ids, e.g. for initializer tokens).
* The Gemma tokenizer is a small SentencePiece-style BPE (byte fallback,
  ``▁`` for spaces) trained deterministically on an in-code caption corpus,
  because the real 256k-token Gemma vocabulary cannot be shipped.
* All models are seeded, so every build is bit-identical.

Generation sizes (``sample_size`` is in latent pixels; defaults shown):

* SD:   VAE scale factor 8, 4 latent channels -> 64 x 64 images; CLIP text width ``hidden`` (32).
* SDXL: VAE scale factor 8, 4 latent channels -> 64 x 64 images; text widths 32 and 64
  (pooled projection 32), UNet cross-attention width 96.
* SANA: DC-AE f32c32, scale factor 32, 32 latent channels -> 256 x 256 images; Gemma-2 width 32.
  Call with ``use_resolution_binning=False`` unless ``sample_size`` is 16/32/64/128
  (the only sizes SanaPipeline has aspect-ratio bins for; 16 bins to 512 x 512).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import pathlib

import torch

__all__ = ["clip_tokenizer", "gemma_tokenizer", "build_sd", "build_sdxl", "build_sana", "write_clip_vocab"]

# Token ids of the real CLIP tokenizer.
CLIP_VOCAB_SIZE = 49408
CLIP_BOS_ID = 49406
CLIP_EOS_ID = 49407


# --------------------------------------------------------------------------- #
# CLIP tokenizer
# --------------------------------------------------------------------------- #
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _open_clip_bpe_path() -> pathlib.Path:
    # find_spec locates the package without importing it (importing open_clip
    # pulls in torch vision models and takes seconds).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is required for the CLIP BPE vocabulary")
    for loc in spec.submodule_search_locations:
        p = pathlib.Path(loc) / "bpe_simple_vocab_16e6.txt.gz"
        if p.is_file():
            return p
    raise FileNotFoundError("bpe_simple_vocab_16e6.txt.gz not found in the open_clip package")


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab.json / merges.txt contents, derived from open_clip's merges file."""
    lines = gzip.decompress(_open_clip_bpe_path().read_bytes()).decode("utf-8").split("\n")
    # Same slice as CLIP's own SimpleTokenizer: 49152 - 256 - 2 merges after the header.
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == CLIP_VOCAB_SIZE and vocab["<|endoftext|>"] == CLIP_EOS_ID
    return vocab, merges


def write_clip_vocab(directory) -> pathlib.Path:
    """Write the CLIP ``vocab.json`` and ``merges.txt`` (Hugging Face format) into ``directory``."""
    vocab, merges = _clip_vocab_and_merges()
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return d


def clip_tokenizer(max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """The real CLIP BPE tokenizer (ids identical to openai/clip-vit-large-patch14).

    ``pad_token`` defaults to ``<|endoftext|>`` as in SD 1.x; SD 2.x / SDXL's
    second tokenizer pad with ``"!"`` (id 0).
    Returns a fresh instance each call, so ``add_tokens`` never leaks between pipelines.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    # Built from the in-memory vocab/merges rather than from_pretrained(<temp dir>):
    # in transformers 5 the latter records "is_local"/"local_files_only" in the
    # saved tokenizer_config.json, and the vocab_file=/merges_file= kwargs are
    # silently ignored (yielding a 2-token tokenizer).
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length, pad_token=pad_token)


# --------------------------------------------------------------------------- #
# Gemma-style tokenizer
# --------------------------------------------------------------------------- #
_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # ids 0..4, as in Gemma
_GEMMA_VOCAB_SIZE = 1000

# SANA prepends this instruction to every prompt by default; training on it keeps
# the prompt short (few byte-fallback pieces) so the text encoder stays cheap.
_SANA_INSTRUCTION = """Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:
- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.
- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.
Here are examples of how to transform or refine prompts:
- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.
- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.
Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:
User Prompt: """


def _caption_corpus() -> list[str]:
    """Deterministic photo-caption corpus (no randomness: plain nested loops)."""
    colours = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
               "gray", "golden", "silver", "dark", "bright", "colorful"]
    subjects = ["dog", "cat", "puppy", "kitten", "bird", "horse", "teddy bear", "stuffed animal", "toy",
                "car", "bicycle", "chair", "table", "cup", "mug", "vase", "flower", "tree", "house",
                "castle", "robot", "backpack", "clock", "lamp", "book", "bowl", "teapot", "sculpture",
                "statue", "painting", "person", "woman", "man", "child", "boat", "train", "shoe", "hat",
                "sunglasses", "candle", "guitar", "cake", "apple", "banana", "pizza", "monster", "dragon"]
    places = ["on the beach", "in the snow", "in a forest", "on a table", "in the city", "on the grass",
              "in a garden", "on a wooden floor", "in front of a mountain", "under the sea", "on the moon",
              "in a kitchen", "on a street", "next to a river", "in the desert", "on top of a building",
              "in a bedroom", "at night", "at sunset", "in the rain", "with a blue background"]
    templates = ["a photo of a {c} {s} {p}", "a {c} {s} {p}", "a close-up photo of the {s} {p}",
                 "a painting of a {s} {p}, in the style of {a}", "a good photo of my {s}",
                 "a rendering of a {c} {s}", "a cropped photo of the {s}", "a bright photo of a {s} {p}",
                 "an illustration of a cute {s} {p}", "a high quality, detailed, realistic picture of a {c} {s}"]
    artists = ["van gogh", "monet", "picasso", "a watercolor", "an oil painting", "pixel art", "anime"]
    extra = ["a photo of a dog on the beach", "a stuffed animal", "sks dog", "photorealistic, 4k, sharp focus",
             "professional photography, cinematic lighting", "low quality, blurry, ugly, deformed",
             "there is one small object in the middle of the image", "two cats and three dogs"]
    out = list(extra) + [_SANA_INSTRUCTION]
    i = 0
    for s in subjects:
        for p in places:
            t = templates[i % len(templates)]
            out.append(t.format(c=colours[i % len(colours)], s=s, p=p, a=artists[i % len(artists)]))
            i += 1
    return out


@functools.lru_cache(maxsize=1)
def _gemma_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Pre-split only for *training*: an optional leading "▁" plus a run of letters,
    # a single digit, or a run of punctuation (SentencePiece-like: digits split,
    # punctuation apart from words). No learned merge can then straddle a piece
    # boundary, so encoding the whole unsplit string (what GemmaTokenizer does,
    # like SentencePiece) yields the same pieces.
    tok.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"▁?\p{L}+|▁?\p{N}|▁?[^\s\p{L}\p{N}▁]+|\s+|▁+"), behavior="isolated"
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]  # byte fallback pieces, ids 5..260
    trainer = trainers.BpeTrainer(
        vocab_size=_GEMMA_VOCAB_SIZE, min_frequency=1, show_progress=False,
        special_tokens=_GEMMA_SPECIALS + byte_tokens,
        initial_alphabet=[chr(c) for c in range(33, 127)] + ["▁", "\n"],  # printable ASCII needs no byte fallback
    )
    tok.train_from_iterator(_caption_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), merges


def gemma_tokenizer():
    """Small Gemma-style tokenizer: BPE + byte fallback, ``▁`` spaces, <bos> prepended.

    Special ids match Gemma: <pad>=0, <eos>=1, <bos>=2, <unk>=3 (<mask>=4).
    """
    from transformers import GemmaTokenizer

    vocab, merges = _gemma_vocab_and_merges()
    # GemmaTokenizer (transformers 5) builds the SentencePiece-style pipeline itself
    # from vocab + merges, so a save/load round trip reproduces it exactly.
    return GemmaTokenizer(
        vocab=dict(vocab), merges=list(merges), add_bos_token=True, add_eos_token=False, padding_side="right",
    )


# --------------------------------------------------------------------------- #
# Model pieces shared by SD and SDXL
# --------------------------------------------------------------------------- #
def _clip_text_config(hidden: int, projection_dim: int | None = None, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig

    kw = dict(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act=act,
        # The released SD / SDXL encoder configs carry the legacy ids (eos 2), which makes
        # transformers pool at the largest token id; mirror them so tests take that path too.
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    if projection_dim is not None:
        kw["projection_dim"] = projection_dim
    return CLIPTextConfig(**kw)


def _vae_kl(sample_size: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    # Four resolution levels -> vae_scale_factor 2**3 = 8 like the real SD VAE,
    # with very few channels to stay tiny.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8,
        sample_size=sample_size * 8, scaling_factor=scaling_factor,
    )


def _sd_scheduler_kwargs() -> dict:
    # Values of the SD 1.x / 2.x / SDXL scheduler configs.
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1, timestep_spacing="leading")


def _prepare_dir(path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _keep_rng(fn):
    """Seed inside a forked RNG so building never disturbs the caller's torch RNG state."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- #
# Builders
# --------------------------------------------------------------------------- #
@_keep_rng
def build_sd(path, hidden: int = 32, sample_size: int = 8, prediction_type: str = "epsilon") -> pathlib.Path:
    """Tiny StableDiffusionPipeline; generate at ``sample_size * 8`` pixels (64 by default)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    path = _prepare_dir(path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden, attention_head_dim=2, norm_num_groups=32,
        # SD 2.x (v-prediction) uses linear projections in its transformer blocks.
        use_linear_projection=prediction_type == "v_prediction",
    )
    vae = _vae_kl(sample_size, scaling_factor=0.18215)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config(hidden))
    scheduler = DDIMScheduler(**_sd_scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False,
                              prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@_keep_rng
def build_sdxl(path, sample_size: int = 8) -> pathlib.Path:
    """Tiny StableDiffusionXLPipeline; generate at ``sample_size * 8`` pixels (64 by default).

    text_encoder: CLIPTextModel, width 32; text_encoder_2: CLIPTextModelWithProjection,
    width 64, projection 32. UNet cross-attention dim 32 + 64 = 96.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    hidden_1, hidden_2, proj_dim, time_dim = 32, 64, 32, 8
    path = _prepare_dir(path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden_1 + hidden_2, attention_head_dim=(2, 4), use_linear_projection=True,
        norm_num_groups=32,
        # SDXL micro-conditioning: 6 size/crop numbers embedded to time_dim each + pooled text.
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + proj_dim,
    )
    vae = _vae_kl(sample_size, scaling_factor=0.13025)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config(hidden_1))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(hidden_2, projection_dim=proj_dim, act="gelu"))
    scheduler = EulerDiscreteScheduler(**_sd_scheduler_kwargs(), prediction_type="epsilon",
                                       interpolation_type="linear", use_karras_sigmas=False)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"),  # real SDXL pads tokenizer_2 with "!"
        unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@_keep_rng
def build_sana(path, sample_size: int = 8) -> pathlib.Path:
    """Tiny SanaPipeline; DC-AE f32c32, so generate at ``sample_size * 32`` pixels (256 by default).

    Pass ``use_resolution_binning=False`` when calling unless ``sample_size`` is one of
    16/32/64/128 (the sizes SanaPipeline has aspect-ratio bins for).
    """
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    hidden, latent_channels = 32, 32
    path = _prepare_dir(path)
    tokenizer = gemma_tokenizer()

    torch.manual_seed(0)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=8192, sliding_window=4096,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ))
    torch.manual_seed(0)
    # Same block layout as the real SANA DC-AE (6 levels -> 2**5 = 32x compression,
    # ResBlocks then linear-attention EfficientViT blocks), with tiny widths.
    vae = AutoencoderDC(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=8,
        encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        encoder_block_out_channels=(8, 8, 16, 16, 32, 32), decoder_block_out_channels=(8, 8, 16, 16, 32, 32),
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
        encoder_qkv_multiscales=((),) * 3 + ((5,),) * 3, decoder_qkv_multiscales=((),) * 3 + ((5,),) * 3,
        upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3, decoder_act_fns=("relu",) * 3 + ("silu",) * 3,
        scaling_factor=0.41407,
    )
    torch.manual_seed(0)
    heads, head_dim = 2, 16  # inner width 32; cross-attention works at the same width
    transformer = SanaTransformer2DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=heads,
        attention_head_dim=head_dim, num_layers=2, num_cross_attention_heads=heads,
        cross_attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, caption_channels=hidden,
        mlp_ratio=2.5, sample_size=sample_size, patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6,
    )
    # The real SANA 1.0 scheduler: DPM-Solver++ on flow-matching sigmas.
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
        final_sigmas_type="zero", lower_order_final=True, timestep_spacing="linspace", steps_offset=0,
    )
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def write_reference_images(folder, n: int = 4, seed: int = 0) -> pathlib.Path:
    """``n`` small photos of one made-up subject (an orange disc on a dark, noisy ground) in
    several sizes and aspect ratios, laid out like a DreamBooth subject folder."""
    import numpy as np
    from PIL import Image

    folder = _prepare_dir(folder)
    rng = np.random.default_rng(seed)
    sizes = [(80, 64), (64, 96), (72, 72), (100, 70), (64, 64), (90, 80)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        cy, cx = h / 2 + rng.uniform(-h / 8, h / 8), w / 2 + rng.uniform(-w / 8, w / 8)
        arr[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 3) ** 2] = (220, 120, 30)
        Image.fromarray(arr).save(folder / f"{i:02d}.png")
    return folder


# --------------------------------------------------------------------------- #
# Evaluator backbones (dti.metrics)
# --------------------------------------------------------------------------- #
_TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                 image_size=32, patch_size=8)


@_keep_rng
def build_metric_models(root) -> dict[str, str]:
    """Tiny random-weight evaluators for ``dti.metrics``, one folder each under ``root``.

    Returns model ids for ``Backbones(model_ids=...)``: local folders for the transformers
    backbones (``dinov2``: Dinov2Model + BitImageProcessor, ``dino``: ViTModel + ViTImageProcessor,
    ``siglip``: SiglipModel + SiglipProcessor) and ``local-dir:<folder>`` for the open_clip
    ``clip`` model. All take 32 x 32 inputs (patch 8), width 32, 2 layers.

    SigLIP's tokenizer is the small Gemma-style one (its real SentencePiece vocabulary cannot
    be shipped); SiglipProcessor accepts any tokenizer and AutoProcessor restores it as saved.
    logit_scale / logit_bias are set to non-zero values (the model's own init zeroes them),
    so tests see both in use. The CLIP text tower uses the real 49408-token BPE via
    open_clip's own SimpleTokenizer, which reads the same merges file.
    """
    import open_clip
    from safetensors.torch import save_file
    from transformers import (BitImageProcessor, Dinov2Config, Dinov2Model, SiglipConfig, SiglipImageProcessor,
                              SiglipModel, SiglipProcessor, ViTConfig, ViTImageProcessor, ViTModel)

    root = _prepare_dir(root)
    ids = {}

    path = _prepare_dir(root / "dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**_TINY_VIT)).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    ids["dinov2"] = str(path)

    path = _prepare_dir(root / "dino")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**_TINY_VIT)).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    ids["dino"] = str(path)

    path = _prepare_dir(root / "siglip")
    tokenizer = gemma_tokenizer()
    torch.manual_seed(0)
    siglip = SiglipModel(SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config=dict(_TINY_VIT),
    ))
    with torch.no_grad():
        siglip.logit_scale.fill_(2.0)
        siglip.logit_bias.fill_(-1.0)
    siglip.save_pretrained(path)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(path)
    ids["siglip"] = str(path)

    path = _prepare_dir(root / "clip")
    model_cfg = {
        "embed_dim": 32,
        # head_width 16 -> 2 heads at width 32 (open_clip derives the vision head count from it)
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": 32, "heads": 2, "layers": 2},
    }
    preprocess_cfg = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                      "interpolation": "bicubic", "resize_mode": "shortest"}
    torch.manual_seed(0)
    clip = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    (path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2), encoding="utf-8")
    ids["clip"] = f"local-dir:{path}"
    return ids
