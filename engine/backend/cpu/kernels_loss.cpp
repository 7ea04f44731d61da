// CPU kernels of op family 'loss': softmax cross-entropy and NLL over class indices, the elementwise losses,
// and their gradient ops, for f32 and f64. Reductions sum fixed blocks of positions in parallel and then the
// block partials in order, so a loss is bit-identical for any thread count.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/ops/loss_functors.h"

namespace trainer::engine::cpu {

namespace {

enum class Reduction { mean, sum, none };

Reduction reduction_of(const KernelArgs& a) {
  const std::string& r = a.attrs().s("reduction");
  return r == "sum" ? Reduction::sum : r == "none" ? Reduction::none : Reduction::mean;
}

struct Sum2 {
  double a = 0, b = 0;
};

// Sums f(i, acc) over [0, n) in a fixed number of blocks. The blocks depend on n only, never on the thread
// count. `cost` is the work per item, to decide whether forking threads pays.
template <class F>
Sum2 blocked_sum(int64_t n, int64_t cost, F&& f) {
  constexpr int64_t kBlocks = 64;
  std::array<Sum2, kBlocks> part{};
  int64_t nb = std::clamp<int64_t>(n, 1, kBlocks);
  parallel_for(
      nb,
      [&](int64_t b) {
        Sum2 s;
        for (int64_t i = n * b / nb, e = n * (b + 1) / nb; i < e; ++i) f(i, s);
        part[b] = s;
      },
      n * cost >= kParallelGrain ? 1 : nb + 1);
  Sum2 total;
  for (int64_t b = 0; b < nb; ++b) {
    total.a += part[b].a;
    total.b += part[b].b;
  }
  return total;
}

// ---- class-index losses ----

// Scores viewed as [n, c, d]: position p = (sample, d...) holds its c class scores at stride d.
struct ClassLayout {
  int64_t n = 1, c = 1, d = 1;
  explicit ClassLayout(const Shape& s) : n(s[0]), c(s[1]) {
    for (int k = 2; k < s.rank(); ++k) d *= s[k];
  }
  int64_t positions() const { return n * d; }
  int64_t base(int64_t p) const { return (p / d) * c * d + p % d; }  // element of class 0 at position p
};

// Labels of either index type, ignore_index and class weights: the weight of position p (0 when ignored).
template <class T>
struct LabelView {
  const void* labels = nullptr;
  bool i64 = true;
  bool has_ignore = false;
  int64_t ignore = 0;
  const T* weights = nullptr;
  int64_t classes = 0;

  int64_t label(int64_t p) const {
    return i64 ? static_cast<const int64_t*>(labels)[p] : static_cast<const int32_t*>(labels)[p];
  }
  bool ignored(int64_t l) const { return (has_ignore && l == ignore) || l < 0 || l >= classes; }
  double weight(int64_t l) const {
    return ignored(l) ? 0.0 : (weights ? static_cast<double>(weights[l]) : 1.0);
  }

  // An out-of-range label that is not ignore_index is bad data: name it rather than read out of bounds.
  void validate(const std::string& node, int64_t positions) const {
    for (int64_t p = 0; p < positions; ++p) {
      int64_t l = label(p);
      if ((has_ignore && l == ignore) || (l >= 0 && l < classes)) continue;
      throw InputError(node, fmt::format("label {} at position {} is outside [0, {})", l, p, classes),
                       "labels must be class indices; set ignore_index to skip some");
    }
  }
};

// `first` is the index of the scores input; labels and weights follow it.
template <class T>
LabelView<T> label_view(const KernelArgs& a, int first) {
  LabelView<T> v;
  v.labels = a.inputs[first + 1];
  v.i64 = a.in(first + 1).dtype == DType::i64;
  v.has_ignore = a.attrs().has("ignore_index");
  if (v.has_ignore) v.ignore = a.attrs().i("ignore_index");
  v.weights = a.has_input(first + 2) ? a.in_ptr<T>(first + 2) : nullptr;
  v.classes = a.in(first).shape[1];
  return v;
}

// log(sum(exp(x_k))) over the classes of one position, shifted by the maximum for stability.
template <class T>
double log_sum_exp(const T* x, int64_t c, int64_t stride) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t k = 0; k < c; ++k) mx = std::max(mx, static_cast<double>(x[k * stride]));
  double s = 0;
  for (int64_t k = 0; k < c; ++k) s += std::exp(x[k * stride] - mx);
  return mx + std::log(s);
}

// Writes a reduced loss: the weighted sum, or its mean over the total weight (0 when every position is
// ignored).
template <class T>
void store_reduced(T* out, Reduction r, const Sum2& s) {
  out[0] = static_cast<T>(r == Reduction::sum ? s.a : (s.b != 0 ? s.a / s.b : 0.0));
}

KernelPtr softmax_cross_entropy(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "SoftmaxCrossEntropyLoss", [&]<class T>() {
    ClassLayout l(a.in(0).shape);
    LabelView<T> lv = label_view<T>(a, 0);
    const T* x = a.in_ptr<T>(0);
    T* out = a.out_ptr<T>(0);
    T* log_prob = a.has_output(1) ? a.out_ptr<T>(1) : nullptr;
    Reduction red = reduction_of(a);
    std::string node = a.node.name;
    kp = make_kernel([=](const StepContext&) {
      lv.validate(node, l.positions());
      // -log_softmax at the label, times the label's weight; *w receives that weight.
      auto position_loss = [&](int64_t p, double* w) {
        const T* xp = x + l.base(p);
        double lse = log_sum_exp(xp, l.c, l.d);
        if (log_prob)
          for (int64_t k = 0; k < l.c; ++k) log_prob[l.base(p) + k * l.d] = static_cast<T>(xp[k * l.d] - lse);
        int64_t label = lv.label(p);
        *w = lv.weight(label);
        return *w == 0 ? 0.0 : -(xp[label * l.d] - lse) * *w;
      };
      if (red == Reduction::none) {
        parallel_for(
            l.positions(),
            [&](int64_t p) {
              double w;
              out[p] = static_cast<T>(position_loss(p, &w));
            },
            std::max<int64_t>(1, kParallelGrain / l.c));
      } else {
        Sum2 s = blocked_sum(l.positions(), l.c, [&](int64_t p, Sum2& acc) {
          double w;
          acc.a += position_loss(p, &w);
          acc.b += w;
        });
        store_reduced(out, red, s);
      }
    });
  });
  return kp;
}

// The factor each position's gradient is scaled by: dloss per position, dloss, or dloss over the total
// weight.
template <class T>
struct LossScale {
  const T* dloss;
  Reduction red;
  double shared = 0;  // sum and mean: the one factor of every position
  double at(int64_t p) const { return red == Reduction::none ? static_cast<double>(dloss[p]) : shared; }
};

template <class T>
LossScale<T> loss_scale(const T* dloss, Reduction red, const LabelView<T>& lv, int64_t positions,
                        int64_t cost) {
  LossScale<T> s{dloss, red};
  if (red == Reduction::sum) s.shared = dloss[0];
  if (red == Reduction::mean) {
    Sum2 w = blocked_sum(positions, cost, [&](int64_t p, Sum2& acc) { acc.a += lv.weight(lv.label(p)); });
    s.shared = w.a != 0 ? dloss[0] / w.a : 0.0;
  }
  return s;
}

// Inputs (dloss, scores, labels, [weights], [d log_prob]) -> dscores.
KernelPtr softmax_cross_entropy_grad(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(1).dtype, "SoftmaxCrossEntropyLossGrad", [&]<class T>() {
    ClassLayout l(a.in(1).shape);
    LabelView<T> lv = label_view<T>(a, 1);
    const T* dloss = a.in_ptr<T>(0);
    const T* x = a.in_ptr<T>(1);
    const T* g_log_prob = a.has_input(4) ? a.in_ptr<T>(4) : nullptr;
    T* dx = a.out_ptr<T>(0);
    Reduction red = reduction_of(a);
    kp = make_kernel([=](const StepContext&) {
      LossScale<T> scale = loss_scale(dloss, red, lv, l.positions(), 1);
      parallel_for(
          l.positions(),
          [&](int64_t p) {
            int64_t b = l.base(p);
            const T* xp = x + b;
            double lse = log_sum_exp(xp, l.c, l.d);
            int64_t label = lv.label(p);
            double s = lv.weight(label) * scale.at(p);
            // log_prob = x - lse, so its gradient reaches x as g - softmax * sum(g).
            double g_sum = 0;
            if (g_log_prob)
              for (int64_t k = 0; k < l.c; ++k) g_sum += g_log_prob[b + k * l.d];
            for (int64_t k = 0; k < l.c; ++k) {
              double sm = std::exp(xp[k * l.d] - lse);
              double g = (sm - (k == label ? 1.0 : 0.0)) * s;
              if (g_log_prob) g += g_log_prob[b + k * l.d] - sm * g_sum;
              dx[b + k * l.d] = static_cast<T>(g);
            }
          },
          std::max<int64_t>(1, kParallelGrain / l.c));
    });
  });
  return kp;
}

KernelPtr nll(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "NegativeLogLikelihoodLoss", [&]<class T>() {
    ClassLayout l(a.in(0).shape);
    LabelView<T> lv = label_view<T>(a, 0);
    const T* x = a.in_ptr<T>(0);
    T* out = a.out_ptr<T>(0);
    Reduction red = reduction_of(a);
    std::string node = a.node.name;
    kp = make_kernel([=](const StepContext&) {
      lv.validate(node, l.positions());
      auto position_loss = [&](int64_t p, double* w) {
        int64_t label = lv.label(p);
        *w = lv.weight(label);
        return *w == 0 ? 0.0 : -static_cast<double>(x[l.base(p) + label * l.d]) * *w;
      };
      if (red == Reduction::none) {
        parallel_for(l.positions(), [&](int64_t p) {
          double w;
          out[p] = static_cast<T>(position_loss(p, &w));
        });
      } else {
        Sum2 s = blocked_sum(l.positions(), 1, [&](int64_t p, Sum2& acc) {
          double w;
          acc.a += position_loss(p, &w);
          acc.b += w;
        });
        store_reduced(out, red, s);
      }
    });
  });
  return kp;
}

// Inputs (dloss, input, target, [weight]) -> dinput.
KernelPtr nll_grad(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_float(a.in(1).dtype, "NegativeLogLikelihoodLossGrad", [&]<class T>() {
    ClassLayout l(a.in(1).shape);
    LabelView<T> lv = label_view<T>(a, 1);
    const T* dloss = a.in_ptr<T>(0);
    T* dx = a.out_ptr<T>(0);
    Reduction red = reduction_of(a);
    kp = make_kernel([=](const StepContext&) {
      LossScale<T> scale = loss_scale(dloss, red, lv, l.positions(), 1);
      parallel_for(
          l.positions(),
          [&](int64_t p) {
            int64_t b = l.base(p);
            for (int64_t k = 0; k < l.c; ++k) dx[b + k * l.d] = T(0);
            int64_t label = lv.label(p);
            double w = lv.weight(label);
            if (w != 0) dx[b + label * l.d] = static_cast<T>(-w * scale.at(p));
          },
          std::max<int64_t>(1, kParallelGrain / l.c));
    });
  });
  return kp;
}

// ---- elementwise losses ----

template <class Fn, class Make>
KernelFactory elementwise_loss(Make make) {
  return [make](const KernelArgs& a) -> KernelPtr {
    KernelPtr kp;
    Fn fn = make(a);
    dispatch_float(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
      const T* p = a.in_ptr<T>(0);
      const T* t = a.in_ptr<T>(1);
      T* out = a.out_ptr<T>(0);
      int64_t n = a.in(0).shape.numel();
      Reduction red = reduction_of(a);
      kp = make_kernel([=](const StepContext&) {
        if (red == Reduction::none) {
          parallel_for(n, [&](int64_t i) { out[i] = static_cast<T>(fn.value(p[i], t[i])); });
          return;
        }
        Sum2 s = blocked_sum(n, 1, [&](int64_t i, Sum2& acc) { acc.a += fn.value(p[i], t[i]); });
        out[0] =
            static_cast<T>(red == Reduction::sum ? s.a : s.a / static_cast<double>(std::max<int64_t>(n, 1)));
      });
    });
    return kp;
  };
}

// Inputs (dloss, prediction, target) -> dprediction.
template <class Fn, class Make>
KernelFactory elementwise_loss_grad(Make make) {
  return [make](const KernelArgs& a) -> KernelPtr {
    KernelPtr kp;
    Fn fn = make(a);
    dispatch_float(a.in(1).dtype, a.node.op.c_str(), [&]<class T>() {
      const T* dloss = a.in_ptr<T>(0);
      const T* p = a.in_ptr<T>(1);
      const T* t = a.in_ptr<T>(2);
      T* dp = a.out_ptr<T>(0);
      int64_t n = a.in(1).shape.numel();
      Reduction red = reduction_of(a);
      kp = make_kernel([=](const StepContext&) {
        if (red == Reduction::none) {
          parallel_for(n, [&](int64_t i) { dp[i] = static_cast<T>(fn.deriv(p[i], t[i]) * dloss[i]); });
          return;
        }
        double s = red == Reduction::sum ? dloss[0] : dloss[0] / static_cast<double>(std::max<int64_t>(n, 1));
        parallel_for(n, [&](int64_t i) { dp[i] = static_cast<T>(fn.deriv(p[i], t[i]) * s); });
      });
    });
    return kp;
  };
}

ops::BinaryCrossEntropyFn make_bce(const KernelArgs& a) {
  return {a.attrs().f("epsilon")};
}
template <class Fn>
Fn make_plain(const KernelArgs&) {
  return Fn{};
}

}  // namespace

void register_loss_cpu_kernels(KernelRegistry& r) {
  r.add("SoftmaxCrossEntropyLoss", softmax_cross_entropy);
  r.add("SoftmaxCrossEntropyLossGrad", softmax_cross_entropy_grad);
  r.add("NegativeLogLikelihoodLoss", nll);
  r.add("NegativeLogLikelihoodLossGrad", nll_grad);
  r.add("BinaryCrossEntropy", elementwise_loss<ops::BinaryCrossEntropyFn>(make_bce));
  r.add("BinaryCrossEntropyGrad", elementwise_loss_grad<ops::BinaryCrossEntropyFn>(make_bce));
  using Logits = ops::BinaryCrossEntropyWithLogitsFn;
  r.add("BinaryCrossEntropyWithLogits", elementwise_loss<Logits>(make_plain<Logits>));
  r.add("BinaryCrossEntropyWithLogitsGrad", elementwise_loss_grad<Logits>(make_plain<Logits>));
  r.add("MeanSquaredError", elementwise_loss<ops::SquaredErrorFn>(make_plain<ops::SquaredErrorFn>));
  r.add("MeanSquaredErrorGrad", elementwise_loss_grad<ops::SquaredErrorFn>(make_plain<ops::SquaredErrorFn>));
  r.add("MeanAbsoluteError", elementwise_loss<ops::AbsoluteErrorFn>(make_plain<ops::AbsoluteErrorFn>));
  r.add("MeanAbsoluteErrorGrad",
        elementwise_loss_grad<ops::AbsoluteErrorFn>(make_plain<ops::AbsoluteErrorFn>));
}

}  // namespace trainer::engine::cpu
