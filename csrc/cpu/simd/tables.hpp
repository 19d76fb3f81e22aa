// The per-level tables of the hot loops, each defined by one copy of csrc/cpu/simd/*.cpp.
#pragma once

#include "cpu/simd.hpp"

namespace backdoorlab {

#if BDL_SIMD_X86
const SimdKernels& simd_kernels_sse2();
const SimdKernels& simd_kernels_avx2();
const SimdKernels& simd_kernels_avx512();
#else
const SimdKernels& simd_kernels_generic();
#endif

}  // namespace backdoorlab
