"""Directional Textual Inversion and its baselines (TI, TI-rescaled, CrossInit) for diffusers pipelines."""

from .config import TrainConfig
from .embeddings import Concept, load_embeddings, rescale
from .io import DTIError
from .methods import METHODS
from .optim import SphericalSGD
from .train import train

__all__ = ["Concept", "DTIError", "METHODS", "SphericalSGD", "TrainConfig", "load_embeddings", "rescale", "train"]
__version__ = "0.1.0"
