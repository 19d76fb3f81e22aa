// Per-class dimensionality reduction for Activation Clustering: FastICA and PCA.
#pragma once

#include <cstdint>

namespace backdoorlab {

// FastICA (parallel/symmetric, logcosh, unit-variance whitening by eigen-decomposition) fitted
// on every class of X[n, d] (class c = rows offsets[c]..offsets[c+1]).
// out: (n, k) float32 sources; n_iter: (G,) iterations used (0 for empty/constant classes).
void fastica(const float* X, std::int64_t n, std::int64_t d, const std::int64_t* offsets, std::int64_t G,
             int k, int max_iter, double tol, std::uint64_t seed, float* out, std::int32_t* n_iter);

// PCA projection (x - mu) V_k per class, components signed so their largest |entry| is positive.
void pca(const float* X, std::int64_t n, std::int64_t d, const std::int64_t* offsets, std::int64_t G, int k,
         float* out);

// Row-wise check of the class layout shared by every batched kernel (throws std::invalid_argument).
void check_offsets(const std::int64_t* offsets, std::int64_t G, std::int64_t n);

}  // namespace backdoorlab
