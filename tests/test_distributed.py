"""Data-parallel training under torchrun (issue #14, item 2).

Guards: two gloo processes train one model whose checkpoint (written by rank 0) loads, records
the run, and resumes; the resumed run ends with the weights of an uninterrupted one (same seed,
same number of processes); a resume with another number of processes is refused; the shards
partition the rows (each rank reads a contiguous part); without torchrun the hooks are the
single-process training (same shuffling order, same seed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoorlab import checkpoint as ckpt
from backdoorlab import distributed as ddp
from backdoorlab.data import H5Split
from backdoorlab.train import epoch_order

from _model_helpers import state_equal, toy_variant
from _torchrun_helpers import child_env, torchrun_backdoorlab


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (240, 4), (3, 3)])
def test_shards_partition_the_rows_contiguously(n, world):
    shards = [ddp.shard_rows(n, ddp.DistContext(rank=r, world_size=world)) for r in range(world)]
    np.testing.assert_array_equal(np.concatenate(shards), np.arange(n))
    sizes = [s.size for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.all(np.diff(s) == 1) for s in shards if s.size > 1)


def test_too_few_rows_for_the_processes_is_refused():
    with pytest.raises(ValueError, match="2 training rows cannot be shared by 3 processes"):
        ddp.shard_rows(2, ddp.DistContext(rank=0, world_size=3))


def test_a_rank_opens_only_its_rows(tmp_path):
    data = H5Split(toy_variant(tmp_path / "toy.h5"), "train")
    part = ddp.shard(data, ddp.DistContext(rank=1, world_size=2))
    np.testing.assert_array_equal(part.rows, np.arange(len(data) // 2, len(data)))
    assert ddp.shard(data, ddp.DistContext()) is data


def test_one_process_hooks_are_the_single_process_training():
    one = ddp.DistContext()
    assert not one.active and one.is_main
    assert torch.equal(ddp.epoch_order(50, 7, 3, one), epoch_order(50, 7, 3))
    assert ddp.rank_seed(7, one) == 7
    assert ddp.rank_seed(7, ddp.DistContext(0, 2)) != ddp.rank_seed(7, ddp.DistContext(1, 2))
    assert ddp.rank_device(torch.device("cpu"), ddp.DistContext(1, 2, 1)) == torch.device("cpu")
    assert ddp.rank_device(torch.device("cuda"), ddp.DistContext(1, 2, 1)) == torch.device("cuda", 1)


def _torchrun(tmp_path: Path, *args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    return torchrun_backdoorlab(tmp_path, "train", "--model", "gtsrb_cnn", "--batch-size", "16", "--threads", "1",
                                "--no-progress", *args, nproc=nproc, timeout=timeout)


def test_two_gloo_processes_train_a_checkpoint_that_loads_and_resumes(tmp_path):
    data = str(toy_variant(tmp_path / "toy.h5"))
    first = _torchrun(tmp_path, "--data", data, "--out", "resumed.pt", "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(2 processes, gloo)" in first.stdout
    model, payload = ckpt.load(tmp_path / "resumed.pt")
    assert payload["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert payload["epochs_done"] == 1 and len(payload["history"]) == 1
    state = payload["train_state"]
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])
    # every row of the split counted once in the epoch (240 rows, even shards: no padding)
    assert payload["history"][0]["images_per_s"] > 0

    # the checkpoint of 2 processes is an ordinary one: single-process `evaluate` reads it
    eval_env = child_env()
    eval_env.pop("WORLD_SIZE", None)
    evaluated = subprocess.run([sys.executable, "-m", "backdoorlab", "evaluate", "--data", data, "--model", "resumed.pt",
                                "--json", "metrics.json", "--device", "cpu", "--no-progress"],
                               capture_output=True, text=True, env=eval_env, cwd=tmp_path, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test"] == 80 and 0.0 <= metrics["clean_accuracy"] <= 1.0
    assert metrics["attack_success_rate"] is not None

    again = _torchrun(tmp_path, "--data", data, "--out", "resumed.pt", "--epochs", "2", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    straight = _torchrun(tmp_path, "--data", data, "--out", "straight.pt", "--epochs", "2")
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed, p_resumed = ckpt.load(tmp_path / "resumed.pt")
    whole, p_whole = ckpt.load(tmp_path / "straight.pt")
    assert p_resumed["epochs_done"] == 2 and p_resumed["complete"]
    assert state_equal(resumed, whole), "a resumed 2-process run must end with the uninterrupted run's weights"
    assert [h["loss"] for h in p_resumed["history"]] == [h["loss"] for h in p_whole["history"]]
    assert not state_equal(model, whole)  # the second epoch did train

    # one process cannot continue a two-process run (other shards, other batches)
    env = child_env()
    env.pop("WORLD_SIZE", None)
    single = subprocess.run([sys.executable, "-m", "backdoorlab", "train", "--data", data, "--model", "gtsrb_cnn",
                             "--out", "resumed.pt", "--epochs", "3", "--resume", "--batch-size", "16", "--no-progress",
                             "--threads", "1"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert single.returncode != 0
    assert "trained by 2 process(es), this run has 1" in single.stderr


def test_uneven_shards_run_the_same_number_of_steps(tmp_path):
    """141 rows on 2 processes: shards of 70 and 71. The shorter one is padded to 71, and both ranks
    must run ceil(71 / 10) = 8 steps -- with 7 on one rank, the other waits in an all-reduce that
    never comes (the in-memory feed once stopped at the shard's own length, not the padded order's)."""
    data = str(toy_variant(tmp_path / "odd.h5", n_classes=3, n_train_per_class=47))
    run = _torchrun(tmp_path, "--data", data, "--out", "odd.pt", "--epochs", "1", "--batch-size", "10",
                    "--max-memory-mb", "64", timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    _, payload = ckpt.load(tmp_path / "odd.pt")
    assert payload["feed"] == "memory"
    record = payload["history"][0]
    assert np.isfinite(record["loss"]) and 0.0 <= record["accuracy"] <= 1.0
