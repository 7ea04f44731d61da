// NcclCommunicator: NCCL collectives on a communication stream ordered after the compute stream with events,
// and the watchdog that polls their completion and aborts the communicator when a rank stops answering.
#include "engine/dist/nccl_communicator.h"

#include <cuda_bf16.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/backend/cuda/dynload.h"

namespace trainer::engine::dist {

namespace lib = cuda::lib;

namespace {

[[noreturn]] void nccl_failed(ncclResult_t status, const char* call, const char* file, int line) {
  const lib::Nccl& n = lib::nccl();
  // The last error's text says more than the status (which peer, which transport); its argument is unused.
  const char* last = n.ncclGetLastError(nullptr);
  throw RuntimeError(fmt::format("NCCL error {} ({}) in {} at {}:{}{}{}", static_cast<int>(status),
                                 n.ncclGetErrorString(status), call, file, line, last && *last ? ": " : "",
                                 last ? last : ""));
}

#define TRAINER_NCCL_CHECK(call)                                                                           \
  do {                                                                                                     \
    ncclResult_t trainer_nccl_status_ = (call);                                                            \
    if (trainer_nccl_status_ != ncclSuccess) nccl_failed(trainer_nccl_status_, #call, __FILE__, __LINE__); \
  } while (0)

// Makes `device` current for the scope and restores the caller's device after: the replica threads and the
// backend keep their own notion of the current device. `check` false: for destructors, which must not throw.
class DeviceScope {
 public:
  explicit DeviceScope(int device, bool check = true) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ == device) return;
    const cudaError_t status = cudaSetDevice(device);
    if (check) TRAINER_CUDA_CHECK(status);
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::bf16:
      return ncclBfloat16;
    default:
      TRAINER_ASSERT(false, "NCCL all_reduce_sum of {}", dtype_name(dtype));
  }
  return ncclFloat32;
}

// ncclGroupStart now, ncclGroupEnd at end() or, after an error, when it goes out of scope: a group left open
// would keep this thread's later NCCL calls queued, never launched.
class NcclGroup {
 public:
  NcclGroup() { TRAINER_NCCL_CHECK(lib::nccl().ncclGroupStart()); }
  ~NcclGroup() {
    if (open_) lib::nccl().ncclGroupEnd();
  }
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  ncclResult_t end() {
    open_ = false;
    return lib::nccl().ncclGroupEnd();
  }

 private:
  bool open_ = true;
};

ncclUniqueId parse_unique_id(const std::string& bytes) {
  if (bytes.size() != sizeof(ncclUniqueId))
    throw RuntimeError(fmt::format("an NCCL unique id is {} bytes; the bootstrap handed over {}",
                                   sizeof(ncclUniqueId), bytes.size()));
  ncclUniqueId id;
  std::memcpy(&id, bytes.data(), sizeof id);
  return id;
}

}  // namespace

// The NCCL communicators of the ranks made together in this process. NCCL's finalization is a collective of
// the ranks of one node, so a thread that finalized one rank alone would wait for the others: they are
// finalized together, in one NCCL group, when the last of their NcclCommunicators is gone.
struct NcclCommunicator::Group {
  // nullptr once aborted. Atomic: another rank's thread of this process may abort them all.
  std::vector<std::atomic<ncclComm_t>> comms;
  std::vector<int> devices;
  // A rank of this process failed or timed out: the others stop too (a later collective of theirs could never
  // complete), and the survivors are aborted, not finalized, at the end.
  std::atomic<bool> broken{false};
  std::mutex abort_mu;  // guards taking the comms out for an abort

  ~Group() {
    const lib::Nccl& n = lib::nccl();
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    bool finalized = false;
    if (!broken) {
      ncclResult_t status = n.ncclGroupStart();
      for (size_t i = 0; i < comms.size() && status == ncclSuccess; ++i) {
        if (!comms[i]) continue;
        if (cudaSetDevice(devices[i]) != cudaSuccess) status = ncclUnhandledCudaError;
        if (status == ncclSuccess) status = n.ncclCommFinalize(comms[i]);
      }
      const ncclResult_t end = n.ncclGroupEnd();
      finalized = status == ncclSuccess && end == ncclSuccess;
    }
    // After a finalization, destroying is local to each rank; without one, aborting does not wait for work
    // in flight. Grouped too: NCCL may make the ranks of one process wait for each other here as well.
    n.ncclGroupStart();
    for (size_t i = 0; i < comms.size(); ++i) {
      if (!comms[i]) continue;
      cudaSetDevice(devices[i]);
      if (finalized)
        n.ncclCommDestroy(comms[i]);
      else
        n.ncclCommAbort(comms[i]);
    }
    n.ncclGroupEnd();
    if (previous >= 0) cudaSetDevice(previous);
  }
};

std::string nccl_unique_id() {
  ncclUniqueId id;
  TRAINER_NCCL_CHECK(lib::nccl().ncclGetUniqueId(&id));
  return std::string(id.internal, sizeof id.internal);
}

int nccl_version() {
  int version = 0;
  TRAINER_NCCL_CHECK(lib::nccl().ncclGetVersion(&version));
  return version;
}

namespace {

std::shared_ptr<NcclCommunicator::Group> join_one(int rank, int size, const ncclUniqueId& id, int device) {
  TRAINER_ASSERT(size >= 1 && rank >= 0 && rank < size, "NCCL rank {} of {}", rank, size);
  auto group = std::make_shared<NcclCommunicator::Group>();
  group->devices = {device};
  group->comms = std::vector<std::atomic<ncclComm_t>>(1);
  DeviceScope scope(device);  // ncclCommInitRank binds the communicator to the current device
  ncclComm_t comm = nullptr;
  const ncclResult_t status = lib::nccl().ncclCommInitRank(&comm, size, id, rank);
  group->comms[0] = comm;
  if (status != ncclSuccess) {
    group->broken = true;  // abort, not finalize, whatever was made
    nccl_failed(status, "ncclCommInitRank", __FILE__, __LINE__);
  }
  return group;
}

}  // namespace

NcclCommunicator::NcclCommunicator(int rank, int size, const std::string& unique_id, int device,
                                   cudaStream_t compute_stream)
    : NcclCommunicator(rank, size, parse_unique_id(unique_id), device, compute_stream) {}

NcclCommunicator::NcclCommunicator(int rank, int size, const ncclUniqueId& unique_id, int device,
                                   cudaStream_t compute_stream)
    : NcclCommunicator(join_one(rank, size, unique_id, device), 0, rank, size, device, compute_stream) {}

NcclCommunicator::NcclCommunicator(std::shared_ptr<Group> group, int local, int rank, int size, int device,
                                   cudaStream_t compute_stream)
    : group_(std::move(group)),
      local_(local),
      rank_(rank),
      size_(size),
      device_(device),
      compute_stream_(compute_stream) {
  DeviceScope scope(device_);
  try {
    // The highest priority: the reduction kernels are small and wait on peers, and they should not queue
    // behind backward's kernels that the compute stream keeps launching meanwhile.
    int least = 0, greatest = 0;
    TRAINER_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    TRAINER_CUDA_CHECK(cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, greatest));
    TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
    TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&capture_join_, cudaEventDisableTiming));
    TRAINER_CUDA_CHECK(cudaMalloc(&barrier_word_, sizeof(int)));
    TRAINER_CUDA_CHECK(cudaMemsetAsync(barrier_word_, 0, sizeof(int), comm_stream_));
  } catch (...) {
    if (barrier_word_) cudaFree(barrier_word_);
    if (compute_ready_) cudaEventDestroy(compute_ready_);
    if (capture_join_) cudaEventDestroy(capture_join_);
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
    group_->broken = true;  // the other ranks cannot finish a collective with this one
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() {
  DeviceScope scope(device_, false);
  // Let the collectives in flight finish, within the timeout, so the group can be finalized; a rank that
  // does not answer by then gets the communicator aborted instead. A destructor does not throw.
  if (comm() && !pending_.empty()) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (!pending_.empty()) {
      const cudaError_t status = cuda::query_event(pending_.front().done);
      if (status == cudaSuccess) {
        spare_events_.push_back(pending_.front().done);
        pending_.pop_front();
        continue;
      }
      if (status != cudaErrorNotReady || group_->broken || std::chrono::steady_clock::now() >= deadline) {
        abort_comm();
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  if (ncclComm_t c = comm())
    for (const auto& [key, op] : weighted_ops_) lib::nccl().ncclRedOpDestroy(static_cast<ncclRedOp_t>(op), c);
  for (const Pending& p : pending_) cudaEventDestroy(p.done);
  for (cudaEvent_t e : spare_events_) cudaEventDestroy(e);
  for (cudaEvent_t e : bucket_done_) cudaEventDestroy(e);
  cudaEventDestroy(compute_ready_);
  cudaEventDestroy(capture_join_);
  cudaFree(barrier_word_);
  cudaStreamDestroy(comm_stream_);
}

ncclComm* NcclCommunicator::comm() const {
  return group_->comms[local_].load();
}

ncclComm_t NcclCommunicator::begin(const char* what, const CollectiveTag& tag) {
  // Another rank of this process failed, and the group was aborted: this collective could never complete.
  ncclComm_t c = comm();
  if (group_->broken || !c) timed_out(what, tag);
  if (stall_.rank == rank_ && stall_.collective == collectives_)
    std::this_thread::sleep_for(std::chrono::duration<double>(stall_.seconds));
  ++collectives_;
  return c;
}

void NcclCommunicator::order_after_compute() {
  // While the compute stream is captured into a CUDA graph (on this thread), the event and the wait below
  // bring the communication stream into the capture: the collectives become nodes of the graph.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TRAINER_CUDA_CHECK(cudaStreamIsCapturing(compute_stream_, &capture));
  capturing_ = capture == cudaStreamCaptureStatusActive;
  TRAINER_CUDA_CHECK(cudaEventRecord(compute_ready_, compute_stream_));
  TRAINER_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, compute_ready_, 0));
}

void NcclCommunicator::enqueued(const char* what, const CollectiveTag& tag, bool compute_waits) {
  const bool capturing = capturing_;
  capturing_ = false;  // set by order_after_compute for the one collective that follows it
  // Deferred: the compute stream waits later, before the bucket's first reader (order_compute_after).
  const bool deferred = compute_waits && defer_ && tag.bucket >= 0;
  if (deferred) {
    std::lock_guard<std::mutex> lock(bucket_mu_);
    // The events are made by the first, eager step; a capture only records them.
    TRAINER_ASSERT(!capturing || tag.bucket < static_cast<int>(bucket_done_.size()),
                   "bucket {} captured before it was ever reduced", tag.bucket);
    while (static_cast<int>(bucket_done_.size()) <= tag.bucket) {
      cudaEvent_t e = nullptr;
      TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      bucket_done_.push_back(e);
    }
    TRAINER_CUDA_CHECK(cudaEventRecord(bucket_done_[tag.bucket], comm_stream_));
  }
  if (capturing) {
    // Recorded into a graph, not run: there is no completion to watch now (wait() watches each replay's
    // compute stream). The compute stream joins the communication stream before the capture ends: at the
    // bucket's first reader when deferred, else here.
    captured_ = true;
    if (!deferred) {
      TRAINER_CUDA_CHECK(cudaEventRecord(capture_join_, comm_stream_));
      TRAINER_CUDA_CHECK(cudaStreamWaitEvent(compute_stream_, capture_join_, 0));
    }
    return;
  }
  cudaEvent_t done = take_event();
  pending_.push_back(Pending{done, what, tag});
  TRAINER_CUDA_CHECK(cudaEventRecord(done, comm_stream_));
  if (compute_waits && !deferred) TRAINER_CUDA_CHECK(cudaStreamWaitEvent(compute_stream_, done, 0));
  reap_completed();
}

void NcclCommunicator::order_compute_after(int bucket) {
  std::lock_guard<std::mutex> lock(bucket_mu_);
  if (bucket < 0 || bucket >= static_cast<int>(bucket_done_.size())) return;  // nothing enqueued for it
  DeviceScope scope(device_);
  TRAINER_CUDA_CHECK(cudaStreamWaitEvent(compute_stream_, bucket_done_[bucket], 0));
}

cudaEvent_t NcclCommunicator::take_event() {
  if (spare_events_.empty()) {
    cudaEvent_t e = nullptr;
    TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  cudaEvent_t e = spare_events_.back();
  spare_events_.pop_back();
  return e;
}

// Recycles the events of collectives already complete, so a caller that waits once per step keeps few.
void NcclCommunicator::reap_completed() {
  while (pending_.size() > 1 && cuda::query_event(pending_.front().done) == cudaSuccess) {
    spare_events_.push_back(pending_.front().done);
    pending_.pop_front();
  }
}

void NcclCommunicator::abort_comm() {
  // Every rank of this process: a survivor's kernels would otherwise spin on the dead peer forever, and
  // whatever waits for its stream with them. Each abort on a thread of its own, waited for a while only:
  // ncclCommAbort sets the flag that makes the kernels return at once, but may then wait until no CUDA graph
  // holds the communicator's work, and the graphs outlive this call.
  std::vector<std::pair<ncclComm_t, int>> live;
  {
    std::lock_guard<std::mutex> lock(group_->abort_mu);
    group_->broken = true;
    for (size_t i = 0; i < group_->comms.size(); ++i)
      if (ncclComm_t c = group_->comms[i].exchange(nullptr)) live.emplace_back(c, group_->devices[i]);
  }
  if (live.empty()) return;
  auto left = std::make_shared<std::atomic<int>>(static_cast<int>(live.size()));
  for (const auto& [c, device] : live)
    std::thread([c, device, left] {
      cudaSetDevice(device);
      lib::nccl().ncclCommAbort(c);
      --*left;
    }).detach();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (*left > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void NcclCommunicator::timed_out(const char* what, const CollectiveTag& tag) {
  // Said before the abort, which may take seconds.
  fail_collective(
      CollectiveTimeout(rank_, host_name(), what, tag, std::chrono::duration<double>(timeout_).count()),
      [this] { abort_comm(); });
}

void NcclCommunicator::check(ncclResult_t status, const char* call, const char* what,
                             const CollectiveTag& tag) {
  if (status == ncclSuccess) return;
  // After another rank of this process aborted the group, a failing call is that abort: the run is ending.
  if (group_->broken) timed_out(what, tag);
  nccl_failed(status, call, __FILE__, __LINE__);
}

void NcclCommunicator::all_reduce_sum(void* data, int64_t count, DType dtype, const CollectiveTag& tag) {
  const ncclDataType_t type = nccl_type(dtype);
  TRAINER_ASSERT(count >= 0, "all_reduce_sum of {} elements", count);
  DeviceScope scope(device_);
  ncclComm_t c = begin("all_reduce", tag);
  if (count == 0) return;  // every rank skips it alike: counts are equal on all ranks
  cudaPointerAttributes attr{};
  TRAINER_CUDA_CHECK(cudaPointerGetAttributes(&attr, data));
  TRAINER_ASSERT(
      (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) && attr.device == device_,
      "NCCL all_reduce_sum of memory that is not on device {}", device_);
  order_after_compute();
  check(lib::nccl().ncclAllReduce(data, data, static_cast<size_t>(count), type, ncclSum, c, comm_stream_),
        "ncclAllReduce", "all_reduce", tag);
  enqueued("all_reduce", tag, true);
}

void NcclCommunicator::all_reduce_weighted_sum_group(const std::vector<Span>& spans, DType dtype,
                                                     double weight, const CollectiveTag& tag) {
  const ncclDataType_t type = nccl_type(dtype);
  DeviceScope scope(device_);
  ncclComm_t c = begin("all_reduce", tag);
  const ncclRedOp_t op = weight == 1.0 ? ncclSum : weighted_op(weight, dtype, c);
  order_after_compute();
  NcclGroup group;
  for (const Span& s : spans)
    if (s.count > 0)
      check(
          lib::nccl().ncclAllReduce(s.data, s.data, static_cast<size_t>(s.count), type, op, c, comm_stream_),
          "ncclAllReduce", "all_reduce", tag);
  check(group.end(), "ncclGroupEnd", "all_reduce", tag);
  enqueued("all_reduce", tag, true);
}

ncclRedOp_t NcclCommunicator::weighted_op(double weight, DType dtype, ncclComm_t c) {
  const ncclDataType_t type = nccl_type(dtype);
  // The scalar's type is the data's: f32 weights for f32 data, bf16 for bf16 (it rounds), f64 for f64.
  auto key = std::make_pair(weight, static_cast<int>(type));
  auto it = weighted_ops_.find(key);
  if (it == weighted_ops_.end()) {
    ncclRedOp_t op;
    float wf = static_cast<float>(weight);
    __nv_bfloat16 wb = __float2bfloat16(wf);
    void* scalar = dtype == DType::f64    ? static_cast<void*>(&weight)
                   : dtype == DType::bf16 ? static_cast<void*>(&wb)
                                          : static_cast<void*>(&wf);
    TRAINER_NCCL_CHECK(lib::nccl().ncclRedOpCreatePreMulSum(&op, scalar, type, ncclScalarHostImmediate, c));
    it = weighted_ops_.emplace(key, static_cast<int>(op)).first;
  }
  return static_cast<ncclRedOp_t>(it->second);
}

void NcclCommunicator::reduce_weighted_sum_group(const std::vector<Piece>& pieces, DType dtype, double weight,
                                                 const CollectiveTag& tag) {
  const ncclDataType_t type = nccl_type(dtype);
  DeviceScope scope(device_);
  ncclComm_t c = begin("reduce", tag);
  const ncclRedOp_t op = weight == 1.0 ? ncclSum : weighted_op(weight, dtype, c);
  for (const Piece& p : pieces)
    TRAINER_ASSERT(p.root >= 0 && p.root < size_, "reduce to rank {} of {}", p.root, size_);
  order_after_compute();
  NcclGroup group;
  for (const Piece& p : pieces)
    if (p.count > 0)
      check(lib::nccl().ncclReduce(p.data, p.data, static_cast<size_t>(p.count), type, op, p.root, c,
                                   comm_stream_),
            "ncclReduce", "reduce", tag);
  check(group.end(), "ncclGroupEnd", "reduce", tag);
  enqueued("reduce", tag, true);
}

void NcclCommunicator::broadcast_group(const std::vector<Copy>& copies, const CollectiveTag& tag) {
  DeviceScope scope(device_);
  ncclComm_t comm = begin("broadcast", tag);
  for (const Copy& c : copies)
    TRAINER_ASSERT(c.root >= 0 && c.root < size_, "broadcast from rank {} of {}", c.root, size_);
  order_after_compute();
  NcclGroup group;
  for (const Copy& c : copies) {
    // The send buffer is read at the root only; the others pass their destination.
    const void* src = c.root == rank_ ? c.src : c.dst;
    if (c.bytes > 0)
      check(lib::nccl().ncclBroadcast(src, c.dst, c.bytes, ncclUint8, c.root, comm, comm_stream_),
            "ncclBroadcast", "broadcast", tag);
  }
  check(group.end(), "ncclGroupEnd", "broadcast", tag);
  enqueued("broadcast", tag, true);
}

void NcclCommunicator::broadcast(void* data, size_t bytes, int root, const CollectiveTag& tag) {
  TRAINER_ASSERT(root >= 0 && root < size_, "broadcast from rank {} of {}", root, size_);
  DeviceScope scope(device_);
  ncclComm_t c = begin("broadcast", tag);
  if (bytes == 0) return;
  order_after_compute();
  check(lib::nccl().ncclBroadcast(data, data, bytes, ncclUint8, root, c, comm_stream_), "ncclBroadcast",
        "broadcast", tag);
  enqueued("broadcast", tag, true);
}

void NcclCommunicator::barrier(const CollectiveTag& tag) {
  DeviceScope scope(device_);
  ncclComm_t c = begin("barrier", tag);
  // Not ordered after the compute stream: a barrier is about the ranks' hosts, not this rank's kernels. It
  // follows this rank's earlier collectives on the communication stream.
  check(lib::nccl().ncclAllReduce(barrier_word_, barrier_word_, 1, ncclInt32, ncclSum, c, comm_stream_),
        "ncclAllReduce", "barrier", tag);
  enqueued("barrier", tag, false);
  wait(tag);
}

void NcclCommunicator::wait(const CollectiveTag& tag) {
  DeviceScope scope(device_);
  if (pending_.empty() && !captured_) return;
  if (!comm())
    timed_out("waiting for the collectives", tag);  // another rank of this process aborted the group
  if (captured_) {
    // The compute stream's work so far: a step replayed from a CUDA graph holds its collectives, and its
    // completion is what there is to watch. (Only once a step has been captured: otherwise the collectives
    // themselves are watched, and the compute stream may run on while the next batch is written.)
    cudaEvent_t marker = take_event();
    pending_.push_back(Pending{marker, "the step's collectives", tag});
    TRAINER_CUDA_CHECK(cudaEventRecord(marker, compute_stream_));
  }
  const lib::Nccl& n = lib::nccl();
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  // Short polls first: a bucket reduced while backward ran is often done or nearly done.
  auto pause = std::chrono::microseconds(5);
  while (!pending_.empty()) {
    const Pending& p = pending_.front();
    const CollectiveTag& named = p.tag.step >= 0 || p.tag.bucket >= 0 ? p.tag : tag;
    const cudaError_t status = cuda::query_event(p.done);
    if (status == cudaSuccess) {
      spare_events_.push_back(p.done);
      pending_.pop_front();
      continue;
    }
    if (status != cudaErrorNotReady)
      fail_collective(RuntimeError(fmt::format("rank {} on {}: {} ({}) failed on the GPU: {}", rank_,
                                               host_name(), p.what, named.str(), cudaGetErrorString(status))),
                      [this] { abort_comm(); });
    const ncclComm_t c = comm();
    if (!c) timed_out(p.what, named);  // another rank of this process aborted the group
    ncclResult_t async = ncclSuccess;
    check(n.ncclCommGetAsyncError(c, &async), "ncclCommGetAsyncError", p.what, named);
    if (async != ncclSuccess && async != ncclInProgress)
      fail_collective(
          RuntimeError(fmt::format("rank {} on {}: {} ({}) failed in NCCL: {}", rank_, host_name(), p.what,
                                   named.str(), n.ncclGetErrorString(async))),
          [this] { abort_comm(); });
    if (group_->broken || std::chrono::steady_clock::now() >= deadline) timed_out(p.what, named);
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(1));
  }
}

std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>& devices,
                                                           const std::vector<cudaStream_t>& compute_streams) {
  const int size = static_cast<int>(devices.size());
  TRAINER_ASSERT(size >= 1 && compute_streams.size() == devices.size(),
                 "an NCCL group of {} devices with {} compute streams", devices.size(),
                 compute_streams.size());
  for (int i = 0; i < size; ++i)
    for (int j = 0; j < i; ++j)
      TRAINER_ASSERT(devices[i] != devices[j], "device {} twice in one NCCL group", devices[i]);
  const lib::Nccl& n = lib::nccl();
  ncclUniqueId id;
  TRAINER_NCCL_CHECK(n.ncclGetUniqueId(&id));

  auto group = std::make_shared<NcclCommunicator::Group>();
  group->devices = devices;
  group->comms = std::vector<std::atomic<ncclComm_t>>(size);
  std::vector<ncclComm_t> made(size, nullptr);
  {
    // One thread joins every rank: inside one NCCL group the joins wait for each other at ncclGroupEnd,
    // instead of the first waiting forever for ranks this thread has not joined yet. Nothing may throw
    // between the group's start and end.
    DeviceScope scope(devices[0]);
    TRAINER_NCCL_CHECK(n.ncclGroupStart());
    ncclResult_t status = ncclSuccess;
    cudaError_t cuda_status = cudaSuccess;
    for (int i = 0; i < size && status == ncclSuccess && cuda_status == cudaSuccess; ++i) {
      cuda_status = cudaSetDevice(devices[i]);  // each rank binds to the device current when it joins
      if (cuda_status == cudaSuccess) status = n.ncclCommInitRank(&made[i], size, id, i);
    }
    const ncclResult_t end = n.ncclGroupEnd();
    for (int i = 0; i < size; ++i) group->comms[i] = made[i];
    if (status != ncclSuccess || end != ncclSuccess || cuda_status != cudaSuccess) {
      group->broken = true;  // abort whatever was made
      TRAINER_CUDA_CHECK(cuda_status);
      nccl_failed(status != ncclSuccess ? status : end, "ncclCommInitRank", __FILE__, __LINE__);
    }
  }
  std::vector<std::unique_ptr<Communicator>> out;
  out.reserve(size);
  for (int i = 0; i < size; ++i)
    out.push_back(std::unique_ptr<Communicator>(
        new NcclCommunicator(group, i, i, size, devices[i], compute_streams[i])));
  return out;
}

}  // namespace trainer::engine::dist
