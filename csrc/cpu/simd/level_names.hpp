// Names of the SIMD level a csrc/cpu/simd/*.cpp copy is compiled for (CMakeLists.txt sets
// BDL_LEVEL: 0 sse2, 1 avx2, 2 avx512, 3 generic), without selecting its instruction set (that is
// level.hpp): table.cpp includes only this, so the code that fills a table runs on any CPU.
//
// BDL_F32_LANES: float32 lanes of one vector register at this level; BDL_VREGS: vector registers
// (blocks are sized so their accumulators stay in registers).
#pragma once

#if !defined(BDL_LEVEL)
#error "csrc/cpu/simd/*.cpp must be compiled with BDL_LEVEL set (see CMakeLists.txt)"
#endif

#if BDL_LEVEL == 0
#define BDL_LEVEL_NS level_sse2
#define BDL_LEVEL_NAME "sse2"
#define BDL_F32_LANES 4
#define BDL_VREGS 16
#elif BDL_LEVEL == 1
#define BDL_LEVEL_NS level_avx2
#define BDL_LEVEL_NAME "avx2"
#define BDL_F32_LANES 8
#define BDL_VREGS 16
#elif BDL_LEVEL == 2
#define BDL_LEVEL_NS level_avx512
#define BDL_LEVEL_NAME "avx512"
#define BDL_F32_LANES 16
#define BDL_VREGS 32
#elif BDL_LEVEL == 3
#define BDL_LEVEL_NS level_generic
#define BDL_LEVEL_NAME "generic"
#define BDL_F32_LANES 4
#define BDL_VREGS 16
#else
#error "BDL_LEVEL must be 0, 1, 2 or 3"
#endif
