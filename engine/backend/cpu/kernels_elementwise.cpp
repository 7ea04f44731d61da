// CPU kernels of the elementwise ops: the shared functors in engine/kernels applied over contiguous or
// broadcast operands, in parallel over fixed partitions.
#include <cstring>
#include <limits>
#include <type_traits>

#include "engine/backend/cpu/broadcast.h"
#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/backend/cpu/vec_math.h"
#include "engine/kernels/functors.h"

namespace trainer::engine::cpu {

namespace k = trainer::engine::kernels;

namespace {

template <class Op>
KernelFactory binary(Op op = {}) {
  return [op](const KernelArgs& a) -> KernelPtr {
    KernelPtr kp;
    dispatch_numeric(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
      // Comparisons give bools, stored as bytes.
      using Out = std::conditional_t<std::is_same_v<decltype(op(T{}, T{})), bool>, uint8_t, T>;
      const T* x = a.in_ptr<T>(0);
      const T* y = a.in_ptr<T>(1);
      Out* z = a.out_ptr<Out>(0);
      const Shape& sx = a.in(0).shape;
      const Shape& sy = a.in(1).shape;
      const Shape& so = a.out(0).shape;
      int64_t n = so.numel();
      if (sx == so && sy == so) {
        kp = make_kernel(
            [=](const StepContext&) { parallel_for(n, [&](int64_t i) { z[i] = op(x[i], y[i]); }); });
      } else if (sx == so && sy.numel() == 1) {
        kp = make_kernel([=](const StepContext&) {
          T b = y[0];
          parallel_for(n, [&](int64_t i) { z[i] = op(x[i], b); });
        });
      } else {
        auto br = std::make_shared<BroadcastRows<2>>(so, std::array<const Shape*, 2>{&sx, &sy});
        kp = make_kernel([=](const StepContext&) {
          int64_t inner = br->inner(), s0 = br->inner_stride(0), s1 = br->inner_stride(1);
          parallel_for(
              br->rows(),
              [&](int64_t r) {
                std::array<int64_t, 2> off;
                br->offsets(r, &off);
                const T* px = x + off[0];
                const T* py = y + off[1];
                Out* pz = z + r * inner;
                for (int64_t i = 0; i < inner; ++i) pz[i] = op(px[i * s0], py[i * s1]);
              },
              std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(br->inner(), 1)));
        });
      }
    });
    return kp;
  };
}

template <class Op>
KernelFactory unary(Op op = {}) {
  return [op](const KernelArgs& a) -> KernelPtr {
    KernelPtr kp;
    dispatch_float(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
      const T* x = a.in_ptr<T>(0);
      T* y = a.out_ptr<T>(0);
      int64_t n = a.in(0).shape.numel();
      kp = make_kernel([=](const StepContext&) { parallel_for(n, [&](int64_t i) { y[i] = op(x[i]); }); });
    });
    return kp;
  };
}

// Neg also applies to integers.
template <class Op>
KernelFactory unary_numeric(Op op = {}) {
  return [op](const KernelArgs& a) -> KernelPtr {
    KernelPtr kp;
    dispatch_numeric(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
      const T* x = a.in_ptr<T>(0);
      T* y = a.out_ptr<T>(0);
      int64_t n = a.in(0).shape.numel();
      kp = make_kernel([=](const StepContext&) { parallel_for(n, [&](int64_t i) { y[i] = op(x[i]); }); });
    });
    return kp;
  };
}

// (dy, x-or-y) -> dx.
template <class Op, class Make>
KernelFactory grad_binary(Make make) {
  return [make](const KernelArgs& a) -> KernelPtr {
    Op op = make(a);
    KernelPtr kp;
    dispatch_float(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
      const T* dy = a.in_ptr<T>(0);
      const T* x = a.in_ptr<T>(1);
      T* dx = a.out_ptr<T>(0);
      int64_t n = a.in(0).shape.numel();
      kp = make_kernel(
          [=](const StepContext&) { parallel_for(n, [&](int64_t i) { dx[i] = op(dy[i], x[i]); }); });
    });
    return kp;
  };
}

KernelPtr identity(const KernelArgs& a) {
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  size_t bytes = a.in(0).nbytes();
  return make_kernel([=](const StepContext&) {
    if (x != y) std::memcpy(y, x, bytes);
  });
}

// Loads element i of any dtype as double, and stores a double into any dtype: the generic loop for the casts
// that are rare in a training step. Mixed precision's casts between f32 and bf16 (every weight and many
// activations, every step) have loops of their own below.
double load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::f32:
      return static_cast<const float*>(p)[i];
    case DType::f64:
      return static_cast<const double*>(p)[i];
    case DType::bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::f16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::i32:
      return static_cast<const int32_t*>(p)[i];
    case DType::i64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::u8:
      return static_cast<const uint8_t*>(p)[i];
    case DType::boolean:
      return static_cast<const uint8_t*>(p)[i] != 0;
  }
  return 0;
}

void store(DType t, void* p, int64_t i, double v) {
  switch (t) {
    case DType::f32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      break;
    case DType::f64:
      static_cast<double*>(p)[i] = v;
      break;
    case DType::bf16:
      static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v));
      break;
    case DType::f16:
      static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v));
      break;
    case DType::i32:
      static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v);
      break;
    case DType::i64:
      static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v);
      break;
    case DType::u8:
      static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v);
      break;
    case DType::boolean:
      static_cast<uint8_t*>(p)[i] = v != 0;
      break;
  }
}

// f32 <-> bf16 as Tensor's f32_to_bf16 and bf16_to_f32 (round to nearest even, NaN to the quiet 0x7fc0), in
// branch-free integer arithmetic that the compiler vectorizes: the casts of a bf16 step run at memory speed.
inline uint16_t f32_bits_to_bf16(uint32_t u) {
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

KernelPtr cast(const KernelArgs& a) {
  DType from = a.in(0).dtype, to = a.out(0).dtype;
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  int64_t n = a.in(0).shape.numel();
  if (from == to) return identity(a);
  if (from == DType::i64 && to == DType::i64) return identity(a);
  if (from == DType::f32 && to == DType::bf16)
    return make_kernel([=](const StepContext&) {
      const auto* u = static_cast<const uint32_t*>(x);
      auto* h = static_cast<uint16_t*>(y);
      parallel_chunks(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) h[i] = f32_bits_to_bf16(u[i]);
      });
    });
  if (from == DType::bf16 && to == DType::f32)
    return make_kernel([=](const StepContext&) {
      const auto* h = static_cast<const uint16_t*>(x);
      auto* u = static_cast<uint32_t*>(y);
      parallel_chunks(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) u[i] = static_cast<uint32_t>(h[i]) << 16;
      });
    });
  return make_kernel([=](const StepContext&) {
    if (to == DType::i64 && from == DType::i64) return;
    parallel_for(n, [&](int64_t i) {
      if (to == DType::i64 && from == DType::i32)
        static_cast<int64_t*>(y)[i] = static_cast<const int32_t*>(x)[i];
      else
        store(to, y, i, load(from, x, i));
    });
  });
}

// Clip and ClipGrad: the bounds are read when the step runs (they may be fed values); an absent one is the
// type's extreme.
template <class T>
std::pair<T, T> clip_bounds(const T* lo, const T* hi) {
  return {lo ? *lo : std::numeric_limits<T>::lowest(), hi ? *hi : std::numeric_limits<T>::max()};
}

KernelPtr clip(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_numeric(a.in(0).dtype, "Clip", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    const T* lo = a.has_input(1) ? a.in_ptr<T>(1) : nullptr;
    const T* hi = a.has_input(2) ? a.in_ptr<T>(2) : nullptr;
    T* y = a.out_ptr<T>(0);
    int64_t n = a.in(0).shape.numel();
    kp = make_kernel([=](const StepContext&) {
      auto [l, h] = clip_bounds(lo, hi);
      parallel_for(n, [&](int64_t i) { y[i] = k::ClipOp{}(x[i], l, h); });
    });
  });
  return kp;
}

KernelPtr clip_grad(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "ClipGrad", [&]<class T>() {
    const T* dy = a.in_ptr<T>(0);
    const T* x = a.in_ptr<T>(1);
    const T* lo = a.has_input(2) ? a.in_ptr<T>(2) : nullptr;
    const T* hi = a.has_input(3) ? a.in_ptr<T>(3) : nullptr;
    T* dx = a.out_ptr<T>(0);
    int64_t n = a.in(0).shape.numel();
    kp = make_kernel([=](const StepContext&) {
      auto [l, h] = clip_bounds(lo, hi);
      parallel_for(n, [&](int64_t i) { dx[i] = k::ClipGradFromX{}(dy[i], x[i], l, h); });
    });
  });
  return kp;
}

KernelPtr where(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_numeric(a.in(1).dtype, "Where", [&]<class T>() {
    const uint8_t* c = a.in_ptr<uint8_t>(0);
    const T* x = a.in_ptr<T>(1);
    const T* y = a.in_ptr<T>(2);
    T* z = a.out_ptr<T>(0);
    auto br = std::make_shared<BroadcastRows<3>>(
        a.out(0).shape, std::array<const Shape*, 3>{&a.in(0).shape, &a.in(1).shape, &a.in(2).shape});
    kp = make_kernel([=](const StepContext&) {
      int64_t inner = br->inner(), s0 = br->inner_stride(0), s1 = br->inner_stride(1),
              s2 = br->inner_stride(2);
      parallel_for(
          br->rows(),
          [&](int64_t r) {
            std::array<int64_t, 3> off;
            br->offsets(r, &off);
            T* pz = z + r * inner;
            for (int64_t i = 0; i < inner; ++i)
              pz[i] = c[off[0] + i * s0] ? x[off[1] + i * s1] : y[off[2] + i * s2];
          },
          64);
    });
  });
  return kp;
}

// Activations in f32 as loops over vec_math's functions (erf_f, exp_clamped, expm1_f, tanh_f, sigmoid_f,
// softplus_f), compiled for the widest vectors: libm's erff, expf, expm1f, log1pf and tanhf are scalar
// calls, ten to fifty times slower. f64 keeps the shared functors' libm. `alpha` and `gamma` are the node's
// attributes where it has them (Elu, Selu, LeakyRelu).
enum class FastActivation {
  erf,
  erf_grad,
  gelu,
  gelu_grad,
  gelu_tanh,
  gelu_tanh_grad,
  tanh,
  sigmoid,
  elu,
  elu_grad,
  selu,
  selu_grad,
  softplus,
  softplus_grad,
  leaky_relu,
  leaky_relu_grad
};

TRAINER_CPU_CLONES void fast_activation_loop(FastActivation f, float alpha, float gamma, const float* a,
                                             const float* b, float* y, int64_t n) {
  switch (f) {
    case FastActivation::erf:
      for (int64_t i = 0; i < n; ++i) y[i] = erf_f(a[i]);
      break;
    case FastActivation::erf_grad:  // a = dy, b = x
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] * 1.1283791670955126f * exp_clamped(-b[i] * b[i]);
      break;
    case FastActivation::gelu:
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_f(a[i], false);
      break;
    case FastActivation::gelu_tanh:
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_f(a[i], true);
      break;
    case FastActivation::gelu_grad:
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_grad_f(a[i], b[i], false);
      break;
    case FastActivation::gelu_tanh_grad:
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_grad_f(a[i], b[i], true);
      break;
    case FastActivation::tanh:
      for (int64_t i = 0; i < n; ++i) y[i] = tanh_f(a[i]);
      break;
    case FastActivation::sigmoid:
      for (int64_t i = 0; i < n; ++i) y[i] = sigmoid_f(a[i]);
      break;
    case FastActivation::elu:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] > 0.0f ? a[i] : alpha * expm1_f(a[i]);
      break;
    case FastActivation::elu_grad:  // a = dy, b = x
      for (int64_t i = 0; i < n; ++i) y[i] = b[i] > 0.0f ? a[i] : a[i] * alpha * exp_clamped(b[i]);
      break;
    case FastActivation::selu:
      for (int64_t i = 0; i < n; ++i) y[i] = gamma * (a[i] > 0.0f ? a[i] : alpha * expm1_f(a[i]));
      break;
    case FastActivation::selu_grad:
      for (int64_t i = 0; i < n; ++i) y[i] = gamma * (b[i] > 0.0f ? a[i] : a[i] * alpha * exp_clamped(b[i]));
      break;
    case FastActivation::softplus:
      for (int64_t i = 0; i < n; ++i) y[i] = softplus_f(a[i]);
      break;
    case FastActivation::softplus_grad:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] * sigmoid_f(b[i]);
      break;
    case FastActivation::leaky_relu:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] >= 0.0f ? a[i] : alpha * a[i];
      break;
    case FastActivation::leaky_relu_grad:
      for (int64_t i = 0; i < n; ++i) y[i] = b[i] >= 0.0f ? a[i] : alpha * a[i];
      break;
  }
}

// A factory for one member of the family: the f32 loop, or `generic` (the shared functors) for f64.
KernelFactory fast_activation(FastActivation f, FastActivation f_tanh, KernelFactory generic) {
  return [=](const KernelArgs& a) -> KernelPtr {
    if (a.in(0).dtype != DType::f32) return generic(a);
    const bool tanh = a.attrs().has("approximate") && a.attrs().s("approximate") == "tanh";
    const FastActivation which = tanh ? f_tanh : f;
    const float alpha = a.attrs().has("alpha") ? a.attrs().f("alpha") : 0.0f;
    const float gamma = a.attrs().has("gamma") ? a.attrs().f("gamma") : 0.0f;
    const float* x = a.in_ptr<float>(0);
    const float* second = a.inputs.size() > 1 ? a.in_ptr<float>(1) : nullptr;
    float* y = a.out_ptr<float>(0);
    const int64_t n = a.in(0).shape.numel();
    return make_kernel([=](const StepContext&) {
      parallel_chunks(n, [&](int64_t b, int64_t e) {
        fast_activation_loop(which, alpha, gamma, x + b, second ? second + b : nullptr, y + b, e - b);
      });
    });
  };
}

}  // namespace

void register_elementwise_cpu_kernels(KernelRegistry& r) {
  r.add("Add", binary<k::AddOp>());
  r.add("Sub", binary<k::SubOp>());
  r.add("Mul", binary<k::MulOp>());
  r.add("Div", binary<k::DivOp>());
  r.add("Pow", binary<k::PowOp>());
  r.add("Mod", [](const KernelArgs& a) { return binary(k::ModOp{a.attrs().i("fmod") != 0})(a); });
  r.add("Neg", unary_numeric<k::NegOp>());
  r.add("Exp", unary<k::ExpOp>());
  r.add("Log", unary<k::LogOp>());
  r.add("Sqrt", unary<k::SqrtOp>());
  r.add("Relu", unary<k::ReluOp>());
  r.add("Sigmoid", fast_activation(FastActivation::sigmoid, FastActivation::sigmoid, unary<k::SigmoidOp>()));
  r.add("Tanh", fast_activation(FastActivation::tanh, FastActivation::tanh, unary<k::TanhOp>()));
  r.add("LeakyRelu",
        fast_activation(FastActivation::leaky_relu, FastActivation::leaky_relu,
                        [](const KernelArgs& a) { return unary(k::LeakyReluOp{a.attrs().f("alpha")})(a); }));
  r.add("Gelu", fast_activation(FastActivation::gelu, FastActivation::gelu_tanh, [](const KernelArgs& a) {
          return unary(k::GeluOp{a.attrs().s("approximate") == "tanh"})(a);
        }));
  r.add("PRelu", binary<k::PReluOp>());
  r.add("Softsign", unary<k::SoftsignOp>());
  r.add("SoftsignGrad",
        grad_binary<k::SoftsignGradFromX>([](const KernelArgs&) { return k::SoftsignGradFromX{}; }));
  r.add("Max", binary<k::MaxOp>());
  r.add("Min", binary<k::MinOp>());
  r.add("Greater", binary<k::GreaterOp>());
  r.add("Less", binary<k::LessOp>());
  r.add("Equal", binary<k::EqualOp>());
  r.add("GreaterOrEqual", binary<k::GreaterOrEqualOp>());
  r.add("LessOrEqual", binary<k::LessOrEqualOp>());
  r.add("Abs", unary_numeric<k::AbsOp>());
  r.add("Sign", unary_numeric<k::SignOp>());
  r.add("Floor", unary<k::FloorOp>());
  r.add("Ceil", unary<k::CeilOp>());
  r.add("Round", unary<k::RoundOp>());
  r.add("Sin", unary<k::SinOp>());
  r.add("Cos", unary<k::CosOp>());
  r.add("Asin", unary<k::AsinOp>());
  r.add("Acos", unary<k::AcosOp>());
  r.add("Atan", unary<k::AtanOp>());
  r.add("Asinh", unary<k::AsinhOp>());
  r.add("Acosh", unary<k::AcoshOp>());
  r.add("Atanh", unary<k::AtanhOp>());
  r.add("Reciprocal", unary<k::ReciprocalOp>());
  r.add("Erf", fast_activation(FastActivation::erf, FastActivation::erf, unary<k::ErfOp>()));
  r.add("Softplus",
        fast_activation(FastActivation::softplus, FastActivation::softplus, unary<k::SoftplusOp>()));
  r.add("Elu", fast_activation(FastActivation::elu, FastActivation::elu,
                               [](const KernelArgs& a) { return unary(k::EluOp{a.attrs().f("alpha")})(a); }));
  r.add("Selu", fast_activation(FastActivation::selu, FastActivation::selu, [](const KernelArgs& a) {
          return unary(k::SeluOp{a.attrs().f("alpha"), a.attrs().f("gamma")})(a);
        }));
  r.add("HardSigmoid", [](const KernelArgs& a) {
    return unary(k::HardSigmoidOp{a.attrs().f("alpha"), a.attrs().f("beta")})(a);
  });
  r.add("HardSwish", unary<k::HardSwishOp>());
  r.add("Clip", clip);
  r.add("AbsGrad", grad_binary<k::AbsGradFromX>([](const KernelArgs&) { return k::AbsGradFromX{}; }));
  r.add("ErfGrad",
        fast_activation(FastActivation::erf_grad, FastActivation::erf_grad,
                        grad_binary<k::ErfGradFromX>([](const KernelArgs&) { return k::ErfGradFromX{}; })));
  r.add("SoftplusGrad", fast_activation(FastActivation::softplus_grad, FastActivation::softplus_grad,
                                        grad_binary<k::SoftplusGradFromX>(
                                            [](const KernelArgs&) { return k::SoftplusGradFromX{}; })));
  r.add("EluGrad", fast_activation(FastActivation::elu_grad, FastActivation::elu_grad,
                                   grad_binary<k::EluGradFromX>([](const KernelArgs& a) {
                                     return k::EluGradFromX{a.attrs().f("alpha")};
                                   })));
  r.add("SeluGrad", fast_activation(FastActivation::selu_grad, FastActivation::selu_grad,
                                    grad_binary<k::SeluGradFromX>([](const KernelArgs& a) {
                                      return k::SeluGradFromX{a.attrs().f("alpha"), a.attrs().f("gamma")};
                                    })));
  r.add("HardSigmoidGrad", grad_binary<k::HardSigmoidGradFromX>([](const KernelArgs& a) {
          return k::HardSigmoidGradFromX{a.attrs().f("alpha"), a.attrs().f("beta")};
        }));
  r.add("HardSwishGrad",
        grad_binary<k::HardSwishGradFromX>([](const KernelArgs&) { return k::HardSwishGradFromX{}; }));
  r.add("ClipGrad", clip_grad);
  r.add("ReluGrad", grad_binary<k::ReluGradFromY>([](const KernelArgs&) { return k::ReluGradFromY{}; }));
  r.add("SigmoidGrad",
        grad_binary<k::SigmoidGradFromY>([](const KernelArgs&) { return k::SigmoidGradFromY{}; }));
  r.add("TanhGrad", grad_binary<k::TanhGradFromY>([](const KernelArgs&) { return k::TanhGradFromY{}; }));
  r.add("LeakyReluGrad", fast_activation(FastActivation::leaky_relu_grad, FastActivation::leaky_relu_grad,
                                         grad_binary<k::LeakyReluGradFromX>([](const KernelArgs& a) {
                                           return k::LeakyReluGradFromX{a.attrs().f("alpha")};
                                         })));
  r.add("GeluGrad", fast_activation(FastActivation::gelu_grad, FastActivation::gelu_tanh_grad,
                                    grad_binary<k::GeluGradFromX>([](const KernelArgs& a) {
                                      return k::GeluGradFromX{a.attrs().s("approximate") == "tanh"};
                                    })));
  r.add("Identity", identity);
  // The copy only: the data-parallel layer averages the output across replicas (its plan bucket).
  r.add("ReplicaMean", identity);
  r.add("Cast", cast);
  r.add("Where", where);
}

}  // namespace trainer::engine::cpu
