// Argument shape checks of the two pybind11 modules (_core in bindings.cpp, _core_cuda in
// bindings_cuda.cpp), written once so both reject a bad array with the same message. Only
// the binding files include this header: it needs pybind11, which the kernels never see.
// The dtype and contiguity of an array are enforced by py::arg().noconvert() and carray's
// c_style flag; these checks add the dimensions, with the argument named.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

namespace backdoorlab::binding {

namespace py = pybind11;

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

template <typename T>
void expect_ndim(const carray<T>& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(a.ndim()) + "-D");
}

template <typename T>
void expect_shape(const carray<T>& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  expect_ndim(a, name, static_cast<py::ssize_t>(shape.size()));
  py::ssize_t i = 0;
  for (py::ssize_t s : shape) {
    if (a.shape(i) != s)
      throw py::value_error(std::string(name) + " has size " + std::to_string(a.shape(i)) +
                            " in dimension " + std::to_string(i) + ", expected " + std::to_string(s));
    ++i;
  }
}

// The running state stats_update merges a batch of N rows and C channels into: group (N,),
// count and values (G,), mean, m2, maxv and npos (G, C). Returns G.
inline py::ssize_t expect_stats_state(py::ssize_t N, py::ssize_t C, const carray<std::int64_t>& group,
                                      const carray<std::int64_t>& count, const carray<std::int64_t>& values,
                                      const carray<double>& mean, const carray<double>& m2,
                                      const carray<double>& maxv, const carray<std::int64_t>& npos) {
  const py::ssize_t G = count.ndim() == 1 ? count.shape(0) : -1;
  expect_shape(group, "group", {N});
  expect_shape(count, "count", {G});
  expect_shape(values, "values", {G});
  expect_shape(mean, "mean", {G, C});
  expect_shape(m2, "m2", {G, C});
  expect_shape(maxv, "maxv", {G, C});
  expect_shape(npos, "npos", {G, C});
  return G;
}

}  // namespace backdoorlab::binding
