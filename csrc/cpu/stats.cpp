// Streaming per-channel activation statistics.
//
// Work is split over channels (each thread owns a contiguous channel range, so every sum is
// made by one thread in row order: results do not depend on the thread count). The batch is
// read twice — batch means first, then squared deviations from them — so the float64 moments
// stay accurate even for activations far from zero; the batch is then merged into the running
// moments with Chan et al.'s formula.
#include "cpu/stats.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/parallel.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace backdoorlab {

void stats_update(const float* acts, std::int64_t N, std::int64_t C, std::int64_t S,
                  const std::int64_t* group, std::int64_t G, std::int64_t* count,
                  std::int64_t* values, double* mean, double* m2, double* maxv,
                  std::int64_t* npos) {
  if (N <= 0 || C <= 0 || S <= 0 || G <= 0)
    throw std::invalid_argument("stats_update: empty input (N=" + std::to_string(N) + ", C=" +
                                std::to_string(C) + ", S=" + std::to_string(S) + ")");
  std::vector<std::int64_t> rows(G, 0);
  for (std::int64_t n = 0; n < N; ++n) {
    const std::int64_t g = group[n];
    if (g < 0 || g >= G)
      throw std::invalid_argument("label " + std::to_string(g) + " at row " + std::to_string(n) +
                                  " is outside [0, " + std::to_string(G) + ")");
    ++rows[g];
  }
  const std::int64_t GC = G * C;
  std::vector<double> bsum(GC, 0.0), bm2(GC, 0.0), bmax(GC, -std::numeric_limits<double>::infinity());
  std::vector<std::int64_t> bpos(GC, 0);
  const std::int64_t row_stride = C * S;
  ErrorSlot errors;

  const int nt = threads_for(C);
#pragma omp parallel num_threads(nt)
  {
    int tid = 0, nth = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    const std::int64_t c0 = C * tid / nth, c1 = C * (tid + 1) / nth;
    std::int64_t first_bad = -1;
    for (std::int64_t n = 0; n < N && first_bad < 0; ++n) {
      const float* row = acts + n * row_stride;
      const std::int64_t base = group[n] * C;
      for (std::int64_t c = c0; c < c1; ++c) {
        const float* v = row + c * S;
        double s = 0.0, mx = bmax[base + c];
        std::int64_t pos = 0;
        bool finite = true;
        for (std::int64_t k = 0; k < S; ++k) {
          const float x = v[k];
          finite &= std::isfinite(x);
          s += x;
          mx = x > mx ? x : mx;
          pos += x > 0.0f;
        }
        if (!finite) {
          first_bad = n;
          break;
        }
        bsum[base + c] += s;
        bmax[base + c] = mx;
        bpos[base + c] += pos;
      }
    }
    if (first_bad >= 0) {
      try {
        throw std::invalid_argument("activations contain NaN or Inf (row " + std::to_string(first_bad) + ")");
      } catch (...) {
        errors.capture(first_bad);
      }
    }
#pragma omp barrier
    if (!errors.failed()) {
      // second pass: squared deviations from the batch means of each (group, channel)
      for (std::int64_t n = 0; n < N; ++n) {
        const float* row = acts + n * row_stride;
        const std::int64_t g = group[n], base = g * C;
        const double inv = 1.0 / static_cast<double>(rows[g] * S);
        for (std::int64_t c = c0; c < c1; ++c) {
          const float* v = row + c * S;
          const double mu = bsum[base + c] * inv;
          double q = 0.0;
          for (std::int64_t k = 0; k < S; ++k) {
            const double dlt = static_cast<double>(v[k]) - mu;
            q += dlt * dlt;
          }
          bm2[base + c] += q;
        }
      }
    }
  }
  errors.rethrow();

  // Chan et al.: merge (na, mean_a, m2_a) with the batch (nb, mean_b, m2_b).
  for (std::int64_t g = 0; g < G; ++g) {
    if (rows[g] == 0) continue;
    const double nb = static_cast<double>(rows[g] * S), na = static_cast<double>(values[g]);
    const double tot = na + nb;
    for (std::int64_t c = 0; c < C; ++c) {
      const std::int64_t i = g * C + c;
      const double mb = bsum[i] / nb;
      const double delta = mb - mean[i];
      mean[i] += delta * (nb / tot);
      m2[i] += bm2[i] + delta * delta * (na * nb / tot);
      if (bmax[i] > maxv[i]) maxv[i] = bmax[i];
      npos[i] += bpos[i];
    }
    values[g] += rows[g] * S;
    count[g] += rows[g];
  }
}

}  // namespace backdoorlab
