// The hot loops of one SIMD level (declared in that level's namespace; include after level.hpp).
// What each computes is documented in cpu/simd.hpp's SimdKernels and where it is defined.
#pragma once

#include <cstdint>

namespace backdoorlab {
namespace BDL_LEVEL_NS {

using i64 = std::int64_t;

void transpose_centred(const float* X, i64 n, i64 d, const double* mean, double inv_scale, float* XT, i64 d_pad);
void column_stats(const float* X, i64 n, i64 d, double* sum, float* lo, float* hi);
void gram_rows(const float* XT, i64 n, i64 a, i64 d_pad, double* out);
void tridiagonalize(double* A, i64 d, double* diag, double* off, double* beta, double* p);
void tridiagonal_top_eigenvalues(const double* diag, const double* off, i64 d, i64 k, double* out);
void householder_apply(const double* A, i64 d, const double* beta, i64 k, double* X);
void symm_rows(const double* C, i64 d, const double* Q, int nq, double* Y);
void dot_rows(const double* A, i64 rows, i64 d, const double* x, double* out);
void axpy_rows(const double* A, i64 rows, i64 d, const double* coef, double* x);
void gram_apply_f32(const float* Xr, i64 m, i64 d, const float* v, float* wf, double* w);
void gram_apply(const float* Xr, i64 m, i64 d, const double* v, double* w);
void project(const double* A, int k, const float* XT, i64 d, i64 m, float* Y);
void ica_step(const float* X1, int k, i64 m, const float* W, double* GX, double* gp, float* buf);
void ica_step_small(const float* X1, int k, i64 m, i64 mp, const float* W, double* GX, double* gp, float* G);
std::uint32_t polar_batch(double* const* W, int n, int k);
void sqdist_rows(const float* XT, i64 m, i64 d, const double* c, double* out);
void sqdist_rows2(const float* XT, i64 m, i64 d, const double* c0, const double* c1, double* out0, double* out1);
void cluster_sums(const float* XT, i64 m, i64 d, const std::int32_t* labels, int k, double* sums, i64* counts,
                  float* w);
double assign(const float* XT, i64 m, i64 d, const double* C, int k, std::int32_t* labels, double* dist, double* dj);
void dropout_fill(std::uint32_t* state, i64* left, i64* next, std::uint64_t threshold, float scale, i64 rows,
                  i64 row_len, i64 interleave, float* out);

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
