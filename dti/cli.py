"""Command line: ``python -m dti train`` and ``python -m dti rescale``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import TrainConfig
from .io import DTIError
from .methods import METHODS


def _config_help() -> str:
    lines = ["keys for --set (None: the family's or method's default):"]
    for f in dataclasses.fields(TrainConfig):
        lines.append(f"  {f.name} (default {f.default}): {f.metadata['help']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dti", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="learn a concept's embedding", epilog=_config_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", required=True, help="base pipeline: hub id or local diffusers directory")
    t.add_argument("--method", required=True, choices=sorted(METHODS), help="ti, crossinit or dti")
    t.add_argument("--images", required=True, help="folder of the subject's reference images")
    t.add_argument("--placeholder", required=True, help="new token for the subject, e.g. <sks>")
    t.add_argument("--initializer", required=True, help="word(s) whose rows initialise the vectors")
    t.add_argument("--steps", type=int, help="optimisation steps (default: the family's protocol)")
    t.add_argument("--out", required=True, help="run directory to write")
    t.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key (repeatable; keys listed below)")

    r = sub.add_parser("rescale", help="TI-rescaled: scale a TI run's vectors to a vocabulary-norm statistic")
    r.add_argument("--run", required=True, help="finished TI run directory")
    r.add_argument("--stat", default="mean", help="mean, min, max or a number (default mean)")
    r.add_argument("--out", required=True, help="directory to write the rescaled run to")
    return parser


def _quiet_loaders():
    """Model loading draws progress bars per component; keep the output to our own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_loaders()
    try:
        if args.command == "train":
            from .train import train

            cfg = TrainConfig(method=args.method, model=args.model, images=args.images,
                              placeholder=args.placeholder, initializer=args.initializer,
                              steps=args.steps, seed=args.seed).set(args.assignments)
            run = train(cfg, args.out, resume=args.resume)
        else:
            from .embeddings import rescale

            run = rescale(args.run, args.out, args.stat)
    except DTIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run)
    return 0
