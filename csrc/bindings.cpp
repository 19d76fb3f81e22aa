// The only file that includes pybind11: it exposes the plain C++ core (csrc/cpu) as
// backdoorlab._core. Python callers go through backdoorlab.native, which validates arguments
// first; the checks here are the last line (never crash the interpreter on bad input).
//
// ---- The _core API (mirror it in _core_cuda: same names, same argument order, same results) ---
//
//   build_info() -> dict        version, openmp, max_threads, thread_ceiling, num_threads, simd
//                               (levels compiled), simd_supported, simd_best, simd_selected,
//                               compiler (_core_cuda adds "cuda_devices": int — native.py reads it)
//   set_num_threads(n: int) -> None (ValueError outside [1, thread_ceiling]) ; get_num_threads() -> int
//   set_simd_level(level: str) -> None (ValueError: unknown, or not on this CPU) — _core only
//   stats_update(acts: f32[N, C, S], group: i64[N], count: i64[G], values: i64[G],
//                mean: f64[G, C], m2: f64[G, C], maxv: f64[G, C], npos: i64[G, C]) -> None
//       in place (Chan merge of the batch into the running float64 moments); S = H*W (1 for
//       dense layers); group in [0, G); count = rows seen, values = rows * S.
//   fastica(X: f32[n, d], offsets: i64[G+1], n_components: int, max_iter: int, tol: float,
//           seed: int) -> (sources f32[n, n_components], n_iter i32[G])
//   pca(X, offsets, n_components: int) -> f32[n, n_components]
//   kmeans(X, offsets, k: int, n_init: int, max_iter: int, tol: float, seed: int)
//       -> (labels i32[n], centers f32[G, k, d], inertia f64[G], n_iter i32[G])
//   silhouette_samples(X, offsets, labels: i32[n]) -> f32[n]
//   spectral_scores(X, offsets, center: bool) -> f32[n]
//   pruning_order(mean: f64[C]) -> i64[C]
//   pruning_mask(order: i64[C], n_pruned: int) -> f32[C]
//   _dropout_noise(state: u8[5056], out: f32, keep: float, scale: float, channels_last: bool) -> None
//       in place: the CPU generator state (torch.get_rng_state()) and out; see cpu/dropout_noise.hpp
//
// Conventions: X is float32 C-contiguous (n, d), rows grouped by class, class c = rows
// offsets[c]:offsets[c+1]; empty classes are skipped (their outputs: zeros, NaN centres and
// inertia, n_iter 0). Array arguments are taken with py::arg().noconvert() and
// py::array::c_style | py::array::forcecast is NOT used: a wrong dtype or a strided array is a
// TypeError here (native.py copies strided float32 views to C order before calling, and refuses
// other dtypes, so no silent conversion happens anywhere). Errors: std::invalid_argument ->
// ValueError with the bad value named. Output arrays are allocated while the GIL is held; the
// kernels then run with the GIL released and touch no Python object. Random streams come from
// csrc/common/rng.hpp keyed by (seed, class, run), so results do not depend on thread count.
// ------------------------------------------------------------------------------------------
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/binding_checks.hpp"
#include "common/ica_math.hpp"
#include "cpu/cluster.hpp"
#include "cpu/decompose.hpp"
#include "cpu/dropout_noise.hpp"
#include "cpu/linalg.hpp"
#include "cpu/parallel.hpp"
#include "cpu/polar.hpp"
#include "cpu/pruning.hpp"
#include "cpu/simd.hpp"
#include "cpu/spectral.hpp"
#include "cpu/stats.hpp"

namespace py = pybind11;
using i64 = std::int64_t;

using namespace backdoorlab::binding;  // carray and the argument checks shared by both binding files

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = BACKDOORLAB_VERSION;
  info["openmp"] = backdoorlab::openmp_enabled();
  info["max_threads"] = backdoorlab::max_threads();
  info["thread_ceiling"] = backdoorlab::thread_ceiling();
  info["num_threads"] = backdoorlab::num_threads();
  py::list levels, supported;
  for (const auto& l : backdoorlab::simd_levels_compiled()) {
    levels.append(l);
    if (backdoorlab::simd_level_supported(l)) supported.append(l);
  }
  info["simd"] = levels;
  info["simd_supported"] = supported;
  info["simd_best"] = backdoorlab::simd_level_best();
  info["simd_selected"] = backdoorlab::simd().name;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  return info;
}

void stats_update(const carray<float>& acts, const carray<i64>& group, carray<i64> count, carray<i64> values,
                  carray<double> mean, carray<double> m2, carray<double> maxv, carray<i64> npos) {
  expect_ndim(acts, "acts", 3);
  const i64 N = acts.shape(0), C = acts.shape(1), S = acts.shape(2);
  const i64 G = expect_stats_state(N, C, group, count, values, mean, m2, maxv, npos);
  const float* a = acts.data();
  const i64* g = group.data();
  i64 *cnt = count.mutable_data(), *val = values.mutable_data(), *pos = npos.mutable_data();
  double *mu = mean.mutable_data(), *q = m2.mutable_data(), *mx = maxv.mutable_data();
  py::gil_scoped_release release;
  backdoorlab::stats_update(a, N, C, S, g, G, cnt, val, mu, q, mx, pos);
}

// X (n, d) and offsets (G + 1,): shapes checked here, values (offsets, NaN) by the core.
struct Batch {
  const float* X;
  i64 n, d, G;
  const i64* offsets;
};

Batch batch(const carray<float>& X, const carray<i64>& offsets) {
  expect_ndim(X, "X", 2);
  expect_ndim(offsets, "offsets", 1);
  if (X.shape(0) == 0 || X.shape(1) == 0) throw py::value_error("X is empty");
  if (offsets.shape(0) < 2) throw py::value_error("offsets must have n_classes + 1 >= 2 entries");
  return {X.data(), X.shape(0), X.shape(1), offsets.shape(0) - 1, offsets.data()};
}

py::tuple fastica(const carray<float>& X, const carray<i64>& offsets, int n_components, int max_iter, double tol,
                  std::uint64_t seed) {
  const Batch b = batch(X, offsets);
  if (n_components < 1 || n_components > b.d)
    throw py::value_error("n_components=" + std::to_string(n_components) + " must be in [1, d=" + std::to_string(b.d) + "]");
  carray<float> out({b.n, static_cast<i64>(n_components)});
  carray<std::int32_t> n_iter(b.G);
  float* o = out.mutable_data();
  std::int32_t* it = n_iter.mutable_data();
  {
    py::gil_scoped_release release;
    backdoorlab::fastica(b.X, b.n, b.d, b.offsets, b.G, n_components, max_iter, tol, seed, o, it);
  }
  return py::make_tuple(out, n_iter);
}

carray<float> pca(const carray<float>& X, const carray<i64>& offsets, int n_components) {
  const Batch b = batch(X, offsets);
  if (n_components < 1 || n_components > b.d)
    throw py::value_error("n_components=" + std::to_string(n_components) + " must be in [1, d=" + std::to_string(b.d) + "]");
  carray<float> out({b.n, static_cast<i64>(n_components)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    backdoorlab::pca(b.X, b.n, b.d, b.offsets, b.G, n_components, o);
  }
  return out;
}

py::tuple kmeans(const carray<float>& X, const carray<i64>& offsets, int k, int n_init, int max_iter, double tol,
                 std::uint64_t seed) {
  const Batch b = batch(X, offsets);
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  carray<std::int32_t> labels(b.n);
  carray<float> centers({b.G, static_cast<i64>(k), b.d});
  carray<double> inertia(b.G);
  carray<std::int32_t> n_iter(b.G);
  std::int32_t *lab = labels.mutable_data(), *it = n_iter.mutable_data();
  float* cen = centers.mutable_data();
  double* in = inertia.mutable_data();
  {
    py::gil_scoped_release release;
    backdoorlab::kmeans(b.X, b.n, b.d, b.offsets, b.G, k, n_init, max_iter, tol, seed, lab, cen, in, it);
  }
  return py::make_tuple(labels, centers, inertia, n_iter);
}

carray<float> silhouette_samples(const carray<float>& X, const carray<i64>& offsets, const carray<std::int32_t>& labels) {
  const Batch b = batch(X, offsets);
  expect_shape(labels, "labels", {b.n});
  carray<float> out(b.n);
  float* o = out.mutable_data();
  const std::int32_t* lab = labels.data();
  {
    py::gil_scoped_release release;
    backdoorlab::silhouette_samples(b.X, b.n, b.d, b.offsets, b.G, lab, o);
  }
  return out;
}

carray<float> spectral_scores_paths(const carray<float>& X, const carray<i64>& offsets, bool center,
                                    bool float32_first) {
  const Batch b = batch(X, offsets);
  carray<float> out(b.n);
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    backdoorlab::spectral_scores(b.X, b.n, b.d, b.offsets, b.G, center, o, float32_first);
  }
  return out;
}

carray<float> spectral_scores(const carray<float>& X, const carray<i64>& offsets, bool center) {
  return spectral_scores_paths(X, offsets, center, true);
}

// Test hook: spectral_scores answered by the float64 paths alone (see cpu/spectral.hpp).
carray<float> spectral_scores_float64(const carray<float>& X, const carray<i64>& offsets, bool center) {
  return spectral_scores_paths(X, offsets, center, false);
}

// Test hook: the vectorised tanh of the FastICA step, so tests can compare it with np.tanh.
carray<float> tanh_f(const carray<float>& x) {
  carray<float> out(x.size());
  const float* in = x.data();
  float* o = out.mutable_data();
  for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = backdoorlab::tanh_f(in[i]);
  return out;
}

// Test hook: FastICA's batched symmetric decorrelation on W (n, k, k) float64, n <= 8 matrices,
// k <= 16. Returns (the polar factors, a bool per matrix: not solved, left unchanged).
py::tuple polar_factor_batch(const carray<double>& W) {
  expect_ndim(W, "W", 3);
  const i64 n = W.shape(0), k = W.shape(1);
  expect_shape(W, "W", {n, k, k});
  if (n < 1 || n > backdoorlab::POLAR_LANES || k < 1 || k > backdoorlab::POLAR_MAX_K)
    throw py::value_error("W must hold 1 to " + std::to_string(backdoorlab::POLAR_LANES) + " matrices of size 1 to " +
                          std::to_string(backdoorlab::POLAR_MAX_K) + ", got " + std::to_string(n) + " of size " +
                          std::to_string(k));
  carray<double> out({n, k, k});
  std::copy(W.data(), W.data() + n * k * k, out.mutable_data());
  std::vector<double*> mats(n);
  for (i64 l = 0; l < n; ++l) mats[l] = out.mutable_data() + l * k * k;
  const std::uint32_t failed =
      backdoorlab::polar_factor_batch(backdoorlab::simd(), mats.data(), static_cast<int>(n), static_cast<int>(k));
  py::array_t<bool> bad(n);
  for (i64 l = 0; l < n; ++l) bad.mutable_data()[l] = (failed >> l) & 1u;
  return py::make_tuple(out, bad);
}

// Test hook: the top-k eigenpairs of a symmetric matrix A (d, d) float64 as whitening (PCA,
// FastICA) and spectral signatures get them (block Krylov, dense fallback), at the SIMD level in
// use, so tests can compare them with numpy.linalg.eigh. Returns (evals (k,) descending,
// evecs (k, d): row i the unit eigenvector of evals[i]).
py::tuple sym_eig_top(const carray<double>& A, i64 k) {
  expect_ndim(A, "A", 2);
  const i64 d = A.shape(0);
  expect_shape(A, "A", {d, d});
  if (d < 1 || k < 1 || k > d)
    throw py::value_error("k must be in [1, d] for A of shape (" + std::to_string(d) + ", " + std::to_string(d) +
                          "), got k=" + std::to_string(k));
  for (i64 i = 0; i < d * d; ++i)
    if (!std::isfinite(A.data()[i]))
      throw py::value_error("A must be finite, got a NaN or Inf at flat index " + std::to_string(i));
  for (i64 i = 0; i < d; ++i)
    for (i64 j = 0; j < i; ++j)
      if (A.data()[i * d + j] != A.data()[j * d + i])
        throw py::value_error("A must be symmetric, got A[" + std::to_string(i) + ", " + std::to_string(j) +
                              "] != A[" + std::to_string(j) + ", " + std::to_string(i) + "]");
  std::vector<double> work(A.data(), A.data() + d * d);
  carray<double> evals(k), evecs({k, d});
  double* ev = evals.mutable_data();
  double* V = evecs.mutable_data();
  {
    py::gil_scoped_release release;
    backdoorlab::sym_eig_top(backdoorlab::simd(), work.data(), d, k, ev, V);
  }
  return py::make_tuple(evals, evecs);
}

carray<i64> pruning_order(const carray<double>& mean) {
  expect_ndim(mean, "mean_activation", 1);
  const i64 C = mean.shape(0);
  carray<i64> order(C);
  backdoorlab::pruning_order(mean.data(), C, order.mutable_data());
  return order;
}

carray<float> pruning_mask(const carray<i64>& order, i64 n_pruned) {
  expect_ndim(order, "order", 1);
  const i64 C = order.shape(0);
  carray<float> mask(C);
  backdoorlab::pruning_mask(order.data(), C, n_pruned, mask.mutable_data());
  return mask;
}

// Dropout noise as PyTorch's CPU generator draws it (backdoorlab.dropout_noise): `state` is a
// writable copy of torch.get_rng_state(), advanced in place; `out` is filled in place — in its own
// C order, or, with channels_last, a 4-D (N, H, W, C) buffer given the draws in (N, C, H, W) order.
void dropout_noise(carray<std::uint8_t>& state, carray<float>& out, double keep, float scale, bool channels_last) {
  expect_ndim(state, "state", 1);
  i64 rows = 1, row_len = out.size(), interleave = 1;
  if (channels_last) {
    expect_ndim(out, "out", 4);
    interleave = out.shape(3);
    rows = out.shape(0) * interleave;
    row_len = out.shape(1) * out.shape(2);
  }
  std::uint8_t* st = state.mutable_data();  // both throw for a read-only array
  float* o = out.mutable_data();
  const i64 n_state = state.shape(0);
  py::gil_scoped_release release;
  backdoorlab::dropout_noise(st, n_state, keep, scale, rows, row_len, interleave, o);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "backdoorlab native CPU core (private: use backdoorlab.native)";
  m.def("build_info", &build_info, "What was compiled (see backdoorlab.native.build_info).");
  m.def("set_num_threads", &backdoorlab::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &backdoorlab::num_threads);
  m.def("set_simd_level", &backdoorlab::set_simd_level, py::arg("level"),
        "Use this SIMD level's kernels from now on (see backdoorlab.native.set_simd_level).");
  m.def("stats_update", &stats_update, py::arg("acts").noconvert(), py::arg("group").noconvert(),
        py::arg("count").noconvert(), py::arg("values").noconvert(), py::arg("mean").noconvert(),
        py::arg("m2").noconvert(), py::arg("maxv").noconvert(), py::arg("npos").noconvert());
  m.def("fastica", &fastica, py::arg("X").noconvert(), py::arg("offsets").noconvert(), py::arg("n_components"),
        py::arg("max_iter"), py::arg("tol"), py::arg("seed"));
  m.def("pca", &pca, py::arg("X").noconvert(), py::arg("offsets").noconvert(), py::arg("n_components"));
  m.def("kmeans", &kmeans, py::arg("X").noconvert(), py::arg("offsets").noconvert(), py::arg("k"), py::arg("n_init"),
        py::arg("max_iter"), py::arg("tol"), py::arg("seed"));
  m.def("silhouette_samples", &silhouette_samples, py::arg("X").noconvert(), py::arg("offsets").noconvert(),
        py::arg("labels").noconvert());
  m.def("spectral_scores", &spectral_scores, py::arg("X").noconvert(), py::arg("offsets").noconvert(),
        py::arg("center"));
  m.def("_spectral_scores_float64", &spectral_scores_float64, py::arg("X").noconvert(), py::arg("offsets").noconvert(),
        py::arg("center"), "Test hook: spectral_scores by the float64 eigen-paths alone.");
  m.def("_tanh_f", &tanh_f, py::arg("x").noconvert(), "Test hook: the FastICA kernel's tanh, elementwise.");
  m.def("_polar_factor_batch", &polar_factor_batch, py::arg("W").noconvert(),
        "Test hook: FastICA's batched polar factor (W W^T)^{-1/2} W of up to 8 k x k matrices.");
  m.def("_sym_eig_top", &sym_eig_top, py::arg("A").noconvert(), py::arg("k"),
        "Test hook: the k largest eigenpairs of a symmetric float64 matrix, as the kernels compute them.");
  m.def("pruning_order", &pruning_order, py::arg("mean").noconvert());
  m.def("pruning_mask", &pruning_mask, py::arg("order").noconvert(), py::arg("n_pruned"));
  m.def("_dropout_noise", &dropout_noise, py::arg("state").noconvert(), py::arg("out").noconvert(), py::arg("keep"),
        py::arg("scale"), py::arg("channels_last"), "Dropout noise as torch's CPU generator draws it (backdoorlab.dropout_noise).");
}
