// Per-class dense linear algebra on the GPU, the twin of csrc/cpu/linalg.hpp, shared by the
// decompositions (decompose.cu) and the spectral signatures (spectral.cu):
//   1. class means (one thread per feature, float64 sums in row order: deterministic);
//   2. class covariance (or second moment) as float64 d x d tiles, 32 x 32 per block, upper
//      triangle only, classes in chunks so the workspace stays under ~1 GiB;
//   3. top-k eigenpairs per class, one block per class: a dense shared-memory Jacobi when
//      d <= 48, else block subspace iteration (CGS2 orthonormalisation, Rayleigh-Ritz with the
//      shared-memory Jacobi every few steps, stop on the Ritz residual);
//   4. a projection kernel (one thread per (row, component)).
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace backdoorlab {
namespace cuda {

constexpr int kBlock = 256;            // threads per block of the per-class kernels
constexpr double kDegenerate = 1e-12;  // whitening floor, relative to the top eigenvalue

// Per class c (device buffers): mean (n_classes, d), the top-k eigenvalues (n_classes, k,
// descending) and eigenvectors (n_classes, d, k) of the class covariance (or second moment),
// and the eigen-solver's iterations (n_classes).
struct ClassEigen {
  DeviceBuffer<double> mean, evals, evecs;
  DeviceBuffer<int32_t> iters;
};

// Means (or zeros without `center`), then the top-k eigenpairs of every class's covariance (or
// second moment). X and offsets_dev live on the current device.
ClassEigen class_eigen(const float* X, const int64_t* offsets_dev, int64_t n_classes, int64_t d,
                       int k, bool center);

// out (device, n * k) = scale(c, a) * sum_j (x[r, j] - mean[c, j]) * evecs[c, j, a] for every
// row r of class c and component a < k; scale is 1, or max(lambda, kDegenerate lambda_1)^-1/2
// with `whiten`; `absolute` takes |.| (the spectral scores, k = 1).
void project_rows(const float* X, const int64_t* offsets_dev, int64_t n_classes, int64_t n,
                  int64_t d, int k, const ClassEigen& eig, bool whiten, bool absolute, float* out);

}  // namespace cuda
}  // namespace backdoorlab
