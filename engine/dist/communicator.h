// Collectives between the replicas of a data-parallel run: one Communicator per replica (rank). Kinds:
// in-process threads (CPU replicas, deterministic reduction order), MPI (processes and machines), NCCL
// (GPUs). Every collective is called by every rank in the same order; one that does not complete within the
// timeout throws CollectiveTimeout on every rank that is still waiting, naming the rank, the collective and
// what it reduced.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/ir/dtype.h"
#include "engine/util/error.h"

namespace trainer::engine::dist {

// What a collective is for, printed by the watchdog: "bucket 3 of step 120".
struct CollectiveTag {
  int bucket = -1;
  int64_t step = -1;
  std::string str() const;
};

// A collective that did not finish in time: the run cannot go on, and every rank that can still speak says
// so.
class CollectiveTimeout : public RuntimeError {
 public:
  CollectiveTimeout(int rank, const std::string& host, const std::string& collective,
                    const CollectiveTag& tag, double seconds);
  int rank() const { return rank_; }

 private:
  int rank_;
};

// This machine's name, for the watchdog's lines.
std::string host_name();

// How a run ends when a collective failed where unwinding the stack is not safe: on GPUs, destructors would
// wait for streams stuck behind a collective whose peer is gone. The program installs a handler that reports
// the error, then runs `before_exit` (an NCCL group aborts its communicators there), then ends the process
// (and the MPI world) without unwinding. Without a handler, before_exit runs and the error is thrown: then
// nothing a stuck replica's job uses may be destroyed (ReplicaThreads).
using FatalCollectiveHandler = void (*)(const RuntimeError& error, const std::function<void()>& before_exit);
void set_fatal_collective_handler(FatalCollectiveHandler handler);
FatalCollectiveHandler fatal_collective_handler();
template <class Error>
[[noreturn]] void fail_collective(const Error& error, const std::function<void()>& before_exit = {}) {
  if (FatalCollectiveHandler handler = fatal_collective_handler()) handler(error, before_exit);
  if (before_exit) before_exit();
  throw error;
}

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string kind() const = 0;  // "threads", "mpi", "nccl"

  // data[i] = sum over ranks of data[i], in place, for `count` elements of `dtype` (f32 or f64) in the memory
  // of this rank's backend. The sum is taken in rank order, so results do not depend on timing.
  virtual void all_reduce_sum(void* data, int64_t count, DType dtype, const CollectiveTag& tag = {}) = 0;
  // The weighted sum of several tensors of one dtype as one collective (a gradient bucket): every rank passes
  // the same counts in the same order. The in-process group makes one rendezvous for all, MPI one call for
  // the small tensors and one per large one, NCCL one group of calls.
  struct Span {
    void* data;
    int64_t count;
  };
  virtual void all_reduce_weighted_sum_group(const std::vector<Span>& spans, DType dtype, double weight,
                                             const CollectiveTag& tag = {}) = 0;
  // Every rank receives root's `bytes` at data.
  virtual void broadcast(void* data, size_t bytes, int root, const CollectiveTag& tag = {}) = 0;

  // ZeRO-1's two collectives. Every rank passes the same list (the same counts, roots and order); data
  // pointers are its own.
  //
  // The weighted sum of each piece lands at the piece's root only (a reduce-scatter of a gradient bucket);
  // the other ranks' buffers are left as they were or scaled by their weight.
  struct Piece {
    void* data;
    int64_t count;
    int root;
  };
  virtual void reduce_weighted_sum_group(const std::vector<Piece>& pieces, DType dtype, double weight,
                                         const CollectiveTag& tag = {}) = 0;
  // Each copy's `bytes` at its root's `src` land at every rank's `dst`, the root's own included (the
  // all-gather of the updated parameter shards); `src` is read at the root only.
  struct Copy {
    const void* src;
    void* dst;
    size_t bytes;
    int root;
  };
  virtual void broadcast_group(const std::vector<Copy>& copies, const CollectiveTag& tag = {}) = 0;
  virtual void barrier(const CollectiveTag& tag = {}) = 0;
  // Stream-ordered communicators (NCCL): a collective's results are waited for by the compute stream as soon
  // as it is enqueued, unless deferred. Deferred, the collectives tagged with a bucket are waited for where
  // order_compute_after(bucket) is called, on the thread that drives the compute stream (the bucket reducer:
  // before the first kernel that reads the bucket), so the rest of backward runs meanwhile. Nothing for the
  // others, whose collectives complete in the call.
  virtual void defer_compute_waits(bool defer) {}
  virtual void order_compute_after(int bucket) {}
  // Blocks until this rank's collectives enqueued so far have completed, within the timeout (the watchdog of
  // communicators whose collectives return before they finish, like NCCL's); the others complete in the call.
  virtual void wait(const CollectiveTag& tag = {}) {}

  // How long a collective may wait for the other ranks before the watchdog fires.
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 protected:
  std::chrono::milliseconds timeout_{300000};
};

// N ranks in N threads of one process. Each collective is two rendezvous: every rank publishes its buffer,
// rank r sums slice r over all ranks in rank order, then every rank copies the summed slices back. The group
// must outlive its communicators.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size);
  ~ThreadGroup();
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  int size() const;
  std::unique_ptr<Communicator> communicator(int rank);

  struct State;

 private:
  std::unique_ptr<State> state_;
};

// Every rank names the device it drives (a GPU's PCI bus id); this rank's host name is added. Throws the same
// InputError on every rank when two ranks would drive one device (a launcher that gave every task all of a
// machine's GPUs and more tasks than GPUs, say), before any of them starts a collective on it. `launcher`
// ("srun", "mpirun") goes into the message. `world` works on host memory.
void check_devices_distinct(Communicator& world, const std::string& device, const std::string& launcher);

// data[i] *= factor for host memory (the CPU replicas' gradients before their weighted sum); nothing for 1.
void scale_in_place(void* data, int64_t count, DType dtype, double factor);

// Test-only fault injection: the rank given stalls for `seconds` before its collective number `collective`
// (counted from 0 on that rank), as a hung or dead rank would. Set from
// TRAINER_FAULT_STALL=rank:collective:seconds.
struct FaultStall {
  int rank = -1;
  int64_t collective = -1;
  double seconds = 0;
  static FaultStall from_environment();
};

}  // namespace trainer::engine::dist
