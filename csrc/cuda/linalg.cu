// Per-class dense linear algebra on the GPU (see linalg.cuh): class means, covariance tiles, the
// top-k eigenpairs of each class and the projection onto them.
#include "cuda/linalg.cuh"

#include <algorithm>
#include <cmath>
#include <vector>

namespace backdoorlab {
namespace cuda {
namespace {

constexpr int kTile = 32;
constexpr int kCovThreads = 256;
constexpr int kRayleighRitzEvery = 8;
constexpr int kEigMaxIter = 2000;
constexpr double kEigTol = 1e-10;          // Ritz residual relative to the top eigenvalue
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

}  // namespace

// ---- host pipeline -----------------------------------------------------------------------------
ClassEigen class_eigen(const float* X, const int64_t* offsets_dev, int64_t n_classes, int64_t d,
                       int k, bool center) {
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
  return out;
}

void project_rows(const float* X, const int64_t* offsets_dev, int64_t n_classes, int64_t n,
                  int64_t d, int k, const ClassEigen& eig, bool whiten, bool absolute, float* out) {
  BL_LAUNCH(project_kernel, blocks_for(n * k, kBlock), kBlock, 0)(
      X, offsets_dev, n_classes, n, d, k, eig.mean.get(), eig.evecs.get(), eig.evals.get(), whiten,
      absolute, out);
  BL_LAUNCH_CHECK("project_kernel");
}

}  // namespace cuda
}  // namespace backdoorlab
