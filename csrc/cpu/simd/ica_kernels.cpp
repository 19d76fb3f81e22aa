// The hot loops of FastICA (decompose.cpp), compiled once per SIMD level (cpu/simd.hpp).
//
// ica_step_small is the data pass of every FastICA iteration, the bulk of Activation
// Clustering's time. It is compiled for k = 10 (AC's n_components, IBM ART's default) with the
// loops over k unrolled and the accumulators in registers, and once for any k <= 16 with the same
// loops over a run-time k: same operations in the same order, so the same results, a little
// slower. (Before, every k of 1..16 had its own copy in each of three SIMD clones, and so did the
// polar factor: most of the core's compile time for sizes nothing used.)
#include <algorithm>
#include <cstdint>

#include "common/ica_math.hpp"
#include "cpu/simd/level.hpp"
#include "cpu/simd/kernels.hpp"

namespace backdoorlab {
namespace BDL_LEVEL_NS {

namespace {

constexpr i64 BLOCK = 64;  // samples per block of the generic (k > 16) step
// Samples per step of the small-k step: one vector register of floats at this level, so the k
// rows of a step stay in k registers (AVX2 has 16: 16-float rows, two ymm each, spilled).
constexpr int LANES = BDL_F32_LANES;
constexpr int MAX_SMALL_K = 16;

// The small-k step for k == KF (KF > 0: loops unrolled at compile time) or any k <= 16 (KF == 0).
// X1 is k rows of mp floats (mp a multiple of 16 >= m, zero-padded). Samples are the vector
// lanes: W X1 costs k^2 / LANES multiply-adds per sample with every W entry a broadcast operand,
// and tanh runs on full vectors. Pass 2 forms GX[i, :] with k vector accumulators per row i,
// summed across lanes once per call. Padded samples give tanh(0) = 0, so they add nothing to GX;
// their g' = 1 is subtracted from gp afterwards. G: k x mp scratch.
template <int KF>
__attribute__((always_inline)) inline void ica_step_k(const float* X1, int k_rt, i64 m, i64 mp, const float* W,
                                                      double* GX, double* gp, float* G) {
  constexpr int KA = KF > 0 ? KF : MAX_SMALL_K;  // array bound
  const int K = KF > 0 ? KF : k_rt;
  float gacc[KA][LANES] = {};
  for (i64 s = 0; s < mp; s += LANES) {
    float x[KA][LANES];
    for (int j = 0; j < K; ++j)
#pragma omp simd
      for (int l = 0; l < LANES; ++l) x[j][l] = X1[j * mp + s + l];
    for (int i = 0; i < K; ++i) {
      float v[LANES] = {};
      for (int j = 0; j < K; ++j) {
        const float w = W[i * K + j];
#pragma omp simd
        for (int l = 0; l < LANES; ++l) v[l] += w * x[j][l];
      }
#pragma omp simd
      for (int l = 0; l < LANES; ++l) {
        const float t = tanh_f(v[l]);
        G[i * mp + s + l] = t;
        gacc[i][l] += 1.0f - t * t;
      }
    }
  }
  for (int i = 0; i < K; ++i) {
    double sum = 0.0;
    for (int l = 0; l < LANES; ++l) sum += gacc[i][l];
    gp[i] = sum - static_cast<double>(mp - m);
  }
  for (int i = 0; i < K; ++i) {
    float acc[KA][LANES] = {};
    const float* g = G + i * mp;
    for (i64 s = 0; s < mp; s += LANES) {
      for (int j = 0; j < K; ++j) {
        const float* xj = X1 + j * mp + s;
#pragma omp simd
        for (int l = 0; l < LANES; ++l) acc[j][l] += g[s + l] * xj[l];
      }
    }
    for (int j = 0; j < K; ++j) {
      double sum = 0.0;
      for (int l = 0; l < LANES; ++l) sum += acc[j][l];
      GX[i * K + j] = sum;
    }
  }
}

}  // namespace

// Y[k, m] = A[k, d] XT[d, m] (A float64 row-major, accumulated in float32 over d).
void project(const double* A, int k, const float* XT, i64 d, i64 m, float* Y) {
  for (int i = 0; i < k; ++i) {
    float* y = Y + i * m;
    std::fill(y, y + m, 0.0f);
    for (i64 a = 0; a < d; ++a) {
      const float w = static_cast<float>(A[i * d + a]);
      const float* x = XT + a * m;
#pragma omp simd
      for (i64 s = 0; s < m; ++s) y[s] += w * x[s];
    }
  }
}

// One FastICA evaluation for any k: GX[k, k] = sum_s g(W X1)[:, s] X1[:, s]^T,
// gp[k] = sum_s g'(W X1)[:, s] (sums, not means), over blocks of BLOCK samples. buf: k * BLOCK.
void ica_step(const float* X1, int k, i64 m, const float* W, double* GX, double* gp, float* buf) {
  std::fill(GX, GX + k * k, 0.0);
  std::fill(gp, gp + k, 0.0);
  for (i64 s0 = 0; s0 < m; s0 += BLOCK) {
    const i64 len = std::min(BLOCK, m - s0);
    for (int i = 0; i < k; ++i) {
      float* wx = buf + i * BLOCK;
      const float* wi = W + i * k;
      {
        const float w0 = wi[0];
        const float* x = X1 + s0;
#pragma omp simd
        for (i64 s = 0; s < len; ++s) wx[s] = w0 * x[s];
      }
      for (int j = 1; j < k; ++j) {
        const float w = wi[j];
        const float* x = X1 + j * m + s0;
#pragma omp simd
        for (i64 s = 0; s < len; ++s) wx[s] += w * x[s];
      }
      float gsum = 0.0f;
#pragma omp simd reduction(+ : gsum)
      for (i64 s = 0; s < len; ++s) {
        const float t = tanh_f(wx[s]);
        wx[s] = t;
        gsum += 1.0f - t * t;
      }
      gp[i] += gsum;
    }
    for (int i = 0; i < k; ++i) {
      const float* g = buf + i * BLOCK;
      for (int j = 0; j < k; ++j) {
        const float* x = X1 + j * m + s0;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (i64 s = 0; s < len; ++s) acc += g[s] * x[s];
        GX[i * k + j] += acc;
      }
    }
  }
}

// The small-k step (1 <= k <= 16; the caller checks): k = 10 unrolled, any other k generic.
void ica_step_small(const float* X1, int k, i64 m, i64 mp, const float* W, double* GX, double* gp, float* G) {
  if (k == 10)
    ica_step_k<10>(X1, k, m, mp, W, GX, gp, G);
  else
    ica_step_k<0>(X1, k, m, mp, W, GX, gp, G);
}

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
