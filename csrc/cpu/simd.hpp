// Run-time choice of the instruction-set level of the hot loops, without -march=native.
//
// The loops that decide the speed (csrc/cpu/simd/*.cpp) are compiled once per x86-64 level —
// sse2 (the x86-64 baseline), avx2 (x86-64-v3: AVX2 + FMA) and avx512 (x86-64-v4) — each copy in
// its own namespace, and each copy fills one table of function pointers. The rest of the core
// calls the loops through the table of the level in use: the best one this CPU supports, unless
// set_simd_level() chose another (backdoorlab.native does so for BACKDOORLAB_SIMD=...). One
// machine can so test and benchmark every level it can run. Each level is deterministic on its
// own; results may differ between levels in the last bits (other vector widths sum in another
// order), never with the thread count.
//
// Why not GCC's target_clones (used before): a clone is picked by the loader, once, with no way
// to force another, and each clone was the same code whatever the register file (16-wide float
// blocks and 8-wide double "vectors" that fit AVX-512's 32 zmm registers spilled on AVX2's 16
// ymm). A translation unit per level can size its blocks for that level.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace backdoorlab {

using i64 = std::int64_t;

// The hot loops, one implementation per level (documented where they are used).
struct SimdKernels {
  const char* name;  // "sse2", "avx2", "avx512" (or "generic" off x86-64)
  // linalg.cpp
  void (*gram_rows)(const float* XT, i64 n, i64 a, i64 d_pad, double* out);
  void (*tridiagonalize)(double* A, i64 d, double* diag, double* off, double* beta, double* p);
  void (*tridiagonal_top_eigenvalues)(const double* diag, const double* off, i64 d, i64 k, double* out);
  // Y[i, :] = C Q[i, :] for the nq rows of Q (C symmetric d x d; Q, Y nq x d, row-major)
  void (*symm_rows)(const double* C, i64 d, const double* Q, int nq, double* Y);
  // out[i] = <A[i, :], x> for the rows of A (rows x d); x -= sum_i coef[i] A[i, :]
  void (*dot_rows)(const double* A, i64 rows, i64 d, const double* x, double* out);
  void (*axpy_rows)(const double* A, i64 rows, i64 d, const double* coef, double* x);
  // w = Xr^T (Xr v) in float64, Xr m x d float32 row-major: the Gram operator without the Gram
  void (*gram_apply)(const float* Xr, i64 m, i64 d, const double* v, double* w);
  // decompose.cpp
  void (*project)(const double* A, int k, const float* XT, i64 d, i64 m, float* Y);
  void (*ica_step)(const float* X1, int k, i64 m, const float* W, double* GX, double* gp, float* buf);
  void (*ica_step_small)(const float* X1, int k, i64 m, i64 mp, const float* W, double* GX, double* gp, float* G);
  std::uint32_t (*polar_batch)(double* const* W, int n, int k);
  // cluster.cpp
  double (*assign)(const float* XT, i64 m, i64 d, const double* C, int k, std::int32_t* labels, double* dist,
                   double* dj);
  // linalg.cpp again (last, so the table's order above stays): X <- Q X for the k rows of X, Q the
  // product of the reflectors tridiagonalize() left in A and beta
  void (*householder_apply)(const double* A, i64 d, const double* beta, i64 k, double* X);
  // column sums (float64), minima and maxima (float32) of the n >= 1 rows X[n, d], one pass; a
  // NaN or Inf leaves its column's sum non-finite
  void (*column_stats)(const float* X, i64 n, i64 d, double* sum, float* lo, float* hi);
  // gram_apply with float32 products (v float32; wf: d floats of scratch), w still float64
  void (*gram_apply_f32)(const float* Xr, i64 m, i64 d, const float* v, float* wf, double* w);
  // cluster.cpp: out[s] = |X[s] - c|^2 (XT the class transposed, features summed in order in
  // float64); sums[j, :] / counts[j] of the rows labelled j (float64 sums; w: 2m floats of scratch)
  void (*sqdist_rows)(const float* XT, i64 m, i64 d, const double* c, double* out);
  void (*cluster_sums)(const float* XT, i64 m, i64 d, const std::int32_t* labels, int k, double* sums, i64* counts,
                       float* w);
  // linalg.hpp's transpose_centred (the centred, scaled class transposed to float32 XT)
  void (*transpose_centred)(const float* X, i64 n, i64 d, const double* mean, double inv_scale, float* XT,
                            i64 d_pad);
  // sqdist_rows for two centres in one pass over the rows (the same values as two calls)
  void (*sqdist_rows2)(const float* XT, i64 m, i64 d, const double* c0, const double* c1, double* out0, double* out1);
  // dropout_noise.cpp: rows * row_len draws of the mt19937 words `state` (624, with ATen's `left`
  // and `next` counters, all advanced), kept when their 53 low bits are below `threshold`,
  // written as 0 or `scale` (layout: cpu/dropout_noise.hpp)
  void (*dropout_fill)(std::uint32_t* state, i64* left, i64* next, std::uint64_t threshold, float scale, i64 rows,
                       i64 row_len, i64 interleave, float* out);
};

// The level in use (set once per kernel call: read it at the entry and pass it down).
const SimdKernels& simd();

// Levels compiled into this build, best last.
std::vector<std::string> simd_levels_compiled();
// Whether this CPU (and OS) can run `level` (false for unknown names).
bool simd_level_supported(const std::string& level);
// The best compiled level this CPU supports (what the core uses unless told otherwise).
std::string simd_level_best();
// Use `level` from now on. std::invalid_argument naming the level and the choices when it is
// unknown, not compiled in, or not supported by this CPU. Not to be called while kernels run in
// other threads (a kernel already running keeps the level it started with).
void set_simd_level(const std::string& level);

}  // namespace backdoorlab
