// The hot loops of k-means (cluster.cpp), compiled once per SIMD level (cpu/simd.hpp).
#include <algorithm>
#include <cstdint>

#include "cpu/simd/level.hpp"
#include "cpu/simd/kernels.hpp"

namespace backdoorlab {
namespace BDL_LEVEL_NS {

// out[s] = |X[s] - c|^2 for every row (XT: the class transposed, d x m; rows are vector lanes),
// summed over the features in order in float64 — the very arithmetic of a per-row loop, so the
// k-means++ seeding that reads it is unchanged bit for bit. The lanes' sums stay in registers
// over the features (a blocked pass over the rows), not in memory once per feature.
void sqdist_rows(const float* XT, i64 m, i64 d, const double* c, double* out) {
  constexpr i64 B = 4 * BDL_F32_LANES;  // rows per block: a few vector registers of doubles
  for (i64 s0 = 0; s0 < m; s0 += B) {
    const i64 nb = std::min(B, m - s0);
    double acc[B] = {};
    for (i64 a = 0; a < d; ++a) {
      const double ca = c[a];
      const float* x = XT + a * m + s0;
#pragma omp simd
      for (i64 l = 0; l < nb; ++l) {
        const double t = x[l] - ca;
        acc[l] += t * t;
      }
    }
    std::copy(acc, acc + nb, out + s0);
  }
}

// Nearest centre of every row (ties: lowest index); returns the inertia; dist gets each row's
// squared distance to its centre (sqdist_rows: features summed in order, float64). dj: m
// doubles of scratch. The inertia is summed in four interleaved partial sums (fixed order: the
// same on every run and thread count; a single running sum was a serial chain of m additions).
double assign(const float* XT, i64 m, i64 d, const double* C, int k, std::int32_t* labels, double* dist, double* dj) {
  sqdist_rows(XT, m, d, C, dist);
  std::fill(labels, labels + m, 0);
  for (int j = 1; j < k; ++j) {
    sqdist_rows(XT, m, d, C + j * d, dj);
#pragma omp simd
    for (i64 s = 0; s < m; ++s) {
      const bool closer = dj[s] < dist[s];
      dist[s] = closer ? dj[s] : dist[s];
      labels[s] = closer ? j : labels[s];
    }
  }
  double part[4] = {0.0, 0.0, 0.0, 0.0};
  i64 s = 0;
  for (; s + 4 <= m; s += 4)
    for (int q = 0; q < 4; ++q) part[q] += dist[s + q];
  for (; s < m; ++s) part[s % 4] += dist[s];
  return (part[0] + part[1]) + (part[2] + part[3]);
}

// sums[j, :] = the sum of the rows X[s, :] (row-major, m x d) with labels[s] == j, in float64;
// counts[j] their number. Rows go round-robin into four partial sums (part: 4 k d doubles of
// scratch), added in a fixed order at the end: consecutive rows of one cluster would otherwise
// wait on each other's stores into sums[j] (a loop-carried chain that made this update, compiled
// for the baseline, cost more than the vectorised assignment). A masked sum over XT's rows as
// lanes, tried instead, did not vectorise (GCC 12: a conditional float64 reduction) and ran 3x
// slower.
void cluster_sums(const float* X, i64 m, i64 d, const std::int32_t* labels, int k, double* sums, double* part,
                  i64* counts) {
  const i64 kd = static_cast<i64>(k) * d;
  std::fill(part, part + 4 * kd, 0.0);
  std::fill(counts, counts + k, i64{0});
  for (i64 s = 0; s < m; ++s) {
    const int j = labels[s];
    ++counts[j];
    double* p = part + (s % 4) * kd + j * d;
    const float* x = X + s * d;
#pragma omp simd
    for (i64 a = 0; a < d; ++a) p[a] += x[a];
  }
#pragma omp simd
  for (i64 i = 0; i < kd; ++i) sums[i] = (part[i] + part[kd + i]) + (part[2 * kd + i] + part[3 * kd + i]);
}

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
