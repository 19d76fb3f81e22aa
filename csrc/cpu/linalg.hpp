// Dense linear algebra the defence kernels need, without LAPACK (not a guaranteed build
// dependency): class means and centring, Gram/covariance matrices with float64 accumulation,
// the top eigenpairs of a symmetric matrix (Householder tridiagonalisation, bisection on Sturm
// counts for the wanted eigenvalues, inverse iteration for their eigenvectors), and a Jacobi solver for the tiny
// k x k matrices of FastICA's symmetric decorrelation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/simd.hpp"

namespace backdoorlab {


// Column means of rows X[n, d] in float64 (zeros when n = 0). Throws std::invalid_argument naming
// the row (row0 + r) and class when a value is NaN or Inf.
void column_mean(const float* X, i64 n, i64 d, double* mean, i64 row0, i64 cls);

// column_mean, and in the same pass over X the power of two s with max |X[r, a] - mean[a]| in
// [s/2, s) (center false: max |X[r, a]|; 1 when every value is 0). Why the scale: the Gram kernel
// squares float32 values, so data near 1e19 overflow to Inf (then NaN) and data near 1e-23
// underflow to 0; dividing by s first keeps every centred value in (-1, 1), and a power of two
// divides exactly, so ordinary data give the very same bits as unscaled. Dividing in float64 also
// keeps x - mean (up to 2 FLT_MAX) finite.
double column_mean_scale(const SimdKernels& K, const float* X, i64 n, i64 d, double* mean, bool center, i64 row0,
                         i64 cls);

// XT[a, s] = (X[s, a] - mean[a]) * inv_scale (mean == nullptr: not centred) as float32, XT of
// shape (d_pad, n) with rows d..d_pad-1 zero (d_pad a multiple of 4 for the Gram kernel's blocks).
// inv_scale: 1 / column_mean_scale(...), or 1.0 for unscaled rows.
void transpose_centred(const float* X, i64 n, i64 d, const double* mean, double inv_scale, float* XT, i64 d_pad);

// Xr[s, a] = (X[s, a] - mean[a]) * inv_scale (mean == nullptr: not centred) as float32, Xr of shape
// (m_pad, d) with rows m..m_pad-1 zero: the rows as vectors, for the m x m Gram matrix when m < d.
void rows_centred(const float* X, i64 m, i64 d, const double* mean, double inv_scale, float* Xr, i64 m_pad);

// `value` (a per-row result of `kernel`, already scaled back) as float32; throws
// std::invalid_argument naming the kernel, row and class when it does not fit float32 (finite
// input can give a result above FLT_MAX, e.g. a projection of a row of entries near FLT_MAX:
// refused rather than returned as Inf).
float to_float_output(double value, const char* kernel, i64 row, i64 cls);

// C[d, d] = XT XT^T (full symmetric, float64). Products are summed in float32 over at most 33
// samples (a vector lane's share of a chunk, the last with the zero-padded tail step) and those
// lane sums pairwise in float64. parallel:
// split the rows of C over the OpenMP threads (deterministic: every entry is summed by one
// thread in a fixed order).
void gram(const SimdKernels& K, const float* XT, i64 d, i64 d_pad, i64 n, double* C, bool parallel);

// The k largest eigenpairs of the symmetric matrix A[d, d] (may be overwritten). evals: (k,)
// descending; evecs: (k, d), row i the unit eigenvector of evals[i], signed so that its largest
// |entry| is positive. Single-vector Lanczos when k = 1 and d >= 64, block Krylov when k > 1,
// d >= 256 and k is small next to d; else (or when they do not converge within d / 2 basis
// vectors) the dense Householder path.
void sym_eig_top(const SimdKernels& K, double* A, i64 d, i64 k, double* evals, double* evecs);

// The top eigenpair of G = Xr^T Xr (Xr: m x d float32 rows) by the same Lanczos iteration as
// sym_eig_top's k = 1, applying G as Xr^T (Xr v) instead of forming it: 2 m d per step instead of
// m d^2 once (spectral.cpp decides when). float32 = false: products in float64 (gram_apply),
// accepted at sym_eig_top's residual of 1e-10 |lambda|; true: products in float32
// (gram_apply_f32: twice the vector lanes, no conversions), accepted at 1e-6 |lambda| (linalg.cpp
// says why), which the operator's own rounding can sit above on classes without a dominant
// direction. Returns false (nothing written) when the residual is not reached within
// min(d / 2, 96) steps; the caller then takes another path.
bool gram_top1(const SimdKernels& K, const float* Xr, i64 m, i64 d, bool float32, double* eval, double* evec);

// All eigenpairs of a small symmetric matrix A[m, m] (overwritten) by cyclic Jacobi.
// evals: (m,) unsorted; V[m, m]: column j is the eigenvector of evals[j].
void jacobi_eig(double* A, int m, double* evals, double* V);

}  // namespace backdoorlab
