"""One free GPU per job: concurrent jobs never share one, a finished job frees its GPU."""

import os
import subprocess
import sys


# A job prints its GPU and whether the previous holder of that GPU had finished when it started
# (each job leaves done-<gpu> behind as its last act, before the wrapper frees the GPU).
JOB = """
import os, pathlib, sys, time
gpu = os.environ["CUDA_VISIBLE_DEVICES"]
done = pathlib.Path(sys.argv[1]) / f"done-{gpu}"
print(gpu, "after-holder-finished" if done.exists() else "first-holder", flush=True)
time.sleep(float(sys.argv[2]))
done.touch()
"""


def start(lock_dir, marks, visible: str, seconds: float):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "DTI_GPU_LOCKS": str(lock_dir)}
    command = [sys.executable, "-m", "dti.gpu", "--", sys.executable, "-c", JOB, str(marks), str(seconds)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_different_gpus_and_wait_for_a_free_one(tmp_path):
    locks, marks = tmp_path / "locks", tmp_path / "marks"
    marks.mkdir()
    first, second = start(locks, marks, "3,5", 3.0), start(locks, marks, "3,5", 3.0)
    got = sorted([first.stdout.readline().split(), second.stdout.readline().split()])
    assert got == [["3", "first-holder"], ["5", "first-holder"]]
    third = start(locks, marks, "3,5", 0.0)  # both held: it must wait until one of them has finished
    gpu, when = third.stdout.readline().split()
    assert gpu in {"3", "5"} and when == "after-holder-finished"
    assert third.wait() == 0 and first.wait() == 0 and second.wait() == 0


def test_exit_code_passes_through_and_no_gpu_runs_plainly(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DTI_GPU_LOCKS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "dti.gpu", "--", sys.executable, "-c", "raise SystemExit(3)"], env=env)
    assert done.returncode == 3
