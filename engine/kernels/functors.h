// Elementwise math, written once as functors that g++ compiles for the CPU backend and nvcc for the CUDA
// backend. Gradient functors take (dy, x or y) and return dx; which one they take is in their name.
#pragma once

#include <cmath>
#include <type_traits>

#include "engine/kernels/hd.h"

namespace trainer::engine::kernels {

// ---- binary ----
struct AddOp {
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    return a + b;
  }
};
struct SubOp {
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    return a - b;
  }
};
struct MulOp {
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    return a * b;
  }
};
struct DivOp {
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    return a / b;
  }
};
struct PowOp {
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      T r = 1;
      for (T i = 0; i < b; ++i) r *= a;
      return r;
    } else {
      return std::pow(a, b);
    }
  }
};

// ---- unary ----
struct NegOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return -x;
  }
};
struct ExpOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::exp(x);
  }
};
struct LogOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::log(x);
  }
};
struct SqrtOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::sqrt(x);
  }
};
// NaN passes through (x < 0 is false for NaN), as in other frameworks: a NaN must reach the loss to be
// caught.
struct ReluOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return x < T(0) ? T(0) : x;
  }
};
struct LeakyReluOp {
  float alpha;
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return x >= T(0) ? x : T(alpha) * x;
  }
};
// Stable on both tails: exp of a non-positive number only.
struct SigmoidOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
    T e = std::exp(x);
    return e / (T(1) + e);
  }
};
struct TanhOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::tanh(x);
  }
};
// gelu(x) = x * Phi(x); with approximate = tanh, Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
struct GeluOp {
  bool tanh_approx;
  template <class T>
  TRAINER_HD T operator()(T x) const {
    if (tanh_approx) {
      const T k = T(0.7978845608028654);
      return T(0.5) * x * (T(1) + std::tanh(k * (x + T(0.044715) * x * x * x)));
    }
    return T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476)));
  }
};

// ---- gradients ----
struct ReluGradFromY {
  template <class T>
  TRAINER_HD T operator()(T dy, T y) const {
    return y > T(0) ? dy : T(0);
  }
};
struct LeakyReluGradFromX {
  float alpha;
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    return x >= T(0) ? dy : T(alpha) * dy;
  }
};
struct SigmoidGradFromY {
  template <class T>
  TRAINER_HD T operator()(T dy, T y) const {
    return dy * y * (T(1) - y);
  }
};
struct TanhGradFromY {
  template <class T>
  TRAINER_HD T operator()(T dy, T y) const {
    return dy * (T(1) - y * y);
  }
};
struct GeluGradFromX {
  bool tanh_approx;
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    if (tanh_approx) {
      const T k = T(0.7978845608028654), c = T(0.044715);
      T u = k * (x + c * x * x * x);
      T t = std::tanh(u);
      T du = k * (T(1) + T(3) * c * x * x);
      return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
    }
    T cdf = T(0.5) * (T(1) + std::erf(x * T(0.7071067811865476)));
    T pdf = std::exp(T(-0.5) * x * x) * T(0.3989422804014327);
    return dy * (cdf + x * pdf);
  }
};

}  // namespace trainer::engine::kernels
