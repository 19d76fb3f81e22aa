// Dropout noise as PyTorch draws it on the CPU, without its per-element cost.
//
// ATen's serial bernoulli_(p) (the path on CPUs where it does not use MKL) takes, for every
// element, a double uniform from two mt19937 outputs (random64: the first output is the high
// word, 53 low bits kept, times 2^-53) and keeps the element when it is below p. That is ~8 ns an
// element there (a locked generator and a TensorIterator call per element): 3 ms of a 36 ms GTSRB
// CNN training step. Here the same engine runs over a copy of the generator's state in blocks,
// the tempering in a plain loop the compiler vectorises, and the comparison in integers
// (u * 2^-53 < p  <=>  u < ceil(p * 2^53), exact because the scaling is by a power of two).
#include "cpu/dropout_noise.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace backdoorlab {
namespace {

using u32 = std::uint32_t;
using u64 = std::uint64_t;
using i64 = std::int64_t;

constexpr int MT_N = 624, MT_M = 397;
// Field offsets in the state bytes (CPUGeneratorImplStateLegacy: u64 seed, i32 left, i32 seeded,
// u64 next, u64 words[624], then the normal caches this kernel leaves alone).
constexpr i64 OFF_LEFT = 8, OFF_SEEDED = 12, OFF_NEXT = 16, OFF_WORDS = 24;

inline u32 twist(u32 u, u32 v) { return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u); }

struct Engine {
  u32 s[MT_N];
  i64 left, next;

  void next_state() {  // ATen's mt19937::next_state, i.e. the reference twist
    for (int i = 0; i < MT_N - MT_M; ++i) s[i] = s[i + MT_M] ^ twist(s[i], s[i + 1]);
    for (int i = MT_N - MT_M; i < MT_N - 1; ++i) s[i] = s[i + MT_M - MT_N] ^ twist(s[i], s[i + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ twist(s[MT_N - 1], s[0]);
    left = MT_N;
    next = 0;
  }

  // The next n outputs, as n calls of ATen's operator() would give them: each call counts `left`
  // down and twists when it reaches 0, then tempers state[next++].
  void fill(u32* out, i64 n) {
    while (n > 0) {
      const i64 k = std::min(n, left - 1);  // calls before the one that twists
      const u32* src = s + next;
      for (i64 i = 0; i < k; ++i) {
        u32 y = src[i];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        out[i] = y;
      }
      next += k;
      left -= k;
      out += k;
      n -= k;
      if (n > 0) {  // left == 1: this call twists, then reads word 0
        next_state();
        u32 y = s[next++];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        *out++ = y;
        --n;
      }
    }
  }
};

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
  Engine e;
  e.left = read_field<std::int32_t>(state + OFF_LEFT);
  e.next = static_cast<i64>(read_field<u64>(state + OFF_NEXT));
  if (read_field<std::int32_t>(state + OFF_SEEDED) != 1 || e.left < 1 || e.left > MT_N || e.next < 0 || e.next > MT_N ||
      e.next + e.left - 1 > MT_N)
    throw std::invalid_argument("rng state is not a seeded mt19937 state (left=" + std::to_string(e.left) +
                                ", next=" + std::to_string(e.next) + ")");
  for (int i = 0; i < MT_N; ++i) {
    const u64 w = read_field<u64>(state + OFF_WORDS + 8 * i);
    if (w >> 32) throw std::invalid_argument("rng state word " + std::to_string(i) + " does not fit 32 bits");
    e.s[i] = static_cast<u32>(w);
  }

  // keep unit  <=>  u < threshold, u the 53 low bits of the draw (see the top of this file)
  const double scaled = std::ldexp(keep, 53);
  const u64 threshold = static_cast<u64>(std::ceil(scaled));
  constexpr u64 MASK53 = (u64{1} << 53) - 1;
  u32 scale_bits;
  std::memcpy(&scale_bits, &scale, sizeof scale_bits);
  constexpr i64 BLOCK = 1024;  // draws per generator block
  u32 words[2 * BLOCK];
  const i64 plane = interleave * row_len;
  for (i64 r = 0; r < rows; ++r) {
    float* base = out + (r / interleave) * plane + (r % interleave);
    for (i64 j0 = 0; j0 < row_len; j0 += BLOCK) {
      const i64 cnt = std::min(BLOCK, row_len - j0);
      e.fill(words, 2 * cnt);
      float* o = base + j0 * interleave;
      // select by bit mask, not a branch: the branch on a random draw mispredicted ~p of the time
      for (i64 j = 0; j < cnt; ++j) {
        const u64 u = ((u64{words[2 * j]} << 32) | words[2 * j + 1]) & MASK53;
        const u32 bits = scale_bits & (0u - static_cast<u32>(u < threshold));
        std::memcpy(o + j * interleave, &bits, sizeof bits);
      }
    }
  }
  write_field<std::int32_t>(state + OFF_LEFT, static_cast<std::int32_t>(e.left));
  write_field<u64>(state + OFF_NEXT, static_cast<u64>(e.next));
  for (int i = 0; i < MT_N; ++i) write_field<u64>(state + OFF_WORDS + 8 * i, u64{e.s[i]});
}

}  // namespace backdoorlab
