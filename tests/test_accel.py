"""dti.accel on the tiny real architectures: every setting gives the eager path's denoiser outputs and
images within dti.accel.TOLERANCE, a training step with the settings is deterministic and matches the
eager one, and bad or unavailable settings are refused in one line, changing nothing.

Compilation on the CPU takes minutes (inductor generates and builds C++), so the compiled checks are
few, on the tiniest denoiser (SANA's), and in the slow tier."""

import pytest
import torch
from diffusers import DiffusionPipeline
from torch.profiler import ProfilerActivity, profile

from benchmarks.accel_bench import capture_next_call
from dti import accel
from dti.config import TrainConfig
from dti.data import list_images
from dti.families import LearnedRows
from dti.io import DTIError
from dti.train import Trainer, resolve_config

CPU = torch.device("cpu")
TOL = accel.TOLERANCE[torch.float32]
SIZE = {"sd": 64, "sdxl": 64, "sana": 256}  # the tiny pipelines' own image sizes
PROMPTS = ["a photo of a dog on the beach", "a red backpack in the snow"]
# attention=flash is the CPU's first choice already: test_the_attention_setting_picks_the_kernel covers it
UNET_SETTINGS = ["channels_last=true", "fuse_qkv=true", "attention=math",
                 "channels_last=true,fuse_qkv=true,attention=math"]
SANA_SETTINGS = ["channels_last=true", "attention=math", "channels_last=true,attention=math"]
CASES = ([("sd", s) for s in UNET_SETTINGS] + [("sdxl", s) for s in UNET_SETTINGS]
         + [("sana", s) for s in SANA_SETTINGS]
         + [pytest.param("sana", "compile=default,channels_last=true", marks=pytest.mark.slow)])


def load(path):
    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, name: str, cfg) -> torch.Tensor:
    """A short sampling call (2 images, 3 steps, guidance on), as 8-bit images."""
    extra = {"use_resolution_binning": False} if name == "sana" else {}
    with torch.no_grad(), accel.attention_context(cfg):
        images = pipe(prompt=PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(len(PROMPTS))],
                      num_inference_steps=3, guidance_scale=5.0, height=SIZE[name], width=SIZE[name],
                      output_type="np", **extra).images
    return torch.from_numpy((images * 255).round()).float()


def denoise(pipe, cfg, call: dict) -> torch.Tensor:
    with torch.no_grad(), accel.attention_context(cfg):
        out = accel.denoiser_of(pipe)(*call["args"], **call["kwargs"])
    return out[0] if isinstance(out, tuple) else out.sample


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def eager(tiny_models):
    """Per family: the denoiser's first call of an eager sampling call, its output, and the images."""
    out = {}
    for name, path in tiny_models.items():
        pipe = load(path)
        call = capture_next_call(accel.denoiser_of(pipe))
        images = generate(pipe, name, accel.SampleAccel())
        out[name] = {"call": call, "output": denoise(pipe, accel.SampleAccel(), call), "images": images}
    return out


@pytest.mark.parametrize("name,spec", CASES)
def test_each_setting_gives_the_eager_outputs(tiny_models, eager, name, spec):
    cfg = accel.parse_variant(spec, accel.SampleAccel)
    pipe = load(tiny_models[name])
    notes = accel.apply_to_pipeline(pipe, cfg, CPU)
    assert notes, "a setting that is on reports what it changed"
    denoiser = accel.denoiser_of(pipe)
    if cfg.channels_last:
        convs = [m.weight for m in denoiser.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    if cfg.fuse_qkv:
        assert {type(p).__name__ for p in denoiser.attn_processors.values()} == {"FusedAttnProcessor2_0"}
        assert not any(p.requires_grad for p in denoiser.parameters())  # the new fused layers come frozen
    out = denoise(pipe, cfg, eager[name]["call"])
    assert rel(out, eager[name]["output"]) <= TOL["denoiser"]
    images = generate(pipe, name, cfg)
    assert images.shape == eager[name]["images"].shape
    assert float((images - eager[name]["images"]).abs().mean()) <= TOL["image"]


def test_fused_projections_are_the_ones_used(tiny_models, eager):
    """After fusion the separate q/k/v weights no longer matter: zeroing them changes nothing."""
    cfg = accel.parse_variant("fuse_qkv=true", accel.SampleAccel)
    pipe = load(tiny_models["sdxl"])
    accel.apply_to_pipeline(pipe, cfg, CPU)
    before = denoise(pipe, cfg, eager["sdxl"]["call"])
    with torch.no_grad():
        for m in pipe.unet.modules():
            if type(m).__name__ == "Attention":
                for proj in ([m.to_k, m.to_v] if m.is_cross_attention else [m.to_q, m.to_k, m.to_v]):
                    proj.weight.zero_()
    assert torch.equal(denoise(pipe, cfg, eager["sdxl"]["call"]), before)
    assert accel.apply_to_pipeline(pipe, cfg, CPU) == []  # a second call (a shared denoiser) fuses nothing again
    both = accel.parse_variant("fuse_qkv=true,channels_last=true", accel.SampleAccel)
    assert accel.apply_to_pipeline(pipe, both, CPU) == ["channels-last memory: denoiser, vae"]
    assert accel.apply_to_pipeline(pipe, both, CPU) == []


@pytest.mark.parametrize("setting,kernel", [("math", "aten::_scaled_dot_product_attention_math"),
                                            ("flash", "aten::_scaled_dot_product_flash_attention_for_cpu")])
def test_the_attention_setting_picks_the_kernel(tiny_models, eager, setting, kernel):
    cfg = accel.parse_variant(f"attention={setting}", accel.SampleAccel)
    pipe = load(tiny_models["sd"])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        denoise(pipe, cfg, eager["sd"]["call"])
    ops = {e.key for e in prof.key_averages()}
    assert kernel in ops
    other = {"math": "aten::_scaled_dot_product_flash_attention_for_cpu",
             "flash": "aten::_scaled_dot_product_attention_math"}[setting]
    assert other not in ops


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def train_steps(model: str, family: str, images, spec: str, steps: int = 2) -> list[tuple[float, list]]:
    """``steps`` DTI steps of a fresh trainer with the settings of ``spec``: each step's loss and gradients."""
    cfg = resolve_config(TrainConfig(method="dti", model=model, family=family, images=str(images),
                                     placeholder="<sks>", initializer="dog", device="cpu",
                                     checkpoint_every=0).set(["resolution=64", "batch_size=1"]))
    trainer = Trainer(cfg, list_images(images))
    acfg = accel.parse_variant(spec)
    accel.apply_to_pipeline(trainer.family.pipe, acfg, CPU, training=True)
    assert all(isinstance(e.get_input_embeddings(), LearnedRows) for e in trainer.family.encoders)
    out = []
    for _ in range(steps):
        with accel.attention_context(acfg):
            loss = trainer.step()
        out.append((loss, [p.grad.detach().clone() for p in trainer.method.params]))
    denoiser = accel.denoiser_of(trainer.family.pipe)
    assert not any(p.requires_grad for p in denoiser.parameters())
    return out


def check_training(model, family, images, spec):
    reference = train_steps(model, family, images, "eager")
    first, second = train_steps(model, family, images, spec), train_steps(model, family, images, spec)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(first, second):  # deterministic: bit for bit
        assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    for (loss, grads), (ref_loss, ref_grads) in zip(first, reference):  # and the eager step, within tolerance
        assert abs(loss - ref_loss) <= TOL["denoiser"] * abs(ref_loss)
        assert all(rel(g, r) <= TOL["denoiser"] for g, r in zip(grads, ref_grads))


@pytest.mark.parametrize("family,spec", [("sdxl", "channels_last=true,fuse_qkv=true,attention=math"),
                                         ("sana", "channels_last=true,attention=math")])
def test_training_with_the_settings_is_deterministic_and_matches_eager(tiny_models, ref_images, family, spec):
    check_training(str(tiny_models[family]), family, ref_images, spec)


@pytest.mark.slow
def test_compiled_training_is_deterministic_and_matches_eager(tiny_models, ref_images):
    """The denoiser and the text encoder compiled; the learned rows reach the compiled encoder every step."""
    check_training(str(tiny_models["sana"]), "sana", ref_images, "compile=default,compile_text_encoders=true")


# --------------------------------------------------------------------------- #
# Refusals
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spec,device,message", [
    ("compile=fast", None, "compile must be one of off, default"),
    ("attention=xformers", None, "attention must be one of auto, flash"),
    ("compile_text_encoders=true", None, "compile_text_encoders needs a compile mode"),
    ("compile=reduce-overhead", "cpu", "captures CUDA graphs, which need a CUDA device"),
    ("compile=max-autotune", "cpu", "captures CUDA graphs"),
    ("attention=cudnn", "cpu", "attention=cudnn is a CUDA kernel"),
    ("attention=efficient", "cpu", "attention=efficient is a CUDA kernel"),
])
def test_bad_or_unavailable_settings_are_refused_in_one_line(spec, device, message):
    with pytest.raises(DTIError, match=message) as err:
        cfg = accel.parse_variant(spec)
        cfg.check_accel(torch.device(device) if device else None)
    assert "\n" not in str(err.value)


def test_unknown_keys_and_values_are_refused():
    with pytest.raises(DTIError, match="unknown key 'compiled'"):
        accel.parse_variant("compiled=default")
    with pytest.raises(DTIError, match="sample_batch must be one of fixed, auto"):
        accel.parse_variant("sample_batch=max", accel.SampleAccel)
    with pytest.raises(DTIError, match="expected a value of type bool"):
        accel.parse_variant("channels_last=maybe")


def test_compile_without_a_cpu_compiler_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++ to be found
    monkeypatch.delenv("CXX", raising=False)
    cfg = accel.parse_variant("compile=default")
    with pytest.raises(DTIError, match="compile=default on cpu needs a C\\+\\+ compiler"):
        cfg.check_accel(CPU)


def test_a_refusal_changes_nothing(tiny_models):
    """fuse_qkv on SANA (diffusers' SANA processors ignore fused projections) is refused before any change."""
    pipe = load(tiny_models["sana"])
    cfg = accel.parse_variant("channels_last=true,fuse_qkv=true", accel.SampleAccel)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(DTIError, match="fuse_qkv: SanaTransformer2DModel has no fused attention projections"):
        accel.apply_to_pipeline(pipe, cfg, CPU)
    after = pipe.transformer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    convs = [m.weight for m in pipe.transformer.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)


def test_defaults_change_nothing_and_name_every_field(tiny_models):
    pipe = load(tiny_models["sd"])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    assert accel.eager(accel.SampleAccel()) and accel.apply_to_pipeline(pipe, accel.SampleAccel(), CPU) == []
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert accel.ACCEL_FIELDS == {"compile", "channels_last", "fuse_qkv", "attention", "compile_text_encoders",
                                  "sample_batch"}
    assert not accel.eager(accel.parse_variant("channels_last=true"))


def test_auto_sample_batch_without_cuda_keeps_the_fallback(tiny_models):
    pipe = load(tiny_models["sd"])
    call = {"height": 64, "width": 64, "num_inference_steps": 3, "guidance_scale": 5.0}
    assert accel.auto_sample_batch(pipe, call, CPU, limit=30, fallback=4) == 4
    assert accel.auto_sample_batch(pipe, call, CPU, limit=3, fallback=4) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_sample_batch_fits_the_gpu(tiny_models):
    device = torch.device("cuda")
    pipe = load(tiny_models["sd"]).to(device)
    call = {"height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": 5.0, "output_type": "np"}
    batch = accel.auto_sample_batch(pipe, call, device, limit=64)
    assert 2 <= batch <= 64
    pipe(prompt=["a photo"] * batch, **call)  # runs without running out of memory
