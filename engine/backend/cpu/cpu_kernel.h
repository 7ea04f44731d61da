// The CPU kernel contract: a factory sees the node and its bound arena pointers once, at prepare time, and
// returns a kernel whose run() does the math without allocating. Kernel files register factories by op name.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/kernel_registry.h"
#include "engine/ir/graph.h"
#include "engine/util/error.h"

namespace trainer::engine::cpu {

struct KernelArgs {
  const Graph& graph;
  const Node& node;
  std::vector<void*> inputs;   // nullptr for absent optional inputs
  std::vector<void*> outputs;  // nullptr for absent optional outputs

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

class CpuKernel {
 public:
  virtual ~CpuKernel() = default;
  virtual void run(const StepContext& ctx) = 0;
};
using KernelPtr = std::unique_ptr<CpuKernel>;

// A kernel from a callable; the callable captures everything it needs at prepare time.
template <class F>
class LambdaKernel final : public CpuKernel {
 public:
  explicit LambdaKernel(F f) : f_(std::move(f)) {}
  void run(const StepContext& ctx) override { f_(ctx); }

 private:
  F f_;
};
template <class F>
KernelPtr make_kernel(F f) {
  return std::make_unique<LambdaKernel<F>>(std::move(f));
}

using KernelFactory = std::function<KernelPtr(const KernelArgs&)>;

class KernelRegistry : public KernelRegistryOf<KernelFactory> {
 public:
  static const KernelRegistry& global();
};

// Calls f.template operator()<T>() with T = float or double for f32/f64, and throws for other dtypes.
template <class F>
void dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32:
      f.template operator()<float>();
      return;
    case DType::f64:
      f.template operator()<double>();
      return;
    default:
      throw InputError("", fmt::format("{} on the CPU supports f32 and f64, not {}", op, dtype_name(t)),
                       "cast the input to float first");
  }
}

// As dispatch_float, plus i32, i64 and u8.
template <class F>
void dispatch_numeric(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32:
      f.template operator()<float>();
      return;
    case DType::f64:
      f.template operator()<double>();
      return;
    case DType::i32:
      f.template operator()<int32_t>();
      return;
    case DType::i64:
      f.template operator()<int64_t>();
      return;
    case DType::u8:
      f.template operator()<uint8_t>();
      return;
    default:
      throw InputError("", fmt::format("{} on the CPU does not support {}", op, dtype_name(t)),
                       "give the model float32 tensors (PyTorch: model.float() before exporting it)");
  }
}

// engine/backend/cpu/cpu_kernels.cpp: one line per kernel file.
void register_all_cpu_kernels(KernelRegistry& r);

// kernels_rnn.cpp: the bytes a recurrence's kernel (LSTM, GRU, RNN and their Grad ops) holds outside the
// arena once prepared; 0 for other nodes.
size_t rnn_held_bytes(const Graph& g, const Node& n);

// kernels_conv.cpp: the bytes a convolution's kernel (Conv, ConvTranspose, ConvGradInput, ConvGradWeight) or
// a pooling's holds outside the arena once prepared: the oneDNN layouts its operands are reordered into,
// their scratchpads, and a max pooling's workspace. Found by building the kernel in a mode that counts its
// buffers instead of making them; 0 for other nodes.
size_t conv_held_bytes(const Graph& g, const Node& n);

}  // namespace trainer::engine::cpu
