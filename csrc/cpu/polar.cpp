// Batched orthogonal polar factors (see polar.hpp): argument checks, then the SIMD level's kernel
// (csrc/cpu/simd/polar_kernels.cpp).
#include "cpu/polar.hpp"

#include <stdexcept>
#include <string>

#include "cpu/simd.hpp"

namespace backdoorlab {

std::uint32_t polar_factor_batch(const SimdKernels& K, double* const* W, int n, int k) {
  if (n < 1 || n > POLAR_LANES)
    throw std::invalid_argument("polar_factor_batch: n must be in [1, " + std::to_string(POLAR_LANES) + "], got " +
                                std::to_string(n));
  if (k < 1 || k > POLAR_MAX_K)
    throw std::invalid_argument("polar_factor_batch: k must be in [1, " + std::to_string(POLAR_MAX_K) + "], got " +
                                std::to_string(k));
  return K.polar_batch(W, n, k);
}

}  // namespace backdoorlab
