// CPU kernels of the optimizer updates. One generic loop walks the (X, G, state...) tensors element by
// element and a per-op step function updates them in registers; step scalars (bias corrections, decayed
// rates) are computed once per run from R and T. Each output may share its state input's buffer: every
// element is read before it is written.
#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <vector>

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/parallel.h"

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
};

// Element-wise updates are memory bound; a smaller grain than the default lets large parameters use every
// core.
inline constexpr int64_t kUpdateGrain = 1 << 14;

template <class T, int K, class Step>
void apply(const UpdateTensor<T, K>& u, const Step& step) {
  parallel_chunks(
      u.n,
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          T x = u.x[i];
          T g = u.g[i];
          std::array<T, K> s;
          for (int k = 0; k < K; ++k) s[k] = u.s[k][i];
          step(x, g, s);
          if (u.x_out) u.x_out[i] = x;
          for (int k = 0; k < K; ++k)
            if (u.s_out[k]) u.s_out[k][i] = s[k];
        }
      },
      kUpdateGrain);
}

// Builds the kernel of an update op with K state tensors per updated value. make.template operator()<T>(r, t)
// returns the per-element step for one run, given the learning rate r and the update count t.
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
    return [=](T& x, T g, std::array<T, 2>& s) {
      T gr = g + l2 * x;
      T v = a1 * s[0] + (1 - a1) * gr;
      T h = b1 * s[1] + (1 - b1) * gr * gr;
      x = post * (x - rate * (v / (std::sqrt(h) + e)));
      s[0] = v;
      s[1] = h;
    };
  });
}

// Keras's SGD with momentum m maps onto Momentum with alpha = m, beta = 1, norm_coefficient = 0:
//   Keras:    v = m*v - lr*g;  w += v            (Nesterov: w += m*v - lr*g)
//   Momentum: V = m*V + g;     X -= lr*V         (Nesterov: X -= lr*(g + m*V))
// with V = -v/lr. The two agree exactly while lr is constant; under a schedule Keras's velocity keeps the old
// rates in it while Momentum applies the current rate to the whole velocity.
KernelPtr momentum(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double alpha = at.f("alpha"), beta = at.f("beta"), nc = at.f("norm_coefficient");
  bool nesterov = at.s("mode") == "nesterov";
  return update_kernel<1>(a, [=]<class T>(double r, int64_t t) {
    T rate = static_cast<T>(r), a1 = static_cast<T>(alpha), l2 = static_cast<T>(nc);
    T b1 = static_cast<T>(t > 0 ? beta : 1.0);  // the first update takes the whole gradient
    return [=](T& x, T g, std::array<T, 1>& s) {
      T gr = g + l2 * x;
      T v = a1 * s[0] + b1 * gr;
      x = nesterov ? x - rate * (gr + a1 * v) : x - rate * v;
      s[0] = v;
    };
  });
}

KernelPtr adagrad(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double decay = at.f("decay_factor"), eps = at.f("epsilon"), nc = at.f("norm_coefficient");
  return update_kernel<1>(a, [=]<class T>(double r, int64_t t) {
    T rate = static_cast<T>(r / (1 + static_cast<double>(t) * decay));
    T e = static_cast<T>(eps), l2 = static_cast<T>(nc);
    return [=](T& x, T g, std::array<T, 1>& s) {
      T gr = g + l2 * x;
      T h = s[0] + gr * gr;
      x = x - rate * gr / (std::sqrt(h) + e);
      s[0] = h;
    };
  });
}

KernelPtr adamw(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  double beta1 = at.f("beta1"), beta2 = at.f("beta2"), eps = at.f("epsilon"), wd = at.f("weight_decay");
  return update_kernel<2>(a, [=]<class T>(double r, int64_t t) {
    T rate = static_cast<T>(adam_rate(r, t, beta1, beta2));
    T decay = static_cast<T>(r * wd);
    T b1 = static_cast<T>(beta1), b2 = static_cast<T>(beta2), e = static_cast<T>(eps);
    return [=](T& x, T g, std::array<T, 2>& s) {
      x = x - decay * x;
      T m = b1 * s[0] + (1 - b1) * g;
      T v = b2 * s[1] + (1 - b2) * g * g;
      x = x - rate * (m / (std::sqrt(v) + e));
      s[0] = m;
      s[1] = v;
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
  if (a.inputs.size() == 6)
    return update_kernel<2>(a, [=]<class T>(double r, int64_t) {
      auto c = make.template operator()<T>(r);
      return [=](T& x, T g, std::array<T, 2>& s) {
        T gr = g + c.l2 * x;
        T v = c.rho * s[0] + (1 - c.rho) * gr * gr;
        T m = c.mom * s[1] + c.rate * gr / std::sqrt(v + c.eps);
        x = x - m;
        s[0] = v;
        s[1] = m;
      };
    });
  return update_kernel<1>(a, [=]<class T>(double r, int64_t) {
    auto c = make.template operator()<T>(r);
    return [=](T& x, T g, std::array<T, 1>& s) {
      T gr = g + c.l2 * x;
      T v = c.rho * s[0] + (1 - c.rho) * gr * gr;
      x = x - c.rate * gr / std::sqrt(v + c.eps);
      s[0] = v;
    };
  });
}

KernelPtr sgd(const KernelArgs& a) {
  double nc = a.attrs().f("norm_coefficient");
  return update_kernel<0>(a, [=]<class T>(double r, int64_t) {
    T rate = static_cast<T>(r), l2 = static_cast<T>(nc);
    return [=](T& x, T g, std::array<T, 0>&) { x = x - rate * (g + l2 * x); };
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

}  // namespace

void register_optimizer_cpu_kernels(KernelRegistry& r) {
  r.add("ClipByGlobalNorm", clip_by_global_norm);
  r.add("Adam", adam);
  r.add("Momentum", momentum);
  r.add("Adagrad", adagrad);
  r.add("AdamWUpdate", adamw);
  r.add("RMSpropUpdate", rmsprop);
  r.add("SGDUpdate", sgd);
}

}  // namespace trainer::engine::cpu
