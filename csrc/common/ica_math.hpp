// Branch-free float math of the FastICA inner loop, shared by the CPU and CUDA kernels.
//
// tanh is the logcosh contrast's g(u); it is evaluated n * k times per FastICA iteration, so it
// must vectorise: std::tanh does not (no vector libm without -ffast-math). This version uses
// expm1(-2|x|) by range reduction and a degree-7 polynomial, without branches.
// tests/test_native_kernels.py compares it with np.tanh through the _core._tanh_f hook.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.hpp"

namespace backdoorlab {

// tanh(|x|) = -expm1(-2|x|) / (2 + expm1(-2|x|)). expm1 comes from the same range reduction as
// exp, written as 2^k (e^r - 1) + (2^k - 1) with e^r - 1 = r P(r): it keeps full relative accuracy
// near 0, where 1 - exp(-2|x|) would cancel, so no separate small-argument branch is needed.
BDL_HD float tanh_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float y = -2.0f * (ax < 9.0f ? ax : 9.0f);  // tanh(9) = 1 - 3e-8: 1 in float
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f, ln2_lo = 1.42860682030941723212e-6f;
  const float magic = 12582912.0f;  // round(y * log2e) by the 1.5 * 2^23 trick
  const float kf = (y * log2e + magic) - magic;
  const float r = (y - kf * ln2_hi) - kf * ln2_lo;  // |r| <= ln2 / 2
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(kf) + 127) << 23;  // 2^k, k in [-26, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float em1 = scale * (p * r) + (scale - 1.0f);  // exp(y) - 1
  const float t = -em1 / (2.0f + em1);
  return x < 0.0f ? -t : t;
}

}  // namespace backdoorlab
