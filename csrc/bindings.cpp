// The only file that includes pybind11: it exposes the plain C++ core as backdoorlab._core.
#include <pybind11/pybind11.h>

#include "cpu/parallel.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "backdoorlab native CPU core (private: use backdoorlab.native)";
  m.def("build_info", []() {
    py::dict info;
    info["version"] = BACKDOORLAB_VERSION;
    info["openmp"] = backdoorlab::openmp_enabled();
    info["max_threads"] = backdoorlab::max_threads();
    return info;
  });
}
