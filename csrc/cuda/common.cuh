// Shared device-side machinery of the CUDA core: error checks, RAII device buffers, input
// staging (host -> device copy or in-place use of device memory), validation helpers that run
// before any compute launch, a counter-based RNG, deterministic block reductions and a
// shared-memory Jacobi eigensolver for the small symmetric problems (p <= kMaxComponents).
#pragma once

#ifdef BL_CUDA_EMULATION
#include "cuda/emu/cuda_emu.hpp"  // CPU emulation for checking kernels without a GPU
#else
#include <cuda_runtime.h>
// Kernel launch and dynamic shared memory through macros, so csrc/cuda/emu can run the same
// sources on the CPU.
#define BL_LAUNCH(kernel, grid, block, smem) kernel<<<(grid), (block), (smem)>>>
#define BL_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/rng.hpp"
#include "cuda/api.hpp"

namespace backdoorlab {
namespace cuda {

// ---- errors --------------------------------------------------------------------------------
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

#define BL_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    cudaError_t bl_err_ = (expr);                                                        \
    if (bl_err_ != cudaSuccess) ::backdoorlab::cuda::throw_cuda_error(bl_err_, #expr,    \
                                                                     __FILE__, __LINE__); \
  } while (0)

// After every launch: catches bad configurations at once; execution errors surface at the next
// synchronising call, which is checked too.
#define BL_LAUNCH_CHECK(name) BL_CUDA_CHECK(cudaPeekAtLastError())

std::string format_bytes(size_t bytes);

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// ---- device selection ----------------------------------------------------------------------
// Throws std::runtime_error with the reason when no usable device exists.
void require_device(int device);

// Sets the current device for the lifetime of the guard, restoring the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// ---- memory --------------------------------------------------------------------------------
// Owning device allocation; `what` names it in the out-of-memory message.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t count, const char* what) { allocate(count, what); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) {
    o.ptr_ = nullptr;
    o.count_ = 0;
  }

  void allocate(size_t count, const char* what);
  void release() noexcept {
    if (ptr_ != nullptr) cudaFree(ptr_);  // never throws from a destructor
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  void zero() const {
    if (count_ > 0) BL_CUDA_CHECK(cudaMemset(ptr_, 0, count_ * sizeof(T)));
  }
  void upload(const T* host, size_t count) const {
    if (count > 0) BL_CUDA_CHECK(cudaMemcpy(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(T* host, size_t count) const {
    if (count > 0) BL_CUDA_CHECK(cudaMemcpy(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost));
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

void* device_malloc(size_t bytes, const char* what);  // throws OutOfMemory naming the size

template <typename T>
void DeviceBuffer<T>::allocate(size_t count, const char* what) {
  release();
  if (count == 0) return;
  ptr_ = static_cast<T*>(device_malloc(count * sizeof(T), what));
  count_ = count;
}

// A float32 input on the current device: borrowed when it already lives there, else copied.
class StagedInput {
 public:
  StagedInput(const ConstView& view, const char* what);
  const float* get() const { return ptr_; }

 private:
  DeviceBuffer<float> copy_;
  const float* ptr_ = nullptr;
};

// The device an input asks for: its own when on a device, else the current one.
int device_for(const ConstView& view);

// The current device, or 0 when it cannot be read (for inputs that live on the host only).
int current_device();

// What every batched kernel does first, in this order: select X's device (its own, else the
// current one), put X there (borrowed or copied), check it finite, upload the class offsets.
// The caller has checked X's shape and the offsets on the host before (no device work yet).
class StagedBatch {
 public:
  StagedBatch(const ConstView& X, const int64_t* offsets, int64_t n_classes);
  const float* x() const { return x_.get(); }
  const int64_t* offsets() const { return off_.get(); }

  const int64_t n, d;  // rows and features of X

 private:
  DeviceGuard guard_;  // declared first: the members below are made on its device
  StagedInput x_;
  DeviceBuffer<int64_t> off_;
};

// ---- validation (host, before any compute launch) -------------------------------------------
void check_matrix(const ConstView& X, const char* name);  // rank 2, n >= 1, d >= 1
// offsets: n_classes + 1 values, offsets[0] == 0, non-decreasing, offsets[n_classes] == n and
// every non-empty class holds at least min_rows rows ("fewer than <what>=<min_rows>").
void check_offsets(const int64_t* offsets, int64_t n_classes, int64_t n, int64_t min_rows,
                   const char* what);
// Runs a device reduction; throws std::invalid_argument naming the first non-finite element.
void check_finite(const float* device_data, int64_t rows, int64_t cols, const char* name);

// ---- device helpers ------------------------------------------------------------------------
// Class of a global row: the c with offsets[c] <= row < offsets[c + 1] (binary search).
__device__ __forceinline__ int64_t class_of_row(const int64_t* offsets, int64_t n_classes,
                                                int64_t row) {
  int64_t lo = 0, hi = n_classes - 1;
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) >> 1;
    if (offsets[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// A counter-based hash (the splitmix64 finaliser) for the draws that need no CPU twin (start
// bases of the subspace iteration): every (key, counter) is independent of launch order. Draws
// that must match the CPU core use backdoorlab::Rng from common/rng.hpp instead.
__host__ __device__ __forceinline__ uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
__host__ __device__ __forceinline__ uint64_t stream_key(uint64_t seed, uint64_t a, uint64_t b) {
  return mix64(mix64(mix64(seed) ^ a) ^ (b * 0xD1B54A32D192ED03ull));
}
// Uniform in [0, 1) with 53 random bits.
__host__ __device__ __forceinline__ double uniform01(uint64_t key, uint64_t counter) {
  return (mix64(key ^ mix64(counter)) >> 11) * (1.0 / 9007199254740992.0);
}
// Standard normal (Box-Muller on two uniforms of the same counter).
__host__ __device__ __forceinline__ double normal01(uint64_t key, uint64_t counter) {
  double u1 = uniform01(key, 2 * counter);
  double u2 = uniform01(key, 2 * counter + 1);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925286766559 * u2);
}

constexpr int kWarp = 32;

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // valid in lane 0
}

// Deterministic block sum (fixed tree for a fixed blockDim). `scratch` holds >= 32 doubles.
// Every thread must call it; the result is returned to every thread.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double w = lane < n_warps ? scratch[lane] : 0.0;
    w = warp_sum(w);
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  return scratch[0];
}

__device__ __forceinline__ double block_max(double v, double* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = (blockDim.x + kWarp - 1) / kWarp;
  for (int off = kWarp / 2; off > 0; off >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, off));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double w = lane < n_warps ? scratch[lane] : -INFINITY;
    for (int off = kWarp / 2; off > 0; off >>= 1) w = fmax(w, __shfl_down_sync(0xffffffffu, w, off));
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  return scratch[0];
}

// Shared memory (doubles) block_jacobi_eigh needs beyond A and V: rotation pairs and flags.
__host__ __device__ constexpr int jacobi_scratch_doubles(int m) { return 4 * ((m + 2) / 2) + 40; }

// Eigen-decomposition of a symmetric m x m matrix A (shared memory, row-major, m <= 48) by the
// parallel cyclic Jacobi method (round-robin ordering: m/2 disjoint rotations per step, all
// applied at once; rotations on disjoint index pairs commute, so each step is an exact
// similarity transform). On return A's diagonal holds the eigenvalues and V's columns the
// eigenvectors, sorted by descending eigenvalue (stable). `scratch` holds
// jacobi_scratch_doubles(m) doubles. Every thread of the block must call it.
__device__ inline void block_jacobi_eigh(double* A, double* V, int m, double* scratch) {
  const int mm = m + (m & 1);  // even number of players; index m is a dummy when m is odd
  const int half = mm / 2;
  double* cs_c = scratch;
  double* cs_s = scratch + half;
  int* pair_p = reinterpret_cast<int*>(scratch + 2 * half);
  int* pair_q = pair_p + half;  // 2 * half ints fit in half doubles
  double* red = scratch + 4 * ((m + 2) / 2);  // 40 doubles for reductions and flags

  for (int t = threadIdx.x; t < m * m; t += blockDim.x) V[t] = (t / m == t % m) ? 1.0 : 0.0;
  __syncthreads();
  if (m == 1) return;

  for (int sweep = 0; sweep < 40; ++sweep) {
    // Convergence: off-diagonal mass relative to the whole matrix.
    double off = 0.0, all = 0.0;
    for (int t = threadIdx.x; t < m * m; t += blockDim.x) {
      double v = A[t] * A[t];
      all += v;
      if (t / m != t % m) off += v;
    }
    off = block_sum(off, red);
    all = block_sum(all, red);
    // Relative off-diagonal norm 1e-13: reachable in double (rounding leaves ~eps per entry).
    if (off <= 1e-26 * all || all == 0.0) break;

    for (int round = 0; round < mm - 1; ++round) {
      for (int t = threadIdx.x; t < half; t += blockDim.x) {
        int a, b;
        if (t == 0) {
          a = round;
          b = mm - 1;
        } else {
          a = (round + t) % (mm - 1);
          b = (round - t + (mm - 1)) % (mm - 1);
        }
        int p = a < b ? a : b, q = a < b ? b : a;
        double c = 1.0, s = 0.0;
        if (q < m) {
          double apq = A[p * m + q];
          if (apq != 0.0) {
            double theta = (A[q * m + q] - A[p * m + p]) / (2.0 * apq);
            double tn = fabs(theta) > 1e150 ? 0.5 / theta
                                            : copysign(1.0, theta) / (fabs(theta) + sqrt(theta * theta + 1.0));
            c = 1.0 / sqrt(tn * tn + 1.0);
            s = tn * c;
          }
        } else {
          p = q = -1;  // the dummy player sits out this round
        }
        pair_p[t] = p;
        pair_q[t] = q;
        cs_c[t] = c;
        cs_s[t] = s;
      }
      __syncthreads();
      // Rows: A <- J^T A.
      for (int w = threadIdx.x; w < half * m; w += blockDim.x) {
        int t = w / m, j = w % m;
        int p = pair_p[t], q = pair_q[t];
        if (p < 0 || cs_s[t] == 0.0) continue;
        double c = cs_c[t], s = cs_s[t];
        double ap = A[p * m + j], aq = A[q * m + j];
        A[p * m + j] = c * ap - s * aq;
        A[q * m + j] = s * ap + c * aq;
      }
      __syncthreads();
      // Columns: A <- A J and V <- V J.
      for (int w = threadIdx.x; w < half * m; w += blockDim.x) {
        int t = w / m, i = w % m;
        int p = pair_p[t], q = pair_q[t];
        if (p < 0 || cs_s[t] == 0.0) continue;
        double c = cs_c[t], s = cs_s[t];
        double ap = A[i * m + p], aq = A[i * m + q];
        A[i * m + p] = c * ap - s * aq;
        A[i * m + q] = s * ap + c * aq;
        double vp = V[i * m + p], vq = V[i * m + q];
        V[i * m + p] = c * vp - s * vq;
        V[i * m + q] = s * vp + c * vq;
      }
      __syncthreads();
    }
  }
  // Stable selection sort by descending eigenvalue (m <= 48: cheap on one thread).
  if (threadIdx.x == 0) {
    for (int i = 0; i < m; ++i) {
      int best = i;
      for (int j = i + 1; j < m; ++j)
        if (A[j * m + j] > A[best * m + best]) best = j;
      if (best != i) {
        // Rotate i..best right by one so equal eigenvalues keep their order.
        double lam = A[best * m + best];
        for (int j = best; j > i; --j) A[j * m + j] = A[(j - 1) * m + (j - 1)];
        A[i * m + i] = lam;
        for (int r = 0; r < m; ++r) {
          double v = V[r * m + best];
          for (int j = best; j > i; --j) V[r * m + j] = V[r * m + j - 1];
          V[r * m + i] = v;
        }
      }
    }
  }
  __syncthreads();
}

// Makes the entry of largest magnitude in each of the first k columns of V (rows x >=k,
// row-major, leading dimension ld) positive, as scikit-learn's svd_flip does for components.
// Every thread of the block must call it.
__device__ inline void block_flip_signs(double* V, int rows, int k, int ld) {
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    int best = 0;
    double best_abs = -1.0;
    for (int i = 0; i < rows; ++i) {
      double a = fabs(V[(int64_t)i * ld + j]);
      if (a > best_abs) {
        best_abs = a;
        best = i;
      }
    }
    if (V[(int64_t)best * ld + j] < 0.0)
      for (int i = 0; i < rows; ++i) V[(int64_t)i * ld + j] = -V[(int64_t)i * ld + j];
  }
  __syncthreads();
}

// Grid-size helper: blocks of `threads` to cover `work` items, capped to keep grids sane.
inline unsigned int blocks_for(int64_t work, int threads, int64_t cap = 1 << 20) {
  int64_t b = (work + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned int>(b);
}

// Dynamic shared memory above 48 KiB must be opted into per kernel; checks the device limit.
void set_dynamic_smem(const void* kernel, size_t bytes, const char* kernel_name);

}  // namespace cuda
}  // namespace backdoorlab
