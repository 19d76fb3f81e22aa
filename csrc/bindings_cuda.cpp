// backdoorlab._core_cuda: the CUDA twin of backdoorlab._core, same kernel names, argument order
// and results (see the API block at the top of csrc/bindings.cpp). Like bindings.cpp this is the
// only CUDA-side file that includes pybind11; it is compiled by the host compiler and sees the
// device code only through csrc/cuda/api.hpp.
//
// Differences from _core, all additive:
//   * The big float32 input (X of the batched kernels, acts of stats_update) may also be any
//     object exporting DLPack (__dlpack__ / __dlpack_device__, or a bare "dltensor" capsule):
//     a PyTorch/CuPy/JAX CUDA tensor is used in place on its device, without a copy; a
//     DLPack CPU tensor is copied to the device like a NumPy array. The producer's stream is
//     synchronised with the legacy default stream, on which every kernel here runs.
//   * build_info() adds cuda_devices (0, never an exception, without a driver or GPU) and
//     the reason, the compiled architectures and the runtime/driver versions.
//   * Out-of-memory raises CudaOutOfMemoryError (a MemoryError) naming the bytes asked.
// Every device call runs with the GIL released; outputs are allocated before it is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "common/binding_checks.hpp"
#include "cuda/api.hpp"
#include "cuda/dlpack_abi.hpp"

namespace py = pybind11;
namespace bc = backdoorlab::cuda;
namespace dl = backdoorlab::dlpack;
using i64 = std::int64_t;

using backdoorlab::binding::carray;
using backdoorlab::binding::expect_ndim;
using backdoorlab::binding::expect_shape;
using backdoorlab::binding::expect_stats_state;

namespace {

// A float32 input held for the duration of a call: a NumPy array (kept alive) or a consumed
// DLPack tensor (its deleter runs when this object dies, with the GIL held).
class Float32Input {
 public:
  Float32Input() = default;
  Float32Input(const Float32Input&) = delete;
  Float32Input& operator=(const Float32Input&) = delete;
  ~Float32Input() {
    if (legacy_ != nullptr && legacy_->deleter != nullptr) legacy_->deleter(legacy_);
    if (versioned_ != nullptr && versioned_->deleter != nullptr) versioned_->deleter(versioned_);
  }

  bc::ConstView view;
  py::object keep;
  dl::DLManagedTensor* legacy_ = nullptr;
  dl::DLManagedTensorVersioned* versioned_ = nullptr;
};

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

std::string ndim_list(const std::vector<int>& ndims) {
  std::ostringstream os;
  for (size_t i = 0; i < ndims.size(); ++i) os << (i ? " or " : "") << ndims[i] << "-D";
  return os.str();
}

void check_ndim(const std::vector<i64>& shape, const char* name, const std::vector<int>& ndims) {
  for (int n : ndims)
    if (static_cast<int>(shape.size()) == n) return;
  std::ostringstream os;
  os << name << " must be " << ndim_list(ndims) << ", got " << shape.size() << "-D";
  throw py::value_error(os.str());
}

void take_dltensor(Float32Input& in, const dl::DLTensor& t, const char* name,
                   const std::vector<int>& ndims) {
  if (t.dtype.code != dl::kDLFloat || t.dtype.bits != 32 || t.dtype.lanes != 1) {
    std::ostringstream os;
    os << name << " must have dtype float32, got DLPack dtype (code " << int(t.dtype.code)
       << ", bits " << int(t.dtype.bits) << ", lanes " << t.dtype.lanes << ")";
    throw py::type_error(os.str());
  }
  in.view.shape.assign(t.shape, t.shape + t.ndim);
  check_ndim(in.view.shape, name, ndims);
  if (t.strides != nullptr) {  // null means compact row-major; else check it is
    i64 expected = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (t.shape[i] != 1 && t.strides[i] != expected)
        throw py::type_error(std::string(name) +
                             " must be C-contiguous (e.g. call .contiguous() on a torch.Tensor)");
      expected *= t.shape[i];
    }
  }
  in.view.data = reinterpret_cast<const float*>(static_cast<const char*>(t.data) + t.byte_offset);
  switch (t.device.device_type) {
    case dl::kDLCPU:
    case dl::kDLCUDAHost:
      in.view.on_device = false;
      break;
    case dl::kDLCUDA:
    case dl::kDLCUDAManaged:
      in.view.on_device = true;
      in.view.device = t.device.device_id;
      break;
    default:
      throw py::value_error(std::string(name) + " lives on DLPack device type " +
                            std::to_string(t.device.device_type) +
                            "; only CPU and CUDA tensors are accepted");
  }
}

// Consumes a "dltensor" / "dltensor_versioned" capsule: renamed to "used_..." so that its own
// destructor leaves the tensor to us (the DLPack protocol), and deleted by ~Float32Input.
void take_capsule(Float32Input& in, py::handle capsule, const char* name, const std::vector<int>& ndims) {
  PyObject* cap = capsule.ptr();
  const char* cap_name = PyCapsule_GetName(cap);
  if (cap_name == nullptr) throw py::error_already_set();
  const std::string cname = cap_name;
  in.keep = py::reinterpret_borrow<py::object>(capsule);
  if (cname == "dltensor") {
    auto* m = static_cast<dl::DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
    if (m == nullptr) throw py::error_already_set();
    if (PyCapsule_SetName(cap, "used_dltensor") != 0) throw py::error_already_set();
    in.legacy_ = m;
    take_dltensor(in, m->dl_tensor, name, ndims);
  } else if (cname == "dltensor_versioned") {
    auto* m = static_cast<dl::DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
    if (m == nullptr) throw py::error_already_set();
    if (PyCapsule_SetName(cap, "used_dltensor_versioned") != 0) throw py::error_already_set();
    in.versioned_ = m;
    if (m->version.major != 1)
      throw py::value_error(std::string(name) + ": unsupported DLPack major version " +
                            std::to_string(m->version.major));
    take_dltensor(in, m->dl_tensor, name, ndims);
  } else {
    throw py::value_error(std::string(name) + ": DLPack capsule named '" + cname +
                          "' (already consumed?)");
  }
}

void acquire_float32(Float32Input& in, py::handle obj, const char* name, const std::vector<int>& ndims) {
  if (py::isinstance<py::array>(obj)) {
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().is(py::dtype::of<float>()))
      throw py::type_error(std::string(name) + " must have dtype float32, got " +
                           std::string(py::str(arr.dtype())));
    if (!(arr.flags() & py::array::c_style))
      throw py::type_error(std::string(name) + " must be C-contiguous (np.ascontiguousarray)");
    in.view.shape.assign(arr.shape(), arr.shape() + arr.ndim());
    check_ndim(in.view.shape, name, ndims);
    in.view.data = static_cast<const float*>(arr.data());
    in.view.on_device = false;
    in.keep = arr;
    return;
  }
  if (PyCapsule_CheckExact(obj.ptr())) {
    take_capsule(in, obj, name, ndims);
    return;
  }
  if (py::hasattr(obj, "__dlpack__") && py::hasattr(obj, "__dlpack_device__")) {
    py::tuple dev = obj.attr("__dlpack_device__")();
    const int dev_type = dev[0].cast<int>();
    py::object capsule;
    if (dev_type == dl::kDLCUDA || dev_type == dl::kDLCUDAManaged) {
      // stream=1: the producer makes the legacy default stream wait for its pending work.
      try {
        capsule = obj.attr("__dlpack__")(py::arg("stream") = 1);
      } catch (py::error_already_set& e) {
        if (!e.matches(PyExc_TypeError)) throw;
        capsule = obj.attr("__dlpack__")();
      }
    } else {
      capsule = obj.attr("__dlpack__")();
    }
    if (!PyCapsule_CheckExact(capsule.ptr()))
      throw py::type_error(std::string(name) + ".__dlpack__() did not return a capsule");
    take_capsule(in, capsule, name, ndims);
    return;
  }
  throw py::type_error(std::string(name) + " must be a numpy.ndarray or a DLPack tensor (e.g. a "
                       "torch.Tensor), got " + type_name(obj));
}

i64 n_classes_of(const carray<i64>& offsets) {
  expect_ndim(offsets, "offsets", 1);
  if (offsets.shape(0) < 2)
    throw py::value_error("offsets must be 1-D with n_classes + 1 >= 2 entries, got " +
                          std::to_string(offsets.shape(0)));
  return offsets.shape(0) - 1;
}

py::dict build_info() {
  py::dict info;
  info["version"] = BACKDOORLAB_VERSION;
  info["cuda"] = true;  // compiled; cuda_devices says whether it can run
  std::vector<int> archs;
  {
    std::string s = BACKDOORLAB_CUDA_ARCHS, item;
    std::istringstream is(s);
    while (std::getline(is, item, ','))
      if (!item.empty()) archs.push_back(std::stoi(item));  // "90a"/"80-real" -> 90/80
  }
  info["cuda_architectures"] = archs;
  info["cuda_architectures_str"] = BACKDOORLAB_CUDA_ARCHS;
  info["cuda_compiler_version"] = BACKDOORLAB_CUDA_COMPILER_VERSION;
  info["cudart"] = "static";
  info["dlpack"] = true;
  info["max_components"] = bc::kMaxComponents;
  info["max_silhouette_clusters"] = bc::kMaxSilhouetteClusters;
  const bc::RuntimeInfo rt = bc::runtime_info();
  info["cuda_runtime_version"] = rt.runtime_version;
  info["cuda_driver_version"] = rt.driver_version;
  info["cuda_devices"] = rt.device_count;
  info["cuda_error"] = rt.device_count > 0 ? py::object(py::none()) : py::object(py::str(rt.reason));
  info["cuda_device_names"] = rt.device_names;
  info["cuda_device_capabilities"] = rt.device_capabilities;
  info["cuda_device_memory"] = rt.device_memory;
  return info;
}

void stats_update(py::handle acts, const carray<i64>& group, carray<i64> count, carray<i64> values,
                  carray<double> mean, carray<double> m2, carray<double> maxv, carray<i64> npos) {
  Float32Input a;
  acquire_float32(a, acts, "acts", {3});
  const i64 N = a.view.shape[0], C = a.view.shape[1];
  const i64 G = expect_stats_state(N, C, group, count, values, mean, m2, maxv, npos);
  const i64* g = group.data();
  i64 *cnt = count.mutable_data(), *val = values.mutable_data(), *pos = npos.mutable_data();
  double *mu = mean.mutable_data(), *q = m2.mutable_data(), *mx = maxv.mutable_data();
  py::gil_scoped_release release;
  bc::stats_update(a.view, g, G, cnt, val, mu, q, mx, pos);
}

py::tuple fastica(py::handle X, const carray<i64>& offsets, int n_components, int max_iter,
                  double tol, std::uint64_t seed) {
  Float32Input x;
  acquire_float32(x, X, "X", {2});
  const i64 G = n_classes_of(offsets), n = x.view.shape[0];
  if (n_components < 1)
    throw py::value_error("n_components must be >= 1, got " + std::to_string(n_components));
  carray<float> sources({n, static_cast<i64>(n_components)});
  carray<std::int32_t> n_iter(G);
  float* out = sources.mutable_data();
  std::int32_t* it = n_iter.mutable_data();
  const i64* off = offsets.data();
  {
    py::gil_scoped_release release;
    bc::fastica(x.view, off, G, n_components, max_iter, tol, seed, out, it);
  }
  return py::make_tuple(sources, n_iter);
}

carray<float> pca(py::handle X, const carray<i64>& offsets, int n_components) {
  Float32Input x;
  acquire_float32(x, X, "X", {2});
  const i64 G = n_classes_of(offsets), n = x.view.shape[0];
  if (n_components < 1)
    throw py::value_error("n_components must be >= 1, got " + std::to_string(n_components));
  carray<float> proj({n, static_cast<i64>(n_components)});
  float* out = proj.mutable_data();
  const i64* off = offsets.data();
  {
    py::gil_scoped_release release;
    bc::pca(x.view, off, G, n_components, out);
  }
  return proj;
}

py::tuple kmeans(py::handle X, const carray<i64>& offsets, int k, int n_init, int max_iter,
                 double tol, std::uint64_t seed) {
  Float32Input x;
  acquire_float32(x, X, "X", {2});
  const i64 G = n_classes_of(offsets), n = x.view.shape[0], d = x.view.shape[1];
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  carray<std::int32_t> labels(n);
  carray<float> centers({G, static_cast<i64>(k), d});
  carray<double> inertia(G);
  carray<std::int32_t> n_iter(G);
  std::int32_t *lab = labels.mutable_data(), *it = n_iter.mutable_data();
  float* cen = centers.mutable_data();
  double* ine = inertia.mutable_data();
  const i64* off = offsets.data();
  {
    py::gil_scoped_release release;
    bc::kmeans(x.view, off, G, k, n_init, max_iter, tol, seed, lab, cen, ine, it);
  }
  return py::make_tuple(labels, centers, inertia, n_iter);
}

carray<float> silhouette_samples(py::handle X, const carray<i64>& offsets,
                                 const carray<std::int32_t>& labels) {
  Float32Input x;
  acquire_float32(x, X, "X", {2});
  const i64 G = n_classes_of(offsets), n = x.view.shape[0];
  expect_shape(labels, "labels", {n});
  carray<float> s(n);
  float* out = s.mutable_data();
  const i64* off = offsets.data();
  const std::int32_t* lab = labels.data();
  {
    py::gil_scoped_release release;
    bc::silhouette_samples(x.view, off, G, lab, out);
  }
  return s;
}

carray<float> spectral_scores(py::handle X, const carray<i64>& offsets, bool center) {
  Float32Input x;
  acquire_float32(x, X, "X", {2});
  const i64 G = n_classes_of(offsets), n = x.view.shape[0];
  carray<float> s(n);
  float* out = s.mutable_data();
  const i64* off = offsets.data();
  {
    py::gil_scoped_release release;
    bc::spectral_scores(x.view, off, G, center, out);
  }
  return s;
}

carray<i64> pruning_order(const carray<double>& mean) {
  expect_ndim(mean, "mean_activation", 1);
  const i64 C = mean.shape(0);
  carray<i64> order(C);
  const double* m = mean.data();
  i64* o = order.mutable_data();
  {
    py::gil_scoped_release release;
    bc::pruning_order(m, C, o);
  }
  return order;
}

carray<float> pruning_mask(const carray<i64>& order, i64 n_pruned) {
  expect_ndim(order, "order", 1);
  const i64 C = order.shape(0);
  carray<float> mask(C);
  const i64* o = order.data();
  float* m = mask.mutable_data();
  {
    py::gil_scoped_release release;
    bc::pruning_mask(o, C, n_pruned, m);
  }
  return mask;
}

}  // namespace

PYBIND11_MODULE(_core_cuda, m) {
  m.doc() = "backdoorlab native CUDA core (private: use backdoorlab.native with device='cuda')";
  py::register_exception<bc::OutOfMemory>(m, "CudaOutOfMemoryError", PyExc_MemoryError);
  m.def("build_info", &build_info,
        "What was compiled and what the CUDA runtime sees (never raises without a GPU).");
  m.def("stats_update", &stats_update, py::arg("acts"), py::arg("group").noconvert(),
        py::arg("count").noconvert(), py::arg("values").noconvert(), py::arg("mean").noconvert(),
        py::arg("m2").noconvert(), py::arg("maxv").noconvert(), py::arg("npos").noconvert());
  m.def("fastica", &fastica, py::arg("X"), py::arg("offsets").noconvert(), py::arg("n_components"),
        py::arg("max_iter"), py::arg("tol"), py::arg("seed"));
  m.def("pca", &pca, py::arg("X"), py::arg("offsets").noconvert(), py::arg("n_components"));
  m.def("kmeans", &kmeans, py::arg("X"), py::arg("offsets").noconvert(), py::arg("k"),
        py::arg("n_init"), py::arg("max_iter"), py::arg("tol"), py::arg("seed"));
  m.def("silhouette_samples", &silhouette_samples, py::arg("X"), py::arg("offsets").noconvert(),
        py::arg("labels").noconvert());
  m.def("spectral_scores", &spectral_scores, py::arg("X"), py::arg("offsets").noconvert(),
        py::arg("center"));
  m.def("pruning_order", &pruning_order, py::arg("mean").noconvert());
  m.def("pruning_mask", &pruning_mask, py::arg("order").noconvert(), py::arg("n_pruned"));
}
