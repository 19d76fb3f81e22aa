// Per-class decompositions on the GPU: FastICA (the Activation Clustering reduction), PCA and
// the spectral-signature scores. All three share one pipeline:
//   1. class means (one thread per feature, float64 sums in row order: deterministic);
//   2. class covariance (or second moment) as float64 d x d tiles, 32 x 32 per block, upper
//      triangle only, classes in chunks so the workspace stays under ~1 GiB;
//   3. top-k eigenpairs per class, one block per class: a dense shared-memory Jacobi when
//      d <= 48, else block subspace iteration (CGS2 orthonormalisation, Rayleigh-Ritz with the
//      shared-memory Jacobi every few steps, stop on the Ritz residual);
//   4. a projection kernel (one thread per (row, component)).
// FastICA then runs the symmetric fixed-point iteration of scikit-learn (logcosh, alpha = 1)
// with one block per class on the whitened (n_c, k) data, and maps the sources back.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/common.cuh"

namespace backdoorlab {
namespace cuda {
namespace {

constexpr int kTile = 32;
constexpr int kCovThreads = 256;
constexpr int kBlock = 256;
constexpr int kRayleighRitzEvery = 8;
constexpr int kEigMaxIter = 2000;
constexpr double kEigTol = 1e-10;          // Ritz residual relative to the top eigenvalue
constexpr double kDegenerate = 1e-12;      // whitening floor, relative to the top eigenvalue
constexpr size_t kCovWorkspaceBytes = size_t(1) << 30;

// ---- 1. class means --------------------------------------------------------------------------
__global__ void class_mean_kernel(const float* __restrict__ X, const int64_t* __restrict__ offsets,
                                  int64_t d, double* __restrict__ mean) {
  const int64_t c = blockIdx.x;  // classes on x: grid.y is limited to 65535
  const int64_t j = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int64_t r0 = offsets[c], r1 = offsets[c + 1];
  double s = 0.0;
  for (int64_t r = r0; r < r1; ++r) s += X[r * d + j];
  mean[c * d + j] = r1 > r0 ? s / double(r1 - r0) : 0.0;
}

// ---- 2. class covariance tiles ---------------------------------------------------------------
// grid.x: upper-triangle tile pairs (ti <= tj), grid.y: class within the chunk.
__global__ void class_cov_kernel(const float* __restrict__ X, const int64_t* __restrict__ offsets,
                                 const double* __restrict__ mean, int64_t d, int64_t class0,
                                 double* __restrict__ cov) {
  __shared__ double a[kTile][kTile + 1];
  __shared__ double b[kTile][kTile + 1];
  const int64_t c = class0 + blockIdx.y;
  const int n_tiles = static_cast<int>((d + kTile - 1) / kTile);
  int ti = 0, rem = blockIdx.x;
  while (rem >= n_tiles - ti) {
    rem -= n_tiles - ti;
    ++ti;
  }
  const int tj = ti + rem;
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;  // ty in [0, 8)
  const int64_t r0 = offsets[c], r1 = offsets[c + 1];
  const double* mu = mean + c * d;
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t rs = r0; rs < r1; rs += kTile) {
    for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
      const int rr = e / kTile, cc = e % kTile;
      const int64_t r = rs + rr;
      const int64_t ja = int64_t(ti) * kTile + cc, jb = int64_t(tj) * kTile + cc;
      a[rr][cc] = (r < r1 && ja < d) ? double(X[r * d + ja]) - mu[ja] : 0.0;
      b[rr][cc] = (r < r1 && jb < d) ? double(X[r * d + jb]) - mu[jb] : 0.0;
    }
    __syncthreads();
#pragma unroll 4
    for (int rr = 0; rr < kTile; ++rr) {
      const double bv = b[rr][tx];
      acc[0] += a[rr][ty] * bv;
      acc[1] += a[rr][ty + 8] * bv;
      acc[2] += a[rr][ty + 16] * bv;
      acc[3] += a[rr][ty + 24] * bv;
    }
    __syncthreads();
  }
  const double inv_n = r1 > r0 ? 1.0 / double(r1 - r0) : 0.0;
  double* C = cov + int64_t(blockIdx.y) * d * d;
  for (int m = 0; m < 4; ++m) {
    const int64_t i = int64_t(ti) * kTile + ty + 8 * m, j = int64_t(tj) * kTile + tx;
    if (i < d && j < d) {
      C[i * d + j] = acc[m] * inv_n;
      C[j * d + i] = acc[m] * inv_n;
    }
  }
}

// ---- 3. top-k eigenpairs ---------------------------------------------------------------------
// Orthonormalises the columns of Y (rows x cols, row-major, global memory) in place by
// classical Gram-Schmidt applied twice ("twice is enough"); a column that vanishes (rank
// deficiency) is replaced by a pseudo-random one and orthogonalised again.
__device__ void block_orthonormalize(double* Y, int64_t rows, int cols, double* dots,
                                     double* red, uint64_t key) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = blockDim.x / kWarp;
  for (int j = 0; j < cols; ++j) {
    double norm0 = 0.0;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) norm0 += Y[i * cols + j] * Y[i * cols + j];
    norm0 = sqrt(block_sum(norm0, red));
    for (int attempt = 0; attempt < 3; ++attempt) {
      for (int pass = 0; pass < 2; ++pass) {
        for (int i = warp; i < j; i += n_warps) {
          double s = 0.0;
          for (int64_t r = lane; r < rows; r += kWarp) s += Y[r * cols + i] * Y[r * cols + j];
          s = warp_sum(s);
          if (lane == 0) dots[i] = s;
        }
        __syncthreads();
        for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
          double v = Y[r * cols + j];
          for (int i = 0; i < j; ++i) v -= dots[i] * Y[r * cols + i];
          Y[r * cols + j] = v;
        }
        __syncthreads();
      }
      double norm = 0.0;
      for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) norm += Y[i * cols + j] * Y[i * cols + j];
      norm = sqrt(block_sum(norm, red));
      if (norm > 1e-10 * norm0 && norm > 1e-300) {
        for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) Y[i * cols + j] /= norm;
        __syncthreads();
        break;
      }
      // Lost to rounding or truly dependent: restart the column from a random direction.
      for (int64_t i = threadIdx.x; i < rows; i += blockDim.x)
        Y[i * cols + j] = normal01(key, uint64_t(attempt + 1) * 0x100000000ull + uint64_t(j) * rows + i);
      __syncthreads();
      norm0 = 0.0;
      for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) norm0 += Y[i * cols + j] * Y[i * cols + j];
      norm0 = sqrt(block_sum(norm0, red));
    }
  }
}

// Top-k eigenpairs of the symmetric d x d matrix of each class in the chunk. Shared memory:
// A, V (p x p doubles), Jacobi scratch, and 2 * 48 doubles for dot products and reductions.
__global__ void topk_eigh_kernel(const double* __restrict__ cov, int64_t d, int k, int p,
                                 int64_t class0, double* __restrict__ q_ws, double* __restrict__ y_ws,
                                 double* __restrict__ evals, double* __restrict__ evecs,
                                 int32_t* __restrict__ iters) {
  BL_DYNAMIC_SHARED(double, smem);
  double* A = smem;
  double* V = A + p * p;
  double* jac = V + p * p;
  double* dots = jac + jacobi_scratch_doubles(p);
  double* red = dots + kMaxComponents;
  __shared__ int stop;
  const int64_t c = class0 + blockIdx.x;
  const double* C = cov + int64_t(blockIdx.x) * d * d;
  double* out_val = evals + c * k;
  double* out_vec = evecs + c * d * k;

  if (p == d) {  // small problem: the whole matrix fits, decompose it directly
    for (int t = threadIdx.x; t < p * p; t += blockDim.x) A[t] = C[t];
    __syncthreads();
    block_jacobi_eigh(A, V, p, jac);
    block_flip_signs(V, p, k, p);
    for (int t = threadIdx.x; t < k; t += blockDim.x) out_val[t] = A[t * p + t];
    for (int t = threadIdx.x; t < d * k; t += blockDim.x) out_vec[t] = V[(t / k) * p + (t % k)];
    if (threadIdx.x == 0) iters[c] = 1;
    return;
  }

  double* Q = q_ws + int64_t(blockIdx.x) * d * p;
  double* Y = y_ws + int64_t(blockIdx.x) * d * p;
  const uint64_t key = stream_key(0x5EEDull, uint64_t(c), 0xE16ull);
  for (int64_t t = threadIdx.x; t < d * p; t += blockDim.x) Q[t] = normal01(key, uint64_t(t));
  __syncthreads();
  block_orthonormalize(Q, d, p, dots, red, key ^ 0x1ull);

  // Scale of the matrix for the convergence test (trace = sum of eigenvalues, all >= 0).
  double tr = 0.0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) tr += fabs(C[i * d + i]);
  tr = block_sum(tr, red);

  int it = 0;
  if (threadIdx.x == 0) stop = 0;
  __syncthreads();
  while (true) {
    ++it;
    // Y = C Q
    for (int64_t t = threadIdx.x; t < d * p; t += blockDim.x) {
      const int64_t i = t / p;
      const int j = static_cast<int>(t % p);
      const double* ci = C + i * d;
      double s = 0.0;
      for (int64_t l = 0; l < d; ++l) s += ci[l] * Q[l * p + j];
      Y[t] = s;
    }
    __syncthreads();
    const bool last = it >= kEigMaxIter;
    if (it % kRayleighRitzEvery == 0 || last) {
      // T = Q^T C Q = Q^T Y (symmetrised), then its eigen-decomposition.
      for (int t = threadIdx.x; t < p * p; t += blockDim.x) {
        const int a = t / p, b = t % p;
        double s = 0.0;
        for (int64_t i = 0; i < d; ++i) s += Q[i * p + a] * Y[i * p + b];
        V[t] = s;
      }
      __syncthreads();
      for (int t = threadIdx.x; t < p * p; t += blockDim.x) {
        const int a = t / p, b = t % p;
        A[t] = 0.5 * (V[a * p + b] + V[b * p + a]);
      }
      __syncthreads();
      block_jacobi_eigh(A, V, p, jac);
      // Ritz vectors: Q <- Q V, Y <- Y V (row by row, rows are independent).
      for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        double qrow[kMaxComponents], yrow[kMaxComponents];
        for (int a = 0; a < p; ++a) {
          qrow[a] = Q[i * p + a];
          yrow[a] = Y[i * p + a];
        }
        for (int b = 0; b < p; ++b) {
          double sq = 0.0, sy = 0.0;
          for (int a = 0; a < p; ++a) {
            sq += qrow[a] * V[a * p + b];
            sy += yrow[a] * V[a * p + b];
          }
          Q[i * p + b] = sq;
          Y[i * p + b] = sy;
        }
      }
      __syncthreads();
      // Residual of the wanted pairs: || C q_j - theta_j q_j ||.
      double worst = 0.0;
      for (int j = 0; j < k; ++j) {
        const double theta = A[j * p + j];
        double r = 0.0;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
          const double e = Y[i * p + j] - theta * Q[i * p + j];
          r += e * e;
        }
        r = sqrt(block_sum(r, red));
        worst = fmax(worst, r);
      }
      if (threadIdx.x == 0) stop = (worst <= kEigTol * fmax(tr, 1e-300)) || last;
      __syncthreads();
      if (stop) break;
    }
    // Q <- orth(Y)
    for (int64_t t = threadIdx.x; t < d * p; t += blockDim.x) Q[t] = Y[t];
    __syncthreads();
    block_orthonormalize(Q, d, p, dots, red, key ^ (uint64_t(it) << 8));
  }
  block_flip_signs(Q, d, k, p);
  for (int t = threadIdx.x; t < k; t += blockDim.x) out_val[t] = fmax(A[t * p + t], 0.0);
  for (int64_t t = threadIdx.x; t < d * k; t += blockDim.x) out_vec[t] = Q[(t / k) * p + (t % k)];
  if (threadIdx.x == 0) iters[c] = it;
}

// ---- 4. projection ---------------------------------------------------------------------------
// out[r, a] = scale(c, a) * sum_j (x[r, j] - mean[c, j]) * E[c, j, a]; scale is 1 (PCA),
// max(lambda, 1e-12 lambda_1)^-1/2 (whitening); `absolute` takes |.| (spectral scores).
__global__ void project_kernel(const float* __restrict__ X, const int64_t* __restrict__ offsets,
                               int64_t n_classes, int64_t n, int64_t d, int k,
                               const double* __restrict__ mean, const double* __restrict__ evecs,
                               const double* __restrict__ evals, bool whiten, bool absolute,
                               float* __restrict__ out) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n * k;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = t / k;
    const int a = static_cast<int>(t % k);
    const int64_t c = class_of_row(offsets, n_classes, r);
    const float* x = X + r * d;
    const double* mu = mean + c * d;
    const double* E = evecs + c * d * k;
    double s = 0.0;
    for (int64_t j = 0; j < d; ++j) s += (double(x[j]) - mu[j]) * E[j * k + a];
    if (whiten) {
      // As the CPU core: eigenvalues at round-off level are clipped to 1e-12 of the top one, so
      // a rank-deficient class (dead ReLU channels) does not blow up; no variance at all -> 0.
      const double top = evals[c * k], lam = evals[c * k + a];
      s = top > 0.0 ? s / sqrt(fmax(lam, kDegenerate * top)) : 0.0;
    }
    out[t] = static_cast<float>(absolute ? fabs(s) : s);
  }
}

// ---- FastICA -----------------------------------------------------------------------------------
struct IcaShared {
  // Offsets (in doubles) of the pieces of the FastICA kernel's dynamic shared memory.
  int W, W1, A, V, G, gp, evs, jac, red, zc, gc, total;
  __host__ __device__ IcaShared(int k, int rows) {
    const int kk = k * k;
    W = 0;
    W1 = W + kk;
    A = W1 + kk;
    V = A + kk;
    G = V + kk;
    gp = G + kk;
    evs = gp + k;
    jac = evs + k;
    red = jac + jacobi_scratch_doubles(k);
    zc = red + 40;
    gc = zc + rows * k;
    total = gc + rows * k;
  }
};

// Rows per shared-memory chunk of the FastICA sweep: as many as ~32 KiB of float64 (z and
// g(Wz)) hold, a multiple of 32 in [32, 256]. Fewer chunks = fewer barriers per iteration, and
// the iteration count (hundreds to max_iter) multiplies every barrier.
inline int ica_chunk_rows(int k) {
  int rows = (32 * 1024) / (16 * k);
  rows = rows / 32 * 32;
  return rows < 32 ? 32 : (rows > 256 ? 256 : rows);
}

// W <- (W W^T)^{-1/2} W, the orthogonal polar factor of W, by the Newton-Schulz iteration
// X <- X (3I - X^T X) / 2 from X = W / ||W||_F (all singular values in (0, 1], so it converges,
// quadratically near the end; FastICA's W1 is nearly orthogonal after a few iterations, so a few
// steps do). Inversion- and eigensolver-free: three barriers a step instead of the Jacobi
// route's hundreds, which matters because FastICA calls it every iteration. W is written only
// on success; false (W untouched) when 64 steps do not converge -- a nearly singular W -- and
// the caller takes the eigen route. X0, X1, G: k x k scratch; flags: two shared ints;
// scalar: one shared double.
__device__ bool polar_newton_schulz(double* W, int k, double* X0, double* X1, double* G,
                                    int* flags, double* scalar) {
  // Scale: sigma_max(W)^2 = ||W^T W||_2 <= ||W^T W||_inf (max absolute row sum), so
  // X = W / sqrt(||W^T W||_inf) has singular values in (0, 1]; unlike the Frobenius norm the
  // bound is tight for a W with equal singular values, where one step then suffices.
  for (int t = threadIdx.x; t < k * k; t += blockDim.x) {
    const int a = t / k, b = t % k;
    double g = 0.0;
    for (int e = 0; e < k; ++e) g += W[e * k + a] * W[e * k + b];
    G[t] = g;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // k*k <= 2304 terms: one thread, fixed order
    double top = 0.0;
    for (int a = 0; a < k; ++a) {
      double row = 0.0;
      for (int b = 0; b < k; ++b) row += fabs(G[a * k + b]);
      top = fmax(top, row);
    }
    *scalar = top;
  }
  __syncthreads();
  const double top = *scalar;
  if (!(top > 0.0)) return false;
  const double inv = 1.0 / sqrt(top);
  double* X = X0;
  double* Xn = X1;
  for (int t = threadIdx.x; t < k * k; t += blockDim.x) X[t] = W[t] * inv;
  __syncthreads();
  for (int step = 0; step < 64; ++step) {
    for (int t = threadIdx.x; t < k * k; t += blockDim.x) {  // G = X^T X
      const int a = t / k, b = t % k;
      double g = 0.0;
      for (int e = 0; e < k; ++e) g += X[e * k + a] * X[e * k + b];
      G[t] = g;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < k * k; t += blockDim.x) {  // Xn = 1.5 X - 0.5 X G
      const int a = t / k, b = t % k;
      double xg = 0.0;
      for (int e = 0; e < k; ++e) xg += X[a * k + e] * G[e * k + b];
      Xn[t] = 1.5 * X[t] - 0.5 * xg;
    }
    __syncthreads();
    // Two flag slots: thread 0 writes the other slot next step, so nobody can still be reading
    // the one it writes (a slot is rewritten only after two more barriers).
    int* flag = flags + (step & 1);
    if (threadIdx.x == 0) {
      double diff = 0.0, nn = 0.0;
      for (int t = 0; t < k * k; ++t) {
        const double e = Xn[t] - X[t];
        diff += e * e;
        nn += Xn[t] * Xn[t];
      }
      // Near the polar factor the error squares every step (e' ~ 1.5 e^2) and the step size
      // is ~e: a step below 1e-8 leaves an error at float64 round-off.
      *flag = diff <= 1e-16 * nn;
    }
    __syncthreads();
    const bool done = *flag != 0;
    double* tmp = X;
    X = Xn;
    Xn = tmp;
    if (done) {
      for (int t = threadIdx.x; t < k * k; t += blockDim.x) W[t] = X[t];
      __syncthreads();
      return true;
    }
  }
  return false;
}

// W <- (W W^T)^{-1/2} W, as scikit-learn's _sym_decorrelation: Newton-Schulz, or eigh of W W^T
// (the shared-memory Jacobi) when that does not converge.
__device__ void sym_decorrelate(double* W, int k, double* A, double* V, double* G, double* evs,
                                double* jac, int* flags, double* scalar) {
  if (polar_newton_schulz(W, k, A, V, G, flags, scalar)) return;
  for (int t = threadIdx.x; t < k * k; t += blockDim.x) {
    const int a = t / k, b = t % k;
    double s = 0.0;
    for (int e = 0; e < k; ++e) s += W[a * k + e] * W[b * k + e];
    A[t] = s;
  }
  __syncthreads();
  block_jacobi_eigh(A, V, k, jac);
  for (int a = threadIdx.x; a < k; a += blockDim.x) evs[a] = fmax(A[a * k + a], 1e-300);
  __syncthreads();
  // A <- diag(evs^-1/2) V^T W
  for (int t = threadIdx.x; t < k * k; t += blockDim.x) {
    const int a = t / k, b = t % k;
    double s = 0.0;
    for (int e = 0; e < k; ++e) s += V[e * k + a] * W[e * k + b];
    A[t] = s / sqrt(evs[a]);
  }
  __syncthreads();
  // W <- V A
  for (int t = threadIdx.x; t < k * k; t += blockDim.x) {
    const int a = t / k, b = t % k;
    double s = 0.0;
    for (int e = 0; e < k; ++e) s += V[a * k + e] * A[e * k + b];
    W[t] = s;
  }
  __syncthreads();
}

// One block per class: scikit-learn's _ica_par on the class's whitened rows Z (n_c, k).
// Barriers per iteration: 3 per chunk of rows, 1 for W1, 3 per Newton-Schulz step, 1 for lim.
__global__ void fastica_kernel(const float* __restrict__ Z, const int64_t* __restrict__ offsets,
                               const double* __restrict__ evals, int k, int chunk_rows,
                               int max_iter, double tol, uint64_t seed,
                               double* __restrict__ W_out, int32_t* __restrict__ n_iter) {
  BL_DYNAMIC_SHARED(double, smem);
  const IcaShared L(k, chunk_rows);
  double *W = smem + L.W, *W1 = smem + L.W1, *A = smem + L.A, *V = smem + L.V, *G = smem + L.G;
  double *gp = smem + L.gp, *evs = smem + L.evs, *jac = smem + L.jac;
  double *zc = smem + L.zc, *gc = smem + L.gc;
  __shared__ int flags[2];
  __shared__ double scalar;
  const int64_t c = blockIdx.x;
  const int64_t r0 = offsets[c], r1 = offsets[c + 1];
  if (r1 == r0 || !(evals[c * k] > 0.0)) {  // empty or constant class: skipped, as on the CPU
    for (int t = threadIdx.x; t < k * k; t += blockDim.x) W_out[c * k * k + t] = 0.0;
    if (threadIdx.x == 0) n_iter[c] = 0;
    return;
  }
  const double inv_n = 1.0 / double(r1 - r0);

  // Start matrix: k*k standard normals, row-major, from the stream (seed, class, 0) of
  // common/rng.hpp -- the draws the CPU core makes, so both devices start alike.
  if (threadIdx.x == 0) {
    Rng rng(seed, uint64_t(c), 0);
    for (int t = 0; t < k * k; ++t) W[t] = rng.normal();
  }
  __syncthreads();
  sym_decorrelate(W, k, A, V, G, evs, jac, flags, &scalar);

  int it = 0;
  for (it = 1; it <= max_iter; ++it) {
    // W1 and gp accumulate E[g(Wz) z^T] and E[g'(Wz)]; zeroed here, first written after the
    // chunk's two barriers below.
    for (int t = threadIdx.x; t < k * k; t += blockDim.x) W1[t] = 0.0;
    for (int a = threadIdx.x; a < k; a += blockDim.x) gp[a] = 0.0;
    for (int64_t rs = r0; rs < r1; rs += chunk_rows) {
      const int rows = (r1 - rs) < chunk_rows ? static_cast<int>(r1 - rs) : chunk_rows;
      for (int t = threadIdx.x; t < rows * k; t += blockDim.x) zc[t] = Z[rs * k + t];
      __syncthreads();
      for (int t = threadIdx.x; t < rows * k; t += blockDim.x) {
        const int rr = t / k, a = t % k;
        double wx = 0.0;
        for (int b = 0; b < k; ++b) wx += W[a * k + b] * zc[rr * k + b];
        gc[t] = tanh(wx);
      }
      __syncthreads();
      // Fixed order over the rows of the chunk: deterministic sums.
      for (int t = threadIdx.x; t < k * k; t += blockDim.x) {
        const int a = t / k, b = t % k;
        double s = 0.0;
        for (int rr = 0; rr < rows; ++rr) s += gc[rr * k + a] * zc[rr * k + b];
        W1[t] += s;
      }
      for (int a = threadIdx.x; a < k; a += blockDim.x) {
        double s = 0.0;
        for (int rr = 0; rr < rows; ++rr) s += 1.0 - gc[rr * k + a] * gc[rr * k + a];
        gp[a] += s;
      }
      __syncthreads();  // zc/gc are reloaded next chunk
    }
    // W1 = E[g(Wz) z^T] - diag(E[g'(Wz)]) W (each thread its own entries: no barrier needed
    // before, the last chunk's barrier ordered the sums)
    for (int t = threadIdx.x; t < k * k; t += blockDim.x) {
      const int a = t / k;
      W1[t] = W1[t] * inv_n - gp[a] * inv_n * W[t];
    }
    __syncthreads();
    sym_decorrelate(W1, k, A, V, G, evs, jac, flags, &scalar);
    if (threadIdx.x == 0) {  // lim = max |abs(diag(W1 W^T)) - 1|, one thread, k*k terms
      double lim = 0.0;
      for (int a = 0; a < k; ++a) {
        double s = 0.0;
        for (int b = 0; b < k; ++b) s += W1[a * k + b] * W[a * k + b];
        lim = fmax(lim, fabs(fabs(s) - 1.0));
      }
      scalar = lim;
    }
    __syncthreads();
    const double lim = scalar;
    double* tmp = W;  // W <- W1 by swapping the buffers (uniform across the block)
    W = W1;
    W1 = tmp;
    if (lim < tol) break;
  }
  if (it > max_iter) it = max_iter;
  for (int t = threadIdx.x; t < k * k; t += blockDim.x) W_out[c * k * k + t] = W[t];
  if (threadIdx.x == 0) n_iter[c] = it;
}

// sources[r, a] = sum_b W[c, a, b] z[r, b]
__global__ void unmix_kernel(const float* __restrict__ Z, const int64_t* __restrict__ offsets,
                             int64_t n_classes, int64_t n, int k, const double* __restrict__ W,
                             float* __restrict__ out) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n * k;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = t / k;
    const int a = static_cast<int>(t % k);
    const int64_t c = class_of_row(offsets, n_classes, r);
    const double* w = W + c * k * k + int64_t(a) * k;
    const float* z = Z + r * k;
    double s = 0.0;
    for (int b = 0; b < k; ++b) s += w[b] * z[b];
    out[t] = static_cast<float>(s);
  }
}

// Scales every source of every class to unit variance (scikit-learn's whiten="unit-variance"
// divides by the sources' std; the CPU core does the same). One block per class.
__global__ void unit_variance_kernel(float* __restrict__ S, const int64_t* __restrict__ offsets,
                                     int k) {
  __shared__ double red[40];
  const int64_t c = blockIdx.x;
  const int64_t r0 = offsets[c], r1 = offsets[c + 1];
  if (r1 == r0) return;
  const double inv_m = 1.0 / double(r1 - r0);
  for (int a = 0; a < k; ++a) {
    double mu = 0.0;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) mu += S[r * k + a];
    mu = block_sum(mu, red) * inv_m;
    double q = 0.0;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
      const double e = double(S[r * k + a]) - mu;
      q += e * e;
    }
    const double sd = sqrt(block_sum(q, red) * inv_m);
    const float scale = sd > 0.0 ? static_cast<float>(1.0 / sd) : 0.0f;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) S[r * k + a] *= scale;
  }
}

// ---- host pipeline -----------------------------------------------------------------------------
struct ClassEigen {
  DeviceBuffer<double> mean, evals, evecs;
  DeviceBuffer<int32_t> iters;
};

// Means (or zeros), then top-k eigenpairs of each class's covariance (or second moment).
ClassEigen class_eigen(const float* X, const int64_t* offsets_host, const int64_t* offsets_dev,
                       int64_t n_classes, int64_t d, int k, bool center) {
  ClassEigen out;
  out.mean.allocate(size_t(n_classes) * d, "the class means");
  out.evals.allocate(size_t(n_classes) * k, "the eigenvalues");
  out.evecs.allocate(size_t(n_classes) * d * k, "the eigenvectors");
  out.iters.allocate(size_t(n_classes), "the eigen-solver iteration counts");
  if (center) {
    dim3 grid(static_cast<unsigned>(n_classes), blocks_for(d, kBlock, 65535));
    BL_LAUNCH(class_mean_kernel, grid, kBlock, 0)(X, offsets_dev, d, out.mean.get());
    BL_LAUNCH_CHECK("class_mean_kernel");
  } else {
    out.mean.zero();
  }

  const int p = d <= kMaxComponents ? static_cast<int>(d)
                                    : std::min(kMaxComponents, std::max(2 * k, k + 8));
  const size_t per_class = size_t(d) * d * sizeof(double);
  // Classes per chunk: bounded by the workspace budget and by grid.y (65535) of the tile kernel.
  const int64_t chunk = std::max<int64_t>(
      1, std::min<int64_t>({n_classes, static_cast<int64_t>(kCovWorkspaceBytes / per_class),
                            int64_t(65535)}));
  DeviceBuffer<double> cov(size_t(chunk) * d * d, "the per-class covariance matrices");
  DeviceBuffer<double> q_ws, y_ws;
  if (p < d) {
    q_ws.allocate(size_t(chunk) * d * p, "the subspace-iteration basis");
    y_ws.allocate(size_t(chunk) * d * p, "the subspace-iteration products");
  }
  const int n_tiles = static_cast<int>((d + kTile - 1) / kTile);
  const unsigned tri_tiles = static_cast<unsigned>(n_tiles * (n_tiles + 1) / 2);
  const size_t smem = sizeof(double) * (2 * p * p + jacobi_scratch_doubles(p) + 2 * kMaxComponents);
  set_dynamic_smem(reinterpret_cast<const void*>(topk_eigh_kernel), smem, "topk_eigh_kernel");
  for (int64_t c0 = 0; c0 < n_classes; c0 += chunk) {
    const int64_t cc = std::min(chunk, n_classes - c0);
    BL_LAUNCH(class_cov_kernel, dim3(tri_tiles, static_cast<unsigned>(cc)), kCovThreads, 0)(
        X, offsets_dev, out.mean.get(), d, c0, cov.get());
    BL_LAUNCH_CHECK("class_cov_kernel");
    BL_LAUNCH(topk_eigh_kernel, static_cast<unsigned>(cc), kBlock, smem)(
        cov.get(), d, k, p, c0, q_ws.get(), y_ws.get(), out.evals.get(), out.evecs.get(),
        out.iters.get());
    BL_LAUNCH_CHECK("topk_eigh_kernel");
  }
  (void)offsets_host;
  return out;
}

void check_components(const ConstView& X, int n_components, const char* what) {
  if (n_components < 1)
    throw std::invalid_argument(concat("n_components must be >= 1, got ", n_components));
  if (n_components > X.shape[1])
    throw std::invalid_argument(concat("n_components=", n_components,
                                       " exceeds the number of features d=", X.shape[1]));
  if (n_components > kMaxComponents)
    throw std::invalid_argument(concat(what, " on CUDA supports n_components <= ", kMaxComponents,
                                       ", got ", n_components, "; use device=\"cpu\""));
}

}  // namespace

void fastica(const ConstView& X, const int64_t* offsets, int64_t n_classes, int n_components,
             int max_iter, double tol, uint64_t seed, float* out, int32_t* n_iter) {
  check_matrix(X, "X");
  check_components(X, n_components, "fastica");
  if (max_iter < 1) throw std::invalid_argument(concat("max_iter must be >= 1, got ", max_iter));
  if (!(tol >= 0.0) || !std::isfinite(tol))
    throw std::invalid_argument(concat("tol must be finite and >= 0, got ", tol));
  const int64_t n = X.shape[0], d = X.shape[1];
  check_offsets(offsets, n_classes, n, std::max<int64_t>(2, n_components),
                "n_components (and at least 2)");
  DeviceGuard guard(device_for(X));
  StagedInput x(X, "X (copied to the device)");
  check_finite(x.get(), n, d, "X");
  const int k = n_components;
  DeviceBuffer<int64_t> off(size_t(n_classes) + 1, "the class offsets");
  off.upload(offsets, size_t(n_classes) + 1);
  ClassEigen eig = class_eigen(x.get(), offsets, off.get(), n_classes, d, k, true);
  DeviceBuffer<float> z(size_t(n) * k, "the whitened data");
  BL_LAUNCH(project_kernel, blocks_for(n * k, kBlock), kBlock, 0)(x.get(), off.get(), n_classes, n, d, k,
                                                        eig.mean.get(), eig.evecs.get(),
                                                        eig.evals.get(), true, false, z.get());
  BL_LAUNCH_CHECK("project_kernel");
  DeviceBuffer<double> W(size_t(n_classes) * k * k, "the unmixing matrices");
  DeviceBuffer<int32_t> iters(size_t(n_classes), "the FastICA iteration counts");
  const int chunk_rows = ica_chunk_rows(k);
  const IcaShared layout(k, chunk_rows);
  const size_t smem = sizeof(double) * layout.total;
  set_dynamic_smem(reinterpret_cast<const void*>(fastica_kernel), smem, "fastica_kernel");
  BL_LAUNCH(fastica_kernel, static_cast<unsigned>(n_classes), kBlock, smem)(
      z.get(), off.get(), eig.evals.get(), k, chunk_rows, max_iter, tol, seed, W.get(), iters.get());
  BL_LAUNCH_CHECK("fastica_kernel");
  DeviceBuffer<float> sources(size_t(n) * k, "the FastICA sources");
  BL_LAUNCH(unmix_kernel, blocks_for(n * k, kBlock), kBlock, 0)(z.get(), off.get(), n_classes, n, k, W.get(),
                                                      sources.get());
  BL_LAUNCH_CHECK("unmix_kernel");
  BL_LAUNCH(unit_variance_kernel, static_cast<unsigned>(n_classes), kBlock, 0)(sources.get(), off.get(), k);
  BL_LAUNCH_CHECK("unit_variance_kernel");
  sources.download(out, size_t(n) * k);
  if (n_iter != nullptr) iters.download(n_iter, size_t(n_classes));
}

void pca(const ConstView& X, const int64_t* offsets, int64_t n_classes, int n_components,
         float* out) {
  check_matrix(X, "X");
  check_components(X, n_components, "pca");
  const int64_t n = X.shape[0], d = X.shape[1];
  check_offsets(offsets, n_classes, n, n_components, "n_components");
  DeviceGuard guard(device_for(X));
  StagedInput x(X, "X (copied to the device)");
  check_finite(x.get(), n, d, "X");
  const int k = n_components;
  DeviceBuffer<int64_t> off(size_t(n_classes) + 1, "the class offsets");
  off.upload(offsets, size_t(n_classes) + 1);
  ClassEigen eig = class_eigen(x.get(), offsets, off.get(), n_classes, d, k, true);
  DeviceBuffer<float> proj(size_t(n) * k, "the PCA projections");
  BL_LAUNCH(project_kernel, blocks_for(n * k, kBlock), kBlock, 0)(x.get(), off.get(), n_classes, n, d, k,
                                                        eig.mean.get(), eig.evecs.get(),
                                                        eig.evals.get(), false, false, proj.get());
  BL_LAUNCH_CHECK("project_kernel");
  proj.download(out, size_t(n) * k);
}

void spectral_scores(const ConstView& X, const int64_t* offsets, int64_t n_classes, bool center,
                     float* out) {
  check_matrix(X, "X");
  const int64_t n = X.shape[0], d = X.shape[1];
  check_offsets(offsets, n_classes, n, 0, "rows");
  DeviceGuard guard(device_for(X));
  StagedInput x(X, "X (copied to the device)");
  check_finite(x.get(), n, d, "X");
  DeviceBuffer<int64_t> off(size_t(n_classes) + 1, "the class offsets");
  off.upload(offsets, size_t(n_classes) + 1);
  ClassEigen eig = class_eigen(x.get(), offsets, off.get(), n_classes, d, 1, center);
  DeviceBuffer<float> scores(size_t(n), "the spectral scores");
  BL_LAUNCH(project_kernel, blocks_for(n, kBlock), kBlock, 0)(x.get(), off.get(), n_classes, n, d, 1,
                                                    eig.mean.get(), eig.evecs.get(),
                                                    eig.evals.get(), false, true, scores.get());
  BL_LAUNCH_CHECK("project_kernel");
  scores.download(out, size_t(n));
}

}  // namespace cuda
}  // namespace backdoorlab
