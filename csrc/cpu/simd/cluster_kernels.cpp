// The hot loop of k-means (cluster.cpp), compiled once per SIMD level (cpu/simd.hpp).
#include <algorithm>
#include <cstdint>

#include "cpu/simd/level.hpp"
#include "cpu/simd/kernels.hpp"

namespace backdoorlab {
namespace BDL_LEVEL_NS {

// Nearest centre of every row (ties: lowest index); returns the inertia; dist gets each row's
// squared distance to its centre. XT is the class transposed (d x m): the rows are the vector
// lanes, so with few features (AC clusters 10-dim sources) the work is whole vectors instead of
// short per-row sums. Each row's distance is still summed over the features in order, in float64,
// exactly as a per-row loop would. dj: m doubles of scratch.
double assign(const float* XT, i64 m, i64 d, const double* C, int k, std::int32_t* labels, double* dist, double* dj) {
  for (int j = 0; j < k; ++j) {
    double* q = j == 0 ? dist : dj;
    std::fill(q, q + m, 0.0);
    for (i64 a = 0; a < d; ++a) {
      const double c = C[j * d + a];
      const float* x = XT + a * m;
#pragma omp simd
      for (i64 s = 0; s < m; ++s) {
        const double t = x[s] - c;
        q[s] += t * t;
      }
    }
    if (j == 0) {
      std::fill(labels, labels + m, 0);
      continue;
    }
#pragma omp simd
    for (i64 s = 0; s < m; ++s) {
      const bool closer = dj[s] < dist[s];
      dist[s] = closer ? dj[s] : dist[s];
      labels[s] = closer ? j : labels[s];
    }
  }
  double total = 0.0;
  for (i64 s = 0; s < m; ++s) total += dist[s];
  return total;
}

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
