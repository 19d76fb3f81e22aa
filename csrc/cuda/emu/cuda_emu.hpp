// A CPU emulator of the CUDA subset used by csrc/cuda/*.cu, for checking the kernels where no
// GPU exists (build: csrc/cuda/emu/build_emu.sh). It is a verification aid, not a backend:
// it runs every block of a launch one after another, and the threads of a block as cooperative
// coroutines (ucontext) on one OS thread, so __syncthreads and warp shuffles are real
// rendezvous points.
//
// What it checks that the compiler cannot: barrier and shuffle placement (a thread waiting at
// __syncthreads while a lane of its warp waits in a shuffle, or a barrier some threads never
// reach, is reported as a deadlock), launch configurations (block/grid limits, dynamic shared
// memory above 48 KiB without cudaFuncSetAttribute), reads of uninitialised device or shared
// memory (filled with 0xFF bytes: NaN doubles/floats, -1 integers), and the arithmetic itself.
// What it cannot check: real concurrency between warps (memory races inside a barrier
// interval), the memory model, performance. Device count and memory are set with
// BL_EMU_DEVICES (default 1) and BL_EMU_MEMORY_MB (default 4096). BL_EMU_STATS=1 prints, per
// launch, the block barriers (__syncthreads rounds) per block: a proxy for the latency-bound
// cost of the one-block-per-class kernels on a GPU. BL_EMU_ORDER=reverse|shuffle runs the
// threads of every barrier interval in reverse or a seeded random order instead of by index: a
// result that changes with the order reveals a race between threads inside an interval (a read
// of a location another thread writes before the next barrier).
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // blocks run one at a time: a static is shared by the block

using std::isfinite;

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3
};
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  size_t totalGlobalMem;
};

namespace bl_emu {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kStaticSmemLimit = 48 * 1024;
constexpr size_t kOptinSmem = 227 * 1024;

inline uint3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline cudaError_t last_error = cudaSuccess;
inline size_t allocated = 0;
inline std::map<void*, size_t> allocations;
inline std::map<const void*, size_t> smem_optin;  // kernel -> max dynamic shared memory

inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}
inline int devices() { return env_int("BL_EMU_DEVICES", 1); }
inline size_t memory_limit() { return size_t(env_int("BL_EMU_MEMORY_MB", 4096)) << 20; }

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "bl_emu: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// ---- cooperative threads of one block --------------------------------------------------------
enum State { kRunnable, kWaitBlock, kWaitWarp, kDone };
struct Thread {
  ucontext_t ctx;
  State state = kRunnable;
  uint3 idx;
};
inline ucontext_t scheduler_ctx;
inline std::vector<Thread> threads;
inline std::vector<std::vector<char>> stacks;
inline std::vector<unsigned char> dynamic_smem_buf;
inline std::vector<uint64_t> warp_exchange;  // 32 slots per warp
inline int current = -1;
inline std::function<void()> body;
inline long block_barriers = 0;  // __syncthreads rounds of the block being run

inline void* dynamic_shared() { return dynamic_smem_buf.data(); }

inline void entry() {
  body();
  threads[current].state = kDone;  // returns to scheduler_ctx through uc_link
}

inline void yield(State s) {
  Thread& t = threads[current];
  t.state = s;
  swapcontext(&t.ctx, &scheduler_ctx);
}

inline int linear_tid() { return int(thread_idx.x + thread_idx.y * block_dim.x + thread_idx.z * block_dim.x * block_dim.y); }

inline void run_block(size_t smem_bytes) {
  const int n = int(block_dim.x * block_dim.y * block_dim.z);
  threads.assign(n, Thread{});
  if (stacks.size() < size_t(n)) stacks.resize(n);
  dynamic_smem_buf.assign(smem_bytes + 16, 0xFF);
  const int n_warps = (n + 31) / 32;
  warp_exchange.assign(size_t(n_warps) * 32, 0);
  for (int i = 0; i < n; ++i) {
    Thread& t = threads[i];
    t.idx = uint3{unsigned(i % block_dim.x), unsigned((i / block_dim.x) % block_dim.y),
                  unsigned(i / (block_dim.x * block_dim.y))};
    if (stacks[i].size() < kStackBytes) stacks[i].resize(kStackBytes);
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = stacks[i].data();
    t.ctx.uc_stack.ss_size = kStackBytes;
    t.ctx.uc_link = &scheduler_ctx;
    makecontext(&t.ctx, entry, 0);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  const char* mode = std::getenv("BL_EMU_ORDER");
  const bool reverse = mode && std::string(mode) == "reverse";
  const bool shuffle = mode && std::string(mode) == "shuffle";
  if (reverse) std::reverse(order.begin(), order.end());
  unsigned long long lcg = 0x9E3779B97F4A7C15ull ^ (block_idx.x * 0x100000001B3ull) ^ block_idx.y;
  for (;;) {
    if (shuffle)
      for (int i = n - 1; i > 0; --i) {  // Fisher-Yates with a per-block LCG: reproducible
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        std::swap(order[i], order[int((lcg >> 33) % unsigned(i + 1))]);
      }
    for (int o = 0; o < n; ++o) {
      const int i = order[o];
      if (threads[i].state != kRunnable) continue;
      current = i;
      thread_idx = threads[i].idx;
      swapcontext(&scheduler_ctx, &threads[i].ctx);
    }
    int live = 0, at_block = 0;
    std::vector<int> warp_live(n_warps, 0), warp_wait(n_warps, 0);
    for (int i = 0; i < n; ++i) {
      if (threads[i].state == kDone) continue;
      ++live;
      ++warp_live[i / 32];
      if (threads[i].state == kWaitBlock) ++at_block;
      if (threads[i].state == kWaitWarp) ++warp_wait[i / 32];
    }
    if (live == 0) break;
    bool released = false;
    for (int w = 0; w < n_warps; ++w) {
      if (warp_live[w] > 0 && warp_wait[w] == warp_live[w]) {
        for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i)
          if (threads[i].state == kWaitWarp) threads[i].state = kRunnable;
        released = true;
      }
    }
    if (!released && at_block == live) {
      for (auto& t : threads)
        if (t.state == kWaitBlock) t.state = kRunnable;
      released = true;
      ++block_barriers;
    }
    if (!released) {
      std::string msg = "deadlock in block (" + std::to_string(block_idx.x) + "," +
                        std::to_string(block_idx.y) + "): ";
      for (int i = 0; i < n; ++i)
        if (threads[i].state != kDone)
          msg += "t" + std::to_string(i) + (threads[i].state == kWaitBlock ? "@syncthreads " : "@shfl ");
      fail(msg);
    }
  }
  current = -1;
}

template <typename... P>
struct Launch {
  void (*fn)(P...);
  const char* name;
  dim3 grid, block;
  size_t smem;

  template <typename... A>
  void operator()(A&&... a) {
    const size_t n = size_t(block.x) * block.y * block.z;
    const auto optin = smem_optin.find(reinterpret_cast<const void*>(fn));
    const size_t smem_limit = optin == smem_optin.end() ? kStaticSmemLimit : optin->second;
    if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u ||
        grid.y > 65535 || grid.z > 65535 || smem > smem_limit) {
      std::fprintf(stderr, "bl_emu: bad launch grid (%u,%u,%u) block (%u,%u,%u) smem %zu (limit %zu)\n",
                   grid.x, grid.y, grid.z, block.x, block.y, block.z, smem, smem_limit);
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    std::tuple<P...> args(std::forward<A>(a)...);
    grid_dim = grid;
    block_dim = block;
    body = [&]() { std::apply(fn, args); };
    long total = 0, most = 0, blocks = 0;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          block_idx = uint3{x, y, z};
          block_barriers = 0;
          run_block(smem);
          total += block_barriers;
          most = block_barriers > most ? block_barriers : most;
          ++blocks;
        }
    body = nullptr;
    if (env_int("BL_EMU_STATS", 0))
      std::fprintf(stderr, "bl_emu: %-22s blocks %6ld  barriers/block mean %8.1f max %7ld\n", name,
                   blocks, double(total) / double(blocks), most);
  }
};

template <typename... P>
Launch<P...> launcher(void (*fn)(P...), const char* name, dim3 grid, dim3 block, size_t smem) {
  return Launch<P...>{fn, name, grid, block, smem};
}

template <typename T>
T shuffle(T v, int src_lane_or_minus) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  const int tid = linear_tid(), lane = tid % 32, warp = tid / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  warp_exchange[size_t(warp) * 32 + lane] = bits;
  yield(kWaitWarp);
  T out = v;
  if (src_lane_or_minus >= 0 && src_lane_or_minus < 32) {
    const uint64_t got = warp_exchange[size_t(warp) * 32 + src_lane_or_minus];
    std::memcpy(&out, &got, sizeof(T));
  }
  yield(kWaitWarp);  // nobody overwrites a slot before every lane has read
  return out;
}

}  // namespace bl_emu

#define threadIdx (::bl_emu::thread_idx)
#define blockIdx (::bl_emu::block_idx)
#define blockDim (::bl_emu::block_dim)
#define gridDim (::bl_emu::grid_dim)

inline void __syncthreads() { ::bl_emu::yield(::bl_emu::kWaitBlock); }

template <typename T>
T __shfl_down_sync(unsigned mask, T v, int delta) {
  if (mask != 0xffffffffu) ::bl_emu::fail("partial shuffle masks are not emulated");
  return ::bl_emu::shuffle(v, ::bl_emu::linear_tid() % 32 + delta);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  if (mask != 0xffffffffu) ::bl_emu::fail("partial shuffle masks are not emulated");
  return ::bl_emu::shuffle(v, (::bl_emu::linear_tid() % 32) ^ lane_mask);
}

inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ---- runtime API -------------------------------------------------------------------------------
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorLaunchFailure";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    default: return "emulated error";
  }
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::bl_emu::last_error;
  ::bl_emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return ::bl_emu::last_error; }
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = ::bl_emu::devices();
  if (*n == 0) return cudaErrorNoDevice;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return ::bl_emu::devices() > 0 ? cudaSuccess : cudaErrorNoDevice;
}
inline cudaError_t cudaSetDevice(int d) {
  return d >= 0 && d < ::bl_emu::devices() ? cudaSuccess : cudaErrorInvalidDevice;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = ::bl_emu::devices() > 0 ? 13000 : 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::snprintf(p->name, sizeof p->name, "bl_emu CPU emulation");
  p->major = 9;
  p->minor = 0;
  p->totalGlobalMem = ::bl_emu::memory_limit();
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = int(::bl_emu::kOptinSmem);
  return cudaSuccess;
}
inline cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute, int bytes) {
  if (size_t(bytes) > ::bl_emu::kOptinSmem) return cudaErrorInvalidValue;
  ::bl_emu::smem_optin[fn] = size_t(bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (::bl_emu::allocated + bytes > ::bl_emu::memory_limit()) return cudaErrorMemoryAllocation;
  *p = std::malloc(bytes ? bytes : 1);
  if (*p == nullptr) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xFF, bytes);  // uninitialised reads show up as NaN / -1
  ::bl_emu::allocations[*p] = bytes;
  ::bl_emu::allocated += bytes;
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  auto it = ::bl_emu::allocations.find(p);
  if (it == ::bl_emu::allocations.end()) ::bl_emu::fail("cudaFree of a pointer not from cudaMalloc");
  ::bl_emu::allocated -= it->second;
  ::bl_emu::allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  *total_b = ::bl_emu::memory_limit();
  *free_b = *total_b - ::bl_emu::allocated;
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t bytes) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

namespace bl_emu {
// Outstanding device allocations (a leak check for the tests: 0 after every call).
inline size_t outstanding_bytes() { return allocated; }
}  // namespace bl_emu

#define BL_LAUNCH(kernel, grid, block, smem) \
  ::bl_emu::launcher(kernel, #kernel, dim3(grid), dim3(block), (smem))
#define BL_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::bl_emu::dynamic_shared())
