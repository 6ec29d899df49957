"""What figures call things: methods by their display names, text encoders by the model they are,
and one colour, marker and line style per method, so that a method looks the same in every figure."""

from __future__ import annotations

from dti.methods import display_name
from dti.tables import METHOD_ORDER

# (family, pipeline component, width) -> the encoder's name; width None: any width. A run's
# run.json names its family, and the width is its learned vectors' (or the embedding table's).
ENCODERS = {
    ("sd", "text_encoder", 64): "mini-world CLIP",
    ("sd", "text_encoder", 768): "CLIP ViT-L",
    ("sd", "text_encoder", 1024): "OpenCLIP ViT-H",
    ("sdxl", "text_encoder", 768): "CLIP ViT-L",
    ("sdxl", "text_encoder_2", 1280): "OpenCLIP bigG",
    ("sana", "text_encoder", None): "Gemma-2",
}

STYLES = {  # colour, marker, line style
    "ti": ("tab:red", "o", "-"),
    "ti_rescaled": ("tab:purple", "v", "--"),
    "crossinit": ("tab:orange", "s", "-."),
    "dti": ("tab:blue", "*", "-"),
}
OTHER = ("tab:gray", "D", ":")


def method_label(method: str) -> str:
    return display_name(method)


def colour(method: str) -> str:
    return STYLES.get(method, OTHER)[0]


def marker(method: str) -> str:
    return STYLES.get(method, OTHER)[1]


def linestyle(method: str) -> str:
    return STYLES.get(method, OTHER)[2]


def method_order(methods) -> list[str]:
    """The paper's order (TI, TI-rescaled, CrossInit, DTI), then any other method in the order given."""
    methods = list(dict.fromkeys(methods))
    return [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]


def encoder_label(family: str | None, name: str, width: int | None) -> str:
    """``text_encoder_2`` of SDXL (width 1280) -> ``OpenCLIP bigG``; an encoder not known here is named by
    its component and width (``text encoder 2 (width 32)``)."""
    for key in ((family, name, width), (family, name, None)):
        if key in ENCODERS:
            return ENCODERS[key]
    return f"{name.replace('_', ' ')} (width {width})" if width else name.replace("_", " ")
