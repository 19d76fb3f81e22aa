// FastICA and PCA per class (the reduction step of Activation Clustering, Chen et al. 2018).
//
// Per class: column means in float64 (NaN/Inf rejected here, where the rows are read anyway),
// the centred rows transposed to float32 XT[d, m], the covariance XT XT^T / m in float64, its top
// k eigenpairs (linalg.hpp). PCA projects on the eigenvectors. FastICA whitens,
// X1 = diag(lambda^-1/2) E^T XT (k x m, so X1 X1^T / m = I), then runs scikit-learn's parallel
// fixed point with G = logcosh: W <- sym_decorr(E[g(W X1) X1^T] - diag(E[g'(W X1)]) W) until
// max_i |abs(<W_new[i], W[i]>) - 1| < tol. The iteration's work — two k x k x m products and
// k*m tanh per step — runs in float32 over blocks of 64 samples with the block sums added in
// float64 (ica_step, compiled for AVX-512/AVX2/SSE2 and picked at run time); the k x k
// decorrelation runs in float64 as a polar factor, for up to 8 classes at once (polar.hpp), so
// classes are iterated in batches that advance together, each on its own stopping test.
#include "cpu/decompose.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/ica_math.hpp"
#include "common/rng.hpp"
#include "cpu/linalg.hpp"
#include "cpu/parallel.hpp"
#include "cpu/polar.hpp"
#include "cpu/simd.hpp"

namespace backdoorlab {

void check_offsets(const i64* offsets, i64 G, i64 n) {
  if (G < 1) throw std::invalid_argument("offsets must have at least 2 entries");
  if (offsets[0] != 0) throw std::invalid_argument("offsets[0] must be 0, got " + std::to_string(offsets[0]));
  if (offsets[G] != n)
    throw std::invalid_argument("offsets[-1] must equal the number of rows (" + std::to_string(n) + "), got " +
                                std::to_string(offsets[G]));
  for (i64 c = 0; c < G; ++c)
    if (offsets[c + 1] < offsets[c])
      throw std::invalid_argument("offsets must be non-decreasing (offsets[" + std::to_string(c + 1) + "] < offsets[" +
                                  std::to_string(c) + "])");
}

namespace {

constexpr i64 BLOCK = 64;  // samples per block of the generic FastICA step (k > SMALL_K)
constexpr int SMALL_K = 16;  // largest k of the small-k step (simd/ica_kernels.cpp)

i64 pad4(i64 d) { return (d + 3) / 4 * 4; }

// Covariance eigenpairs of one class: fills mean (d), XT (d_pad x m, centred and divided by
// `scale`, see column_mean_scale), evals/evecs (k, eigenvalues of the scaled covariance — whitening with
// them undoes the scale by itself; eigenvectors in feature space, k x d). Returns false when the
// class has no variance at all.
//
// With fewer rows than features (m < d, e.g. flattened conv maps) the m x m Gram matrix
// G = Xc Xc^T / m is decomposed instead of the d x d covariance: they share their non-zero
// eigenvalues, and e = Xc^T u / sqrt(m lambda) maps G's eigenvector u to the covariance's. That
// costs m^2 d + m^3 instead of d^2 m + d^3 — minutes become milliseconds for d in the thousands —
// and never allocates a d x d matrix.
// The buffers of class_eigen and its callers, reused from class to class (PerThread).
struct ClassWork {
  std::vector<double> mean, evals, evecs, C, U;
  std::vector<float> XT, Xr, Y;
};

bool class_eigen(const SimdKernels& K, const float* X, i64 m, i64 d, i64 row0, i64 cls, int k, bool inner,
                 ClassWork& w, double& scale) {
  std::vector<double>& mean = w.mean;
  std::vector<float>& XT = w.XT;
  std::vector<double>& evals = w.evals;
  std::vector<double>& evecs = w.evecs;
  const i64 dp = pad4(d);
  mean.resize(d);
  scale = column_mean_scale(K, X, m, d, mean.data(), true, row0, cls);
  XT.resize(dp * m);
  transpose_centred(X, m, d, mean.data(), 1.0 / scale, XT.data(), dp);
  evals.resize(k);
  evecs.resize(static_cast<i64>(k) * d);
  const bool dual = m < d;
  const i64 p = dual ? m : d;  // size of the matrix decomposed
  std::vector<double>& C = w.C;  // every entry is written by gram()
  C.resize(p * p);
  if (dual) {
    const i64 mp = pad4(m);
    std::vector<float>& Xr = w.Xr;
    Xr.resize(mp * d);
    rows_centred(X, m, d, mean.data(), 1.0 / scale, Xr.data(), mp);
    gram(K, Xr.data(), m, mp, d, C.data(), inner);
  } else {
    gram(K, XT.data(), d, dp, m, C.data(), inner);
  }
  const double inv = 1.0 / static_cast<double>(m);
  double trace = 0.0;
  for (i64 i = 0; i < p * p; ++i) C[i] *= inv;
  for (i64 a = 0; a < p; ++a) trace += C[a * p + a];
  if (!(trace > 0.0)) return false;
  if (!dual) {
    sym_eig_top(K, C.data(), d, k, evals.data(), evecs.data());
    return evals[0] > 0.0;
  }
  std::vector<double>& U = w.U;
  U.resize(static_cast<i64>(k) * m);
  sym_eig_top(K, C.data(), m, k, evals.data(), U.data());
  if (!(evals[0] > 0.0)) return false;
  const double floor = evals[0] * 1e-12;  // below: a null direction of the class, left at 0
  for (int i = 0; i < k; ++i) {
    double* e = evecs.data() + static_cast<i64>(i) * d;
    const double* u = U.data() + static_cast<i64>(i) * m;
    if (!(evals[i] > floor)) {
      std::fill(e, e + d, 0.0);
      continue;
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(m) * evals[i]);
    for (i64 a = 0; a < d; ++a) {
      const float* x = XT.data() + a * m;
      double acc = 0.0;
      for (i64 s = 0; s < m; ++s) acc += x[s] * u[s];
      e[a] = acc * scale;
    }
  }
  return true;
}

// W <- (W W^T)^{-1/2} W, in place (k x k, float64), via eigen-decomposition (Jacobi) of W W^T,
// exactly as scikit-learn writes it. scratch: 3 k^2 + k doubles. Used when Newton fails.
void sym_decorrelation_eig(double* W, int k, double* scratch) {
  double *M = scratch, *V = M + k * k, *T = V + k * k, *lam = T + k * k;
  for (int i = 0; i < k; ++i)
    for (int j = i; j < k; ++j) {
      double s = 0.0;
      for (int t = 0; t < k; ++t) s += W[i * k + t] * W[j * k + t];
      M[i * k + j] = M[j * k + i] = s;
    }
  jacobi_eig(M, k, lam, V);
  // Eigenvalues below round-off of the largest are clipped there, not at DBL_MIN: for a singular
  // W (a class with fewer independent directions than components, whose null direction the
  // float32 Gram left at noise level) W's component along the null direction is itself round-off,
  // and 1 / sqrt(DBL_MIN) times it overflowed to Inf/NaN (fuzz seed 30, case 2724, at SSE2).
  double lam_max = 0.0;
  for (int j = 0; j < k; ++j) lam_max = std::max(lam_max, lam[j]);
  const double lam_floor = std::max(lam_max * DBL_EPSILON, DBL_MIN);
  for (int j = 0; j < k; ++j) lam[j] = 1.0 / std::sqrt(std::max(lam[j], lam_floor));
  // T = V diag(lam^-1/2) V^T, then W <- T W
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      double s = 0.0;
      for (int t = 0; t < k; ++t) s += V[i * k + t] * lam[t] * V[j * k + t];
      T[i * k + j] = s;
    }
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      double s = 0.0;
      for (int t = 0; t < k; ++t) s += T[i * k + t] * W[t * k + j];
      M[i * k + j] = s;
    }
  std::copy(M, M + k * k, W);
}

// Inverse of the k x k matrix A into Ainv by Gauss-Jordan with partial pivoting (A destroyed).
// Returns false when A is numerically singular.
bool invert(double* A, int k, double* Ainv) {
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) Ainv[i * k + j] = i == j ? 1.0 : 0.0;
  double scale = 0.0;
  for (int i = 0; i < k * k; ++i) scale = std::max(scale, std::abs(A[i]));
  if (!(scale > 0.0)) return false;
  for (int col = 0; col < k; ++col) {
    int piv = col;
    for (int r = col + 1; r < k; ++r)
      if (std::abs(A[r * k + col]) > std::abs(A[piv * k + col])) piv = r;
    const double pv = A[piv * k + col];
    if (std::abs(pv) <= 1e-13 * scale) return false;
    if (piv != col)
      for (int j = 0; j < k; ++j) {
        std::swap(A[piv * k + j], A[col * k + j]);
        std::swap(Ainv[piv * k + j], Ainv[col * k + j]);
      }
    const double inv = 1.0 / pv;
    for (int j = 0; j < k; ++j) {
      A[col * k + j] *= inv;
      Ainv[col * k + j] *= inv;
    }
    for (int r = 0; r < k; ++r) {
      if (r == col) continue;
      const double f = A[r * k + col];
      if (f == 0.0) continue;
      for (int j = 0; j < k; ++j) {
        A[r * k + j] -= f * A[col * k + j];
        Ainv[r * k + j] -= f * Ainv[col * k + j];
      }
    }
  }
  return true;
}

// W <- (W W^T)^{-1/2} W, in place: the orthogonal polar factor of W, found by Newton's
// iteration X <- (g X + X^-T / g) / 2 with Higham's Frobenius-norm scaling g. Same result as
// the eigen-decomposition form (the polar factor of a non-singular matrix is unique) at a
// fraction of the cost for k ~ 10: ~6 inversions instead of ~300 Jacobi rotations, and this runs
// every FastICA iteration (for k > POLAR_MAX_K; smaller k take the batched polar_factor_batch,
// and this only for its singular lanes and each class's random start). Singular W falls back to
// the eigen-decomposition form. scratch: 4 k^2 + k doubles.
void sym_decorrelation(double* W, int k, double* scratch) {
  double *X = scratch, *A = X + k * k, *Y = A + k * k;
  std::copy(W, W + k * k, X);
  bool ok = true;
  for (int it = 0; it < 100; ++it) {
    std::copy(X, X + k * k, A);
    if (!invert(A, k, Y)) {
      ok = false;
      break;
    }
    double nx = 0.0, ny = 0.0;
    for (int i = 0; i < k * k; ++i) {
      nx += X[i] * X[i];
      ny += Y[i] * Y[i];
    }
    const double g = std::sqrt(std::sqrt(ny / nx));
    double diff = 0.0, nn = 0.0;
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) {
        const double v = 0.5 * (g * X[i * k + j] + Y[j * k + i] / g);
        diff += (v - X[i * k + j]) * (v - X[i * k + j]);
        nn += v * v;
        A[i * k + j] = v;
      }
    std::copy(A, A + k * k, X);
    if (diff <= 1e-24 * nn) break;  // quadratic convergence: the error is now at round-off
    if (it == 99) ok = false;
  }
  if (ok) {
    std::copy(X, X + k * k, W);
  } else {
    sym_decorrelation_eig(W, k, scratch);
  }
}

// One class's FastICA: whitened data and the current unmixing matrix.
struct IcaClass {
  i64 c = 0, r0 = 0, m = 0, mp = 0;
  bool whitened = false;     // false: constant rows, sources stay 0
  bool running = false;      // iterating (not converged, not at max_iter)
  int it = 0;
  std::vector<float> X1;     // k x m whitened data
  std::vector<float> X1p;    // k x mp, zero-padded copy for the compile-time-K kernel
  std::vector<float> G;      // k x mp scratch of that kernel
  std::vector<float> Wf;     // W in float32 for the data pass
  std::vector<double> W, W1, GX, gp;
};

// Whitening and the random orthogonal start of class c.
void ica_prepare(const SimdKernels& K, IcaClass& st, const float* X, i64 d, const i64* offsets, i64 c, int k, std::uint64_t seed,
                 bool inner, double* scratch, ClassWork& w) {
  st.c = c;
  st.r0 = offsets[c];
  st.m = offsets[c + 1] - st.r0;
  double scale = 1.0;  // not needed: whitening is scale-free (XT and evals are scaled alike)
  if (!class_eigen(K, X + st.r0 * d, st.m, d, st.r0, c, k, inner, w, scale)) return;  // constant rows
  const std::vector<float>& XT = w.XT;
  std::vector<double>& evecs = w.evecs;
  const std::vector<double>& evals = w.evals;
  st.whitened = true;
  // whitening matrix K = diag(lambda^-1/2) E^T; eigenvalues at round-off level are clipped so a
  // rank-deficient class (dead ReLU channels) does not blow up
  const double floor = evals[0] * 1e-12;
  for (int i = 0; i < k; ++i) {
    const double s = 1.0 / std::sqrt(std::max(evals[i], floor));
    for (i64 a = 0; a < d; ++a) evecs[i * d + a] *= s;
  }
  st.X1.resize(static_cast<i64>(k) * st.m);
  K.project(evecs.data(), k, XT.data(), d, st.m, st.X1.data());
  if (k <= SMALL_K) {  // the small-k kernel
    st.mp = (st.m + 15) / 16 * 16;  // a multiple of every level's vector width
    st.X1p.assign(static_cast<i64>(k) * st.mp, 0.0f);
    for (int i = 0; i < k; ++i)
      std::copy(st.X1.begin() + i * st.m, st.X1.begin() + (i + 1) * st.m, st.X1p.begin() + i * st.mp);
    st.G.assign(static_cast<i64>(k) * st.mp, 0.0f);
  }
  st.W.resize(k * k);
  st.W1.resize(k * k);
  st.GX.resize(k * k);
  st.gp.resize(k);
  st.Wf.resize(k * k);
  Rng rng(seed, static_cast<std::uint64_t>(c));
  for (int i = 0; i < k * k; ++i) st.W[i] = rng.normal();
  sym_decorrelation(st.W.data(), k, scratch);
  st.running = true;
}

// W1 = E[g(W X1) X1^T] - diag(E[g'(W X1)]) W, not yet decorrelated.
void ica_update(const SimdKernels& K, IcaClass& st, int k, float* buf) {
  for (int i = 0; i < k * k; ++i) st.Wf[i] = static_cast<float>(st.W[i]);
  if (k <= SMALL_K) {
    K.ica_step_small(st.X1p.data(), k, st.m, st.mp, st.Wf.data(), st.GX.data(), st.gp.data(), st.G.data());
  } else {
    K.ica_step(st.X1.data(), k, st.m, st.Wf.data(), st.GX.data(), st.gp.data(), buf);
  }
  const double inv_m = 1.0 / static_cast<double>(st.m);
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) st.W1[i * k + j] = st.GX[i * k + j] * inv_m - st.gp[i] * inv_m * st.W[i * k + j];
}

// After W1 was decorrelated: scikit-learn's stopping test, then W <- W1.
void ica_accept(IcaClass& st, int k, int max_iter, double tol) {
  double lim = 0.0;
  for (int i = 0; i < k; ++i) {
    double s = 0.0;
    for (int j = 0; j < k; ++j) s += st.W1[i * k + j] * st.W[i * k + j];
    lim = std::max(lim, std::abs(std::abs(s) - 1.0));
  }
  st.W.swap(st.W1);
  ++st.it;
  st.running = !(lim < tol) && st.it < max_iter;
}

// Sources S = W X1 scaled to unit variance (scikit-learn's whiten="unit-variance"), into out.
void ica_finish(const SimdKernels& K, const IcaClass& st, int k, float* out) {
  if (!st.whitened) return;
  const i64 m = st.m;
  const double inv_m = 1.0 / static_cast<double>(m);
  std::vector<float> S(static_cast<i64>(k) * m);
  K.project(st.W.data(), k, st.X1.data(), k, m, S.data());
  for (int i = 0; i < k; ++i) {
    const float* si = S.data() + i * m;
    double mu = 0.0, q = 0.0;
    for (i64 s = 0; s < m; ++s) mu += si[s];
    mu *= inv_m;
    for (i64 s = 0; s < m; ++s) q += (si[s] - mu) * (si[s] - mu);
    const double sd = std::sqrt(q * inv_m);
    const float scale = sd > 0.0 ? static_cast<float>(1.0 / sd) : 0.0f;
    for (i64 s = 0; s < m; ++s) out[(st.r0 + s) * k + i] = si[s] * scale;
  }
}

}  // namespace

// Classes run in batches of up to POLAR_LANES so the per-iteration decorrelation of all of them
// is one vectorised polar_factor_batch call (see polar.hpp); every class still follows its own
// iteration sequence, bit for bit whatever else is in its batch.
void fastica(const float* X, i64 n, i64 d, const i64* offsets, i64 G, int k, int max_iter, double tol,
             std::uint64_t seed, float* out, std::int32_t* n_iter) {
  check_offsets(offsets, G, n);
  if (k < 1 || k > d)
    throw std::invalid_argument("n_components=" + std::to_string(k) + " must be in [1, d=" + std::to_string(d) + "]");
  if (max_iter < 1) throw std::invalid_argument("max_iter must be >= 1, got " + std::to_string(max_iter));
  for (i64 c = 0; c < G; ++c) {
    const i64 m = offsets[c + 1] - offsets[c];
    n_iter[c] = 0;
    if (m > 0 && m < std::max<i64>(k, 2))
      throw std::invalid_argument("class " + std::to_string(c) + " has " + std::to_string(m) +
                                  " rows, fewer than n_components=" + std::to_string(k) + " (and at least 2)");
  }
  std::fill(out, out + n * k, 0.0f);
  const SimdKernels& K = simd();  // one level for the whole call
  const bool batched_polar = k <= POLAR_MAX_K;
  PerThread<ClassWork> work;
  for_each_class_batch(offsets, G, POLAR_LANES, [&](const i64* classes, int count, bool inner) {
    std::vector<IcaClass> batch(count);
    std::vector<double> scratch(4 * k * k + k);
    std::vector<float> buf(static_cast<i64>(k) * BLOCK);
    for (int b = 0; b < count; ++b) ica_prepare(K, batch[b], X, d, offsets, classes[b], k, seed, inner, scratch.data(), work.local());
    std::vector<IcaClass*> running;
    std::vector<double*> mats;  // the running classes' W1, one polar lane each (count <= POLAR_LANES)
    for (;;) {
      running.clear();
      mats.clear();
      for (auto& st : batch)
        if (st.running) {
          running.push_back(&st);
          mats.push_back(st.W1.data());
        }
      if (running.empty()) break;
      for (IcaClass* st : running) ica_update(K, *st, k, buf.data());
      if (batched_polar) {
        const int lanes = static_cast<int>(mats.size());
        const std::uint32_t failed = polar_factor_batch(K, mats.data(), lanes, k);
        for (int l = 0; l < lanes; ++l)  // singular W1: the single-matrix forms cope
          if (failed & (1u << l)) sym_decorrelation(mats[l], k, scratch.data());
      } else {
        for (IcaClass* st : running) sym_decorrelation(st->W1.data(), k, scratch.data());
      }
      for (IcaClass* st : running) ica_accept(*st, k, max_iter, tol);
    }
    for (auto& st : batch) {
      n_iter[st.c] = st.it;
      ica_finish(K, st, k, out);
    }
  });
}

void pca(const float* X, i64 n, i64 d, const i64* offsets, i64 G, int k, float* out) {
  check_offsets(offsets, G, n);
  if (k < 1 || k > d)
    throw std::invalid_argument("n_components=" + std::to_string(k) + " must be in [1, d=" + std::to_string(d) + "]");
  for (i64 c = 0; c < G; ++c) {
    const i64 m = offsets[c + 1] - offsets[c];
    if (m > 0 && m < k)
      throw std::invalid_argument("class " + std::to_string(c) + " has " + std::to_string(m) +
                                  " rows, fewer than n_components=" + std::to_string(k));
  }
  std::fill(out, out + n * k, 0.0f);
  const SimdKernels& K = simd();  // one level for the whole call
  PerThread<ClassWork> work;
  for_each_class(offsets, G, [&](i64 c, bool inner) {
    const i64 r0 = offsets[c], m = offsets[c + 1] - r0;
    ClassWork& w = work.local();
    double scale = 1.0;
    if (!class_eigen(K, X + r0 * d, m, d, r0, c, k, inner, w, scale)) return;
    std::vector<double>& evecs = w.evecs;
    for (int i = 0; i < k; ++i) {  // svd_flip: the largest |entry| of every component positive
      double* v = evecs.data() + i * d;
      i64 best = 0;
      for (i64 a = 1; a < d; ++a)
        if (std::abs(v[a]) > std::abs(v[best])) best = a;
      if (v[best] < 0)
        for (i64 a = 0; a < d; ++a) v[a] = -v[a];
    }
    std::vector<float>& Y = w.Y;
    Y.resize(static_cast<i64>(k) * m);
    K.project(evecs.data(), k, w.XT.data(), d, m, Y.data());
    for (int i = 0; i < k; ++i)  // projections of the scaled rows, scaled back
      for (i64 s = 0; s < m; ++s) out[(r0 + s) * k + i] = to_float_output(Y[i * m + s] * scale, "pca", r0 + s, c);
  });
}

}  // namespace backdoorlab
