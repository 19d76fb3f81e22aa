// Fine-Pruning's channel order and mask on the GPU, the twin of csrc/cpu/pruning.cpp. The
// inputs are per-channel host arrays (C is a few hundred), so a call costs its transfers; the
// twin exists so that device="cuda" serves every kernel the CPU core has.
#include <cmath>
#include <vector>

#include "cuda/common.cuh"

namespace backdoorlab {
namespace cuda {
namespace {

constexpr int kThreads = 128;

// Stable ascending rank: order[rank(i)] = i, ties broken by index (== std::stable_sort).
__global__ void rank_kernel(const double* __restrict__ v, int64_t n, int64_t* __restrict__ order) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const double vi = v[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double vj = v[j];
      rank += (vj < vi || (vj == vi && j < i)) ? 1 : 0;
    }
    order[rank] = i;
  }
}

__global__ void mask_kernel(const int64_t* __restrict__ order, int64_t n, int64_t n_pruned,
                            float* __restrict__ mask) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    mask[order[i]] = i < n_pruned ? 0.0f : 1.0f;
}

}  // namespace

void pruning_order(const double* mean, int64_t C, int64_t* order) {
  if (C <= 0) throw std::invalid_argument("pruning_order: mean_activation is empty");
  for (int64_t c = 0; c < C; ++c)
    if (!std::isfinite(mean[c]))
      throw std::invalid_argument(concat("mean_activation contains NaN or Inf (first at channel ", c, ")"));
  DeviceGuard guard(current_device());  // the inputs live on the host
  DeviceBuffer<double> v(size_t(C), "mean_activation (copied to the device)");
  v.upload(mean, size_t(C));
  DeviceBuffer<int64_t> out(size_t(C), "the pruning order");
  BL_LAUNCH(rank_kernel, blocks_for(C, kThreads), kThreads, 0)(v.get(), C, out.get());
  BL_LAUNCH_CHECK("rank_kernel");
  out.download(order, size_t(C));
}

void pruning_mask(const int64_t* order, int64_t C, int64_t n_pruned, float* mask) {
  if (C <= 0) throw std::invalid_argument("pruning_mask: order is empty");
  if (n_pruned < 0 || n_pruned > C)
    throw std::invalid_argument(concat("n_pruned=", n_pruned, " is outside [0, ", C, "]"));
  std::vector<char> seen(size_t(C), 0);
  for (int64_t i = 0; i < C; ++i) {
    const int64_t c = order[i];
    if (c < 0 || c >= C || seen[size_t(c)])
      throw std::invalid_argument(concat("order must be a permutation of 0..", C - 1, " (bad entry ",
                                         c, " at position ", i, ")"));
    seen[size_t(c)] = 1;
  }
  DeviceGuard guard(current_device());  // the inputs live on the host
  DeviceBuffer<int64_t> o(size_t(C), "the channel order");
  o.upload(order, size_t(C));
  DeviceBuffer<float> m(size_t(C), "the pruning mask");
  BL_LAUNCH(mask_kernel, blocks_for(C, kThreads), kThreads, 0)(o.get(), C, n_pruned, m.get());
  BL_LAUNCH_CHECK("mask_kernel");
  m.download(mask, size_t(C));
}

}  // namespace cuda
}  // namespace backdoorlab
