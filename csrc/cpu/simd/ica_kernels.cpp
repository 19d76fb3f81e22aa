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
#include <cstring>

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

// One vector register of floats (GCC vector extension), and tanh_f of common/ica_math.hpp on
// it: the same templates (exp_reduce, tanh_abs_from), so the same bits as tanh_f lane by lane. Why not
// tanh_f in a `#pragma omp simd` loop: GCC if-converts its three selects only with AVX-512's
// mask registers; on AVX2 and SSE2 the loop stayed scalar, and tanh was most of the FastICA
// time there (the AVX2 build ran ~6x slower than AVX-512 on the same CPU).
using vf = float __attribute__((vector_size(sizeof(float) * LANES)));
using vi = std::int32_t __attribute__((vector_size(sizeof(float) * LANES)));

__attribute__((always_inline)) inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((always_inline)) inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

__attribute__((always_inline)) inline vf tanh_v(vf x) {
  const vf zero = vf{};
  const vf ax = x < zero ? -x : x;
  const vf nine = zero + 9.0f;
  const vf y = -2.0f * (ax < nine ? ax : nine);
  vf kf, r;
  exp_reduce(y, kf, r);
  const vi bits = (__builtin_convertvector(kf, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const vf t = tanh_abs_from(r, scale);
  return x < zero ? -t : t;
}

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
  for (i64 s = 0; s < mp; s += LANES) {
    vf x[KA];
    for (int j = 0; j < K; ++j) x[j] = load(X1 + j * mp + s);
    // RU rows at a time: each row is a chain of k dependent multiply-adds and then tanh's (a
    // division among them), so one row alone left the core waiting on latency; five side by side
    // give it independent work (each row's operations and their order are unchanged). k = 10,
    // 300 YTAF classes, one thread: 1 -> 2 -> 5 -> 10 rows, AVX2 2.16 -> 2.02 -> 1.88 -> 1.91 s.
    int i = 0;
    constexpr int RU = 5;
    for (; i + RU <= K; i += RU) {
      vf v[RU] = {};
      for (int j = 0; j < K; ++j)
        for (int r = 0; r < RU; ++r) v[r] += W[(i + r) * K + j] * x[j];
      for (int r = 0; r < RU; ++r) store(G + (i + r) * mp + s, tanh_v(v[r]));
    }
    for (; i < K; ++i) {
      vf v = vf{};
      for (int j = 0; j < K; ++j) v += W[i * K + j] * x[j];
      store(G + i * mp + s, tanh_v(v));
    }
  }
  // g' = 1 - g^2 is summed in pass 2, which reads g anyway (in pass 1 its k accumulators beside
  // the k rows of x overflowed AVX2's 16 registers); per lane the same sums in the same order
  for (int i = 0; i < K; ++i) {
    vf acc[KA];
    for (int j = 0; j < K; ++j) acc[j] = vf{};
    vf gacc = vf{};
    const float* g = G + i * mp;
    for (i64 s = 0; s < mp; s += LANES) {
      const vf gv = load(g + s);
      gacc += 1.0f - gv * gv;
      for (int j = 0; j < K; ++j) acc[j] += gv * load(X1 + j * mp + s);
    }
    for (int j = 0; j < K; ++j) {
      double sum = 0.0;
      for (int l = 0; l < LANES; ++l) sum += acc[j][l];
      GX[i * K + j] = sum;
    }
    double sum = 0.0;
    for (int l = 0; l < LANES; ++l) sum += gacc[l];
    gp[i] = sum - static_cast<double>(mp - m);
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
