"""Riemannian SGD on the unit sphere with a von Mises-Fisher prior (DTI's optimizer)."""

from __future__ import annotations

import torch


class SphericalSGD(torch.optim.Optimizer):
    """Riemannian SGD for parameters whose rows live on the unit sphere.

    Each parameter is a ``[k, d]`` tensor of unit rows (one direction per learned
    token). For every row ``v`` with prior mean ``mu`` one ``step()`` does::

        g = dL/dv - kappa * mu          # MAP under vMF(mu, kappa)
        g = g - (g . v) v               # project onto the tangent space at v
        r = beta * r + (1 - beta) * |g|^2;  g = g / (sqrt(r / (1 - beta^t)) + eps)
        v = v - lr * g;  v = v / |v|    # step, then retract onto the sphere

    With ``beta = 0`` the tangent step has unit length, so every step turns ``v``
    by exactly ``atan(lr)``. The prior enters before normalisation, so ``kappa``
    acts relative to the size of the data gradient. No momentum, no weight decay.

    ``mu`` (same shape as the parameter, unit rows) is given as a keyword, which
    applies to a single parameter, or per param group (``{"params": [v], "mu": m}``).
    """

    def __init__(self, params, lr: float, kappa: float = 0.0, mu: torch.Tensor | None = None,
                 beta: float = 0.0, eps: float = 1e-8):
        if lr <= 0:
            raise ValueError(f"SphericalSGD: lr must be positive, got {lr}")
        if kappa < 0:
            raise ValueError(f"SphericalSGD: kappa must be >= 0, got {kappa}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"SphericalSGD: beta must be in [0, 1), got {beta}")
        super().__init__(params, dict(lr=lr, kappa=kappa, mu=mu, beta=beta, eps=eps))
        for group in self.param_groups:
            if group["mu"] is not None and len(group["params"]) != 1:
                raise ValueError("SphericalSGD: a mu is given per parameter; put each parameter "
                                 "in its own param group")
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"SphericalSGD: parameters are [k, d] tensors of unit rows, "
                                     f"got shape {tuple(p.shape)}")
                mu_ = group["mu"]
                if mu_ is not None and mu_.shape != p.shape:
                    raise ValueError(f"SphericalSGD: mu has shape {tuple(mu_.shape)}, "
                                     f"parameter {tuple(p.shape)}")
                if group["kappa"] > 0 and mu_ is None:
                    raise ValueError("SphericalSGD: kappa > 0 needs a prior mean mu")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, kappa, beta, eps, mu = (group[k] for k in ("lr", "kappa", "beta", "eps", "mu"))
            for v in group["params"]:
                if v.grad is None:
                    continue
                g = v.grad.detach().to(v.dtype)
                if kappa and mu is not None:
                    g = g - kappa * mu.to(device=v.device, dtype=v.dtype)
                g = g - (g * v).sum(dim=1, keepdim=True) * v
                state = self.state[v]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["sq_norm_avg"] = torch.zeros(v.shape[0], 1, dtype=v.dtype, device=v.device)
                state["step"] += 1
                r = state["sq_norm_avg"]
                r.mul_(beta).add_((1.0 - beta) * g.pow(2).sum(dim=1, keepdim=True))
                r_hat = r / (1.0 - beta ** state["step"].item())
                g = g / (r_hat.sqrt() + eps)
                v.sub_(lr * g)
                v.div_(v.norm(dim=1, keepdim=True))
        return loss
