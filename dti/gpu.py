"""Run a command on one GPU that no other job holds: ``python -m dti.gpu -- COMMAND ...``.

Snakemake's ``--resources gpu=N`` limits how many GPU jobs run at once but does not say which
GPU each gets. This wrapper takes a lock file per visible GPU (``$DTI_GPU_LOCKS``, default the
system temp folder), sets ``CUDA_VISIBLE_DEVICES`` to the one it got, and holds the lock until
the command ends. Where a scheduler already restricts the job (SLURM sets
``CUDA_VISIBLE_DEVICES``), the choice is among those GPUs. Without GPUs the command runs as is.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def acquire(gpus: list[str], lock_dir: Path, poll: float = 2.0):
    """(gpu, open lock file) of the first free GPU; waits while all are held."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            handle = open(lock_dir / f"dti-gpu-{gpu}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return gpu, handle
            except BlockingIOError:
                handle.close()
        time.sleep(poll)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("error: usage: python -m dti.gpu -- COMMAND ...", file=sys.stderr)
        return 2
    gpus = visible_gpus()
    if not gpus:
        return subprocess.call(argv)
    gpu, handle = acquire(gpus, Path(os.environ.get("DTI_GPU_LOCKS", tempfile.gettempdir())))
    try:
        return subprocess.call(argv, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu})
    finally:
        handle.close()


if __name__ == "__main__":
    sys.exit(main())
