// Runtime plumbing of the CUDA core: error translation, device discovery that never throws
// (build_info must work on machines without a driver), checked allocations whose failure names
// the size asked, input staging and the validation that runs before any compute launch.
#include <algorithm>
#include <cstdio>

#include "cuda/common.cuh"

namespace backdoorlab {
namespace cuda {

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  // Clear a non-sticky error so that the next call in this process starts clean.
  cudaGetLastError();
  std::string msg = concat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                           ") in ", what, " at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) throw OutOfMemory(msg);
  throw std::runtime_error(msg);
}

std::string format_bytes(size_t bytes) {
  char buf[64];
  double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024.0 * 1024.0)
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
  else if (b >= 1024.0 * 1024.0)
    std::snprintf(buf, sizeof buf, "%.2f MiB", b / (1024.0 * 1024.0));
  else
    std::snprintf(buf, sizeof buf, "%.2f KiB", b / 1024.0);
  return concat(buf, " (", bytes, " bytes)");
}

void* device_malloc(size_t bytes, const char* what) {
  void* ptr = nullptr;
  cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    std::string mem;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      mem = concat("; ", format_bytes(free_b), " free of ", format_bytes(total_b));
    cudaGetLastError();
    std::string msg = concat("CUDA out of memory: cudaMalloc of ", format_bytes(bytes), " for ",
                             what, " failed (", cudaGetErrorString(err), ")", mem);
    if (err == cudaErrorMemoryAllocation) throw OutOfMemory(msg);
    throw std::runtime_error(msg);
  }
  return ptr;
}

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  if (cudaRuntimeGetVersion(&info.runtime_version) != cudaSuccess) info.runtime_version = 0;
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    info.device_count = 0;
    info.reason = concat("cudaGetDeviceCount failed: ", cudaGetErrorName(err), " (",
                         cudaGetErrorString(err), ")");
    return info;
  }
  info.device_count = count;
  if (count == 0) info.reason = "the CUDA runtime reports no device";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      info.device_names.push_back("?");
      info.device_capabilities.push_back(0);
      info.device_memory.push_back(0);
      continue;
    }
    info.device_names.push_back(prop.name);
    info.device_capabilities.push_back(prop.major * 10 + prop.minor);
    info.device_memory.push_back(static_cast<int64_t>(prop.totalGlobalMem));
  }
  return info;
}

void require_device(int device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(concat("no usable CUDA device: cudaGetDeviceCount failed with ",
                                    cudaGetErrorName(err), " (", cudaGetErrorString(err),
                                    "); use device=\"cpu\""));
  }
  if (count == 0) throw std::runtime_error("no usable CUDA device: none visible; use device=\"cpu\"");
  if (device < 0 || device >= count)
    throw std::runtime_error(concat("CUDA device ", device, " requested but only ", count,
                                    " visible"));
}

DeviceGuard::DeviceGuard(int device) {
  require_device(device);
  BL_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) BL_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  cudaGetLastError();
}

int current_device() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    dev = 0;
  }
  return dev;
}

int device_for(const ConstView& view) {
  if (view.on_device) return view.device;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return 0;  // DeviceGuard then raises with the reason
  }
  return current_device();
}

StagedInput::StagedInput(const ConstView& view, const char* what) {
  if (view.on_device) {
    ptr_ = view.data;
    return;
  }
  const size_t count = static_cast<size_t>(view.size());
  copy_.allocate(count, what);
  copy_.upload(view.data, count);
  ptr_ = copy_.get();
}

StagedBatch::StagedBatch(const ConstView& X, const int64_t* offsets, int64_t n_classes)
    : n(X.shape[0]), d(X.shape[1]), guard_(device_for(X)), x_(X, "X (copied to the device)") {
  check_finite(x_.get(), n, d, "X");
  off_.allocate(size_t(n_classes) + 1, "the class offsets");
  off_.upload(offsets, size_t(n_classes) + 1);
}

namespace {
std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += concat(i ? ", " : "", shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}
}  // namespace

// Messages follow backdoorlab.reference's _check_* helpers word for word, so the CPU and CUDA
// paths fail alike.
void check_matrix(const ConstView& X, const char* name) {
  if (X.shape.size() != 2)
    throw std::invalid_argument(concat(name, " must be 2-D (n_samples, n_features), got ",
                                       X.shape.size(), "-D with shape ", shape_str(X.shape)));
  if (X.shape[0] < 1 || X.shape[1] < 1)
    throw std::invalid_argument(concat(name, " is empty: shape ", shape_str(X.shape)));
  if (X.data == nullptr) throw std::invalid_argument(concat(name, " has no data"));
}

void check_offsets(const int64_t* offsets, int64_t n_classes, int64_t n, int64_t min_rows,
                   const char* what) {
  if (n_classes < 1)
    throw std::invalid_argument(concat("offsets must be 1-D with n_classes + 1 >= 2 entries, got ",
                                       n_classes + 1));
  if (offsets[0] != 0) throw std::invalid_argument(concat("offsets[0] must be 0, got ", offsets[0]));
  if (offsets[n_classes] != n)
    throw std::invalid_argument(concat("offsets[-1] must equal the number of rows of X (", n,
                                       "), got ", offsets[n_classes]));
  for (int64_t c = 0; c < n_classes; ++c)
    if (offsets[c + 1] < offsets[c])
      throw std::invalid_argument(concat("offsets must be non-decreasing, but offsets[", c + 1, "]=",
                                         offsets[c + 1], " < offsets[", c, "]=", offsets[c]));
  for (int64_t c = 0; c < n_classes; ++c) {
    const int64_t rows = offsets[c + 1] - offsets[c];
    if (rows > 0 && rows < min_rows)  // empty classes are skipped
      throw std::invalid_argument(concat("class ", c, " has ", rows, " rows, fewer than ", what,
                                         "=", min_rows));
  }
}

namespace {
__global__ void first_nonfinite_kernel(const float* data, int64_t size,
                                       unsigned long long* first) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < size;
       i += (int64_t)gridDim.x * blockDim.x) {
    if (!isfinite(data[i])) atomicMin(first, static_cast<unsigned long long>(i));
  }
}
}  // namespace

void check_finite(const float* device_data, int64_t rows, int64_t cols, const char* name) {
  const int64_t size = rows * cols;
  if (size == 0) return;
  DeviceBuffer<unsigned long long> first(1, "the finiteness check flag");
  const unsigned long long none = ~0ull;
  first.upload(&none, 1);
  BL_LAUNCH(first_nonfinite_kernel, blocks_for(size, 256, 4096), 256, 0)(device_data, size, first.get());
  BL_LAUNCH_CHECK("first_nonfinite_kernel");
  unsigned long long at = none;
  first.download(&at, 1);  // synchronises
  if (at != none) {
    const int64_t r = static_cast<int64_t>(at) / cols;
    throw std::invalid_argument(concat(name, " contains NaN or Inf (first at row ", r, ")"));
  }
}

void set_dynamic_smem(const void* kernel, size_t bytes, const char* kernel_name) {
  if (bytes <= 48 * 1024) return;
  int dev = 0, optin = 0;
  BL_CUDA_CHECK(cudaGetDevice(&dev));
  BL_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (bytes > static_cast<size_t>(optin))
    throw std::invalid_argument(concat(kernel_name, " needs ", format_bytes(bytes),
                                       " of shared memory per block, the device allows ",
                                       format_bytes(static_cast<size_t>(optin)),
                                       "; use fewer components or device=\"cpu\""));
  BL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
}

}  // namespace cuda
}  // namespace backdoorlab
