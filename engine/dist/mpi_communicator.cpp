// MPI_COMM_WORLD as a Communicator (mpi_communicator.h). Collectives are nonblocking calls polled against the
// timeout, so a rank that died or hangs makes the others stop within it instead of waiting forever.
#include "engine/dist/mpi_communicator.h"

// The C API only: OpenMPI's and MPICH's deprecated C++ bindings would need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <thread>

namespace trainer::engine::dist {

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  return end != v ? static_cast<int>(n) : fallback;
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
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

  void reduce_sum(void* data, int64_t count, DType dtype, int root, const CollectiveTag& tag) override {
    TRAINER_ASSERT(dtype == DType::f32 || dtype == DType::f64, "reduce_sum of {}", dtype_name(dtype));
    TRAINER_ASSERT(count <= INT32_MAX, "a reduce of {} elements", count);
    begin();
    MPI_Request req;
    const MPI_Datatype t = dtype == DType::f32 ? MPI_FLOAT : MPI_DOUBLE;
    mpi_check(MPI_Ireduce(rank_ == root ? MPI_IN_PLACE : data, rank_ == root ? data : nullptr,
                          static_cast<int>(count), t, MPI_SUM, root, MPI_COMM_WORLD, &req),
              "MPI_Ireduce");
    wait(req, "reduce", tag);
  }

  void broadcast(void* data, size_t bytes, int root, const CollectiveTag& tag) override {
    TRAINER_ASSERT(bytes <= INT32_MAX, "a broadcast of {} bytes", bytes);
    begin();
    MPI_Request req;
    mpi_check(MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD, &req), "MPI_Ibcast");
    wait(req, "broadcast", tag);
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
    const auto start = std::chrono::steady_clock::now();
    for (int64_t polls = 0;; ++polls) {
      int done = 0;
      mpi_check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      if (std::chrono::steady_clock::now() - start > timeout_)
        throw CollectiveTimeout(rank_, host_name(), what, tag,
                                std::chrono::duration<double>(timeout_).count());
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  int rank_ = 0, size_ = 1;
  int64_t collectives_ = 0;
  const FaultStall stall_ = FaultStall::from_environment();
};

}  // namespace

LaunchInfo LaunchInfo::from_environment() {
  LaunchInfo l;
  if (env_int("OMPI_COMM_WORLD_SIZE", 0) > 0) {
    l.launcher = "mpirun";
    l.size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    l.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    l.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    l.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (env_int("SLURM_NTASKS", 0) > 0 && std::getenv("SLURM_PROCID")) {
    l.launcher = "srun";
    l.size = env_int("SLURM_NTASKS", 1);
    l.rank = env_int("SLURM_PROCID", 0);
    l.local_rank = env_int("SLURM_LOCALID", 0);
    l.local_size = env_int("SLURM_NTASKS_PER_NODE", 1);
  } else if (env_int("PMI_SIZE", 0) > 0) {
    l.launcher = "mpirun";
    l.size = env_int("PMI_SIZE", 1);
    l.rank = env_int("PMI_RANK", 0);
    l.local_rank = env_int("MPI_LOCALRANKID", 0);
    l.local_size = env_int("MPI_LOCALNRANKS", 1);
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
    }
  });
  return std::make_unique<MpiCommunicator>();
}

}  // namespace trainer::engine::dist
