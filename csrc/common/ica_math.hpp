// Branch-free float math of the FastICA inner loop, shared by the scalar and the per-SIMD-level CPU
// kernels (BDL_HD: usable from CUDA device code too; the CUDA kernel uses the device tanh today).
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

// exp(y) for y in [-18, 0] is 2^k e^r: k = round(y / ln 2) by the 1.5 * 2^23 trick, r = y - k ln 2
// in two parts (|r| <= ln2 / 2). T is float or a vector of floats (cpu/simd/ica_kernels.cpp runs
// the same steps on a whole register): one definition, so every lane gives tanh_f's bits.
template <class T>
BDL_HD void exp_reduce(T y, T& kf, T& r) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f, ln2_lo = 1.42860682030941723212e-6f;
  const float magic = 12582912.0f;
  kf = (y * log2e + magic) - magic;
  r = (y - kf * ln2_hi) - kf * ln2_lo;
}

// e^r - 1 = r * expm1_poly(r) on |r| <= ln2 / 2 (degree-7 Taylor polynomial, Horner form).
template <class T>
BDL_HD T expm1_poly(T r) {
  T p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  return p * r + 1.0f;
}

// tanh(|x|) from em1 = expm1(-2|x|) = 2^k (e^r - 1) + (2^k - 1), with scale = 2^k.
template <class T>
BDL_HD T tanh_abs_from(T r, T scale) {
  const T em1 = scale * (expm1_poly(r) * r) + (scale - 1.0f);
  return -em1 / (2.0f + em1);
}

// tanh(|x|) = -expm1(-2|x|) / (2 + expm1(-2|x|)). expm1 comes from the same range reduction as
// exp, written as 2^k (e^r - 1) + (2^k - 1) with e^r - 1 = r P(r): it keeps full relative accuracy
// near 0, where 1 - exp(-2|x|) would cancel, so no separate small-argument branch is needed.
BDL_HD float tanh_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float y = -2.0f * (ax < 9.0f ? ax : 9.0f);  // tanh(9) = 1 - 3e-8: 1 in float
  float kf, r;
  exp_reduce(y, kf, r);
  const std::int32_t bits = (static_cast<std::int32_t>(kf) + 127) << 23;  // 2^k, k in [-26, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float t = tanh_abs_from(r, scale);
  return x < 0.0f ? -t : t;
}

}  // namespace backdoorlab
