#include "thread_pool.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace vsqe {
namespace dcn {
namespace {

class Pool {
 public:
  Pool() : pid_(getpid()) {}

  // Workers are never joined: the pool lives until process exit (joining threads from a
  // static destructor at interpreter shutdown is a classic source of hangs).
  void run(int nthreads, int ntasks, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> serial(run_mutex_);
    grow(nthreads - 1);
    const int helpers = nthreads - 1;
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      ntasks_ = ntasks;
      next_.store(0);
      pending_helpers_ = helpers;
      wanted_helpers_ = helpers;
      error_ = nullptr;
      ++generation_;
    }
    cv_work_.notify_all();
    work();  // the caller takes tasks too
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [&] { return pending_helpers_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  pid_t pid() const { return pid_; }

 private:
  void grow(int n) {
    while (int(workers_.size()) < n) {
      const int id = int(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
      workers_.back().detach();
    }
  }

  void loop(int id) {
    unsigned long seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_work_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= wanted_helpers_) continue;  // this job asked for fewer helpers
      }
      work();
      std::lock_guard<std::mutex> lk(m_);
      if (--pending_helpers_ == 0) cv_done_.notify_one();
    }
  }

  void work() {
    for (;;) {
      const int t = next_.fetch_add(1);
      if (t >= ntasks_) return;
      try {
        (*fn_)(t);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_m_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  const pid_t pid_;
  std::mutex run_mutex_;
  std::mutex m_, err_m_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  unsigned long generation_ = 0;
  const std::function<void(int)>* fn_ = nullptr;
  int ntasks_ = 0;
  int pending_helpers_ = 0;
  int wanted_helpers_ = 0;
  std::atomic<int> next_{0};
  std::exception_ptr error_;
};

Pool* g_pool = nullptr;
std::mutex g_pool_mutex;

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  // After fork() the child has none of the parent's workers: start a fresh pool and leak the
  // old one (its mutexes may be in any state).
  if (!g_pool || g_pool->pid() != getpid()) g_pool = new Pool();
  return *g_pool;
}

}  // namespace

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

void parallel_for(int nthreads, int ntasks, const std::function<void(int)>& fn) {
  if (ntasks <= 0) return;
  if (nthreads > ntasks) nthreads = ntasks;
  if (nthreads <= 1) {
    for (int t = 0; t < ntasks; ++t) fn(t);
    return;
  }
  pool().run(nthreads, ntasks, fn);
}

}  // namespace dcn
}  // namespace vsqe
