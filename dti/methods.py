"""The learned-embedding methods, one small class each, in a registry.

A method owns the trainable tensors (one ``[k, d]`` tensor per text encoder), turns
them into the embedding rows fed to the encoders, adds its own loss terms, and makes
its optimizer. The training loop only talks to this interface. A post-hoc method
(TI-rescaled) is made from another method's finished run instead of being trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import TrainConfig, parse_m_star
from .io import DTIError
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


def trained_methods() -> list[str]:
    """The methods that ``dti train`` runs (every registered method but the post-hoc ones)."""
    return sorted(name for name, cls in METHODS.items() if not cls.post_hoc)


def display_name(method: str) -> str:
    """A method's name for readers (TI-rescaled, not ti_rescaled); an unknown id comes back as it is."""
    return getattr(METHODS.get(method), "display_name", "") or method


def method_class(name: str, trained: bool = True) -> type["Method"]:
    choices = trained_methods() if trained else sorted(METHODS)
    if name not in choices:
        raise DTIError(f"unknown method {name!r}; choose one of {', '.join(choices)}")
    return METHODS[name]


class Method:
    """Base class of a method. A subclass sets ``name`` (its registry key), ``display_name`` (its name
    in figures and tables) and ``defaults`` (the configuration values it brings, e.g. its learning
    rate), and overrides what it changes:

    * ``initial_params()``: the starting ``[k, d]`` tensor per encoder (default: the initializer's rows);
    * ``embeddings()``: the rows fed to each encoder, differentiable in ``self.params``;
    * ``extra_loss()``: a term added to the diffusion loss, or None;
    * ``make_optimizer()`` and ``after_step()``: how ``self.params`` move;
    * ``metadata()`` (recorded in run.json) and ``file_metadata()`` (in the embedding files).

    A post-hoc method (``post_hoc = True``) is not trained: it transforms a finished run of
    ``source_method`` (``dti rescale``).
    """

    name = ""
    display_name = ""  # the name in figures and tables
    defaults: dict = {}
    post_hoc = False
    source_method: str | None = None

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

    def file_metadata(self) -> dict:
        return {"m_star": "", "kappa": ""}

    def prior_ratios(self, grads: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Per encoder and vector, the prior's pull against the data gradient's size (None: no prior)."""
        return None

    def _adamw(self, weight_decay: float, lr: float | None = None):
        cfg = self.cfg
        return torch.optim.AdamW(self.params, lr=cfg.lr if lr is None else lr,
                                 betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=weight_decay)


@register
class TextualInversion(Method):
    """TI: the embedding rows themselves, initialised at the initializer's rows, AdamW."""

    name = "ti"
    display_name = "TI"
    defaults = {"lr": 0.02}


@register
class CrossInit(Method):
    """CrossInit: start from the encoder's output at the initializer tokens; MSE pull to it."""

    name = "crossinit"
    display_name = "CrossInit"
    defaults = {"lr": 0.02}

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
    display_name = "DTI"
    defaults = {"lr": 0.04}

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
            return self._adamw(0.0, lr=self.cfg.adamw_lr)  # its own lr: RSGD's is an angle per step, AdamW's is not
        groups = [{"params": [v], "mu": mu} for v, mu in zip(self.params, self.mu)]
        return SphericalSGD(groups, lr=self.cfg.lr, kappa=self.cfg.kappa, beta=self.cfg.beta)

    @torch.no_grad()
    def after_step(self):
        if self.cfg.direction_optimizer == "adamw":
            for v in self.params:
                v.div_(v.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def prior_ratios(self, grads):
        """kappa / |dL/dv| per vector (|mu| = 1): the prior's share of a step before normalisation. kappa is
        absolute, so the same value is strong where data gradients are small and inert where they are large."""
        out = []
        for g, mu in zip(grads, self.mu):
            if self.cfg.direction_optimizer == "adamw" and self.cfg.kappa > 0:
                g = g + self.cfg.kappa * mu.to(g.device)  # that gradient holds the prior's loss term: take it out
            out.append(self.cfg.kappa / g.float().norm(dim=1).clamp_min(1e-30))
        return out

    def metadata(self):
        return {"m_star": self.cfg.m_star, "m_star_values": self.norms, "kappa": self.cfg.kappa,
                "direction_optimizer": self.cfg.direction_optimizer}

    def file_metadata(self):
        return {"m_star": self.cfg.m_star, "kappa": self.cfg.kappa}


@register
class TIRescaled(Method):
    """TI-rescaled: a finished TI run's vectors, each scaled to its encoder's vocabulary-norm
    statistic (``stat``: mean, min, max or a number). Post hoc: nothing is trained."""

    name = "ti_rescaled"
    display_name = "TI-rescaled"
    post_hoc = True
    source_method = "ti"

    @staticmethod
    def target_norms(vocab_norms: dict[str, dict], encoders: list[str], stat: str) -> list[float]:
        target = parse_m_star(stat)
        return [float(target) if isinstance(target, float) else vocab_norms[enc][target] for enc in encoders]

    @staticmethod
    def rescale(rows: list[torch.Tensor], norms: list[float]) -> list[torch.Tensor]:
        return [r * (m / r.norm(dim=1, keepdim=True)) for r, m in zip(rows, norms)]
