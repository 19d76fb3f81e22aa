// Orthogonal polar factors of several small matrices at once: FastICA's symmetric decorrelation
// W <- (W W^T)^{-1/2} W for a batch of classes.
//
// Why batched: the decorrelation runs once per FastICA iteration on a k x k matrix (k ~ 10). One
// matrix at a time it is a chain of dependent divisions, square roots and pivot searches that
// leaves the vector units idle (it cost as much as the O(k^2 m) data pass it follows). Done for
// up to POLAR_LANES classes side by side — class l in vector lane l, every operation element-wise
// over the lanes — the same chain is paid once for all of them.
#pragma once

#include <cstdint>

#include "cpu/simd.hpp"

namespace backdoorlab {

constexpr int POLAR_LANES = 8;       // classes per batch (one AVX-512 vector of doubles)
constexpr int POLAR_MAX_K = 16;      // largest k with a batched kernel

// Replaces each of the n (1 <= n <= POLAR_LANES) k x k row-major float64 matrices W[l]
// (1 <= k <= POLAR_MAX_K) by its orthogonal polar factor, (W W^T)^{-1/2} W.
//
// Method: Newton's iteration X <- (g X + X^{-T} / g) / 2 with Higham's scaling
// g = (|X^{-1}|_F / |X|_F)^{1/2}, X^{-T} = X (X^T X)^{-1} through a Cholesky factorisation
// (branch-free, so it vectorises over the lanes). Each lane stops on its own criterion and is
// left untouched afterwards, so a matrix's result does not depend on the other lanes.
//
// Returns a bit mask of the lanes that were not solved (X^T X not numerically positive definite,
// i.e. W singular or nearly so, or no convergence): those matrices are left unchanged and the
// caller decorrelates them another way.
std::uint32_t polar_factor_batch(const SimdKernels& K, double* const* W, int n, int k);

}  // namespace backdoorlab
