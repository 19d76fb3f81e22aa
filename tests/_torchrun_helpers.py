"""Run ``python -m backdoorlab ...`` under ``torchrun`` from a test (tests/test_distributed*.py).

One launcher for every multi-process test: the children import the very ``backdoorlab`` and
``datasets_gen`` this test process imported (the source tree in a development checkout, the installed
wheel with its compiled ``_core`` in CI — putting the source tree first there hid the native core from
the children), one OpenMP thread per rank, and the run in its own session, so a hung run (ranks
waiting for each other in a collective) is killed whole — torchrun and its workers — when the
timeout passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import backdoorlab
import datasets_gen


def child_env(**extra: str) -> dict[str, str]:
    """This environment with ``PYTHONPATH`` set to the folders this process imported ``backdoorlab``
    and ``datasets_gen`` from, plus ``extra``."""
    roots = dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (backdoorlab, datasets_gen))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(roots), **extra}


def torchrun_backdoorlab(cwd: Path, *args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc -m backdoorlab *args`` in ``cwd``; its result
    (text stdout/stderr). Raises ``subprocess.TimeoutExpired`` after killing the session."""
    env = child_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "backdoorlab", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
