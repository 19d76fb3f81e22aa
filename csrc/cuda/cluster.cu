// Per-class clustering on the GPU: k-means (greedy k-means++ seeding + Lloyd, as scikit-learn's
// KMeans(algorithm="lloyd")) and per-class silhouette values.
//
// k-means runs one block per (class, init): the rows of one class are few enough (hundreds to a
// few thousand) that a block sweeps them in microseconds, and n_init * n_classes blocks fill the
// GPU. All sums run in a fixed order (no floating-point atomics), so a run is deterministic.
// It follows the CPU core (csrc/cpu/cluster.cpp) step for step: the same backdoorlab::Rng stream
// (seed, class, run) drawn in the same order by one thread (first center: one uniform; then,
// per center, n_local_trials uniforms), float64 centers, the same empty-cluster rule and
// stopping tests -- so both devices give the same clustering up to float64 rounding of sums
// taken in a different order; labels equal scikit-learn's only up to the seeding.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/common.cuh"

namespace backdoorlab {
namespace cuda {
namespace {

constexpr int kKmThreads = 128;
constexpr int kMaxLocalTrials = 16;
constexpr int kSilWarpsPerBlock = 8;

// Squared distance in float64 between a row and a center (centers are float64, as on the CPU).
// No __restrict__ here or on `centers` below: centers are written by the same kernel, and a
// const __restrict__ pointer lets the compiler read through the non-coherent read-only cache.
template <typename A, typename B>
__device__ __forceinline__ double sqdist_rows(const A* a, const B* b, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double t = double(a[j]) - double(b[j]);
    s += t * t;
  }
  return s;
}

// One E-step: labels of every row of the class against `centers`; returns the inertia to every
// thread and sets *changed when a label moved. counts[k] (shared) receives the cluster sizes.
__device__ double assign_step(const float* Xc, int64_t rows, int64_t d, int k,
                              const double* centers, int32_t* labels, double* dist, int* counts,
                              int* changed, double* red) {
  for (int c = threadIdx.x; c < k; c += blockDim.x) counts[c] = 0;
  __syncthreads();
  double inertia = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const float* x = Xc + r * d;
    int best = 0;
    double best_d = sqdist_rows(x, centers, d);
    for (int c = 1; c < k; ++c) {
      const double dc = sqdist_rows(x, centers + int64_t(c) * d, d);
      if (dc < best_d) {
        best_d = dc;
        best = c;
      }
    }
    if (labels[r] != best) *changed = 1;  // benign race: every writer stores 1
    labels[r] = best;
    dist[r] = best_d;
    atomicAdd(&counts[best], 1);          // integer: order-independent
    inertia += best_d;
  }
  return block_sum(inertia, red);
}

// grid: (n_classes, n_init). Workspaces: labels_ws (n_init, n), dist_ws (n_init, n),
// centers_ws (n_classes, n_init, k, d) float64, inertia_ws and iters_ws (n_classes, n_init).
// Dynamic shared memory: counts (k ints).
__global__ void kmeans_kernel(const float* __restrict__ X, const int64_t* __restrict__ offsets,
                              int64_t n, int64_t d, int k, int max_iter, double tol, uint64_t seed,
                              int32_t* __restrict__ labels_ws, double* __restrict__ dist_ws,
                              double* __restrict__ centers_ws, double* __restrict__ inertia_ws,
                              int32_t* __restrict__ iters_ws) {
  BL_DYNAMIC_SHARED(int, counts);  // cluster sizes of the last E-step
  __shared__ double red[40];
  __shared__ int changed;
  __shared__ int64_t candidates[kMaxLocalTrials];
  __shared__ double cand_pot[kMaxLocalTrials];
  __shared__ int best_trial;
  const int64_t c = blockIdx.x;
  const int init = blockIdx.y;
  const int n_init = gridDim.y;
  const int64_t r0 = offsets[c], rows = offsets[c + 1] - offsets[c];
  const float* Xc = X + r0 * d;
  int32_t* labels = labels_ws + int64_t(init) * n + r0;
  double* closest = dist_ws + int64_t(init) * n + r0;
  double* centers = centers_ws + (c * n_init + init) * int64_t(k) * d;
  if (rows == 0) {  // empty class: skipped (NaN centers and inertia, 0 iterations)
    for (int64_t t = threadIdx.x; t < int64_t(k) * d; t += blockDim.x) centers[t] = NAN;
    if (threadIdx.x == 0) {
      inertia_ws[c * n_init + init] = NAN;
      iters_ws[c * n_init + init] = 0;
    }
    return;
  }
  Rng rng(seed, uint64_t(c), uint64_t(init));  // used by thread 0 only

  // Absolute tolerance: tol * mean feature variance of the class (scikit-learn's _tolerance).
  double var_sum = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    double s = 0.0;
    for (int64_t r = 0; r < rows; ++r) s += Xc[r * d + j];
    const double mu = s / double(rows);
    double v = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const double t = Xc[r * d + j] - mu;
      v += t * t;
    }
    var_sum += v / double(rows);
  }
  const double tol_abs = tol * block_sum(var_sum, red) / double(d);

  // ---- greedy k-means++ ----
  const int n_trials = min(kMaxLocalTrials, 2 + static_cast<int>(log(double(k))));
  if (threadIdx.x == 0) {
    int64_t first = static_cast<int64_t>(rng.uniform() * double(rows));
    candidates[0] = first < rows ? first : rows - 1;
  }
  __syncthreads();
  const int64_t first = candidates[0];
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) centers[j] = Xc[first * d + j];
  __syncthreads();
  double pot = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    closest[r] = sqdist_rows(Xc + r * d, centers, d);
    pot += closest[r];
  }
  pot = block_sum(pot, red);
  for (int cl = 1; cl < k; ++cl) {
    if (threadIdx.x == 0) {
      // searchsorted(cumsum(closest), u * pot) for every trial in one serial pass.
      double targets[kMaxLocalTrials];
      for (int t = 0; t < n_trials; ++t) {
        targets[t] = rng.uniform() * pot;
        candidates[t] = -1;
      }
      double cum = 0.0;
      int left = n_trials;
      for (int64_t r = 0; r < rows && left > 0; ++r) {
        cum += closest[r];
        for (int t = 0; t < n_trials; ++t)
          if (candidates[t] < 0 && cum >= targets[t]) {
            candidates[t] = r;
            --left;
          }
      }
      for (int t = 0; t < n_trials; ++t)
        if (candidates[t] < 0) candidates[t] = rows - 1;
    }
    __syncthreads();
    for (int t = 0; t < n_trials; ++t) {
      const float* cand = Xc + candidates[t] * d;
      double s = 0.0;
      for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
        s += fmin(closest[r], sqdist_rows(Xc + r * d, cand, d));
      s = block_sum(s, red);
      if (threadIdx.x == 0) cand_pot[t] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int b = 0;
      for (int t = 1; t < n_trials; ++t)
        if (cand_pot[t] < cand_pot[b]) b = t;
      best_trial = b;
    }
    __syncthreads();
    const float* chosen = Xc + candidates[best_trial] * d;
    pot = cand_pot[best_trial];
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
      closest[r] = fmin(closest[r], sqdist_rows(Xc + r * d, chosen, d));
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) centers[int64_t(cl) * d + j] = chosen[j];
    __syncthreads();
  }

  // ---- Lloyd ----
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) labels[r] = -1;
  __syncthreads();
  int iterations = max_iter;
  for (int it = 0; it < max_iter; ++it) {
    if (threadIdx.x == 0) changed = 0;
    __syncthreads();
    assign_step(Xc, rows, d, k, centers, labels, closest, counts, &changed, red);
    // Empty clusters take the rows farthest from their centers, farthest first (ties: lower
    // row), unless that would empty the row's own cluster -- the CPU core's rule. The moved row
    // changes label, so the M-step below needs no special case. One thread: rare and short.
    if (threadIdx.x == 0) {
      int relocated = 0;
      for (int cl = 0; cl < k; ++cl) {
        if (counts[cl] != 0) continue;
        int64_t far = -1;
        for (int64_t r = 0; r < rows; ++r) {
          if (closest[r] < 0.0) continue;  // already taken
          if (far < 0 || closest[r] > closest[far]) far = r;
        }
        if (far < 0) break;
        closest[far] = -1.0;
        const int from = labels[far];
        if (counts[from] <= 1) continue;  // never empty another cluster
        --counts[from];
        counts[cl] = 1;
        labels[far] = cl;
        relocated = 1;
      }
      if (relocated) changed = 1;
    }
    __syncthreads();
    // M-step: each thread owns (cluster, feature) pairs; sums in row order, as the CPU core.
    double shift = 0.0;
    for (int64_t t = threadIdx.x; t < int64_t(k) * d; t += blockDim.x) {
      const int cl = static_cast<int>(t / d);
      const int64_t j = t % d;
      if (counts[cl] == 0) continue;  // could not be refilled: keep the center
      double s = 0.0;
      for (int64_t r = 0; r < rows; ++r)
        if (labels[r] == cl) s += Xc[r * d + j];
      const double updated = s * (1.0 / double(counts[cl]));
      const double delta = updated - centers[t];
      shift += delta * delta;
      centers[t] = updated;
    }
    shift = block_sum(shift, red);  // also orders the center writes before the next E-step
    const int moved = changed;
    __syncthreads();  // everyone has read `changed` before thread 0 resets it
    if (!moved || shift <= tol_abs) {  // strict convergence (labels still) or small shift
      iterations = it + 1;
      break;
    }
  }
  // Final E-step against the final centers (scikit-learn relabels unless strictly converged;
  // after strict convergence it changes nothing) and the inertia.
  if (threadIdx.x == 0) changed = 0;
  __syncthreads();
  const double inertia = assign_step(Xc, rows, d, k, centers, labels, closest, counts, &changed, red);
  if (threadIdx.x == 0) {
    inertia_ws[c * n_init + init] = inertia;
    iters_ws[c * n_init + init] = iterations;
  }
}

__global__ void gather_labels_kernel(const int32_t* __restrict__ labels_ws,
                                     const int64_t* __restrict__ offsets, int64_t n_classes,
                                     int64_t n, const int32_t* __restrict__ best,
                                     int32_t* __restrict__ out) {
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < n;
       r += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = class_of_row(offsets, n_classes, r);
    out[r] = labels_ws[int64_t(best[c]) * n + r];
  }
}

// One warp per sample: sums of distances to every cluster of its class, in row order per lane
// and a fixed shuffle tree across lanes (deterministic).
__global__ void silhouette_kernel(const float* __restrict__ X, const int64_t* __restrict__ offsets,
                                  int64_t n_classes, int64_t n, int64_t d,
                                  const int32_t* __restrict__ labels,
                                  const int32_t* __restrict__ n_clusters,
                                  float* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t i = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / kWarp;
  if (i >= n) return;  // whole warps exit together
  const int64_t c = class_of_row(offsets, n_classes, i);
  const int64_t r0 = offsets[c], r1 = offsets[c + 1];
  const int L = n_clusters[c];
  double sums[kMaxSilhouetteClusters];
  int counts[kMaxSilhouetteClusters];
  for (int l = 0; l < L; ++l) {
    sums[l] = 0.0;
    counts[l] = 0;
  }
  const float* xi = X + i * d;
  for (int64_t j = r0 + lane; j < r1; j += kWarp) {
    const int l = labels[j];
    sums[l] += sqrt(sqdist_rows(xi, X + j * d, d));
    counts[l] += 1;
  }
  for (int l = 0; l < L; ++l) {
    for (int off = kWarp / 2; off > 0; off >>= 1) {
      sums[l] += __shfl_xor_sync(0xffffffffu, sums[l], off);
      counts[l] += __shfl_xor_sync(0xffffffffu, counts[l], off);
    }
  }
  if (lane != 0) return;
  const int own = labels[i];
  float s = 0.0f;
  if (counts[own] > 1) {
    const double a = sums[own] / double(counts[own] - 1);
    double b = INFINITY;
    for (int l = 0; l < L; ++l)
      if (l != own && counts[l] > 0) b = fmin(b, sums[l] / double(counts[l]));
    if (b < INFINITY) {
      const double m = fmax(a, b);
      s = m > 0.0 ? static_cast<float>((b - a) / m) : 0.0f;
    }
  }
  out[i] = s;
}

}  // namespace

void kmeans(const ConstView& X, const int64_t* offsets, int64_t n_classes, int k, int n_init,
            int max_iter, double tol, uint64_t seed, int32_t* labels, float* centers,
            double* inertia, int32_t* n_iter) {
  check_matrix(X, "X");
  if (k < 1) throw std::invalid_argument(concat("k must be >= 1, got ", k));
  if (n_init < 1) throw std::invalid_argument(concat("n_init must be >= 1, got ", n_init));
  if (n_init > 65535)
    throw std::invalid_argument(concat("n_init must be <= 65535 on CUDA, got ", n_init));
  if (max_iter < 1) throw std::invalid_argument(concat("max_iter must be >= 1, got ", max_iter));
  if (!(tol >= 0.0) || !std::isfinite(tol))
    throw std::invalid_argument(concat("tol must be finite and >= 0, got ", tol));
  check_offsets(offsets, n_classes, X.shape[0], k, "k");
  if (n_classes > 2147483647) throw std::invalid_argument("too many classes for one launch");
  const StagedBatch b(X, offsets, n_classes);
  const int64_t n = b.n, d = b.d;
  const int64_t* off = b.offsets();
  DeviceBuffer<int32_t> labels_ws(size_t(n_init) * n, "the k-means labels of every init");
  DeviceBuffer<double> dist_ws(size_t(n_init) * n, "the k-means distances of every init");
  const size_t n_centers = size_t(n_classes) * n_init * k * d;
  DeviceBuffer<double> centers_ws(n_centers, "the k-means centers of every init");
  DeviceBuffer<double> inertia_ws(size_t(n_classes) * n_init, "the k-means inertias");
  DeviceBuffer<int32_t> iters_ws(size_t(n_classes) * n_init, "the k-means iteration counts");
  const size_t smem = sizeof(int) * size_t(k);
  set_dynamic_smem(reinterpret_cast<const void*>(kmeans_kernel), smem, "kmeans_kernel");
  BL_LAUNCH(kmeans_kernel, dim3(static_cast<unsigned>(n_classes), static_cast<unsigned>(n_init)), kKmThreads, smem)(b.x(), off, n, d, k, max_iter, tol, seed, labels_ws.get(),
                          dist_ws.get(), centers_ws.get(), inertia_ws.get(), iters_ws.get());
  BL_LAUNCH_CHECK("kmeans_kernel");

  // Best run per class: lowest inertia, the first one on ties (as scikit-learn).
  std::vector<double> all_inertia(size_t(n_classes) * n_init);
  inertia_ws.download(all_inertia.data(), all_inertia.size());
  std::vector<int32_t> all_iters(size_t(n_classes) * n_init);
  iters_ws.download(all_iters.data(), all_iters.size());
  std::vector<int32_t> best(static_cast<size_t>(n_classes), 0);
  for (int64_t c = 0; c < n_classes; ++c) {
    for (int i = 1; i < n_init; ++i)
      if (all_inertia[c * n_init + i] < all_inertia[c * n_init + best[c]]) best[c] = i;
    inertia[c] = all_inertia[c * n_init + best[c]];
    n_iter[c] = all_iters[c * n_init + best[c]];
  }
  std::vector<double> all_centers(n_centers);
  centers_ws.download(all_centers.data(), n_centers);
  const size_t per = size_t(k) * d;
  for (int64_t c = 0; c < n_classes; ++c) {
    const double* src = all_centers.data() + (size_t(c) * n_init + best[c]) * per;
    for (size_t i = 0; i < per; ++i) centers[c * per + i] = static_cast<float>(src[i]);
  }
  DeviceBuffer<int32_t> best_dev(best.size(), "the best-init indices");
  best_dev.upload(best.data(), best.size());
  DeviceBuffer<int32_t> out(size_t(n), "the k-means labels");
  BL_LAUNCH(gather_labels_kernel, blocks_for(n, 256), 256, 0)(labels_ws.get(), off, n_classes, n,
                                                    best_dev.get(), out.get());
  BL_LAUNCH_CHECK("gather_labels_kernel");
  out.download(labels, size_t(n));
}

void silhouette_samples(const ConstView& X, const int64_t* offsets, int64_t n_classes,
                        const int32_t* labels, float* out) {
  check_matrix(X, "X");
  const int64_t n = X.shape[0], d = X.shape[1];
  check_offsets(offsets, n_classes, n, 0, "rows");
  std::vector<int32_t> n_clusters(static_cast<size_t>(n_classes), 0);
  for (int64_t c = 0; c < n_classes; ++c) {
    for (int64_t r = offsets[c]; r < offsets[c + 1]; ++r) {
      const int32_t l = labels[r];
      if (l < 0)
        throw std::invalid_argument(concat("labels must be >= 0, got ", l, " at row ", r));
      if (l >= kMaxSilhouetteClusters)
        throw std::invalid_argument(concat("silhouette_samples on CUDA supports labels < ",
                                           kMaxSilhouetteClusters, ", got ", l, " at row ", r,
                                           "; use device=\"cpu\""));
      n_clusters[c] = std::max(n_clusters[c], l + 1);
    }
  }
  const StagedBatch b(X, offsets, n_classes);
  const int64_t* off = b.offsets();
  DeviceBuffer<int32_t> lab(size_t(n), "the cluster labels");
  lab.upload(labels, size_t(n));
  DeviceBuffer<int32_t> ncl(n_clusters.size(), "the cluster counts");
  ncl.upload(n_clusters.data(), n_clusters.size());
  DeviceBuffer<float> s(size_t(n), "the silhouette values");
  const int threads = kSilWarpsPerBlock * kWarp;
  const int64_t max_blocks = 2147483647;
  if ((n + kSilWarpsPerBlock - 1) / kSilWarpsPerBlock > max_blocks)
    throw std::invalid_argument(concat("too many rows for silhouette_samples on CUDA: ", n));
  BL_LAUNCH(silhouette_kernel, blocks_for(n, kSilWarpsPerBlock, max_blocks), threads, 0)(
      b.x(), off, n_classes, n, d, lab.get(), ncl.get(), s.get());
  BL_LAUNCH_CHECK("silhouette_kernel");
  s.download(out, size_t(n));
}

}  // namespace cuda
}  // namespace backdoorlab
