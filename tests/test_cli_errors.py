"""The CLI's error boundary: every expected failure is one line on stderr naming the file and the
problem, with exit status 2; a bug keeps its traceback.

Each test is a reproducer from the fault campaign of issue #16 (items 3, 6, 7): truncated, empty,
foreign and corrupt variants, swapped --data/--model, a missing GPU, an impossible image size, a
YAML error, an out-of-range seed, a bad study config, --resume without a checkpoint, and a missing
output folder. Inputs are tiny: a toy variant and an untrained checkpoint.
"""

from __future__ import annotations

import shutil

import h5py
import pytest
import torch

from backdoorlab.cli import main


def _one_line_error(capsys, code, command: str) -> str:
    """Assert the boundary's contract (exit 2, one line, no traceback) and return the line."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"backdoorlab {command}: error: ")
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from backdoorlab import checkpoint
    from backdoorlab.models import build_model
    from datasets_gen.toy import make_toy_variant

    d = tmp_path_factory.mktemp("cli-errors")
    data = make_toy_variant(d / "toy.h5", n_classes=3, n_train_per_class=8, n_test_per_class=3,
                            n_clean_per_class=2)
    model = d / "m.pt"
    checkpoint.save(model, build_model("gtsrb_cnn", 3, seed=0), {"seed": 0})
    return {"dir": d, "data": data, "model": model}


def _copy(files, name):
    out = files["dir"] / name
    shutil.copy(files["data"], out)
    return out


def _corrupt_first_chunk(path, split: str) -> None:
    """Overwrite the middle third of the first compressed chunk of ``split/images``."""
    with h5py.File(path, "r") as f:
        info = f[split]["images"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(b"\0" * (info.size // 3))


# -- evaluate: broken or wrong input files


def test_truncated_variant_names_the_file(files, capsys):
    bad = files["dir"] / "truncated.h5"
    bad.write_bytes(files["data"].read_bytes()[:5000])
    code = main(["evaluate", "--data", str(bad), "--model", str(files["model"]), "--no-progress"])
    err = _one_line_error(capsys, code, "evaluate")
    assert str(bad) in err and "truncated" in err


def test_empty_variant(files, capsys):
    bad = files["dir"] / "empty.h5"
    bad.write_bytes(b"")
    code = main(["evaluate", "--data", str(bad), "--model", str(files["model"]), "--no-progress"])
    err = _one_line_error(capsys, code, "evaluate")
    assert str(bad) in err and "empty" in err


def test_non_hdf5_variant(files, capsys):
    bad = files["dir"] / "text.h5"
    bad.write_text("not a variant\n")
    code = main(["evaluate", "--data", str(bad), "--model", str(files["model"]), "--no-progress"])
    err = _one_line_error(capsys, code, "evaluate")
    assert str(bad) in err and "not a readable HDF5 file" in err


def test_swapped_data_and_model(files, capsys):
    code = main(["evaluate", "--data", str(files["model"]), "--model", str(files["data"]), "--no-progress"])
    err = _one_line_error(capsys, code, "evaluate")
    assert str(files["model"]) in err and "not an HDF5 variant; were --data and --model swapped?" in err


def test_variant_given_as_model(files, capsys):
    # both arguments name the variant: the checkpoint reader names the file and its kind
    code = main(["evaluate", "--data", str(files["data"]), "--model", str(files["data"]), "--no-progress"])
    err = _one_line_error(capsys, code, "evaluate")
    assert str(files["data"]) in err and "is an HDF5 file (a data-set variant?), not a checkpoint" in err


def _read_argv(command, data, files, out_name):
    """``evaluate`` or one-epoch ``train`` arguments that read the variant ``data``."""
    if command == "evaluate":
        return ["evaluate", "--data", str(data), "--model", str(files["model"]), "--no-progress"]
    return ["train", "--data", str(data), "--model", "gtsrb_cnn", "--epochs", "1",
            "--out", str(files["dir"] / out_name), "--overwrite", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_corrupt_image_chunk_names_the_file(files, capsys, command):
    bad = _copy(files, f"chunk-{command}.h5")
    _corrupt_first_chunk(bad, "test" if command == "evaluate" else "train")
    err = _one_line_error(capsys, main(_read_argv(command, bad, files, "chunk.pt")), command)
    assert str(bad) in err and "read data" in err and "the file is corrupt" in err


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_corrupt_attribute_is_one_line(files, capsys, command):
    bad = _copy(files, f"attr-{command}.h5")
    with h5py.File(bad, "r+") as f:
        f.attrs["n_classes"] = "many"
    err = _one_line_error(capsys, main(_read_argv(command, bad, files, "attr.pt")), command)
    assert "many" in err


# -- devices, memory, seeds, config files


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_a_gpu(files, capsys):
    out = files["dir"] / "cuda.pt"
    code = main(["train", "--data", str(files["data"]), "--model", "gtsrb_cnn", "--epochs", "1",
                 "--out", str(out), "--device", "cuda", "--no-progress"])
    err = _one_line_error(capsys, code, "train")
    assert "'cuda' requested but CUDA is unavailable" in err
    assert not out.exists()


def test_impossible_image_size_is_out_of_memory(tmp_path, capsys):
    # 10^6 x 10^6 pixels (the campaign used 10^5, which a machine with 150 GiB free could try to fill)
    code = main(["poison", "--preset", "gtsrb-ours-yellow-square-7", "--out", str(tmp_path / "v.h5"),
                 "--image-size", "1000000x1000000", "--limit-per-class", "1", "--no-progress"])
    err = _one_line_error(capsys, code, "poison")
    assert "out of memory" in err
    assert not (tmp_path / "v.h5").exists()


@pytest.mark.parametrize("command", ["poison", "train", "defend", "reproduce"])
def test_seed_beyond_64_bits_is_refused_by_the_parser(files, capsys, command):
    argv = {"poison": ["poison", "--preset", "gtsrb-ours-yellow-square-7", "--out", str(files["dir"] / "s.h5")],
            "train": ["train", "--data", str(files["data"]), "--model", "gtsrb_cnn", "--out", str(files["dir"] / "s.pt")],
            "defend": ["defend", "--data", str(files["data"]), "--model", str(files["model"]),
                       "--report", str(files["dir"] / "r.json")],
            "reproduce": ["reproduce", "--out", str(files["dir"] / "res")]}[command]
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--seed", str(2**70)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --seed: the seed must be in [0, 2**64 - 1], got {2**70}" in err
    assert "dtype" not in err  # not the HDF5 error it used to end in


def test_seed_at_the_top_of_the_range_is_accepted():
    from backdoorlab.cli import build_parser

    args = build_parser().parse_args(["reproduce", "--seed", str(2**64 - 1)])
    assert args.seed == 2**64 - 1


def test_defend_config_with_a_yaml_error(files, capsys):
    bad = files["dir"] / "bad.yaml"
    bad.write_text("fp: {threshold: [\n")
    code = main(["defend", "--data", str(files["data"]), "--model", str(files["model"]), "--config", str(bad),
                 "--report", str(files["dir"] / "r.json"), "--no-progress"])
    err = _one_line_error(capsys, code, "defend")
    assert f"cannot parse YAML config {bad}" in err


def test_reproduce_refuses_a_bad_study_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[datasets.gtsrb]\nsource = "synth"\ntrain = { preset = "gtsrb", batch_size = 0 }\n'
                   '[[settings]]\npreset = "gtsrb-ours-yellow-square-7"\nshare = 0.07\n')
    out = tmp_path / "results"
    code = main(["reproduce", "--config", str(cfg), "--out", str(out), "--no-progress"])
    err = _one_line_error(capsys, code, "reproduce")
    assert "datasets.gtsrb.train" in err and "batch_size" in err
    assert not out.exists(), "nothing may be built for a config that cannot run"


# -- train --resume, poison's output folder


def test_resume_without_a_checkpoint_says_it_starts_fresh(files, capsys):
    out = files["dir"] / "fresh.pt"
    code = main(["train", "--data", str(files["data"]), "--model", "gtsrb_cnn", "--epochs", "1", "--out", str(out),
                 "--resume", "--no-progress", "--device", "cpu"])
    assert code == 0
    assert f"no checkpoint at {out} yet, training starts at epoch 1" in capsys.readouterr().err
    assert out.is_file()


def test_poison_creates_a_missing_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "v.h5"
    code = main(["poison", "--preset", "gtsrb-ours-yellow-square-7", "--out", str(out), "--limit-per-class", "1",
                 "--no-progress", "--no-preview"])
    assert code == 0, capsys.readouterr().err
    assert out.is_file()


# -- the rule itself: bugs keep their traceback; --debug shows it for expected failures too


def test_a_bug_is_not_hidden(monkeypatch, tmp_path):
    import backdoorlab.cli.evaluate as evaluate_cli

    def broken(args):
        raise RuntimeError("internal invariant broken")

    monkeypatch.setattr(evaluate_cli, "run", broken)
    data, model = tmp_path / "v.h5", tmp_path / "m.pt"  # files of the right kinds pass the input checks
    with h5py.File(data, "w"):
        pass
    torch.save({}, model)
    with pytest.raises(RuntimeError, match="internal invariant broken"):
        main(["evaluate", "--data", str(data), "--model", str(model)])


def test_debug_switch_shows_the_traceback(files, monkeypatch):
    argv = ["evaluate", "--data", str(files["dir"] / "none.h5"), "--model", str(files["model"])]
    with pytest.raises(FileNotFoundError):
        main(["--debug", *argv])
    monkeypatch.setenv("BACKDOORLAB_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


def test_native_cuda_without_a_cuda_build_is_an_expected_failure():
    """The native core's missing-CUDA error is the devices' type, so the CLI prints it in one line."""
    import numpy as np

    from backdoorlab import native
    from backdoorlab.cli import error_line
    from backdoorlab.errors import DeviceUnavailableError

    if native.build_info()["cuda"]:
        pytest.skip("a usable CUDA build is present")
    with pytest.raises(DeviceUnavailableError, match="device='cuda' is not available") as info:
        native.pca(np.zeros((4, 3), np.float32), np.array([0, 4]), n_components=2, device="cuda")
    from backdoorlab.cli import _expected

    assert _expected(info.value) and "\n" not in error_line(info.value)
