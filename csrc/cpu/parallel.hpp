// Thread control and exception capture shared by every CPU kernel.
//
// The kernels run OpenMP parallel loops with an explicit num_threads(...) taken from one
// process-wide setting (set_num_threads), not from the calling thread's OpenMP state: a kernel
// called from a Python worker thread then uses the same count as one called from the main thread.
// Thread policy, the one place it is decided: set_num_threads refuses counts outside
// [1, thread_ceiling()], num_threads() clips the default (OMP_NUM_THREADS may say anything) to the
// same ceiling, and every region takes num_threads() or threads_for(work) — never a raw count.
// An uncapped count let a caller start 100,000 threads (SIGSEGV) or 2^31-1 (libgomp aborts the
// process with "Out of memory").
// An exception must never leave an OpenMP region (that calls std::terminate), so loop bodies
// catch into an ErrorSlot and the caller rethrows after the region; the slot keeps the error of
// the lowest work index so the message does not depend on thread timing.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <vector>
#include <algorithm>

namespace backdoorlab {

bool openmp_enabled();
int max_threads();              // threads the OpenMP runtime offers
// The most threads a kernel region may start: 4 per processor, at least 64, and never above
// OMP_THREAD_LIMIT. Results do not depend on the count, so more threads than processors only
// buys contention; the ceiling still leaves room to test oversubscription on a small machine.
int thread_ceiling();
int num_threads();              // threads the kernels use: set_num_threads, default max_threads(), clipped to the ceiling
void set_num_threads(int n);    // 1 <= n <= thread_ceiling(), else std::invalid_argument naming n

// Index of the calling thread in its OpenMP team (0 outside a parallel region or without OpenMP).
int thread_index();

// Threads worth starting for `work` independent items (never more threads than items).
inline int threads_for(std::int64_t work) {
  const int t = num_threads();
  if (work < 1) return 1;
  return work < t ? static_cast<int>(work) : t;
}

class ErrorSlot {
 public:
  // Call inside a catch block: remembers the current exception if `index` is the lowest so far.
  void capture(std::int64_t index) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (index < index_) {
      index_ = index;
      error_ = std::current_exception();
    }
    failed_.store(true);
  }
  bool failed() const { return failed_.load(); }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::int64_t index_ = std::numeric_limits<std::int64_t>::max();
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
};

}  // namespace backdoorlab

namespace backdoorlab {

// Run body(c, inner_parallel) for every non-empty class c of `offsets` (G + 1 entries).
// With at least as many classes as threads, classes are spread over threads (dynamic schedule,
// one class at a time) and body must not start its own parallel region (inner_parallel false);
// with fewer classes they run one after another and body may parallelise inside
// (inner_parallel true). Exceptions thrown by body are rethrown after the region, the one of the
// lowest class first.
template <class Body>
void for_each_class(const std::int64_t* offsets, std::int64_t G, Body&& body) {
  std::int64_t n_nonempty = 0;
  for (std::int64_t c = 0; c < G; ++c) n_nonempty += offsets[c + 1] > offsets[c];
  ErrorSlot errors;
  const int nt = num_threads();
  if (n_nonempty >= nt && nt > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (std::int64_t c = 0; c < G; ++c) {
      if (offsets[c + 1] <= offsets[c] || errors.failed()) continue;
      try {
        body(c, false);
      } catch (...) {
        errors.capture(c);
      }
    }
  } else {
    for (std::int64_t c = 0; c < G; ++c) {
      if (offsets[c + 1] <= offsets[c]) continue;
      try {
        body(c, nt > 1);
      } catch (...) {
        errors.capture(c);
        break;
      }
    }
  }
  errors.rethrow();
}

// Run body(classes, count, inner_parallel) for the non-empty classes of `offsets` taken in
// batches of at most max_batch consecutive ones (classes: their indices). Batches shrink when
// there are few classes so every thread still gets work (count = ceil(classes / threads), capped
// at max_batch). Threading and exceptions as in for_each_class; an exception is reported for the
// batch's first class.
template <class Body>
void for_each_class_batch(const std::int64_t* offsets, std::int64_t G, int max_batch, Body&& body) {
  std::vector<std::int64_t> classes;
  for (std::int64_t c = 0; c < G; ++c)
    if (offsets[c + 1] > offsets[c]) classes.push_back(c);
  const std::int64_t n = static_cast<std::int64_t>(classes.size());
  if (n == 0) return;
  const int nt = num_threads();
  const std::int64_t size = std::max<std::int64_t>(1, std::min<std::int64_t>(max_batch, (n + nt - 1) / nt));
  const std::int64_t n_batches = (n + size - 1) / size;
  ErrorSlot errors;
  if (n_batches >= nt && nt > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (std::int64_t b = 0; b < n_batches; ++b) {
      if (errors.failed()) continue;
      const std::int64_t first = b * size, count = std::min(size, n - first);
      try {
        body(classes.data() + first, static_cast<int>(count), false);
      } catch (...) {
        errors.capture(classes[first]);
      }
    }
  } else {
    for (std::int64_t b = 0; b < n_batches; ++b) {
      const std::int64_t first = b * size, count = std::min(size, n - first);
      try {
        body(classes.data() + first, static_cast<int>(count), nt > 1);
      } catch (...) {
        errors.capture(classes[first]);
        break;
      }
    }
  }
  errors.rethrow();
}

// One T per thread for the length of a kernel call: buffers a class body would otherwise allocate
// for every class — and, being large, get as fresh zeroed pages from the OS each time (GTSRB's
// 820 x 512 classes: ~20,000 page faults per PCA call, ~10 % of it) — are allocated once per
// thread and freed with the call. Sized for the largest team a region may start (thread_ceiling:
// a concurrent set_num_threads cannot make an index overrun it); the unused slots stay empty.
template <class T>
class PerThread {
 public:
  PerThread() : items_(static_cast<std::size_t>(thread_ceiling())) {}
  T& local() { return items_[static_cast<std::size_t>(thread_index())]; }

 private:
  std::vector<T> items_;
};

}  // namespace backdoorlab
