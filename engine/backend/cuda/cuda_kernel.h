// The CUDA kernel contract: a factory sees the node, its arena pointers and the backend's library handles
// once, at prepare time, and returns a kernel whose launch() only enqueues work on the given stream. launch()
// must be capturable into a CUDA graph: no allocation, no synchronization, no host reads of device memory.
// Factories live in .cpp files (g++); the device code lives in .cu files behind plain launcher headers
// (launch_*.h: pointers, sizes and a stream), because nvcc cannot compile fmt 9, which the IR headers use.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cuda/launch_elementwise.h"
#include "engine/backend/cuda/launch_step.h"
#include "engine/backend/kernel_registry.h"
#include "engine/ir/graph.h"
#include "engine/util/error.h"

// Library handles, declared here so kernel files that do not use them need not include their headers.
struct cublasLtContext;
struct cudnnContext;

namespace trainer::engine::cuda {

// The launchers' element type of a DType.
ElemType elem_type(DType t);

// cudaEventQuery's answer. "Not ready" is no failure, but the runtime may keep it as the thread's last error,
// and the next kernel launch on this thread, checked with cudaGetLastError, would then report it: it is
// cleared here.
inline cudaError_t query_event(cudaEvent_t e) {
  const cudaError_t status = cudaEventQuery(e);
  if (status == cudaErrorNotReady) (void)cudaGetLastError();
  return status;
}

// A CUDA runtime status that is not cudaSuccess throws RuntimeError naming the call and the call site.
[[noreturn]] void cuda_failed(cudaError_t status, const char* call, const char* file, int line);
#define TRAINER_CUDA_CHECK(call)                                                             \
  do {                                                                                       \
    cudaError_t trainer_cuda_status_ = (call);                                               \
    if (trainer_cuda_status_ != cudaSuccess)                                                 \
      ::trainer::engine::cuda::cuda_failed(trainer_cuda_status_, #call, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: a bad launch configuration shows up here, not at the next synchronize.
#define TRAINER_CUDA_CHECK_LAUNCH() TRAINER_CUDA_CHECK(cudaGetLastError())

// What every kernel of one backend (one device) shares. The workspace is allocated once; kernels run one
// after another on one stream, so they may all use all of it.
struct CudaLibs {
  int device = 0;
  int sm = 0;  // compute capability, major * 10 + minor
  cublasLtContext* cublaslt = nullptr;
  cudnnContext* cudnn = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool allow_tf32 = false;  // [train] precision = "tf32"
  // Bytes of the kernels' own device memory (KernelMemory), for Backend::memory_bytes.
  std::shared_ptr<std::atomic<size_t>> kernel_bytes = std::make_shared<std::atomic<size_t>>(0);
};

// Device memory a kernel owns for its lifetime, beyond the shared workspace (the RNN kernels' sequence-long
// records): allocated and zeroed in the factory (prepare time, never in a step), counted with the backend's
// own allocations (cuda_allocation_calls) and in Backend::memory_bytes.
class KernelMemory {
 public:
  KernelMemory(CudaLibs& libs, size_t bytes);
  ~KernelMemory();
  KernelMemory(const KernelMemory&) = delete;
  KernelMemory& operator=(const KernelMemory&) = delete;
  std::byte* data() const { return static_cast<std::byte*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  int device_ = 0;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  std::shared_ptr<std::atomic<size_t>> counter_;
};

struct KernelArgs {
  const Graph& graph;
  const Node& node;
  std::vector<void*> inputs;               // device pointers; nullptr for absent optional inputs
  std::vector<void*> outputs;              // device pointers; nullptr for absent optional outputs
  const DeviceStepContext* ctx = nullptr;  // device pointer
  CudaLibs* libs = nullptr;

  bool has_input(int i) const { return i < static_cast<int>(inputs.size()) && inputs[i] != nullptr; }
  bool has_output(int i) const { return i < static_cast<int>(outputs.size()) && outputs[i] != nullptr; }
  const Value& in(int i) const { return graph.value(node.inputs[i]); }
  const Value& out(int i) const { return graph.value(node.outputs[i]); }
  const Attributes& attrs() const { return node.attrs; }
  template <class T>
  T* in_ptr(int i) const {
    return static_cast<T*>(inputs[i]);
  }
  template <class T>
  T* out_ptr(int i) const {
    return static_cast<T*>(outputs[i]);
  }
};

class CudaKernel {
 public:
  virtual ~CudaKernel() = default;
  virtual void launch(cudaStream_t stream) = 0;
};
using KernelPtr = std::unique_ptr<CudaKernel>;

template <class F>
class LambdaKernel final : public CudaKernel {
 public:
  explicit LambdaKernel(F f) : f_(std::move(f)) {}
  void launch(cudaStream_t stream) override { f_(stream); }

 private:
  F f_;
};
// A kernel from a callable taking the stream; it captures everything else at prepare time.
template <class F>
KernelPtr make_kernel(F f) {
  return std::make_unique<LambdaKernel<F>>(std::move(f));
}

// A factory may return nullptr for a node it cannot run (a dtype or attribute it lacks); the backend then
// runs that node on the host (engine/backend/cuda/cuda_backend.cpp), as it does ops with no factory at all.
using KernelFactory = std::function<KernelPtr(const KernelArgs&)>;

class KernelRegistry : public KernelRegistryOf<KernelFactory> {
 public:
  static const KernelRegistry& global();
};

// One line per kernel file, in engine/backend/cuda/cuda_kernels.cpp.
void register_elementwise_kernels(KernelRegistry& r);  // kernels_elementwise.cpp + elementwise.cu
void register_reduce_kernels(KernelRegistry& r);       // kernels_reduce.cpp + reduce.cu
void register_blas_kernels(KernelRegistry& r);         // kernels_blas.cpp (cuBLASLt)
void register_dnn_kernels(KernelRegistry& r);          // kernels_dnn.cpp (cuDNN)
void register_rnn_kernels(KernelRegistry& r);          // kernels_rnn.cpp + rnn.cu (cuBLASLt)

// Launch geometry for a grid-stride loop over n elements.
inline unsigned grid_for(int64_t n, unsigned block = 256) {
  int64_t blocks = (n + block - 1) / block;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks > 65535 * 8 ? 65535 * 8 : blocks);
}

}  // namespace trainer::engine::cuda
