// oneDNN plumbing for CPU kernels: one engine and stream per process, user-managed scratchpads, and a call
// object that executes a primitive through the C API with a fixed argument array, so a step allocates
// nothing.
#pragma once

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/ir/dtype.h"
#include "engine/ir/shape.h"

namespace trainer::engine::cpu {

dnnl::engine& dnnl_cpu_engine();
dnnl::stream& dnnl_cpu_stream();

// A primitive attribute that makes the caller own the scratchpad (DnnlCall allocates it once).
dnnl::primitive_attr dnnl_attr();

dnnl::memory::data_type dnnl_type(DType t);
// A plain row-major memory descriptor for `dims` (tag abcd...), or with explicit strides.
dnnl::memory::desc dnnl_plain_md(const std::vector<int64_t>& dims, DType t);
dnnl::memory::desc dnnl_strided_md(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
                                   DType t);

// Thrown when oneDNN has no implementation of a bf16 primitive on this CPU (it needs AVX-512): the user's
// way out is fp32, so it is an InputError naming the node, raised at prepare time.
[[noreturn]] void dnnl_bf16_unsupported(const std::string& node);

// Returns make() (a primitive descriptor); for bf16, an unimplemented primitive becomes
// dnnl_bf16_unsupported.
template <class F>
auto dnnl_make_pd(DType t, const std::string& node, F&& make) -> decltype(make()) {
  if (t != DType::bf16) return make();
  try {
    return make();
  } catch (const dnnl::error& e) {
    if (e.status != dnnl_unimplemented) throw;
    dnnl_bf16_unsupported(node);
  }
}

// Limits OpenMP, and so oneDNN, to the calling thread while it lives. A parallel region costs microseconds
// (far more on a shared machine, where a descheduled team member stalls the rest), which is more than a
// small primitive's whole work, so small primitives are created inside one (oneDNN fixes a primitive's
// thread split when it is created) and run inside one (see DnnlCall's `serial`).
class SerialScope {
 public:
  SerialScope() : threads_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SerialScope() { omp_set_num_threads(threads_); }
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  int threads_;
};

// Below this many multiply-adds a matrix product runs on one thread (about 2 microseconds of work).
inline constexpr int64_t kSerialGemmMacs = int64_t{1} << 19;

// While set (Backend::held_bytes makes a kernel only to learn what it would hold), the buffers DnnlCall and
// the kernels would make beside the arena (scratchpads, reorder targets, workspaces) are added up here
// instead of made.
extern thread_local size_t* dnnl_counted_bytes;

// A prepared primitive execution. Memory objects wrap arena pointers and are bound once.
class DnnlCall {
 public:
  DnnlCall() = default;
  // `args` pairs DNNL_ARG_* with memory objects. If pd has a scratchpad, it is allocated here and bound.
  // `serial`: run on the calling thread alone (create pd inside a SerialScope too).
  DnnlCall(const dnnl::primitive& prim, const dnnl::primitive_desc_base& pd,
           std::vector<std::pair<int, dnnl::memory>> args, bool serial = false);
  void operator()() const;  // runs and waits; allocates nothing
  explicit operator bool() const { return static_cast<bool>(prim_); }

 private:
  dnnl::primitive prim_;
  std::vector<std::pair<int, dnnl::memory>> mems_;
  std::vector<dnnl_exec_arg_t> args_;
  std::shared_ptr<std::vector<std::byte>> scratch_;
  bool serial_ = false;
};

// Wraps an arena pointer (const is cast away: oneDNN takes void* for sources too).
dnnl::memory dnnl_mem(const dnnl::memory::desc& md, const void* ptr);

}  // namespace trainer::engine::cpu
