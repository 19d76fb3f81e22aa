// Thread-count queries and the process-wide thread setting shared by every CPU kernel.
#include "cpu/parallel.hpp"

#include <atomic>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace backdoorlab {

namespace {
std::atomic<int> g_threads{0};  // 0: not set, use max_threads()
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int num_threads() {
  const int t = g_threads.load();
  return t > 0 ? t : max_threads();
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("number of threads must be >= 1, got " + std::to_string(n));
  g_threads.store(n);
}

}  // namespace backdoorlab
