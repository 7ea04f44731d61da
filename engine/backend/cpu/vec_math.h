// Helpers for CPU kernel loops that the compiler vectorizes: a marker that compiles a function for AVX-512,
// AVX2 and the baseline and picks one at load time, and exp-based activations written without library calls
// (libm's expf and tanhf are scalar calls that stop a loop from vectorizing).
#pragma once

#include <bit>
#include <cstdint>

namespace trainer::engine::cpu {

// Put before a function whose loops should use the widest vectors the running CPU has. The binary stays
// portable: the loader picks the AVX-512, AVX2 or baseline clone. The engine builds with -ffp-contract=off,
// so no clone fuses a*b+c into an FMA and every clone rounds alike.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TRAINER_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TRAINER_CPU_CLONES
#endif

// exp(x) for x in [-87, 88], within 2 ulp; arguments outside are clamped there (the results saturate at
// about 1e-38 and 1.6e38, which is all sigmoid and tanh need). NaN stays NaN.
inline float exp_clamped(float x) {
  // NaN fails both comparisons and passes through.
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  // x = n ln2 + r with |r| <= ln2/2; adding and subtracting 1.5 * 2^23 rounds x/ln2 to the nearest integer.
  const float shifter = 12582912.0f;
  float n = (x * 1.44269504088896341f + shifter) - shifter;
  // ln2 in two parts, the first with few enough bits that n * part is exact.
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // Taylor series of exp(r) to degree 7: the remainder is below 2^-24 relative for |r| <= 0.347.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n from its exponent bits; n is in [-126, 127] after the clamp.
  float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return p * scale;
}

// 0 below -88, where the true value is below the smallest normal float (as flushed denormals would be),
// rather than exp_clamped's floor.
inline float sigmoid_f(float x) {
  const float s = 1.0f / (1.0f + exp_clamped(-x));
  return x < -88.0f ? 0.0f : s;
}

// tanh within a few ulp: an odd Taylor polynomial near 0, where (1 - e) / (1 + e) would cancel, and
// (1 - e) / (1 + e) with e = exp(-2|x|) elsewhere.
inline float tanh_f(float x) {
  float ax = x < 0.0f ? -x : x;
  float e = exp_clamped(-2.0f * ax);
  float far = (1.0f - e) / (1.0f + e);
  far = x < 0.0f ? -far : far;
  float x2 = x * x;
  // x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835; the next term is below 2^-24 relative for |x| < 0.3.
  float p = 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  float near = x * (1.0f + x2 * p);  // a product keeps the sign of -0
  return ax < 0.3f ? near : far;
}

// erf within 3 ulp, without branches: x P(x^2) for |x| < 1 (P fitted to erf(x) / x), 1 - exp(-x^2) Q(x) for
// 1 <= |x| < 4 (Q fitted to erfc(x) exp(x^2) in (|x| - 2.5) / 1.5), and 1 beyond, where erfc(x) is below half
// an ulp of 1. The sign is x's; NaN stays NaN.
inline float erf_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = 7.9334939e-05f;
  p = p * z - 8.0348464e-04f;
  p = p * z + 5.1912186e-03f;
  p = p * z - 2.6855400e-02f;
  p = p * z + 1.1283626e-01f;
  p = p * z - 3.7612629e-01f;
  p = p * z + 1.1283792e+00f;
  const float near = x * p;
  const float u = (ax - 2.5f) * (1.0f / 1.5f);
  float q = 9.6404518e-05f;
  q = q * u - 2.4550260e-04f;
  q = q * u + 3.6786866e-04f;
  q = q * u - 9.1556378e-04f;
  q = q * u + 2.4258851e-03f;
  q = q * u - 5.6117629e-03f;
  q = q * u + 1.2484035e-02f;
  q = q * u - 2.6997792e-02f;
  q = q * u + 5.6110960e-02f;
  q = q * u - 1.1152140e-01f;
  q = q * u + 2.1080635e-01f;
  float far = 1.0f - exp_clamped(-z) * q;
  far = ax >= 4.0f ? 1.0f : far;
  far = x < 0.0f ? -far : far;
  return ax < 1.0f ? near : far;
}

// exp(x) - 1 within a few ulp: a Taylor polynomial for |x| < 0.3, where exp(x) - 1 would cancel, and
// exp_clamped(x) - 1 elsewhere (-1 below -87). NaN stays NaN.
inline float expm1_f(float x) {
  // x + x^2/2! + ... + x^8/8!: the next term is below 2^-24 relative for |x| < 0.3.
  float p = 1.0f / 40320.0f;
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  const float near = x * (1.0f + x * p);  // a product keeps the sign of -0
  const float far = exp_clamped(x) - 1.0f;
  const float ax = x < 0.0f ? -x : x;
  return ax < 0.3f ? near : far;
}

// log(1 + y) for y in [0, 1] within a few ulp (softplus's tail): u = 1 + y rounded, log(u) by the series of
// 2 atanh((m - 1) / (m + 1)) on u or u / 2 (m within [0.7, 1.42]), times y / (u - 1), which puts back what
// rounding u lost; y itself where u rounds to 1.
inline float log1p_unit_f(float y) {
  const float u = 1.0f + y;
  const bool halve = u > 1.41421356f;
  const float m = halve ? 0.5f * u : u;
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  // 2 (s + s^3/3 + ... + s^11/11): the next term is below 2^-24 relative for |s| <= 0.172.
  float p = 2.0f / 11.0f;
  p = p * s2 + 2.0f / 9.0f;
  p = p * s2 + 2.0f / 7.0f;
  p = p * s2 + 2.0f / 5.0f;
  p = p * s2 + 2.0f / 3.0f;
  p = p * s2 + 2.0f;
  const float log_u = s * p + (halve ? 0.693147180559945f : 0.0f);
  const float d = u - 1.0f;
  return d == 0.0f ? y : log_u * (y / d);
}

// softplus(x) = max(x, 0) + log(1 + exp(-|x|)).
inline float softplus_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  // Past 88 the tail is below the smallest normal float: 0, not exp_clamped's floor.
  const float tail = log1p_unit_f(exp_clamped(-ax));
  return (x > 0.0f ? x : 0.0f) + (ax > 88.0f ? 0.0f : tail);
}

// GELU, x Phi(x), and its derivative Phi(x) + x phi(x), in f32 with the functions above; with tanh_approx,
// Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) as in engine/kernels/functors.h.
inline float gelu_f(float x, bool tanh_approx) {
  if (tanh_approx) return 0.5f * x * (1.0f + tanh_f(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  return 0.5f * x * (1.0f + erf_f(x * 0.7071067811865476f));
}

inline float gelu_grad_f(float dy, float x, bool tanh_approx) {
  if (tanh_approx) {
    const float k = 0.7978845608028654f, c = 0.044715f;
    const float t = tanh_f(k * (x + c * x * x * x));
    const float du = k * (1.0f + 3.0f * c * x * x);
    return dy * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
  }
  const float cdf = 0.5f * (1.0f + erf_f(x * 0.7071067811865476f));
  const float pdf = exp_clamped(-0.5f * x * x) * 0.3989422804014327f;
  return dy * (cdf + x * pdf);
}

}  // namespace trainer::engine::cpu
