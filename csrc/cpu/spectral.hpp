// Spectral-signature scores per class (Tran, Li & Madry 2018).
#pragma once

#include <cstdint>

namespace backdoorlab {

// out[i] = |<v, x_i - mu>| (center) or |<v, x_i>| (!center, IBM ART 1.20), v the top right
// singular vector of the (centred) class matrix. float32_first = false skips the float32-product
// iteration (spectral.cpp) and answers with the float64 paths: a test hook, so that tests reach
// the paths that otherwise answer only where it does not converge.
void spectral_scores(const float* X, std::int64_t n, std::int64_t d, const std::int64_t* offsets, std::int64_t G,
                     bool center, float* out, bool float32_first = true);

}  // namespace backdoorlab
