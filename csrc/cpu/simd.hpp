// Run-time SIMD dispatch for the hot loops, without -march=native.
//
// BDL_SIMD_CLONES makes GCC/Clang compile a function several times (AVX-512, AVX2+FMA, and the
// baseline x86-64 build) and pick the best clone for the running CPU when the library loads, so
// one wheel is fast on new CPUs and still runs on old ones. Elsewhere it expands to nothing.
// Loops inside such functions are written for the vectoriser (`#pragma omp simd`, no branches);
// each clone is deterministic on its own, so results depend on the CPU family, never on thread
// count.
#pragma once

#include <string>
#include <vector>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define BDL_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define BDL_HAVE_SIMD_CLONES 1
#else
#define BDL_SIMD_CLONES
#define BDL_HAVE_SIMD_CLONES 0
#endif

namespace backdoorlab {

// The clones compiled in, and the one this CPU runs.
std::vector<std::string> simd_clones();
std::string simd_selected();

}  // namespace backdoorlab
