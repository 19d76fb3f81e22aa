// Fine-Pruning helpers (Liu et al. 2018): prune the channels least active on clean data first.
#include "cpu/pruning.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace backdoorlab {

void pruning_order(const double* mean, std::int64_t C, std::int64_t* order) {
  if (C <= 0) throw std::invalid_argument("pruning_order: mean_activation is empty");
  for (std::int64_t c = 0; c < C; ++c)
    if (!std::isfinite(mean[c]))
      throw std::invalid_argument("mean_activation contains NaN or Inf (first at channel " + std::to_string(c) + ")");
  std::iota(order, order + C, std::int64_t{0});
  std::stable_sort(order, order + C, [mean](std::int64_t a, std::int64_t b) { return mean[a] < mean[b]; });
}

void pruning_mask(const std::int64_t* order, std::int64_t C, std::int64_t n_pruned, float* mask) {
  if (C <= 0) throw std::invalid_argument("pruning_mask: order is empty");
  if (n_pruned < 0 || n_pruned > C)
    throw std::invalid_argument("n_pruned=" + std::to_string(n_pruned) + " is outside [0, " + std::to_string(C) + "]");
  std::vector<char> seen(C, 0);
  for (std::int64_t i = 0; i < C; ++i) {
    const std::int64_t c = order[i];
    if (c < 0 || c >= C || seen[c])
      throw std::invalid_argument("order must be a permutation of 0.." + std::to_string(C - 1) +
                                  " (bad entry " + std::to_string(c) + " at position " + std::to_string(i) + ")");
    seen[c] = 1;
  }
  std::fill(mask, mask + C, 1.0f);
  for (std::int64_t i = 0; i < n_pruned; ++i) mask[order[i]] = 0.0f;
}

}  // namespace backdoorlab
