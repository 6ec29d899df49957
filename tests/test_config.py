"""Training configuration: protocol defaults per family and method, --set parsing, validation."""

import pytest

from dti import DTIError, TrainConfig
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
