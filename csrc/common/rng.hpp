// Counter-free, seedable random streams shared by the CPU and CUDA kernels.
//
// Every stochastic kernel draws class c (and k-means run r) from its own stream derived from
// (seed, c, r) by SplitMix64, then xoshiro256** — so results depend on the seed only, never on
// which thread or GPU block ran the class, and a CUDA twin using these headers can reproduce the
// CPU's draws exactly.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/hd.hpp"

namespace backdoorlab {

BDL_HD std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct Rng {
  std::uint64_t s[4];

  // Stream for (seed, a, b): e.g. a = class index, b = k-means run.
  BDL_HD Rng(std::uint64_t seed, std::uint64_t a = 0, std::uint64_t b = 0) {
    std::uint64_t st = seed;
    st = splitmix64(st) ^ (a * 0xD1B54A32D192ED03ULL);
    st = splitmix64(st) ^ (b * 0xABC98388FB8FAC03ULL);
    for (int i = 0; i < 4; ++i) s[i] = splitmix64(st);
  }

  BDL_HD static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  BDL_HD std::uint64_t next() {
    const std::uint64_t result = rotl(s[1] * 5, 7) * 9;
    const std::uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  BDL_HD double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

  // Standard normal (Box-Muller, one value per call so the stream position is simple to mirror).
  BDL_HD double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace backdoorlab
