// The draw loop of dropout noise (cpu/dropout_noise.cpp), compiled once per SIMD level: the
// mt19937 refill and tempering, and the 53-bit comparison, run on the level's vectors.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/simd/level.hpp"
#include "cpu/simd/kernels.hpp"

namespace backdoorlab {
namespace BDL_LEVEL_NS {
namespace {

using u32 = std::uint32_t;
using u64 = std::uint64_t;

constexpr int MT_N = 624, MT_M = 397;

inline u32 twist(u32 u, u32 v) { return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u); }

inline u32 temper(u32 y) {
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  return y ^ (y >> 18);
}

// ATen's mt19937::next_state: a refill of the 624 words
void next_state(u32* s, i64& left, i64& next) {
  for (int i = 0; i < MT_N - MT_M; ++i) s[i] = s[i + MT_M] ^ twist(s[i], s[i + 1]);
  for (int i = MT_N - MT_M; i < MT_N - 1; ++i) s[i] = s[i + MT_M - MT_N] ^ twist(s[i], s[i + 1]);
  s[MT_N - 1] = s[MT_M - 1] ^ twist(s[MT_N - 1], s[0]);
  left = MT_N;
  next = 0;
}

// The next n outputs, as n calls of ATen's operator() give them: each call counts `left` down,
// refills when it reaches 0, then tempers word `next++`.
void fill(u32* s, i64& left, i64& next, u32* out, i64 n) {
  while (n > 0) {
    const i64 k = std::min(n, left - 1);  // calls before the one that refills
    const u32* src = s + next;
#pragma omp simd
    for (i64 i = 0; i < k; ++i) out[i] = temper(src[i]);
    next += k;
    left -= k;
    out += k;
    n -= k;
    if (n > 0) {  // left == 1: this call refills, then reads word 0
      next_state(s, left, next);
      *out++ = temper(s[next++]);
      --n;
    }
  }
}

// Draw j of a block (words 2j, 2j + 1): `scale_bits` when its 53 low bits are below `threshold`,
// else 0 — a bit mask, not a branch (a branch on a random draw mispredicts ~p of the time). u <
// 2^53 and threshold <= 2^53 both fit a signed 64-bit compare, which every level vectorises.
inline u32 draw_bits(const u32* words, i64 j, std::int64_t threshold, u32 scale_bits) {
  constexpr u64 MASK53 = (u64{1} << 53) - 1;
  const std::int64_t u = static_cast<std::int64_t>(((u64{words[2 * j]} << 32) | words[2 * j + 1]) & MASK53);
  return scale_bits & (0u - static_cast<u32>(u < threshold));
}

}  // namespace

void dropout_fill(std::uint32_t* state, i64* left, i64* next, std::uint64_t threshold, float scale, i64 rows,
                  i64 row_len, i64 interleave, float* out) {
  constexpr i64 BLOCK = 1024;  // draws per generator block
  const std::int64_t thr = static_cast<std::int64_t>(threshold);
  u32 words[2 * BLOCK];
  u32 scale_bits;
  std::memcpy(&scale_bits, &scale, sizeof scale_bits);
  i64 lft = *left, nxt = *next;
  const i64 plane = interleave * row_len;
  for (i64 r = 0; r < rows; ++r) {
    float* base = out + (r / interleave) * plane + (r % interleave);
    for (i64 j0 = 0; j0 < row_len; j0 += BLOCK) {
      const i64 cnt = std::min(BLOCK, row_len - j0);
      fill(state, lft, nxt, words, 2 * cnt);
      float* o = base + j0 * interleave;
      if (interleave == 1) {  // contiguous: a vector loop into a buffer, one copy out
        u32 bits[BLOCK];
#pragma omp simd
        for (i64 j = 0; j < cnt; ++j) bits[j] = draw_bits(words, j, thr, scale_bits);
        std::memcpy(o, bits, static_cast<std::size_t>(cnt) * sizeof(float));
      } else {
        for (i64 j = 0; j < cnt; ++j) {
          const u32 bits = draw_bits(words, j, thr, scale_bits);
          std::memcpy(o + j * interleave, &bits, sizeof bits);
        }
      }
    }
  }
  *left = lft;
  *next = nxt;
}

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
