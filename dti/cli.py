"""Command line: ``python -m dti {train,rescale,data,sample,score,aggregate,tables}``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import TrainConfig
from .io import DTIError
from .methods import trained_methods
from .sample import SampleConfig


def _fields_help(cls) -> str:
    lines = ["keys for --set (None: the family's or method's default):"]
    for f in dataclasses.fields(cls):
        lines.append(f"  {f.name} (default {f.default}): {f.metadata['help']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dti", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="learn a concept's embedding", epilog=_fields_help(TrainConfig),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--model", required=True, help="base pipeline: hub id or local diffusers directory")
    train.add_argument("--method", required=True, choices=trained_methods(),
                       help=", ".join(trained_methods()))
    train.add_argument("--images", required=True, help="folder of the subject's reference images")
    train.add_argument("--placeholder", required=True, help="new token for the subject, e.g. <sks>")
    train.add_argument("--initializer", required=True, help="word(s) whose rows initialise the vectors")
    train.add_argument("--steps", type=int, help="optimisation steps (default: the family's protocol)")
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint (from step 0 if its base model or "
                            "photos changed since)")
    train.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                       help="override a configuration key (repeatable; keys listed below)")

    rescale = sub.add_parser("rescale", help="TI-rescaled: scale a TI run's vectors to a vocabulary-norm statistic")
    rescale.add_argument("--run", required=True, help="finished TI run directory")
    rescale.add_argument("--stat", default="mean", help="mean, min, max or a number (default mean)")
    rescale.add_argument("--out", required=True, help="directory to write the rescaled run to")

    d = sub.add_parser("data", help="fetch and check a benchmark's images")
    d.add_argument("dataset", choices=["dreambooth"], help="which benchmark")
    d.add_argument("--out", required=True, help="folder to create (checked and left as is if it exists)")
    d.add_argument("--from", dest="from_dir", help="an existing copy of the dataset/ folder (offline machines)")
    d.add_argument("--masks", help="reference masks, <subject>/<image stem>.png, copied to OUT/masks")
    d.add_argument("--subjects-file", help="subjects table (default: the DreamBooth benchmark's, in dti/resources)")

    s = sub.add_parser("sample", help="generate a run's images for a prompt set", epilog=_fields_help(SampleConfig),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--run", required=True, help="finished run directory (trained or rescaled)")
    s.add_argument("--out", required=True, help="folder for the images and manifest.csv")
    s.add_argument("--subject", required=True, help="subject name (looked up in the subjects table)")
    s.add_argument("--prompts", default="dti_simple", help="prompt set: dti_simple (default) or dreambooth")
    s.add_argument("--prompts-file", help="prompt sets JSON (default: dti/resources/dreambooth/prompt_sets.json)")
    s.add_argument("--subjects-file", help="subjects table CSV (default: dti/resources/dreambooth/subjects.csv)")
    s.add_argument("--class-column", default="dti_class", help="subjects-table column with the scoring class noun")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds (default 0 1 2 3)")
    s.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sampling setting (keys listed below)")

    c = sub.add_parser("score", help="score generated images against the subject's references")
    c.add_argument("--manifest", required=True, help="manifest.csv written by `dti sample`")
    c.add_argument("--references", required=True, help="folder with one sub-folder of reference images per subject")
    c.add_argument("--out", required=True, help="CSV of per-image scores to write")
    c.add_argument("--protocol", default="paper",
                   help="paper (DINOv2, SigLIP), dreambooth (DINO, CLIP-I, CLIP-T, SigLIP cosine) or a plugin's, "
                        "such as mini (the mini world's evaluator CLIP and attribute read-out)")
    c.add_argument("--metrics", help="comma-separated metric names instead of a protocol")
    c.add_argument("--model-id", action="append", default=[], metavar="BACKBONE=ID",
                   help="hub id or local path of a backbone (dinov2, dino, clip, siglip; the mini world's mini and "
                        "readout, which have no default); repeatable")
    c.add_argument("--masks", help="reference masks, <subject>/<image stem>.png (default: unmasked)")
    c.add_argument("--prompt-sets", help="attribute metrics: prompt_sets.json with each prompt's attributes")
    c.add_argument("--subjects", help="attribute metrics: subjects.csv with each subject's class, colour, pattern")
    c.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    c.add_argument("--batch-size", type=int, default=16, help="images per backbone batch")

    a = sub.add_parser("aggregate", help="per-subject and summary tables from per-image scores")
    a.add_argument("--scores", nargs="+", required=True, help="CSV files written by `dti score`")
    a.add_argument("--out", required=True, help="folder for per_subject.csv, summary.csv, summary.md")
    a.add_argument("--subjects-file",
                   help="subjects expected (a missing one makes the mean NaN); default: those present")
    a.add_argument("--subject-names", nargs="+", help="subjects expected, by name (instead of --subjects-file)")

    tables = sub.add_parser("tables", help="the main or ablation table (CSV, Markdown, LaTeX) from summaries")
    tables.add_argument("kind", choices=["main", "ablation"])
    tables.add_argument("--summary", required=True,
                        help="summary.csv of the main methods (for the ablation: its DTI row is the default cell)")
    tables.add_argument("--cell", action="append", default=[], metavar="LABEL=SUMMARY",
                        help="ablation: one cell's summary.csv")
    tables.add_argument("--default-cell", default="rsgd, m*=mean, kappa=0.0001",
                        help="ablation: label of the default DTI row")
    tables.add_argument("--image-metric", required=True)
    tables.add_argument("--text-metric", required=True)
    tables.add_argument("--model-label", default="", help="main: the model's name in the table")
    tables.add_argument("--paper",
                        help="model key of the paper's reported numbers to print beside ours (sdxl, sana_1.6b, ...)")
    tables.add_argument("--preset", help="the workflow preset the runs used (named in the tables; the Markdown "
                                         "warns when the paper's numbers came from another)")
    tables.add_argument("--out", required=True, help="folder for NAME.csv, NAME.md, NAME.tex")
    return parser


def _train(args):
    from .train import train

    cfg = TrainConfig(method=args.method, model=args.model, images=args.images, placeholder=args.placeholder,
                      initializer=args.initializer, steps=args.steps, seed=args.seed).set(args.assignments)
    return train(cfg, args.out, resume=args.resume)


def _rescale(args):
    from .embeddings import rescale

    return rescale(args.run, args.out, args.stat)


def _data(args):
    from .data import fetch_dreambooth

    return fetch_dreambooth(args.out, args.from_dir, args.masks, args.subjects_file)


def _sample(args):
    from .data import read_prompt_set, read_subjects
    from .sample import sample

    cfg = SampleConfig().set(args.assignments)
    rows = {r["subject"]: r for r in read_subjects(args.subjects_file)}
    if args.subject not in rows:
        raise DTIError(f"subject {args.subject!r} is not in the subjects table")
    subject = rows[args.subject]
    if args.class_column not in subject:
        raise DTIError(f"the subjects table has no column {args.class_column!r}")
    templates = read_prompt_set(args.prompts, subject["live"], args.prompts_file)
    return sample(args.run, args.out, args.subject, subject[args.class_column], templates, args.seeds,
                  args.prompts, cfg)


def _score(args):
    from .devices import resolve_device
    from .io import exclusive
    from .metrics import (PROTOCOLS, check_inputs, check_scores_out, expectations_for, parse_model_ids, score_inputs,
                          write_scores)

    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    elif args.protocol in PROTOCOLS:
        metrics = PROTOCOLS[args.protocol]
    else:
        raise DTIError(f"unknown protocol {args.protocol!r}; choose one of {', '.join(sorted(PROTOCOLS))}")
    model_ids = parse_model_ids(args.model_id)
    if bool(args.prompt_sets) != bool(args.subjects):
        raise DTIError("--prompt-sets and --subjects go together")
    out = check_scores_out(args.out)  # a bad --out must fail now, not after all the scoring
    device = str(resolve_device(args.device))
    expectations = expectations_for(metrics, args.prompt_sets, args.subjects) if args.prompt_sets else None
    inputs = check_inputs(args.manifest, args.references, metrics, model_ids, args.masks, expectations)
    # two scorers of one file must not interleave their CSV and JSON; the lock file stays (removing it would race)
    with exclusive(f"{out}.lock", f"scores {out}"):
        scores = score_inputs(inputs, device, args.batch_size)
        write_scores(scores, out, {"manifest": args.manifest, "references": args.references, "metrics": metrics,
                                   "masks": args.masks})
    return args.out


def _aggregate(args):
    from .aggregate import read_scores, write_tables
    from .data import read_subjects

    subjects = [r["subject"] for r in read_subjects(args.subjects_file)] if args.subjects_file else None
    if args.subject_names:
        subjects = list(args.subject_names)
    return write_tables(read_scores(args.scores), args.out, subjects)


def _tables(args):
    from . import tables

    if args.kind == "main":
        tables.main_table(args.summary, args.out, args.image_metric, args.text_metric, args.model_label, args.paper,
                          args.preset)
        return args.out
    cells = {}
    for item in args.cell:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            raise DTIError(f"--cell expects LABEL=SUMMARY, got {item!r}")
        cells[label] = path
    tables.ablation_table(cells, args.summary, args.out, args.image_metric, args.text_metric, args.default_cell,
                          args.paper, args.preset)
    return args.out


COMMANDS = {"train": _train, "rescale": _rescale, "data": _data, "sample": _sample, "score": _score,
            "aggregate": _aggregate, "tables": _tables}


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
        result = COMMANDS[args.command](args)
    except DTIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result)
    return 0
