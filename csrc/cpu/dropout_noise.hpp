// Dropout noise drawn exactly as PyTorch's CPU generator draws it (the serial bernoulli_ path),
// from a copy of that generator's state: the same mask and the same state afterwards, several
// times faster. Used by backdoorlab.dropout_noise, which checks once per process that the two
// agree before using it.
#pragma once

#include <cstdint>

namespace backdoorlab {

// Bytes of PyTorch's CPU generator state (torch.get_rng_state(): the legacy pod + the float
// normal cache); the offsets of the fields read are in dropout_noise.cpp.
constexpr std::int64_t TORCH_CPU_RNG_STATE_BYTES = 5056;

// Draws rows * row_len Bernoulli(keep) values in order and writes them as 0 or `scale`:
// draw j of row r goes to out[(r / interleave) * interleave * row_len + (r % interleave) + j * interleave].
// interleave = 1: out in draw order; interleave = C with rows = N * C, row_len = H * W: the draws
// in (N, C, H, W) order written to a (N, H, W, C) buffer (channels-last). Each draw takes two
// 32-bit outputs of the generator's mt19937 as one 64-bit word, its low 53 bits u, and keeps the
// unit when u * 2^-53 < keep. `state` is updated in place. Throws std::invalid_argument for a
// state that is not a seeded mt19937 (bad size, counters or words) or keep outside [0, 1].
void dropout_noise(std::uint8_t* state, std::int64_t state_bytes, double keep, float scale, std::int64_t rows,
                   std::int64_t row_len, std::int64_t interleave, float* out);

}  // namespace backdoorlab
