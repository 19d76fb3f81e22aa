// Spectral-signature scores on the GPU, the twin of csrc/cpu/spectral.cpp: |<v_c, x - mean_c>|
// (or |<v_c, x>| un-centred) with v_c the top eigenvector of the class's covariance (second
// moment), from the per-class eigen-solver of linalg.cuh with k = 1.
#include "cuda/common.cuh"
#include "cuda/linalg.cuh"

namespace backdoorlab {
namespace cuda {

void spectral_scores(const ConstView& X, const int64_t* offsets, int64_t n_classes, bool center,
                     float* out) {
  check_matrix(X, "X");
  check_offsets(offsets, n_classes, X.shape[0], 0, "rows");
  const StagedBatch b(X, offsets, n_classes);
  // Without `center` the mean stays zero: the top vector of the second moment, rows un-centred.
  ClassEigen eig = class_eigen(b.x(), b.offsets(), n_classes, b.d, 1, center);
  DeviceBuffer<float> scores(size_t(b.n), "the spectral scores");
  project_rows(b.x(), b.offsets(), n_classes, b.n, b.d, 1, eig, false, true, scores.get());
  scores.download(out, size_t(b.n));
}

}  // namespace cuda
}  // namespace backdoorlab
