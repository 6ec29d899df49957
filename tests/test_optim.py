"""SphericalSGD against the update rule of the paper, written out by hand."""

import math

import pytest
import torch

from dti import SphericalSGD


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def step_with_grad(opt, v, grad):
    v.grad = grad.clone()
    opt.step()


def test_rows_stay_unit_and_turn_by_atan_lr():
    torch.manual_seed(0)
    v = unit(torch.randn(3, 16)).requires_grad_(True)
    lr = 0.3
    opt = SphericalSGD([v], lr=lr)
    for _ in range(5):
        before = v.detach().clone()
        step_with_grad(opt, v, torch.randn(3, 16) * torch.tensor([[1e-3], [1.0], [1e3]]))
        assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-6)
        angle = torch.arccos((before * v.detach()).sum(1).clamp(-1, 1))
        # every row turns by the same angle whatever its gradient's size
        assert torch.allclose(angle, torch.full((3,), math.atan(lr)), atol=1e-4)


def test_step_is_tangent():
    torch.manual_seed(1)
    v = unit(torch.randn(1, 8)).requires_grad_(True)
    v0 = v.detach().clone()
    opt = SphericalSGD([v], lr=0.1)
    # a gradient along v itself has no tangent part: nothing moves
    step_with_grad(opt, v, 5.0 * v0)
    assert torch.allclose(v.detach(), v0, atol=1e-6)
    # a general gradient: the move before retraction is orthogonal to v
    g = torch.randn(1, 8)
    step_with_grad(opt, v, g)
    tangent = g - (g * v0).sum() * v0
    expected = unit(v0 - 0.1 * tangent / tangent.norm())
    assert torch.allclose(v.detach(), expected, atol=1e-6)


def test_prior_pulls_toward_mu_without_data_gradient():
    torch.manual_seed(2)
    mu = unit(torch.randn(2, 8))
    v = unit(mu + 0.8 * torch.randn(2, 8)).requires_grad_(True)
    lr = 0.05
    opt = SphericalSGD([v], lr=lr, kappa=1e-4, mu=mu)
    angles = [torch.arccos((v.detach() * mu).sum(1).clamp(-1, 1))]
    for _ in range(60):
        step_with_grad(opt, v, torch.zeros(2, 8))
        angles.append(torch.arccos((v.detach() * mu).sum(1).clamp(-1, 1)))
    angles = torch.stack(angles)
    far = angles[:-1] > math.atan(lr)
    # while far from mu, each step goes straight toward it by atan(lr); then it stays within one step
    assert torch.allclose((angles[:-1] - angles[1:])[far], torch.tensor(math.atan(lr)), atol=1e-4)
    assert (angles[-1] <= math.atan(lr) + 1e-5).all()


def test_beta_matches_hand_computation():
    torch.manual_seed(3)
    beta, lr, eps, kappa = 0.9, 0.2, 1e-8, 0.5
    mu = unit(torch.randn(2, 5))
    v = unit(torch.randn(2, 5)).requires_grad_(True)
    opt = SphericalSGD([{"params": [v], "mu": mu}], lr=lr, kappa=kappa, beta=beta, eps=eps)
    ref_v, r = v.detach().clone().double(), torch.zeros(2, 1, dtype=torch.float64)
    for t in range(1, 4):
        grad = torch.randn(2, 5)
        g = grad.double() - kappa * mu.double()
        g = g - (g * ref_v).sum(1, keepdim=True) * ref_v
        r = beta * r + (1 - beta) * (g ** 2).sum(1, keepdim=True)
        g = g / ((r / (1 - beta ** t)).sqrt() + eps)
        ref_v = ref_v - lr * g
        ref_v = ref_v / ref_v.norm(dim=1, keepdim=True)
        step_with_grad(opt, v, grad)
        assert torch.allclose(v.detach().double(), ref_v, atol=1e-6)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(4)
    grads = [torch.randn(2, 6) for _ in range(6)]
    mu = unit(torch.randn(2, 6))

    def run(split):
        v = mu.clone().requires_grad_(True)
        opt = SphericalSGD([v], lr=0.1, kappa=0.01, mu=mu, beta=0.5)
        for i, g in enumerate(grads):
            if i == split:
                state = opt.state_dict()
                v2 = v.detach().clone().requires_grad_(True)
                opt = SphericalSGD([v2], lr=0.1, kappa=0.01, mu=mu, beta=0.5)
                opt.load_state_dict(state)
                v = v2
            step_with_grad(opt, v, g)
        return v.detach()

    assert torch.equal(run(split=-1), run(split=3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.0), "lr must be positive"),
    (dict(lr=0.1, kappa=1e-4), "needs a prior mean"),
    (dict(lr=0.1, beta=1.0), "beta must be in"),
    (dict(lr=0.1, mu=torch.ones(3, 4)), "mu has shape"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SphericalSGD([torch.ones(2, 4, requires_grad=True)], **kwargs)
