// The hot loops of k-means (cluster.cpp), compiled once per SIMD level (cpu/simd.hpp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/simd/level.hpp"
#include "cpu/simd/kernels.hpp"

namespace backdoorlab {
namespace BDL_LEVEL_NS {

// out[s] = |X[s] - c|^2 for every row (XT: the class transposed, d x m; rows are vector lanes),
// summed over the features in order in float64 — the very arithmetic of a per-row loop, so the
// k-means++ seeding that reads it is unchanged bit for bit. The lanes' sums stay in registers
// over the features (a blocked pass over the rows), not in memory once per feature.
namespace {

constexpr i64 SQDIST_BLOCK = 4 * BDL_F32_LANES;  // rows per block: a few vector registers of doubles

// sqdist_rows for the nb <= SQDIST_BLOCK rows from s0. Count is i64 for the last, partial block and
// std::integral_constant<i64, SQDIST_BLOCK> for full ones: a constant trip count keeps acc in
// registers (with a run-time one GCC zeroed it in memory and stored it every feature).
template <class Count>
inline void sqdist_block(const float* XT, i64 m, i64 d, const double* c, i64 s0, Count nb, double* out) {
  double acc[SQDIST_BLOCK] = {};
  for (i64 a = 0; a < d; ++a) {
    const double ca = c[a];
    const float* x = XT + a * m + s0;
#pragma omp simd
    for (i64 l = 0; l < nb; ++l) {
      const double t = x[l] - ca;
      acc[l] += t * t;
    }
  }
#pragma omp simd
  for (i64 l = 0; l < nb; ++l) out[s0 + l] = acc[l];
}

// The same for two centres in one pass over the rows (each x loaded and widened once for both):
// every output is summed exactly as sqdist_block sums it. Half the rows per block, so the two
// centres' sums still fit the vector registers of every level.
constexpr i64 SQDIST2_BLOCK = 2 * BDL_F32_LANES;

template <class Count>
inline void sqdist2_block(const float* XT, i64 m, i64 d, const double* c0, const double* c1, i64 s0, Count nb,
                          double* out0, double* out1) {
  double acc0[SQDIST2_BLOCK] = {}, acc1[SQDIST2_BLOCK] = {};
  for (i64 a = 0; a < d; ++a) {
    const double ca = c0[a], cb = c1[a];
    const float* x = XT + a * m + s0;
#pragma omp simd
    for (i64 l = 0; l < nb; ++l) {
      const double t = x[l] - ca;
      acc0[l] += t * t;
      const double u = x[l] - cb;
      acc1[l] += u * u;
    }
  }
#pragma omp simd
  for (i64 l = 0; l < nb; ++l) {
    out0[s0 + l] = acc0[l];
    out1[s0 + l] = acc1[l];
  }
}

}  // namespace

void sqdist_rows(const float* XT, i64 m, i64 d, const double* c, double* out) {
  i64 s0 = 0;
  for (; s0 + SQDIST_BLOCK <= m; s0 += SQDIST_BLOCK)
    sqdist_block(XT, m, d, c, s0, std::integral_constant<i64, SQDIST_BLOCK>{}, out);
  if (s0 < m) sqdist_block(XT, m, d, c, s0, m - s0, out);
}

void sqdist_rows2(const float* XT, i64 m, i64 d, const double* c0, const double* c1, double* out0, double* out1) {
  i64 s0 = 0;
  for (; s0 + SQDIST2_BLOCK <= m; s0 += SQDIST2_BLOCK)
    sqdist2_block(XT, m, d, c0, c1, s0, std::integral_constant<i64, SQDIST2_BLOCK>{}, out0, out1);
  if (s0 < m) sqdist2_block(XT, m, d, c0, c1, s0, m - s0, out0, out1);
}

// Nearest centre of every row (ties: lowest index); returns the inertia; dist gets each row's
// squared distance to its centre (sqdist_rows: features summed in order, float64). dj: m
// doubles of scratch. The inertia is summed in four interleaved partial sums (fixed order: the
// same on every run and thread count; a single running sum was a serial chain of m additions).
double assign(const float* XT, i64 m, i64 d, const double* C, int k, std::int32_t* labels, double* dist, double* dj) {
  std::fill(labels, labels + m, 0);
  if (k == 1) sqdist_rows(XT, m, d, C, dist);
  for (int j = 1; j < k; ++j) {
    if (j == 1)  // the first two centres in one pass
      sqdist_rows2(XT, m, d, C, C + d, dist, dj);
    else
      sqdist_rows(XT, m, d, C + j * d, dj);
#pragma omp simd
    for (i64 s = 0; s < m; ++s) {
      const bool closer = dj[s] < dist[s];
      dist[s] = closer ? dj[s] : dist[s];
      labels[s] = closer ? j : labels[s];
    }
  }
  double part[4] = {0.0, 0.0, 0.0, 0.0};
  i64 s = 0;
  for (; s + 4 <= m; s += 4)
    for (int q = 0; q < 4; ++q) part[q] += dist[s + q];
  for (; s < m; ++s) part[s % 4] += dist[s];
  return (part[0] + part[1]) + (part[2] + part[3]);
}

namespace {

// t[i] = sum over the rows s of x[i][s] * w[s] for the four rows x of XT, accumulated in Acc per
// lane (four independent accumulators: one alone is a chain of dependent additions) over chunks
// of 32 rows per lane, the chunks' lanes added in float64 (the Gram kernel's scheme: a float32
// sum stays short whatever the class size).
template <class Acc, int NW>
void masked_row_sums(const float* const* x, const float* const* w, i64 m, double (*t)[4]) {
  constexpr int LN = BDL_F32_LANES;
  constexpr i64 CHUNK = 32 * LN;
  for (int c = 0; c < NW; ++c)
    for (int i = 0; i < 4; ++i) t[c][i] = 0.0;
  for (i64 s0 = 0; s0 < m; s0 += CHUNK) {
    const i64 s1 = std::min(m, s0 + CHUNK);
    Acc acc[NW][4][LN] = {};
    i64 s = s0;
    for (; s + LN <= s1; s += LN) {
#pragma omp simd
      for (int l = 0; l < LN; ++l)
        for (int c = 0; c < NW; ++c) {
          const float wl = w[c][s + l];
          for (int i = 0; i < 4; ++i) acc[c][i][l] += static_cast<Acc>(x[i][s + l] * wl);
        }
    }
    for (; s < s1; ++s)
      for (int c = 0; c < NW; ++c)
        for (int i = 0; i < 4; ++i) acc[c][i][0] += static_cast<Acc>(x[i][s] * w[c][s]);
    for (int c = 0; c < NW; ++c)
      for (int i = 0; i < 4; ++i) {
        double r = 0.0;
        for (int l = 0; l < LN; ++l) r += acc[c][i][l];
        t[c][i] += r;
      }
  }
}

}  // namespace

// sums[j, :] = the sum of the rows labelled j and counts[j] their number. XT is the class
// transposed (d x m), w 2m floats of scratch: per cluster, w holds its 0/1 membership and each
// entry is the product sum of one row of XT with w over the rows as vector lanes (x * w is exact),
// four features at a time, in float32 lanes — scikit-learn sums float32 data in float32 — and
// again in float64 for the features where that overflowed (rows near FLT_MAX). Why not the
// row-by-row update (sums[labels[s]] += X[s], baseline-compiled before): it waits on its own
// stores whenever consecutive rows share a cluster, and with AC's 10 features a row is barely one
// vector. A select instead of the 0/1 product did not vectorise (GCC 12: a conditional float64
// reduction ran scalar, 3x slower than the baseline).
void cluster_sums(const float* XT, i64 m, i64 d, const std::int32_t* labels, int k, double* sums, i64* counts,
                  float* w) {
  // clusters two at a time: one pass over the rows serves both (their sums do not interact)
  for (int j0 = 0; j0 < k; j0 += 2) {
    const int nj = std::min(2, k - j0);
    float* const wj[2] = {w, w + m};
    i64 n0 = 0, n1 = 0;
#pragma omp simd reduction(+ : n0, n1)
    for (i64 s = 0; s < m; ++s) {
      const bool in0 = labels[s] == j0, in1 = labels[s] == j0 + 1;
      wj[0][s] = in0 ? 1.0f : 0.0f;
      wj[1][s] = in1 ? 1.0f : 0.0f;
      n0 += in0;
      n1 += in1;
    }
    counts[j0] = n0;
    if (nj == 2) counts[j0 + 1] = n1;
    for (i64 a0 = 0; a0 < d; a0 += 4) {
      const int na = static_cast<int>(std::min<i64>(4, d - a0));
      const float* x[4];
      for (int i = 0; i < 4; ++i) x[i] = XT + (a0 + std::min(i, na - 1)) * m;  // spare slots repeat the last row
      double t[2][4];
      if (nj == 2)
        masked_row_sums<float, 2>(x, wj, m, t);
      else
        masked_row_sums<float, 1>(x, wj, m, t);
      for (int c = 0; c < nj; ++c) {
        bool finite = true;
        for (int i = 0; i < na; ++i) finite = finite && std::isfinite(t[c][i]);
        if (!finite) masked_row_sums<double, 1>(x, wj + c, m, t + c);
        for (int i = 0; i < na; ++i) sums[(j0 + c) * d + a0 + i] = t[c][i];
      }
    }
  }
}

}  // namespace BDL_LEVEL_NS
}  // namespace backdoorlab
