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
// ONNX Mod. fmod = false: the remainder takes the divisor's sign (Python's %, numpy's mod); fmod = true: the
// dividend's (C's fmod and %). An integer divisor of 0 gives 0 rather than trapping; -1 gives 0 as well,
// which also keeps INT_MIN % -1 from overflowing.
struct ModOp {
  bool fmod = false;
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      if (b == T(0)) return T(0);
      if constexpr (std::is_signed_v<T>) {
        if (b == T(-1)) return T(0);
        T r = static_cast<T>(a % b);
        if (!fmod && r != T(0) && ((r < T(0)) != (b < T(0)))) r = static_cast<T>(r + b);
        return r;
      } else {
        return static_cast<T>(a % b);
      }
    } else {
      using F = std::conditional_t<std::is_same_v<T, double>, double, float>;
      const F fb = static_cast<F>(b);
      F r = std::fmod(static_cast<F>(a), fb);
      if (!fmod && r != F(0) && ((r < F(0)) != (fb < F(0)))) r += fb;
      return static_cast<T>(r);
    }
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
// Max and Min pass a NaN in either operand through, as ONNX's reference (numpy's maximum) does.
struct MaxOp {
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    if constexpr (!std::is_integral_v<T>) {
      if (a != a) return a;
      if (b != b) return b;
    }
    return a < b ? b : a;
  }
};
struct MinOp {
  template <class T>
  TRAINER_HD T operator()(T a, T b) const {
    if constexpr (!std::is_integral_v<T>) {
      if (a != a) return a;
      if (b != b) return b;
    }
    return b < a ? b : a;
  }
};

// PRelu(x, slope): x where x > 0, slope x elsewhere (slope broadcast to x).
struct PReluOp {
  template <class T>
  TRAINER_HD T operator()(T x, T slope) const {
    return x > T(0) ? x : slope * x;
  }
};

// ---- comparisons: bool results, stored as one byte ----
struct GreaterOp {
  template <class T>
  TRAINER_HD bool operator()(T a, T b) const {
    return a > b;
  }
};
struct LessOp {
  template <class T>
  TRAINER_HD bool operator()(T a, T b) const {
    return a < b;
  }
};
struct EqualOp {
  template <class T>
  TRAINER_HD bool operator()(T a, T b) const {
    return a == b;
  }
};
struct GreaterOrEqualOp {
  template <class T>
  TRAINER_HD bool operator()(T a, T b) const {
    return a >= b;
  }
};
struct LessOrEqualOp {
  template <class T>
  TRAINER_HD bool operator()(T a, T b) const {
    return a <= b;
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
struct AbsOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    if constexpr (std::is_unsigned_v<T>) {
      return x;
    } else {
      return x < T(0) ? T(-x) : x;
    }
  }
};
struct FloorOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::floor(x);
  }
};
struct CeilOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::ceil(x);
  }
};
// Halves round to even, as ONNX's Round (the default rounding mode of rint).
struct RoundOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::rint(x);
  }
};
struct SignOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    if constexpr (std::is_unsigned_v<T>) {
      return x > T(0) ? T(1) : T(0);
    } else {
      return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x);  // 0 and NaN pass through
    }
  }
};
struct SinOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::sin(x);
  }
};
struct CosOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::cos(x);
  }
};
// Inverse trigonometric and hyperbolic functions (ONNX Asin ... Atanh); NaN outside their domains.
struct AsinOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::asin(x);
  }
};
struct AcosOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::acos(x);
  }
};
struct AtanOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::atan(x);
  }
};
struct AsinhOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::asinh(x);
  }
};
struct AcoshOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::acosh(x);
  }
};
struct AtanhOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::atanh(x);
  }
};
struct ErfOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return std::erf(x);
  }
};
struct ReciprocalOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return T(1) / x;
  }
};
// x / (1 + |x|)
struct SoftsignOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return x / (T(1) + (x < T(0) ? -x : x));
  }
};
// log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large x, full precision for very negative
// x.
struct SoftplusOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    T m = x > T(0) ? x : T(0);
    T a = x > T(0) ? -x : x;
    return m + std::log1p(std::exp(a));
  }
};
// elu(x) = x for x > 0, alpha (exp(x) - 1) otherwise; selu scales elu's gamma times with its own alpha.
struct EluOp {
  float alpha;
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return x > T(0) ? x : T(alpha) * std::expm1(x);
  }
};
struct SeluOp {
  float alpha, gamma;
  template <class T>
  TRAINER_HD T operator()(T x) const {
    return T(gamma) * (x > T(0) ? x : T(alpha) * std::expm1(x));
  }
};
// hard_sigmoid(x) = max(0, min(1, alpha x + beta)); hard_swish(x) = x hard_sigmoid(x) with alpha 1/6, beta
// 1/2.
struct HardSigmoidOp {
  float alpha, beta;
  template <class T>
  TRAINER_HD T operator()(T x) const {
    T v = T(alpha) * x + T(beta);
    return v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
  }
};
struct HardSwishOp {
  template <class T>
  TRAINER_HD T operator()(T x) const {
    T v = x / T(6) + T(0.5);
    return x * (v < T(0) ? T(0) : (v > T(1) ? T(1) : v));
  }
};
// Clip to [lo, hi] as ONNX defines it, min(max(x, lo), hi): hi wins when lo > hi. A bound that is absent is
// the type's extreme, which the caller passes. NaN passes through.
struct ClipOp {
  template <class T>
  TRAINER_HD T operator()(T x, T lo, T hi) const {
    const T v = x < lo ? lo : x;
    return hi < v ? hi : v;
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

// d|x|/dx = sign(x), 0 at 0 (as PyTorch and TensorFlow take it).
struct AbsGradFromX {
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    return x > T(0) ? dy : (x < T(0) ? -dy : T(0));
  }
};
struct ErfGradFromX {
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    return dy * T(1.1283791670955126) * std::exp(-x * x);  // 2 / sqrt(pi)
  }
};
struct SoftsignGradFromX {
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    T d = T(1) + (x < T(0) ? -x : x);
    return dy / (d * d);
  }
};
struct SoftplusGradFromX {
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    return dy * SigmoidOp{}(x);
  }
};
struct EluGradFromX {
  float alpha;
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    return x > T(0) ? dy : dy * T(alpha) * std::exp(x);
  }
};
struct SeluGradFromX {
  float alpha, gamma;
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    return T(gamma) * (x > T(0) ? dy : dy * T(alpha) * std::exp(x));
  }
};
// Zero where the clamp is active: 0 < alpha x + beta < 1 passes alpha dy.
struct HardSigmoidGradFromX {
  float alpha, beta;
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    T v = T(alpha) * x + T(beta);
    return (v > T(0) && v < T(1)) ? dy * T(alpha) : T(0);
  }
};
struct HardSwishGradFromX {
  template <class T>
  TRAINER_HD T operator()(T dy, T x) const {
    if (x <= T(-3)) return T(0);
    if (x >= T(3)) return dy;
    return dy * (x / T(3) + T(0.5));
  }
};
// The gradient passes where lo <= x <= hi, bounds included (PyTorch's clamp does the same).
struct ClipGradFromX {
  template <class T>
  TRAINER_HD T operator()(T dy, T x, T lo, T hi) const {
    return (x >= lo && x <= hi) ? dy : T(0);
  }
};

}  // namespace trainer::engine::kernels
