// What the run-time SIMD dispatch of simd.hpp chose on this CPU (for build_info()).
#include "cpu/simd.hpp"

namespace backdoorlab {

std::vector<std::string> simd_clones() {
#if BDL_HAVE_SIMD_CLONES
  return {"x86-64-v4 (AVX-512)", "x86-64-v3 (AVX2+FMA)", "x86-64 baseline (SSE2)"};
#else
  return {"baseline"};
#endif
}

std::string simd_selected() {
#if BDL_HAVE_SIMD_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "baseline";
#endif
}

}  // namespace backdoorlab
