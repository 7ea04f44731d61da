// CPU kernels of op family 'norm': BatchNormalization, LayerNormalization, Dropout and their gradient ops.
// These are memory-bound loops, written once for f32 and f64 with double accumulators. Every reduced value (a
// channel's or a row's statistics, a column of dScale) is computed by one thread in a fixed order, so results
// do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TRAINER_DROPOUT_AVX2 1
#endif

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/ops/norm_dropout.h"

namespace trainer::engine::cpu {

namespace {

// Grain for a loop over `items` that each touch `work` elements: parallel only when the whole loop is big
// enough.
int64_t grain_for(int64_t items, int64_t work) {
  return items * work >= kParallelGrain ? 1 : items + 1;
}

// A pair of sums accumulated together.
struct Sum2 {
  double a = 0, b = 0;
  Sum2& operator+=(const Sum2& o) {
    a += o.a;
    b += o.b;
    return *this;
  }
};

// Sums f(j) for j in [0, n) into four interleaved accumulators: the adds no longer wait on each other, and
// the fixed interleaving keeps the result the same run to run.
template <class V, class F>
V sum4(int64_t n, F&& f) {
  V a0{}, a1{}, a2{}, a3{};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    a0 += f(j);
    a1 += f(j + 1);
    a2 += f(j + 2);
    a3 += f(j + 3);
  }
  for (; j < n; ++j) a0 += f(j);
  a0 += a1;
  a2 += a3;
  a0 += a2;
  return a0;
}

// ---- BatchNormalization ----

// X viewed as [outer, channels, inner]: channel c of sample n is the contiguous run x[(n * C + c) * inner
// ...].
struct NcsLayout {
  int64_t n = 1, c = 1, s = 1;
  explicit NcsLayout(const Shape& x) : n(x[0]), c(x[1]) {
    for (int k = 2; k < x.rank(); ++k) s *= x[k];
  }
  int64_t count() const { return n * s; }  // elements per channel
  template <class F>
  void for_channel(int64_t ch, F&& f) const {
    for (int64_t i = 0; i < n; ++i) {
      int64_t base = (i * c + ch) * s;
      for (int64_t k = 0; k < s; ++k) f(base + k);
    }
  }
  // Sum of f(element) over one channel: along each contiguous run, or across samples when runs are short (N x
  // C).
  template <class V, class F>
  V sum(int64_t ch, F&& f) const {
    if (s >= 4) {
      V acc{};
      for (int64_t i = 0; i < n; ++i) {
        int64_t base = (i * c + ch) * s;
        acc += sum4<V>(s, [&](int64_t k) { return f(base + k); });
      }
      return acc;
    }
    return sum4<V>(n, [&](int64_t i) {
      V v{};
      for (int64_t k = 0; k < s; ++k) v += f((i * c + ch) * s + k);
      return v;
    });
  }
};

// Mean and biased variance of one channel, two passes for accuracy.
template <class T>
void channel_moments(const NcsLayout& l, const T* x, int64_t ch, double* mean, double* var) {
  double mu = l.sum<double>(ch, [&](int64_t j) { return static_cast<double>(x[j]); }) /
              static_cast<double>(l.count());
  double sq = l.sum<double>(ch, [&](int64_t j) {
    double d = x[j] - mu;
    return d * d;
  });
  *mean = mu;
  *var = sq / static_cast<double>(l.count());
}

KernelPtr batch_norm(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "BatchNormalization", [&]<class T>() {
    NcsLayout l(a.in(0).shape);
    const T* x = a.in_ptr<T>(0);
    const T* scale = a.in_ptr<T>(1);
    const T* bias = a.in_ptr<T>(2);
    const T* in_mean = a.in_ptr<T>(3);
    const T* in_var = a.in_ptr<T>(4);
    T* y = a.out_ptr<T>(0);
    T* run_mean = a.has_output(1) ? a.out_ptr<T>(1) : nullptr;
    T* run_var = a.has_output(2) ? a.out_ptr<T>(2) : nullptr;
    double eps = a.attrs().f("epsilon"), momentum = a.attrs().f("momentum");
    bool training = a.attrs().i("training_mode") != 0;
    int64_t grain = grain_for(l.c, l.count());
    kp = make_kernel([=](const StepContext&) {
      parallel_for(
          l.c,
          [&](int64_t ch) {
            double mean, var;
            if (training) {
              channel_moments(l, x, ch, &mean, &var);
            } else {
              mean = in_mean[ch];
              var = in_var[ch];
            }
            double mul = scale[ch] / std::sqrt(var + eps);
            double add = bias[ch] - mean * mul;
            l.for_channel(ch, [&](int64_t j) { y[j] = static_cast<T>(x[j] * mul + add); });
            // The running statistics may share a buffer with the state inputs they update: read, then write.
            if (training) {
              if (run_mean) run_mean[ch] = static_cast<T>(in_mean[ch] * momentum + mean * (1 - momentum));
              if (run_var) run_var[ch] = static_cast<T>(in_var[ch] * momentum + var * (1 - momentum));
            } else {
              // Outside training the running statistics pass through unchanged.
              if (run_mean) run_mean[ch] = in_mean[ch];
              if (run_var) run_var[ch] = in_var[ch];
            }
          },
          grain);
    });
  });
  return kp;
}

// Inputs (dY, X, scale, [input_mean], [input_var], [g_running_mean], [g_running_var]); outputs dX, dscale,
// dB, [d input_mean], [d input_var]. In training mode the batch statistics are recomputed from X and
// input_mean/var are not read.
KernelPtr batch_norm_grad(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(1).dtype, "BatchNormalizationGrad", [&]<class T>() {
    NcsLayout l(a.in(1).shape);
    const T* dy = a.in_ptr<T>(0);
    const T* x = a.in_ptr<T>(1);
    const T* scale = a.in_ptr<T>(2);
    const T* in_mean = a.has_input(3) ? a.in_ptr<T>(3) : nullptr;  // absent in training mode
    const T* in_var = a.has_input(4) ? a.in_ptr<T>(4) : nullptr;
    const T* g_mean = a.has_input(5) ? a.in_ptr<T>(5) : nullptr;
    const T* g_var = a.has_input(6) ? a.in_ptr<T>(6) : nullptr;
    T* dx = a.out_ptr<T>(0);
    T* dscale = a.out_ptr<T>(1);
    T* dbias = a.out_ptr<T>(2);
    T* dmean = a.has_output(3) ? a.out_ptr<T>(3) : nullptr;
    T* dvar = a.has_output(4) ? a.out_ptr<T>(4) : nullptr;
    double eps = a.attrs().f("epsilon"), momentum = a.attrs().f("momentum");
    bool training = a.attrs().i("training_mode") != 0;
    int64_t grain = grain_for(l.c, l.count());
    kp = make_kernel([=](const StepContext&) {
      parallel_for(
          l.c,
          [&](int64_t ch) {
            double mean, var;
            if (training) {
              channel_moments(l, x, ch, &mean, &var);
            } else {
              mean = in_mean[ch];
              var = in_var[ch];
            }
            double inv_std = 1 / std::sqrt(var + eps);
            Sum2 sums = l.sum<Sum2>(ch, [&](int64_t j) {
              return Sum2{static_cast<double>(dy[j]), static_cast<double>(dy[j]) * (x[j] - mean)};
            });
            double sum_dy = sums.a, sum_dy_xhat = sums.b * inv_std;
            dbias[ch] = static_cast<T>(sum_dy);
            dscale[ch] = static_cast<T>(sum_dy_xhat);
            double gs = scale[ch];
            double gm = g_mean ? static_cast<double>(g_mean[ch]) : 0.0;
            double gv = g_var ? static_cast<double>(g_var[ch]) : 0.0;
            if (training) {
              // y depends on x through the batch statistics too; the running statistics add their own terms:
              // running_mean = m * input_mean + (1 - m) * mean(x), running_var = m * input_var + (1 - m) *
              // var(x).
              double m = static_cast<double>(l.count());
              double k = gs * inv_std / m;
              double c_mean = (1 - momentum) * gm / m;
              double c_var = (1 - momentum) * gv * 2 / m;
              l.for_channel(ch, [&](int64_t j) {
                double xc = x[j] - mean;
                dx[j] = static_cast<T>(k * (m * dy[j] - sum_dy - xc * inv_std * sum_dy_xhat) + c_mean +
                                       c_var * xc);
              });
              if (dmean) dmean[ch] = static_cast<T>(momentum * gm);
              if (dvar) dvar[ch] = static_cast<T>(momentum * gv);
            } else {
              double k = gs * inv_std;
              l.for_channel(ch, [&](int64_t j) { dx[j] = static_cast<T>(dy[j] * k); });
              // d/d mean = -scale * inv_std * sum(dy); d/d var = -scale/2 * inv_std^3 * sum(dy * (x - mean)).
              if (dmean) dmean[ch] = static_cast<T>(-k * sum_dy + gm);
              if (dvar) dvar[ch] = static_cast<T>(-0.5 * gs * inv_std * inv_std * sum_dy_xhat + gv);
            }
          },
          grain);
    });
  });
  return kp;
}

// ---- LayerNormalization ----

// X viewed as [rows, inner] split at `axis`.
struct RowLayout {
  int64_t rows = 1, inner = 1;
  RowLayout(const Shape& x, int64_t axis_attr) {
    int axis = normalize_axis(axis_attr, x.rank());
    for (int k = 0; k < x.rank(); ++k) (k < axis ? rows : inner) *= x[k];
  }
};

template <class T>
void row_moments(const T* x, int64_t n, double eps, double* mean, double* inv_std) {
  double mu = sum4<double>(n, [&](int64_t j) { return static_cast<double>(x[j]); }) / static_cast<double>(n);
  double sq = sum4<double>(n, [&](int64_t j) {
    double d = x[j] - mu;
    return d * d;
  });
  *mean = mu;
  *inv_std = 1 / std::sqrt(sq / static_cast<double>(n) + eps);
}

KernelPtr layer_norm(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "LayerNormalization", [&]<class T>() {
    RowLayout l(a.in(0).shape, a.attrs().i("axis"));
    const T* x = a.in_ptr<T>(0);
    const T* scale = a.in_ptr<T>(1);
    const T* bias = a.has_input(2) ? a.in_ptr<T>(2) : nullptr;
    T* y = a.out_ptr<T>(0);
    // Mean and InvStdDev have X's type for f32 and f64 (see the schema).
    T* out_mean = a.has_output(1) ? a.out_ptr<T>(1) : nullptr;
    T* out_inv = a.has_output(2) ? a.out_ptr<T>(2) : nullptr;
    double eps = a.attrs().f("epsilon");
    kp = make_kernel([=](const StepContext&) {
      parallel_for(
          l.rows,
          [&](int64_t r) {
            const T* xr = x + r * l.inner;
            T* yr = y + r * l.inner;
            double mean, inv_std;
            row_moments(xr, l.inner, eps, &mean, &inv_std);
            for (int64_t j = 0; j < l.inner; ++j) {
              double v = (xr[j] - mean) * inv_std * scale[j];
              if (bias) v += bias[j];
              yr[j] = static_cast<T>(v);
            }
            if (out_mean) out_mean[r] = static_cast<T>(mean);
            if (out_inv) out_inv[r] = static_cast<T>(inv_std);
          },
          grain_for(l.rows, l.inner));
    });
  });
  return kp;
}

// Inputs (dY, X, Scale, [g_Mean], [g_InvStdDev]); outputs dX, dScale, [dB].
KernelPtr layer_norm_grad(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(1).dtype, "LayerNormalizationGrad", [&]<class T>() {
    RowLayout l(a.in(1).shape, a.attrs().i("axis"));
    const T* dy = a.in_ptr<T>(0);
    const T* x = a.in_ptr<T>(1);
    const T* scale = a.in_ptr<T>(2);
    const T* g_mean = a.has_input(3) ? a.in_ptr<T>(3) : nullptr;
    const T* g_inv = a.has_input(4) ? a.in_ptr<T>(4) : nullptr;
    T* dx = a.out_ptr<T>(0);
    T* dscale = a.out_ptr<T>(1);
    T* dbias = a.has_output(2) ? a.out_ptr<T>(2) : nullptr;
    double eps = a.attrs().f("epsilon");
    // dScale and dB sum over rows. Rows are split into a fixed number of blocks (set by the shape, not the
    // thread count); each block accumulates contiguous partial sums, which are then added in block order.
    constexpr int64_t kRowBlocks = 64;
    int64_t blocks = std::clamp<int64_t>(l.rows, 1, kRowBlocks);
    auto partial = std::make_shared<std::vector<double>>(2 * blocks * l.inner);
    kp = make_kernel([=](const StepContext&) {
      double* part = partial->data();
      double n = static_cast<double>(l.inner);
      parallel_for(
          blocks,
          [&](int64_t blk) {
            double* ps = part + 2 * blk * l.inner;
            double* pb = ps + l.inner;
            std::fill(ps, ps + 2 * l.inner, 0.0);
            for (int64_t r = l.rows * blk / blocks, r_end = l.rows * (blk + 1) / blocks; r < r_end; ++r) {
              const T* xr = x + r * l.inner;
              const T* dyr = dy + r * l.inner;
              T* dxr = dx + r * l.inner;
              double mean, inv_std;
              row_moments(xr, l.inner, eps, &mean, &inv_std);
              // With g = dy * scale and xhat = (x - mean) * inv_std:
              // dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)).
              Sum2 sums = sum4<Sum2>(l.inner, [&](int64_t j) {
                double g = static_cast<double>(dyr[j]) * scale[j];
                return Sum2{g, g * (xr[j] - mean)};
              });
              double mg = sums.a / n, mgx = sums.b * inv_std / n;
              // Gradients flowing into the Mean and InvStdDev outputs: d mean/dx = 1/n and
              // d inv_std/dx = -inv_std^3 (x - mean) / n.
              double cm = g_mean ? g_mean[r] / n : 0.0;
              double ci = g_inv ? -static_cast<double>(g_inv[r]) * inv_std * inv_std * inv_std / n : 0.0;
              for (int64_t j = 0; j < l.inner; ++j) {
                double xc = xr[j] - mean;
                double d = dyr[j];
                double g = d * scale[j];
                dxr[j] = static_cast<T>(inv_std * (g - mg - xc * inv_std * mgx) + cm + ci * xc);
                ps[j] += d * xc * inv_std;
                pb[j] += d;
              }
            }
          },
          grain_for(blocks, l.rows * l.inner / blocks));
      parallel_for(
          l.inner,
          [&](int64_t j) {
            double ds = 0, db = 0;
            for (int64_t blk = 0; blk < blocks; ++blk) {
              ds += part[2 * blk * l.inner + j];
              db += part[(2 * blk + 1) * l.inner + j];
            }
            dscale[j] = static_cast<T>(ds);
            if (dbias) dbias[j] = static_cast<T>(db);
          },
          grain_for(l.inner, blocks));
    });
  });
  return kp;
}

// ---- Dropout ----

// The ratio and training flag are read at run time, so they may be constants or fed values alike.
struct DropoutParams {
  const void* ratio = nullptr;
  DType ratio_type = DType::f32;
  const uint8_t* training = nullptr;
  bool has_seed = false;
  int64_t seed = 0;
  uint64_t stream = 0;

  float read_ratio() const {
    if (!ratio) return 0.5f;
    return ratio_type == DType::f64 ? static_cast<float>(*static_cast<const double*>(ratio))
                                    : *static_cast<const float*>(ratio);
  }
  bool is_training() const { return training && *training; }
};

int64_t rows_per_sample(const KernelArgs& a) {
  return a.attrs().has(ops::kRowsPerSample) ? a.attrs().i(ops::kRowsPerSample) : 1;
}

DropoutParams dropout_params(const KernelArgs& a, uint64_t stream) {
  DropoutParams p;
  if (a.has_input(1)) {
    p.ratio = a.inputs[1];
    p.ratio_type = a.in(1).dtype;
    if (p.ratio_type != DType::f32 && p.ratio_type != DType::f64)
      throw InputError(a.node.name, "Dropout's ratio must be f32 or f64 on the CPU", "");
  }
  if (a.has_input(2)) p.training = a.in_ptr<uint8_t>(2);
  p.has_seed = a.attrs().has("seed");
  if (p.has_seed) p.seed = a.attrs().i("seed");
  p.stream = stream;
  return p;
}

#ifdef TRAINER_DROPOUT_AVX2
// Dropout of f32 elements 4*g0 .. 4*g1 (Philox blocks first + g0 .. first + g1), eight blocks at a time in
// AVX2 lanes: the same words and decisions as the scalar loop, bit for bit, about four times faster. Two
// vpmuludq give the 32x32-bit products of the even and the odd lanes; the keep masks of eight blocks are then
// transposed into element order for four 8-float stores.
__attribute__((target("avx2"))) void dropout_f32_avx2(uint64_t seed, uint64_t stream, uint64_t step,
                                                      uint64_t first, int64_t g0, int64_t g1,
                                                      uint32_t threshold, float scale, const float* src,
                                                      float* dst) {
  const uint64_t key = seed ^ (stream * 0x9E3779B97F4A7C15ull);
  const __m256i mul0 = _mm256_set1_epi32(static_cast<int32_t>(0xD2511F53u));
  const __m256i mul1 = _mm256_set1_epi32(static_cast<int32_t>(0xCD9E8D57u));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // (w >> 8) >= threshold as a signed compare: both sides are below 2^24 + 1, and threshold 0 gives -1.
  const __m256i below = _mm256_set1_epi32(static_cast<int32_t>(threshold) - 1);
  const __m256 sc = _mm256_set1_ps(scale);
  const __m256i step_lo = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(step)));
  const __m256i step_hi = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(step >> 32)));
  int64_t g = g0;
  for (; g + 8 <= g1; g += 8) {
    const uint64_t index = first + static_cast<uint64_t>(g);
    if (static_cast<uint32_t>(index) > 0xFFFFFFF7u)
      break;  // the counter's high word changes inside the group
    __m256i c0 =
        _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(index))), lane);
    __m256i c1 = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(index >> 32)));
    __m256i c2 = step_lo, c3 = step_hi;
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int r = 0; r < 10; ++r) {
      const __m256i even0 = _mm256_mul_epu32(c0, mul0),
                    odd0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), mul0);
      const __m256i even1 = _mm256_mul_epu32(c2, mul1),
                    odd1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), mul1);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(even0, 32), odd0, 0xAA);
      const __m256i lo0 = _mm256_blend_epi32(even0, _mm256_slli_epi64(odd0, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(even1, 32), odd1, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(even1, _mm256_slli_epi64(odd1, 32), 0xAA);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int32_t>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int32_t>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const __m256i q0 = _mm256_cmpgt_epi32(_mm256_srli_epi32(c0, 8), below);
    const __m256i q1 = _mm256_cmpgt_epi32(_mm256_srli_epi32(c1, 8), below);
    const __m256i q2 = _mm256_cmpgt_epi32(_mm256_srli_epi32(c2, 8), below);
    const __m256i q3 = _mm256_cmpgt_epi32(_mm256_srli_epi32(c3, 8), below);
    // Word k of block l is element 4l + k: a 4x4 transpose in each 128-bit half leaves blocks l and l + 4 in
    // row l, and the 128-bit permutes put blocks 2j and 2j + 1 together.
    const __m256i t0 = _mm256_unpacklo_epi32(q0, q1), t1 = _mm256_unpackhi_epi32(q0, q1);
    const __m256i t2 = _mm256_unpacklo_epi32(q2, q3), t3 = _mm256_unpackhi_epi32(q2, q3);
    const __m256i b0 = _mm256_unpacklo_epi64(t0, t2), b1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i b2 = _mm256_unpacklo_epi64(t1, t3), b3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i keep[4] = {_mm256_permute2x128_si256(b0, b1, 0x20), _mm256_permute2x128_si256(b2, b3, 0x20),
                             _mm256_permute2x128_si256(b0, b1, 0x31),
                             _mm256_permute2x128_si256(b2, b3, 0x31)};
    for (int k = 0; k < 4; ++k) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(src + 4 * g + 8 * k), sc);
      _mm256_storeu_ps(dst + 4 * g + 8 * k, _mm256_and_ps(_mm256_castsi256_ps(keep[k]), v));
    }
  }
  for (; g < g1; ++g) {
    const kernels::Philox4x32 b = kernels::philox_block(seed, stream, step, first + static_cast<uint64_t>(g));
    for (int k = 0; k < 4; ++k)
      dst[4 * g + k] = ops::dropout_keep_word(b.v[k], threshold) ? src[4 * g + k] * scale : 0.0f;
  }
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

// Applies the mask: out[i] = keep(i) ? in[i] * scale : 0, writing the mask when asked. Four elements share
// one Philox block, exactly as philox_uniform maps elements to blocks.
template <class T>
void apply_dropout(const DropoutParams& p, const StepContext& ctx, const T* in, T* out, uint8_t* mask,
                   int64_t n, int64_t per_sample) {
  float ratio = p.read_ratio();
  if (!p.is_training() || ratio <= 0) {
    if (in != out) std::memcpy(out, in, static_cast<size_t>(n) * sizeof(T));
    if (mask) std::memset(mask, 1, static_cast<size_t>(n));
    return;
  }
  uint64_t seed = ops::dropout_seed(ctx.seed, p.has_seed, p.seed);
  T scale = ratio < 1 ? static_cast<T>(1.0 / (1.0 - static_cast<double>(ratio))) : T(0);
  uint64_t stream = p.stream, step = ctx.step;
  // Global element index of local element 0: replicas of a data-parallel run draw the single-device mask.
  uint64_t base = ctx.sample_offset * static_cast<uint64_t>(per_sample);
  if (base % 4 != 0) {
    parallel_for(n, [&](int64_t i) {
      bool keep = ops::dropout_keep(seed, stream, step, base + static_cast<uint64_t>(i), ratio);
      out[i] = keep ? in[i] * scale : T(0);
      if (mask) mask[i] = keep;
    });
    return;
  }
  // Elements 4g .. 4g+3 take the four words of block g. Each chunk copies what it reads into locals first:
  // with references, every store to `out` could alias the ratio, the scale or the pointers, and the compiler
  // reloaded them for each element (three times slower).
  const int64_t full = n / 4;
  // One integer compare per element, the same decisions (ops::dropout_keep_word).
  const uint32_t threshold = ops::dropout_threshold(ratio);
  auto blocks = [&](int64_t g0, int64_t g1) {
#ifdef TRAINER_DROPOUT_AVX2
    if constexpr (std::is_same_v<T, float>) {
      if (!mask && cpu_has_avx2()) {
        dropout_f32_avx2(seed, stream, step, base / 4, g0, g1, threshold, scale, in, out);
        return;
      }
    }
#endif
    const uint32_t cut = threshold;
    const T sc = scale;
    const uint64_t sd = seed, st = stream, sp = step, first = base / 4;
    const T* src = in;
    T* dst = out;
    uint8_t* m = mask;
    for (int64_t g = g0; g < g1; ++g) {
      const kernels::Philox4x32 b = kernels::philox_block(sd, st, sp, first + static_cast<uint64_t>(g));
      for (int k = 0; k < 4; ++k) {
        const int64_t i = 4 * g + k;
        const bool keep = ops::dropout_keep_word(b.v[k], cut);
        dst[i] = keep ? src[i] * sc : T(0);
        if (m) m[i] = keep;
      }
    }
  };
  parallel_chunks(full, blocks, kParallelGrain / 16);
  for (int64_t i = 4 * full; i < n; ++i) {  // the last, partial block
    bool keep = ops::dropout_keep(seed, stream, step, base + static_cast<uint64_t>(i), ratio);
    out[i] = keep ? in[i] * scale : T(0);
    if (mask) mask[i] = keep;
  }
}

KernelPtr dropout(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "Dropout", [&]<class T>() {
    DropoutParams p = dropout_params(a, ops::dropout_stream(a.node.name));
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    uint8_t* mask = a.has_output(1) ? a.out_ptr<uint8_t>(1) : nullptr;
    int64_t n = a.in(0).shape.numel();
    const int64_t per_sample =
        ops::elements_per_sample(n, a.in(0).shape.rank() ? a.in(0).shape[0] : 0, rows_per_sample(a));
    kp = make_kernel([=](const StepContext& ctx) { apply_dropout(p, ctx, x, y, mask, n, per_sample); });
  });
  return kp;
}

KernelPtr dropout_grad(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "DropoutGrad", [&]<class T>() {
    DropoutParams p = dropout_params(a, static_cast<uint64_t>(a.attrs().i("stream")));
    const T* dy = a.in_ptr<T>(0);
    T* dx = a.out_ptr<T>(0);
    int64_t n = a.in(0).shape.numel();
    const int64_t per_sample =
        ops::elements_per_sample(n, a.in(0).shape.rank() ? a.in(0).shape[0] : 0, rows_per_sample(a));
    kp = make_kernel(
        [=](const StepContext& ctx) { apply_dropout<T>(p, ctx, dy, dx, nullptr, n, per_sample); });
  });
  return kp;
}

// RandomNormalLike and RandomUniformLike: element i of this replica is global element base + i, as Dropout's.
KernelPtr random_like(const KernelArgs& a) {
  KernelPtr kp;
  const bool normal = a.node.op == "RandomNormalLike";
  dispatch_float(a.out(0).dtype, a.node.op.c_str(), [&]<class T>() {
    T* y = a.out_ptr<T>(0);
    const int64_t n = a.out(0).shape.numel();
    const int64_t per_sample =
        ops::elements_per_sample(n, a.out(0).shape.rank() ? a.out(0).shape[0] : 0, rows_per_sample(a));
    const double shift = normal ? a.attrs().f("mean") : a.attrs().f("low");
    const double width = normal ? a.attrs().f("scale") : a.attrs().f("high") - a.attrs().f("low");
    const bool has_seed = a.attrs().has("seed");
    const int64_t attr_seed = has_seed ? static_cast<int64_t>(a.attrs().f("seed")) : 0;
    const uint64_t stream = ops::dropout_stream(a.node.name);
    kp = make_kernel([=](const StepContext& ctx) {
      const uint64_t seed = ops::dropout_seed(ctx.seed, has_seed, attr_seed), step = ctx.step;
      const uint64_t base = ctx.sample_offset * static_cast<uint64_t>(per_sample);
      parallel_for(n, [&](int64_t i) {
        const uint64_t j = base + static_cast<uint64_t>(i);
        const float z = normal ? kernels::philox_normal(seed, stream, step, j)
                               : kernels::philox_uniform(seed, stream, step, j);
        y[i] = static_cast<T>(shift + width * static_cast<double>(z));
      });
    });
  });
  return kp;
}

}  // namespace

void register_norm_cpu_kernels(KernelRegistry& r) {
  r.add("BatchNormalization", batch_norm);
  r.add("BatchNormalizationGrad", batch_norm_grad);
  r.add("LayerNormalization", layer_norm);
  r.add("LayerNormalizationGrad", layer_norm_grad);
  r.add("Dropout", dropout);
  r.add("DropoutGrad", dropout_grad);
  r.add("RandomNormalLike", random_like);
  r.add("RandomUniformLike", random_like);
}

}  // namespace trainer::engine::cpu
