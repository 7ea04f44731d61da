// Device code of the elementwise kernels (placeholder until they land).
#include <cuda_runtime.h>
