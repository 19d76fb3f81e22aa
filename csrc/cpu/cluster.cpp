// Per-class k-means and silhouettes: the clustering step of Activation Clustering.
//
// k-means follows scikit-learn's KMeans(algorithm="lloyd") so results are comparable: greedy
// k-means++ (2 + floor(ln k) candidates per centre, the one lowering the potential most wins),
// Lloyd steps that assign with the old centres and average into new ones, strict convergence when
// labels repeat, else stop when the squared centre shift is <= tol * mean feature variance, a final
// assignment when not strictly converged, empty clusters re-seeded with the rows farthest from
// their centres; best of n_init runs by inertia (ties: lowest run). Work is spread over
// (class, run) pairs, each with its own random stream (seed, class, run) and its own buffers, so
// results do not depend on the thread count. Distances are accumulated in float64.
#include "cpu/cluster.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/rng.hpp"
#include "cpu/decompose.hpp"
#include "cpu/linalg.hpp"
#include "cpu/parallel.hpp"
#include "cpu/simd.hpp"

namespace backdoorlab {

namespace {

struct RunResult {
  std::vector<std::int32_t> labels;
  std::vector<double> centers;
  double inertia = std::numeric_limits<double>::infinity();
  int n_iter = 0;
};

// Squared distances run through K.sqdist_rows (rows as vector lanes, features summed in order in
// float64: the same values as a per-row loop); the potentials are summed row by row in order.
void kmeans_plusplus(const SimdKernels& K, const float* X, const float* XT, i64 m, i64 d, int k, Rng& rng,
                     double* C) {
  const int n_trials = 2 + static_cast<int>(std::log(static_cast<double>(k)));
  std::vector<double> closest(m), cand_dist(m), cand_next(m), best_dist(m), cumsum(m), cen(2 * d);
  std::vector<i64> cand_id(n_trials);
  i64 first = static_cast<i64>(rng.uniform() * static_cast<double>(m));
  first = std::min(first, m - 1);
  for (i64 a = 0; a < d; ++a) C[a] = X[first * d + a];
  K.sqdist_rows(XT, m, d, C, closest.data());
  double pot = 0.0;
  for (i64 s = 0; s < m; ++s) pot += closest[s];
  for (int c = 1; c < k; ++c) {
    double acc = 0.0;
    for (i64 s = 0; s < m; ++s) cumsum[s] = (acc += closest[s]);
    double best_pot = std::numeric_limits<double>::infinity();
    i64 best_id = 0;
    // The candidates are drawn first (the same draws in the same order: nothing else uses rng
    // between them), so their distances can come two per pass over the rows.
    for (int t = 0; t < n_trials; ++t) {
      const double r = rng.uniform() * pot;
      i64 id = std::lower_bound(cumsum.begin(), cumsum.end(), r) - cumsum.begin();
      cand_id[t] = std::min(id, m - 1);
    }
    for (int t = 0; t < n_trials; ++t) {
      if (t % 2 == 0) {
        for (int q = 0; q < 2 && t + q < n_trials; ++q)
          std::copy(X + cand_id[t + q] * d, X + (cand_id[t + q] + 1) * d, cen.begin() + q * d);
        if (t + 1 < n_trials)
          K.sqdist_rows2(XT, m, d, cen.data(), cen.data() + d, cand_dist.data(), cand_next.data());
        else
          K.sqdist_rows(XT, m, d, cen.data(), cand_dist.data());
      } else {
        cand_dist.swap(cand_next);
      }
      double cand_pot = 0.0;
      for (i64 s = 0; s < m; ++s) {
        const double dd = std::min(closest[s], cand_dist[s]);
        cand_dist[s] = dd;
        cand_pot += dd;
      }
      if (cand_pot < best_pot) {
        best_pot = cand_pot;
        best_id = cand_id[t];
        best_dist.swap(cand_dist);
      }
    }
    pot = best_pot;
    closest.swap(best_dist);
    for (i64 a = 0; a < d; ++a) C[c * d + a] = X[best_id * d + a];
  }
}

// One k-means run on a class: X its rows (m x d), XT the same rows transposed (d x m).
RunResult lloyd(const SimdKernels& K, const float* X, const float* XT, i64 m, i64 d, int k, int max_iter, double tol_scaled, Rng rng) {
  RunResult res;
  res.centers.assign(static_cast<i64>(k) * d, 0.0);
  kmeans_plusplus(K, X, XT, m, d, k, rng, res.centers.data());
  std::vector<double> newc(static_cast<i64>(k) * d), dist(m), scratch(m);
  std::vector<float> member(2 * m);  // cluster_sums' scratch
  std::vector<i64> count(k);
  std::vector<std::int32_t> labels(m, -1), old(m, -1);
  int it = 0;
  for (; it < max_iter;) {
    K.assign(XT, m, d, res.centers.data(), k, labels.data(), dist.data(), scratch.data());
    K.cluster_sums(XT, m, d, labels.data(), k, newc.data(), count.data(), member.data());
    // empty clusters take the rows farthest from their current centre (farthest first)
    int n_empty = 0;
    for (int j = 0; j < k; ++j) n_empty += count[j] == 0;
    if (n_empty > 0) {
      std::vector<i64> far(m);
      std::iota(far.begin(), far.end(), i64{0});
      std::stable_sort(far.begin(), far.end(), [&](i64 a, i64 b) { return dist[a] > dist[b]; });
      i64 next = 0;
      for (int j = 0; j < k; ++j) {
        if (count[j] != 0) continue;
        const i64 s = far[next++];
        const int old_j = labels[s];
        if (count[old_j] <= 1) continue;  // never empty another cluster
        --count[old_j];
        for (i64 a = 0; a < d; ++a) {
          newc[old_j * d + a] -= X[s * d + a];
          newc[j * d + a] = X[s * d + a];
        }
        count[j] = 1;
        labels[s] = j;
      }
    }
    double shift = 0.0;
    for (int j = 0; j < k; ++j) {
      if (count[j] == 0) {  // could not be refilled: keep the old centre
        for (i64 a = 0; a < d; ++a) newc[j * d + a] = res.centers[j * d + a];
        continue;
      }
      const double inv = 1.0 / static_cast<double>(count[j]);
      for (i64 a = 0; a < d; ++a) {
        newc[j * d + a] *= inv;
        const double t = newc[j * d + a] - res.centers[j * d + a];
        shift += t * t;
      }
    }
    res.centers.swap(newc);
    ++it;
    if (labels == old) break;  // strict convergence
    if (shift <= tol_scaled) break;
    old = labels;
  }
  // final assignment with the final centres (scikit-learn does it when not strictly converged;
  // after strict convergence it changes nothing, and it gives the inertia either way)
  res.inertia = K.assign(XT, m, d, res.centers.data(), k, labels.data(), dist.data(), scratch.data());
  res.labels.swap(labels);
  res.n_iter = it;
  return res;
}

}  // namespace

void kmeans(const float* X, i64 n, i64 d, const i64* offsets, i64 G, int k, int n_init, int max_iter, double tol,
            std::uint64_t seed, std::int32_t* labels, float* centers, double* inertia, std::int32_t* n_iter) {
  check_offsets(offsets, G, n);
  if (k < 1) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
  if (n_init < 1) throw std::invalid_argument("n_init must be >= 1, got " + std::to_string(n_init));
  if (max_iter < 1) throw std::invalid_argument("max_iter must be >= 1, got " + std::to_string(max_iter));
  std::vector<i64> tasks;  // class * n_init + run, non-empty classes only
  for (i64 c = 0; c < G; ++c) {
    const i64 m = offsets[c + 1] - offsets[c];
    inertia[c] = std::numeric_limits<double>::quiet_NaN();
    n_iter[c] = 0;
    std::fill(centers + c * k * d, centers + (c + 1) * k * d, std::numeric_limits<float>::quiet_NaN());
    if (m == 0) continue;
    if (m < k)
      throw std::invalid_argument("class " + std::to_string(c) + " has " + std::to_string(m) + " rows, fewer than k=" +
                                  std::to_string(k));
    for (int r = 0; r < n_init; ++r) tasks.push_back(c * n_init + r);
  }
  // per class: finiteness, the scaled tolerance (tol * mean feature variance) and the rows
  // transposed for K.assign(), once for all n_init runs (class c's block starts at r0 * d)
  std::vector<double> tol_scaled(G, 0.0);
  std::vector<float> XT(n * d);
  for_each_class(offsets, G, [&](i64 c, bool) {
    const i64 r0 = offsets[c], m = offsets[c + 1] - r0;
    transpose_centred(X + r0 * d, m, d, nullptr, 1.0, XT.data() + r0 * d, d);  // distances run in float64: no scaling needed
    std::vector<double> mean(d);
    column_mean(X + r0 * d, m, d, mean.data(), r0, c);
    double var = 0.0;
    for (i64 s = 0; s < m; ++s)
      for (i64 a = 0; a < d; ++a) {
        const double t = X[(r0 + s) * d + a] - mean[a];
        var += t * t;
      }
    tol_scaled[c] = tol * var / static_cast<double>(m * d);
  });
  std::vector<RunResult> results(tasks.size());
  const SimdKernels& K = simd();  // one level for the whole call
  ErrorSlot errors;
  const i64 T = static_cast<i64>(tasks.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_for(T))
  for (i64 t = 0; t < T; ++t) {
    if (errors.failed()) continue;
    try {
      const i64 c = tasks[t] / n_init, r = tasks[t] % n_init;
      const i64 r0 = offsets[c], m = offsets[c + 1] - r0;
      results[t] = lloyd(K, X + r0 * d, XT.data() + r0 * d, m, d, k, max_iter, tol_scaled[c],
                         Rng(seed, static_cast<std::uint64_t>(c), static_cast<std::uint64_t>(r)));
    } catch (...) {
      errors.capture(t);
    }
  }
  errors.rethrow();
  for (i64 t = 0; t < T; t += n_init) {
    const i64 c = tasks[t] / n_init;
    i64 best = t;
    for (i64 u = t + 1; u < t + n_init; ++u)
      if (results[u].inertia < results[best].inertia) best = u;
    const RunResult& b = results[best];
    const i64 r0 = offsets[c];
    std::copy(b.labels.begin(), b.labels.end(), labels + r0);
    for (i64 i = 0; i < static_cast<i64>(k) * d; ++i) centers[c * k * d + i] = static_cast<float>(b.centers[i]);
    inertia[c] = b.inertia;
    n_iter[c] = b.n_iter;
  }
}

void silhouette_samples(const float* X, i64 n, i64 d, const i64* offsets, i64 G, const std::int32_t* labels,
                        float* out) {
  check_offsets(offsets, G, n);
  // Per class: map the labels to 0..L-1 and count the cluster sizes.
  std::vector<std::int32_t> local(n);
  std::vector<i64> cl_start(G + 1, 0);  // offsets of each class's cluster sizes in `sizes`
  std::vector<i64> sizes;
  std::vector<i64> row_class(n);
  for (i64 c = 0; c < G; ++c) {
    const i64 r0 = offsets[c], r1 = offsets[c + 1];
    std::vector<std::int32_t> distinct(labels + r0, labels + r1);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    if (!distinct.empty() && distinct.front() < 0)
      throw std::invalid_argument("labels must be >= 0, got " + std::to_string(distinct.front()) + " in class " +
                                  std::to_string(c));
    cl_start[c + 1] = cl_start[c] + static_cast<i64>(distinct.size());
    for (i64 s = r0; s < r1; ++s) {
      local[s] = static_cast<std::int32_t>(std::lower_bound(distinct.begin(), distinct.end(), labels[s]) - distinct.begin());
      row_class[s] = c;
    }
    sizes.resize(cl_start[c + 1], 0);
    for (i64 s = r0; s < r1; ++s) ++sizes[cl_start[c] + local[s]];
  }
  std::vector<double> mean(d);  // column_mean doubles as the NaN/Inf check, naming row and class
  for (i64 c = 0; c < G; ++c) {
    const i64 r0 = offsets[c], m = offsets[c + 1] - r0;
    if (m > 0) column_mean(X + r0 * d, m, d, mean.data(), r0, c);
  }
  i64 max_clusters = 1;
  for (i64 c = 0; c < G; ++c) max_clusters = std::max(max_clusters, cl_start[c + 1] - cl_start[c]);
  // Nothing inside the region throws (the checks above ran first), so no ErrorSlot is needed.
#pragma omp parallel num_threads(threads_for(n))
  {
    std::vector<double> sums(max_clusters);
#pragma omp for schedule(dynamic, 16)
    for (i64 i = 0; i < n; ++i) {
      const i64 c = row_class[i];
      const i64 r0 = offsets[c], r1 = offsets[c + 1];
      const i64 L = cl_start[c + 1] - cl_start[c];
      const i64* sz = sizes.data() + cl_start[c];
      const int own = local[i];
      if (L < 2 || sz[own] < 2) {
        out[i] = 0.0f;
        continue;
      }
      std::fill(sums.begin(), sums.begin() + L, 0.0);
      const float* xi = X + i * d;
      for (i64 s = r0; s < r1; ++s) {
        const float* xs = X + s * d;
        double q = 0.0;
        for (i64 a = 0; a < d; ++a) {
          const double t = static_cast<double>(xi[a]) - xs[a];
          q += t * t;
        }
        sums[local[s]] += std::sqrt(q);
      }
      const double a_i = sums[own] / static_cast<double>(sz[own] - 1);
      double b_i = std::numeric_limits<double>::infinity();
      for (i64 l = 0; l < L; ++l)
        if (l != own) b_i = std::min(b_i, sums[l] / static_cast<double>(sz[l]));
      const double denom = std::max(a_i, b_i);
      out[i] = denom > 0.0 ? static_cast<float>((b_i - a_i) / denom) : 0.0f;
    }
  }
}

}  // namespace backdoorlab
