// Replicas in separate processes, launched by mpirun or srun: MPI_COMM_WORLD as a Communicator over host
// memory (CPU replicas reduce their gradients with it; GPU runs use it to hand out NCCL's unique id and to
// reduce the host-side metrics). The launcher is detected from its environment, so a plain `trainer fit`
// never starts MPI.
#pragma once

#include <memory>

#include "engine/dist/communicator.h"

namespace trainer::engine::dist {

// What mpirun/srun told this process, read from the environment (OMPI_COMM_WORLD_*, PMI_*, SLURM_*), before
// MPI starts. size 1 when not launched by either.
struct LaunchInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string launcher;  // "mpirun", "srun", or "" when not launched by one
  static LaunchInfo from_environment();
};

// Starts MPI (once per process) and returns the world communicator; InputError when this build has no MPI.
std::unique_ptr<Communicator> mpi_world();
bool mpi_built();
// Ends every rank of the run with `code` when MPI is running (MPI_Abort); returns otherwise.
void abort_world(int code);

}  // namespace trainer::engine::dist
