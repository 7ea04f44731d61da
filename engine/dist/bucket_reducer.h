// A replica's communication thread for data parallelism: the bucket-ready hook (on the compute thread)
// weights a finished gradient bucket and queues it; this thread sums it across the replicas while backward
// goes on; the bucket-wait hook blocks the compute thread only where a step reads the bucket. It also
// measures how long the compute thread waited (the communication backward did not hide).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/dist/communicator.h"
#include "engine/train/trace.h"

namespace trainer::engine::dist {

class BucketReducer {
 public:
  struct Grad {
    void* data;
    int64_t count;
    DType dtype;
    int owner =
        -1;  // ZeRO-1: the rank that updates these elements, the only one that needs their sum; -1: all
  };
  struct Bucket {
    std::vector<Grad> grads;
    // Gradient accumulation's sums (TrainingGraph::gradients): reduced on update steps only, as a plain sum,
    // since each replica's graph has weighted its own share already.
    bool accumulated = false;
  };

  BucketReducer(Communicator* comm, Trace* trace, int replica)
      : comm_(comm), trace_(trace), replica_(replica), thread_([this] { loop(); }) {
    comm_->defer_compute_waits(true);  // a GPU's compute stream waits in wait(), not at the enqueue
    if (trace_) {
      trace_->name_thread(2 * replica_, fmt::format("replica {}", replica_));
      trace_->name_thread(2 * replica_ + 1, fmt::format("replica {} communication", replica_));
    }
  }
  ~BucketReducer() { shutdown(); }

  // Stops the thread; false when it did not come back within a second (stuck in a collective with a stalled
  // replica): it is then detached, and the reducer must be left alive (threads may still wait on it).
  bool shutdown() {
    if (!thread_.joinable()) return true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    std::unique_lock<std::mutex> lock(mu_);
    const bool exited = cv_.wait_for(lock, std::chrono::seconds(1), [&] { return exited_; });
    lock.unlock();
    if (exited)
      thread_.join();
    else
      thread_.detach();
    return exited;
  }

  // `update`: false on a step that only accumulates gradients, whose accumulated buckets are not reduced
  // (their hooks then do nothing).
  void begin_step(const std::vector<Bucket>& buckets, int64_t step, double weight, bool update = true) {
    std::lock_guard<std::mutex> lock(mu_);
    progress_ = std::chrono::steady_clock::now();
    skipped_.assign(buckets.size(), false);
    for (size_t b = 0; b < buckets.size(); ++b) skipped_[b] = !update && buckets[b].accumulated;
    done_ = skipped_;
    step_ = step;
    weight_ = weight;
    update_ = update;
  }

  void ready(const Bucket* bucket, int b) {
    if (skipped(b)) return;
    const auto now = Trace::Clock::now();
    if (trace_)
      trace_->instant("bucket ready", 2 * replica_, now,
                      fmt::format("\"bucket\": {}, \"step\": {}", b, step_));
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({bucket, b});
    }
    cv_.notify_all();
  }

  // Called on the compute thread before the first step that reads bucket b: on the CPU the sum is then done;
  // on a GPU it is enqueued, and the compute stream's later work is ordered after it.
  void wait(int b) {
    const auto start = Trace::Clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    // The collective itself times out first where it can, and the replicas' failure is reported from there;
    // this, later, catches one stuck where it cannot (NCCL waiting on the host for a peer that never joins).
    // The limit counts from the communication thread's last progress, not from this call: the buckets queued
    // before b may each take a while.
    const auto limit =
        comm_->timeout() + std::max<std::chrono::milliseconds>(std::chrono::seconds(5), comm_->timeout() / 4);
    while (!error_ && !done_[b]) {
      if (cv_.wait_until(lock, progress_ + limit) == std::cv_status::timeout && !error_ && !done_[b] &&
          std::chrono::steady_clock::now() >= progress_ + limit) {
        const int64_t step = step_;
        lock.unlock();
        fail_collective(CollectiveTimeout(comm_->rank(), host_name(),
                                          "the reduction of a gradient or statistics bucket", {b, step},
                                          std::chrono::duration<double>(limit).count()));
      }
    }
    waited_ += Trace::Clock::now() - start;
    if (error_) std::rethrow_exception(error_);
    const bool skip = skipped_[b];
    lock.unlock();
    if (!skip) comm_->order_compute_after(b);
  }

  // While a GPU step is captured into a CUDA graph (Executable::set_bucket_capture_hooks): the bucket's
  // collectives are enqueued on the calling (capturing) thread, into the graph, instead of on the
  // communication thread; and the compute stream's later work is ordered after them.
  void reduce_now(const Bucket* bucket, int b) {
    int64_t step;
    double weight;
    {
      std::lock_guard<std::mutex> lock(mu_);  // also orders this after the communication thread's last use
      if (skipped_[b]) return;
      step = step_;
      weight = weight_;
    }
    reduce(bucket, b, step, weight);
  }
  void order_after(int b) {
    if (!skipped(b)) comm_->order_compute_after(b);
  }
  // What a captured reduction depends on: this step's weight (a graph captured with another replays wrong),
  // and whether it reduces the accumulated buckets (negative where it does not).
  double captured_weight() {
    std::lock_guard<std::mutex> lock(mu_);
    return update_ ? weight_ : -1 - weight_;
  }

  // Sets a training plan's hooks: buckets are reduced on this reducer's thread as backward produces them, or
  // recorded into the step's CUDA graph when the executable captures one.
  void attach(Executable& e, const std::vector<Bucket>* buckets) {
    e.set_bucket_ready_hook([this, buckets](int b) { ready(&(*buckets)[b], b); });
    e.set_bucket_wait_hook([this](int b) { wait(b); });
    e.set_bucket_capture_hooks([this, buckets](int b) { reduce_now(&(*buckets)[b], b); },
                               [this](int b) { order_after(b); }, [this] { return captured_weight(); });
  }

  // Time the compute thread spent in wait() since the last reset: communication that backward did not hide.
  double exposed_seconds() const { return std::chrono::duration<double>(waited_).count(); }
  void reset_exposed() { waited_ = {}; }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || head_ < queue_.size(); });
      if (head_ == queue_.size()) break;
      auto [bucket, b] = queue_[head_++];
      if (head_ == queue_.size()) {  // drained: reuse the storage, so steady steps allocate nothing
        queue_.clear();
        head_ = 0;
      }
      const int64_t step = step_;
      const double weight = weight_;
      lock.unlock();
      std::exception_ptr error;
      try {
        reduce(bucket, b, step, weight);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      progress_ = std::chrono::steady_clock::now();
      if (error) error_ = error;
      if (b < static_cast<int>(done_.size())) done_[b] = true;
      cv_.notify_all();
      if (error_) break;
    }
    exited_ = true;
    cv_.notify_all();
  }

  // The bucket's collectives, on the calling thread: one per dtype in it (one in practice, gradients are
  // f32).
  void reduce(const Bucket* bucket, int b, int64_t step, double weight) {
    const auto start = Trace::Clock::now();
    if (bucket->accumulated) weight = 1;
    for (const Part& part : parts_of(bucket)) {
      if (part.owned)
        comm_->reduce_weighted_sum_group(part.pieces, part.dtype, weight, {b, step});
      else
        comm_->all_reduce_weighted_sum_group(part.spans, part.dtype, weight, {b, step});
    }
    if (trace_)
      trace_->span("reduce bucket", 2 * replica_ + 1, start, Trace::Clock::now(),
                   fmt::format("\"bucket\": {}, \"step\": {}", b, step));
  }

  // A bucket's gradients by dtype, each part one collective: an all-reduce when every rank needs them, a
  // reduce-scatter when each has an owner (ZeRO-1 gives every gradient of a bucket owners, or none). Worked
  // out the first time the bucket is reduced, not every step.
  struct Part {
    DType dtype;
    bool owned;
    std::vector<Communicator::Span> spans;
    std::vector<Communicator::Piece> pieces;
  };
  const std::vector<Part>& parts_of(const Bucket* bucket) {
    auto [it, fresh] = parts_.try_emplace(bucket);
    if (fresh)
      for (const Grad& g : bucket->grads) {
        TRAINER_ASSERT((g.owner >= 0) == (bucket->grads.front().owner >= 0),
                       "a bucket with gradients both owned and not");
        auto part = std::find_if(it->second.begin(), it->second.end(),
                                 [&](const Part& p) { return p.dtype == g.dtype; });
        if (part == it->second.end()) part = it->second.insert(part, Part{g.dtype, g.owner >= 0, {}, {}});
        part->spans.push_back({g.data, g.count});
        part->pieces.push_back({g.data, g.count, g.owner});
      }
    return it->second;
  }

  Communicator* comm_;
  Trace* trace_;
  const int replica_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<const Bucket*, int>> queue_;  // [head_, size) waiting
  size_t head_ = 0;
  std::unordered_map<const Bucket*, std::vector<Part>> parts_;  // see parts_of
  bool skipped(int b) {
    std::lock_guard<std::mutex> lock(mu_);
    return skipped_[b];
  }

  std::vector<bool> done_;
  std::vector<bool> skipped_;  // this step's buckets left alone (begin_step's `update`)
  bool update_ = true;
  std::chrono::steady_clock::time_point progress_ =
      std::chrono::steady_clock::now();  // the last bucket reduced
  int64_t step_ = 0;
  double weight_ = 1;
  bool stop_ = false, exited_ = false;
  std::exception_ptr error_;
  Trace::Clock::duration waited_{};
  std::thread thread_;  // last: it starts once everything above exists
};

}  // namespace trainer::engine::dist
