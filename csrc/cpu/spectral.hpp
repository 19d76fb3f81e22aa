// Spectral-signature scores per class (Tran, Li & Madry 2018).
#pragma once

#include <cstdint>

namespace backdoorlab {

// out[i] = |<v, x_i - mu>| (center) or |<v, x_i>| (!center, IBM ART 1.20), v the top right
// singular vector of the (centred) class matrix.
void spectral_scores(const float* X, std::int64_t n, std::int64_t d, const std::int64_t* offsets, std::int64_t G,
                     bool center, float* out);

}  // namespace backdoorlab
