// MPI_COMM_WORLD as a Communicator (mpi_communicator.h). Collectives are nonblocking calls polled against the
// timeout, so a rank that died or hangs makes the others stop within it instead of waiting forever.
#include "engine/dist/mpi_communicator.h"

// The C API only: OpenMPI's and MPICH's deprecated C++ bindings would need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace trainer::engine::dist {

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  return end != v ? static_cast<int>(n) : fallback;
}

// Slurm's task layout, "2(x3),1" (2 tasks on each of 3 nodes, then 1): the count on `node` (from 0), or -1
// when the layout is malformed or shorter.
int tasks_on_node(const char* layout, int node) {
  const char* p = layout;
  while (*p) {
    char* end = nullptr;
    const long tasks = std::strtol(p, &end, 10);
    if (end == p || tasks <= 0) return -1;
    long repeat = 1;
    p = end;
    if (std::strncmp(p, "(x", 2) == 0) {
      repeat = std::strtol(p + 2, &end, 10);
      if (end == p + 2 || *end != ')' || repeat <= 0) return -1;
      p = end + 1;
    }
    if (node < repeat) return static_cast<int>(tasks);
    node -= static_cast<int>(repeat);
    if (*p == ',')
      ++p;
    else if (*p)
      return -1;
  }
  return -1;
}

void mpi_check(int status, const char* call) {
  if (status == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(status, text, &len);
  throw RuntimeError(fmt::format("MPI error in {}: {}", call, text));
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return "mpi"; }

  void all_reduce_sum(void* data, int64_t count, DType dtype, const CollectiveTag& tag) override {
    TRAINER_ASSERT(dtype == DType::f32 || dtype == DType::f64, "all_reduce_sum of {}", dtype_name(dtype));
    TRAINER_ASSERT(count <= INT32_MAX, "an all-reduce of {} elements", count);
    begin();
    MPI_Request req;
    mpi_check(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(count),
                             dtype == DType::f32 ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &req),
              "MPI_Iallreduce");
    wait(req, "all_reduce", tag);
  }

  void broadcast(void* data, size_t bytes, int root, const CollectiveTag& tag) override {
    TRAINER_ASSERT(bytes <= INT32_MAX, "a broadcast of {} bytes", bytes);
    begin();
    MPI_Request req;
    mpi_check(MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD, &req), "MPI_Ibcast");
    wait(req, "broadcast", tag);
  }

  // A bucket in as few MPI calls as pay: its small tensors (under kPackBytes each) are packed into one host
  // buffer and summed by one call, so many small gradients cost one latency; each large one is summed in
  // place by a call of its own, so no large copy is made. Every call is started before any is waited for.
  static constexpr size_t kPackBytes = 256 << 10;
  void all_reduce_weighted_sum_group(const std::vector<Span>& spans, DType dtype, double weight,
                                     const CollectiveTag& tag) override {
    TRAINER_ASSERT(dtype == DType::f32 || dtype == DType::f64, "all_reduce of {}", dtype_name(dtype));
    const size_t es = dtype_bytes(dtype);
    int64_t packed = 0;
    for (const Span& s : spans) {
      TRAINER_ASSERT(s.count <= INT32_MAX, "an all-reduce of {} elements", s.count);
      if (s.count * es < kPackBytes) packed += s.count;
    }
    TRAINER_ASSERT(packed <= INT32_MAX, "an all-reduce of {} elements", packed);
    send_.resize(packed * es);
    size_t at = 0;
    for (const Span& s : spans)
      if (s.count * es < kPackBytes) {
        std::memcpy(send_.data() + at, s.data, s.count * es);
        at += s.count * es;
      }
    begin();
    requests_.clear();
    if (packed > 0) {
      scale_in_place(send_.data(), packed, dtype, weight);
      requests_.emplace_back();
      mpi_check(MPI_Iallreduce(MPI_IN_PLACE, send_.data(), static_cast<int>(packed), mpi_type(dtype), MPI_SUM,
                               MPI_COMM_WORLD, &requests_.back()),
                "MPI_Iallreduce");
    }
    for (const Span& s : spans)
      if (s.count * es >= kPackBytes) {
        scale_in_place(s.data, s.count, dtype, weight);
        requests_.emplace_back();
        mpi_check(MPI_Iallreduce(MPI_IN_PLACE, s.data, static_cast<int>(s.count), mpi_type(dtype), MPI_SUM,
                                 MPI_COMM_WORLD, &requests_.back()),
                  "MPI_Iallreduce");
      }
    wait_all("all_reduce", tag);
    at = 0;
    for (const Span& s : spans)
      if (s.count * es < kPackBytes) {
        std::memcpy(s.data, send_.data() + at, s.count * es);
        at += s.count * es;
      }
  }

  // ZeRO-1's reduce-scatter as one MPI call: the pieces are packed by root (rank 0's first), and
  // MPI_Ireduce_scatter hands each rank the sum of its block, which it unpacks into its pieces.
  void reduce_weighted_sum_group(const std::vector<Piece>& pieces, DType dtype, double weight,
                                 const CollectiveTag& tag) override {
    TRAINER_ASSERT(dtype == DType::f32 || dtype == DType::f64, "reduce of {}", dtype_name(dtype));
    const size_t es = dtype_bytes(dtype);
    counts_.assign(size_, 0);
    for (const Piece& p : pieces) {
      TRAINER_ASSERT(p.root >= 0 && p.root < size_, "a reduce to rank {} of {}", p.root, size_);
      counts_[p.root] += p.count;
    }
    int64_t total = 0;
    for (int64_t c : counts_) total += c;
    TRAINER_ASSERT(total <= INT32_MAX, "a reduce-scatter of {} elements", total);
    send_.resize(total * es);
    recv_.resize(counts_[rank_] * es);
    recv_counts_.assign(counts_.begin(), counts_.end());
    size_t at = 0;
    for (int r = 0; r < size_; ++r)
      for (const Piece& p : pieces)
        if (p.root == r) {
          std::memcpy(send_.data() + at, p.data, p.count * es);
          at += p.count * es;
        }
    scale_in_place(send_.data(), total, dtype, weight);
    begin();
    MPI_Request req;
    mpi_check(MPI_Ireduce_scatter(send_.data(), recv_.data(), recv_counts_.data(), mpi_type(dtype), MPI_SUM,
                                  MPI_COMM_WORLD, &req),
              "MPI_Ireduce_scatter");
    wait(req, "reduce_scatter", tag);
    at = 0;
    for (const Piece& p : pieces)
      if (p.root == rank_) {
        std::memcpy(p.data, recv_.data() + at, p.count * es);
        at += p.count * es;
      }
  }

  // ZeRO-1's all-gather as one MPI call: each rank packs the copies it is the root of, MPI_Iallgatherv
  // hands every rank every block, and each copy is unpacked from its root's block.
  void broadcast_group(const std::vector<Copy>& copies, const CollectiveTag& tag) override {
    counts_.assign(size_, 0);
    for (const Copy& c : copies) {
      TRAINER_ASSERT(c.root >= 0 && c.root < size_, "a broadcast from rank {} of {}", c.root, size_);
      counts_[c.root] += static_cast<int64_t>(c.bytes);
    }
    recv_counts_.resize(size_);
    displs_.resize(size_);
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      TRAINER_ASSERT(total + counts_[r] <= INT32_MAX, "an all-gather of {} bytes", total + counts_[r]);
      displs_[r] = static_cast<int>(total);
      recv_counts_[r] = static_cast<int>(counts_[r]);
      total += counts_[r];
    }
    send_.resize(counts_[rank_]);
    recv_.resize(total);
    size_t at = 0;
    for (const Copy& c : copies)
      if (c.root == rank_) {
        std::memcpy(send_.data() + at, c.src, c.bytes);
        at += c.bytes;
      }
    begin();
    MPI_Request req;
    mpi_check(MPI_Iallgatherv(send_.data(), recv_counts_[rank_], MPI_BYTE, recv_.data(), recv_counts_.data(),
                              displs_.data(), MPI_BYTE, MPI_COMM_WORLD, &req),
              "MPI_Iallgatherv");
    wait(req, "all_gather", tag);
    std::vector<int64_t>& next = counts_;  // reused: each root's unpacking position
    for (int r = 0; r < size_; ++r) next[r] = displs_[r];
    for (const Copy& c : copies) {
      std::memcpy(c.dst, recv_.data() + next[c.root], c.bytes);
      next[c.root] += static_cast<int64_t>(c.bytes);
    }
  }

  void barrier(const CollectiveTag& tag) override {
    begin();
    MPI_Request req;
    mpi_check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "MPI_Ibarrier");
    wait(req, "barrier", tag);
  }

 private:
  void begin() {
    if (stall_.rank == rank_ && stall_.collective == collectives_)
      std::this_thread::sleep_for(std::chrono::duration<double>(stall_.seconds));
    ++collectives_;
  }

  // Polls the request: tight at first (a step's reductions are short), then every 100 us, until the timeout.
  void wait(MPI_Request& req, const char* what, const CollectiveTag& tag) {
    requests_.assign(1, req);
    wait_all(what, tag);
  }
  void wait_all(const char* what, const CollectiveTag& tag) {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t polls = 0;; ++polls) {
      int done = 0;
      mpi_check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE),
                "MPI_Testall");
      if (done) return;
      if (std::chrono::steady_clock::now() - start > timeout_)
        fail_collective(CollectiveTimeout(rank_, host_name(), what, tag,
                                          std::chrono::duration<double>(timeout_).count()));
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  static MPI_Datatype mpi_type(DType dtype) { return dtype == DType::f32 ? MPI_FLOAT : MPI_DOUBLE; }

  int rank_ = 0, size_ = 1;
  int64_t collectives_ = 0;
  // Staging for the packed collectives, kept between calls so steady steps allocate nothing.
  std::vector<std::byte> send_, recv_;
  std::vector<int64_t> counts_;
  std::vector<int> recv_counts_, displs_;
  std::vector<MPI_Request> requests_;  // the calls in flight
  const FaultStall stall_ = FaultStall::from_environment();
};

}  // namespace

LaunchInfo LaunchInfo::from_environment() {
  LaunchInfo l;
  // Slurm's task layout: the tasks on this machine, or -1.
  auto slurm_local_size = [] {
    // SLURM_NTASKS_PER_NODE is set only when asked for; the step's task layout always is.
    const char* layout = std::getenv("SLURM_STEP_TASKS_PER_NODE");
    if (!layout) layout = std::getenv("SLURM_TASKS_PER_NODE");
    const int on_node = layout ? tasks_on_node(layout, env_int("SLURM_NODEID", 0)) : -1;
    return on_node > 0 ? on_node : env_int("SLURM_NTASKS_PER_NODE", -1);
  };
  if (env_int("OMPI_COMM_WORLD_SIZE", 0) > 0) {
    l.launcher = "mpirun";
    l.size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    l.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    l.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    l.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (env_int("PMI_SIZE", 0) > 0) {
    // MPICH's and Intel MPI's mpiexec (Hydra), also inside a Slurm job, where its helpers are Slurm's tasks
    // and their SLURM_* variables speak of machines, not ranks; or srun --mpi=pmi2, whose PMI_* are the
    // step's.
    const bool hydra = std::getenv("MPI_LOCALRANKID") != nullptr;
    l.launcher = !hydra && std::getenv("SLURM_STEP_NUM_TASKS") ? "srun" : "mpirun";
    l.size = env_int("PMI_SIZE", 1);
    l.rank = env_int("PMI_RANK", 0);
    l.local_rank = hydra ? env_int("MPI_LOCALRANKID", 0) : env_int("SLURM_LOCALID", 0);
    l.local_size = hydra ? env_int("MPI_LOCALNRANKS", 1) : std::max(1, slurm_local_size());
  } else if (env_int("SLURM_STEP_NUM_TASKS", 0) > 0 && std::getenv("SLURM_PROCID")) {
    // A task of srun's step. A batch script itself has SLURM_NTASKS and SLURM_PROCID=0 too, but no step
    // variables: a plain `trainer fit` there is one process.
    l.launcher = "srun";
    l.size = env_int("SLURM_STEP_NUM_TASKS", 1);
    l.rank = env_int("SLURM_PROCID", 0);
    l.local_rank = env_int("SLURM_LOCALID", 0);
    l.local_size = std::max(1, slurm_local_size());
  }
  return l;
}

bool mpi_built() {
  return true;
}

void abort_world(int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

std::unique_ptr<Communicator> mpi_world() {
  static std::once_flag once;
  std::call_once(once, [] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      std::atexit(finalize_at_exit);
      // A replica's communication thread and its own thread take turns calling MPI.
      if (provided < MPI_THREAD_SERIALIZED)
        throw RuntimeError(
            "this MPI library gives no thread support (MPI_THREAD_SERIALIZED); trainer calls MPI from two "
            "threads in turn. Use an MPI built with thread support (OpenMPI and MPICH are by default)");
    }
  });
  return std::make_unique<MpiCommunicator>();
}

}  // namespace trainer::engine::dist
