// The hot loops of linalg.cpp, compiled once per SIMD level (see cpu/simd.hpp, simd/level.hpp).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>
#if BDL_SIMD_X86
#include <immintrin.h>
#endif

#include "cpu/simd/level.hpp"
#include "cpu/simd/kernels.hpp"

namespace backdoorlab {
namespace BDL_LEVEL_NS {

#if BDL_LEVEL == 1 || BDL_LEVEL == 2
// The vector types and intrinsics of the kernels below that pin rows in registers (gram_steps,
// symv4_rows, rows4_dots): float32 (vf) and float64 (vd, LD lanes) vectors of this level.
// BDL_PIN4 passes four vectors through an empty asm GCC cannot see through, so each is loaded
// once; written as plain `omp simd` loops, GCC folded a row's load into every multiply-add that
// used it and the loops were bound by loads.
#if BDL_LEVEL == 1
using vf = __m256;
using vd = __m256d;
constexpr int LD = 4;
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vd vdload(const double* p) { return _mm256_loadu_pd(p); }
inline vd vdzero() { return _mm256_setzero_pd(); }
inline vd vdset1(double x) { return _mm256_set1_pd(x); }
inline void vdstore(double* p, vd v) { _mm256_storeu_pd(p, v); }
inline vd vdfma(vd a, vd b, vd c) { return _mm256_fmadd_pd(a, b, c); }
inline double vdsum(vd v) {
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
#define BDL_PIN4(a, b, c, d) __asm__("" : "+x"(a), "+x"(b), "+x"(c), "+x"(d))
constexpr int SYMM_G = 2;  // symm_rows' vectors per pass: 4 x 2 accumulators + 4 rows + 1 vector in 16 registers
#else
using vf = __m512;
using vd = __m512d;
constexpr int LD = 8;
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vd vdload(const double* p) { return _mm512_loadu_pd(p); }
inline vd vdzero() { return _mm512_setzero_pd(); }
inline vd vdset1(double x) { return _mm512_set1_pd(x); }
inline void vdstore(double* p, vd v) { _mm512_storeu_pd(p, v); }
inline vd vdfma(vd a, vd b, vd c) { return _mm512_fmadd_pd(a, b, c); }
inline double vdsum(vd v) {
  // the same pairwise halving as the AVX2 version, spelled without _mm512_extractf64x4_pd (GCC 12
  // warns inside its own header for that one)
  alignas(64) double h[8];
  _mm512_store_pd(h, v);
  const double q0 = (h[0] + h[4]) + (h[2] + h[6]), q1 = (h[1] + h[5]) + (h[3] + h[7]);
  return q0 + q1;
}
#define BDL_PIN4(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d))
constexpr int SYMM_G = 4;
#endif
#endif

// Four rows a..a+3 of the Gram matrix against the rows b..b+3 for every b in [a, d_pad) (step
// 4): out gets the 16 entries of each 4 x 4 block (row-major), block after block. Samples are the
// vector lanes (LN per step): 8 loads feed 16 multiply-adds. Each product keeps one float32
// partial sum per lane over a chunk of 32 LN samples (32 per lane, 33 in the last chunk), and
// each chunk's lanes are summed in float64 into the entry: at the shapes AC meets (n = 412 ...
// 820) that is one or two chunks, one pairwise horizontal sum each. Lanes: one vector register of
// floats at this level; with 16 registers (AVX2, SSE2) the four rows b go two at a time (8
// accumulators: 4 x 4 spilled; 412 x 160 Gram at AVX2 282 -> 269 us, one core). The last n % LN
// samples are one more vector step over zero-padded copies. Why so (perf annotate, YTAF's 412 x 160 classes): the scalar float64 loop over those
// samples cost about half of the 25 vector steps, and zeroing and adding a 16 x LN float64 array
// of lane sums per block another tenth.
#if BDL_LEVEL == 1 || BDL_LEVEL == 2
// The products of gram_rows over the samples [s0, s1) (whole vectors) for the rows x[0..3] and
// y[0..JG), into acc (4 JG vectors, overwritten), the four x vectors pinned (BDL_PIN4): a step
// loads 4 + JG vectors for 4 JG multiply-adds, not 4 JG + JG. One core, 412 x 160 / 820 x 512 Gram: AVX2
// 245 -> 181 us / 4.96-5.08 -> 3.78-3.80 ms; AVX-512 192-197 -> 173-176 us / 3.89-3.97 -> 3.49-3.51 ms.
template <int JG>
inline void gram_steps(const float* const* x, const float* const* y, i64 s0, i64 s1, float (*acc)[BDL_F32_LANES]) {
  constexpr int LN = BDL_F32_LANES;
  vf a[4 * JG];
  for (int q = 0; q < 4 * JG; ++q) a[q] = vzero();
  for (i64 s = s0; s < s1; s += LN) {
    vf u[JG];
    for (int j = 0; j < JG; ++j) u[j] = vload(y[j] + s);
    vf x0 = vload(x[0] + s), x1 = vload(x[1] + s), x2 = vload(x[2] + s), x3 = vload(x[3] + s);
    BDL_PIN4(x0, x1, x2, x3);
    const vf xs[4] = {x0, x1, x2, x3};
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < JG; ++j) a[JG * i + j] = vfma(xs[i], u[j], a[JG * i + j]);
  }
  for (int q = 0; q < 4 * JG; ++q) vstore(acc[q], a[q]);
}
#endif

void gram_rows(const float* XT, i64 n, i64 a, i64 d_pad, double* out) {
  constexpr int LN = BDL_F32_LANES;
  // rows b taken JG at a time: 4 x JG accumulators, plus the 4 + JG rows' vectors, must fit the
  // register file (AVX-512: 32; AVX2 and SSE2: 16, where 4 x 4 spilled)
  constexpr int JG = BDL_VREGS >= 32 ? 4 : 2;
  constexpr int NA = 4 * JG;  // accumulators
  constexpr i64 CHUNK = 32 * LN;
  const float* x[4] = {XT + a * n, XT + (a + 1) * n, XT + (a + 2) * n, XT + (a + 3) * n};
  const i64 n_vec = n / LN * LN, tail = n - n_vec;
  float xt[4][LN] = {}, yt[4][LN] = {};  // the tail samples, zero-padded to a full step
  for (int i = 0; i < 4; ++i)
    for (i64 l = 0; l < tail; ++l) xt[i][l] = x[i][n_vec + l];
  for (i64 b = a; b < d_pad; b += 4) {
    for (int j = 0; j < 4; ++j)
      for (i64 l = 0; l < tail; ++l) yt[j][l] = XT[(b + j) * n + n_vec + l];
    double* o = out + (b - a) * 4;  // 16 entries per block of 4 rows b
    for (int j0 = 0; j0 < 4; j0 += JG) {
      const float* y[JG];
      for (int j = 0; j < JG; ++j) y[j] = XT + (b + j0 + j) * n;
      for (i64 s0 = 0; s0 == 0 || s0 < n_vec; s0 += CHUNK) {
        const i64 s1 = std::min(n_vec, s0 + CHUNK);
        float acc[NA][LN];
#if BDL_LEVEL == 1 || BDL_LEVEL == 2
        gram_steps<JG>(x, y, s0, s1, acc);
#else
        for (int q = 0; q < NA; ++q)
          for (int l = 0; l < LN; ++l) acc[q][l] = 0.0f;
        for (i64 s = s0; s < s1; s += LN) {
#pragma omp simd
          for (int l = 0; l < LN; ++l) {
            float u[JG];
            for (int j = 0; j < JG; ++j) u[j] = y[j][s + l];
            for (int i = 0; i < 4; ++i) {
              const float v = x[i][s + l];
              for (int j = 0; j < JG; ++j) acc[JG * i + j][l] += v * u[j];
            }
          }
        }
#endif
        if (tail > 0 && s1 == n_vec) {
#pragma omp simd
          for (int l = 0; l < LN; ++l)
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < JG; ++j) acc[JG * i + j][l] += xt[i][l] * yt[j0 + j][l];
        }
        // the lanes of each entry summed pairwise in float64, all entries level by level (a
        // per-entry reduction compiled to a serial chain of LN scalar additions: ~40 % of the time)
        double h[NA][LN];
        for (int q = 0; q < NA; ++q)
#pragma omp simd
          for (int l = 0; l < LN; ++l) h[q][l] = acc[q][l];
        for (int w = LN / 2; w > 1; w /= 2)
          for (int q = 0; q < NA; ++q)
#pragma omp simd
            for (int l = 0; l < w; ++l) h[q][l] += h[q][l + w];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < JG; ++j) {
            double& e = o[4 * i + j0 + j];
            e = (s0 == 0 ? 0.0 : e) + (h[JG * i + j][0] + h[JG * i + j][1]);
          }
      }
    }
  }
}

// XT[a, s] = (X[s, a] - mean[a]) * inv_scale as float32 (mean == nullptr: not centred), XT of
// shape (d_pad, n), rows d..d_pad-1 zero: linalg.hpp's transpose_centred. At AVX2 and AVX-512 in
// 8 x 8 tiles: eight rows converted to float64, centred and scaled (the scalar expression's
// arithmetic, so the same bits), rounded to float32, transposed in registers and stored as eight
// runs of XT; the edges as scalars. Baseline-compiled, element by element, it was ~7 % of the
// GTSRB-shape PCA (one thread, AVX2).
void transpose_centred(const float* X, i64 n, i64 d, const double* mean, double inv_scale, float* XT, i64 d_pad) {
  auto scalar = [&](i64 s, i64 a) {
    XT[a * n + s] = static_cast<float>((mean ? X[s * d + a] - mean[a] : X[s * d + a]) * inv_scale);
  };
  i64 s_tiles = 0, a_tiles = 0;
#if BDL_LEVEL == 1 || BDL_LEVEL == 2
  s_tiles = n / 8 * 8;
  a_tiles = d / 8 * 8;
  const __m256d inv = _mm256_set1_pd(inv_scale);
  for (i64 a0 = 0; a0 < a_tiles; a0 += 8) {
    const __m256d m_lo = mean ? _mm256_loadu_pd(mean + a0) : _mm256_setzero_pd();
    const __m256d m_hi = mean ? _mm256_loadu_pd(mean + a0 + 4) : _mm256_setzero_pd();
    for (i64 s0 = 0; s0 < s_tiles; s0 += 8) {
      __m256 r[8];
      for (int q = 0; q < 8; ++q) {
        const float* x = X + (s0 + q) * d + a0;
        const __m256d lo = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x)), m_lo), inv);
        const __m256d hi = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + 4)), m_hi), inv);
        r[q] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
      }
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      const __m256 c[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                           _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                           _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                           _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(XT + (a0 + q) * n + s0, c[q]);
    }
  }
#endif
  for (i64 a = 0; a < a_tiles; ++a)  // the samples past the last whole tile
    for (i64 s = s_tiles; s < n; ++s) scalar(s, a);
  constexpr i64 B = 32;  // the features past the last whole tile: blocked as before
  for (i64 a0 = a_tiles; a0 < d; a0 += B) {
    const i64 a1 = std::min(d, a0 + B);
    for (i64 s0 = 0; s0 < n; s0 += B) {
      const i64 s1 = std::min(n, s0 + B);
      for (i64 s = s0; s < s1; ++s)
        for (i64 a = a0; a < a1; ++a) scalar(s, a);
    }
  }
  std::fill(XT + d * n, XT + d_pad * n, 0.0f);
}

// Column sums (float64), minima and maxima (float32) of the n >= 1 rows X[n, d], in one pass. A
// NaN or Inf leaves its column's sum non-finite (finite floats cannot overflow a float64 sum),
// which is how the caller finds it; min/max are then meaningless and not read.
void column_stats(const float* X, i64 n, i64 d, double* sum, float* lo, float* hi) {
  for (i64 a = 0; a < d; ++a) {
    sum[a] = X[a];
    lo[a] = hi[a] = X[a];
  }
  for (i64 r = 1; r < n; ++r) {
    const float* row = X + r * d;
#pragma omp simd
    for (i64 a = 0; a < d; ++a) {
      const float x = row[a];
      sum[a] += x;
      lo[a] = lo[a] < x ? lo[a] : x;
      hi[a] = hi[a] > x ? hi[a] : x;
    }
  }
}

#if BDL_LEVEL == 1 || BDL_LEVEL == 2
// The off-diagonal part of four rows of tridiagonalize's symmetric product: t[i] = <q[i][j0:m],
// v[j0:m]> and p[j0:m] += sum_i c[i] q[i][j0:m], the four row vectors pinned in registers (each
// serves a dot product and the update of p; GCC loaded it once for each).
inline void symv4_rows(const double* const* q, const double* v, double* p, i64 j0, i64 m, const double* c,
                       double* t) {
  vd a0 = vdzero(), a1 = vdzero(), a2 = vdzero(), a3 = vdzero();
  const vd c0 = vdset1(c[0]), c1 = vdset1(c[1]), c2 = vdset1(c[2]), c3 = vdset1(c[3]);
  i64 j = j0;
  for (; j + LD <= m; j += LD) {
    vd x0 = vdload(q[0] + j), x1 = vdload(q[1] + j), x2 = vdload(q[2] + j), x3 = vdload(q[3] + j);
    BDL_PIN4(x0, x1, x2, x3);
    const vd vj = vdload(v + j);
    a0 = vdfma(x0, vj, a0);
    a1 = vdfma(x1, vj, a1);
    a2 = vdfma(x2, vj, a2);
    a3 = vdfma(x3, vj, a3);
    vd pj = vdload(p + j);
    pj = vdfma(c0, x0, pj);
    pj = vdfma(c1, x1, pj);
    pj = vdfma(c2, x2, pj);
    pj = vdfma(c3, x3, pj);
    vdstore(p + j, pj);
  }
  t[0] = vdsum(a0);
  t[1] = vdsum(a1);
  t[2] = vdsum(a2);
  t[3] = vdsum(a3);
  for (; j < m; ++j) {
    for (int i = 0; i < 4; ++i) t[i] += q[i][j] * v[j];
    p[j] += c[0] * q[0][j] + c[1] * q[1][j] + c[2] * q[2][j] + c[3] * q[3][j];
  }
}
#endif  // BDL_LEVEL == 1 || BDL_LEVEL == 2

namespace {

// Step k of tridiagonalize: the Householder vector of x = A[k, k+1:] (left in place of x), T's
// diagonal and off-diagonal entry and the vector's scale. Returns false when the column is already
// tridiagonal (beta = 0: no update).
inline bool householder_step(double* A, i64 d, i64 k, double* diag, double* off, double* beta) {
  double* v = A + k * d + k + 1;
  const i64 m = d - k - 1;
  double xnorm2 = 0.0;
  for (i64 j = 0; j < m; ++j) xnorm2 += v[j] * v[j];
  diag[k] = A[k * d + k];
  const double tail2 = xnorm2 - v[0] * v[0];
  if (tail2 <= 0.0) {
    off[k] = v[0];
    beta[k] = 0.0;
    return false;
  }
  const double x0 = v[0];
  const double alpha = x0 >= 0 ? -std::sqrt(xnorm2) : std::sqrt(xnorm2);
  v[0] = x0 - alpha;
  off[k] = alpha;
  beta[k] = 2.0 / (tail2 + v[0] * v[0]);
  return true;
}

// p += (the symmetric product's share of) rows i..i+3 of the m x m symmetric S (upper triangle,
// row stride d) times v: the 4 x 4 diagonal block, then the off-diagonal part (each stored row
// serves its dot product and, transposed, an axpy into p).
inline void product_rows4(const double* S, i64 d, i64 m, const double* v, double* p, i64 i) {
  const double* r[4] = {S + i * d, S + (i + 1) * d, S + (i + 2) * d, S + (i + 3) * d};
  const double v0 = v[i], v1 = v[i + 1], v2 = v[i + 2], v3 = v[i + 3];
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  for (int a = 0; a < 4; ++a) {  // the 4 x 4 diagonal block's upper triangle
    s[a] += r[a][i + a] * v[i + a];
    for (int b = a + 1; b < 4; ++b) {
      s[a] += r[a][i + b] * v[i + b];
      p[i + b] += v[i + a] * r[a][i + b];
    }
  }
#if BDL_LEVEL == 1 || BDL_LEVEL == 2
  const double c[4] = {v0, v1, v2, v3};
  double t[4];
  symv4_rows(r, v, p, i + 4, m, c, t);
  for (int a = 0; a < 4; ++a) p[i + a] += s[a] + t[a];
#else
  double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
  const double *q0 = r[0], *q1 = r[1], *q2 = r[2], *q3 = r[3];
#pragma omp simd reduction(+ : t0, t1, t2, t3)
  for (i64 j = i + 4; j < m; ++j) {
    const double vj = v[j];
    t0 += q0[j] * vj;
    t1 += q1[j] * vj;
    t2 += q2[j] * vj;
    t3 += q3[j] * vj;
    p[j] += v0 * q0[j] + v1 * q1[j] + v2 * q2[j] + v3 * q3[j];
  }
  p[i] += s[0] + t0;
  p[i + 1] += s[1] + t1;
  p[i + 2] += s[2] + t2;
  p[i + 3] += s[3] + t3;
#endif
}

// The same for the single row i (the last m % 4 rows).
inline void product_row(const double* S, i64 d, i64 m, const double* v, double* p, i64 i) {
  const double* row = S + i * d;
  const double vi = v[i];
  double t = row[i] * vi;
#pragma omp simd reduction(+ : t)
  for (i64 j = i + 1; j < m; ++j) {
    t += row[j] * v[j];
    p[j] += vi * row[j];
  }
  p[i] += t;
}

// S -= v w^T + w v^T on rows i..i+3 of the m x m symmetric S (upper triangle, row stride d).
inline void rank2_rows4(double* S, i64 d, i64 m, const double* v, const double* w, i64 i) {
  double* r[4] = {S + i * d, S + (i + 1) * d, S + (i + 2) * d, S + (i + 3) * d};
  for (int a = 0; a < 4; ++a)  // the diagonal block
    for (int b = a; b < 4; ++b) r[a][i + b] -= v[i + a] * w[i + b] + w[i + a] * v[i + b];
  const double v0 = v[i], v1 = v[i + 1], v2 = v[i + 2], v3 = v[i + 3];
  const double w0 = w[i], w1 = w[i + 1], w2 = w[i + 2], w3 = w[i + 3];
  double *q0 = r[0], *q1 = r[1], *q2 = r[2], *q3 = r[3];
#pragma omp simd
  for (i64 j = i + 4; j < m; ++j) {
    const double vj = v[j], wj = w[j];
    q0[j] -= v0 * wj + w0 * vj;
    q1[j] -= v1 * wj + w1 * vj;
    q2[j] -= v2 * wj + w2 * vj;
    q3[j] -= v3 * wj + w3 * vj;
  }
}

// The same for the single row i.
inline void rank2_row(double* S, i64 d, i64 m, const double* v, const double* w, i64 i) {
  double* row = S + i * d;
  const double vi = v[i], wi = w[i];
#pragma omp simd
  for (i64 j = i; j < m; ++j) row[j] -= vi * w[j] + wi * v[j];
}

// p = A22 v of step j on its own pass (A22 = A[j+1:, j+1:], v = A[j, j+1:]): for step 0, and after
// a step without a reflection
inline void step_product(const double* A, i64 d, i64 j, double* p) {
  const i64 m = d - j - 1;
  const double* v = A + j * d + j + 1;
  const double* S = A + (j + 1) * d + (j + 1);
  std::fill(p, p + m, 0.0);
  i64 i = 0;
  for (; i + 4 <= m; i += 4) product_rows4(S, d, m, v, p, i);
  for (; i < m; ++i) product_row(S, d, m, v, p, i);
}

}  // namespace

// Householder reduction of symmetric A (full storage; only its upper triangle is read) to
// tridiagonal T = Q^T A Q.
// diag (d,), off (d-1,): T's diagonals. The Householder vector of step k is left in
// A[k, k+1:], its scale in beta[k]; Q = H_0 H_1 ... H_{d-3}.
//
// Step k: p = beta A22 v ; K = beta (p.v) / 2 ; w = p - K v ; A22 -= v w^T + w v^T. Only the upper
// triangle of A22 is read and kept (it is symmetric): the rank-2 update touches half the matrix.
// Rows go four at a time: one load of v[j], p[j] (and w[j]) serves four rows (row by row, p's loads
// and stores outnumbered the multiply-adds). The update of step k and the product of step k + 1
// share one pass over the rows: A22's first row is updated first (it holds step k + 1's vector),
// then each group of four rows is updated and at once, while it is in L1, multiplied into step
// k + 1's p — two passes over the trailing matrix a step instead of three. Every entry and every
// p is computed by the same operations in the same order as in separate passes (p's groups of
// four start at the trailing matrix's first row either way), so T and Q are the same bit for bit.
void tridiagonalize(double* A, i64 d, double* diag, double* off, double* beta, double* p) {
  std::vector<double> p_next_buf(d > 0 ? d : 1);
  double* p_cur = p;
  double* p_next = p_next_buf.data();
  // step 0's product on its own; later steps get theirs from the previous step's update pass
  bool reflect = d > 2 && householder_step(A, d, 0, diag, off, beta);
  if (reflect) step_product(A, d, 0, p_cur);
  for (i64 k = 0; k + 2 < d; ++k) {
    const i64 m = d - k - 1;
    double* A22 = A + (k + 1) * d + (k + 1);
    const bool has_next = k + 3 < d;  // step k + 1 reflects A[k+1, k+2:]
    if (!reflect) {  // A22 unchanged: step k + 1 needs its own product pass
      if (has_next && (reflect = householder_step(A, d, k + 1, diag, off, beta))) step_product(A, d, k + 1, p_cur);
      continue;
    }
    const double* v = A + k * d + k + 1;
    const double bk = beta[k];
    double pv = 0.0;
    for (i64 q = 0; q < m; ++q) {
      p_cur[q] *= bk;
      pv += p_cur[q] * v[q];
    }
    const double K = 0.5 * bk * pv;
    for (i64 q = 0; q < m; ++q) p_cur[q] -= K * v[q];  // p_cur now holds w
    const double* w = p_cur;
    rank2_row(A22, d, m, v, w, 0);  // step k + 1's x is this row
    const bool next = has_next && householder_step(A, d, k + 1, diag, off, beta);
    // rows 1.. of A22 are rows 0.. of step k + 1's trailing matrix S
    const i64 mn = m - 1;
    const double* vn = A22 + 1;
    double* S = A22 + d + 1;
    // S's rows as seen by rank2_rows4 / rank2_row on A22 start at column 1 of A22: shift v and w
    const double* vs = v + 1;
    const double* ws = w + 1;
    if (next) std::fill(p_next, p_next + mn, 0.0);
    i64 i = 0;
    for (; i + 4 <= mn; i += 4) {
      rank2_rows4(S, d, mn, vs, ws, i);
      if (next) product_rows4(S, d, mn, vn, p_next, i);
    }
    for (; i < mn; ++i) {
      rank2_row(S, d, mn, vs, ws, i);
      if (next) product_row(S, d, mn, vn, p_next, i);
    }
    std::swap(p_cur, p_next);
    reflect = next;
  }
  if (d >= 2) {
    diag[d - 2] = A[(d - 2) * d + d - 2];
    off[d - 2] = A[(d - 2) * d + d - 1];
  }
  diag[d - 1] = A[(d - 1) * d + d - 1];
}

// X <- Q X for the k rows of X (d each), Q = H_0 H_1 ... H_{d-3} the reflectors tridiagonalize()
// left in A and beta: the eigenvectors of T back in A's basis. The reflector of step s is applied
// to every row before the next (it stays in L1), and its dot products are vector reductions: in
// the baseline-compiled caller they were a serial chain of additions, ~4 cycles an element.
void householder_apply(const double* A, i64 d, const double* beta, i64 k, double* X) {
  for (i64 s = d - 3; s >= 0; --s) {
    if (beta[s] == 0.0) continue;
    const double* v = A + s * d + s + 1;
    const i64 len = d - s - 1;
    for (i64 j = 0; j < k; ++j) {
      double* x = X + j * d + s + 1;
      double t = 0.0;
#pragma omp simd reduction(+ : t)
      for (i64 i = 0; i < len; ++i) t += v[i] * x[i];
      t *= beta[s];
#pragma omp simd
      for (i64 i = 0; i < len; ++i) x[i] -= t * v[i];
    }
  }
}

// The k largest eigenvalues of the symmetric tridiagonal (diag, off), descending, by bisection on
// Sturm counts (LAPACK dstebz's method). Why not QL for all d: whitening wants 10 of 160+, and
// each QL step is a dependent chain of a square root and two divisions. Here one sweep computes the
// Sturm counts of W shifts side by side, one per vector lane, so the dependent chain of a count is
// paid once for W shifts (W doubles: two vector registers at this level); how the shifts are
// chosen and shared is said below. Each eigenvalue's bracket narrows until it is 1e-12 of the
// spectrum's scale wide (not the ~52 halvings to a few ulps): the caller takes the eigenvector by
// inverse iteration from that shift and the eigenvalue as its Rayleigh quotient, which is then
// accurate to round-off (its error is the square of the vector's).
constexpr int W = BDL_F32_LANES;  // doubles in two vector registers
using vd16 = double __attribute__((vector_size(W * sizeof(double))));
using vm16 = std::int64_t __attribute__((vector_size(W * sizeof(double))));
constexpr int WH = W / 2;  // doubles in one vector register
using vdh = double __attribute__((vector_size(WH * sizeof(double))));
using vmh = std::int64_t __attribute__((vector_size(WH * sizeof(double))));
constexpr double BISECTION_RTOL = 1e-12;

void tridiagonal_top_eigenvalues(const double* diag, const double* off, i64 d, i64 k, double* out) {
  std::vector<double> off2(d > 1 ? d - 1 : 1);
  double lo0 = diag[0], hi0 = diag[0], max_off2 = 1.0;
  for (i64 i = 0; i < d; ++i) {  // Gershgorin bounds of the spectrum
    const double r = (i > 0 ? std::abs(off[i - 1]) : 0.0) + (i + 1 < d ? std::abs(off[i]) : 0.0);
    lo0 = std::min(lo0, diag[i] - r);
    hi0 = std::max(hi0, diag[i] + r);
    if (i + 1 < d) {
      off2[i] = off[i] * off[i];
      max_off2 = std::max(max_off2, off2[i]);
    }
  }
  const double span = std::max(std::abs(lo0), std::abs(hi0));
  const double pivmin = DBL_MIN * max_off2;  // |pivot| floor of the Sturm recurrence (dstebz)
  lo0 -= 2.0 * DBL_EPSILON * span + pivmin;
  hi0 += 2.0 * DBL_EPSILON * span + pivmin;
  // Sturm count of every lane's shift: the number of negative pivots of T - x I = eigenvalues below x.
  // The count over two single-register vectors of W / 2 shifts each (GCC scalarised the
  // two-register vd16 arithmetic: a compare and a blend per lane)
  auto below_count = [&](const vd16 x) {
    vdh xa, xb;
    for (int l = 0; l < WH; ++l) {
      xa[l] = x[l];
      xb[l] = x[WH + l];
    }
    const vdh npiv = vdh{} - pivmin;
    auto guard = [&](vdh q) {
      const vdh aq = q < 0 ? -q : q;
      return aq < pivmin ? npiv : q;
    };
    vdh qa = guard(diag[0] - xa), qb = guard(diag[0] - xb);
    vmh ba = vmh{} - (qa < 0), bb = vmh{} - (qb < 0);
    for (i64 i = 1; i < d; ++i) {
      const double di = diag[i], oi = off2[i - 1];
      qa = guard((di - xa) - oi / qa);
      qb = guard((di - xb) - oi / qb);
      ba -= (qa < 0);
      bb -= (qb < 0);
    }
    vm16 below;
    for (int l = 0; l < WH; ++l) {
      below[l] = ba[l];
      below[WH + l] = bb[l];
    }
    return below;
  };
  // Each wanted eigenvalue j (the j-th largest: number t = d - 1 - j ascending) has a bracket
  // [lo_j, hi_j]. A sweep evaluates W shifts at once, spread over the open brackets (one bracket
  // shared by several eigenvalues counts once: at the start they all share the Gershgorin one), and
  // every count narrows every open bracket it falls in — a count at x says, for all t at once,
  // whether eigenvalue t lies below x. So the lanes left over by few wanted eigenvalues multisect
  // (k = 1: W + 1 parts a sweep, ~10 sweeps to 1e-12 instead of 40 halvings) and the first sweeps
  // serve all k. A closed bracket is not touched again.
  std::vector<double> lo(k, lo0), hi(k, hi0), blo, bhi;
  auto open = [&](i64 j) {
    const double scale = std::max(std::abs(lo[j]), std::abs(hi[j]));
    return hi[j] - lo[j] > BISECTION_RTOL * scale + 2.0 * pivmin;
  };
  for (int sweep = 0; sweep < 256; ++sweep) {
    blo.clear();
    bhi.clear();
    for (i64 j = 0; j < k; ++j)  // the distinct open brackets, largest eigenvalue first
      if (open(j) && (blo.empty() || blo.back() != lo[j] || bhi.back() != hi[j])) {
        blo.push_back(lo[j]);
        bhi.push_back(hi[j]);
      }
    if (blo.empty()) break;
    const int nb = static_cast<int>(std::min<std::size_t>(blo.size(), W));
    vd16 x;
    for (int b = 0, l = 0; b < nb; ++b) {
      const int lanes = W / nb + (b < W % nb ? 1 : 0);
      for (int i = 0; i < lanes; ++i, ++l)
        x[l] = blo[b] + (bhi[b] - blo[b]) * static_cast<double>(i + 1) / static_cast<double>(lanes + 1);
    }
    const vm16 below = below_count(x);
    bool moved = false;
    for (i64 j = 0; j < k; ++j) {
      if (!open(j)) continue;
      const i64 t = d - 1 - j;
      for (int l = 0; l < W; ++l) {
        if (!(x[l] > lo[j] && x[l] < hi[j])) continue;
        if (below[l] > t) hi[j] = x[l];  // eigenvalue t lies below x
        else lo[j] = x[l];
        moved = true;
      }
    }
    if (!moved) break;  // the shifts no longer split any bracket (round-off)
  }
  for (i64 j = 0; j < k; ++j) out[j] = 0.5 * (lo[j] + hi[j]);
}

// Y[i, :] = C Q[i, :] for the nq (<= 16) rows of Q: one pass over the rows of C serves all nq
// vectors (the block products of the Lanczos eigen-solver, linalg.cpp). Rows of C go four at a
// time, so each load of a vector feeds four multiply-adds (one row at a time the loop was bound
// by loads: at d = 512 the 16 vectors overflow L1); at AVX2 and AVX-512 each pass over four rows
// also serves SYMM_G vectors (rows4_dots). Each output is one dot product summed in an order fixed
// by its row and d, so the result does not depend on nq.
#if BDL_LEVEL == 1 || BDL_LEVEL == 2
// out[g][i] = <r[i], v[g]> for four rows r and G vectors v of length d: per-lane sums over the
// whole vectors, a fixed horizontal sum, then the last d % LD entries in order — the same
// arithmetic for an output whatever G, so symm_rows' results do not depend on nq. The four row
// vectors are pinned in registers (as in gram_steps: GCC folded each row's load into all G
// multiply-adds that used it).
template <int G>
inline void rows4_dots(const double* const* r, const double* const* v, i64 d, double (*out)[4]) {
  vd a[4 * G];
  for (int q = 0; q < 4 * G; ++q) a[q] = vdzero();
  i64 j = 0;
  for (; j + LD <= d; j += LD) {
    vd x0 = vdload(r[0] + j), x1 = vdload(r[1] + j), x2 = vdload(r[2] + j), x3 = vdload(r[3] + j);
    BDL_PIN4(x0, x1, x2, x3);
    for (int g = 0; g < G; ++g) {
      const vd u = vdload(v[g] + j);
      a[4 * g + 0] = vdfma(x0, u, a[4 * g + 0]);
      a[4 * g + 1] = vdfma(x1, u, a[4 * g + 1]);
      a[4 * g + 2] = vdfma(x2, u, a[4 * g + 2]);
      a[4 * g + 3] = vdfma(x3, u, a[4 * g + 3]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 4; ++i) {
      double t = vdsum(a[4 * g + i]);
      for (i64 jj = j; jj < d; ++jj) t += r[i][jj] * v[g][jj];
      out[g][i] = t;
    }
}
#endif

void symm_rows(const double* C, i64 d, const double* Q, int nq, double* Y) {
  i64 i = 0;
  for (; i + 4 <= d; i += 4) {
#if BDL_LEVEL == 1 || BDL_LEVEL == 2
    const double* rows[4] = {C + i * d, C + (i + 1) * d, C + (i + 2) * d, C + (i + 3) * d};
    int q = 0;
    double out[SYMM_G][4];
    for (; q + SYMM_G <= nq; q += SYMM_G) {
      const double* vs[SYMM_G];
      for (int g = 0; g < SYMM_G; ++g) vs[g] = Q + (q + g) * d;
      rows4_dots<SYMM_G>(rows, vs, d, out);
      for (int g = 0; g < SYMM_G; ++g)
        for (int k = 0; k < 4; ++k) Y[(q + g) * d + i + k] = out[g][k];
    }
    for (; q < nq; ++q) {
      const double* vs[1] = {Q + q * d};
      rows4_dots<1>(rows, vs, d, out);
      for (int k = 0; k < 4; ++k) Y[q * d + i + k] = out[0][k];
    }
#else
    for (int q = 0; q < nq; ++q) dot_rows(C + i * d, 4, d, Q + q * d, Y + q * d + i);
#endif
  }
  for (int q = 0; q < nq; ++q) dot_rows(C + i * d, d - i, d, Q + q * d, Y + q * d + i);  // the last d % 4 rows
}

// Four rows at a time: one load of x (dot_rows) or one load and store of x (axpy_rows) serves
// four rows (row by row, x's traffic matched the rows' own; these are the re-orthogonalisation
// and Ritz-vector sums of the Krylov paths).
void dot_rows(const double* A, i64 rows, i64 d, const double* x, double* out) {
  i64 i = 0;
  for (; i + 4 <= rows; i += 4) {
    const double *a0 = A + i * d, *a1 = a0 + d, *a2 = a1 + d, *a3 = a2 + d;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (i64 j = 0; j < d; ++j) {
      const double xj = x[j];
      s0 += a0[j] * xj;
      s1 += a1[j] * xj;
      s2 += a2[j] * xj;
      s3 += a3[j] * xj;
    }
    out[i] = s0;
    out[i + 1] = s1;
    out[i + 2] = s2;
    out[i + 3] = s3;
  }
  for (; i < rows; ++i) {
    const double* a = A + i * d;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (i64 j = 0; j < d; ++j) s += a[j] * x[j];
    out[i] = s;
  }
}

void axpy_rows(const double* A, i64 rows, i64 d, const double* coef, double* x) {
  i64 i = 0;
  for (; i + 4 <= rows; i += 4) {
    const double *a0 = A + i * d, *a1 = a0 + d, *a2 = a1 + d, *a3 = a2 + d;
    const double c0 = coef[i], c1 = coef[i + 1], c2 = coef[i + 2], c3 = coef[i + 3];
#pragma omp simd
    for (i64 j = 0; j < d; ++j) x[j] -= (c0 * a0[j] + c1 * a1[j]) + (c2 * a2[j] + c3 * a3[j]);
  }
  for (; i < rows; ++i) {
    const double* a = A + i * d;
    const double c = coef[i];
#pragma omp simd
    for (i64 j = 0; j < d; ++j) x[j] -= c * a[j];
  }
}

// w = Xr^T (Xr v): one pass over the rows, four at a time: their four dot products with v share
// the loads of v, and one sweep of w adds all four rows (w is loaded and stored once per four
// rows), in float64 (the Lanczos iteration that calls it stops at a residual of 1e-10, which
// float32 sums over 512 features could not reach). The rows stay in L1 between their two uses.
void gram_apply(const float* Xr, i64 m, i64 d, const double* v, double* w) {
  std::fill(w, w + d, 0.0);
  i64 r = 0;
  for (; r + 4 <= m; r += 4) {
    const float *x0 = Xr + r * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
    double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
#pragma omp simd reduction(+ : t0, t1, t2, t3)
    for (i64 a = 0; a < d; ++a) {
      const double va = v[a];
      t0 += static_cast<double>(x0[a]) * va;
      t1 += static_cast<double>(x1[a]) * va;
      t2 += static_cast<double>(x2[a]) * va;
      t3 += static_cast<double>(x3[a]) * va;
    }
#pragma omp simd
    for (i64 a = 0; a < d; ++a)
      w[a] += t0 * static_cast<double>(x0[a]) + t1 * static_cast<double>(x1[a]) + t2 * static_cast<double>(x2[a]) +
              t3 * static_cast<double>(x3[a]);
  }
  for (; r < m; ++r) {
    const float* x = Xr + r * d;
    double t = 0.0;
#pragma omp simd reduction(+ : t)
    for (i64 a = 0; a < d; ++a) t += static_cast<double>(x[a]) * v[a];
#pragma omp simd
    for (i64 a = 0; a < d; ++a) w[a] += t * static_cast<double>(x[a]);
  }
}

// w = Xr^T (Xr v) with float32 products (Xr m x d row-major, v float32): t_r = <x_r, v> in
// float32, w summed in float32 (wf: d floats of scratch) over chunks of 32 rows and the chunk
// sums in float64. Twice the lanes of gram_apply and no conversions; its result carries float32
// rounding (~1e-7 of |x_r| |v| per row), which the caller's tolerance must allow for.
void gram_apply_f32(const float* Xr, i64 m, i64 d, const float* v, float* wf, double* w) {
  constexpr i64 CHUNK = 32;
  std::fill(w, w + d, 0.0);
  for (i64 r0 = 0; r0 < m; r0 += CHUNK) {
    const i64 r1 = std::min(m, r0 + CHUNK);
    std::fill(wf, wf + d, 0.0f);
    i64 r = r0;
    for (; r + 4 <= r1; r += 4) {
      const float *x0 = Xr + r * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
      float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;
#pragma omp simd reduction(+ : t0, t1, t2, t3)
      for (i64 a = 0; a < d; ++a) {
        const float va = v[a];
        t0 += x0[a] * va;
        t1 += x1[a] * va;
        t2 += x2[a] * va;
        t3 += x3[a] * va;
      }
#pragma omp simd
      for (i64 a = 0; a < d; ++a) wf[a] += t0 * x0[a] + t1 * x1[a] + t2 * x2[a] + t3 * x3[a];
    }
    for (; r < r1; ++r) {
      const float* x = Xr + r * d;
      float t = 0.0f;
#pragma omp simd reduction(+ : t)
      for (i64 a = 0; a < d; ++a) t += x[a] * v[a];
#pragma omp simd
      for (i64 a = 0; a < d; ++a) wf[a] += t * x[a];
    }
#pragma omp simd
    for (i64 a = 0; a < d; ++a) w[a] += wf[a];
  }
}

#ifdef BDL_PIN4
#undef BDL_PIN4
#endif

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
