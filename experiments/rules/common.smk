# Shared names: paths, the subjects table, and how many torch threads a job may use.
import os
import re
import sys

import pandas as pd
from snakemake.utils import Paramspace

from dti.data import read_subjects
from dti.methods import METHODS as METHOD_REGISTRY

PY = sys.executable  # the interpreter that runs Snakemake, so the installed dti is used
# DreamBooth worlds: `--config protocol=dreambooth` switches to the classic benchmark (25 prompts,
# DINO / CLIP-I / CLIP-T), with its own results folder.
PROTOCOL = config.get("protocol", "paper")
if config["world"] == "dreambooth" and PROTOCOL == "dreambooth":
    config["data"]["prompt_set"], config["score"]["protocol"] = "dreambooth", "dreambooth"
    config["paper_numbers"] = None
OUT = f"{config['results_dir']}/{config['name']}" + ("_dreambooth" if PROTOCOL == "dreambooth" else "")
DATA = config["data"]
TABLE = {row["subject"]: row for row in read_subjects(DATA["subjects_file"])}
SUBJECTS = config.get("subjects") or list(TABLE)
for _s in (SUBJECTS + config.get("ablation", {}).get("subjects", [])
           + config.get("analyses", {}).get("interpolation", [])):
    if _s not in TABLE:
        raise ValueError(f"subject {_s!r} is not in {DATA['subjects_file']}")
METHODS = config["methods"]
# Post-hoc methods (TI-rescaled) come with the method they are made from.
ALL_METHODS = METHODS + [name for name, cls in METHOD_REGISTRY.items() if cls.post_hoc and cls.source_method in METHODS]
SEEDS = config["seeds"]
SAMPLE_SEEDS = " ".join(str(s) for s in config["sample"]["seeds"])
WORLD_FILES = [DATA["subjects_file"], DATA["prompts_file"]]


def settings(values: dict) -> str:
    """``--set key=value`` for each entry, sorted (so the command line, and reruns, are stable)."""
    return " ".join(f"--set {k}={v}" for k, v in sorted((values or {}).items()))


def resources(stage: str) -> dict:
    return config["resources"].get(stage, {})


CPUS = os.cpu_count() or 1
try:
    CORES = workflow.cores if workflow.local_exec else CPUS  # a cluster job gets its own CPUs
except Exception:  # no --cores given (a dry run, or a cluster executor)
    CORES = CPUS


def threads(stage: str) -> int:
    """Cores a job asks Snakemake for. With --cores above the machine's CPU count (--cores 8 on
    a 2-core laptop) a job asks for more, so that fewer run at once, and torch_env gives it its
    share of the real CPUs: running jobs never oversubscribe the machine."""
    return max(resources(stage).get("threads", 1), CORES // CPUS)


def torch_env(stage: str) -> str:
    n = threads(stage)
    if CORES > CPUS:
        n = max(1, n * CPUS // CORES)
    return f"OMP_NUM_THREADS={n} MKL_NUM_THREADS={n}"


def job_resources(stage: str) -> dict:
    r = resources(stage)
    return {"gpu": r.get("gpu", 0), "mem_mb": r.get("mem_mb", 4000), "runtime": r.get("runtime", 60)}


def gpu_wrap(stage: str) -> str:
    """Jobs that need a GPU take a free one (python -m dti.gpu); Snakemake itself does not assign them."""
    return f"{PY} -m dti.gpu --" if resources(stage).get("gpu", 0) else ""


def trained_methods_regex() -> str:
    """The methods `dti train` runs, as a wildcard constraint (TI-rescaled comes from rule rescale)."""
    from dti.methods import trained_methods

    return "|".join(re.escape(name) for name in trained_methods())


def run_dir(method, subject, seed, prefix=OUT):
    """A run's folder under ``prefix`` (the main table's results, or one ablation cell's)."""
    return f"{prefix}/runs/{method}/{subject}/seed{seed}"


def run_embeds(method, subject, seed, prefix=OUT):
    """A run's first embedding file: the one output that stands for the whole run folder."""
    return f"{run_dir(method, subject, seed, prefix)}/learned_embeds.safetensors"


# Snakemake reruns a job whose shell template or params changed since it ran. Params count by value,
# and only those that are not computed from input or output (a `lambda wildcards, output` param
# does not count, a `lambda wildcards` one does): keep templates, values and argument lists as
# they are, or every finished job of the rule runs again.

# `dti train` of one run, for the main runs (rule train) and the ablation cells (train_ablation):
# the rule gives it an `images` input and a log.
def train_command(method: str) -> str:
    """``method``: a method's name, or "{wildcards.method}" for the rule's wildcard."""
    return ("{params.env} {params.gpu} {PY} -m dti train --model {config[model]} --method " + method
            + " --images {input.images}/{wildcards.subject} --placeholder '<{wildcards.subject}>'"
            " --initializer '{params.initializer}' --seed {wildcards.seed} --out {params.run} --resume"
            " {params.settings} > {log} 2>&1")


def train_params(run, settings) -> dict:
    """The params train_command reads. ``run``: the run folder; ``settings``: the `--set` options (each
    a value or a function)."""
    return {"run": run, "initializer": lambda wildcards: TABLE[wildcards.subject]["initializer"],
            "settings": settings, "env": torch_env("train"), "gpu": gpu_wrap("train")}


# `dti aggregate` of a rule's score files (its input) into one folder (summary.csv, per_subject.csv),
# for the main table and the ablation's cells.
AGGREGATE_COMMAND = "{PY} -m dti aggregate --scores {input} --subject-names {params.subjects} --out {params.out}"


def aggregate_params(out, subjects: list[str]) -> dict:
    """The params AGGREGATE_COMMAND reads. ``out``: the folder (a value or a function)."""
    return {"out": out, "subjects": " ".join(subjects)}


# A local base model is an input (its change reruns everything); a hub id is not a file.
MODEL_INPUT = [f"{config['model']}/model_index.json"] if os.path.isdir(config["model"]) else []
IMAGES_INPUT = DATA["images"]  # the folder of all subjects (DreamBooth's is made by dreambooth_data)
SCORE = config["score"]
MODEL_IDS = " ".join(f"--model-id {k}={v}" for k, v in sorted(SCORE.get("model_ids", {}).items()))
ATTRIBUTES = (f"--prompt-sets {DATA['prompts_file']} --subjects {DATA['subjects_file']}"
              if SCORE["protocol"] == "mini" else "")
MASKS = f"--masks {DATA['masks']}" if DATA.get("masks") else ""
IMAGE_METRIC, TEXT_METRIC = {"paper": ("dinov2", "siglip"), "dreambooth": ("dino", "clip_t"),
                             "mini": ("mini_patch", "mini_clip_t")}[SCORE["protocol"]]
