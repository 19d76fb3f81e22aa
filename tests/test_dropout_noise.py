"""Dropout noise drawn natively (backdoorlab.dropout_noise, _core._dropout_noise) against its references.

The kernel is checked against NumPy's own MT19937 (the same engine, a separate implementation) on
every CPU; the end-to-end equality with PyTorch's ``bernoulli_`` holds only where PyTorch draws
serially from its mt19937 (not where it uses MKL's generator on an Intel CPU): there
:func:`available` must be True and the noise, the RNG state after it and a dropout layer's output
must be PyTorch's bit for bit; elsewhere :func:`available` must be False and the layer must fall back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backdoorlab import dropout_noise, native
from backdoorlab.models.base import Dropout

core = native._core
STATE_BYTES = 5056
OFF_LEFT, OFF_NEXT, OFF_WORDS = 8, 16, 24


def _fields(state: np.ndarray) -> tuple[np.ndarray, int, int]:
    words = state[OFF_WORDS:OFF_WORDS + 624 * 8].view(np.uint64).astype(np.uint32)
    return words, int(state[OFF_LEFT:OFF_LEFT + 4].view(np.int32)[0]), int(state[OFF_NEXT:OFF_NEXT + 8].view(np.uint64)[0])


def _numpy_reference(state: np.ndarray, n: int, keep: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """n draws by NumPy's MT19937 from the same state: (kept, words after, left after, next after).

    ATen's engine has ``left - 1`` words left before its next refill, starting at ``next``; NumPy's
    ``pos`` is the index of its next word (624: refill first), so ``pos = 625 - left``.
    """
    words, left, _ = _fields(state)
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": words.copy(), "pos": 625 - left}}
    raw = bg.random_raw(2 * n).astype(np.uint64)
    u = ((raw[0::2] << np.uint64(32)) | raw[1::2]) & np.uint64((1 << 53) - 1)
    kept = u.astype(np.float64) * 2.0 ** -53 < keep  # exact: u < 2^53 is a double, the scaling a power of 2
    after = bg.state["state"]
    return kept, np.asarray(after["key"], dtype=np.uint32), 625 - after["pos"], after["pos"]


@pytest.mark.parametrize("seed, warm, n, keep", [(0, 0, 1, 0.8), (1, 7, 311, 0.5), (2, 620, 5000, 0.9),
                                                 (3, 3, 2000, 0.0), (4, 100, 700, 1.0)])
def test_kernel_matches_numpy_mt19937(seed, warm, n, keep):
    """Draws across refills, from a fresh and an advanced state; 0 / scale values and the state after."""
    torch.manual_seed(seed)
    torch.rand(warm)  # advance the generator by `warm` 32-bit outputs (float rand takes one each)
    state = torch.get_rng_state().numpy().copy()
    kept, words_after, left_after, next_after = _numpy_reference(state, n, keep)
    out = np.full(n, np.nan, np.float32)
    core._dropout_noise(state, out, keep, 2.5, False)
    np.testing.assert_array_equal(out, np.where(kept, np.float32(2.5), np.float32(0.0)))
    words, left, nxt = _fields(state)
    np.testing.assert_array_equal(words, words_after)
    assert (left, nxt) == (left_after, next_after)


def test_kernel_channels_last_is_the_logical_draw_transposed():
    state = torch.get_rng_state().numpy().copy()
    flat_state = state.copy()
    N, C, H, W = 3, 5, 4, 7
    logical = np.empty((N, C, H, W), np.float32)
    core._dropout_noise(flat_state, logical, 0.7, 1.0, False)
    nhwc = np.empty((N, H, W, C), np.float32)
    core._dropout_noise(state, nhwc, 0.7, 1.0, True)
    np.testing.assert_array_equal(nhwc, logical.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(state, flat_state)


def test_kernel_rejects_bad_input():
    good = torch.get_rng_state().numpy().copy()
    out = np.empty(10, np.float32)
    with pytest.raises(ValueError, match="5056"):
        core._dropout_noise(good[:-8].copy(), out, 0.5, 2.0, False)
    bad = good.copy()
    bad[OFF_LEFT:OFF_LEFT + 4] = np.array([0], np.int32).view(np.uint8)
    with pytest.raises(ValueError, match="left=0"):
        core._dropout_noise(bad, out, 0.5, 2.0, False)
    bad = good.copy()
    bad[OFF_WORDS + 8 * 5 + 4] = 1  # a word above 32 bits
    with pytest.raises(ValueError, match="word 5"):
        core._dropout_noise(bad, out, 0.5, 2.0, False)
    for keep in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep probability"):
            core._dropout_noise(good.copy(), out, keep, 2.0, False)
    with pytest.raises(ValueError, match="out must be 4-D"):
        core._dropout_noise(good.copy(), out, 0.5, 2.0, True)
    with pytest.raises(TypeError):
        core._dropout_noise(good.copy(), out.astype(np.float64), 0.5, 2.0, False)
    frozen = good.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        core._dropout_noise(frozen, out, 0.5, 2.0, False)
    np.testing.assert_array_equal(good, torch.get_rng_state().numpy())  # nothing here touched the generator


def _torch_serial_path() -> bool:
    """Whether this PyTorch draws CPU bernoulli_ from its mt19937 (the NumPy engine agrees with it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        state = torch.get_rng_state().numpy().copy()
        got = torch.empty(1000).bernoulli_(0.6).numpy().astype(bool)
    return bool(np.array_equal(got, _numpy_reference(state, 1000, 0.6)[0]))


def test_available_says_whether_torch_draws_serially():
    assert dropout_noise.available() == _torch_serial_path()


@pytest.mark.parametrize("shape, p, channels_last", [((32, 32, 15, 15), 0.2, True), ((32, 64, 6, 6), 0.2, False),
                                                     ((32, 512), 0.5, False), ((2, 3, 1, 1), 0.3, True)])
def test_dropout_layer_is_pytorch_dropout_bit_for_bit(shape, p, channels_last):
    if not dropout_noise.available():
        pytest.skip("this PyTorch does not draw CPU dropout noise from its mt19937 (MKL on Intel): torch draws it")
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer = Dropout(p).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        want = torch.nn.functional.dropout(x.contiguous(), p, training=True)
        want_state = torch.get_rng_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        noise = dropout_noise.noise(x, p)
        assert noise is not None and noise.stride() == x.stride()
        torch.manual_seed(5)
        got = layer(x)
        got_state = torch.get_rng_state()
    assert torch.equal(got, want) and got.stride() == x.stride()
    assert torch.equal(got_state, want_state)


def test_noise_declines_what_torch_must_draw():
    x = torch.randn(4, 3, 5, 5)
    assert dropout_noise.noise(x.double(), 0.5) is None
    assert dropout_noise.noise(x, 0.0) is None and dropout_noise.noise(x, 1.0) is None
    assert dropout_noise.noise(x.transpose(2, 3), 0.5) is None  # neither contiguous nor channels-last
    assert dropout_noise.noise(x.to(torch.bfloat16), 0.5) is None
