// TRAINER_HD marks functions compiled for both the host (g++) and the device (nvcc).
#pragma once

#if defined(__CUDACC__)
#define TRAINER_HD __host__ __device__ __forceinline__
#else
#define TRAINER_HD inline
#endif
