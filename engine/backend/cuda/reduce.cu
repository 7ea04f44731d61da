// Device code of the reduce kernels (placeholder until they land).
#include <cuda_runtime.h>
