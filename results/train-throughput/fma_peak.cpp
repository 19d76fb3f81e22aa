// The float32 multiply-add peak of this CPU, as a yardstick for the training step's convolutions.
//   g++ -O3 -march=native -pthread fma_peak.cpp -o fma_peak && ./fma_peak
// Twelve independent AVX-512 FMA chains per thread (enough to cover the FMA latency on both
// pipes), one thread per core; prints GFLOP/s for 1 and 2 threads (an FMA counts as 2 FLOP).
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

static float fma_chains(long iters) {
  constexpr int kChains = 12;
  __m512 acc[kChains];
  const __m512 mul = _mm512_set1_ps(1.0000001f), add = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], mul, add);
  float sum = 0;  // returned, so the chains are not optimised away
  for (int i = 0; i < kChains; ++i) sum += _mm512_reduce_add_ps(acc[i]);
  return sum;
}

int main() {
  const long iters = 200000000 / 12 * 4;
  for (int threads : {1, 2}) {
    std::vector<float> sums(threads);
    std::vector<std::thread> pool;
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sums[t] = fma_chains(iters); });
    for (auto &t : pool) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%d thread(s): %.1f GFLOP/s (checksum %g)\n", threads, threads * iters * 12.0 * 16 * 2 / s / 1e9, sums[0]);
  }
}
