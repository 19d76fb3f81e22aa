// Fine-Pruning helpers: channel order by mean activation and the pruning mask.
#pragma once

#include <cstdint>

namespace backdoorlab {

// order (C,): channels by ascending mean, ties in channel order. Throws on NaN/Inf.
void pruning_order(const double* mean, std::int64_t C, std::int64_t* order);

// mask (C,): 0 for the first n_pruned channels of `order`, 1 otherwise. Throws if `order` is not
// a permutation of 0..C-1 or n_pruned is outside [0, C].
void pruning_mask(const std::int64_t* order, std::int64_t C, std::int64_t n_pruned, float* mask);

}  // namespace backdoorlab
