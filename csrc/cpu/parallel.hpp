// Thread control and exception capture shared by every CPU kernel.
//
// The kernels run OpenMP parallel loops with an explicit num_threads(...) taken from one
// process-wide setting (set_num_threads), not from the calling thread's OpenMP state: a kernel
// called from a Python worker thread then uses the same count as one called from the main thread.
// An exception must never leave an OpenMP region (that calls std::terminate), so loop bodies
// catch into an ErrorSlot and the caller rethrows after the region; the slot keeps the error of
// the lowest work index so the message does not depend on thread timing.
#pragma once

#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>

namespace backdoorlab {

bool openmp_enabled();
int max_threads();              // threads the OpenMP runtime offers
int num_threads();              // threads the kernels use (set_num_threads, default max_threads())
void set_num_threads(int n);    // n >= 1

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
  }
  bool failed() const { return static_cast<bool>(error_); }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::int64_t index_ = std::numeric_limits<std::int64_t>::max();
  std::exception_ptr error_;
};

}  // namespace backdoorlab
