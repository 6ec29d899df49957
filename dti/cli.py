"""Command line: python -m dti COMMAND (train, rescale, data, sample, generate, export, inspect, score,
aggregate, tables, claims); python -m dti COMMAND --help for each."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import textwrap
from importlib import metadata
from typing import Callable, NamedTuple

from .config import TrainConfig
from .io import DTIError
from .methods import trained_methods
from .sample import SampleConfig


def _plain(text: str) -> str:
    """Help text for a terminal: the reST literal markup of the docstrings and field helps dropped."""
    return text.replace("``", "").replace("`", "")


def _version() -> str:
    try:
        return metadata.version("dti")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _epilog(parser: argparse.ArgumentParser, example: str, cls=None) -> str:
    """A usage example and, for a command with --set, the keys it takes that no flag of its own sets."""
    lines = ["example:", *(f"  {line}" for line in example.splitlines())]
    if cls is not None:
        flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
        fields = dataclasses.fields(cls)
        lines += ["", "keys for --set KEY=VALUE (a default of None is filled in by the model family's protocol or "
                      "the method):"]
        for f in fields:
            if f.name not in flags:
                lines += textwrap.wrap(f"{f.name} (default {f.default}): {_plain(f.metadata['help'])}", width=100,
                                       initial_indent="  ", subsequent_indent="      ")
        own = ", ".join(f"{f.name} ({flags[f.name]})" for f in fields if f.name in flags)
        if own:
            lines += textwrap.wrap(f"also keys, set by their own flags above: {own}", width=100, initial_indent="  ",
                                   subsequent_indent="      ")
    return "\n".join(lines)


def _prompt_sets_help() -> str:
    from .data import BENCHMARK
    from .io import read_json

    names = sorted(k for k in read_json(BENCHMARK.joinpath("prompt_sets.json")) if not k.startswith("_"))
    return (f"prompt set of --prompts-file: {', '.join(names)} in the default file (default dti_simple); mini in "
            "the mini world's (experiments/mini/world/prompt_sets.json)")


def _protocols() -> list[str]:
    from .metrics import PROTOCOLS  # loads the score plugins, which add theirs (the mini world's mini)

    return sorted(PROTOCOLS)


# What a --run object of `dti train` may set: the per-run flags, and "set" (a list of KEY=VALUE).
RUN_KEYS = ("out", "method", "images", "placeholder", "initializer", "seed", "steps", "set")


def _add_train(p):
    p.add_argument("--model", required=True, help="base pipeline: hub id or local diffusers directory")
    p.add_argument("--revision", help="hub id only: the model's branch, tag or commit (default: main)")
    p.add_argument("--method", choices=trained_methods(), help=", ".join(trained_methods()))
    p.add_argument("--images", help="folder of the subject's reference images")
    p.add_argument("--placeholder", help="new token for the subject, e.g. <sks>")
    p.add_argument("--initializer", help="word(s) whose rows initialise the vectors")
    p.add_argument("--steps", type=int, help="optimisation steps (default: the family's protocol)")
    p.add_argument("--out", help="run directory to write")
    p.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (from step 0 if its base model or "
                        "photos changed since)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key (repeatable; keys listed below)")
    p.add_argument("--run", dest="runs", action="append", default=[], metavar="JSON",
                   help="one run of a group (repeatable): a JSON object with out and any of method, images, "
                        "placeholder, initializer, seed, steps and set (a list of KEY=VALUE, after the shared "
                        "--set); the flags above give every run's defaults. The group loads the model once and "
                        "trains its runs together, one batched pass per step; each run writes the folder it "
                        "would write alone")


def _add_rescale(p):
    p.add_argument("--run", required=True, action="append",
                   help="finished TI run directory (repeatable, each with its own --out, in order)")
    p.add_argument("--stat", default="mean", help="mean, min, max or a number (default mean)")
    p.add_argument("--out", required=True, action="append", help="directory to write the rescaled run to")


def _add_data(p):
    p.add_argument("dataset", choices=["dreambooth"], help="which benchmark: dreambooth")
    p.add_argument("--out", required=True, help="folder to create (checked and left as is if it exists)")
    p.add_argument("--from", dest="from_dir", help="an existing copy of the dataset/ folder (offline machines)")
    p.add_argument("--masks", help="reference masks, <subject>/<image stem>.png, copied to OUT/masks")
    p.add_argument("--subjects-file", help="subjects table (default: the DreamBooth benchmark's, in dti/resources)")


def _add_sample(p):
    p.add_argument("--run", help="finished run directory (trained or rescaled)")
    p.add_argument("--out", help="folder for the images and manifest.csv")
    p.add_argument("--subject", help="subject name (looked up in the subjects table)")
    p.add_argument("--job", dest="jobs", action="append", default=[], metavar="JSON",
                   help="one run of a group (repeatable), instead of --run, --out and --subject: a JSON object "
                        "with run, out and subject. The pipeline loads once for the group; each run's images "
                        "are those it gets alone")
    p.add_argument("--prompts", default="dti_simple", help=_prompt_sets_help())
    p.add_argument("--prompts-file", help="prompt sets JSON (default: dti/resources/dreambooth/prompt_sets.json)")
    p.add_argument("--subjects-file", help="subjects table CSV (default: dti/resources/dreambooth/subjects.csv)")
    p.add_argument("--class-column", default="dti_class", help="subjects-table column with the scoring class noun")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds (default 0 1 2 3)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sampling setting (keys listed below)")


def _add_generate(p):
    p.add_argument("prompt", help="the prompt, with {} where the concept goes")
    p.add_argument("--run", required=True, help="finished run directory (trained or rescaled)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i has seed + i (default 0)")
    p.add_argument("--num-images", type=int, default=1, help="images to draw (default 1)")
    p.add_argument("--out", default=".",
                   help="a .png file (one image) or a folder for PROMPT_seedS.png (default: the current folder); "
                        "each image gets a .json beside it")
    p.add_argument("--steps", type=int, help="denoising steps (default: the family's protocol)")
    p.add_argument("--guidance", dest="guidance_scale", type=float,
                   help="classifier-free guidance scale (default: the family's protocol)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override another sampling setting (keys listed below)")


def _add_export(p):
    from .export import FORMATS

    p.add_argument("--run", required=True, help="finished SD or SDXL run directory (trained or rescaled)")
    p.add_argument("--name", required=True,
                   help="trigger word and file name (letters, digits, '.', '_', '-'); pick one that is not a word "
                        "of the vocabulary")
    p.add_argument("--format", default="a1111", choices=sorted(FORMATS),
                   help="a1111: one TRIGGER.safetensors for AUTOMATIC1111 and ComfyUI (default); diffusers: the "
                        "file(s) pipe.load_textual_inversion reads (SDXL: TRIGGER.safetensors, TRIGGER_2.safetensors)")
    p.add_argument("--out", default=".", help="folder to write to (default: the current folder)")


def _add_inspect(p):
    p.add_argument("run", help="finished run directory (trained or rescaled)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_score(p):
    p.add_argument("--manifest", required=True, action="append",
                   help="manifest.csv written by dti sample (repeatable, each with its own --out, in order: the "
                        "models load once for all)")
    p.add_argument("--references", required=True, help="folder with one sub-folder of reference images per subject")
    p.add_argument("--out", required=True, action="append",
                   help="CSV of per-image scores to write (one per --manifest)")
    p.add_argument("--protocol", default="paper", choices=_protocols(),
                   help="paper (DINOv2, SigLIP; default), dreambooth (DINO, CLIP-I, CLIP-T, SigLIP cosine) or a "
                        "plugin's, such as mini (the mini world's evaluator CLIP and attribute read-out)")
    p.add_argument("--metrics", help="comma-separated metric names instead of a protocol")
    p.add_argument("--model-id", action="append", default=[], metavar="BACKBONE=ID",
                   help="hub id or local path of a backbone (dinov2, dino, clip, siglip; the mini world's mini and "
                        "readout, which have no default); repeatable")
    p.add_argument("--masks", help="reference masks, <subject>/<image stem>.png (default: unmasked)")
    p.add_argument("--prompt-sets", help="attribute metrics: prompt_sets.json with each prompt's attributes")
    p.add_argument("--subjects", help="attribute metrics: subjects.csv with each subject's class, colour, pattern")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=16, help="images per backbone batch")


def _add_aggregate(p):
    p.add_argument("--scores", nargs="+", required=True, help="CSV files written by dti score")
    p.add_argument("--out", required=True, help="folder for per_subject.csv, summary.csv, summary.md")
    p.add_argument("--subjects-file",
                   help="subjects expected (a missing one makes the mean NaN); default: those present")
    p.add_argument("--subject-names", nargs="+", help="subjects expected, by name (instead of --subjects-file)")
    p.add_argument("--paired-against", metavar="METHOD",
                   help="also paired.csv: METHOD minus each other method per metric, with BCa intervals over subjects")


def _add_tables(p):
    p.add_argument("kind", choices=["main", "ablation"], help="main or ablation")
    p.add_argument("--summary", required=True,
                   help="summary.csv of the main methods (for the ablation: its DTI row is the default cell)")
    p.add_argument("--cell", action="append", default=[], metavar="LABEL=SUMMARY",
                   help="ablation: one cell's summary.csv")
    p.add_argument("--default-cell", help="ablation: label of the default DTI row (default: from --default-runs)")
    p.add_argument("--default-runs", nargs="+", default=[], metavar="RUN",
                   help="ablation: the DTI run folders behind the default row, whose recorded settings label it")
    p.add_argument("--image-metric", required=True, help="metric of the image-fidelity column, e.g. dinov2")
    p.add_argument("--text-metric", required=True, help="metric of the text-fidelity column, e.g. siglip")
    p.add_argument("--extra-metric", action="append", default=[], metavar="METRIC",
                   help="main: a further column after text, e.g. attr_prompt (repeatable)")
    p.add_argument("--model-label", default="", help="main: the model's name in the table")
    p.add_argument("--paper",
                   help="model key of the paper's reported numbers to print beside ours (sdxl, sana_1.6b, ...)")
    p.add_argument("--preset", help="the workflow preset the runs used (named in the tables; the Markdown warns when "
                                    "the paper's numbers came from another)")
    p.add_argument("--out", required=True, help="folder for NAME.csv, NAME.md, NAME.tex")


def _json_object(text: str, flag: str) -> dict:
    """The JSON object a repeatable option (--run, --job) was given, or a one-line error naming it."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DTIError(f"{flag} {text[:60]!r}: not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise DTIError(f"{flag} {text[:60]!r}: not a JSON object")
    return value


def _run_options(args) -> list[dict]:
    """Each run's own values: one per --run, or the flags alone; every required one present."""

    shared = {"out": args.out, "method": args.method, "images": args.images, "placeholder": args.placeholder,
              "initializer": args.initializer, "seed": args.seed, "steps": args.steps, "set": []}
    if not args.runs:
        runs = [shared]
    else:
        runs = []
        for text in args.runs:
            own = _json_object(text, "--run")
            unknown = sorted(set(own) - set(RUN_KEYS))
            if unknown:
                raise DTIError(f"--run: unknown key {unknown[0]!r}; valid: {', '.join(RUN_KEYS)}")
            if not isinstance(own.get("set", []), list):
                raise DTIError("--run: set must be a list of KEY=VALUE strings")
            runs.append({**shared, **own})
    for i, run in enumerate(runs, 1):
        missing = [k for k in ("method", "images", "placeholder", "initializer", "out") if not run.get(k)]
        if missing:
            where = f"run {i} (--run)" if args.runs else "the command"
            raise DTIError(f"{where} has no {', '.join(missing)}: give --{missing[0]}" +
                           (" or put it in the --run object" if args.runs else ""))
    return runs


def _train(args):
    from .train import train_group

    cfgs, outs = [], []
    for run in _run_options(args):
        cfgs.append(TrainConfig(method=run["method"], model=args.model, images=run["images"],
                                placeholder=run["placeholder"], initializer=run["initializer"], steps=run["steps"],
                                seed=run["seed"], revision=args.revision).set(args.assignments + list(run["set"])))
        outs.append(run["out"])
    return "\n".join(str(out) for out in train_group(cfgs, outs, resume=args.resume))


def _rescale(args):
    from .embeddings import rescale_group

    if len(args.run) != len(args.out):
        raise DTIError(f"{len(args.run)} --run for {len(args.out)} --out: give one --out per run")
    return "\n".join(str(out) for out in rescale_group(list(zip(args.run, args.out)), args.stat))


def _data(args):
    from .data import fetch_dreambooth

    return fetch_dreambooth(args.out, args.from_dir, args.masks, args.subjects_file)


def _sample_jobs(args) -> list[dict]:
    """Each run's run, out and subject: one per --job, or the flags."""

    if not args.jobs:
        missing = [flag for flag in ("run", "out", "subject") if not getattr(args, flag)]
        if missing:
            raise DTIError(f"give --{missing[0]} (or --job objects)")
        return [{"run": args.run, "out": args.out, "subject": args.subject}]
    if args.run or args.out or args.subject:
        raise DTIError("--job gives each run's run, out and subject: leave --run, --out and --subject out")
    jobs = []
    for text in args.jobs:
        job = _json_object(text, "--job")
        if sorted(job) != ["out", "run", "subject"]:
            raise DTIError(f"--job {text[:60]!r}: must be an object with exactly run, out and subject")
        jobs.append(job)
    return jobs


def _sample(args):
    from pathlib import Path

    from .data import read_prompt_set, read_subjects
    from .sample import SampleJob, sample_group

    cfg = SampleConfig().set(args.assignments)
    rows = {r["subject"]: r for r in read_subjects(args.subjects_file)}
    jobs = []
    for job in _sample_jobs(args):
        if job["subject"] not in rows:
            raise DTIError(f"subject {job['subject']!r} is not in the subjects table")
        subject = rows[job["subject"]]
        if args.class_column not in subject:
            raise DTIError(f"the subjects table has no column {args.class_column!r}")
        templates = read_prompt_set(args.prompts, subject["live"], args.prompts_file)
        jobs.append(SampleJob(Path(job["run"]), Path(job["out"]), job["subject"], subject[args.class_column],
                              templates))
    return "\n".join(str(m) for m in sample_group(jobs, args.seeds, args.prompts, cfg))


def _generate(args):
    from .generate import generate

    cfg = SampleConfig(steps=args.steps, guidance_scale=args.guidance_scale, device=args.device).set(args.assignments)
    return "\n".join(str(f) for f in generate(args.run, args.prompt, args.out, args.seed, args.num_images, cfg))


def _export(args):
    from .export import export

    return "\n".join(str(f) for f in export(args.run, args.name, args.format, args.out))


def _inspect(args):
    from .inspection import inspect_text

    return inspect_text(args.run, args.json)


def _score(args):
    from .devices import resolve_device
    from .io import exclusive
    from .metrics import (PROTOCOLS, Backbones, check_inputs, check_scores_out, expectations_for, parse_model_ids,
                          score_inputs, write_scores)

    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    elif args.protocol in PROTOCOLS:
        metrics = PROTOCOLS[args.protocol]
    else:
        raise DTIError(f"unknown protocol {args.protocol!r}; choose one of {', '.join(sorted(PROTOCOLS))}")
    model_ids = parse_model_ids(args.model_id)
    if bool(args.prompt_sets) != bool(args.subjects):
        raise DTIError("--prompt-sets and --subjects go together")
    if len(args.manifest) != len(args.out):
        raise DTIError(f"{len(args.manifest)} --manifest for {len(args.out)} --out: give one --out per manifest")
    if len(set(args.out)) != len(args.out):
        raise DTIError("two manifests have the same --out")
    outs = [check_scores_out(out) for out in args.out]  # a bad --out must fail now, not after all the scoring
    device = str(resolve_device(args.device))
    expectations = expectations_for(metrics, args.prompt_sets, args.subjects) if args.prompt_sets else None
    inputs = [check_inputs(m, args.references, metrics, model_ids, args.masks, expectations) for m in args.manifest]
    with contextlib.ExitStack() as locks:
        # two scorers of one file must not interleave their CSV and JSON; the lock file stays (removing it would race)
        for out in outs:  # all taken before any model loads
            locks.enter_context(exclusive(f"{out}.lock", f"scores {out}"))
        backbones = Backbones(metrics, model_ids=model_ids, device=device, batch_size=args.batch_size)  # once for all
        for manifest, checked, out in zip(args.manifest, inputs, outs):
            scores = score_inputs(checked, device, args.batch_size, backbones)
            write_scores(scores, out, {"manifest": manifest, "references": args.references, "metrics": metrics,
                                       "masks": args.masks})
    return "\n".join(args.out)


def _aggregate(args):
    from .aggregate import read_scores, write_tables
    from .data import read_subjects

    subjects = [r["subject"] for r in read_subjects(args.subjects_file)] if args.subjects_file else None
    if args.subject_names:
        subjects = list(args.subject_names)
    return write_tables(read_scores(args.scores), args.out, subjects, paired_against=args.paired_against)


def _tables(args):
    from . import tables

    if args.kind == "main":
        tables.main_table(args.summary, args.out, args.image_metric, args.text_metric, args.model_label, args.paper,
                          args.preset, tuple(args.extra_metric))
        return args.out
    cells = {}
    for item in args.cell:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            raise DTIError(f"--cell expects LABEL=SUMMARY, got {item!r}")
        cells[label] = path
    if not args.default_cell and not args.default_runs:
        raise DTIError("the ablation table needs --default-cell or --default-runs (the default DTI row's label)")
    tables.ablation_table(cells, args.summary, args.out, args.image_metric, args.text_metric, args.default_cell,
                          args.paper, args.preset, default_runs=args.default_runs)
    return args.out


def _add_claims(p):
    p.add_argument("--results", required=True, help="a configuration's results folder (its tables/ and ablation/)")
    p.add_argument("--out", help="folder for claims.csv and claims.md (default: RESULTS/tables)")
    p.add_argument("--paper", default="sdxl",
                   help="model key of the paper's numbers to print beside each effect (default sdxl; empty: none)")
    p.add_argument("--image-metric", help="image-fidelity metric (default: the protocol's, from the main scores)")
    p.add_argument("--text-metric", help="text-fidelity metric (default: the protocol's, from the main scores)")


def _claims(args):
    from .claims import write_claims

    return write_claims(args.results, args.out, args.paper or None, args.image_metric, args.text_metric)


class Command(NamedTuple):
    help: str
    example: str
    add: Callable  # adds the command's arguments to its parser
    run: Callable  # the parsed arguments -> what to print
    keys: type | None = None  # the dataclass whose fields --set takes
    loads_models: bool = False  # only these import diffusers and transformers


COMMANDS = {
    "train": Command("learn a concept's embedding",
                     "python -m dti train --model stabilityai/stable-diffusion-xl-base-1.0 --method dti \\\n"
                     '    --images photos/dog --placeholder "<dog>" --initializer dog --out runs/dog_dti',
                     _add_train, _train, TrainConfig, True),
    "rescale": Command("TI-rescaled: scale a TI run's vectors to a vocabulary-norm statistic",
                       "python -m dti rescale --run runs/dog_ti --stat mean --out runs/dog_ti_rescaled",
                       _add_rescale, _rescale),
    "data": Command("fetch and check a benchmark's images", "python -m dti data dreambooth --out data/dreambooth",
                    _add_data, _data),
    "sample": Command("generate a run's images for a prompt set",
                      "python -m dti sample --run runs/dog_dti --subject dog --prompts dti_simple --out samples/dog",
                      _add_sample, _sample, SampleConfig, True),
    "generate": Command("draw a run's concept from one prompt of your own",
                        'python -m dti generate --run runs/dog_dti "a photo of {} on the beach" --seed 7 --out b.png',
                        _add_generate, _generate, SampleConfig, True),
    "export": Command("write a run's concept for AUTOMATIC1111, ComfyUI or diffusers under a trigger word",
                      "python -m dti export --run runs/dog_dti --name my_dog --out embeddings/\n"
                      "(then, in AUTOMATIC1111 or ComfyUI: a photo of my_dog on the beach)", _add_export, _export),
    "inspect": Command("a run's vectors: norm against the vocabulary's, nearest words, angle to the initializer",
                       "python -m dti inspect runs/dog_dti --json", _add_inspect, _inspect, loads_models=True),
    "score": Command("score generated images against the subject's references",
                     "python -m dti score --manifest samples/dog_dti/manifest.csv --references data/dreambooth \\\n"
                     "    --protocol paper --out scores/dog_dti.csv", _add_score, _score, loads_models=True),
    "aggregate": Command("per-subject and summary tables from per-image scores",
                         "python -m dti aggregate --scores scores/*.csv --out tables/ \\\n"
                         "    --subjects-file dti/resources/dreambooth/subjects.csv", _add_aggregate, _aggregate),
    "tables": Command("the main or ablation table (CSV, Markdown, LaTeX) from summaries",
                      "python -m dti tables main --summary tables/summary.csv --image-metric dinov2 \\\n"
                      "    --text-metric siglip --model-label SDXL --paper sdxl --out tables/", _add_tables, _tables),
    "claims": Command("the claims table: each claim of the paper this run can test, its effect and a verdict",
                      "python -m dti claims --results results/mini", _add_claims, _claims),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dti", description=_plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help[:1].upper() + command.help[1:] + ".",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add(p)
        p.epilog = _epilog(p, command.example, command.keys)  # after the flags: it names the keys they set
    return parser


def _quiet_loaders():
    """Model loading draws progress bars per component; keep the output to our own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    if command.loads_models:
        _quiet_loaders()
    try:
        result = command.run(args)
    except DTIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result)
    return 0
