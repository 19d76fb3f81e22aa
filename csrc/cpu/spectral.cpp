// Spectral-signature scores: the top right singular vector of the class matrix is the top
// eigenvector of its d x d Gram matrix (of the m x m one when the class has fewer rows m than
// features d). Only that one vector is needed, so it comes from sym_eig_top's single-vector
// Lanczos iteration for k = 1 (linalg.cpp: a few dozen d^2 products after the one m d^2 Gram
// product, stopped on the residual |C v - lambda v| <= 1e-10 lambda), not from a full
// eigen-decomposition; when that does not converge the dense solver answers, so a result is
// always the top vector. Plain power iteration, used before, needed up to thousands of products
// when the top eigenvalue is weakly separated.
// From d = 64 features on (and m >= d) the Gram matrix is first not formed at all: the same
// Lanczos iteration applies it as Xc^T (Xc v) with float32 products to a 1e-6 residual
// (top_vector_implicit below); where that does not converge, from d = 256 on in float64 to 1e-10,
// then the Gram matrix.
#include "cpu/spectral.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/rng.hpp"
#include "cpu/decompose.hpp"
#include "cpu/linalg.hpp"
#include "cpu/parallel.hpp"
#include "cpu/simd.hpp"

namespace backdoorlab {

namespace {

// Where the float32 iteration below did not converge: from this many features on, the top vector
// comes from Lanczos on Xc^T (Xc v) in float64 (2 m d a step, ~40 steps) rather than from the
// d x d Gram matrix (m d^2 once, then d^2 a step): on GTSRB's 820 x 512 classes ~30 M
// multiply-adds instead of ~120 M; at d = 160 the two are even and the Gram path (float32
// products, twice the vector width) answers.
constexpr i64 IMPLICIT_MIN_D = 256;
// From this many features on, that Lanczos iteration is tried first with float32 products
// (gram_top1): on activation-like classes it converges to its 1e-6 residual in ~15-25
// steps of half the cost, far below the Gram product at YTAF's d = 160 too; classes where it does
// not (no dominant direction: float32 rounding above that residual) take the float64 paths.
constexpr i64 FLOAT32_MIN_D = 64;

// proj[s] = <Xr[s], v> for the top right singular vector v of the centred, scaled class rows Xr
// (m x d), without the Gram matrix. False when the iteration did not converge.
bool top_vector_implicit(const SimdKernels& K, const std::vector<float>& Xr, i64 m, i64 d, bool float32,
                         double* proj) {
  std::vector<double> v(d);
  double lambda = 0.0;
  if (!gram_top1(K, Xr.data(), m, d, float32, &lambda, v.data())) return false;
  for (i64 s = 0; s < m; ++s) {
    const float* x = Xr.data() + s * d;
    double t = 0.0;
#pragma omp simd reduction(+ : t)
    for (i64 a = 0; a < d; ++a) t += static_cast<double>(x[a]) * v[a];
    proj[s] = t;
  }
  return true;
}

}  // namespace

void spectral_scores(const float* X, i64 n, i64 d, const i64* offsets, i64 G, bool center, float* out,
                     bool float32_first) {
  check_offsets(offsets, G, n);
  const SimdKernels& K = simd();  // one level for the whole call
  for_each_class(offsets, G, [&](i64 c, bool inner) {
    const i64 r0 = offsets[c], m = offsets[c + 1] - r0;
    const i64 dp = (d + 3) / 4 * 4;
    std::vector<double> mean(d);
    // rows divided by a power of two first (column_mean_scale): the Gram product must not square
    // 1e19 into float32 Inf; the scores are scaled back at the end
    const double scale = column_mean_scale(K, X + r0 * d, m, d, mean.data(), center, r0, c);
    const double* mu = center ? mean.data() : nullptr;
    std::vector<double> proj(m, 0.0);
    if (m < d) {
      // Fewer rows than features: top eigenvector u of the m x m Gram G = Xc Xc^T. Then
      // v = Xc^T u / |Xc^T u| and Xc v = G u / sqrt(lambda) = sqrt(lambda) u, so the scores are
      // sqrt(lambda) |u| without forming v or a d x d matrix.
      const i64 mp = (m + 3) / 4 * 4;
      std::vector<float> Xr(mp * d);
      rows_centred(X + r0 * d, m, d, mu, 1.0 / scale, Xr.data(), mp);
      std::vector<double> gm(m * m), u(m);
      gram(K, Xr.data(), m, mp, d, gm.data(), inner);
      double lambda = 0.0;
      sym_eig_top(K, gm.data(), m, 1, &lambda, u.data());
      const double root = std::sqrt(std::max(lambda, 0.0));
      for (i64 s = 0; s < m; ++s) proj[s] = root * u[s];
    } else {
      const bool try_float32 = float32_first && d >= FLOAT32_MIN_D;
      std::vector<float> Xr;
      if (try_float32 || d >= IMPLICIT_MIN_D) {
        Xr.resize(m * d);
        rows_centred(X + r0 * d, m, d, mu, 1.0 / scale, Xr.data(), m);
      }
      const bool done = (try_float32 && top_vector_implicit(K, Xr, m, d, true, proj.data())) ||
                        (d >= IMPLICIT_MIN_D && top_vector_implicit(K, Xr, m, d, false, proj.data()));
      if (!done) {
        std::vector<double> C(d * d), v(d);
        std::vector<float> XT(dp * m);
        transpose_centred(X + r0 * d, m, d, mu, 1.0 / scale, XT.data(), dp);
        gram(K, XT.data(), d, dp, m, C.data(), inner);
        double lambda = 0.0;
        sym_eig_top(K, C.data(), d, 1, &lambda, v.data());
        for (i64 a = 0; a < d; ++a) {
          const float* x = XT.data() + a * m;
          const double w = v[a];
          for (i64 s = 0; s < m; ++s) proj[s] += w * x[s];
        }
      }
    }
    for (i64 s = 0; s < m; ++s) out[r0 + s] = to_float_output(std::abs(proj[s]) * scale, "spectral_scores", r0 + s, c);
  });
}

}  // namespace backdoorlab
