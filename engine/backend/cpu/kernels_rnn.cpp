// CPU kernels of ONNX LSTM, GRU and RNN and of their gradients (backpropagation through time).
// Per direction: one GEMM projects the whole sequence's inputs (X·Wᵀ), then each time step runs a small GEMM
// for the recurrence (H·Rᵀ) and one fused elementwise pass over the gates. The gradient kernels need the
// forward pass's gate activations and states: a single-direction node's forward kernel records them for its
// gradient kernel in the same plan; otherwise the gradient kernel reruns the forward pass to record them.
// Backward then walks the steps backwards with one GEMM per step for dH, and finishes with whole-sequence
// GEMMs for dW, dR and dX. Every buffer is allocated when the kernel is prepared.
// Batch rows never interact in the recurrence, so the time loop runs as one parallel region in which each
// thread owns a fixed slice of the batch and runs its own single-threaded step GEMMs: no barrier per time
// step (a step's work is a few microseconds, less than waking a team costs), and the same rows always go
// to the same thread, which keeps results deterministic.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/backend/cpu/rnn_gemm.h"
#include "engine/backend/cpu/vec_math.h"
#include "engine/backend/weak_registry.h"
#include "engine/ops/rnn_config.h"

namespace trainer::engine::cpu {

namespace {

using ops::RnnActivation;
using ops::RnnActKind;
using ops::RnnCell;
using ops::RnnConfig;

template <class T>
inline T act_value(const RnnActivation& a, T x) {
  switch (a.kind) {
    case RnnActKind::sigmoid:
      return T(1) / (T(1) + std::exp(-x));
    case RnnActKind::tanh:
      return std::tanh(x);
    case RnnActKind::relu:
      return x > T(0) ? x : T(0);
    case RnnActKind::hard_sigmoid:
      return std::clamp(T(a.alpha) * x + T(a.beta), T(0), T(1));
    case RnnActKind::leaky_relu:
      return x >= T(0) ? x : T(a.alpha) * x;
  }
  return x;
}

// The derivative at the input that produced output y (every supported activation allows this).
template <class T>
inline T act_slope(const RnnActivation& a, T y) {
  switch (a.kind) {
    case RnnActKind::sigmoid:
      return y * (T(1) - y);
    case RnnActKind::tanh:
      return T(1) - y * y;
    case RnnActKind::relu:
      return y > T(0) ? T(1) : T(0);
    case RnnActKind::hard_sigmoid:
      return y > T(0) && y < T(1) ? T(a.alpha) : T(0);
    case RnnActKind::leaky_relu:
      return y > T(0) ? T(1) : T(a.alpha);
  }
  return T(1);
}

// f32 sigmoid and tanh without library calls, so the loops vectorize (they dominate the cell's elementwise
// work); f64 keeps libm for the gradient checks.
TRAINER_CPU_CLONES void sigmoid_inplace(float* v, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) v[j] = sigmoid_f(v[j]);
}

TRAINER_CPU_CLONES void tanh_inplace(float* v, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) v[j] = tanh_f(v[j]);
}

// Applies an activation in place to n values, with the switch hoisted out of the loop.
template <class T>
void act_inplace(const RnnActivation& a, T* v, int64_t n) {
  switch (a.kind) {
    case RnnActKind::sigmoid:
      if constexpr (std::is_same_v<T, float>)
        sigmoid_inplace(v, n);
      else
        for (int64_t j = 0; j < n; ++j) v[j] = T(1) / (T(1) + std::exp(-v[j]));
      return;
    case RnnActKind::tanh:
      if constexpr (std::is_same_v<T, float>)
        tanh_inplace(v, n);
      else
        for (int64_t j = 0; j < n; ++j) v[j] = std::tanh(v[j]);
      return;
    default:
      for (int64_t j = 0; j < n; ++j) v[j] = act_value(a, v[j]);
  }
}

// One LSTM batch row's step for the default cell (sigmoid gates, tanh cell and output activations; no clip,
// peepholes or coupled input and forget gates), as vectorized passes. a receives the activated gates i, o, f,
// c of xr + rr + bias; c is the cell state, updated; hc receives h(C) and h the output.
TRAINER_CPU_CLONES void lstm_row_default(const float* xr, const float* rr, const float* bias, float* a,
                                         float* c, float* hc, float* h, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < 3 * H; ++j) a[j] = sigmoid_f(xr[j] + rr[j] + bias[j]);
#pragma omp simd
  for (int64_t j = 3 * H; j < 4 * H; ++j) a[j] = tanh_f(xr[j] + rr[j] + bias[j]);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float cn = a[2 * H + j] * c[j] + a[j] * a[3 * H + j];
    c[j] = cn;
    hc[j] = tanh_f(cn);
    h[j] = a[H + j] * hc[j];
  }
}

// The gate gradients of one LSTM batch row for the default cell (sigmoid gates, tanh cell and output
// activations; no clip, peepholes or coupled input and forget gates), as one vectorized pass. a: the gates i,
// o, f, c; hc: h(C); cp: the previous cell state; dc: the cell gradient in, the previous step's out.
TRAINER_CPU_CLONES void lstm_row_grad_default(const float* a, const float* hc, const float* cp,
                                              const float* dh, float* dc, float* da, int64_t H) {
  const float *gi = a, *go = a + H, *gf = a + 2 * H, *gc = a + 3 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float dH = dh[j];
    const float dC = dc[j] + dH * go[j] * (1.0f - hc[j] * hc[j]);
    da[j] = dC * gc[j] * (gi[j] * (1.0f - gi[j]));
    da[H + j] = dH * hc[j] * (go[j] * (1.0f - go[j]));
    da[2 * H + j] = dC * cp[j] * (gf[j] * (1.0f - gf[j]));
    da[3 * H + j] = dC * gi[j] * (1.0f - gc[j] * gc[j]);
    dc[j] = dC * gf[j];
  }
}

// Sets out = act(in) for n values.
template <class T>
void act_copy(const RnnActivation& a, const T* in, T* out, int64_t n) {
  std::memcpy(out, in, static_cast<size_t>(n) * sizeof(T));
  act_inplace(a, out, n);
}

template <class T>
void clip_inplace(const std::optional<float>& clip, T* v, int64_t n) {
  if (!clip) return;
  const T c = T(*clip);
  for (int64_t j = 0; j < n; ++j) v[j] = std::clamp(v[j], -c, c);
}

// 1 where a pre-activation was inside the clip range (its gradient passes), 0 where it was clipped.
template <class T>
inline T clip_pass(const T* pre, int64_t j, T clip) {
  return pre == nullptr || std::abs(pre[j]) <= clip ? T(1) : T(0);
}

template <class T>
void copy_row(T* dst, const T* src, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
}

// What backward needs from the forward pass, in X's row order (row = x_row(t, b)): gate activations,
// pre-activations (with clip), states before and after each step, the GRU's reset product (r ⊙ H_prev,
// or H_prev·R[h]ᵀ + Rb[h]), and with a recurrent dropout mask the recurrent product's input H_prev ⊙ mask
// (rin). `fresh`: written by a forward kernel since a gradient kernel last read them.
template <class T>
struct RnnRecords {
  std::vector<T> act, pre, hprev, cprev, c, aux, rin;
  bool fresh = false;
};

// Every recurrent kernel: the forward pass (optionally recording what backward needs) and backward.
template <class T>
class RnnRunner {
 public:
  // `shared`: the records of the forward kernel of the same node in this plan, for a gradient kernel (see
  // share_records).
  RnnRunner(const KernelArgs& a, RnnCell cell, bool backward, std::shared_ptr<RnnRecords<T>> shared = nullptr)
      : backward_(backward) {
    std::string err = ops::parse_rnn_config(cell, a.attrs(), a.in(0).shape, a.in(2).shape, &cfg_);
    TRAINER_ASSERT(err.empty(), "{} passed shape inference but: {}", a.node.op, err);
    const bool lstm = cell == RnnCell::lstm, gru = cell == RnnCell::gru;
    H_ = cfg_.hidden;
    GH_ = cfg_.gates() * H_;
    N_ = cfg_.seq * cfg_.batch;
    const int64_t Bt = cfg_.batch, I = cfg_.input;
    lbr_ = cfg_.linear_before_reset;

    x_ = a.in_ptr<T>(0);
    w_ = a.in_ptr<T>(1);
    r_ = a.in_ptr<T>(2);
    b_ = a.has_input(3) ? a.in_ptr<T>(3) : nullptr;
    if (a.has_input(4)) {
      lens_ = a.inputs[4];
      lens_i64_ = a.in(4).dtype == DType::i64;
    }
    h0_ = a.has_input(5) ? a.in_ptr<T>(5) : nullptr;
    if (lstm) {
      c0_ = a.has_input(6) ? a.in_ptr<T>(6) : nullptr;
      p_ = a.has_input(7) ? a.in_ptr<T>(7) : nullptr;
    }
    const int nf = ops::rnn_forward_inputs(cell);
    if (const int m = ops::rnn_mask_input(cell); a.has_input(m)) mask_ = a.in_ptr<T>(m);
    if (!backward) {
      y_ = a.has_output(0) ? a.out_ptr<T>(0) : nullptr;
      yh_ = a.has_output(1) ? a.out_ptr<T>(1) : nullptr;
      if (lstm) yc_ = a.has_output(2) ? a.out_ptr<T>(2) : nullptr;
    } else {
      dy_ = a.has_input(nf) ? a.in_ptr<T>(nf) : nullptr;
      dyh_ = a.has_input(nf + 1) ? a.in_ptr<T>(nf + 1) : nullptr;
      if (lstm) dyc_ = a.has_input(nf + 2) ? a.in_ptr<T>(nf + 2) : nullptr;
      auto out = [&](int k) { return a.has_output(k) ? a.out_ptr<T>(k) : nullptr; };
      dx_ = out(0);
      dw_ = out(1);
      dr_ = out(2);
      db_ = out(3);
      dh0_ = out(4);
      if (lstm) {
        dc0_ = out(5);
        dp_ = out(6);
      }
    }

    len_.assign(Bt, cfg_.seq);
    xw_.assign(N_ * GH_, T(0));
    rh_.assign(Bt * GH_, T(0));
    gate_.assign(Bt * GH_, T(0));
    h_.assign(Bt * H_, T(0));
    if (mask_) hin_.assign(Bt * H_, T(0));
    act_row_.assign(Bt * H_, T(0));
    if (lstm) c_.assign(Bt * H_, T(0));
    if (gru && !lbr_) rhp_.assign(Bt * H_, T(0));
    bias_.assign(GH_ + H_, T(0));

    if (backward) {
      rec_ = shared ? std::move(shared) : std::make_shared<RnnRecords<T>>();
      allocate_records();
      record_ = true;
      daw_.assign(N_ * GH_, T(0));
      if (gru && lbr_) {
        dar_.assign(N_ * GH_, T(0));
        dar_step_.assign(Bt * GH_, T(0));
      }
      da_step_.assign(Bt * GH_, T(0));
      dh_.assign(Bt * H_, T(0));
      if (lstm) dc_.assign(Bt * H_, T(0));
      dhr_.assign(Bt * H_, T(0));
      if (gru && !lbr_) drh_.assign(Bt * H_, T(0));
    }

    // Batch slices, one per thread (see the file comment).
    const int slices =
        static_cast<int>(std::clamp<int64_t>(omp_get_max_threads(), 1, std::max<int64_t>(Bt, 1)));
    for (int k = 0; k < slices; ++k) slices_.push_back({Bt * k / slices, Bt * (k + 1) / slices});

    for (int d = 0; d < cfg_.dirs; ++d) {
      const T* wd = w_ + d * GH_ * I;
      const T* rd = r_ + d * GH_ * H_;
      Dir g;
      g.xw = FixedGemm<T>(N_, GH_, I, {x_, I, 1}, {wd, 1, I}, xw_.data(), GH_, false);
      {
        // The step GEMMs run inside the slices' parallel region, one thread each: plan them for one thread.
        const int threads = omp_get_max_threads();
        omp_set_num_threads(1);
        for (const Slice& sl : slices_) {
          const int64_t b0 = sl.b0, rows = sl.b1 - sl.b0;
          StepGemms sg;
          // The recurrent product reads H_prev ⊙ mask under recurrent dropout.
          T* h = (mask_ ? hin_.data() : h_.data()) + b0 * H_;
          T* rh = rh_.data() + b0 * GH_;
          if (!gru || lbr_) {
            sg.rh = FixedGemm<T>(rows, GH_, H_, {h, H_, 1}, {rd, 1, H_}, rh, GH_, false);
          } else {
            // Reset-before-linear GRU: z and r from H·R[z,r]ᵀ, then the candidate from (r ⊙ H)·R[h]ᵀ.
            sg.rh = FixedGemm<T>(rows, 2 * H_, H_, {h, H_, 1}, {rd, 1, H_}, rh, GH_, false);
            sg.rh2 = FixedGemm<T>(rows, H_, H_, {rhp_.data() + b0 * H_, H_, 1}, {rd + 2 * H_ * H_, 1, H_},
                                  rh + 2 * H_, GH_, false);
          }
          if (backward) {
            T* da = da_step_.data() + b0 * GH_;
            T* dhr = dhr_.data() + b0 * H_;
            if (!gru) {
              sg.dh = FixedGemm<T>(rows, H_, GH_, {da, GH_, 1}, {rd, H_, 1}, dhr, H_, false);
            } else if (lbr_) {
              sg.dh = FixedGemm<T>(rows, H_, GH_, {dar_step_.data() + b0 * GH_, GH_, 1}, {rd, H_, 1}, dhr, H_,
                                   false);
            } else {
              sg.dh = FixedGemm<T>(rows, H_, 2 * H_, {da, GH_, 1}, {rd, H_, 1}, dhr, H_, false);
              sg.drh = FixedGemm<T>(rows, H_, H_, {da + 2 * H_, GH_, 1}, {rd + 2 * H_ * H_, H_, 1},
                                    drh_.data() + b0 * H_, H_, false);
            }
          }
          g.step.push_back(std::move(sg));
        }
        omp_set_num_threads(threads);
      }
      if (backward) {
        if (dw_)
          g.dw = FixedGemm<T>(GH_, I, N_, {daw_.data(), 1, GH_}, {x_, I, 1}, dw_ + d * GH_ * I, I, false);
        if (dr_) {
          T* drd = dr_ + d * GH_ * H_;
          const T* hin = mask_ ? rec_->rin.data() : rec_->hprev.data();
          if (!gru) {
            g.dr = FixedGemm<T>(GH_, H_, N_, {daw_.data(), 1, GH_}, {hin, H_, 1}, drd, H_, false);
          } else if (lbr_) {
            g.dr = FixedGemm<T>(GH_, H_, N_, {dar_.data(), 1, GH_}, {hin, H_, 1}, drd, H_, false);
          } else {
            g.dr = FixedGemm<T>(2 * H_, H_, N_, {daw_.data(), 1, GH_}, {hin, H_, 1}, drd, H_, false);
            g.dr2 = FixedGemm<T>(H_, H_, N_, {daw_.data() + 2 * H_, 1, GH_}, {rec_->aux.data(), H_, 1},
                                 drd + 2 * H_ * H_, H_, false);
          }
        }
        if (dx_) g.dx = FixedGemm<T>(N_, I, GH_, {daw_.data(), GH_, 1}, {wd, I, 1}, dx_, I, d > 0);
      }
      dirs_.push_back(std::move(g));
    }
  }

  // Makes this forward kernel record what backward needs, and returns the records for the gradient kernel of
  // the same node, which then skips its own rerun of the forward pass. Records hold one direction, so only
  // single-direction nodes share. Called at prepare time.
  std::shared_ptr<RnnRecords<T>> share_records() {
    if (backward_ || cfg_.dirs != 1) return nullptr;
    if (!rec_) {
      rec_ = std::make_shared<RnnRecords<T>>();
      allocate_records();
      record_ = true;
    }
    return rec_;
  }

  void run() {
    read_lengths();
    const bool lstm = cfg_.cell == RnnCell::lstm;
    for (int d = 0; d < cfg_.dirs; ++d) {
      // The forward kernel of this step left its records: the inputs are the same (the plan runs it first,
      // and nothing between writes them), so its pass would be recomputed bit for bit.
      const bool recorded = backward_ && cfg_.dirs == 1 && rec_->fresh;
      if (!recorded) {
        if (lstm)
          lstm_forward(d);
        else if (cfg_.cell == RnnCell::gru)
          gru_forward(d);
        else
          rnn_forward(d);
      }
      if (backward_) {
        rec_->fresh = false;
        if (lstm)
          lstm_backward(d);
        else if (cfg_.cell == RnnCell::gru)
          gru_backward(d);
        else
          rnn_backward(d);
      } else if (record_) {
        rec_->fresh = true;
      }
    }
  }

 private:
  void allocate_records() {
    RnnRecords<T>& r = *rec_;
    if (!r.act.empty()) return;  // shared, and already allocated by the other kernel
    const bool lstm = cfg_.cell == RnnCell::lstm;
    r.act.assign(N_ * GH_, T(0));
    if (cfg_.clip) r.pre.assign(N_ * GH_, T(0));
    r.hprev.assign(N_ * H_, T(0));
    if (mask_) r.rin.assign(N_ * H_, T(0));
    if (lstm) {
      r.cprev.assign(N_ * H_, T(0));
      r.c.assign(N_ * H_, T(0));
    } else if (cfg_.cell == RnnCell::gru) {
      r.aux.assign(N_ * H_, T(0));
    }
  }

  // Rows [b0, b1) of the batch.
  struct Slice {
    int64_t b0 = 0, b1 = 0;
  };
  // The per-step GEMMs of one slice: forward rh (and rh2), backward dh (and drh).
  struct StepGemms {
    FixedGemm<T> rh, rh2, dh, drh;
  };
  struct Dir {
    FixedGemm<T> xw;               // forward, whole sequence
    std::vector<StepGemms> step;   // per slice
    FixedGemm<T> dw, dr, dr2, dx;  // backward, whole sequence
  };

  // Runs f(slice) for every slice, each on one thread of one parallel region. Should the region get fewer
  // threads, a thread runs several slices: rows never depend on which thread runs them.
  template <class F>
  void for_slices(const F& f) {
    const int ns = static_cast<int>(slices_.size());
    if (ns == 1) {
      f(0);
      return;
    }
#pragma omp parallel num_threads(ns)
    {
      for (int k = omp_get_thread_num(); k < ns; k += omp_get_num_threads()) f(k);
    }
  }

  // Zeroes the rows of `rec` ([N, width], X's row order) that no step of direction d writes: times past each
  // sequence's end. The whole-sequence GEMMs of backward read every row.
  void zero_unvisited_rows(std::vector<T>& rec, int64_t width, const Slice& sl) {
    if (rec.empty()) return;
    for (int64_t b = sl.b0; b < sl.b1; ++b)
      for (int64_t t = len_[b]; t < cfg_.seq; ++t) {
        T* row = rec.data() + cfg_.x_row(t, b) * width;
        std::fill(row, row + width, T(0));
      }
  }

  void read_lengths() {
    const int64_t S = cfg_.seq;
    for (int64_t b = 0; b < cfg_.batch; ++b) {
      int64_t L = S;
      if (lens_)
        L = lens_i64_ ? static_cast<const int64_t*>(lens_)[b] : static_cast<const int32_t*>(lens_)[b];
      len_[b] = std::clamp<int64_t>(L, 0, S);
    }
  }

  // The time index that direction d processes at step s for batch row b (only for s < len_[b]).
  int64_t time_of(int d, int64_t s, int64_t b) const {
    return cfg_.dir_reversed(d) ? len_[b] - 1 - s : s;
  }

  // Sets each batch row's state from an initial state, or zeros.
  void init_state(int d, const T* init, T* state) {
    for (int64_t b = 0; b < cfg_.batch; ++b) {
      T* s = state + b * H_;
      if (init)
        copy_row(s, init + cfg_.state_offset(d, b), H_);
      else
        std::fill(s, s + H_, T(0));
    }
  }

  // Writes a final state (Y_h, Y_c): the state after each sequence's last step, zero for empty sequences.
  void write_final_state(int d, const T* state, T* out) {
    if (!out) return;
    for (int64_t b = 0; b < cfg_.batch; ++b) {
      T* o = out + cfg_.state_offset(d, b);
      if (len_[b] > 0)
        copy_row(o, state + b * H_, H_);
      else
        std::fill(o, o + H_, T(0));
    }
  }

  // Zeroes Y past each sequence's end. Record rows there are zeroed too: the whole-sequence GEMMs of backward
  // multiply them by zero gradients, and stale values from an earlier step could be NaN.
  void clear_past_end(int d) {
    for (int64_t b = 0; b < cfg_.batch; ++b) {
      for (int64_t t = len_[b]; t < cfg_.seq; ++t) {
        if (y_) std::fill(y_ + cfg_.y_offset(t, d, b), y_ + cfg_.y_offset(t, d, b) + H_, T(0));
        if (record_) {
          const int64_t row = cfg_.x_row(t, b);
          for (std::vector<T>* v : {&rec_->hprev, &rec_->cprev, &rec_->c, &rec_->aux, &rec_->rin})
            if (!v->empty()) std::fill(v->data() + row * H_, v->data() + (row + 1) * H_, T(0));
        }
      }
    }
  }

  // Under recurrent dropout, sets the recurrent product's input H_prev ⊙ mask for the slice's rows that take
  // a step s, and records it.
  void mask_state(int d, int64_t s, const Slice& sl) {
    if (!mask_) return;
    for (int64_t b = sl.b0; b < sl.b1; ++b) {
      if (s >= len_[b]) continue;
      const T* m = mask_ + cfg_.state_offset(d, b);
      const T* h = h_.data() + b * H_;
      T* hin = hin_.data() + b * H_;
      for (int64_t j = 0; j < H_; ++j) hin[j] = h[j] * m[j];
      if (record_) copy_row(rec_->rin.data() + cfg_.x_row(time_of(d, s, b), b) * H_, hin, H_);
    }
  }

  // Under recurrent dropout, the recurrent product's input gradient reaches H_prev through the mask: g ⊙=
  // mask for row b.
  void mask_grad(int d, int64_t b, T* g) const {
    if (!mask_) return;
    const T* m = mask_ + cfg_.state_offset(d, b);
    for (int64_t j = 0; j < H_; ++j) g[j] *= m[j];
  }

  // Adds the output gradient of step t to row b's state gradient dh.
  void add_output_grad(int d, int64_t t, int64_t b, T* dh) const {
    if (!dy_) return;
    const T* dyr = dy_ + cfg_.y_offset(t, d, b);
    for (int64_t j = 0; j < H_; ++j) dh[j] += dyr[j];
  }

  // After step s's product dA·R (dhr_): for LSTM and RNN, whose previous state enters nothing but the
  // recurrent product, that is the previous state's gradient (through the recurrent dropout mask).
  void take_recurrent_grad(int d, int64_t s, const Slice& sl) {
    for (int64_t b = sl.b0; b < sl.b1; ++b)
      if (s < len_[b]) {
        copy_row(dh_.data() + b * H_, dhr_.data() + b * H_, H_);
        mask_grad(d, b, dh_.data() + b * H_);
      }
  }

  void combine_bias(int d) {
    // bias_[0, GH): added to every gate's pre-activation (Wb + Rb, except Rb of a linear-before-reset
    // candidate); bias_[GH, GH + H): that Rb, added inside the reset product.
    T* bs = bias_.data();
    std::fill(bs, bs + GH_ + H_, T(0));
    if (!b_) return;
    const T* wb = b_ + d * 2 * GH_;
    const T* rb = wb + GH_;
    for (int64_t j = 0; j < GH_; ++j) bs[j] = wb[j] + rb[j];
    if (cfg_.cell == RnnCell::gru && lbr_) {
      for (int64_t j = 0; j < H_; ++j) {
        bs[2 * H_ + j] = wb[2 * H_ + j];
        bs[GH_ + j] = rb[2 * H_ + j];
      }
    }
  }

  // ---- LSTM: gates i, o, f, c ----

  void lstm_forward(int d) {
    const int64_t S = cfg_.seq, H = H_, GH = GH_;
    const RnnActivation &fa = cfg_.act(d, 0), &ga = cfg_.act(d, 1), &ha = cfg_.act(d, 2);
    const T* P = p_ ? p_ + d * 3 * H : nullptr;  // peepholes i, o, f
    Dir& g = dirs_[d];
    g.xw();
    combine_bias(d);
    init_state(d, h0_, h_.data());
    init_state(d, c0_, c_.data());
    const T* bias = bias_.data();
    const bool rec = record_;
    const bool default_cell = fa.kind == RnnActKind::sigmoid && ga.kind == RnnActKind::tanh &&
                              ha.kind == RnnActKind::tanh && !cfg_.clip && !P && !cfg_.input_forget;
    for_slices([&](int k) {
      const Slice& sl = slices_[k];
      StepGemms& sg = g.step[k];
      for (int64_t s = 0; s < S; ++s) {
        mask_state(d, s, sl);
        sg.rh();
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          if (s >= len_[b]) continue;
          const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
          const T* xr = xw_.data() + row * GH;
          const T* rr = rh_.data() + b * GH;
          // The gates go straight to their record row when there is one.
          T* a = rec ? rec_->act.data() + row * GH : gate_.data() + b * GH;
          T* hb = h_.data() + b * H;
          T* cb = c_.data() + b * H;
          T* hc = act_row_.data() + b * H;
          if (rec) {
            copy_row(rec_->hprev.data() + row * H, hb, H);
            copy_row(rec_->cprev.data() + row * H, cb, H);
          }
          if constexpr (std::is_same_v<T, float>) {
            if (default_cell) {
              lstm_row_default(xr, rr, bias, a, cb, hc, hb, H);
              if (rec) copy_row(rec_->c.data() + row * H, cb, H);
              if (y_) copy_row(y_ + cfg_.y_offset(t, d, b), hb, H);
              continue;
            }
          }
          for (int64_t j = 0; j < GH; ++j) a[j] = xr[j] + rr[j] + bias[j];
          if (P)
            for (int64_t j = 0; j < H; ++j) {
              a[j] += P[j] * cb[j];
              a[2 * H + j] += P[2 * H + j] * cb[j];
            }
          if (rec && cfg_.clip) copy_row(rec_->pre.data() + row * GH, a, GH);
          clip_inplace(cfg_.clip, a, H);
          clip_inplace(cfg_.clip, a + 2 * H, 2 * H);
          act_inplace(fa, a, H);
          if (cfg_.input_forget) {
            for (int64_t j = 0; j < H; ++j) a[2 * H + j] = T(1) - a[j];
          } else {
            act_inplace(fa, a + 2 * H, H);
          }
          act_inplace(ga, a + 3 * H, H);
          for (int64_t j = 0; j < H; ++j) cb[j] = a[2 * H + j] * cb[j] + a[j] * a[3 * H + j];
          T* ao = a + H;
          if (P)
            for (int64_t j = 0; j < H; ++j) ao[j] += P[H + j] * cb[j];
          if (rec && cfg_.clip) copy_row(rec_->pre.data() + row * GH + H, ao, H);
          clip_inplace(cfg_.clip, ao, H);
          act_inplace(fa, ao, H);
          act_copy(ha, cb, hc, H);
          for (int64_t j = 0; j < H; ++j) hb[j] = ao[j] * hc[j];
          if (rec) copy_row(rec_->c.data() + row * H, cb, H);
          if (y_) copy_row(y_ + cfg_.y_offset(t, d, b), hb, H);
        }
      }
    });
    write_final_state(d, h_.data(), yh_);
    write_final_state(d, c_.data(), yc_);
    clear_past_end(d);
  }

  // Gradients flowing into the final states: absent ones and those of empty sequences (whose outputs are
  // constant zeros) are zero.
  void init_state_grad(int d, const T* dfinal, T* dstate) {
    for (int64_t b = 0; b < cfg_.batch; ++b) {
      T* s = dstate + b * H_;
      if (dfinal && len_[b] > 0)
        copy_row(s, dfinal + cfg_.state_offset(d, b), H_);
      else
        std::fill(s, s + H_, T(0));
    }
  }

  void write_state_grad(int d, const T* dstate, T* out) {
    if (!out) return;
    for (int64_t b = 0; b < cfg_.batch; ++b) copy_row(out + cfg_.state_offset(d, b), dstate + b * H_, H_);
  }

  void lstm_backward(int d) {
    const int64_t S = cfg_.seq, H = H_, GH = GH_;
    const RnnActivation &fa = cfg_.act(d, 0), &ga = cfg_.act(d, 1), &ha = cfg_.act(d, 2);
    const T* P = p_ ? p_ + d * 3 * H : nullptr;
    const T clip = cfg_.clip ? T(*cfg_.clip) : T(0);
    const bool input_forget = cfg_.input_forget;
    const bool default_cell = fa.kind == RnnActKind::sigmoid && ga.kind == RnnActKind::tanh &&
                              ha.kind == RnnActKind::tanh && !cfg_.clip && !P && !input_forget;
    Dir& g = dirs_[d];
    init_state_grad(d, dyh_, dh_.data());
    init_state_grad(d, dyc_, dc_.data());
    for_slices([&](int k) {
      const Slice& sl = slices_[k];
      StepGemms& sg = g.step[k];
      zero_unvisited_rows(daw_, GH, sl);
      for (int64_t s = S - 1; s >= 0; --s) {
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          T* da = da_step_.data() + b * GH;
          if (s >= len_[b]) {
            std::fill(da, da + GH, T(0));
            continue;
          }
          const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
          T* dh = dh_.data() + b * H;
          T* dc = dc_.data() + b * H;
          add_output_grad(d, t, b, dh);
          const T* a = rec_->act.data() + row * GH;
          const T *gi = a, *go = a + H, *gf = a + 2 * H, *gc = a + 3 * H;
          const T* C = rec_->c.data() + row * H;
          const T* Cp = rec_->cprev.data() + row * H;
          const T* pre = cfg_.clip ? rec_->pre.data() + row * GH : nullptr;
          T* hcs = act_row_.data() + b * H;
          act_copy(ha, C, hcs, H);
          if constexpr (std::is_same_v<T, float>) {
            if (default_cell) {
              lstm_row_grad_default(a, hcs, Cp, dh, dc, da, H);
              copy_row(daw_.data() + row * GH, da, GH);
              continue;
            }
          }
          for (int64_t j = 0; j < H; ++j) {
            const T hc = hcs[j];
            const T dH = dh[j];
            T dC = dc[j] + dH * go[j] * act_slope(ha, hc);
            const T dao = dH * hc * act_slope(fa, go[j]) * clip_pass(pre, H + j, clip);
            if (P) dC += dao * P[H + j];
            T di = dC * gc[j];
            T df = dC * Cp[j];
            const T dct = dC * gi[j];
            if (input_forget) {
              di -= df;
              df = T(0);
            }
            const T dai = di * act_slope(fa, gi[j]) * clip_pass(pre, j, clip);
            const T daf = input_forget ? T(0) : df * act_slope(fa, gf[j]) * clip_pass(pre, 2 * H + j, clip);
            const T dac = dct * act_slope(ga, gc[j]) * clip_pass(pre, 3 * H + j, clip);
            T dcp = dC * gf[j];
            if (P) dcp += dai * P[j] + daf * P[2 * H + j];
            dc[j] = dcp;
            da[j] = dai;
            da[H + j] = dao;
            da[2 * H + j] = daf;
            da[3 * H + j] = dac;
          }
          copy_row(daw_.data() + row * GH, da, GH);
        }
        sg.dh();
        take_recurrent_grad(d, s, sl);
      }
    });
    write_state_grad(d, dh_.data(), dh0_);
    write_state_grad(d, dc_.data(), dc0_);
    finish_weight_grads(d);
    if (dp_) {
      // Peephole gradients: column sums over every (time, batch) row, one column per task.
      T* dp = dp_ + d * 3 * H;
      parallel_for(
          H,
          [&](int64_t j) {
            T si = 0, so = 0, sf = 0;
            for (int64_t n = 0; n < N_; ++n) {
              const T* da = daw_.data() + n * GH;
              si += da[j] * rec_->cprev[n * H + j];
              so += da[H + j] * rec_->c[n * H + j];
              sf += da[2 * H + j] * rec_->cprev[n * H + j];
            }
            dp[j] = si;
            dp[H + j] = so;
            dp[2 * H + j] = sf;
          },
          std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, N_)));
    }
  }

  // dW, dR, dB and dX from the whole sequence's pre-activation gradients.
  void finish_weight_grads(int d) {
    Dir& g = dirs_[d];
    if (dw_) g.dw();
    if (dr_) {
      g.dr();
      if (cfg_.cell == RnnCell::gru && !lbr_) g.dr2();
    }
    if (db_) {
      T* dbw = db_ + d * 2 * GH_;
      T* dbr = dbw + GH_;
      const std::vector<T>& rsrc = dar_.empty() ? daw_ : dar_;
      parallel_chunks(
          GH_,
          [&](int64_t j0, int64_t j1) {
            for (int64_t j = j0; j < j1; ++j) dbw[j] = dbr[j] = T(0);
            for (int64_t n = 0; n < N_; ++n) {
              const T* w = daw_.data() + n * GH_;
              const T* r = rsrc.data() + n * GH_;
              for (int64_t j = j0; j < j1; ++j) {
                dbw[j] += w[j];
                dbr[j] += r[j];
              }
            }
          },
          std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, N_)));
    }
    if (dx_) g.dx();
  }

  // ---- RNN: H = f(X·Wᵀ + H_prev·Rᵀ + Wb + Rb); the record of the "gates" is H itself ----

  void rnn_forward(int d) {
    const int64_t S = cfg_.seq, H = H_;
    const RnnActivation& fa = cfg_.act(d, 0);
    Dir& g = dirs_[d];
    g.xw();
    combine_bias(d);
    init_state(d, h0_, h_.data());
    const T* bias = bias_.data();
    const bool rec = record_;
    for_slices([&](int k) {
      const Slice& sl = slices_[k];
      StepGemms& sg = g.step[k];
      for (int64_t s = 0; s < S; ++s) {
        mask_state(d, s, sl);
        sg.rh();
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          if (s >= len_[b]) continue;
          const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
          const T* xr = xw_.data() + row * H;
          const T* rr = rh_.data() + b * H;
          T* a = rec ? rec_->act.data() + row * H : gate_.data() + b * H;
          T* hb = h_.data() + b * H;
          if (rec) copy_row(rec_->hprev.data() + row * H, hb, H);
          for (int64_t j = 0; j < H; ++j) a[j] = xr[j] + rr[j] + bias[j];
          if (rec && cfg_.clip) copy_row(rec_->pre.data() + row * H, a, H);
          clip_inplace(cfg_.clip, a, H);
          act_inplace(fa, a, H);
          copy_row(hb, a, H);
          if (y_) copy_row(y_ + cfg_.y_offset(t, d, b), hb, H);
        }
      }
    });
    write_final_state(d, h_.data(), yh_);
    clear_past_end(d);
  }

  void rnn_backward(int d) {
    const int64_t S = cfg_.seq, H = H_;
    const RnnActivation& fa = cfg_.act(d, 0);
    const T clip = cfg_.clip ? T(*cfg_.clip) : T(0);
    Dir& g = dirs_[d];
    init_state_grad(d, dyh_, dh_.data());
    for_slices([&](int k) {
      const Slice& sl = slices_[k];
      StepGemms& sg = g.step[k];
      zero_unvisited_rows(daw_, H, sl);
      for (int64_t s = S - 1; s >= 0; --s) {
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          T* da = da_step_.data() + b * H;
          if (s >= len_[b]) {
            std::fill(da, da + H, T(0));
            continue;
          }
          const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
          T* dh = dh_.data() + b * H;
          add_output_grad(d, t, b, dh);
          const T* a = rec_->act.data() + row * H;
          const T* pre = cfg_.clip ? rec_->pre.data() + row * H : nullptr;
          for (int64_t j = 0; j < H; ++j) da[j] = dh[j] * act_slope(fa, a[j]) * clip_pass(pre, j, clip);
          copy_row(daw_.data() + row * H, da, H);
        }
        sg.dh();
        take_recurrent_grad(d, s, sl);
      }
    });
    write_state_grad(d, dh_.data(), dh0_);
    finish_weight_grads(d);
  }

  // ---- GRU: gates z, r, h ----

  void gru_forward(int d) {
    const int64_t S = cfg_.seq, H = H_, GH = GH_;
    const RnnActivation &fa = cfg_.act(d, 0), &ga = cfg_.act(d, 1);
    Dir& g = dirs_[d];
    g.xw();
    combine_bias(d);
    init_state(d, h0_, h_.data());
    const T* bias = bias_.data();
    const T* rbh = bias_.data() + GH;
    const bool rec = record_;
    for_slices([&](int k) {
      const Slice& sl = slices_[k];
      StepGemms& sg = g.step[k];
      for (int64_t s = 0; s < S; ++s) {
        mask_state(d, s, sl);
        sg.rh();
        // Update and reset gates; with linear_before_reset also the candidate, else the reset hidden state.
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          if (s >= len_[b]) continue;
          const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
          const T* xr = xw_.data() + row * GH;
          const T* rr = rh_.data() + b * GH;
          T* a = gate_.data() + b * GH;
          const T* hb = h_.data() + b * H;
          for (int64_t j = 0; j < 2 * H; ++j) a[j] = xr[j] + rr[j] + bias[j];
          if (rec && cfg_.clip) copy_row(rec_->pre.data() + row * GH, a, 2 * H);
          clip_inplace(cfg_.clip, a, 2 * H);
          act_inplace(fa, a, 2 * H);
          const T* gr = a + H;
          if (lbr_) {
            T* aux = rec ? rec_->aux.data() + row * H : nullptr;
            for (int64_t j = 0; j < H; ++j) {
              const T lin = rr[2 * H + j] + rbh[j];
              if (aux) aux[j] = lin;
              a[2 * H + j] = xr[2 * H + j] + bias[2 * H + j] + gr[j] * lin;
            }
          } else {
            T* rp = rhp_.data() + b * H;
            const T* hr = mask_ ? hin_.data() + b * H : hb;  // the state as the recurrent product sees it
            for (int64_t j = 0; j < H; ++j) rp[j] = gr[j] * hr[j];
            if (rec) copy_row(rec_->aux.data() + row * H, rp, H);
          }
        }
        if (!lbr_) sg.rh2();
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          if (s >= len_[b]) continue;
          const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
          T* a = gate_.data() + b * GH;
          T* ah = a + 2 * H;
          if (!lbr_) {
            const T* xr = xw_.data() + row * GH;
            const T* rr = rh_.data() + b * GH;
            for (int64_t j = 0; j < H; ++j) ah[j] = xr[2 * H + j] + rr[2 * H + j] + bias[2 * H + j];
          }
          if (rec && cfg_.clip) copy_row(rec_->pre.data() + row * GH + 2 * H, ah, H);
          clip_inplace(cfg_.clip, ah, H);
          act_inplace(ga, ah, H);
          T* hb = h_.data() + b * H;
          if (rec) {
            copy_row(rec_->hprev.data() + row * H, hb, H);
            copy_row(rec_->act.data() + row * GH, a, GH);
          }
          const T* z = a;
          for (int64_t j = 0; j < H; ++j) hb[j] = (T(1) - z[j]) * ah[j] + z[j] * hb[j];
          if (y_) copy_row(y_ + cfg_.y_offset(t, d, b), hb, H);
        }
      }
    });
    write_final_state(d, h_.data(), yh_);
    clear_past_end(d);
  }

  void gru_backward(int d) {
    const int64_t S = cfg_.seq, H = H_, GH = GH_;
    const RnnActivation &fa = cfg_.act(d, 0), &ga = cfg_.act(d, 1);
    const T clip = cfg_.clip ? T(*cfg_.clip) : T(0);
    Dir& g = dirs_[d];
    init_state_grad(d, dyh_, dh_.data());
    for_slices([&](int k) {
      const Slice& sl = slices_[k];
      StepGemms& sg = g.step[k];
      zero_unvisited_rows(daw_, GH, sl);
      zero_unvisited_rows(dar_, GH, sl);
      for (int64_t s = S - 1; s >= 0; --s) {
        // Phase 1: everything but the reset gate's gradient when the reset applies before the linear map. dh_
        // keeps the direct part dH ⊙ z of the previous state's gradient.
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          T* da = da_step_.data() + b * GH;
          T* dar = lbr_ ? dar_step_.data() + b * GH : nullptr;
          if (s >= len_[b]) {
            std::fill(da, da + GH, T(0));
            if (dar) std::fill(dar, dar + GH, T(0));
            continue;
          }
          const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
          T* dh = dh_.data() + b * H;
          add_output_grad(d, t, b, dh);
          const T* a = rec_->act.data() + row * GH;
          const T *z = a, *r = a + H, *hh = a + 2 * H;
          const T* hp = rec_->hprev.data() + row * H;
          const T* aux = rec_->aux.data() + row * H;
          const T* pre = cfg_.clip ? rec_->pre.data() + row * GH : nullptr;
          for (int64_t j = 0; j < H; ++j) {
            const T dH = dh[j];
            const T daz = dH * (hp[j] - hh[j]) * act_slope(fa, z[j]) * clip_pass(pre, j, clip);
            const T dah = dH * (T(1) - z[j]) * act_slope(ga, hh[j]) * clip_pass(pre, 2 * H + j, clip);
            da[j] = daz;
            da[2 * H + j] = dah;
            if (lbr_) {
              const T dar_j = dah * aux[j] * act_slope(fa, r[j]) * clip_pass(pre, H + j, clip);
              da[H + j] = dar_j;
              dar[j] = daz;
              dar[H + j] = dar_j;
              dar[2 * H + j] = dah * r[j];
            }
            dh[j] = dH * z[j];
          }
        }
        if (!lbr_) {
          sg.drh();  // d(r ⊙ H_prev) = da_h · R[h]
          for (int64_t b = sl.b0; b < sl.b1; ++b) {
            if (s >= len_[b]) continue;
            const int64_t t = time_of(d, s, b), row = cfg_.x_row(t, b);
            const T* r = rec_->act.data() + row * GH + H;
            const T* hp = (mask_ ? rec_->rin.data() : rec_->hprev.data()) + row * H;
            const T* pre = cfg_.clip ? rec_->pre.data() + row * GH : nullptr;
            const T* drp = drh_.data() + b * H;
            const T* m = mask_ ? mask_ + cfg_.state_offset(d, b) : nullptr;
            T* da = da_step_.data() + b * GH;
            T* dh = dh_.data() + b * H;
            for (int64_t j = 0; j < H; ++j) {
              da[H + j] = drp[j] * hp[j] * act_slope(fa, r[j]) * clip_pass(pre, H + j, clip);
              dh[j] += drp[j] * r[j] * (m ? m[j] : T(1));
            }
          }
        }
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          if (s >= len_[b]) continue;
          const int64_t row = cfg_.x_row(time_of(d, s, b), b);
          copy_row(daw_.data() + row * GH, da_step_.data() + b * GH, GH);
          if (lbr_) copy_row(dar_.data() + row * GH, dar_step_.data() + b * GH, GH);
        }
        sg.dh();
        for (int64_t b = sl.b0; b < sl.b1; ++b) {
          if (s >= len_[b]) continue;
          T* dh = dh_.data() + b * H;
          const T* dr = dhr_.data() + b * H;
          const T* m = mask_ ? mask_ + cfg_.state_offset(d, b) : nullptr;
          for (int64_t j = 0; j < H; ++j) dh[j] += dr[j] * (m ? m[j] : T(1));
        }
      }
    });
    write_state_grad(d, dh_.data(), dh0_);
    finish_weight_grads(d);
  }

  RnnConfig cfg_;
  bool backward_ = false, lbr_ = false, lens_i64_ = false;
  int64_t H_ = 0, GH_ = 0, N_ = 0;
  const T *x_ = nullptr, *w_ = nullptr, *r_ = nullptr, *b_ = nullptr, *h0_ = nullptr, *c0_ = nullptr,
          *p_ = nullptr, *mask_ = nullptr;
  const void* lens_ = nullptr;
  T *y_ = nullptr, *yh_ = nullptr, *yc_ = nullptr;
  const T *dy_ = nullptr, *dyh_ = nullptr, *dyc_ = nullptr;
  T *dx_ = nullptr, *dw_ = nullptr, *dr_ = nullptr, *db_ = nullptr, *dh0_ = nullptr, *dc0_ = nullptr,
    *dp_ = nullptr;

  std::vector<int64_t> len_;
  // Forward workspace: input projections of the whole sequence, and per-step recurrent projections, gates,
  // states.
  std::vector<T> xw_, rh_, gate_, h_, c_, rhp_, bias_;
  std::vector<T> hin_;      // under recurrent dropout: H_prev ⊙ mask, the recurrent product's input
  std::vector<T> act_row_;  // per batch row: an activation of the cell state (LSTM's h(C))
  std::vector<Slice> slices_;
  std::shared_ptr<RnnRecords<T>> rec_;  // null in a forward kernel nobody shares records with
  bool record_ = false;                 // the forward pass fills rec_
  // Pre-activation gradients of the input side (dAW) and, for a linear-before-reset GRU, of the recurrent
  // side.
  std::vector<T> daw_, dar_, da_step_, dar_step_, dh_, dc_, dhr_, drh_;
  std::vector<Dir> dirs_;
};

// What identifies a forward node's computation in one prepared plan: the graph, the forward inputs (value ids
// and the arena pointers bound to them, which tell apart plans of one graph on different arenas) and the
// configuration. A gradient node lists the same forward inputs first.
std::string share_key(const KernelArgs& a, RnnCell cell) {
  const int nf = ops::rnn_forward_inputs(cell);
  std::string key = fmt::format("{}", static_cast<const void*>(&a.graph));
  for (int i = 0; i < nf; ++i) {
    bool present = i < static_cast<int>(a.node.inputs.size()) && a.node.inputs[i] != kNoValue;
    key += fmt::format("|{}@{}", present ? a.node.inputs[i] : kNoValue,
                       present ? a.inputs[i] : static_cast<const void*>(nullptr));
  }
  RnnConfig cfg;
  std::string err = ops::parse_rnn_config(cell, a.attrs(), a.in(0).shape, a.in(2).shape, &cfg);
  key += fmt::format("|{} {} {} {} {} {} {} {} {} {}", err, cfg.hidden, cfg.dirs, cfg.reverse, cfg.layout,
                     cfg.clip ? *cfg.clip : -1.0f, cfg.input_forget, cfg.linear_before_reset,
                     static_cast<int>(a.in(0).dtype), cfg.acts.size());
  for (const RnnActivation& act : cfg.acts)
    key += fmt::format(" {}:{}:{}", static_cast<int>(act.kind), act.alpha, act.beta);
  return key;
}

// Forward kernels by share_key, so that the gradient kernel of the same node, prepared later in the same plan
// (it needs the forward's outputs' gradients), can take over its records instead of rerunning the forward
// pass. Entries expire with their kernels.
template <class T>
using ForwardKernels = WeakRegistry<RnnRunner<T>>;

KernelFactory rnn_factory(RnnCell cell, bool backward) {
  return [cell, backward](const KernelArgs& a) -> KernelPtr {
    KernelPtr kp;
    dispatch_float(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
      const std::string key = share_key(a, cell);
      std::shared_ptr<RnnRecords<T>> shared;
      if (backward)
        if (auto forward = ForwardKernels<T>::find(key)) shared = forward->share_records();
      auto runner = std::make_shared<RnnRunner<T>>(a, cell, backward, std::move(shared));
      if (!backward) ForwardKernels<T>::add(key, runner);
      kp = make_kernel([runner](const StepContext&) { runner->run(); });
    });
    return kp;
  };
}

}  // namespace

size_t rnn_held_bytes(const Graph& g, const Node& n) {
  const bool backward = n.op.ends_with("Grad");
  const std::string base = backward ? n.op.substr(0, n.op.size() - 4) : n.op;
  if (base != "LSTM" && base != "GRU" && base != "RNN") return 0;
  const RnnCell cell = base == "LSTM" ? RnnCell::lstm : base == "GRU" ? RnnCell::gru : RnnCell::rnn;
  RnnConfig cfg;
  if (n.inputs.size() < 3 || n.inputs[0] == kNoValue || n.inputs[2] == kNoValue) return 0;
  const Value& x = g.value(n.inputs[0]);
  if (!ops::parse_rnn_config(cell, n.attrs, x.shape, g.value(n.inputs[2]).shape, &cfg).empty()) return 0;
  // The vectors RnnRunner allocates (the constructor and allocate_records), counted alike.
  const bool lstm = cell == RnnCell::lstm, gru = cell == RnnCell::gru, lbr = cfg.linear_before_reset;
  const int m = ops::rnn_mask_input(cell);
  const bool mask = static_cast<int>(n.inputs.size()) > m && n.inputs[static_cast<size_t>(m)] != kNoValue;
  const int64_t H = cfg.hidden, GH = cfg.gates() * H, Bt = cfg.batch, N = cfg.seq * cfg.batch;
  int64_t elems = N * GH + 2 * Bt * GH + 2 * Bt * H + (mask ? Bt * H : 0) + (lstm ? Bt * H : 0) +
                  (gru && !lbr ? Bt * H : 0) + GH + H;
  if (backward) {
    elems += N * GH + (cfg.clip ? N * GH : 0) + N * H + (mask ? N * H : 0) +
             (lstm  ? 2 * N * H
              : gru ? N * H
                    : 0);
    elems += N * GH + (gru && lbr ? N * GH + Bt * GH : 0) + Bt * GH + 2 * Bt * H + (lstm ? Bt * H : 0) +
             (gru && !lbr ? Bt * H : 0);
  }
  return static_cast<size_t>(elems) * dtype_bytes(x.dtype) + static_cast<size_t>(Bt) * sizeof(int64_t);
}

void register_rnn_cpu_kernels(KernelRegistry& r) {
  r.add("LSTM", rnn_factory(RnnCell::lstm, false));
  r.add("GRU", rnn_factory(RnnCell::gru, false));
  r.add("LSTMGrad", rnn_factory(RnnCell::lstm, true));
  r.add("RNN", rnn_factory(RnnCell::rnn, false));
  r.add("RNNGrad", rnn_factory(RnnCell::rnn, true));
  r.add("GRUGrad", rnn_factory(RnnCell::gru, true));
}

}  // namespace trainer::engine::cpu
