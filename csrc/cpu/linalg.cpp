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
#include <vector>

#include "common/rng.hpp"
#include "cpu/parallel.hpp"
#include "cpu/simd.hpp"

namespace backdoorlab {

namespace {

// The first row of X[n, d] holding a NaN or Inf, named in the error (the slow path: only after
// column_stats found one).
[[noreturn]] void throw_non_finite(const float* X, i64 n, i64 d, i64 row0, i64 cls) {
  i64 r = 0;
  while (r < n && std::all_of(X + r * d, X + (r + 1) * d, [](float x) { return std::isfinite(x); })) ++r;
  throw std::invalid_argument("X contains NaN or Inf at row " + std::to_string(row0 + std::min(r, n - 1)) +
                              " (class " + std::to_string(cls) + ")");
}

}  // namespace

double column_mean_scale(const SimdKernels& K, const float* X, i64 n, i64 d, double* mean, bool center, i64 row0,
                         i64 cls) {
  if (n < 1 || d < 1) {
    std::fill(mean, mean + d, 0.0);
    return 1.0;
  }
  // one vectorised pass (column_stats) for the sums, the finiteness check and the column extremes:
  // |x - mean| is largest at a column's smallest or largest value, so those 2 d values give the
  // same maximum as visiting every entry in float64
  std::vector<float> lo(d), hi(d);
  K.column_stats(X, n, d, mean, lo.data(), hi.data());
  const double inv = 1.0 / static_cast<double>(n);
  for (i64 a = 0; a < d; ++a) {
    if (!std::isfinite(mean[a])) throw_non_finite(X, n, d, row0, cls);
    mean[a] *= inv;
  }
  double top = 0.0;
  for (i64 a = 0; a < d; ++a) {
    const double m = center ? mean[a] : 0.0;
    top = std::max(top, std::max(std::abs(static_cast<double>(lo[a]) - m), std::abs(static_cast<double>(hi[a]) - m)));
  }
  if (!(top > 0.0)) return 1.0;
  int e = 0;
  std::frexp(top, &e);  // top = f 2^e with f in [0.5, 1)
  return std::ldexp(1.0, e);
}

void column_mean(const float* X, i64 n, i64 d, double* mean, i64 row0, i64 cls) {
  column_mean_scale(simd(), X, n, d, mean, false, row0, cls);
}

void transpose_centred(const float* X, i64 n, i64 d, const double* mean, double inv_scale, float* XT, i64 d_pad) {
  simd().transpose_centred(X, n, d, mean, inv_scale, XT, d_pad);  // per level: 8 x 8 register tiles where it can
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

void gram(const SimdKernels& K, const float* XT, i64 d, i64 d_pad, i64 n, double* C, bool parallel) {
  const i64 n_blocks = d_pad / 4;
  // Blocks of four rows a against blocks of four rows b >= a (up to d_pad; padded rows are zero).
#pragma omp parallel for schedule(dynamic, 1) if (parallel) num_threads(threads_for(n_blocks))
  for (i64 ib = 0; ib < n_blocks; ++ib) {
    const i64 a = ib * 4;
    std::vector<double> out((d_pad - a) * 4);
    K.gram_rows(XT, n, a, d_pad, out.data());
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

// Solve (T - sigma I) x = b in place for the tridiagonal T (diag, off), by Gaussian elimination
// with partial pivoting; zero pivots are replaced by `tiny` (inverse iteration wants the huge
// growth a near-singular shift gives, not a division by zero).
struct TridiagLU {
  std::vector<double> dl, dd, du, du2, inv_dd;
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
    // solve() multiplies by the pivots' reciprocals: its back substitution is a chain of
    // dependent steps, and a division there (~13 cycles) dominated each step's latency
    inv_dd.resize(n);
    for (i64 i = 0; i < n; ++i) inv_dd[i] = 1.0 / dd[i];
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
    b[n - 1] *= inv_dd[n - 1];
    if (n >= 2) b[n - 2] = (b[n - 2] - du[n - 2] * b[n - 1]) * inv_dd[n - 2];
    for (i64 i = n - 3; i >= 0; --i) b[i] = (b[i] - du[i] * b[i + 1] - du2[i] * b[i + 2]) * inv_dd[i];
  }
};

void normalize(double* x, i64 n) {
  double s = 0.0;
  for (i64 i = 0; i < n; ++i) s += x[i] * x[i];
  s = std::sqrt(s);
  if (s > 0.0)
    for (i64 i = 0; i < n; ++i) x[i] /= s;
}

// Infinity norm of the symmetric tridiagonal (diag, off) of size n; 1 for the zero matrix (it
// scales the pivot floor and the cluster gap of inverse iteration).
double tridiag_norm(const double* diag, const double* off, i64 n) {
  double t = 0.0;
  for (i64 i = 0; i < n; ++i)
    t = std::max(t, std::abs(diag[i]) + (i > 0 ? std::abs(off[i - 1]) : 0.0) + (i + 1 < n ? std::abs(off[i]) : 0.0));
  return t == 0.0 ? 1.0 : t;
}

// z^T T z for the tridiagonal T = (diag, off) and a unit vector z: the eigenvalue that goes with
// an inverse-iteration vector (the bisection stops at 1e-12 of the scale; the quotient's error is
// the square of the vector's, so it is exact to round-off).
double tridiag_rayleigh(const double* diag, const double* off, i64 n, const double* z) {
  double rq = 0.0;
  for (i64 i = 0; i < n; ++i) rq += diag[i] * z[i] * z[i];
  for (i64 i = 0; i + 1 < n; ++i) rq += 2.0 * off[i] * z[i] * z[i + 1];
  return rq;
}

// The dense path: Householder, bisection, inverse iteration (see the top of this file).
void sym_eig_top_dense(const SimdKernels& K, double* A, i64 d, i64 k, double* evals, double* evecs) {
  if (d == 1) {
    evals[0] = A[0];
    evecs[0] = 1.0;
    return;
  }
  std::vector<double> diag(d), off(d), beta(d, 0.0), work(d), lam(k);
  K.tridiagonalize(A, d, diag.data(), off.data(), beta.data(), work.data());
  K.tridiagonal_top_eigenvalues(diag.data(), off.data(), d, k, lam.data());

  const double tnorm = tridiag_norm(diag.data(), off.data(), d);
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
    evals[j] = tridiag_rayleigh(diag.data(), off.data(), d, z);
  }
  // Rayleigh quotients of a cluster's vectors may come out of order by round-off: keep the
  // pairs descending (insertion sort; k is small)
  for (i64 j = 1; j < k; ++j)
    for (i64 i = j; i > 0 && evals[i] > evals[i - 1]; --i) {
      std::swap(evals[i], evals[i - 1]);
      std::swap_ranges(Z.begin() + i * d, Z.begin() + (i + 1) * d, Z.begin() + (i - 1) * d);
    }
  // Back to A's basis: x = H_0 (H_1 (... H_{d-3} z)).
  std::copy(Z.begin(), Z.begin() + k * d, evecs);
  K.householder_apply(A, d, beta.data(), k, evecs);
  for (i64 j = 0; j < k; ++j) normalize(evecs + j * d, d);
}

// w minus its components along the nv orthonormal rows of V, twice (classical Gram-Schmidt with
// one re-orthogonalisation, enough in float64), then normalised. Returns |w after| / |w before|
// (0 for w == 0): near 0 when w lay in the span of V. coef: nv doubles of scratch.
double orthonormalize(const SimdKernels& K, const double* V, i64 nv, i64 d, double* w, double* coef) {
  double n0 = 0.0;
  for (i64 i = 0; i < d; ++i) n0 += w[i] * w[i];
  if (!(n0 > 0.0)) return 0.0;
  for (int pass = 0; pass < 2 && nv > 0; ++pass) {
    K.dot_rows(V, nv, d, w, coef);
    K.axpy_rows(V, nv, d, coef, w);
  }
  double n1 = 0.0;
  for (i64 i = 0; i < d; ++i) n1 += w[i] * w[i];
  n1 = std::sqrt(n1);
  if (n1 > 0.0)
    for (i64 i = 0; i < d; ++i) w[i] /= n1;
  return n1 / std::sqrt(n0);
}

// Block Krylov (block Lanczos with full re-orthogonalisation) for the top k eigenpairs of the
// symmetric A: the basis V grows by blocks of KRYLOV_BLOCK vectors, each block A times the
// previous one, orthonormalised against all of V; the Rayleigh-Ritz pairs of T = V A V^T are
// accepted when every one of the k wanted residuals |A y - theta y| is below 1e-10 |theta_1|.
// Why a block of 4 and not single-vector Lanczos: a single start vector sees only one direction
// of a repeated eigenvalue and would report the next eigenvalue in its place; a block of 4
// resolves multiplicities up to 4. On activation covariances (d = 256 ... 512, k = 10) it
// converges with 50-70 basis vectors: the cost is those block products (level-3 work, the
// rows of A read once per block) instead of the O(d^3) reduction of the dense path. Returns false
// (nothing written) when the basis reaches max_basis first; the caller then takes the dense path.
constexpr int KRYLOV_BLOCK = 4;
constexpr double KRYLOV_TOL = 1e-10;
// The tolerance of gram_top1 with float32 products: its operator's own float32 rounding sits around 1e-7 of
// |theta| on activation-like classes (up to ~1e-5 on isotropic noise, where the test then fails
// and the float64 paths answer), and a residual r moves the vector by r / gap: 1e-6 keeps the
// scores within ~1e-5 of exact for a 10 % gap, where float32 data carry ~1e-7 themselves.
constexpr double FLOAT32_GRAM_TOL = 1e-6;

bool sym_eig_top_krylov(const SimdKernels& K, const double* A, i64 d, i64 k, i64 max_basis, double* evals,
                        double* evecs) {
  const int b = KRYLOV_BLOCK;
  std::vector<double> V(max_basis * d), AV(max_basis * d), T(max_basis * max_basis), coef(max_basis);
  std::vector<double> Tc, S(k * max_basis), theta(k), y(d), r(d);
  Rng rng(0x5eed, 1);
  std::uint64_t restarts = 0;
  i64 nb = 0;           // basis vectors so far
  i64 next_check = 0;   // basis size of the next Rayleigh-Ritz test
  i64 last_nb = 0;      // basis size at the last test, and its largest residual over the bound
  double last_worst = 0.0;
  std::vector<double> blk(b * d);
  for (int j = 0; j < b * d; ++j) blk[j] = rng.uniform() - 0.5;
  while (nb + b <= max_basis) {
    // orthonormalise the new block into V (a vector already in the span: a fresh random one)
    const i64 nb0 = nb;
    for (int q = 0; q < b; ++q) {
      double* w = V.data() + nb * d;
      std::copy(blk.begin() + q * d, blk.begin() + (q + 1) * d, w);
      double kept = orthonormalize(K, V.data(), nb, d, w, coef.data());
      for (int retry = 0; kept < 1e-8 && retry < 3; ++retry) {
        Rng fresh(0x5eed, 2, restarts++);
        for (i64 i = 0; i < d; ++i) w[i] = fresh.uniform() - 0.5;
        kept = orthonormalize(K, V.data(), nb, d, w, coef.data());
      }
      if (kept < 1e-8) return false;  // cannot extend the basis: let the dense path answer
      ++nb;
    }
    const i64 nnew = nb - nb0;
    K.symm_rows(A, d, V.data() + nb0 * d, static_cast<int>(nnew), AV.data() + nb0 * d);
    // T[i, j] = <V_i, A V_j>: the new rows and columns
    for (i64 i = nb0; i < nb; ++i) {
      K.dot_rows(AV.data(), nb, d, V.data() + i * d, coef.data());
      for (i64 j = 0; j < nb; ++j) T[i * max_basis + j] = T[j * max_basis + i] = coef[j];
    }
    std::copy(AV.begin() + nb0 * d, AV.begin() + nb * d, blk.begin());  // the next block, before orthogonalisation
    const bool last = nb + b > max_basis;  // the basis cannot grow: test it whatever the schedule says
    if (nb < k + b || (nb < next_check && !last)) continue;
    Tc.resize(nb * nb);
    for (i64 i = 0; i < nb; ++i)
      for (i64 j = 0; j < nb; ++j) Tc[i * nb + j] = T[i * max_basis + j];
    sym_eig_top_dense(K, Tc.data(), nb, k, theta.data(), S.data());
    const double bound = KRYLOV_TOL * std::max(std::abs(theta[0]), DBL_MIN);
    double worst = 0.0;  // the largest residual of the k wanted pairs, in units of the bound
    for (i64 i = 0; i < k; ++i) {
      // y = V^T s, r = (A V)^T s by the level's row sums (x -= sum c_j row_j, so c = -s)
      for (i64 j = 0; j < nb; ++j) coef[j] = -S[i * nb + j];
      std::fill(r.begin(), r.end(), 0.0);
      std::fill(y.begin(), y.end(), 0.0);
      K.axpy_rows(V.data(), nb, d, coef.data(), y.data());
      K.axpy_rows(AV.data(), nb, d, coef.data(), r.data());
      double res = 0.0;
      for (i64 a = 0; a < d; ++a) res += (r[a] - theta[i] * y[a]) * (r[a] - theta[i] * y[a]);
      worst = std::max(worst, std::sqrt(res) / bound);
    }
    const bool converged = worst <= 1.0;
    // When to test next. A Rayleigh-Ritz test costs a dense eigen-solve of the nb x nb T (more than
    // a block product once nb passes ~40), so the tests are spaced by what the residuals say: the
    // next one goes where the residual, shrinking at the rate seen between the last two tests,
    // would reach the bound — but at most half the basis further on. Why the cap: early on the
    // residuals fall slowly and then fast (the Ritz values must first separate), so that rate
    // alone overshoots by far (d = 160, k = 10: it asked for 80 vectors when ~50 sufficed); with it
    // the tests grow geometrically at worst (16, 24, 36, 52, ...) instead of every second block.
    i64 step = 2 * b;
    if (!converged && last_worst > 0.0 && worst < last_worst) {
      const double per_vector = std::log(last_worst / worst) / static_cast<double>(nb - last_nb);
      const double needed = std::log(worst) / per_vector;
      step = std::max<i64>(step, std::min<i64>(static_cast<i64>(needed), nb / 2) / b * b);
    }
    last_worst = worst;
    last_nb = nb;
    next_check = nb + step;
    if (!converged) continue;
    for (i64 i = 0; i < k; ++i) {
      double* x = evecs + i * d;
      for (i64 j = 0; j < nb; ++j) coef[j] = -S[i * nb + j];
      std::fill(x, x + d, 0.0);
      K.axpy_rows(V.data(), nb, d, coef.data(), x);
      normalize(x, d);
      evals[i] = theta[i];
    }
    return true;
  }
  return false;
}

// The top eigenpair alone (k = 1: spectral signatures) by single-vector Lanczos with full
// re-orthogonalisation. Why not the block Krylov above: its block of 4 is there to see up to four
// copies of a repeated eigenvalue among the k wanted; for k = 1 any unit vector of the top
// eigenspace is a right answer, and one vector per step reads A once per basis vector instead of
// once per 4 while the Rayleigh-Ritz matrix stays tridiagonal (alpha, beta): a test needs no
// Householder reduction, only the top eigenvalue of T (bisection) and its vector (inverse
// iteration), and its residual is beta_j |s_j| (the Lanczos relation), checked once against
// |A y - theta y| before it is accepted: tol relative to |theta| (KRYLOV_TOL, the block path's,
// for an operator applied in float64); false (nothing written) when min(d / 2, 96) steps pass
// first, and the caller takes another path.
template <class Apply>
bool lanczos_top1(const SimdKernels& K, Apply apply, i64 d, double tol, double* eval, double* evec) {
  const i64 max_steps = std::min<i64>(d / 2, 96);
  std::vector<double> V(max_steps * d), alpha(max_steps), beta(max_steps), w(d), coef(max_steps), coef2(max_steps);
  std::vector<double> s(max_steps), y(d);
  TridiagLU lu;
  Rng rng(0x5eed, 1);
  for (i64 i = 0; i < d; ++i) V[i] = rng.uniform() - 0.5;
  normalize(V.data(), d);
  i64 next_check = 8;
  for (i64 j = 0; j < max_steps; ++j) {
    const i64 n = j + 1;  // basis vectors so far, and the size of T
    apply(V.data() + j * d, w.data());
    // w minus its components along V[0..j], twice; alpha_j is v_j's coefficient
    K.dot_rows(V.data(), n, d, w.data(), coef.data());
    K.axpy_rows(V.data(), n, d, coef.data(), w.data());
    K.dot_rows(V.data(), n, d, w.data(), coef2.data());
    K.axpy_rows(V.data(), n, d, coef2.data(), w.data());
    alpha[j] = coef[j] + coef2[j];
    double bn = 0.0;
    for (i64 i = 0; i < d; ++i) bn += w[i] * w[i];
    beta[j] = std::sqrt(bn);
    const bool exhausted = n == max_steps || n == d || !(beta[j] > 0.0);
    if (n >= next_check || exhausted) {
      next_check = n + std::max<i64>(4, n / 4);
      double theta = 0.0;
      K.tridiagonal_top_eigenvalues(alpha.data(), beta.data(), n, 1, &theta);
      lu.factor(alpha.data(), beta.data(), n, theta, DBL_EPSILON * tridiag_norm(alpha.data(), beta.data(), n));
      for (i64 i = 0; i < n; ++i) s[i] = 1.0;
      for (int it = 0; it < 3; ++it) {
        lu.solve(s.data(), n);
        normalize(s.data(), n);
      }
      const double rq = tridiag_rayleigh(alpha.data(), beta.data(), n, s.data());  // the Ritz value
      const double bound = tol * std::max(std::abs(rq), DBL_MIN);
      if (beta[j] * std::abs(s[j]) <= bound || exhausted) {
        std::fill(y.begin(), y.end(), 0.0);
        for (i64 q = 0; q < n; ++q)
          for (i64 i = 0; i < d; ++i) y[i] += s[q] * V[q * d + i];
        normalize(y.data(), d);
        apply(y.data(), w.data());
        double res = 0.0;
        for (i64 i = 0; i < d; ++i) res += (w[i] - rq * y[i]) * (w[i] - rq * y[i]);
        if (std::sqrt(res) <= bound) {
          *eval = rq;
          std::copy(y.begin(), y.end(), evec);
          return true;
        }
        if (exhausted) return false;
      }
    }
    if (exhausted) return false;
    double* next = V.data() + n * d;
    for (i64 i = 0; i < d; ++i) next[i] = w[i] / beta[j];
  }
  return false;
}

}  // namespace

void sym_eig_top(const SimdKernels& K, double* A, i64 d, i64 k, double* evals, double* evecs) {
  if (k < 1 || k > d) throw std::invalid_argument("sym_eig_top: k out of range");
  // Which path: measured with _sym_eig_top on covariances of Gaussian activations (one thread,
  // AVX-512): for k = 3 and 10 the dense reduction wins below d ~ 256 (d = 160, k = 10: 0.82 ms vs
  // 1.5 ms; d = 320: 3.8 ms vs 2.7 ms), its d^3 cost growing faster than the Krylov basis; for
  // k = 1 Lanczos wins from d = 64 on (d = 160: 0.11 ms vs 0.60 ms).
  const i64 max_basis = std::min<i64>(d / 2, 8 * k + 64) / KRYLOV_BLOCK * KRYLOV_BLOCK;
  bool done = false;
  if (d >= 64 && k == 1)
    done = lanczos_top1(K, [&](const double* v, double* w) { K.symm_rows(A, d, v, 1, w); }, d, KRYLOV_TOL, evals,
                        evecs);
  else if (d >= 256 && max_basis >= k + 2 * KRYLOV_BLOCK)
    done = sym_eig_top_krylov(K, A, d, k, max_basis, evals, evecs);
  if (!done) sym_eig_top_dense(K, A, d, k, evals, evecs);
  // a fixed sign whichever path answered: the largest |entry| of every vector positive
  for (i64 i = 0; i < k; ++i) {
    double* x = evecs + i * d;
    i64 best = 0;
    for (i64 a = 1; a < d; ++a)
      if (std::abs(x[a]) > std::abs(x[best])) best = a;
    if (x[best] < 0)
      for (i64 a = 0; a < d; ++a) x[a] = -x[a];
  }
}

bool gram_top1(const SimdKernels& K, const float* Xr, i64 m, i64 d, bool float32, double* eval, double* evec) {
  if (d < 1 || m < 1) return false;
  if (!float32)
    return lanczos_top1(K, [&](const double* v, double* w) { K.gram_apply(Xr, m, d, v, w); }, d, KRYLOV_TOL, eval,
                        evec);
  std::vector<float> vf(d), wf(d);
  auto apply = [&](const double* v, double* w) {
    for (i64 a = 0; a < d; ++a) vf[a] = static_cast<float>(v[a]);
    K.gram_apply_f32(Xr, m, d, vf.data(), wf.data(), w);
  };
  return lanczos_top1(K, apply, d, FLOAT32_GRAM_TOL, eval, evec);
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
