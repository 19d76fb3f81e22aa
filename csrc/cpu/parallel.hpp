// Thread-count queries shared by every CPU kernel.
#pragma once

namespace backdoorlab {

bool openmp_enabled();
int max_threads();

}  // namespace backdoorlab
