// The few DLPack ABI structs the CUDA binding consumes, written from the DLPack specification
// (https://dmlc.github.io/dlpack/latest/c_api.html): the legacy DLManagedTensor ("dltensor"
// capsules, DLPack < 1.0) and DLManagedTensorVersioned ("dltensor_versioned", DLPack 1.x).
// Only layout matters here; no code is vendored. Field order and types follow the spec exactly
// because producers (PyTorch, CuPy, JAX, NumPy) hand us pointers to their own instances.
#pragma once

#include <cstdint>

namespace backdoorlab {
namespace dlpack {

enum DeviceType : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLCUDAManaged = 13,
};

enum DataTypeCode : uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLBfloat = 4,
  kDLBool = 6,
};

struct DLDevice {
  int32_t device_type;  // DeviceType (a C enum: int-sized)
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; nullptr means C-contiguous
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;  // bit 0: read only, bit 1: is a copy
  DLTensor dl_tensor;
};

}  // namespace dlpack
}  // namespace backdoorlab
