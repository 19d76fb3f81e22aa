// Thread-count queries and the process-wide thread setting shared by every CPU kernel.
#include "cpu/parallel.hpp"

#include <algorithm>
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

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
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

int thread_ceiling() {
#ifdef _OPENMP
  // 4 * procs in 64 bits: a machine reporting a huge processor count must not overflow an int
  const long long wanted = std::max(64LL, 4LL * std::max(1, omp_get_num_procs()));
  return static_cast<int>(std::max(1LL, std::min<long long>(wanted, omp_get_thread_limit())));
#else
  return 64;  // the setting is kept (and validated alike) but every region runs on one thread
#endif
}

int num_threads() {
  const int t = g_threads.load();
  return std::min(t > 0 ? t : std::max(1, max_threads()), thread_ceiling());
}

void set_num_threads(int n) {
  const int ceiling = thread_ceiling();
  if (n < 1 || n > ceiling)
    throw std::invalid_argument("number of threads must be in [1, " + std::to_string(ceiling) +
                                "] (4 per processor, at least 64, within OMP_THREAD_LIMIT), got " + std::to_string(n));
  g_threads.store(n);
}

}  // namespace backdoorlab
