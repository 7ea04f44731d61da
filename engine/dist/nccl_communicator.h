// Collectives between GPU replicas through NCCL: one NcclCommunicator per rank (one GPU), its collectives run
// on a communication stream of its own, ordered after the caller's compute stream with events, so backward
// keeps running while a gradient bucket is being reduced. Built only with the CUDA backend; NCCL itself is
// loaded with dlopen on first use (engine/backend/cuda/dynload.h).
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/dist/communicator.h"

namespace trainer::engine::dist {

// A fresh NCCL unique id as NCCL_UNIQUE_ID_BYTES bytes, for a bootstrap that hands it to every rank (MPI:
// rank 0 makes it and broadcasts the bytes).
std::string nccl_unique_id();

// Stream semantics: all_reduce_sum and broadcast enqueue, then return. The communication stream first waits
// for everything the compute stream had enqueued when the call was made, and the compute stream's later work
// waits for the collective, so kernels enqueued afterwards on the compute stream see the result. The host
// must call wait() before it reads a result or synchronizes the compute stream: wait() is where the watchdog
// runs (a plain cudaStreamSynchronize on a hung collective would never return).
//
// Sums are NCCL's: for one rank count, one topology and one buffer size they repeat from run to run, but the
// order of the additions is NCCL's ring or tree, not rank order, so they can differ in the last bits from the
// in-process communicator's.
//
// Threads: one thread drives one communicator at a time (a replica's thread, or its communication thread
// while backward runs), and every rank calls the same collectives in the same order.
//
// CUDA graphs: a collective called while the compute stream is being captured (on the capturing thread) is
// recorded into the graph, with the communication stream joined into the capture; each replay then runs it.
// wait() watches the compute stream too, so a replayed step whose collective hangs still ends in the
// watchdog.
class NcclCommunicator final : public Communicator {
 public:
  // Joins the communicator `unique_id` names as `rank` of `size` on CUDA device `device`; blocks until every
  // rank has joined. `compute_stream` is the stream whose work the collectives follow (a stream of
  // `device`). Used by one process per GPU (MPI); in one process, make_nccl_group makes all ranks at once.
  NcclCommunicator(int rank, int size, const std::string& unique_id, int device, cudaStream_t compute_stream);
  NcclCommunicator(int rank, int size, const ncclUniqueId& unique_id, int device,
                   cudaStream_t compute_stream);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return "nccl"; }

  // In place on device memory of this rank's device; f32, f64 or bf16 (bf16 sums round at each addition).
  void all_reduce_sum(void* data, int64_t count, DType dtype, const CollectiveTag& tag = {}) override;
  // root's `bytes` at `data` (device memory) to every rank, in place.
  void broadcast(void* data, size_t bytes, int root, const CollectiveTag& tag = {}) override;
  // One NCCL group (ncclGroupStart/End) of all-reduces: one launch for a bucket. The weight multiplies on the
  // device, inside the reduction: NCCL's PreMulSum (one op per weight and type, made once and kept).
  void all_reduce_weighted_sum_group(const std::vector<Span>& spans, DType dtype, double weight,
                                     const CollectiveTag& tag = {}) override;
  // ZeRO-1's reduce-scatter and all-gather: one NCCL group of ncclReduce (PreMulSum) calls, one of
  // ncclBroadcast calls from each shard's source to every rank's destination.
  void reduce_weighted_sum_group(const std::vector<Piece>& pieces, DType dtype, double weight,
                                 const CollectiveTag& tag = {}) override;
  void broadcast_group(const std::vector<Copy>& copies, const CollectiveTag& tag = {}) override;
  // Every rank has reached its barrier (an all-reduce of one int) and every collective enqueued before it on
  // this rank has completed.
  void barrier(const CollectiveTag& tag = {}) override;

  // Returns when every collective enqueued so far has completed. The watchdog: a collective still running
  // after timeout() (counted from this call), or an error NCCL reports, aborts the communicator
  // (ncclCommAbort) and throws; CollectiveTimeout names the rank, host, collective, bucket and step. Once
  // aborted, every later call throws.
  void wait(const CollectiveTag& tag = {}) override;

  void defer_compute_waits(bool defer) override { defer_ = defer; }
  void order_compute_after(int bucket) override;

  int device() const { return device_; }
  cudaStream_t stream() const { return comm_stream_; }

  struct Group;  // the ranks made together in one process; owns their NCCL communicators

 private:
  friend std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>&,
                                                                    const std::vector<cudaStream_t>&);
  NcclCommunicator(std::shared_ptr<Group> group, int local, int rank, int size, int device,
                   cudaStream_t compute_stream);

  struct Pending {
    cudaEvent_t done;
    const char* what;
    CollectiveTag tag;
  };
  // A collective's start: this rank's communicator, or the watchdog's end when the group was aborted.
  ncclComm_t begin(const char* what, const CollectiveTag& tag);
  void check(ncclResult_t status, const char* call, const char* what, const CollectiveTag& tag);
  void order_after_compute();
  void enqueued(const char* what, const CollectiveTag& tag, bool compute_waits);
  void reap_completed();
  cudaEvent_t take_event();  // a spare event, or a new one
  void abort_comm();         // aborts every communicator of the group and marks it broken
  [[noreturn]] void timed_out(const char* what, const CollectiveTag& tag);
  ncclComm* comm() const;
  ncclRedOp_t weighted_op(double weight, DType dtype,
                          ncclComm_t comm);  // PreMulSum, made once per weight and type

  std::shared_ptr<Group> group_;
  const int local_;  // this rank's index in group_
  const int rank_;
  const int size_;
  const int device_;
  cudaStream_t compute_stream_;
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t compute_ready_ = nullptr;  // recorded on the compute stream before each collective
  cudaEvent_t capture_join_ = nullptr;   // joins the streams while a CUDA graph is captured
  bool capturing_ = false;               // the collective being enqueued is recorded into a graph
  bool captured_ = false;                // some collective was: wait() then watches the compute stream
  std::deque<Pending> pending_;          // enqueued, not yet seen complete, oldest first
  std::vector<cudaEvent_t> spare_events_;
  int* barrier_word_ = nullptr;  // one device int for barrier()
  int64_t collectives_ = 0;
  // Deferred compute waits: per bucket, the event recorded after its latest collective (the communication
  // thread records, the compute thread waits; bucket_mu_ guards the vector).
  bool defer_ = false;
  std::mutex bucket_mu_;
  std::vector<cudaEvent_t> bucket_done_;
  std::map<std::pair<double, int>, int> weighted_ops_;  // (weight, ncclDataType_t) -> ncclRedOp_t
  const FaultStall stall_ = FaultStall::from_environment();
};

// `devices.size()` ranks in this process, rank r on devices[r] following compute_streams[r], made together
// from one thread (ncclGetUniqueId, then ncclCommInitRank per device inside one NCCL group). Each
// communicator is then driven by its own thread. The NCCL communicators are finalized together when the last
// of the returned communicators is destroyed, from whichever thread that is.
std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>& devices,
                                                           const std::vector<cudaStream_t>& compute_streams);

// The version of the NCCL library that dlopen finds (e.g. 22809 for 2.28.9); throws when it cannot be loaded.
int nccl_version();

}  // namespace trainer::engine::dist
