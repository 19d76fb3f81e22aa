// Per-class k-means (k-means++ init, Lloyd) and silhouette scores.
#pragma once

#include <cstdint>

namespace backdoorlab {

// k-means fitted on every class of X[n, d]. Outputs: labels (n,) in [0, k) within each class,
// centers (G, k, d) float32, inertia (G,) float64, n_iter (G,) of the best run. Empty classes:
// NaN centres and inertia, n_iter 0.
void kmeans(const float* X, std::int64_t n, std::int64_t d, const std::int64_t* offsets, std::int64_t G, int k,
            int n_init, int max_iter, double tol, std::uint64_t seed, std::int32_t* labels, float* centers,
            double* inertia, std::int32_t* n_iter);

// Silhouette of every row within its class (Euclidean). labels: (n,) >= 0, any values (clusters
// are the distinct labels of the class). Rows of single-cluster classes, and rows alone in their
// cluster, get 0.
void silhouette_samples(const float* X, std::int64_t n, std::int64_t d, const std::int64_t* offsets, std::int64_t G,
                        const std::int32_t* labels, float* out);

}  // namespace backdoorlab
