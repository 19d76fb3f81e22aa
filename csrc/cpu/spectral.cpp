// Spectral-signature scores: the top right singular vector of the class matrix is the top
// eigenvector of its d x d Gram matrix (of the m x m one when the class has fewer rows m than
// features d), found by power iteration in float64 (cheap: d^2 per step
// after the one n d^2 Gram product). Power iteration stops when the unit vector moves less than
// 1e-10; if the top eigenvalue is so weakly separated that 3000 steps do not get there, the full
// tridiagonal eigen-solver of linalg.hpp answers instead, so a result is always the top vector.
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

BDL_SIMD_CLONES
void matvec(const double* C, i64 d, const double* v, double* y) {
  for (i64 i = 0; i < d; ++i) {
    const double* row = C + i * d;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (i64 j = 0; j < d; ++j) s += row[j] * v[j];
    y[i] = s;
  }
}

// Top eigenvector of the PSD matrix C[d, d] into v (unit norm).
void top_eigenvector(const double* C, i64 d, double* v) {
  constexpr int kMaxIter = 3000;
  constexpr double kTol = 1e-10;
  Rng rng(0x5eed, 0);
  for (i64 i = 0; i < d; ++i) v[i] = 1.0 + 0.1 * rng.uniform();  // activations: mostly positive direction
  std::vector<double> y(d);
  double norm = 0.0;
  for (i64 i = 0; i < d; ++i) norm += v[i] * v[i];
  norm = std::sqrt(norm);
  for (i64 i = 0; i < d; ++i) v[i] /= norm;
  for (int it = 0; it < kMaxIter; ++it) {
    matvec(C, d, v, y.data());
    double ny = 0.0;
    for (i64 i = 0; i < d; ++i) ny += y[i] * y[i];
    ny = std::sqrt(ny);
    if (ny == 0.0) return;  // C == 0: every direction is a top eigenvector; keep v
    double change = 0.0;
    for (i64 i = 0; i < d; ++i) {
      const double t = y[i] / ny;
      change = std::max(change, std::abs(t - v[i]));
      v[i] = t;
    }
    if (change < kTol) return;
  }
  std::vector<double> A(C, C + d * d), lam(1);
  sym_eig_top(A.data(), d, 1, lam.data(), v);
}

}  // namespace

void spectral_scores(const float* X, i64 n, i64 d, const i64* offsets, i64 G, bool center, float* out) {
  check_offsets(offsets, G, n);
  for_each_class(offsets, G, [&](i64 c, bool inner) {
    const i64 r0 = offsets[c], m = offsets[c + 1] - r0;
    const i64 dp = (d + 3) / 4 * 4;
    std::vector<double> mean(d);
    column_mean(X + r0 * d, m, d, mean.data(), r0, c);
    const double* mu = center ? mean.data() : nullptr;
    // rows divided by a power of two first (pow2_scale): the Gram product must not square 1e19
    // into float32 Inf; the scores are scaled back at the end
    const double scale = pow2_scale(X + r0 * d, m, d, mu);
    std::vector<double> proj(m, 0.0);
    if (m < d) {
      // Fewer rows than features: top eigenvector u of the m x m Gram G = Xc Xc^T. Then
      // v = Xc^T u / |Xc^T u| and Xc v = G u / sqrt(lambda) = sqrt(lambda) u, so the scores are
      // sqrt(lambda) |u| without forming v or a d x d matrix.
      const i64 mp = (m + 3) / 4 * 4;
      std::vector<float> Xr(mp * d);
      rows_centred(X + r0 * d, m, d, mu, 1.0 / scale, Xr.data(), mp);
      std::vector<double> gm(m * m), u(m);
      gram(Xr.data(), m, mp, d, gm.data(), inner);
      top_eigenvector(gm.data(), m, u.data());
      double lambda = 0.0;
      for (i64 i = 0; i < m; ++i) {
        double acc = 0.0;
        for (i64 j = 0; j < m; ++j) acc += gm[i * m + j] * u[j];
        lambda += u[i] * acc;
      }
      const double root = std::sqrt(std::max(lambda, 0.0));
      for (i64 s = 0; s < m; ++s) proj[s] = root * u[s];
    } else {
      std::vector<double> C(d * d), v(d);
      std::vector<float> XT(dp * m);
      transpose_centred(X + r0 * d, m, d, mu, 1.0 / scale, XT.data(), dp);
      gram(XT.data(), d, dp, m, C.data(), inner);
      top_eigenvector(C.data(), d, v.data());
      for (i64 a = 0; a < d; ++a) {
        const float* x = XT.data() + a * m;
        const double w = v[a];
        for (i64 s = 0; s < m; ++s) proj[s] += w * x[s];
      }
    }
    for (i64 s = 0; s < m; ++s) out[r0 + s] = to_float_output(std::abs(proj[s]) * scale, "spectral_scores", r0 + s, c);
  });
}

}  // namespace backdoorlab
