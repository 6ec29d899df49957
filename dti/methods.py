"""The learned-embedding methods, one small class each, in a registry.

A method owns the trainable tensors (one ``[k, d]`` tensor per text encoder), turns
them into the embedding rows fed to the encoders, adds its own loss terms, and makes
its optimizer. The training loop only talks to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import TrainConfig, parse_m_star
from .optim import SphericalSGD


@dataclass
class EncoderSlot:
    """What a method needs to know about one text encoder."""

    name: str                      # "text_encoder", "text_encoder_2", ...
    initializer_rows: torch.Tensor  # [k, d] float32 embedding rows of the initializer tokens
    vocab_norms: dict[str, float]   # mean/min/max/std of the non-zero vocabulary row norms
    contextual_init: Callable[[], torch.Tensor]  # [k, d] encoder output at the initializer tokens


METHODS: dict[str, type["Method"]] = {}


def register(cls):
    METHODS[cls.name] = cls
    return cls


class Method:
    name = ""

    def __init__(self, cfg: TrainConfig, slots: list[EncoderSlot]):
        self.cfg = cfg
        self.slots = slots
        self.params = [p.detach().clone().float().requires_grad_(True) for p in self.initial_params()]

    def initial_params(self) -> list[torch.Tensor]:
        return [s.initializer_rows for s in self.slots]

    def embeddings(self) -> list[torch.Tensor]:
        """The rows fed to each encoder (differentiable in the parameters)."""
        return self.params

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def make_optimizer(self) -> torch.optim.Optimizer:
        return self._adamw(self.cfg.weight_decay)

    def after_step(self):
        pass

    def metadata(self) -> dict:
        return {}

    def _adamw(self, weight_decay: float):
        c = self.cfg
        return torch.optim.AdamW(self.params, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2),
                                 eps=c.adam_eps, weight_decay=weight_decay)


@register
class TextualInversion(Method):
    """TI: the embedding rows themselves, initialised at the initializer's rows, AdamW."""

    name = "ti"


@register
class CrossInit(Method):
    """CrossInit: start from the encoder's output at the initializer tokens; MSE pull to it."""

    name = "crossinit"

    def initial_params(self):
        self.targets = [s.contextual_init().detach().float() for s in self.slots]
        return self.targets

    def extra_loss(self):
        lam = self.cfg.crossinit_lambda
        return lam * sum(torch.nn.functional.mse_loss(p, t.to(p.device)) for p, t in zip(self.params, self.targets))


@register
class DirectionalTextualInversion(Method):
    """DTI: e = m* v with |v| = 1 fixed per encoder; only the direction v is learned."""

    name = "dti"

    def __init__(self, cfg, slots):
        m_star = parse_m_star(cfg.m_star)
        self.norms = [float(m_star) if isinstance(m_star, float) else s.vocab_norms[m_star] for s in slots]
        super().__init__(cfg, slots)
        self.mu = [p.detach().clone() for p in self.params]  # vMF prior mean: the initial direction

    def initial_params(self):
        return [torch.nn.functional.normalize(s.initializer_rows.float(), dim=1) for s in self.slots]

    def embeddings(self):
        return [m * v for m, v in zip(self.norms, self.params)]

    def extra_loss(self):
        # With AdamW the vMF prior enters as a loss term; SphericalSGD adds it itself.
        if self.cfg.direction_optimizer == "adamw" and self.cfg.kappa > 0:
            return -self.cfg.kappa * sum((m * v).sum() for m, v in zip(self.mu, self.params))
        return None

    def make_optimizer(self):
        if self.cfg.direction_optimizer == "adamw":
            return self._adamw(0.0)
        groups = [{"params": [v], "mu": mu} for v, mu in zip(self.params, self.mu)]
        return SphericalSGD(groups, lr=self.cfg.lr, kappa=self.cfg.kappa, beta=self.cfg.beta)

    @torch.no_grad()
    def after_step(self):
        if self.cfg.direction_optimizer == "adamw":
            for v in self.params:
                v.div_(v.norm(dim=1, keepdim=True))

    def metadata(self):
        return {"m_star": self.cfg.m_star, "m_star_values": self.norms, "kappa": self.cfg.kappa,
                "direction_optimizer": self.cfg.direction_optimizer}
