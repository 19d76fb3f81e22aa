"""Integrity of what is read and published (issue #16, items 3-5): variants are checked against
their manifests (through the checksum cache), checkpoints against their own digest and for finite
weights, damaged or mistaken files end in one line naming the file, and a variant is published with
its sidecars as one set. Every corrupt file here is made from a good one by the damage a user meets:
an edit after publishing, flipped bytes, a cut-off copy, a wrong dtype, swapped arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import datasets_gen.variant_io as vio
from backdoorlab import checkpoint
from backdoorlab.checkpoint import UnverifiedCheckpointWarning
from backdoorlab.cli import main
from backdoorlab.data import H5Split, UnverifiedDataWarning, open_variant
from backdoorlab.models import build_model

from _model_helpers import toy_variant


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A published toy variant (with manifest) and an untrained 4-class checkpoint for it."""
    root = tmp_path_factory.mktemp("good")
    variant = toy_variant(root / "v.h5")
    model = checkpoint.save(root / "m.pt", build_model("gtsrb_cnn", 4, seed=0), {"seed": 0})
    return variant, model


def copy_variant(src: Path, dst: Path, *, manifest: bool = True) -> Path:
    shutil.copyfile(src, dst)
    if manifest:
        shutil.copyfile(vio.sidecar_paths(src)["manifest"], vio.sidecar_paths(dst)["manifest"])
    return dst


def flip_bytes(path: Path, offset: int, n: int) -> None:
    """XOR ``n`` bytes from ``offset`` in place: same size, other content."""
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def image_chunk(path: Path, split: str = "test") -> tuple[int, int]:
    """(byte offset, size) of the first stored chunk of ``split/images``."""
    with h5py.File(path, "r") as f:
        info = f[split]["images"].id.get_chunk_info(0)
    return info.byte_offset, info.size


def largest_tensor_bytes(path: Path) -> tuple[int, int]:
    """(offset, size) of the raw bytes of the largest stored tensor in a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])


def cli_argv(command: str, data: Path, model: Path, out: Path) -> list[str]:
    """The same data/model pair through each subcommand that opens them."""
    if command == "train":
        # train opens a checkpoint only to resume it; --model is the architecture there
        return ["train", "--data", str(data), "--model", "gtsrb_cnn", "--out", str(model), "--resume",
                "--epochs", "1", "--no-progress"]
    if command == "evaluate":
        return ["evaluate", "--data", str(data), "--model", str(model), "--no-progress"]
    return ["defend", "--data", str(data), "--model", str(model), "--pipeline", "fp", "--report",
            str(out / "report.json"), "--no-progress"]


# -------------------------------------------------------- tampered files, refused by all three


@pytest.mark.parametrize("command", ["train", "evaluate", "defend"])
def test_variant_edited_after_publishing_is_refused(good, tmp_path, capsys, command):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "edited.h5")
    with h5py.File(bad, "r+") as f:  # 30 labels changed after publishing (the fault campaign's case)
        f["train/labels"][:30] = (f["train/labels"][:30] + 1) % 4
    ckpt = shutil.copyfile(model, tmp_path / "m.pt")
    code, err = run_cli(cli_argv(command, bad, ckpt, tmp_path), capsys)
    assert_one_line_error(code, err, "edited.h5", "manifest")
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "defend"])
def test_variant_with_flipped_bytes_is_refused_by_its_sha256(good, tmp_path, capsys, command):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "flipped.h5")
    offset, _ = image_chunk(bad, "train")
    flip_bytes(bad, offset + 10, 16)  # same size: only the digest can tell
    ckpt = shutil.copyfile(model, tmp_path / "m.pt")
    code, err = run_cli(cli_argv(command, bad, ckpt, tmp_path), capsys)
    assert_one_line_error(code, err, "flipped.h5", "SHA-256")


@pytest.mark.parametrize("command", ["train", "evaluate", "defend"])
def test_checkpoint_with_flipped_bytes_is_refused(good, tmp_path, capsys, command):
    variant, model = good
    bad = shutil.copyfile(model, tmp_path / "flipped.pt")
    offset, size = largest_tensor_bytes(bad)
    flip_bytes(bad, offset + size // 2, 200)  # inside one weight tensor: torch.load reads it happily
    torch.load(bad, weights_only=True)  # (the damage is invisible to torch itself)
    code, err = run_cli(cli_argv(command, variant, bad, tmp_path), capsys)
    assert_one_line_error(code, err, "flipped.pt", "SHA-256")


def test_no_verify_skips_only_the_variant_checksum(good, tmp_path, capsys):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "edited.h5")
    with h5py.File(bad, "r+") as f:
        f.attrs["seed"] = 99  # a harmless edit: still a valid variant, no longer the published one
    json_out = tmp_path / "metrics.json"
    code = main(["evaluate", "--data", str(bad), "--model", str(model), "--no-verify", "--json", str(json_out),
                 "--no-progress"])
    assert code == 0
    assert json.loads(json_out.read_text())["data_check"] == {"sha256": None, "verified": False, "check": "skipped"}
    flipped = shutil.copyfile(model, tmp_path / "flipped.pt")
    offset, size = largest_tensor_bytes(flipped)
    flip_bytes(flipped, offset + size // 2, 8)
    code, err = run_cli(["evaluate", "--data", str(bad), "--model", str(flipped), "--no-verify", "--no-progress"],
                        capsys)
    assert_one_line_error(code, err, "flipped.pt")


def test_verified_checks_are_recorded(good, tmp_path):
    variant, model = good
    json_out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(variant), "--model", str(model), "--json", str(json_out),
                 "--no-progress"]) == 0
    manifest = json.loads(vio.sidecar_paths(variant)["manifest"].read_text())
    assert json.loads(json_out.read_text())["data_check"] == {
        "sha256": manifest["sha256"], "verified": True, "check": "manifest"}


# ------------------------------------------------------------- damaged or mistaken variants


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.write_bytes(p.read_bytes()[:5000]), "is truncated: 5000 bytes"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("label,image\n1,a.png\n"), "not a readable HDF5 file"),
])
def test_damaged_variant_without_manifest_is_one_line(good, tmp_path, capsys, damage, expected):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "bad.h5", manifest=False)
    damage(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedDataWarning)
        code, err = run_cli(["evaluate", "--data", str(bad), "--model", str(model), "--no-progress"], capsys)
    assert_one_line_error(code, err, "bad.h5", expected)


def test_truncated_variant_with_manifest_names_the_sizes(good, tmp_path, capsys):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "cut.h5")
    bad.write_bytes(bad.read_bytes()[:-1000])
    code, err = run_cli(["evaluate", "--data", str(bad), "--model", str(model), "--no-progress"], capsys)
    assert_one_line_error(code, err, "cut.h5", f"{bad.stat().st_size} bytes", "truncated")


def test_swapped_data_and_model_are_named(good, capsys):
    variant, model = good
    code, err = run_cli(["evaluate", "--data", str(model), "--model", str(variant), "--no-progress"], capsys)
    assert_one_line_error(code, err, model.name, "swapped")
    # only the model swapped: the variant given as checkpoint is recognised too
    code, err = run_cli(["evaluate", "--data", str(variant), "--model", str(variant), "--no-progress"], capsys)
    assert_one_line_error(code, err, variant.name, "HDF5 file", "swapped")


def _rewrite(path: Path, name: str, values) -> None:
    with h5py.File(path, "r+") as f:
        del f[name]
        f[name] = values


@pytest.mark.parametrize("field, values, expected", [
    ("train/labels", lambda n: np.arange(n, dtype=np.float64) % 4, "train/labels has dtype float64"),
    ("test/labels", lambda n: np.array([b"%d" % (i % 4) for i in range(n)]), "test/labels has dtype |S1"),
    ("train/is_poisoned", lambda n: np.zeros(n, np.int64), "train/is_poisoned has dtype int64; it must be bool"),
])
def test_row_fields_of_the_wrong_kind_are_refused(good, tmp_path, field, values, expected):
    variant, _ = good
    bad = copy_variant(variant, tmp_path / "dtype.h5", manifest=False)
    with h5py.File(bad, "r") as f:
        n = f[field].shape[0]
    _rewrite(bad, field, values(n))
    with pytest.raises(ValueError, match=expected.replace("|", r"\|")) as exc:
        H5Split(bad, field.split("/")[0])
    assert "dtype.h5" in str(exc.value)


def test_class_names_must_match_the_class_count(good, tmp_path, capsys):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "names.h5", manifest=False)
    with h5py.File(bad, "r+") as f:
        f.attrs["class_names"] = json.dumps(["a", "b"])
    with pytest.raises(ValueError, match=r"names\.h5.*class_names must be 4 strings"):
        H5Split(bad, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedDataWarning)
        code, err = run_cli(["evaluate", "--data", str(bad), "--model", str(model), "--no-progress"], capsys)
    assert_one_line_error(code, err, "names.h5", "class_names")


def test_class_count_of_variant_and_model_must_agree(good, tmp_path, capsys):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "k1000.h5", manifest=False)
    with h5py.File(bad, "r+") as f:  # consistent in itself: 1000 classes, 1000 names
        f.attrs["n_classes"] = 1000
        f.attrs["class_names"] = json.dumps([f"c{i}" for i in range(1000)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedDataWarning)
        code, err = run_cli(["evaluate", "--data", str(bad), "--model", str(model), "--no-progress"], capsys)
    assert_one_line_error(code, err, "k1000.h5", "1000 classes", "model has 4")


def test_corrupt_attribute_and_image_chunk_are_named(good, tmp_path, capsys):
    variant, model = good
    bad = copy_variant(variant, tmp_path / "attr.h5", manifest=False)
    with h5py.File(bad, "r+") as f:
        f.attrs["recipe"] = '{"share": 0.5,'
    with pytest.raises(ValueError, match=r"attr\.h5.*attribute 'recipe' is not valid JSON"):
        H5Split(bad, "test")
    bad = copy_variant(variant, tmp_path / "chunk.h5", manifest=False)
    offset, size = image_chunk(bad, "test")
    flip_bytes(bad, offset + size // 2, 64)  # the gzip stream of one chunk no longer inflates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedDataWarning)
        code, err = run_cli(["evaluate", "--data", str(bad), "--model", str(model), "--no-progress"], capsys)
    assert_one_line_error(code, err, "chunk.h5", "test/images rows", "corrupt")


def test_variant_without_manifest_is_used_with_a_warning(good, tmp_path):
    variant, _ = good
    plain = copy_variant(variant, tmp_path / "plain.h5", manifest=False)
    with pytest.warns(UnverifiedDataWarning, match=r"plain\.h5.*no manifest"):
        splits = open_variant(plain, ("test",))
    assert splits["test"].verification == {"sha256": None, "verified": False, "check": "no manifest"}
    assert splits["test"].subset([0, 1]).verification == splits["test"].verification


# ---------------------------------------------------------------------------- checkpoints


def test_all_nan_checkpoint_is_refused(good, tmp_path, capsys):
    variant, _ = good
    model = build_model("gtsrb_cnn", 4, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = checkpoint.save(tmp_path / "nan.pt", model, {})  # its digest is right: the weights are not
    with pytest.raises(ValueError, match=r"nan\.pt.*non-finite weights"):
        checkpoint.load(path)
    code, err = run_cli(["evaluate", "--data", str(variant), "--model", str(path), "--no-progress"], capsys)
    assert_one_line_error(code, err, "nan.pt", "non-finite")


def test_checkpoint_without_digest_loads_with_a_warning_and_is_still_checked(good, tmp_path):
    _, model_path = good
    payload = torch.load(model_path, weights_only=True)
    del payload["sha256"]  # as written before checkpoints carried one
    torch.save(payload, tmp_path / "old.pt")
    with pytest.warns(UnverifiedCheckpointWarning, match=r"old\.pt.*no checksum"):
        model, _ = checkpoint.load(tmp_path / "old.pt")
    assert model.n_classes == 4
    payload["state_dict"] = {k: torch.full_like(v, float("inf")) if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "old-inf.pt")
    with pytest.warns(UnverifiedCheckpointWarning), pytest.raises(ValueError, match="non-finite"):
        checkpoint.load(tmp_path / "old-inf.pt")


def test_checkpoint_digest_covers_meta_and_train_state(good, tmp_path):
    _, model_path = good
    payload = torch.load(model_path, weights_only=True)
    assert payload["sha256"] == checkpoint.payload_sha256(payload)
    for key, change in (("meta", {"seed": 1}), ("model", {**payload["model"], "input_norm": "per_image"}),
                        ("train_state", {"epoch": 3})):
        altered = {**payload, key: change}
        torch.save(altered, tmp_path / f"{key}.pt")
        with pytest.raises(ValueError, match="altered after writing"):
            checkpoint.load(tmp_path / f"{key}.pt")


# ----------------------------------------------------------------------------- checksum cache


def test_cache_hashes_once_and_notices_a_change_that_keeps_size_and_mtime(good, tmp_path, monkeypatch):
    variant, _ = good
    v = copy_variant(variant, tmp_path / "c.h5")
    sha, hit = vio.cached_sha256(v)
    assert not hit and sha == vio.sha256_file(v)
    calls = []
    real = vio.sha256_file
    monkeypatch.setattr(vio, "sha256_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert vio.cached_sha256(v) == (sha, True)
    assert vio.verify(v, cache=True) == sha and not calls, "a cache hit must not read the file"
    st = v.stat()
    offset, _ = image_chunk(v, "test")
    flip_bytes(v, offset + 5, 4)
    os.utime(v, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only the ctime moved
    with pytest.raises(vio.ChecksumError, match="SHA-256"):
        vio.verify(v, cache=True)
    assert calls, "the changed file must be hashed again"


def test_damaged_cache_entry_is_ignored_and_rewritten(good, tmp_path):
    variant, _ = good
    v = copy_variant(variant, tmp_path / "d.h5")
    sha, _ = vio.cached_sha256(v)
    entry = vio._cache_entry(v.resolve())
    entry.write_text('{"path": ')
    assert vio.cached_sha256(v) == (sha, False)
    assert vio.cached_sha256(v) == (sha, True)


def test_cache_entries_stay_whole_when_written_concurrently(good, tmp_path):
    variant, _ = good
    v = copy_variant(variant, tmp_path / "e.h5")
    sha = vio.sha256_file(v)
    entry = vio._cache_entry(v.resolve())
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer():
        try:
            for _ in range(50):
                vio.remember_sha256(v, sha)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader():
        while not stop.is_set():
            if entry.exists():
                try:  # os.replace swaps whole files: a reader sees the old entry or the new one
                    assert json.loads(entry.read_text())["sha256"] == sha
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=writer) for _ in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not errors, errors[:3]
    assert not list(entry.parent.glob(".entry-*")), "no writer's temporary may be left behind"
    assert vio.cached_sha256(v) == (sha, True)


def test_publishing_seeds_the_cache(tmp_path, monkeypatch):
    v = toy_variant(tmp_path / "fresh.h5")
    monkeypatch.setattr(vio, "sha256_file", lambda *a, **k: pytest.fail("published variant hashed again"))
    assert vio.cached_sha256(v)[1]


# ------------------------------------------------------------------------- atomic publishing


def _state(v: Path) -> str:
    """'absent' (no .h5), 'consistent' (the .h5 matches its manifest) or the mismatch."""
    if not v.exists():
        return "absent"
    try:
        vio.verify(v)
    except (ValueError, FileNotFoundError) as exc:
        return f"mismatch: {exc}"
    return "consistent"


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5])  # the manifest's own temporary, then the four moves
def test_publishing_interrupted_at_any_rename_never_leaves_a_mismatched_set(tmp_path, monkeypatch, fail_at):
    from datasets_gen.build import build_variant

    v = tmp_path / "v.h5"
    build_variant("gtsrb-ours-yellow-square-7", v, limit_per_class=2, progress=False)
    old_sha = json.loads(vio.sidecar_paths(v)["manifest"].read_text())["sha256"]
    real_replace = vio.os.replace
    calls = []

    def dying_replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # a kill at this rename
        return real_replace(src, dst)

    monkeypatch.setattr(vio.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        build_variant("gtsrb-ours-yellow-square-7", v, seed=1, limit_per_class=2, progress=False)
    monkeypatch.undo()
    state = _state(v)
    assert state in ("absent", "consistent"), (calls, state)
    if state == "consistent":  # only possible before anything of the new set was moved
        assert json.loads(vio.sidecar_paths(v)["manifest"].read_text())["sha256"] == old_sha
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name], "temporaries left behind"


def test_renames_put_the_h5_last(tmp_path, monkeypatch):
    from datasets_gen.build import build_variant

    names = []
    real_replace = vio.os.replace
    monkeypatch.setattr(vio.os, "replace", lambda s, d: names.append(Path(d).name) or real_replace(s, d))
    build_variant("gtsrb-ours-yellow-square-7", tmp_path / "v.h5", limit_per_class=2, progress=False)
    published = [n for n in names if n.startswith("v.") and not n.endswith(".tmp")]
    assert published == ["v.preview.png", "v.CARD.md", "v.manifest.json", "v.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.CARD.md", "v.h5", "v.manifest.json", "v.preview.png"]


def test_out_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import datasets_gen.build as build

    (tmp_path / "taken.h5").mkdir()
    monkeypatch.setattr(build, "resolve_source", lambda *a, **k: pytest.fail("work started"))
    code, err = run_cli(["poison", "--preset", "gtsrb-ours-yellow-square-7", "--out", str(tmp_path / "taken.h5"),
                         "--no-progress"], capsys)
    assert_one_line_error(code, err, "taken.h5", "directory")
    assert [p.name for p in tmp_path.iterdir()] == ["taken.h5"]
    (tmp_path / "other.CARD.md").mkdir()  # a sidecar name that cannot be replaced counts as well
    with pytest.raises(ValueError, match=r"other\.CARD\.md exists and is a directory"):
        vio.check_destination(tmp_path / "other.h5")


def test_republishing_removes_sidecars_the_new_set_lacks(tmp_path):
    from datasets_gen.build import build_variant

    v = tmp_path / "v.h5"
    build_variant("gtsrb-ours-yellow-square-7", v, limit_per_class=2, progress=False)
    build_variant("gtsrb-ours-yellow-square-7", v, seed=1, limit_per_class=2, progress=False, publish=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.h5", "v.manifest.json"]
    vio.verify(v)
    splits, attrs = {s: vio.read_split(v, s) for s in vio.SPLITS}, vio.read_attrs(v)
    vio.write_variant(v, splits, attrs, manifest=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.h5"], "an old manifest would describe another file"
