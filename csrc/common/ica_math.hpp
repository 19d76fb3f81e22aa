// Branch-free float math of the FastICA inner loop, shared by the CPU and CUDA kernels.
//
// tanh is the logcosh contrast's g(u); it is evaluated n * k times per FastICA iteration, so it
// must vectorise: std::tanh does not (no vector libm without -ffast-math). This version uses
// exp(-2|x|) by range reduction and a degree-7 polynomial, with a Taylor branch near 0 (where
// (1 - e) / (1 + e) would cancel), blended without branches. tests/test_native_kernels.py compares
// it with np.tanh through the _core._tanh_f hook (absolute error < 1e-6).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.hpp"

namespace backdoorlab {

// exp(y) for y in [-20, 0] (callers clamp), float, vectorisable.
BDL_HD float exp_nonpositive(float y) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f, ln2_lo = 1.42860682030941723212e-6f;
  // round(y * log2e) by the 1.5 * 2^23 trick (exact for |v| < 2^22; no rint call)
  const float magic = 12582912.0f;
  const float kf = (y * log2e + magic) - magic;
  const float r = (y - kf * ln2_hi) - kf * ln2_lo;  // |r| <= ln2 / 2
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(kf) + 127) << 23;  // 2^k, k in [-29, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

BDL_HD float tanh_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float ac = ax < 9.0f ? ax : 9.0f;  // tanh(9) = 1 - 3e-8: 1 in float
  const float e = exp_nonpositive(-2.0f * ac);
  const float big = (1.0f - e) / (1.0f + e);
  const float x2 = ac * ac;
  // tanh x = x - x^3/3 + 2x^5/15 - 17x^7/315 + O(x^9): error < 2e-10 for |x| < 0.125
  const float small = ac * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f))));
  const float t = ac < 0.125f ? small : big;
  return x < 0.0f ? -t : t;
}

}  // namespace backdoorlab
