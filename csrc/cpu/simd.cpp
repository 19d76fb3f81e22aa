// The table of the SIMD level in use, and which levels this CPU can run (see simd.hpp).
#include "cpu/simd.hpp"

#include <atomic>
#include <stdexcept>

#include "cpu/simd/tables.hpp"

namespace backdoorlab {
namespace {

struct Level {
  const char* name;
  const SimdKernels& (*table)();
};

// Compiled levels, best last (BDL_SIMD_X86 is set by CMakeLists.txt when it builds all three).
#if BDL_SIMD_X86
const Level kLevels[] = {{"sse2", &simd_kernels_sse2}, {"avx2", &simd_kernels_avx2}, {"avx512", &simd_kernels_avx512}};
#else
const Level kLevels[] = {{"generic", &simd_kernels_generic}};
#endif
constexpr int kNumLevels = sizeof(kLevels) / sizeof(kLevels[0]);

bool cpu_runs(const std::string& name) {
#if BDL_SIMD_X86 && (defined(__GNUC__) || defined(__clang__))
  // libgcc's cpu model also checks that the OS saves the ymm/zmm state (XCR0), not only CPUID.
  __builtin_cpu_init();
  if (name == "sse2") return true;  // part of x86-64 itself
  if (name == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe");
  if (name == "avx512")
    return cpu_runs("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
  return false;
#else
  return name == "generic";
#endif
}

const Level* find(const std::string& name) {
  for (const Level& l : kLevels)
    if (name == l.name) return &l;
  return nullptr;
}

const Level& best() {
  for (int i = kNumLevels - 1; i > 0; --i)
    if (cpu_runs(kLevels[i].name)) return kLevels[i];
  return kLevels[0];
}

std::atomic<const SimdKernels*>& active() {
  static std::atomic<const SimdKernels*> table{&best().table()};
  return table;
}

std::string choices() {
  std::string s;
  for (const Level& l : kLevels) {
    if (!s.empty()) s += ", ";
    s += l.name;
    if (!cpu_runs(l.name)) s += " (not on this CPU)";
  }
  return s;
}

}  // namespace

const SimdKernels& simd() { return *active().load(std::memory_order_acquire); }

std::vector<std::string> simd_levels_compiled() {
  std::vector<std::string> out;
  for (const Level& l : kLevels) out.push_back(l.name);
  return out;
}

bool simd_level_supported(const std::string& level) { return find(level) != nullptr && cpu_runs(level); }

std::string simd_level_best() { return best().name; }

void set_simd_level(const std::string& level) {
  const Level* l = find(level);
  if (l == nullptr)
    throw std::invalid_argument("unknown SIMD level '" + level + "'; this build has: " + choices());
  if (!cpu_runs(level))
    throw std::invalid_argument("SIMD level '" + level + "' is compiled in but this CPU cannot run it; choose one of: " +
                                choices());
  active().store(&l->table(), std::memory_order_release);
}

}  // namespace backdoorlab
