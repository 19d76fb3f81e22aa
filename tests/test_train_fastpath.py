"""The training fast path (backdoorlab.fastpath): same computation as the plain eager path.

Channels-last convolutions and the fused/foreach optimizers change the float summation order,
so the fast path is compared with the plain one (``TrainConfig(fast=False)``) within a stated
tolerance; what must not change at all -- the dropout masks and the RNG stream, the pruning
masks, the layout handed back, seeding and exact resume -- is checked exactly.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _model_helpers import one_thread, state_equal, toy_variant
from backdoorlab import fastpath
from backdoorlab.data import BatchSource, H5Split
from backdoorlab.models import build_model
from backdoorlab.models.base import Dropout
from backdoorlab.train import PRESETS, TrainConfig, make_optimizer, train_model

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    return toy_variant(tmp_path_factory.mktemp("fastpath") / "toy.h5", seed=0)


def _subset(variant, n=96):
    return H5Split(variant, "train", indices=np.arange(0, 240, 240 // n)[:n])


def _train(ds, cfg, seed=5, **kw):
    model = build_model("gtsrb_cnn", 4, seed=0)
    train_model(model, ds, cfg, seed=seed, device="cpu", progress=False, **kw)
    return model


@pytest.mark.parametrize("optimizer", ["adam", "adadelta", "sgd"])
def test_fast_path_matches_plain_path_within_float_tolerance(variant, optimizer):
    """Two epochs of the paper's GTSRB setting (batch 16 here): losses, accuracies and weights agree.

    Tolerances: relative 2e-4 on each epoch's mean loss, at most one image's difference in training
    accuracy, and the fast run's weights within 2 % of the distance to a run with another seed
    (``|w_fast - w_plain| <= 0.02 |w_seed6 - w_plain|``, over all weights). Measured: loss 2.3e-5
    (Adam), weights 0.15 % (Adam), 0.013 % (SGD), 0.003 % (Adadelta): Adam divides each gradient by
    its own running scale, so rounding noise on a near-zero gradient becomes a full-size step.
    A change of what is computed (another dropout mask or optimizer rule) is a different run, as
    another seed is.
    """
    ds = _subset(variant)
    cfg = PRESETS["gtsrb"].replace(epochs=2, batch_size=16, optimizer=optimizer,
                                   lr={"adam": 1e-3, "adadelta": 0.1, "sgd": 0.01}[optimizer])
    fast, plain, other = _train(ds, cfg), _train(ds, cfg.replace(fast=False)), _train(ds, cfg, seed=6)
    hf, hp = fast.train_history, plain.train_history
    np.testing.assert_allclose([h["loss"] for h in hf], [h["loss"] for h in hp], rtol=2e-4)
    for a, b in zip(hf, hp):
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / len(ds) + 1e-12
    assert _distance(fast, plain) <= 0.02 * _distance(other, plain)


def _distance(a, b) -> float:
    return float(torch.cat([(x.double() - y.double()).flatten()
                            for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)]).norm())


def test_fast_path_is_seeded_and_hands_back_the_default_layout(variant):
    ds = _subset(variant, 64)
    cfg = PRESETS["gtsrb"].replace(epochs=1, batch_size=16)
    a, b = _train(ds, cfg), _train(ds, cfg)
    assert state_equal(a, b)
    assert all(p.is_contiguous() for p in a.parameters())
    assert a.conv1_1.conv.weight.is_contiguous() and not a.conv1_1.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_resume_across_paths_continues_the_same_run(variant, tmp_path):
    """A checkpoint of either path resumes on the other (``fast`` is not part of the identity)."""
    ds = _subset(variant, 64)
    cfg = PRESETS["gtsrb"].replace(epochs=2, batch_size=16)
    full = _train(ds, cfg)
    path = tmp_path / "run.pt"
    _train(ds, cfg.replace(epochs=1, fast=False), checkpoint=path)
    resumed = _train(ds, cfg, checkpoint=path, resume=True)  # epoch 2 on the fast path
    assert [h["epoch"] for h in resumed.train_history] == [1, 2]
    assert _distance(full, resumed) <= 0.02 * _distance(_train(ds, cfg, seed=6), full)


def test_mixed_precision_trains_under_bfloat16_autocast_on_cpu(variant, tmp_path):
    """``precision="mixed"``: the forward in bfloat16 on CPU, float32 weights, its own resume identity."""
    ds = _subset(variant, 64)
    cfg = PRESETS["gtsrb"].replace(epochs=2, batch_size=16)
    dtypes = []
    model = build_model("gtsrb_cnn", 4, seed=0)
    probe = model.conv2_1.conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    path = tmp_path / "mixed.pt"
    train_model(model, ds, cfg.replace(precision="mixed"), seed=5, device="cpu", progress=False, checkpoint=path)
    probe.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    hist = model.train_history
    assert all(np.isfinite(h["loss"]) for h in hist) and hist[1]["loss"] < hist[0]["loss"]
    plain = _train(ds, cfg)
    assert not state_equal(plain, model)  # another computation, not a relabelled float32 run
    # a float32 run cannot continue a mixed one (nor the other way round)
    with pytest.raises(ValueError, match="cannot resume"):
        _train(ds, cfg.replace(epochs=3), checkpoint=path, resume=True)
    resumed = _train(ds, cfg.replace(epochs=3, precision="mixed"), checkpoint=path, resume=True)
    assert [h["epoch"] for h in resumed.train_history] == [1, 2, 3]
    # checkpoints written before the field existed are float32 runs
    old_cfg = cfg.to_dict()
    del old_cfg["precision"]
    assert TrainConfig.from_dict(old_cfg)._identity() == cfg._identity()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_on_cuda_scales_the_loss_and_checkpoints_the_scaler(variant, tmp_path):
    ds = _subset(variant, 64)
    cfg = PRESETS["gtsrb"].replace(epochs=1, batch_size=16, precision="mixed")
    dtypes = []
    model = build_model("gtsrb_cnn", 4, seed=0)
    probe = model.conv2_1.conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    path = tmp_path / "mixed_cuda.pt"
    train_model(model, ds, cfg, seed=5, device="cuda", progress=False, checkpoint=path)
    probe.remove()
    assert set(dtypes) == {torch.float16} and np.isfinite(model.train_history[0]["loss"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["train_state"]["scaler"]["scale"] > 0
    resumed = build_model("gtsrb_cnn", 4, seed=0)
    train_model(resumed, ds, cfg.replace(epochs=2), seed=5, device="cuda", progress=False, checkpoint=path, resume=True)
    assert [h["epoch"] for h in resumed.train_history] == [1, 2]


def test_autocast_dtype_per_device_and_its_checks():
    assert fastpath.autocast_dtype("float32", CPU) is None
    assert fastpath.autocast_dtype("mixed", CPU) == torch.bfloat16
    assert fastpath.autocast_dtype("mixed", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        fastpath.autocast_dtype("fp16", CPU)
    with pytest.raises(ValueError, match="not 'meta'"):
        fastpath.autocast_dtype("mixed", torch.device("meta"))
    with pytest.raises(ValueError, match="TrainConfig.precision must be one of .* got 'half'"):
        PRESETS["gtsrb"].replace(precision="half")


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_mask_does_not_depend_on_the_layout(p):
    x = torch.rand(4, 8, 6, 5) + 0.5  # no zeros: a dropped unit is exactly the zeros of the output
    drop = Dropout(p).train()
    ref = torch.nn.Dropout(p).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        want = ref(x)
        after_ref = torch.rand(3)
        torch.manual_seed(0)
        got = drop(x.contiguous(memory_format=torch.channels_last))
        after = torch.rand(3)
        torch.manual_seed(0)
        got_plain = drop(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want) and torch.equal(got_plain, want)
    assert torch.equal(after, after_ref)  # the same amount of the RNG stream consumed
    assert 0 < int((want == 0).sum()) < want.numel()
    # evaluation mode: the identity, any layout
    drop.eval()
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(drop(xc), xc)


def test_unpruned_mask_skip_sees_later_pruning_and_loaded_masks():
    """An all-ones mask is skipped (exact); pruning after a forward, or a loaded mask, is applied."""
    model = build_model("gtsrb_cnn", 4, seed=0).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        acts = {}
        hook = model.layer("last_conv").register_forward_hook(lambda m, i, o: acts.__setitem__("o", o))
        model(x)
        assert acts["o"][:, 3].abs().sum() > 0
        model.prune("last_conv", [3])
        model(x)
        assert torch.count_nonzero(acts["o"][:, 3]) == 0
        fresh = build_model("gtsrb_cnn", 4, seed=0).eval()
        fresh.layer("last_conv").register_forward_hook(lambda m, i, o: acts.__setitem__("o", o))
        fresh(x)  # caches "identity" for the fresh mask
        fresh.load_state_dict(model.state_dict())
        fresh(x)
        assert torch.count_nonzero(acts["o"][:, 3]) == 0
        hook.remove()
    with torch.inference_mode():
        model(x)


def test_batches_in_channels_last_have_the_same_values(variant):
    ds = _subset(variant, 40)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))
    for in_memory in (True, False):
        src = BatchSource(ds, CPU, in_memory=in_memory)
        for (xa, ya), (xb, yb) in zip(src.batches(16, order), src.batches(16, order, channels_last=True), strict=True):
            assert xb.is_contiguous(memory_format=torch.channels_last) and xa.is_contiguous()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _weights_channels_last(model):
    return all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in model.parameters() if p.dim() == 4)


@pytest.mark.parametrize("start_channels_last", [False, True])
def test_evaluation_runs_channels_last_and_hands_the_model_back_as_it_came(start_channels_last):
    model = build_model("gtsrb_cnn", 4, seed=0).train()
    if start_channels_last:  # e.g. a model in the middle of a fast-path training run
        fastpath.set_layout(model, None, True)
    params = [p for p in model.parameters()]
    with fastpath.evaluation(model, CPU) as channels_last:
        assert channels_last and not model.training and _weights_channels_last(model)
    assert model.training and _weights_channels_last(model) == start_channels_last
    assert [p for p in model.parameters()] == params  # the same Parameter objects (an optimizer stays valid)
    with pytest.raises(RuntimeError, match="boom"), fastpath.evaluation(model.eval(), CPU):
        raise RuntimeError("boom")
    assert not model.training and _weights_channels_last(model) == start_channels_last


def test_evaluation_inside_inference_mode_leaves_the_layout_alone():
    model = build_model("gtsrb_cnn", 4, seed=0)
    with torch.inference_mode(), fastpath.evaluation(model, CPU) as channels_last:
        assert not channels_last and model.conv1_2.conv.weight.is_contiguous()
    assert not model.conv1_2.conv.weight.is_inference()  # still trainable
    loss = model(torch.rand(2, 3, 32, 32)).sum()
    loss.backward()


def test_predict_and_activations_match_the_default_layout(variant):
    from backdoorlab import activations, evaluate

    ds = _subset(variant, 40)
    model = build_model("gtsrb_cnn", 4, seed=0)
    x = ds.load_images().permute(0, 3, 1, 2).float() / 255  # uint8 (N, H, W, C) -> the default layout
    with torch.no_grad():  # the default-layout forward, written out
        ref_logits = model.eval()(x)
        ref_acts = {}
        hook = model.layer("last_conv").register_forward_hook(lambda _m, _i, out: ref_acts.setdefault("a", out))
        model(x)
        hook.remove()
    model.train()
    layouts = []  # the layout each forward pass ran in
    probe = model.conv1_1.conv.register_forward_pre_hook(
        lambda _m, inp: layouts.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
    pred = evaluate.predict(model, ds, batch_size=16, device="cpu")
    np.testing.assert_array_equal(pred, ref_logits.argmax(1).numpy())  # (no near-tie in these logits)
    acts = activations.extract(model, ds, "last_conv", batch_size=16, device="cpu", progress=False)
    np.testing.assert_allclose(acts, ref_acts["a"].flatten(1).numpy(), rtol=1e-5, atol=1e-6)
    for _, batch, _ in activations.iter_activations(model, ds, "last_conv", batch_size=16, device="cpu"):
        assert batch.is_contiguous()  # callers get the default layout
    probe.remove()
    # 3 batches each for predict, extract and iter_activations; extract's width probe (one zero image) is the 10th
    assert layouts.count(True) == 9 and len(layouts) == 10
    assert model.training and model.conv1_2.conv.weight.is_contiguous()


def test_fast_options_and_their_checks():
    assert fastpath.optimizer_options("adam", CPU, True) == {"fused": True, "foreach": None}
    assert fastpath.optimizer_options("adadelta", CPU, True) == {"foreach": True}
    assert fastpath.optimizer_options("sgd", CPU, False) == {"fused": None, "foreach": None}
    assert not fastpath.use_channels_last(build_model("gtsrb_cnn", 4), CPU, False)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        fastpath.optimizer_options("rmsprop", CPU, True)
    with pytest.raises(TypeError, match="torch.device"):
        fastpath.optimizer_options("adam", "cpu", True)
    with pytest.raises(ValueError, match="fast must be True or False, got 1"):
        TrainConfig(epochs=1, batch_size=1, optimizer="adam", lr=1e-3, fast=1)
    cfg = TrainConfig(epochs=1, batch_size=1, optimizer="adam", lr=1e-3)
    assert cfg._identity() == cfg.replace(fast=False)._identity()
    model = torch.nn.Linear(2, 2)
    assert make_optimizer(model.parameters(), cfg, CPU).param_groups[0]["fused"] is True
    assert not make_optimizer(model.parameters(), cfg).param_groups[0]["fused"]  # no device: PyTorch's default
    with pytest.raises(TypeError, match="TrainConfig"):
        make_optimizer(model.parameters(), {"optimizer": "adam"})


# A child process that runs training steps of the GTSRB CNN (1 thread, batch 32) and prints the
# page faults of the last two (argv[1] == "1": after retain_freed_memory(), whose answer it prints first).
_STEPS = """
import resource, sys, torch
torch.set_num_threads(1)
from backdoorlab import fastpath
from backdoorlab.models import build_model
print(fastpath.retain_freed_memory() if sys.argv[1] == "1" else None)
model = build_model("gtsrb_cnn", 10, seed=0).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
step(); step()
faults = []  # per step: the fewest is deaf to bursts of the kernel's own page work (e.g. NUMA sampling)
for _ in range(6):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(min(faults))
"""


def _step_faults(retain: bool, **env) -> tuple[str, int]:
    root = Path(__file__).resolve().parents[1]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    run_env.update(PYTHONPATH=os.pathsep.join([str(root / "pytools"), str(root), os.environ.get("PYTHONPATH", "")]), **env)
    out = subprocess.run([sys.executable, "-c", _STEPS, "1" if retain else "0"], env=run_env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_retained_memory_spares_the_page_faults_of_each_step():
    """Without the setting glibc hands a step's freed activations back to the kernel and the next step
    faults them in again (measured: 2k-6k faults a step); with it they are reused (measured: 0 in most
    steps, some with a few hundred to ~1.8k from other causes, hence the fewest of six steps)."""
    default_said, default_faults = _step_faults(False)
    said, faults = _step_faults(True)
    assert (default_said, said) == ("None", "True")
    assert default_faults > 1000, default_faults
    assert faults < default_faults / 4, (faults, default_faults)
    # a user's own malloc settings win: the call then changes nothing and says so
    assert _step_faults(True, MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"


def test_bench_train_reports_the_fast_path_ratio_and_sgemm_share(tmp_path, capsys):
    from backdoorlab.bench.train import run

    out = tmp_path / "bench.json"
    assert run(["--n-train", "20", "--rounds", "1", "--skip-stream", "--plain", "--mixed", "--threads", "1",
                "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["images_per_s"]) == {"bare/memory", "trainer/memory", "trainer/plain", "trainer/memory+mixed"}
    # forward + backward of the GTSRB CNN at 32x32, counted: ~147 MFLOP per image
    assert 0.1 < result["train_gflop_per_image"] < 0.2
    assert result["sgemm_gflops"] > 0
    for key, ips in result["images_per_s"].items():
        share = result["share_of_sgemm"][key]
        assert share == pytest.approx(ips * result["train_gflop_per_image"] / result["sgemm_gflops"], rel=0.01, abs=1e-3)
    printed = capsys.readouterr().out
    assert "fast path: trainer/memory / trainer/plain" in printed
    assert "mixed precision: trainer/memory+mixed / trainer/memory" in printed
    with pytest.raises(ValueError, match="--rounds"):
        run(["--rounds", "0"])
