// oneDNN engine/stream singletons, descriptors, and allocation-free primitive execution.
#include "engine/backend/cpu/dnnl_util.h"

#include "engine/backend/backend.h"
#include "engine/util/error.h"

namespace trainer::engine::cpu {

dnnl::engine& dnnl_cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& dnnl_cpu_stream() {
  // One per thread: kernels that run primitives from several threads of their own parallel region (the
  // recurrent kernels' batch slices) never share a stream.
  thread_local dnnl::stream s(dnnl_cpu_engine());
  return s;
}

dnnl::primitive_attr dnnl_attr() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

void dnnl_bf16_unsupported(const std::string& node) {
  throw InputError(
      node, "bf16 needs a CPU with AVX-512 (oneDNN's bf16 kernels), and this one has none",
      "use precision = \"fp32\" on this CPU, or run on a GPU of compute capability 8.0 or newer");
}

}  // namespace trainer::engine::cpu

namespace trainer::engine {

bool cpu_supports_bf16() {
  // A small bf16 product stands for the kernels a bf16 step needs: oneDNN implements them all or none.
  static const bool supported = [] {
    const dnnl::memory::desc md({2, 2}, dnnl::memory::data_type::bf16, dnnl::memory::format_tag::ab);
    try {
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(md, md, md), cpu::dnnl_attr(), cpu::dnnl_cpu_engine());
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return supported;
}

}  // namespace trainer::engine

namespace trainer::engine::cpu {

dnnl::memory::data_type dnnl_type(DType t) {
  switch (t) {
    case DType::f32:
      return dnnl::memory::data_type::f32;
    case DType::bf16:
      return dnnl::memory::data_type::bf16;
    case DType::f16:
      return dnnl::memory::data_type::f16;
    case DType::i32:
      return dnnl::memory::data_type::s32;
    case DType::u8:
      return dnnl::memory::data_type::u8;
    default:
      throw InternalError(fmt::format("oneDNN has no {} type", dtype_name(t)));
  }
}

dnnl::memory::desc dnnl_plain_md(const std::vector<int64_t>& dims, DType t) {
  std::vector<int64_t> strides(dims.size());
  int64_t acc = 1;
  for (int i = static_cast<int>(dims.size()) - 1; i >= 0; --i) {
    strides[i] = acc;
    acc *= dims[i];
  }
  return dnnl_strided_md(dims, strides, t);
}

dnnl::memory::desc dnnl_strided_md(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
                                   DType t) {
  return dnnl::memory::desc(dnnl::memory::dims(dims.begin(), dims.end()), dnnl_type(t),
                            dnnl::memory::dims(strides.begin(), strides.end()));
}

dnnl::memory dnnl_mem(const dnnl::memory::desc& md, const void* ptr) {
  return dnnl::memory(md, dnnl_cpu_engine(), const_cast<void*>(ptr));
}

thread_local size_t* dnnl_counted_bytes = nullptr;

DnnlCall::DnnlCall(const dnnl::primitive& prim, const dnnl::primitive_desc_base& pd,
                   std::vector<std::pair<int, dnnl::memory>> args, bool serial)
    : prim_(prim), mems_(std::move(args)), serial_(serial) {
  dnnl::memory::desc sd = pd.scratchpad_desc();
  if (sd.get_size() > 0 && dnnl_counted_bytes) {
    *dnnl_counted_bytes += sd.get_size() + 64;
    mems_.emplace_back(DNNL_ARG_SCRATCHPAD, dnnl::memory(sd, dnnl_cpu_engine(), DNNL_MEMORY_NONE));
  } else if (sd.get_size() > 0) {
    scratch_ = std::make_shared<std::vector<std::byte>>(sd.get_size() + 64);
    auto p = reinterpret_cast<uintptr_t>(scratch_->data());
    void* aligned = reinterpret_cast<void*>((p + 63) / 64 * 64);
    mems_.emplace_back(DNNL_ARG_SCRATCHPAD, dnnl::memory(sd, dnnl_cpu_engine(), aligned));
  }
  for (auto& [arg, mem] : mems_) args_.push_back(dnnl_exec_arg_t{arg, mem.get()});
}

void DnnlCall::operator()() const {
  dnnl_status_t st;
  if (serial_) {
    SerialScope one;
    st = dnnl_primitive_execute(prim_.get(), dnnl_cpu_stream().get(), static_cast<int>(args_.size()),
                                args_.data());
  } else {
    st = dnnl_primitive_execute(prim_.get(), dnnl_cpu_stream().get(), static_cast<int>(args_.size()),
                                args_.data());
  }
  if (st != dnnl_success)
    throw RuntimeError(fmt::format("oneDNN primitive failed with status {}", static_cast<int>(st)));
  dnnl_stream_wait(dnnl_cpu_stream().get());
}

}  // namespace trainer::engine::cpu
