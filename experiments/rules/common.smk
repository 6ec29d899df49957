# Shared names: paths, the subjects table, and how many torch threads a job may use.
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import Paramspace

from dti.config import TrainConfig, parse_m_star
from dti.data import read_prompt_set, read_subjects
from dti.devices import check_device_name
from dti.io import DTIError, check_name
from dti.methods import METHODS as METHOD_REGISTRY, method_class
from dti.metrics import BACKBONES, PROTOCOLS, main_metrics, protocol_metrics
from dti.sample import SampleConfig

# Every value from the configuration or the subjects table reaches a shell command quoted: `{x:q}` in
# the templates, shlex.quote in the helpers that build options. A path with a space stays one
# argument, and `$(...)`, `;` or a backtick in a value is never run.
# Jobs run plain `python -m dti ...`: the folder of the interpreter that runs Snakemake goes first on the
# PATH, so jobs use the installed dti; under `--sdm conda` each job's activated environment comes before it.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
CONDA_ENV = "../../environment.yml"  # the project's environment (relative to experiments/rules/, as rules read it)
# DreamBooth worlds: `--config protocol=dreambooth` switches to the classic benchmark (25 prompts,
# DINO / CLIP-I / CLIP-T), with its own results folder.
PROTOCOL = config.get("protocol", "paper")
if config["world"] == "dreambooth" and PROTOCOL == "dreambooth":
    config["data"]["prompt_set"], config["score"]["protocol"] = "dreambooth", "dreambooth"
    config["paper_numbers"] = None
# Presets: named bundles of train settings and initializer sources (`--config preset=NAME`), merged under
# the configuration's own. A preset that changes something gets its own results folder, so that two
# protocols never share runs; an empty one (the configuration as it stands) keeps the plain folder.
# (Not "the first preset": YAML mappings reach us in no guaranteed order.)
PRESETS = config.get("presets") or {}
PRESET = config.get("preset") or next(iter(PRESETS), None)
OUT = (f"{config['results_dir']}/{config['name']}" + (f"_{PRESET}" if PRESETS.get(PRESET) else "")
       + ("_dreambooth" if PROTOCOL == "dreambooth" else ""))
DATA = config["data"]
try:
    TABLE = {row["subject"]: row for row in read_subjects(DATA["subjects_file"])}
except DTIError as _e:
    raise ValueError(f"config data.subjects_file: {_e}") from None
# By default every test subject; a subjects table may set aside validation subjects (its `split` column), which
# are run only when a configuration names them (to choose hyperparameters, never in a reported table).
SUBJECTS = config.get("subjects") or [s for s, row in TABLE.items() if row.get("split", "test") == "test"]

# The configuration's values are checked here, before any job starts (the schema checks little more
# than shapes), by dti's own validators: the workflow and the command line refuse the same values.
# Keys of `dti train` that the workflow sets from wildcards and the subjects table: a `--set` of
# one would override them, and a run folder would hold another run than its name says.
WORKFLOW_TRAIN_KEYS = ("method", "model", "images", "placeholder", "initializer", "seed")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # org/name (or a bare name)


# The initializer word of a run: a column of the subjects table. `class` is the authors' class word (their
# SDXL launchers, and their TI and CrossInit everywhere): their `class` field, our `dti_class` column (the
# DreamBooth noun in our `class` column differs for pink_sunglasses alone: "glasses" for their "sunglasses").
# `initialization` is the authors' field of that name, our `initializer` column (their SANA DTI alone).
INITIALIZER_COLUMNS = {"class": "dti_class", "initialization": "initializer"}


def _layers(key: str, method: str, preset) -> list:
    """``key``'s values for one method, most specific first: the configuration's ``KEY_by_method``, the
    preset's, the configuration's shared ``KEY``, the preset's. A method's own value beats a shared one;
    at the same level the configuration beats its preset."""
    chosen = PRESETS.get(preset) or {}
    return [(config.get(f"{key}_by_method") or {}).get(method), (chosen.get(f"{key}_by_method") or {}).get(method),
            config.get(key), chosen.get(key)]


def method_train(method: str, preset=PRESET) -> dict:
    """The train settings of one method: its layers merged, the most specific last."""
    merged = {}
    for layer in reversed(_layers("train", method, preset)):
        merged.update(layer or {})
    return merged


def initializer_source(method: str, preset=PRESET) -> str:
    return next((s for s in _layers("initializer_source", method, preset) if s), "class")


def initializer_of(method: str, subject: str) -> str:
    return TABLE[subject][INITIALIZER_COLUMNS[initializer_source(method)]]


def assignments(values) -> list[str]:
    """``key=value`` strings, as `--set` gives them to dti."""
    return [f"{k}={v}" for k, v in sorted((values or {}).items())]


def check_model(model: str):
    """A local diffusers folder, or a hub id; a path that is neither fails here, not in every train job."""
    if os.path.exists(model):
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            raise DTIError(f"{model!r} has no model_index.json (not a diffusers pipeline folder)")
    elif os.path.isabs(model) or model.startswith((".", "~")) or not HUB_ID.fullmatch(model):
        raise DTIError(f"{model!r}: no such local folder, and not a hub id (org/name)")


def config_problems(config) -> list[str]:
    """Every value a job would refuse, each as 'config KEY: problem' (empty: none)."""
    problems = []

    def check(key, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except DTIError as e:
            problems.append(f"config {key}: {e}")
            return False

    check("model", check_model, config["model"])
    for method in config["methods"]:
        check("methods", method_class, method)
    for key, subjects in (("subjects", SUBJECTS), ("ablation.subjects", config.get("ablation", {}).get("subjects")),
                          ("analyses.interpolation", config.get("analyses", {}).get("interpolation"))):
        for subject in subjects or []:
            if subject not in TABLE:
                problems.append(f"config {key}: subject {subject!r} is not in {DATA['subjects_file']}")
            else:
                check(key, check_name, subject, "subject")  # it becomes a folder name
    check("data.prompt_set", read_prompt_set, DATA["prompt_set"], False, DATA["prompts_file"])
    extra_seeds = sorted(set(config.get("ablation", {}).get("seeds") or []) - set(config["seeds"]))
    if extra_seeds:
        problems.append(f"config ablation.seeds: {extra_seeds[0]} is not a training seed (seeds): the ablation's "
                        "default row is the main table's DTI runs at these seeds")
    if config.get("preset") and config["preset"] not in PRESETS:
        problems.append(f"config preset: unknown preset {config['preset']!r}; "
                        + (f"valid: {', '.join(PRESETS)}" if PRESETS else "this configuration defines none"))
    # Every layer of train settings (shared, per method, each preset's), each checked once by its key.
    layers = [("train", config.get("train"))]
    layers += [(f"train_by_method.{m}", v) for m, v in (config.get("train_by_method") or {}).items()]
    for name, p in PRESETS.items():
        layers.append((f"presets.{name}.train", p.get("train")))
        layers += [(f"presets.{name}.train_by_method.{m}", v) for m, v in (p.get("train_by_method") or {}).items()]
    layers_ok = True
    for key, train in layers:
        train = train or {}
        for name in sorted(set(train) & set(WORKFLOW_TRAIN_KEYS)):
            problems.append(f"config {key}: {name!r} is the workflow's to set (from methods, seeds, data and the "
                            "subjects table), not a train setting")
        layers_ok &= check(f"{key}.device", check_device_name, str(train.get("device", "auto")))
        layers_ok &= check(key, lambda: TrainConfig().set(assignments(train)).check())
    if layers_ok:  # else every cell repeats the problem
        dti_train = method_train("dti", PRESET if PRESET in PRESETS else None)
        for i, cell in enumerate(config.get("ablation", {}).get("cells", [])):
            check(f"ablation.cells[{i}]", lambda: TrainConfig().set(assignments({**dti_train, **cell})).check())
    columns = set(next(iter(TABLE.values()), {}))
    sources = {initializer_source(m, p) for p in (PRESETS or [None]) for m in ("ti", "crossinit", "dti")}
    for source in sorted(sources):
        if TABLE and INITIALIZER_COLUMNS[source] not in columns:
            problems.append(f"config initializer_source: {source!r} reads column {INITIALIZER_COLUMNS[source]!r}, "
                            f"which {DATA['subjects_file']} lacks")
    sample = config["sample"].get("settings") or {}
    check("sample.settings.device", check_device_name, str(sample.get("device", "auto")))
    check("sample.settings", lambda: SampleConfig().set(assignments(sample)).check())
    if "rescale_stat" in config:
        check("rescale_stat", parse_m_star, config["rescale_stat"])
    score = config["score"]
    if score["protocol"] not in PROTOCOLS:
        problems.append(f"config score.protocol: unknown protocol {score['protocol']!r}; valid: {', '.join(PROTOCOLS)}")
    for backbone in sorted(score.get("model_ids") or {}):
        if backbone not in BACKBONES:
            problems.append(f"config score.model_ids: unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    check("score.device", check_device_name, str(score.get("device", "auto")))
    if "mini_world_device" in config:
        check("mini_world_device", check_device_name, str(config["mini_world_device"]))
    return problems


if _problems := config_problems(config):  # one line each, all at once
    raise ValueError("\n".join(_problems))

METHODS = config["methods"]
# Post-hoc methods (TI-rescaled) come with the method they are made from.
ALL_METHODS = METHODS + [name for name, cls in METHOD_REGISTRY.items() if cls.post_hoc and cls.source_method in METHODS]
SEEDS = config["seeds"]
SAMPLE_SEEDS = " ".join(str(s) for s in config["sample"]["seeds"])
WORLD_FILES = [DATA["subjects_file"], DATA["prompts_file"]]


def settings(values: dict) -> str:
    """``--set key=value`` for each entry, sorted (so the command line, and reruns, are stable), each
    ``key=value`` one quoted shell word."""
    return " ".join(f"--set {shlex.quote(item)}" for item in assignments(values))


def resources(stage: str) -> dict:
    return config["resources"].get(stage, {})


CPUS = os.cpu_count() or 1
try:  # `workflow.local_exec`: tested with the Snakemake pinned in requirements.lock
    CORES = workflow.cores if workflow.local_exec else CPUS  # a cluster job gets its own CPUs
except WorkflowError:  # no --cores given (a dry run, or a cluster executor)
    CORES = CPUS


def threads(stage: str) -> int:
    """Cores a job asks Snakemake for: its `threads` (the real CPUs its torch uses), times --cores per real
    CPU when --cores exceeds the machine's CPU count (--cores 8 on a 2-core laptop: a 1-thread job asks
    for 4, so two run at once, a 2-thread job for all 8). torch_env gives it its share of the real CPUs:
    running jobs never oversubscribe the machine."""
    return resources(stage).get("threads", 1) * max(1, CORES // CPUS)


def torch_env(stage: str) -> str:
    n = min(threads(stage), CORES)  # Snakemake gives a job at most --cores
    if CORES > CPUS:
        n = max(1, n * CPUS // CORES)
    return f"OMP_NUM_THREADS={n} MKL_NUM_THREADS={n}"


def job_resources(stage: str) -> dict:
    r = resources(stage)
    return {"gpu": r.get("gpu", 0), "mem_mb": r.get("mem_mb", 4000), "runtime": r.get("runtime", 60)}


def gpu_wrap(stage: str) -> str:
    """Jobs that need a GPU take a free one (python -m dti.gpu); Snakemake itself does not assign them."""
    return "python -m dti.gpu --" if resources(stage).get("gpu", 0) else ""


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

# Training jobs: each trains a group of runs in one process (`dti train --run ... --run ...`): the model loads
# once and the runs step together, one batched pass for all; each run writes its own folder, as alone. A
# group is one method (or ablation cell) with its (subject, training seed) runs, up to
# resources.train.runs_per_job of them (default: all, every seed in one job: a method's settings are its
# seeds' settings, so a change reruns them all anyway, and each process start costs seconds of imports).
# With more runs than that, the runs (subject by subject, seeds within) are split in parts of that size,
# with one training rule per part, named train_part0, train_part1, ... (a single part keeps the plain name).
def run_parts(subjects: list[str], seeds: list) -> list[list[tuple[str, str]]]:
    runs = [(subject, str(seed)) for subject in subjects for seed in seeds]
    size = resources("train").get("runs_per_job") or max(len(runs), 1)
    return [runs[i:i + size] for i in range(0, len(runs), size)]


# Training before everything else, the main table's (larger) groups first: every other job waits on a
# training job, and a long training job started last leaves the other cores idle at the end of a run.
TRAIN_PRIORITY = {"main": 2, "ablation": 1}


def part_rule_name(rule: str, k: int, parts: list) -> str:
    return rule if len(parts) == 1 else f"{rule}_part{k}"


# On a cluster (ignored when run locally), a training job and the sampling and scoring of its runs go
# as one job: one allocation reads the base model, instead of a queue wait for each.
CLUSTER_GROUP = "personalize"
TRAIN_COMMAND = ("{params.env} {params.gpu} python -m dti train --model {params.model:q} --resume {params.settings}"
                 " {params.runs} > {log:q} 2>&1")


def placeholder_of(subject: str, seed, seeds: list) -> str:
    """A run's placeholder: ``<subject>``, or ``<subject-s1>`` where a method trains several seeds of a
    subject (its runs may share a group, whose tokenizer needs one token per run)."""
    return f"<{subject}>" if len(seeds) == 1 else f"<{subject}-s{seed}>"


def train_params(runs, settings, seeds) -> dict:
    """The params TRAIN_COMMAND reads. ``runs``: a function of the wildcards giving (method, subject, run
    folder, seed[, the run's own settings]) of each run of the job; ``settings``: the shared `--set` options
    (a function of the wildcards); ``seeds``: the training seeds of the job's method or cell."""
    def run_options(wildcards) -> str:
        options = []
        for method, subject, folder, seed, *own in runs(wildcards):
            run = {"out": folder, "method": method, "images": os.path.join(IMAGES_INPUT, subject),
                   "placeholder": placeholder_of(subject, seed, seeds), "initializer": initializer_of(method, subject),
                   "seed": int(seed)}
            if own:
                run["set"] = assignments(own[0])
            options.append(f"--run {shlex.quote(json.dumps(run, sort_keys=True))}")
        return " ".join(options)

    return {"model": lambda wildcards: config["model"], "settings": settings, "runs": run_options, "env": torch_env("train"),
            "gpu": gpu_wrap("train")}


def train_resources(runs: int) -> dict:
    """A training job's resources: runtime is per run, mem_mb per job plus mem_mb_per_run for each further run."""
    r = job_resources("train")
    extra = resources("train").get("mem_mb_per_run", 0)
    return {**r, "mem_mb": r["mem_mb"] + extra * (runs - 1), "runtime": r["runtime"] * runs}


# Sampling and scoring jobs: like training, one per group of runs (a method or ablation cell, a part of its
# runs): `dti sample --job ...` loads the pipeline once and `dti score --manifest ... --out ...` the metric
# models once for the group; each run keeps its own images, manifest and scores file.
SAMPLES = "{prefix}/samples/{method}/{subject}/seed{seed}"  # one run's images and manifest.csv
SCORES = "{prefix}/scores/{method}/{subject}/seed{seed}.csv"  # one run's scores
MANIFEST = "manifest.csv"  # in a run's SAMPLES folder


def run_files(pattern: str, prefix: str, method: str, runs: list[tuple[str, str]]) -> list[str]:
    """``pattern`` (SAMPLES or SCORES) for each (subject, seed) run; ``prefix`` and ``method`` may be wildcards."""
    return [pattern.format(prefix=prefix, method=method, subject=subject, seed=seed) for subject, seed in runs]


SAMPLE_COMMAND = ("{params.env} {params.gpu} python -m dti sample {params.jobs} {params.prompts} --seeds {params.seeds}"
                  " {params.settings} > {log:q} 2>&1")


def sample_params(prefix, method, runs) -> dict:
    """The params SAMPLE_COMMAND reads for the (subject, seed) ``runs``; ``prefix`` and ``method`` may hold
    wildcards (filled per job)."""
    def jobs(wildcards) -> str:
        where, name = prefix.format(**wildcards), method.format(**wildcards)
        return " ".join(f"--job {shlex.quote(json.dumps(job, sort_keys=True))}" for job in (
            {"run": run_dir(name, subject, seed, where), "subject": subject,
             "out": SAMPLES.format(prefix=where, method=name, subject=subject, seed=seed)} for subject, seed in runs))

    return {"jobs": jobs, "settings": settings(config["sample"].get("settings")), "seeds": SAMPLE_SEEDS,
            "prompts": (f"--prompts {shlex.quote(DATA['prompt_set'])} --prompts-file {shlex.quote(DATA['prompts_file'])}"
                        f" --subjects-file {shlex.quote(DATA['subjects_file'])}"),
            "env": torch_env("sample"), "gpu": gpu_wrap("sample")}


SCORE_COMMAND = ("{params.env} {params.gpu} python -m dti score {params.pairs} --references {input.images:q}"
                 " --protocol {params.protocol:q} {params.options} --device {params.device:q} > {log:q} 2>&1")


def score_params(prefix, method, runs) -> dict:
    """The params SCORE_COMMAND reads: each (subject, seed) run's manifest and scores file, in pairs."""
    def pairs(wildcards) -> str:
        where, name = prefix.format(**wildcards), method.format(**wildcards)
        return " ".join(
            f"--manifest {shlex.quote(os.path.join(SAMPLES.format(prefix=where, method=name, subject=s, seed=seed), MANIFEST))}"
            f" --out {shlex.quote(SCORES.format(prefix=where, method=name, subject=s, seed=seed))}"
            for s, seed in runs)

    return {"pairs": pairs, "env": torch_env("score"), "gpu": gpu_wrap("score"), "device": SCORE.get("device", "auto"),
            "protocol": SCORE["protocol"], "options": " ".join(filter(None, [MODEL_IDS, ATTRIBUTES, MASKS]))}


# `dti aggregate` of a rule's score files (its input) into one folder (summary.csv, per_subject.csv),
# for the main table and the ablation's cells.
AGGREGATE_COMMAND = ("python -m dti aggregate --scores {input:q} --subject-names {params.subjects:q}"
                     " {params.paired} --out {params.out:q} > {log:q} 2>&1")


def aggregate_params(subjects: list[str], paired_against: str | None = None) -> dict:
    """The params AGGREGATE_COMMAND reads: the subjects, the folder of the rule's `summary` output, and the
    method whose paired differences against every other method it writes (paired.csv), if any."""
    return {"out": lambda wildcards, output: os.path.dirname(output.summary), "subjects": list(subjects),
            "paired": f"--paired-against {shlex.quote(paired_against)}" if paired_against else ""}


# A local base model is an input (its change reruns everything); a hub id is not a file.
MODEL_INPUT = [f"{config['model']}/model_index.json"] if os.path.isdir(config["model"]) else []
IMAGES_INPUT = DATA["images"]  # the folder of all subjects (DreamBooth's is made by dreambooth_data)
SCORE = config["score"]
# Options built here are shell text, each value already quoted (the templates insert them as they are).
MODEL_IDS = " ".join(f"--model-id {shlex.quote(f'{k}={v}')}" for k, v in sorted(SCORE.get("model_ids", {}).items()))
ATTRIBUTES = (f"--prompt-sets {shlex.quote(DATA['prompts_file'])} --subjects {shlex.quote(DATA['subjects_file'])}"
              if SCORE["protocol"] == "mini" else "")
PAPER_OPTION = f"--paper {shlex.quote(config['paper_numbers'])}" if config.get("paper_numbers") else ""
PRESET_OPTION = f"--preset {shlex.quote(PRESET)}" if PRESET else ""  # the tables name it, and warn on a mismatch
MASKS = f"--masks {shlex.quote(DATA['masks'])}" if DATA.get("masks") else ""
IMAGE_METRIC, TEXT_METRIC = main_metrics(SCORE["protocol"])  # its first image and text metric
# the main table's further columns: the protocol's attribute measures (the mini world's read-out: prompted
# attributes and identity), in its order
EXTRA_MAIN_METRICS = tuple(protocol_metrics(SCORE["protocol"], "attributes"))


def scores_of(prefix, methods, subjects, seeds=None):
    """The scores of the given methods and subjects at each of ``seeds`` (default: the training seeds),
    under ``prefix`` (SCORES)."""
    return expand(SCORES, prefix=prefix, method=methods, subject=subjects, seed=seeds or SEEDS)


# The ablation's folders (experiments/rules/ablation.smk): one per cell, named by its parameters.
def cell_tables(cell: str) -> str:
    """The aggregated scores of one cell (a folder name under ablation/; "default": the default DTI cell)."""
    return f"{OUT}/ablation/{cell}/tables"


def cell_summary(cell: str) -> str:
    return f"{cell_tables(cell)}/summary.csv"


def cell_label(row) -> str:
    from dti.tables import cell_label as label

    return label(row["direction_optimizer"], row["m_star"], row["kappa"])


def figure(name: str, caption: str | None = None):
    """A figure of the analyses (experiments/rules/analyses.smk), shown in the report with its caption."""
    return report(f"{OUT}/figures/{name}.png", caption=f"../report/{caption or name}.rst", category="Figures")


def log_of(*parts) -> str:
    """A job's log file under the results folder."""
    return os.path.join(OUT, "logs", *parts)


def benchmark_of(*parts) -> str:
    """A job's time and memory (Snakemake's benchmark file), summarised by the job_costs rule."""
    return os.path.join(OUT, "benchmarks", *parts)


# --------------------------------------------------------------------------- #
# Calibration (experiments/rules/calibration.smk)
# --------------------------------------------------------------------------- #
CALIBRATION = config.get("calibration") or {}
VALIDATION_SUBJECTS = [s for s, row in TABLE.items() if row.get("split") == "validation"]
CALIBRATION_OUT = f"{OUT}/calibration"
# Arms: RSGD with kappa 0 (its data gradients set kappa), and AdamW with kappa 0 at each grid lr (its angles).
CALIBRATION_ARMS = {"rsgd": {"direction_optimizer": "rsgd", "kappa": 0.0},
                    **{f"adamw_lr~{lr:g}": {"direction_optimizer": "adamw", "kappa": 0.0, "adamw_lr": lr}
                       for lr in CALIBRATION.get("adamw_lrs", [])}}
# (subject, seed) of every run of an arm
CALIBRATION_RUNS = [(subject, seed) for subject in VALIDATION_SUBJECTS for seed in CALIBRATION.get("seeds", [0])]


def calibration_dir(arm, subject, seed):
    return run_dir("dti", subject, seed, prefix=f"{CALIBRATION_OUT}/{arm}")


# an arm's training outputs (the pattern of wildcard arm)
CALIBRATION_EMBEDS = [f"{calibration_dir('{arm}', subject, seed)}/learned_embeds.safetensors"
                      for subject, seed in CALIBRATION_RUNS]


def calibration_runs(wildcards):
    """The training group of one arm, as ``train_params`` reads it."""
    arm = wildcards.arm
    return [("dti", subject, calibration_dir(arm, subject, seed), seed, CALIBRATION_ARMS[arm])
            for subject, seed in CALIBRATION_RUNS]
