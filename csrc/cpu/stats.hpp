// Streaming per-channel activation statistics (mean, M2, max, count > 0) per group of rows.
#pragma once

#include <cstdint>

namespace backdoorlab {

// Merge one batch of activations into a per-(group, channel) accumulator.
//
// acts: (N, C, S) float32 row-major (S = H*W, 1 for dense layers); group: (N,) in [0, G).
// Accumulator, all updated in place (Chan et al.'s parallel update, float64 moments):
//   count (G,) rows seen, values (G,) values per channel seen (rows * S),
//   mean (G, C), m2 (G, C) sum of squared deviations, maxv (G, C), npos (G, C) values > 0.
// Throws std::invalid_argument (and leaves the accumulator untouched) on NaN/Inf or a group
// out of range.
void stats_update(const float* acts, std::int64_t N, std::int64_t C, std::int64_t S,
                  const std::int64_t* group, std::int64_t G, std::int64_t* count,
                  std::int64_t* values, double* mean, double* m2, double* maxv, std::int64_t* npos);

}  // namespace backdoorlab
