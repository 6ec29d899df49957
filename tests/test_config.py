"""Training configuration: protocol defaults per family and method, --set parsing, validation."""

import pytest

from dti import DTIError, TrainConfig
from dti.config import validation_templates
from dti.train import resolve_config


def test_family_defaults_follow_the_paper_protocol():
    sdxl = resolve_config(TrainConfig(method="dti", family="sdxl"))
    assert (sdxl.resolution, sdxl.batch_size, sdxl.grad_accum, sdxl.steps) == (768, 4, 1, 400)
    assert (sdxl.lr, sdxl.kappa, sdxl.beta, sdxl.m_star) == (0.04, 1e-4, 0.0, "mean")
    sana = resolve_config(TrainConfig(method="dti", family="sana"))
    assert (sana.resolution, sana.batch_size, sana.grad_accum, sana.steps, sana.kappa) == (1024, 2, 2, 500, 5e-5)
    ti = resolve_config(TrainConfig(method="ti", family="sana"))
    assert (ti.lr, ti.weight_decay) == (0.02, 0.0)
    assert resolve_config(TrainConfig(method="crossinit", family="sdxl")).weight_decay == 1e-2
    assert resolve_config(TrainConfig(method="ti", family="sd").set(["lr=0.1"])).lr == 0.1


@pytest.mark.parametrize("assignment, message", [
    ("lerning_rate=0.1", "unknown key 'lerning_rate' in --set; valid keys: .*lr"),
    ("steps=many", "--set steps=many: expected a value of type int"),
    ("complex_human_instruction=maybe", "expected a value of type bool"),
    ("noequals", "--set expects key=value"),
])
def test_set_rejects_bad_assignments(assignment, message):
    with pytest.raises(DTIError, match=message):
        TrainConfig().set([assignment])


@pytest.mark.parametrize("key, value, message", [
    ("m_star", "huge", "m_star must be mean, min, max or a positive number"),
    ("m_star", "-1", "m_star must be a positive finite number"),
    ("direction_optimizer", "sgd", "direction_optimizer must be rsgd or adamw"),
    ("kappa", "-1", "kappa must be >= 0"),
    ("batch_size", "0", "batch_size must be >= 1"),
])
def test_resolved_rejects_bad_values(key, value, message):
    with pytest.raises(DTIError, match=message):
        resolve_config(TrainConfig(method="dti", family="sd").set([f"{key}={value}"]))


def test_watching_fields_resolve_and_revision_may_stay_unset():
    sdxl = resolve_config(TrainConfig(method="dti", family="sdxl"))
    assert (sdxl.revision, sdxl.progress_every, sdxl.validation_every, sdxl.tensorboard) == (None, 25, 0, False)
    assert sdxl.validation_steps == 50  # the family's sampling steps
    assert resolve_config(TrainConfig(method="dti", family="sana")).validation_steps == 20
    cfg = TrainConfig(method="ti", family="sd").set(["revision=v1.0", "validation_every=50", "validation_steps=4",
                                                      "validation_prompts=a photo of {} | a {} in the snow"])
    cfg = resolve_config(cfg)
    assert (cfg.revision, cfg.validation_steps) == ("v1.0", 4)
    assert validation_templates(cfg.validation_prompts) == ["a photo of {}", "a {} in the snow"]


@pytest.mark.parametrize("assignments, message", [
    (["progress_every=-1"], "progress_every must be >= 0, got -1"),
    (["validation_every=-5"], "validation_every must be >= 0"),
    (["validation_steps=0"], "validation_steps must be >= 1"),
    (["validation_seed=-1"], r"seed must be in \[0, 2\*\*63\)"),
    (["revision= "], "revision is empty"),
    (["validation_every=10", "validation_prompts=a photo"], r"validation prompt 'a photo' must hold one \{\}"),
    (["validation_every=10", "validation_prompts=a {} and a {}"], "must hold one"),
    (["validation_every=10", "validation_prompts=a {} on {x}"], "no other braces"),
    (["validation_every=10", "validation_prompts=a photo of {}|"], r"validation prompt '' must hold one"),
])
def test_watching_fields_are_checked(assignments, message):
    with pytest.raises(DTIError, match=message):
        TrainConfig().set(assignments).check()


def test_prompts_are_not_checked_while_validation_is_off():
    TrainConfig().set(["validation_prompts=no placeholder here"]).check()
