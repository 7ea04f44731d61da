// CPU kernels of the optimizer updates. One generic vectorized loop walks the (X, G, state...) tensors
// element by element and a per-op step function updates them in registers; step scalars (bias corrections,
// decayed rates) are computed once per run from R and T. Each output may share its state input's buffer:
// every element is read before it is written.
#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <vector>

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/backend/cpu/vec_math.h"
#include "engine/kernels/nadam.h"

namespace trainer::engine::cpu {

namespace {

// One updated tensor: X, G and K state inputs, X_new and K state outputs (nullptr when an output is absent).
template <class T, int K>
struct UpdateTensor {
  const T* x = nullptr;
  const T* g = nullptr;
  std::array<const T*, K> s{};
  T* x_out = nullptr;
  std::array<T*, K> s_out{};
  int64_t n = 0;
  bool all_outputs() const {
    for (int k = 0; k < K; ++k)
      if (!s_out[k]) return false;
    return x_out != nullptr;
  }
};

// What a step function returns for one element: the new X and up to three new states.
template <class T>
struct Updated {
  T x, s0, s1, s2 = T(0);
};

// One element's step: (x, g, s0, s1) for up to two states, (x, g, s0, s1, s2) for three.
template <class T, int K, class Step>
inline Updated<T> step_of(const Step& step, T x, T g, T s0, T s1, T s2) {
  if constexpr (K > 2)
    return step(x, g, s0, s1, s2);
  else
    return step(x, g, s0, s1);
}

// Element-wise updates are memory bound; a smaller grain than the default lets large parameters use every
// core.
inline constexpr int64_t kUpdateGrain = 1 << 14;

// Elements [b, e) of one tensor with every output present. Each lane reads and writes only its own index, so
// `omp simd` holds even where an output shares its input's buffer. Values pass by value, not through arrays
// or references, so the loop vectorizes (sqrt included, as the engine builds without math errno).
template <class T, int K, class Step>
TRAINER_CPU_CLONES void update_range(const UpdateTensor<T, K>& u, int64_t b, int64_t e, const Step& step) {
  const T* x = u.x;
  const T* g = u.g;
  const T* s0 = nullptr;
  const T* s1 = nullptr;
  const T* s2 = nullptr;
  T* o0 = nullptr;
  T* o1 = nullptr;
  T* o2 = nullptr;
  if constexpr (K > 0) {
    s0 = u.s[0];
    o0 = u.s_out[0];
  }
  if constexpr (K > 1) {
    s1 = u.s[1];
    o1 = u.s_out[1];
  }
  if constexpr (K > 2) {
    s2 = u.s[2];
    o2 = u.s_out[2];
  }
  T* xo = u.x_out;
#pragma omp simd
  for (int64_t i = b; i < e; ++i) {
    Updated<T> r =
        step_of<T, K>(step, x[i], g[i], K > 0 ? s0[i] : T(0), K > 1 ? s1[i] : T(0), K > 2 ? s2[i] : T(0));
    xo[i] = r.x;
    if constexpr (K > 0) o0[i] = r.s0;
    if constexpr (K > 1) o1[i] = r.s1;
    if constexpr (K > 2) o2[i] = r.s2;
  }
}

// The same for tensors with absent outputs (their results are dropped): a plain loop.
template <class T, int K, class Step>
void update_range_partial(const UpdateTensor<T, K>& u, int64_t b, int64_t e, const Step& step) {
  for (int64_t i = b; i < e; ++i) {
    T st[3] = {T(0), T(0), T(0)};
    for (int k = 0; k < K; ++k) st[k] = u.s[k][i];
    Updated<T> r = step_of<T, K>(step, u.x[i], u.g[i], st[0], st[1], st[2]);
    const T out[3] = {r.s0, r.s1, r.s2};
    if (u.x_out) u.x_out[i] = r.x;
    for (int k = 0; k < K; ++k)
      if (u.s_out[k]) u.s_out[k][i] = out[k];
  }
}

template <class T, int K, class Step>
void apply(const UpdateTensor<T, K>& u, const Step& step) {
  bool full = u.all_outputs();
  parallel_chunks(
      u.n,
      [&](int64_t begin, int64_t end) {
        if (full)
          update_range<T, K>(u, begin, end, step);
        else
          update_range_partial<T, K>(u, begin, end, step);
      },
      kUpdateGrain);
}

// Builds the kernel of an update op with K state tensors per updated value. make.template operator()<T>(r, t)
// returns the per-element step for one run, given the learning rate r and the update count t: a function
// (x, g, s0, s1) -> Updated<T> (states past K are passed as 0 and ignored), or (x, g, s0, s1, s2) for K = 3.
template <int K, class Make>
KernelPtr update_kernel(const KernelArgs& a, Make make) {
  int nin = static_cast<int>(a.inputs.size());
  int n = (nin - 2) / (2 + K);
  TRAINER_ASSERT(n >= 1 && nin == 2 + (2 + K) * n, "{}: {} inputs for {} state tensors", a.node.op, nin, K);
  const void* r_ptr = a.inputs[0];
  bool r_f64 = a.in(0).dtype == DType::f64;
  const int64_t* t_ptr = a.in_ptr<int64_t>(1);
  KernelPtr kp;
  dispatch_float(a.in(2).dtype, a.node.op.c_str(), [&]<class T>() {
    auto tensors = std::make_shared<std::vector<UpdateTensor<T, K>>>(n);
    for (int j = 0; j < n; ++j) {
      UpdateTensor<T, K>& u = (*tensors)[j];
      u.x = a.in_ptr<T>(2 + j);
      u.g = a.in_ptr<T>(2 + n + j);
      for (int k = 0; k < K; ++k) u.s[k] = a.in_ptr<T>(2 + (2 + k) * n + j);
      u.x_out = a.has_output(j) ? a.out_ptr<T>(j) : nullptr;
      for (int k = 0; k < K; ++k) {
        int o = (1 + k) * n + j;
        u.s_out[k] = a.has_output(o) ? a.out_ptr<T>(o) : nullptr;
      }
      u.n = a.in(2 + j).shape.numel();
    }
    kp = make_kernel([=](const StepContext&) {
      double r = r_f64 ? *static_cast<const double*>(r_ptr) : *static_cast<const float*>(r_ptr);
      auto step = make.template operator()<T>(r, *t_ptr);
      for (const UpdateTensor<T, K>& u : *tensors) apply<T, K>(u, step);
    });
  });
  return kp;
}

// R*sqrt(1-beta2^t)/(1-beta1^t): Adam's bias-corrected step size; R itself before the first update (t <= 0).
double adam_rate(double r, int64_t t, double beta1, double beta2) {
  if (t <= 0) return r;
  double td = static_cast<double>(t);
  return r * std::sqrt(1 - std::pow(beta2, td)) / (1 - std::pow(beta1, td));
}

KernelPtr adam(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double alpha = at.f("alpha"), beta = at.f("beta"), eps = at.f("epsilon");
  double nc = at.f("norm_coefficient"), ncp = at.f("norm_coefficient_post");
  return update_kernel<2>(a, [=]<class T>(double r, int64_t t) {
    T rate = static_cast<T>(adam_rate(r, t, alpha, beta));
    T a1 = static_cast<T>(alpha), b1 = static_cast<T>(beta), e = static_cast<T>(eps);
    T l2 = static_cast<T>(nc), post = static_cast<T>(1 - ncp);
    return [=](T x, T g, T s0, T s1) {
      T gr = g + l2 * x;
      T v = a1 * s0 + (1 - a1) * gr;
      T h = b1 * s1 + (1 - b1) * gr * gr;
      return Updated<T>{post * (x - rate * (v / (std::sqrt(h) + e))), v, h};
    };
  });
}

// ONNX's Momentum (alpha, beta, norm_coefficient; standard or Nesterov). Keras's SGD with momentum m runs on
// it with alpha = m, beta = 1, norm_coefficient = 0, the rate R = 1 and the gradient times the rate G = lr*g
// (engine/optim/optimizer.cpp):
//   Keras:    v = m*v - lr*g;  w += v            (Nesterov: w += m*v - lr*g)
//   Momentum: V = m*V + G;     X -= R*V          (Nesterov: X -= R*(G + m*V))
// with V = -v: equal under any schedule.
KernelPtr momentum(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double alpha = at.f("alpha"), beta = at.f("beta"), nc = at.f("norm_coefficient");
  bool nesterov = at.s("mode") == "nesterov";
  return update_kernel<1>(a, [=]<class T>(double r, int64_t t) {
    T rate = static_cast<T>(r), a1 = static_cast<T>(alpha), l2 = static_cast<T>(nc);
    T b1 = static_cast<T>(t > 0 ? beta : 1.0);  // the first update takes the whole gradient
    return [=](T x, T g, T s0, T) {
      T gr = g + l2 * x;
      T v = a1 * s0 + b1 * gr;
      return Updated<T>{nesterov ? x - rate * (gr + a1 * v) : x - rate * v, v, T(0)};
    };
  });
}

KernelPtr adagrad(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double decay = at.f("decay_factor"), eps = at.f("epsilon"), nc = at.f("norm_coefficient");
  return update_kernel<1>(a, [=]<class T>(double r, int64_t t) {
    T rate = static_cast<T>(r / (1 + static_cast<double>(t) * decay));
    T e = static_cast<T>(eps), l2 = static_cast<T>(nc);
    return [=](T x, T g, T s0, T) {
      T gr = g + l2 * x;
      T h = s0 + gr * gr;
      return Updated<T>{x - rate * gr / (std::sqrt(h) + e), h, T(0)};
    };
  });
}

KernelPtr adamw(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double beta1 = at.f("beta1"), beta2 = at.f("beta2"), eps = at.f("epsilon"), wd = at.f("weight_decay");
  auto coeffs = [=]<class T>(double r, int64_t t) {
    return std::array<T, 5>{static_cast<T>(adam_rate(r, t, beta1, beta2)), static_cast<T>(r * wd),
                            static_cast<T>(beta1), static_cast<T>(beta2), static_cast<T>(eps)};
  };
  if (at.i("amsgrad"))
    return update_kernel<3>(a, [=]<class T>(double r, int64_t t) {
      const auto [rate, decay, b1, b2, e] = coeffs.template operator()<T>(r, t);
      return [=](T x, T g, T s0, T s1, T s2) {
        x = x - decay * x;
        T m = b1 * s0 + (1 - b1) * g;
        T v = b2 * s1 + (1 - b2) * g * g;
        T vmax = std::max(s2, v);
        return Updated<T>{x - rate * (m / (std::sqrt(vmax) + e)), m, v, vmax};
      };
    });
  return update_kernel<2>(a, [=]<class T>(double r, int64_t t) {
    const auto [rate, decay, b1, b2, e] = coeffs.template operator()<T>(r, t);
    return [=](T x, T g, T s0, T s1) {
      x = x - decay * x;
      T m = b1 * s0 + (1 - b1) * g;
      T v = b2 * s1 + (1 - b2) * g * g;
      return Updated<T>{x - rate * (m / (std::sqrt(v) + e)), m, v};
    };
  });
}

// Keras 3's Adamax, Nadam, Lion, Adadelta and Adagrad (see engine/ops/optimizer.cpp), each after the
// decoupled decay.
KernelPtr adamax(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double beta1 = at.f("beta1"), beta2 = at.f("beta2"), eps = at.f("epsilon"), wd = at.f("weight_decay");
  return update_kernel<2>(a, [=]<class T>(double r, int64_t t) {
    T rate = static_cast<T>(r / (1 - std::pow(beta1, static_cast<double>(t))));
    T decay = static_cast<T>(r * wd), b1 = static_cast<T>(beta1), b2 = static_cast<T>(beta2),
      e = static_cast<T>(eps);
    return [=](T x, T g, T s0, T s1) {
      x = x - decay * x;
      T m = b1 * s0 + (1 - b1) * g;
      T u = std::max(b2 * s1, std::abs(g));
      return Updated<T>{x - rate * m / (u + e), m, u};
    };
  });
}

KernelPtr nadam(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double beta1 = at.f("beta1"), beta2 = at.f("beta2"), eps = at.f("epsilon"), wd = at.f("weight_decay");
  return update_kernel<2>(a, [=]<class T>(double r, int64_t t) {
    const kernels::NadamFactors f = kernels::nadam_factors(beta1, beta2, t);
    T rate = static_cast<T>(r), decay = static_cast<T>(r * wd), b1 = static_cast<T>(beta1),
      b2 = static_cast<T>(beta2), e = static_cast<T>(eps), cm = static_cast<T>(f.moment),
      cg = static_cast<T>(f.gradient), cv = static_cast<T>(f.second);
    return [=](T x, T g, T s0, T s1) {
      x = x - decay * x;
      T m = b1 * s0 + (1 - b1) * g;
      T v = b2 * s1 + (1 - b2) * g * g;
      return Updated<T>{x - rate * (cm * m + cg * g) / (std::sqrt(v * cv) + e), m, v};
    };
  });
}

KernelPtr lion(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double beta1 = at.f("beta1"), beta2 = at.f("beta2"), wd = at.f("weight_decay");
  return update_kernel<1>(a, [=]<class T>(double r, int64_t) {
    T rate = static_cast<T>(r), decay = static_cast<T>(r * wd), b1 = static_cast<T>(beta1),
      b2 = static_cast<T>(beta2);
    return [=](T x, T g, T s0, T) {
      x = x - decay * x;
      const T c = b1 * s0 + (1 - b1) * g;
      const T sign = c > T(0) ? T(1) : c < T(0) ? T(-1) : T(0);
      return Updated<T>{x - rate * sign, b2 * s0 + (1 - b2) * g, T(0)};
    };
  });
}

KernelPtr adadelta(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double rho = at.f("rho"), eps = at.f("epsilon"), wd = at.f("weight_decay");
  return update_kernel<2>(a, [=]<class T>(double r, int64_t) {
    T rate = static_cast<T>(r), decay = static_cast<T>(r * wd), p = static_cast<T>(rho),
      e = static_cast<T>(eps);
    return [=](T x, T g, T s0, T s1) {
      x = x - decay * x;
      T acc = p * s0 + (1 - p) * g * g;
      T d = -std::sqrt(s1 + e) * g / std::sqrt(acc + e);
      return Updated<T>{x + rate * d, acc, p * s1 + (1 - p) * d * d};
    };
  });
}

KernelPtr keras_adagrad(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double eps = at.f("epsilon"), wd = at.f("weight_decay");
  return update_kernel<1>(a, [=]<class T>(double r, int64_t) {
    T rate = static_cast<T>(r), decay = static_cast<T>(r * wd), e = static_cast<T>(eps);
    return [=](T x, T g, T s0, T) {
      x = x - decay * x;
      T acc = s0 + g * g;
      return Updated<T>{x - rate * g / std::sqrt(acc + e), acc, T(0)};
    };
  });
}

KernelPtr rmsprop(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double rho = at.f("rho"), eps = at.f("epsilon"), mom = at.f("momentum"), nc = at.f("norm_coefficient");
  auto make = [=]<class T>(double r) {
    struct Coeffs {
      T rate, rho, eps, mom, l2;
    };
    return Coeffs{static_cast<T>(r), static_cast<T>(rho), static_cast<T>(eps), static_cast<T>(mom),
                  static_cast<T>(nc)};
  };
  // The states: V, then MOM when there are two (or three), then MG when centered.
  const bool centered = at.i("centered") != 0;
  const int states = static_cast<int>(a.inputs.size()) - 4;
  if (centered && states == 3)
    return update_kernel<3>(a, [=]<class T>(double r, int64_t) {
      auto c = make.template operator()<T>(r);
      return [=](T x, T g, T s0, T s1, T s2) {
        T gr = g + c.l2 * x;
        T v = c.rho * s0 + (1 - c.rho) * gr * gr;
        T mg = c.rho * s2 + (1 - c.rho) * gr;
        T m = c.mom * s1 + c.rate * gr / std::sqrt(v - mg * mg + c.eps);
        return Updated<T>{x - m, v, m, mg};
      };
    });
  if (centered)
    return update_kernel<2>(a, [=]<class T>(double r, int64_t) {
      auto c = make.template operator()<T>(r);
      return [=](T x, T g, T s0, T s1) {
        T gr = g + c.l2 * x;
        T v = c.rho * s0 + (1 - c.rho) * gr * gr;
        T mg = c.rho * s1 + (1 - c.rho) * gr;
        return Updated<T>{x - c.rate * gr / std::sqrt(v - mg * mg + c.eps), v, mg};
      };
    });
  if (states == 2)
    return update_kernel<2>(a, [=]<class T>(double r, int64_t) {
      auto c = make.template operator()<T>(r);
      return [=](T x, T g, T s0, T s1) {
        T gr = g + c.l2 * x;
        T v = c.rho * s0 + (1 - c.rho) * gr * gr;
        T m = c.mom * s1 + c.rate * gr / std::sqrt(v + c.eps);
        return Updated<T>{x - m, v, m};
      };
    });
  return update_kernel<1>(a, [=]<class T>(double r, int64_t) {
    auto c = make.template operator()<T>(r);
    return [=](T x, T g, T s0, T) {
      T gr = g + c.l2 * x;
      T v = c.rho * s0 + (1 - c.rho) * gr * gr;
      return Updated<T>{x - c.rate * gr / std::sqrt(v + c.eps), v, T(0)};
    };
  });
}

KernelPtr sgd(const KernelArgs& a) {
  double nc = a.attrs().f("norm_coefficient");
  return update_kernel<0>(a, [=]<class T>(double r, int64_t) {
    T rate = static_cast<T>(r), l2 = static_cast<T>(nc);
    return [=](T x, T g, T, T) { return Updated<T>{x - rate * (g + l2 * x), T(0), T(0)}; };
  });
}

// The norm is summed in double, tensor by tensor, each tensor in fixed per-thread chunks combined in order,
// so it is the same for a fixed thread count run after run.
KernelPtr clip_by_global_norm(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "ClipByGlobalNorm", [&]<class T>() {
    struct Part {
      const T* g;
      T* out;
      int64_t n;
    };
    int k = static_cast<int>(a.node.inputs.size());
    auto parts = std::make_shared<std::vector<Part>>();
    for (int i = 0; i < k; ++i) parts->push_back({a.in_ptr<T>(i), a.out_ptr<T>(i), a.in(i).shape.numel()});
    T* norm_out = a.has_output(k) ? a.out_ptr<T>(k) : nullptr;
    double clipnorm = a.attrs().f("clipnorm");
    auto partial = std::make_shared<std::vector<double>>(256, 0.0);
    kp = make_kernel([=](const StepContext&) {
      double total = 0;
      for (const Part& p : *parts) {
        std::fill(partial->begin(), partial->end(), 0.0);
        parallel_chunks(p.n, [&](int64_t b, int64_t e) {
          double s = 0;
          for (int64_t i = b; i < e; ++i) s += static_cast<double>(p.g[i]) * p.g[i];
          (*partial)[omp_get_thread_num() % partial->size()] = s;
        });
        for (double s : *partial) total += s;
      }
      double norm = std::sqrt(total);
      T scale = static_cast<T>(clipnorm / std::max(norm, clipnorm));
      for (const Part& p : *parts) parallel_for(p.n, [&](int64_t i) { p.out[i] = p.g[i] * scale; });
      if (norm_out) *norm_out = static_cast<T>(norm);
    });
  });
  return kp;
}

// Every element is multiplied by 1 / S and tested; the flag is the AND over all tensors.
KernelPtr unscale_gradients(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(1).dtype, "UnscaleGradients", [&]<class T>() {
    struct Part {
      const T* g;
      T* out;
      int64_t n;
    };
    const int k = static_cast<int>(a.node.inputs.size()) - 1;
    auto parts = std::make_shared<std::vector<Part>>();
    for (int i = 0; i < k; ++i)
      parts->push_back({a.in_ptr<T>(i + 1), a.out_ptr<T>(i), a.in(i + 1).shape.numel()});
    const float* scale = a.in_ptr<float>(0);
    bool* finite = a.out_ptr<bool>(k);
    kp = make_kernel([=](const StepContext&) {
      const T inv = static_cast<T>(1.0 / static_cast<double>(*scale));
      bool all = true;
      for (const Part& p : *parts) {
        bool ok = true;
#pragma omp parallel for reduction(&& : ok) schedule(static)
        for (int64_t i = 0; i < p.n; ++i) {
          ok = ok && std::isfinite(p.g[i]);
          p.out[i] = p.g[i] * inv;
        }
        all = all && ok;
      }
      *finite = all;
    });
  });
  return kp;
}

}  // namespace

void register_optimizer_cpu_kernels(KernelRegistry& r) {
  r.add("UnscaleGradients", unscale_gradients);
  r.add("ClipByGlobalNorm", clip_by_global_norm);
  r.add("Adam", adam);
  r.add("Momentum", momentum);
  r.add("Adagrad", adagrad);
  r.add("AdamWUpdate", adamw);
  r.add("RMSpropUpdate", rmsprop);
  r.add("AdamaxUpdate", adamax);
  r.add("NadamUpdate", nadam);
  r.add("LionUpdate", lion);
  r.add("AdadeltaUpdate", adadelta);
  r.add("AdagradUpdate", keras_adagrad);
  r.add("SGDUpdate", sgd);
}

}  // namespace trainer::engine::cpu
