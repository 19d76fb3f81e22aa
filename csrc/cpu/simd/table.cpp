// This level's table of hot loops (cpu/simd.hpp), named after the level. Compiled without the
// level's instruction set (level_names.hpp only): filling the table must run on any CPU.
#include "cpu/simd.hpp"
#include "cpu/simd/tables.hpp"
#include "cpu/simd/level_names.hpp"
#include "cpu/simd/kernels.hpp"

#if BDL_LEVEL == 0
#define BDL_TABLE_FN simd_kernels_sse2
#elif BDL_LEVEL == 1
#define BDL_TABLE_FN simd_kernels_avx2
#elif BDL_LEVEL == 2
#define BDL_TABLE_FN simd_kernels_avx512
#else
#define BDL_TABLE_FN simd_kernels_generic
#endif

namespace backdoorlab {

const SimdKernels& BDL_TABLE_FN() {
  namespace L = BDL_LEVEL_NS;
  static const SimdKernels table{BDL_LEVEL_NAME, &L::gram_rows, &L::tridiagonalize, &L::tridiagonal_top_eigenvalues,
                                 &L::symm_rows,  &L::dot_rows,  &L::axpy_rows,      &L::gram_apply, &L::project,
                                 &L::ica_step,   &L::ica_step_small, &L::polar_batch, &L::assign,
                                 &L::householder_apply, &L::column_stats,
                                 &L::gram_apply_f32, &L::sqdist_rows, &L::cluster_sums,
                                 &L::transpose_centred, &L::sqdist_rows2,
                                 &L::dropout_fill};
  return table;
}

}  // namespace backdoorlab
