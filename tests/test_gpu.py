"""One free GPU per job: concurrent jobs never share one, a finished job frees its GPU."""

import os
import subprocess
import sys


def start(lock_dir, visible: str, seconds: float):
    code = f"import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep({seconds})"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "DTI_GPU_LOCKS": str(lock_dir)}
    return subprocess.Popen([sys.executable, "-m", "dti.gpu", "--", sys.executable, "-c", code], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_different_gpus_and_wait_for_a_free_one(tmp_path):
    first, second = start(tmp_path, "3,5", 3.0), start(tmp_path, "3,5", 3.0)
    got = {first.stdout.readline().strip(), second.stdout.readline().strip()}
    assert got == {"3", "5"}
    third = start(tmp_path, "3,5", 0.0)  # both held: waits, then takes the first freed
    first.wait(), second.wait()
    assert third.stdout.readline().strip() in {"3", "5"}
    assert third.wait() == 0


def test_exit_code_passes_through_and_no_gpu_runs_plainly(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DTI_GPU_LOCKS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "dti.gpu", "--", sys.executable, "-c", "raise SystemExit(3)"], env=env)
    assert done.returncode == 3
