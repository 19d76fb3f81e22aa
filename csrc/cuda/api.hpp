// Plain C++ interface of the CUDA core (no CUDA or Python types), so that csrc/bindings_cuda.cpp
// is compiled by the host compiler and the .cu files know nothing of Python.
//
// Every batched kernel takes X float32 C-contiguous (n, d), rows grouped by class, and
// offsets int64 (n_classes + 1) on the host (class c = rows offsets[c]:offsets[c+1]). X may live
// on the host (copied to the device) or already on a device (used in place, e.g. a PyTorch CUDA
// tensor received through DLPack). Outputs are host buffers allocated by the caller, so the
// caller may release the GIL around every call here.
//
// Errors: std::invalid_argument (bad input, raised before any launch), OutOfMemory (cudaMalloc
// failed; the message names the bytes asked), std::runtime_error (no device, driver or launch
// failure). All device memory is owned by RAII buffers and freed on every path.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace backdoorlab {
namespace cuda {

// cudaMalloc (or another device allocation) failed; bindings map it to MemoryError.
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A read-only float32 C-contiguous array of rank 1..4, on the host or on device `device`.
struct ConstView {
  const float* data = nullptr;
  std::vector<int64_t> shape;
  bool on_device = false;
  int device = -1;  // CUDA ordinal when on_device

  int64_t size() const {
    int64_t s = 1;
    for (int64_t v : shape) s *= v;
    return s;
  }
};

struct RuntimeInfo {
  int device_count = 0;
  std::string reason;               // why device_count is 0 (empty when > 0)
  int runtime_version = 0;          // cudaRuntimeGetVersion, e.g. 13000
  int driver_version = 0;           // cudaDriverGetVersion, 0 without a driver
  std::vector<std::string> device_names;
  std::vector<int> device_capabilities;  // major * 10 + minor
  std::vector<int64_t> device_memory;    // bytes
};

// Never throws: without a driver or GPU it reports 0 devices and the reason.
RuntimeInfo runtime_info();

// ---- decompositions (decompose.cu; the per-class eigen-solver they share: linalg.cu) -------
// Largest supported number of components on the device path (the small eigen/decorrelation
// problems live in shared memory).
constexpr int kMaxComponents = 48;

// out: (n, n_components) host float32, rows aligned with X. n_iter: (n_classes,) host (0 for an
// empty class), may be nullptr. FastICA as scikit-learn's FastICA(whiten="unit-variance", algorithm="parallel",
// fun="logcosh"): unit-variance whitening from the covariance eigenvectors, symmetric
// decorrelation, stop when max |abs(diag(W1 W^T)) - 1| < tol.
void fastica(const ConstView& X, const int64_t* offsets, int64_t n_classes, int n_components,
             int max_iter, double tol, uint64_t seed, float* out, int32_t* n_iter);

// out: (n, n_components): (x - mean_c) projected on the top principal axes of the class, signs
// as scikit-learn's svd_flip (largest |loading| positive).
void pca(const ConstView& X, const int64_t* offsets, int64_t n_classes, int n_components,
         float* out);

// ---- spectral signatures (spectral.cu) ------------------------------------------------------
// out: (n,): |<v_c, x - mean_c>| (center) or |<v_c, x>| (not center), v_c the top right singular
// vector of the (centred) class matrix.
void spectral_scores(const ConstView& X, const int64_t* offsets, int64_t n_classes, bool center,
                     float* out);

// ---- clustering (cluster.cu) ---------------------------------------------------------------
// labels (n,) int32 in [0, k) per class; centers (n_classes, k, d) float32; inertia (n_classes,);
// n_iter (n_classes,) Lloyd iterations of the winning run. Empty classes: NaN centers and
// inertia, n_iter 0.
void kmeans(const ConstView& X, const int64_t* offsets, int64_t n_classes, int k, int n_init,
            int max_iter, double tol, uint64_t seed, int32_t* labels, float* centers,
            double* inertia, int32_t* n_iter);

// Largest label (exclusive) silhouette_samples accepts on the device path.
constexpr int kMaxSilhouetteClusters = 64;

// labels (n,) host int32, cluster ids inside each class; out (n,) float32.
void silhouette_samples(const ConstView& X, const int64_t* offsets, int64_t n_classes,
                        const int32_t* labels, float* out);

// ---- activation statistics (stats.cu) ---------------------------------------------------------
// In-place merge of a batch into running per-(group, channel) moments, as _core.stats_update:
// acts (N, C, S) float32, exactly 3-D as on the CPU (S = H*W, 1 for dense layers; host or device); group (N,) host int64 in
// [0, G); host state arrays count (G) rows seen, values (G) = rows * S seen, mean/m2/maxv (G, C)
// float64, npos (G, C) int64. The batch is reduced on the device in two passes (batch means,
// then squared deviations from them) and merged with Chan et al.'s formula; on any error the
// state is left unchanged.
void stats_update(const ConstView& acts, const int64_t* group, int64_t G, int64_t* count,
                  int64_t* values, double* mean, double* m2, double* maxv, int64_t* npos);

// ---- pruning (pruning.cu) ------------------------------------------------------------------
// order (C,) int64: channels by ascending mean, ties by index (a stable argsort). mean is
// float64 on the host; NaN/Inf rejected.
void pruning_order(const double* mean, int64_t C, int64_t* order);

// mask (C,) float32: 0 for the first n_pruned channels of order, 1 else; order must be a
// permutation of 0..C-1.
void pruning_mask(const int64_t* order, int64_t C, int64_t n_pruned, float* mask);

}  // namespace cuda
}  // namespace backdoorlab
