// The threads of a run's replicas, started once: run(job) runs job(0) on the caller and job(1..n-1) on n - 1
// threads kept for the whole run, so a step costs no thread creation and no allocation.
#pragma once

#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "engine/dist/communicator.h"

namespace trainer::engine::dist {

class ReplicaThreads {
 public:
  explicit ReplicaThreads(int n) : state_(std::make_shared<State>()) {
    state_->errors.resize(n);
    for (int k = 1; k < n; ++k) threads_.emplace_back([s = state_, k] { work(*s, k); });
  }
  ReplicaThreads(const ReplicaThreads&) = delete;
  ReplicaThreads& operator=(const ReplicaThreads&) = delete;

  // A worker still inside a job (stuck in a collective with a stalled replica) is left behind, detached; it
  // keeps the shared state alive.
  ~ReplicaThreads() {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->stop = true;
    }
    state_->cv.notify_all();
    for (std::thread& t : threads_) {
      if (state_->stuck)
        t.detach();
      else
        t.join();
    }
  }

  // Runs job(k) for every replica k and raises the first exception once they have ended. After an exception
  // (a collective's timeout), a replica that has not ended a second later is stuck: the exception is raised
  // without it, and the threads are not used again. A replica still busy `timeout` after job(0) ended is
  // stuck too (its collectives may return before they complete, as NCCL's do, so no collective of the others
  // would time out): the run fails as a collective that timed out, naming it and `tag`.
  template <class F>
  void run(F& job, std::chrono::milliseconds timeout = std::chrono::milliseconds::max(),
           const CollectiveTag& tag = {}) {
    State& s = *state_;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      s.job = &job;
      s.invoke = [](void* f, int k) { (*static_cast<F*>(f))(k); };
      for (auto& e : s.errors) e = nullptr;
      s.busy.assign(s.errors.size(), 1);
      s.running = static_cast<int>(threads_.size());
      ++s.generation;
    }
    s.cv.notify_all();
    std::exception_ptr first;
    try {
      job(0);
    } catch (...) {
      first = std::current_exception();
    }
    std::unique_lock<std::mutex> lock(s.mu);
    auto done = [&] { return s.running == 0; };
    auto failed = [&] {
      for (const auto& e : s.errors)
        if (e) return true;
      return false;
    };
    if (!first) {
      if (timeout == std::chrono::milliseconds::max())
        s.cv.wait(lock, [&] { return done() || failed(); });
      else if (!s.cv.wait_for(lock, timeout, [&] { return done() || failed(); })) {
        s.stuck = true;
        int late = 1;
        while (late < static_cast<int>(s.busy.size()) && !s.busy[late]) ++late;
        lock.unlock();
        fail_collective(CollectiveTimeout(0, host_name(), fmt::format("waiting for replica {}'s step", late),
                                          tag, std::chrono::duration<double>(timeout).count()));
      }
    }
    if (!done()) s.cv.wait_for(lock, std::chrono::seconds(1), done);
    for (const auto& e : s.errors)
      if (e && !first) first = e;
    if (!done()) s.stuck = true;
    if (first) std::rethrow_exception(first);
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    void* job = nullptr;                   // the callable run() was given (type-erased without allocating)
    void (*invoke)(void*, int) = nullptr;  // calls it
    std::vector<std::exception_ptr> errors;
    std::vector<char> busy;  // per replica: inside the current job
    int running = 0;
    int64_t generation = 0;
    bool stop = false, stuck = false;
  };

  static void work(State& s, int k) {
    int64_t seen = 0;
    for (;;) {
      void* job;
      void (*invoke)(void*, int);
      {
        std::unique_lock<std::mutex> lock(s.mu);
        s.cv.wait(lock, [&] { return s.stop || s.generation != seen; });
        if (s.stop) return;
        seen = s.generation;
        job = s.job;
        invoke = s.invoke;
      }
      std::exception_ptr e;
      try {
        invoke(job, k);
      } catch (...) {
        e = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(s.mu);
      s.errors[k] = e;
      s.busy[k] = 0;
      --s.running;
      s.cv.notify_all();
    }
  }

  std::shared_ptr<State> state_;
  std::vector<std::thread> threads_;
};

}  // namespace trainer::engine::dist
