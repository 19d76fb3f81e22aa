// Activation statistics on the GPU, the twin of csrc/cpu/stats.cpp.
//
// stats_update mirrors the CPU core's two-pass batch reduction: per (group, channel) the batch
// mean first, then the squared deviations from it, then one Chan et al. merge into the running
// float64 moments (held by the caller on the host). To use the whole GPU even with one group
// and few channels, the rows of every group are cut into chunks of kChunkRows (in batch order,
// from a stable counting sort of the labels); each pass computes per-(chunk, channel) partials
// that a second kernel adds in chunk order, so every sum has a fixed order: deterministic.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cuda/common.cuh"

namespace backdoorlab {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kChunkRows = 64;

// Pass 1 partials: sum, max and positives of the chunk's values of channel ch.
__global__ void chunk_sum_kernel(const float* __restrict__ acts, int64_t C, int64_t S,
                                 const int64_t* __restrict__ order,
                                 const int64_t* __restrict__ chunk_begin,
                                 double* __restrict__ p_sum, double* __restrict__ p_max,
                                 int64_t* __restrict__ p_pos) {
  const int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t q = blockIdx.y;
  if (ch >= C) return;
  double s = 0.0, mx = -INFINITY;
  int64_t pos = 0;
  for (int64_t i = chunk_begin[q]; i < chunk_begin[q + 1]; ++i) {
    const float* v = acts + (order[i] * C + ch) * S;
    for (int64_t k = 0; k < S; ++k) {
      const float x = v[k];
      s += x;
      mx = fmax(mx, double(x));
      pos += x > 0.0f ? 1 : 0;
    }
  }
  p_sum[q * C + ch] = s;
  p_max[q * C + ch] = mx;
  p_pos[q * C + ch] = pos;
}

// Batch mean, max and positives per (group, channel) from the chunk partials, in chunk order.
__global__ void group_reduce_kernel(int64_t C, const int64_t* __restrict__ group_chunks,
                                    const int64_t* __restrict__ group_values,
                                    const double* __restrict__ p_sum,
                                    const double* __restrict__ p_max,
                                    const int64_t* __restrict__ p_pos, double* __restrict__ b_mean,
                                    double* __restrict__ b_max, int64_t* __restrict__ b_pos) {
  const int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t g = blockIdx.y;
  if (ch >= C) return;
  double s = 0.0, mx = -INFINITY;
  int64_t pos = 0;
  for (int64_t q = group_chunks[g]; q < group_chunks[g + 1]; ++q) {
    s += p_sum[q * C + ch];
    mx = fmax(mx, p_max[q * C + ch]);
    pos += p_pos[q * C + ch];
  }
  const int64_t nv = group_values[g];
  b_mean[g * C + ch] = nv > 0 ? s / double(nv) : 0.0;
  b_max[g * C + ch] = mx;
  b_pos[g * C + ch] = pos;
}

// Pass 2 partials: squared deviations from the batch mean of the chunk's group.
__global__ void chunk_m2_kernel(const float* __restrict__ acts, int64_t C, int64_t S,
                                const int64_t* __restrict__ order,
                                const int64_t* __restrict__ chunk_begin,
                                const int64_t* __restrict__ chunk_group,
                                const double* __restrict__ b_mean, double* __restrict__ p_m2) {
  const int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t q = blockIdx.y;
  if (ch >= C) return;
  const double mu = b_mean[chunk_group[q] * C + ch];
  double m2 = 0.0;
  for (int64_t i = chunk_begin[q]; i < chunk_begin[q + 1]; ++i) {
    const float* v = acts + (order[i] * C + ch) * S;
    for (int64_t k = 0; k < S; ++k) {
      const double e = double(v[k]) - mu;
      m2 += e * e;
    }
  }
  p_m2[q * C + ch] = m2;
}

// Chan merge of the batch (nb values, b_mean, sum of the m2 partials) into the running state.
__global__ void merge_kernel(int64_t C, const int64_t* __restrict__ group_chunks,
                             const int64_t* __restrict__ group_values,
                             const int64_t* __restrict__ seen_values,
                             const double* __restrict__ p_m2, const double* __restrict__ b_mean,
                             const double* __restrict__ b_max, const int64_t* __restrict__ b_pos,
                             double* __restrict__ mean, double* __restrict__ m2,
                             double* __restrict__ maxv, int64_t* __restrict__ npos) {
  const int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t g = blockIdx.y;
  if (ch >= C || group_values[g] == 0) return;
  double bm2 = 0.0;
  for (int64_t q = group_chunks[g]; q < group_chunks[g + 1]; ++q) bm2 += p_m2[q * C + ch];
  const int64_t i = g * C + ch;
  const double nb = double(group_values[g]), na = double(seen_values[g]);
  const double tot = na + nb;
  const double delta = b_mean[i] - mean[i];
  mean[i] += delta * (nb / tot);
  m2[i] += bm2 + delta * delta * (na * nb / tot);
  if (b_max[i] > maxv[i]) maxv[i] = b_max[i];
  npos[i] += b_pos[i];
}

}  // namespace

void stats_update(const ConstView& acts, const int64_t* group, int64_t G, int64_t* count,
                  int64_t* values, double* mean, double* m2, double* maxv, int64_t* npos) {
  // (N, C, S) as the CPU core takes it: backdoorlab.native folds (N, C) and (N, C, H, W) into it.
  if (acts.shape.size() != 3)
    throw std::invalid_argument(concat("acts must be 3-D, got ", acts.shape.size(), "-D"));
  const int64_t N = acts.shape[0], C = acts.shape[1], S = acts.shape[2];
  if (N <= 0 || C <= 0 || S <= 0 || G <= 0)
    throw std::invalid_argument(concat("stats_update: empty input (N=", N, ", C=", C, ", S=", S, ")"));
  if (G > 65535) throw std::invalid_argument(concat("at most 65535 classes on CUDA, got ", G));
  // Labels first (as the CPU core), then a stable counting sort of the rows by group and the
  // chunk table: chunk q covers positions chunk_begin[q]:chunk_begin[q+1] of `order`, all of
  // one group; group g owns chunks group_chunks[g]:group_chunks[g+1].
  std::vector<int64_t> rows(static_cast<size_t>(G), 0);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t g = group[r];
    if (g < 0 || g >= G)
      throw std::invalid_argument(concat("label ", g, " at row ", r, " is outside [0, ", G, ")"));
    ++rows[size_t(g)];
  }
  std::vector<int64_t> start(size_t(G) + 1, 0);
  for (int64_t g = 0; g < G; ++g) start[g + 1] = start[g] + rows[g];
  std::vector<int64_t> order(static_cast<size_t>(N));
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < N; ++r) order[size_t(next[size_t(group[r])]++)] = r;
  }
  std::vector<int64_t> chunk_begin, chunk_group, group_chunks(size_t(G) + 1, 0), group_values(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    group_chunks[g] = static_cast<int64_t>(chunk_group.size());
    for (int64_t p = start[g]; p < start[g + 1]; p += kChunkRows) {
      chunk_begin.push_back(p);
      chunk_group.push_back(g);
    }
    group_values[g] = rows[g] * S;
  }
  group_chunks[G] = static_cast<int64_t>(chunk_group.size());
  chunk_begin.push_back(N);
  const int64_t n_chunks = static_cast<int64_t>(chunk_group.size());
  if (n_chunks > 65535 * int64_t(1024))
    throw std::invalid_argument(concat("batch too large for one CUDA stats_update (", N,
                                       " rows); feed it in smaller batches"));

  DeviceGuard guard(device_for(acts));
  StagedInput a(acts, "the activations (copied to the device)");
  {
    // Same message as the CPU core: the row of the first non-finite value.
    try {
      check_finite(a.get(), N, C * S, "activations");
    } catch (const std::invalid_argument& e) {
      std::string msg = e.what();
      const auto at = msg.find("(first at row ");
      throw std::invalid_argument("activations contain NaN or Inf (row " +
                                  msg.substr(at + 14, msg.size() - at - 15) + ")");
    }
  }
  const size_t GC = size_t(G) * C, QC = size_t(n_chunks) * C;
  DeviceBuffer<int64_t> d_order(order.size(), "the row order");
  d_order.upload(order.data(), order.size());
  DeviceBuffer<int64_t> d_chunk_begin(chunk_begin.size(), "the chunk table");
  d_chunk_begin.upload(chunk_begin.data(), chunk_begin.size());
  DeviceBuffer<int64_t> d_chunk_group(chunk_group.size(), "the chunk groups");
  d_chunk_group.upload(chunk_group.data(), chunk_group.size());
  DeviceBuffer<int64_t> d_group_chunks(group_chunks.size(), "the group chunk ranges");
  d_group_chunks.upload(group_chunks.data(), group_chunks.size());
  DeviceBuffer<int64_t> d_group_values(group_values.size(), "the batch value counts");
  d_group_values.upload(group_values.data(), group_values.size());
  DeviceBuffer<int64_t> d_seen(size_t(G), "the running value counts");
  d_seen.upload(values, size_t(G));
  DeviceBuffer<double> p_sum(QC, "the chunk sums"), p_max(QC, "the chunk maxima"),
      p_m2(QC, "the chunk squared deviations");
  DeviceBuffer<int64_t> p_pos(QC, "the chunk positive counts");
  DeviceBuffer<double> b_mean(GC, "the batch means"), b_max(GC, "the batch maxima");
  DeviceBuffer<int64_t> b_pos(GC, "the batch positive counts");
  DeviceBuffer<double> s_mean(GC, "the running means"), s_m2(GC, "the running m2"),
      s_max(GC, "the running maxima");
  DeviceBuffer<int64_t> s_pos(GC, "the running positive counts");
  s_mean.upload(mean, GC);
  s_m2.upload(m2, GC);
  s_max.upload(maxv, GC);
  s_pos.upload(npos, GC);

  const unsigned cblocks = blocks_for(C, kThreads, 2147483647);
  // Chunks on grid.y (<= 65535): launch in slices of chunks.
  for (int64_t q0 = 0; q0 < n_chunks; q0 += 65535) {
    const unsigned nq = static_cast<unsigned>(std::min<int64_t>(65535, n_chunks - q0));
    BL_LAUNCH(chunk_sum_kernel, dim3(cblocks, nq), kThreads, 0)(a.get(), C, S, d_order.get(),
                                                      d_chunk_begin.get() + q0, p_sum.get() + q0 * C,
                                                      p_max.get() + q0 * C, p_pos.get() + q0 * C);
    BL_LAUNCH_CHECK("chunk_sum_kernel");
  }
  BL_LAUNCH(group_reduce_kernel, dim3(cblocks, static_cast<unsigned>(G)), kThreads, 0)(
      C, d_group_chunks.get(), d_group_values.get(), p_sum.get(), p_max.get(), p_pos.get(),
      b_mean.get(), b_max.get(), b_pos.get());
  BL_LAUNCH_CHECK("group_reduce_kernel");
  for (int64_t q0 = 0; q0 < n_chunks; q0 += 65535) {
    const unsigned nq = static_cast<unsigned>(std::min<int64_t>(65535, n_chunks - q0));
    BL_LAUNCH(chunk_m2_kernel, dim3(cblocks, nq), kThreads, 0)(a.get(), C, S, d_order.get(),
                                                     d_chunk_begin.get() + q0,
                                                     d_chunk_group.get() + q0, b_mean.get(),
                                                     p_m2.get() + q0 * C);
    BL_LAUNCH_CHECK("chunk_m2_kernel");
  }
  BL_LAUNCH(merge_kernel, dim3(cblocks, static_cast<unsigned>(G)), kThreads, 0)(
      C, d_group_chunks.get(), d_group_values.get(), d_seen.get(), p_m2.get(), b_mean.get(),
      b_max.get(), b_pos.get(), s_mean.get(), s_m2.get(), s_max.get(), s_pos.get());
  BL_LAUNCH_CHECK("merge_kernel");
  // Download into temporaries first: on any error the caller's state stays unchanged.
  std::vector<double> h_mean(GC), h_m2(GC), h_max(GC);
  std::vector<int64_t> h_pos(GC);
  s_mean.download(h_mean.data(), GC);
  s_m2.download(h_m2.data(), GC);
  s_max.download(h_max.data(), GC);
  s_pos.download(h_pos.data(), GC);
  std::copy(h_mean.begin(), h_mean.end(), mean);
  std::copy(h_m2.begin(), h_m2.end(), m2);
  std::copy(h_max.begin(), h_max.end(), maxv);
  std::copy(h_pos.begin(), h_pos.end(), npos);
  for (int64_t g = 0; g < G; ++g) {
    values[g] += group_values[g];
    count[g] += rows[g];
  }
}

}  // namespace cuda
}  // namespace backdoorlab
