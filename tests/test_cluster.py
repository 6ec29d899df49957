"""The workflow on a real SLURM cluster, through snakemake-executor-plugin-slurm and the users'
profile (profiles/slurm): a one-node cluster on this machine (tests/cluster/start_slurm.sh; root
and Debian's packages) runs the smoke configuration, one of its jobs is killed with scancel on
the way, and the results must equal those of a local run.

Skipped where no cluster can be started (no root); with DTI_REQUIRE_SLURM=1 (CI) that is a failure.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT, run_snakemake
from safetensors.torch import load_file

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
START = ROOT / "tests" / "cluster" / "start_slurm.sh"
# Rules of seconds (tables and their figures) are `localrule: True`: never a cluster job.
LOCAL_RULES = {"aggregate_main", "main_table", "ablation_cell", "ablation_default", "ablation_table",
               "training_curves", "ablation_view", "qualitative_grid", "step_sizes", "claims", "job_costs", "rescale"}


def _unavailable(reason: str):
    if os.environ.get("DTI_REQUIRE_SLURM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return state.returncode == 0 and bool(state.stdout.strip())


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running cluster: the one already up, else one started here (and stopped afterwards)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    started = False
    if not _cluster_up():
        if os.geteuid() != 0:
            _unavailable("no SLURM cluster is running, and starting one needs root")
        run = subprocess.run([str(START), "start"], capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            _unavailable(f"could not start a SLURM cluster: {(run.stderr or run.stdout).strip()[-800:]}")
        started = True
    yield
    if started:
        subprocess.run([str(START), "stop"], capture_output=True, timeout=120)


def _squeue_running() -> list[tuple[str, str]]:
    """(job id, comment) of the running jobs."""
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"], capture_output=True, text=True).stdout
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]


def _assert_same_results(ours, local):
    """Learned embeddings and every table equal those of the local run (same threads, same seeds)."""
    embeds = sorted(p.relative_to(local) for p in local.rglob("learned_embeds.safetensors"))
    assert len(embeds) == 18  # 2 subjects x (ti, ti_rescaled, dti), 2 ablation cells, 2 x 5 interpolation points
    for rel in embeds:
        a, b = load_file(ours / rel), load_file(local / rel)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=str(rel))
    # every table but the jobs' times and memory, which describe the machine that ran them
    tables = sorted(p.relative_to(local) for p in local.glob("**/tables/**/*.csv") if p.stem != "job_costs")
    assert len(tables) >= 20
    for rel in tables:  # paths inside tables start with the results folder: compare what follows it
        a = pd.read_csv(ours / rel).replace(str(ours.parent), "", regex=True)
        b = pd.read_csv(local / rel).replace(str(local.parent), "", regex=True)
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, obj=str(rel))


def _assert_submitted_through_slurm(output: str, killed: str, tmp_path):
    """From Snakemake's verbose log: every rule went through sbatch with its resources, and the
    job killed with scancel was reported as failed, then resubmitted (profile: retries: 1)."""
    calls = re.findall(r"sbatch call: (.*)", output)
    submitted = dict((slurm_id, job) for job, slurm_id in
                     re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", output))
    assert len(submitted) == len(calls) and killed in submitted
    assert f"/{killed}.log (check log file(s) for error details)" in output  # reported as an error
    assert f"Trying to restart job {submitted[killed]}" in output
    resubmitted = [slurm_id for slurm_id, job in submitted.items() if job == submitted[killed]]
    assert len(resubmitted) == 2, resubmitted  # the same Snakemake job, under a new SLURM job id

    plan = run_snakemake("-n", "--configfile", "experiments/smoke.yaml", "--config", f"results_dir={tmp_path}/plan")
    # all: no action, runs locally; the rules of a group are listed indented under it
    planned = set(re.findall(r"^\s*rule (\w+):", plan.stdout, re.M)) - {"all"}
    # one cluster job per training group, with its runs' sampling and scoring (group: personalize)
    grouped = {"train", "train_ablation", "sample", "score", "sample_ablation", "score_ablation"}
    # and the rest are cluster jobs of their own: the text-encoder analyses, the interpolations
    own = planned - grouped - LOCAL_RULES
    assert grouped < planned and LOCAL_RULES < planned and {"token_analyses", "interpolation"} <= own
    comments = " ".join(re.findall(r"--comment (\S+)", " ".join(calls)))
    assert "rule_personalize" in comments
    for rule in own:
        assert f"rule_{rule}" in comments, rule
    for rule in LOCAL_RULES:  # run by the submitting Snakemake (their tables are checked below)
        assert f"rule_{rule}" not in comments, rule
    assert all(re.search(r"--mem \d+", c) and re.search(r" -t \d+", c) and "--cpus-per-task" in c for c in calls)
    with_gpu = [c for c in calls if "--gpus=1" in c]  # training declares a GPU (--set-resources)
    assert with_gpu and all("rule_personalize" in c for c in with_gpu) and len(with_gpu) < len(calls)
    slurm_logs = {p.stem for p in (tmp_path / "slurm_logs").rglob("*.log")}
    assert slurm_logs >= set(submitted) - {killed}  # each job's SLURM log, named by its job id


def test_smoke_workflow_on_slurm_equals_local_run(slurm_cluster, smoke_local, tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--verbose",
           "--configfile", "experiments/smoke.yaml", "--config", f"results_dir={tmp_path}",
           # this cluster has no accounting database; and it should poll often, the jobs are short
           "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "5",
           "--slurm-keep-successful-logs", "--slurm-logdir", str(tmp_path / "slurm_logs"),
           # training declares a GPU, so the sbatch call must carry it (the cluster's GPUs are stand-ins)
           "--set-resources", "train:gpu=1"]
    log_path = tmp_path / "snakemake.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        # Kill the first job that runs for 3 seconds: SLURM must report it, Snakemake resubmit it.
        killed, deadline = None, time.time() + 600
        while killed is None and proc.poll() is None and time.time() < deadline:
            running = _squeue_running()
            if running:
                time.sleep(3)
                if running[0] in _squeue_running():
                    killed = running[0]
                    subprocess.run(["scancel", killed[0]], check=True)
            time.sleep(0.5)
        try:
            rc = proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = log_path.read_text()
    assert rc == 0, output[-4000:]
    assert killed is not None, "no job was seen running"
    _assert_submitted_through_slurm(output, killed[0], tmp_path)
    _assert_same_results(tmp_path / "smoke", smoke_local / "smoke")
