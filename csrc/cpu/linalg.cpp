// Dense linear algebra for the defence kernels (see linalg.hpp).
//
// Why these algorithms: whitening and PCA need only the top k (typically 10) eigenvectors of a
// d x d covariance (d = 160 ... 4096), so the full QL-with-vectors (~6 d^3) would be wasted work;
// Householder tridiagonalisation (~d^3 here, vectorised row by row), the k wanted eigenvalues by
// bisection on Sturm counts (k at once, one per vector lane), and inverse iteration for the k
// wanted vectors (O(k d) each, re-orthogonalised within clusters of close eigenvalues as LAPACK's
// dstein does) cost little more than the reduction.
#include "cpu/linalg.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "common/rng.hpp"
#include "cpu/parallel.hpp"
#include "cpu/simd.hpp"

namespace backdoorlab {

void column_mean(const float* X, i64 n, i64 d, double* mean, i64 row0, i64 cls) {
  std::fill(mean, mean + d, 0.0);
  for (i64 r = 0; r < n; ++r) {
    const float* row = X + r * d;
    bool finite = true;
#pragma omp simd reduction(&& : finite)
    for (i64 a = 0; a < d; ++a) {
      finite = finite && std::isfinite(row[a]);
      mean[a] += row[a];
    }
    if (!finite)
      throw std::invalid_argument("X contains NaN or Inf at row " + std::to_string(row0 + r) + " (class " +
                                  std::to_string(cls) + ")");
  }
  const double inv = 1.0 / static_cast<double>(n);
  for (i64 a = 0; a < d; ++a) mean[a] *= inv;
}

double pow2_scale(const float* X, i64 n, i64 d, const double* mean) {
  double top = 0.0;
  for (i64 r = 0; r < n; ++r) {
    const float* row = X + r * d;
    for (i64 a = 0; a < d; ++a) top = std::max(top, std::abs(mean ? row[a] - mean[a] : static_cast<double>(row[a])));
  }
  if (!(top > 0.0)) return 1.0;
  int e = 0;
  std::frexp(top, &e);  // top = f 2^e with f in [0.5, 1)
  return std::ldexp(1.0, e);
}

void transpose_centred(const float* X, i64 n, i64 d, const double* mean, double inv_scale, float* XT, i64 d_pad) {
  // Blocked transpose: 32 x 32 tiles keep both sides in L1.
  constexpr i64 B = 32;
  for (i64 a0 = 0; a0 < d; a0 += B) {
    const i64 a1 = std::min(d, a0 + B);
    for (i64 s0 = 0; s0 < n; s0 += B) {
      const i64 s1 = std::min(n, s0 + B);
      for (i64 s = s0; s < s1; ++s)
        for (i64 a = a0; a < a1; ++a)
          XT[a * n + s] = static_cast<float>((mean ? X[s * d + a] - mean[a] : X[s * d + a]) * inv_scale);
    }
  }
  std::fill(XT + d * n, XT + d_pad * n, 0.0f);
}

void rows_centred(const float* X, i64 m, i64 d, const double* mean, double inv_scale, float* Xr, i64 m_pad) {
  for (i64 s = 0; s < m; ++s)
    for (i64 a = 0; a < d; ++a)
      Xr[s * d + a] = static_cast<float>((mean ? X[s * d + a] - mean[a] : X[s * d + a]) * inv_scale);
  std::fill(Xr + m * d, Xr + m_pad * d, 0.0f);
}

float to_float_output(double value, const char* kernel, i64 row, i64 cls) {
  const float f = static_cast<float>(value);  // rounds to nearest: just above FLT_MAX may still fit
  if (std::isfinite(f)) return f;
  if (std::isnan(value))  // the last guard of "never NaN from finite input": a bug, said loudly
    throw std::runtime_error(std::string(kernel) + ": internal numerical failure, NaN for row " + std::to_string(row) +
                             " (class " + std::to_string(cls) + ") from finite input; please report it");
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", value);
  throw std::invalid_argument(std::string(kernel) + ": the result for row " + std::to_string(row) + " (class " +
                              std::to_string(cls) + ") is " + buf +
                              ", beyond the float32 range of the output (|x| <= 3.4e38); scale X down");
}

namespace {

// Four rows a..a+3 of the Gram matrix against the rows b..b+3 for every b in [a, d_pad) (step
// 4): out gets the 16 entries of each 4 x 4 block (row-major), block after block. Samples are the
// vector lanes (16 per step): 8 loads feed 16 multiply-adds. Each product keeps one float32
// partial sum per lane over a chunk of 512 samples (32 per lane), chunk sums go into float64
// lane sums, and lanes are added once at the end, so the loop has no horizontal sums (a
// per-chunk reduction cost as much as the products at d = 160). One call per row block: the
// SIMD-clone dispatch is paid once, not per block.
BDL_SIMD_CLONES
void gram_rows(const float* XT, i64 n, i64 a, i64 d_pad, double* out) {
  constexpr int LN = 16;
  constexpr i64 CHUNK = 512;  // 32 samples per lane in float32, then float64
  const float* x[4] = {XT + a * n, XT + (a + 1) * n, XT + (a + 2) * n, XT + (a + 3) * n};
  const i64 n_vec = n / LN * LN;
  for (i64 b = a; b < d_pad; b += 4) {
    const float* y[4] = {XT + b * n, XT + (b + 1) * n, XT + (b + 2) * n, XT + (b + 3) * n};
    double dsum[16][LN] = {};
    for (i64 s0 = 0; s0 < n_vec; s0 += CHUNK) {
      const i64 s1 = std::min(n_vec, s0 + CHUNK);
      float acc[16][LN] = {};
      for (i64 s = s0; s < s1; s += LN) {
#pragma omp simd
        for (int l = 0; l < LN; ++l) {
          const float u0 = y[0][s + l], u1 = y[1][s + l], u2 = y[2][s + l], u3 = y[3][s + l];
          for (int i = 0; i < 4; ++i) {
            const float v = x[i][s + l];
            acc[4 * i + 0][l] += v * u0;
            acc[4 * i + 1][l] += v * u1;
            acc[4 * i + 2][l] += v * u2;
            acc[4 * i + 3][l] += v * u3;
          }
        }
      }
      for (int q = 0; q < 16; ++q)
#pragma omp simd
        for (int l = 0; l < LN; ++l) dsum[q][l] += acc[q][l];
    }
    for (i64 s = n_vec; s < n; ++s)  // the last n % 16 samples
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) dsum[4 * i + j][0] += static_cast<double>(x[i][s]) * y[j][s];
    double* o = out + (b - a) * 4;  // 16 entries per block of 4 rows b
    for (int q = 0; q < 16; ++q) {
      double t = 0.0;
      for (int l = 0; l < LN; ++l) t += dsum[q][l];
      o[q] = t;
    }
  }
}

}  // namespace

void gram(const float* XT, i64 d, i64 d_pad, i64 n, double* C, bool parallel) {
  const i64 n_blocks = d_pad / 4;
  // Blocks of four rows a against blocks of four rows b >= a (up to d_pad; padded rows are zero).
#pragma omp parallel for schedule(dynamic, 1) if (parallel) num_threads(threads_for(n_blocks))
  for (i64 ib = 0; ib < n_blocks; ++ib) {
    const i64 a = ib * 4;
    std::vector<double> out((d_pad - a) * 4);
    gram_rows(XT, n, a, d_pad, out.data());
    for (i64 b = a; b < d_pad; b += 4) {
      const double* o = out.data() + (b - a) * 4;
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const i64 r = a + i, c = b + j;
          if (r < d && c < d && c >= r) {
            C[r * d + c] = o[4 * i + j];
            C[c * d + r] = o[4 * i + j];
          }
        }
    }
  }
}

namespace {

// Householder reduction of symmetric A (full storage; only its upper triangle is read) to
// tridiagonal T = Q^T A Q.
// diag (d,), off (d-1,): T's diagonals. The Householder vector of step k is left in
// A[k, k+1:], its scale in beta[k]; Q = H_0 H_1 ... H_{d-3}.
BDL_SIMD_CLONES
void tridiagonalize(double* A, i64 d, double* diag, double* off, double* beta, double* p) {
  for (i64 k = 0; k + 2 < d; ++k) {
    double* v = A + k * d + k + 1;  // x = A[k, k+1:], becomes v
    const i64 m = d - k - 1;
    double xnorm2 = 0.0;
    for (i64 j = 0; j < m; ++j) xnorm2 += v[j] * v[j];
    diag[k] = A[k * d + k];
    const double tail2 = xnorm2 - v[0] * v[0];
    if (tail2 <= 0.0) {  // already tridiagonal in this column
      off[k] = v[0];
      beta[k] = 0.0;
      continue;
    }
    const double x0 = v[0];
    const double alpha = x0 >= 0 ? -std::sqrt(xnorm2) : std::sqrt(xnorm2);
    v[0] = x0 - alpha;
    const double vnorm2 = tail2 + v[0] * v[0];
    const double bk = 2.0 / vnorm2;
    off[k] = alpha;
    beta[k] = bk;
    double* A22 = A + (k + 1) * d + (k + 1);
    // p = beta A22 v ; K = beta (p.v) / 2 ; w = p - K v ; A22 -= v w^T + w v^T. Only the upper
    // triangle of A22 is read and kept (it is symmetric): each stored row serves both its dot
    // product and, transposed, an axpy into p, and the rank-2 update touches half the matrix.
    std::fill(p, p + m, 0.0);
    for (i64 i = 0; i < m; ++i) {
      const double* row = A22 + i * d;
      const double vi = v[i];
      double s = row[i] * vi;
#pragma omp simd reduction(+ : s)
      for (i64 j = i + 1; j < m; ++j) {
        s += row[j] * v[j];
        p[j] += vi * row[j];
      }
      p[i] += s;
    }
    double pv = 0.0;
    for (i64 i = 0; i < m; ++i) {
      p[i] *= bk;
      pv += p[i] * v[i];
    }
    const double K = 0.5 * bk * pv;
    for (i64 i = 0; i < m; ++i) p[i] -= K * v[i];  // p now holds w
    for (i64 i = 0; i < m; ++i) {
      double* row = A22 + i * d;
      const double vi = v[i], wi = p[i];
#pragma omp simd
      for (i64 j = i; j < m; ++j) row[j] -= vi * p[j] + wi * v[j];
    }
  }
  if (d >= 2) {
    diag[d - 2] = A[(d - 2) * d + d - 2];
    off[d - 2] = A[(d - 2) * d + d - 1];
  }
  diag[d - 1] = A[(d - 1) * d + d - 1];
}

// The k largest eigenvalues of the symmetric tridiagonal (diag, off), descending, by bisection on
// Sturm counts (LAPACK dstebz's method). Why not QL for all d: whitening wants 10 of 160+, and
// each QL step is a dependent chain of a square root and two divisions. Here the k bisections run
// side by side, one per vector lane, so the dependent chain of a Sturm count is paid once for 16
// eigenvalues. Each lane narrows its interval until it is a few ulps wide: a bracket that
// cannot shrink further stays put, so the result does not depend on how long other lanes run.
using vd16 = double __attribute__((vector_size(16 * sizeof(double))));
using vm16 = std::int64_t __attribute__((vector_size(16 * sizeof(double))));

BDL_SIMD_CLONES
void tridiagonal_top_eigenvalues(const double* diag, const double* off, i64 d, i64 k, double* out) {
  std::vector<double> off2(d > 1 ? d - 1 : 1);
  double lo0 = diag[0], hi0 = diag[0], max_off2 = 1.0;
  for (i64 i = 0; i < d; ++i) {  // Gershgorin bounds of the spectrum
    const double r = (i > 0 ? std::abs(off[i - 1]) : 0.0) + (i + 1 < d ? std::abs(off[i]) : 0.0);
    lo0 = std::min(lo0, diag[i] - r);
    hi0 = std::max(hi0, diag[i] + r);
    if (i + 1 < d) {
      off2[i] = off[i] * off[i];
      max_off2 = std::max(max_off2, off2[i]);
    }
  }
  const double span = std::max(std::abs(lo0), std::abs(hi0));
  const double pivmin = DBL_MIN * max_off2;  // |pivot| floor of the Sturm recurrence (dstebz)
  lo0 -= 2.0 * DBL_EPSILON * span + pivmin;
  hi0 += 2.0 * DBL_EPSILON * span + pivmin;
  constexpr int W = 16;
  for (i64 j0 = 0; j0 < k; j0 += W) {
    // lane l looks for eigenvalue number t = d - 1 - (j0 + l) in ascending order; spare lanes
    // repeat the last wanted one
    vm16 t;
    for (int l = 0; l < W; ++l) t[l] = d - 1 - std::min(j0 + l, k - 1);
    vd16 lo = vd16{} + lo0, hi = vd16{} + hi0;
    for (int step = 0; step < 128; ++step) {
      const vd16 abs_lo = lo < 0 ? -lo : lo, abs_hi = hi < 0 ? -hi : hi;
      const vd16 scale = abs_lo > abs_hi ? abs_lo : abs_hi;
      const vm16 open = hi - lo > 4.0 * DBL_EPSILON * scale + 2.0 * pivmin;
      bool any = false;
      for (int l = 0; l < W; ++l) any = any || open[l] != 0;
      if (!any) break;
      const vd16 x = 0.5 * (lo + hi);
      // Sturm count: the number of negative pivots of T - x I = eigenvalues below x
      vd16 q = diag[0] - x;
      q = (q < 0 ? -q : q) < pivmin ? vd16{} - pivmin : q;
      vm16 below = vm16{} - (q < 0);
      for (i64 i = 1; i < d; ++i) {
        q = (diag[i] - x) - off2[i - 1] / q;
        q = (q < 0 ? -q : q) < pivmin ? vd16{} - pivmin : q;
        below -= (q < 0);
      }
      const vm16 go_down = below > t;  // eigenvalue t lies below x
      hi = open & go_down ? x : hi;
      lo = open & ~go_down ? x : lo;
    }
    for (int l = 0; l < W && j0 + l < k; ++l) out[j0 + l] = 0.5 * (lo[l] + hi[l]);
  }
}

// Solve (T - sigma I) x = b in place for the tridiagonal T (diag, off), by Gaussian elimination
// with partial pivoting; zero pivots are replaced by `tiny` (inverse iteration wants the huge
// growth a near-singular shift gives, not a division by zero).
struct TridiagLU {
  std::vector<double> dl, dd, du, du2;
  std::vector<char> swap;

  void factor(const double* diag, const double* off, i64 n, double sigma, double tiny) {
    dl.assign(off, off + n - 1);
    du.assign(off, off + n - 1);
    dd.resize(n);
    du2.assign(n, 0.0);
    swap.assign(n, 0);
    for (i64 i = 0; i < n; ++i) dd[i] = diag[i] - sigma;
    for (i64 i = 0; i + 1 < n; ++i) {
      if (std::abs(dd[i]) >= std::abs(dl[i])) {
        const double piv = dd[i] != 0.0 ? dd[i] : tiny;
        dd[i] = piv;
        const double fact = dl[i] / piv;
        dl[i] = fact;
        dd[i + 1] -= fact * du[i];
      } else {
        const double fact = dd[i] / dl[i];
        dd[i] = dl[i];
        dl[i] = fact;
        const double temp = du[i];
        du[i] = dd[i + 1];
        dd[i + 1] = temp - fact * dd[i + 1];
        if (i + 2 < n) {
          du2[i] = du[i + 1];
          du[i + 1] = -fact * du[i + 1];
        }
        swap[i] = 1;
      }
    }
    for (i64 i = 0; i < n; ++i)
      if (std::abs(dd[i]) < tiny) dd[i] = dd[i] < 0 ? -tiny : tiny;
  }

  void solve(double* b, i64 n) const {
    for (i64 i = 0; i + 1 < n; ++i) {
      if (!swap[i]) {
        b[i + 1] -= dl[i] * b[i];
      } else {
        const double t = b[i];
        b[i] = b[i + 1];
        b[i + 1] = t - dl[i] * b[i];
      }
    }
    b[n - 1] /= dd[n - 1];
    if (n >= 2) b[n - 2] = (b[n - 2] - du[n - 2] * b[n - 1]) / dd[n - 2];
    for (i64 i = n - 3; i >= 0; --i) b[i] = (b[i] - du[i] * b[i + 1] - du2[i] * b[i + 2]) / dd[i];
  }
};

void normalize(double* x, i64 n) {
  double s = 0.0;
  for (i64 i = 0; i < n; ++i) s += x[i] * x[i];
  s = std::sqrt(s);
  if (s > 0.0)
    for (i64 i = 0; i < n; ++i) x[i] /= s;
}

}  // namespace

void sym_eig_top(double* A, i64 d, i64 k, double* evals, double* evecs) {
  if (k < 1 || k > d) throw std::invalid_argument("sym_eig_top: k out of range");
  if (d == 1) {
    evals[0] = A[0];
    evecs[0] = 1.0;
    return;
  }
  std::vector<double> diag(d), off(d), beta(d, 0.0), work(d), lam(k);
  tridiagonalize(A, d, diag.data(), off.data(), beta.data(), work.data());
  tridiagonal_top_eigenvalues(diag.data(), off.data(), d, k, lam.data());

  double tnorm = 0.0;  // infinity norm of T
  for (i64 i = 0; i < d; ++i) {
    const double row = std::abs(diag[i]) + (i > 0 ? std::abs(off[i - 1]) : 0.0) + (i + 1 < d ? std::abs(off[i]) : 0.0);
    tnorm = std::max(tnorm, row);
  }
  if (tnorm == 0.0) tnorm = 1.0;
  const double tiny = DBL_EPSILON * tnorm;
  const double cluster = 1e-3 * tnorm;  // vectors of eigenvalues this close are re-orthogonalised
  // Successive shifts inside a cluster are pushed apart a little so their factorisations differ.
  const double pert = 10.0 * DBL_EPSILON * tnorm;

  TridiagLU lu;
  std::vector<double> Z(k * d);  // eigenvectors of T
  double prev_shift = 0.0;
  for (i64 j = 0; j < k; ++j) {
    double shift = lam[j];
    if (j > 0 && prev_shift - shift < pert) shift = prev_shift - pert;
    prev_shift = shift;
    lu.factor(diag.data(), off.data(), d, shift, tiny);
    double* z = Z.data() + j * d;
    Rng rng(0x5eed, static_cast<std::uint64_t>(j));
    for (i64 i = 0; i < d; ++i) z[i] = rng.uniform() - 0.5;
    normalize(z, d);
    for (int it = 0; it < 4; ++it) {
      lu.solve(z, d);
      for (i64 q = 0; q < j; ++q) {
        if (std::abs(lam[q] - lam[j]) > cluster) continue;
        const double* zq = Z.data() + q * d;
        double dot = 0.0;
        for (i64 i = 0; i < d; ++i) dot += zq[i] * z[i];
        for (i64 i = 0; i < d; ++i) z[i] -= dot * zq[i];
      }
      normalize(z, d);
    }
    evals[j] = lam[j];
  }
  // Back to A's basis: x = H_0 (H_1 (... H_{d-3} z)).
  for (i64 j = 0; j < k; ++j) {
    double* x = evecs + j * d;
    std::copy(Z.begin() + j * d, Z.begin() + (j + 1) * d, x);
    for (i64 s = d - 3; s >= 0; --s) {
      if (beta[s] == 0.0) continue;
      const double* v = A + s * d + s + 1;
      double t = 0.0;
      for (i64 i = 0; i < d - s - 1; ++i) t += v[i] * x[s + 1 + i];
      t *= beta[s];
      for (i64 i = 0; i < d - s - 1; ++i) x[s + 1 + i] -= t * v[i];
    }
    normalize(x, d);
  }
}

void jacobi_eig(double* A, int m, double* evals, double* V) {
  // Cyclic Jacobi touching only the entries a rotation changes (symmetric storage kept in sync);
  // rotations of entries already negligible next to their diagonal are skipped after a few sweeps
  // (Rutishauser's rule), which makes the last sweeps cheap.
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) V[i * m + j] = i == j ? 1.0 : 0.0;
  for (int sweep = 0; sweep < 60; ++sweep) {
    double offn = 0.0, diagn = 0.0;
    for (int p = 0; p < m; ++p) {
      diagn += A[p * m + p] * A[p * m + p];
      for (int q = p + 1; q < m; ++q) offn += A[p * m + q] * A[p * m + q];
    }
    if (offn <= 1e-30 * diagn || offn == 0.0) break;
    for (int p = 0; p < m; ++p) {
      for (int q = p + 1; q < m; ++q) {
        const double apq = A[p * m + q];
        const double app = A[p * m + p], aqq = A[q * m + q];
        const double g = 100.0 * std::abs(apq);
        if (sweep > 3 && std::abs(app) + g == std::abs(app) && std::abs(aqq) + g == std::abs(aqq)) {
          A[p * m + q] = A[q * m + p] = 0.0;
          continue;
        }
        if (apq == 0.0) continue;
        const double theta = (aqq - app) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c, tau = s / (1.0 + c);
        A[p * m + p] = app - t * apq;
        A[q * m + q] = aqq + t * apq;
        A[p * m + q] = A[q * m + p] = 0.0;
        for (int r = 0; r < m; ++r) {
          if (r == p || r == q) continue;
          const double arp = A[r * m + p], arq = A[r * m + q];
          const double nrp = arp - s * (arq + tau * arp), nrq = arq + s * (arp - tau * arq);
          A[r * m + p] = A[p * m + r] = nrp;
          A[r * m + q] = A[q * m + r] = nrq;
        }
        for (int r = 0; r < m; ++r) {
          const double vrp = V[r * m + p], vrq = V[r * m + q];
          V[r * m + p] = vrp - s * (vrq + tau * vrp);
          V[r * m + q] = vrq + s * (vrp - tau * vrq);
        }
      }
    }
  }
  for (int i = 0; i < m; ++i) evals[i] = A[i * m + i];
}

}  // namespace backdoorlab
