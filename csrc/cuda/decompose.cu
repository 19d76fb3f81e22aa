// Per-class decompositions on the GPU, the twin of csrc/cpu/decompose.cpp: FastICA (the
// Activation Clustering reduction) and PCA, both on the per-class eigenpairs of linalg.cuh.
// FastICA whitens each class with its top-k eigenpairs, then runs the symmetric fixed-point
// iteration of scikit-learn (logcosh, alpha = 1) with one block per class on the whitened
// (n_c, k) data, and maps the sources back.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/linalg.cuh"

namespace backdoorlab {
namespace cuda {
namespace {

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
  check_offsets(offsets, n_classes, X.shape[0], std::max<int64_t>(2, n_components),
                "n_components (and at least 2)");
  const StagedBatch b(X, offsets, n_classes);
  const int64_t n = b.n;
  const int k = n_components;
  const int64_t* off = b.offsets();
  ClassEigen eig = class_eigen(b.x(), off, n_classes, b.d, k, true);
  DeviceBuffer<float> z(size_t(n) * k, "the whitened data");
  project_rows(b.x(), off, n_classes, n, b.d, k, eig, true, false, z.get());
  DeviceBuffer<double> W(size_t(n_classes) * k * k, "the unmixing matrices");
  DeviceBuffer<int32_t> iters(size_t(n_classes), "the FastICA iteration counts");
  const int chunk_rows = ica_chunk_rows(k);
  const IcaShared layout(k, chunk_rows);
  const size_t smem = sizeof(double) * layout.total;
  set_dynamic_smem(reinterpret_cast<const void*>(fastica_kernel), smem, "fastica_kernel");
  BL_LAUNCH(fastica_kernel, static_cast<unsigned>(n_classes), kBlock, smem)(
      z.get(), off, eig.evals.get(), k, chunk_rows, max_iter, tol, seed, W.get(), iters.get());
  BL_LAUNCH_CHECK("fastica_kernel");
  DeviceBuffer<float> sources(size_t(n) * k, "the FastICA sources");
  BL_LAUNCH(unmix_kernel, blocks_for(n * k, kBlock), kBlock, 0)(z.get(), off, n_classes, n, k, W.get(),
                                                      sources.get());
  BL_LAUNCH_CHECK("unmix_kernel");
  BL_LAUNCH(unit_variance_kernel, static_cast<unsigned>(n_classes), kBlock, 0)(sources.get(), off, k);
  BL_LAUNCH_CHECK("unit_variance_kernel");
  sources.download(out, size_t(n) * k);
  if (n_iter != nullptr) iters.download(n_iter, size_t(n_classes));
}

void pca(const ConstView& X, const int64_t* offsets, int64_t n_classes, int n_components,
         float* out) {
  check_matrix(X, "X");
  check_components(X, n_components, "pca");
  check_offsets(offsets, n_classes, X.shape[0], n_components, "n_components");
  const StagedBatch b(X, offsets, n_classes);
  const int k = n_components;
  ClassEigen eig = class_eigen(b.x(), b.offsets(), n_classes, b.d, k, true);
  DeviceBuffer<float> proj(size_t(b.n) * k, "the PCA projections");
  project_rows(b.x(), b.offsets(), n_classes, b.n, b.d, k, eig, false, false, proj.get());
  proj.download(out, size_t(b.n) * k);
}

}  // namespace cuda
}  // namespace backdoorlab
