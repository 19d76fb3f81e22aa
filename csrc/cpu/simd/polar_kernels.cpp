// Batched orthogonal polar factors (see cpu/polar.hpp), compiled once per SIMD level.
//
// Layout: every matrix entry is an array over the lanes, X[i][j][l], and every loop over l is the
// innermost one, so the compiler turns each scalar operation of the single-matrix algorithm into
// one vector operation for all lanes of a group: as many classes as one vector register holds
// doubles (AVX-512: 8, AVX2: 4, SSE2: 2), the POLAR_LANES classes of a batch taking 1, 2 or 4
// groups. (One 8-lane group for every level, as before, was lowered to element-by-element code
// for masks and selects on AVX2 and SSE2: ten times slower.) Lanes never mix, and a lane that has converged or failed keeps its value (masked update), which is what
// makes a class's result independent of the classes batched with it and of the thread count.
//
// Sizes: compiled for k = 10 (AC's n_components) with every loop bound a constant, and once for
// any k <= POLAR_MAX_K with the same loops over a run-time k (same operations in the same order:
// same results). Every k of 1..16 used to get its own force-inlined copy in each of three SIMD
// clones: about two CPU-minutes of compile time for this file alone.
#include <cmath>
#include <cstdint>

#include "cpu/polar.hpp"
#include "cpu/simd/level.hpp"
#include "cpu/simd/kernels.hpp"

namespace backdoorlab {
namespace BDL_LEVEL_NS {
namespace {

constexpr int L = BDL_F32_LANES / 2;  // doubles per vector register
static_assert(POLAR_LANES % L == 0, "a batch must split into whole groups");
constexpr int MAX_STEPS = 60;  // scaled Newton needs ~10 even for condition numbers near 1e7
// Stop a lane when its last step was below 1e-5 relative: Newton converges quadratically, so the
// iterate it leaves is orthogonal to ~1e-10 (1e-14 measured on random 10 x 10 matrices), far
// below the float32 precision of the data pass that uses it; one step fewer than going to 1e-16.
constexpr double STEP_TOL2 = 1e-10;
// X^T X pivots below this share of its largest diagonal entry: X is singular to about 1e-7.
constexpr double PIVOT_FLOOR = 1e-14;

// One vector register's worth of lanes (GCC/Clang vector extension: one zmm, ymm or xmm
// register at this level). Keeping every value of the iteration in this type
// lets the compiler hold the running sums in registers; arrays indexed by lane did not.
using vd = double __attribute__((vector_size(sizeof(double) * L)));
using vm = std::int64_t __attribute__((vector_size(sizeof(double) * L)));  // lane masks: 0 or -1

__attribute__((always_inline)) inline vd splat(double v) { return vd{} + v; }

__attribute__((always_inline)) inline vd sqrt_lanes(vd x) {
  vd r;
  for (int l = 0; l < L; ++l) r[l] = std::sqrt(x[l]);
  return r;
}

// KF > 0: k == KF known at compile time; KF == 0: any k <= POLAR_MAX_K.
template <int KF>
__attribute__((always_inline)) inline std::uint32_t polar_k(double* const* W, int n, int k_rt) {
  constexpr int KA = KF > 0 ? KF : POLAR_MAX_K;  // array bound
  const int K = KF > 0 ? KF : k_rt;
  vd X[KA][KA];  // the iterates
  vd Z[KA][KA];  // X^{-T}, then the next iterate
  vd R[KA][KA];  // X^T X (lower triangle), then its Cholesky factor
  vd inv_diag[KA];
  vm active, bad = vm{};
  for (int l = 0; l < L; ++l) active[l] = l < n ? -1 : 0;
  for (int i = 0; i < K; ++i)
    for (int j = 0; j < K; ++j)
      for (int l = 0; l < L; ++l) X[i][j][l] = l < n ? W[l][i * K + j] : (i == j ? 1.0 : 0.0);

  for (int step = 0; step < MAX_STEPS; ++step) {
    bool any = false;
    for (int l = 0; l < L; ++l) any = any || active[l] != 0;
    if (!any) break;

    // R = X^T X, lower triangle, and the pivot floor
    vd floor = vd{};
    for (int i = 0; i < K; ++i)
      for (int j = 0; j <= i; ++j) {
        vd c = vd{};
        for (int t = 0; t < K; ++t) c += X[t][i] * X[t][j];
        R[i][j] = c;
      }
    for (int i = 0; i < K; ++i) floor = R[i][i] > floor ? R[i][i] : floor;
    floor *= PIVOT_FLOOR;

    // Cholesky X^T X = R R^T in place (R lower); a pivot under the floor marks the lane bad and
    // is replaced by 1 so the arithmetic stays finite
    for (int j = 0; j < K; ++j) {
      vd p = R[j][j];
      for (int t = 0; t < j; ++t) p -= R[j][t] * R[j][t];
      const vm ok = p > floor;
      bad |= active & ~ok;
      const vd r = sqrt_lanes(ok ? p : splat(1.0));
      R[j][j] = r;
      inv_diag[j] = 1.0 / r;
      for (int i = j + 1; i < K; ++i) {
        vd s = R[i][j];
        for (int t = 0; t < j; ++t) s -= R[i][t] * R[j][t];
        R[i][j] = s * inv_diag[j];
      }
    }

    // Z = X (X^T X)^{-1} = X^{-T}: row r of Z solves (R R^T) z = x_r. The rows are solved side
    // by side (r innermost): each substitution is a chain of dependent multiply-adds, and K
    // independent chains keep the FMA units busy where one would wait on its own latency.
    for (int i = 0; i < K; ++i)  // R y_r = x_r, y_r kept in Z[r]
      for (int r = 0; r < K; ++r) {
        vd s = X[r][i];
        for (int t = 0; t < i; ++t) s -= R[i][t] * Z[r][t];
        Z[r][i] = s * inv_diag[i];
      }
    for (int i = K - 1; i >= 0; --i)  // R^T z_r = y_r
      for (int r = 0; r < K; ++r) {
        vd s = Z[r][i];
        for (int t = i + 1; t < K; ++t) s -= R[t][i] * Z[r][t];
        Z[r][i] = s * inv_diag[i];
      }

    // X <- (g X + Z / g) / 2 on the lanes still running (sums per row first: shorter chains)
    vd nx = vd{}, nz = vd{};
    for (int i = 0; i < K; ++i) {
      vd rx = vd{}, rz = vd{};
      for (int j = 0; j < K; ++j) {
        rx += X[i][j] * X[i][j];
        rz += Z[i][j] * Z[i][j];
      }
      nx += rx;
      nz += rz;
    }
    const vd g = sqrt_lanes(sqrt_lanes(nz / nx));
    const vd half_g = 0.5 * g, half_inv_g = 0.5 / g;
    const vm update = active & ~bad;
    vd diff = vd{}, norm = vd{};
    for (int i = 0; i < K; ++i) {
      vd rd = vd{}, rn = vd{};
      for (int j = 0; j < K; ++j) {
        const vd v = half_g * X[i][j] + half_inv_g * Z[i][j];
        const vd dv = v - X[i][j];
        rd += dv * dv;
        rn += v * v;
        X[i][j] = update ? v : X[i][j];
      }
      diff += rd;
      norm += rn;
    }
    active = update & ~(diff <= STEP_TOL2 * norm);
  }

  std::uint32_t failed = 0;
  for (int l = 0; l < n; ++l) {
    if (bad[l] || active[l]) {  // singular, or still moving after MAX_STEPS
      failed |= 1u << l;
      continue;
    }
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j) W[l][i * K + j] = X[i][j][l];
  }
  return failed;
}

}  // namespace

std::uint32_t polar_batch(double* const* W, int n, int k) {
  std::uint32_t failed = 0;
  for (int g = 0; g < n; g += L) {
    const int len = n - g < L ? n - g : L;
    failed |= (k == 10 ? polar_k<10>(W + g, len, k) : polar_k<0>(W + g, len, k)) << g;
  }
  return failed;
}

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
