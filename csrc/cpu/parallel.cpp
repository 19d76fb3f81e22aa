// Thread-count queries shared by every CPU kernel (OpenMP when built with it).
#include "cpu/parallel.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace backdoorlab {

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

}  // namespace backdoorlab
