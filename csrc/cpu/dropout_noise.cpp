// Dropout noise as PyTorch draws it on the CPU, without its per-element cost.
//
// ATen's serial bernoulli_(p) (the path on CPUs where it does not use MKL) takes, for every
// element, a double uniform from two mt19937 outputs (random64: the first output is the high
// word, 53 low bits kept, times 2^-53) and keeps the element when it is below p. That is ~8 ns an
// element there (a locked generator and a TensorIterator call per element): 3 ms of a 36 ms GTSRB
// CNN training step. Here the same engine runs over a copy of the generator's state in blocks,
// at the CPU's SIMD level (simd/dropout_kernels.cpp: the refill and tempering on vectors), and the
// comparison in integers (u * 2^-53 < p  <=>  u < ceil(p * 2^53), exact because the scaling is by
// a power of two). This file checks and unpacks the state and packs it back.
#include "cpu/dropout_noise.hpp"

#include "cpu/simd.hpp"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace backdoorlab {
namespace {

using u32 = std::uint32_t;
using u64 = std::uint64_t;
using i64 = std::int64_t;

constexpr int MT_N = 624;
// Field offsets in the state bytes (CPUGeneratorImplStateLegacy: u64 seed, i32 left, i32 seeded,
// u64 next, u64 words[624], then the normal caches this kernel leaves alone).
constexpr i64 OFF_LEFT = 8, OFF_SEEDED = 12, OFF_NEXT = 16, OFF_WORDS = 24;

template <typename T>
T read_field(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void write_field(std::uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace

void dropout_noise(std::uint8_t* state, i64 state_bytes, double keep, float scale, i64 rows, i64 row_len,
                   i64 interleave, float* out) {
  if (state_bytes != TORCH_CPU_RNG_STATE_BYTES)
    throw std::invalid_argument("rng state has " + std::to_string(state_bytes) + " bytes, expected " +
                                std::to_string(TORCH_CPU_RNG_STATE_BYTES) + " (torch.get_rng_state() of the CPU generator)");
  if (!(keep >= 0.0 && keep <= 1.0)) throw std::invalid_argument("keep probability " + std::to_string(keep) + " is outside [0, 1]");
  if (rows < 0 || row_len < 0 || interleave < 1 || (rows % interleave) != 0)
    throw std::invalid_argument("bad noise layout: rows=" + std::to_string(rows) + ", row_len=" + std::to_string(row_len) +
                                ", interleave=" + std::to_string(interleave));
  i64 left = read_field<std::int32_t>(state + OFF_LEFT);
  i64 next = static_cast<i64>(read_field<u64>(state + OFF_NEXT));
  if (read_field<std::int32_t>(state + OFF_SEEDED) != 1 || left < 1 || left > MT_N || next < 0 || next > MT_N ||
      next + left - 1 > MT_N)
    throw std::invalid_argument("rng state is not a seeded mt19937 state (left=" + std::to_string(left) +
                                ", next=" + std::to_string(next) + ")");
  u32 words[MT_N];
  for (int i = 0; i < MT_N; ++i) {
    const u64 w = read_field<u64>(state + OFF_WORDS + 8 * i);
    if (w >> 32) throw std::invalid_argument("rng state word " + std::to_string(i) + " does not fit 32 bits");
    words[i] = static_cast<u32>(w);
  }
  // keep unit  <=>  u < threshold, u the 53 low bits of the draw (see the top of this file)
  const u64 threshold = static_cast<u64>(std::ceil(std::ldexp(keep, 53)));
  simd().dropout_fill(words, &left, &next, threshold, scale, rows, row_len, interleave, out);
  write_field<std::int32_t>(state + OFF_LEFT, static_cast<std::int32_t>(left));
  write_field<u64>(state + OFF_NEXT, static_cast<u64>(next));
  for (int i = 0; i < MT_N; ++i) write_field<u64>(state + OFF_WORDS + 8 * i, u64{words[i]});
}

}  // namespace backdoorlab
