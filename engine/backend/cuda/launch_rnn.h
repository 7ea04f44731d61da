// Launchers of the recurrent cells' pointwise kernels (rnn.cu): one time step's gate math for LSTM, GRU and
// RNN, forward and backward, between the per-step cuBLASLt products that kernels_rnn.cpp enqueues. Plain
// declarations that g++ and nvcc both read; T is float or double.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace trainer::engine::cuda {

// Every "rows" operand below is a [batch, width] matrix whose row b starts at ptr + b * ld: a step's slice of
// a sequence buffer (X's row order, Y's layout) or a contiguous per-step buffer (ld = width).

// One LSTM step with sigmoid gates and tanh cell and output activations: gates i, o, f, c of xw + rh + (wb +
// rb) go to act; the new cell state to c, the new hidden state to h and, when y is set, to y.
template <class T>
struct LstmStepArgs {
  int64_t batch = 0, hidden = 0;
  const T* xw = nullptr;  // X·Wᵀ, [batch, 4H]
  int64_t xw_ld = 0;
  const T* rh = nullptr;                 // H_prev·Rᵀ, [batch, 4H] contiguous
  const T *wb = nullptr, *rb = nullptr;  // [4H] each, or both null
  const T* hp = nullptr;                 // previous hidden and cell states [batch, H]
  int64_t hp_ld = 0;
  const T* cp = nullptr;
  int64_t cp_ld = 0;
  T* act = nullptr;  // [batch, 4H]
  int64_t act_ld = 0;
  T* h = nullptr;
  int64_t h_ld = 0;
  T* c = nullptr;
  int64_t c_ld = 0;
  T* y = nullptr;  // optional
  int64_t y_ld = 0;
};

// The gate gradients of one LSTM step. dH = dh + dy (either may be null: zero), or dh ⊙ dh_mask + dy under
// recurrent dropout, where dh is the recurrent product's input gradient; dc is the cell state's gradient,
// read and replaced by the previous step's. The cell state is recomputed from act and cp, as the forward did.
template <class T>
struct LstmStepGradArgs {
  int64_t batch = 0, hidden = 0;
  const T* act = nullptr;
  int64_t act_ld = 0;
  const T* cp = nullptr;
  int64_t cp_ld = 0;
  const T* dh = nullptr;
  int64_t dh_ld = 0;
  const T* dh_mask = nullptr;  // optional
  int64_t dh_mask_ld = 0;
  const T* dy = nullptr;
  int64_t dy_ld = 0;
  T* dc = nullptr;  // [batch, H] contiguous
  T* da = nullptr;  // pre-activation gradients [batch, 4H]
  int64_t da_ld = 0;
};

// One GRU step (sigmoid gates z, r; tanh candidate), in phases around the products:
//   0: linear_before_reset: the whole step from rh = H_prev·Rᵀ [batch, 3H] (aux: the record of
//      rh_h + Rb_h, optional).
//   1: reset before linear: z and r from rh's first 2H columns; rhp = r ⊙ H_prev, or r ⊙ hin under recurrent
//      dropout (hin = H_prev ⊙ mask) (aux: its record, optional).
//   2: reset before linear: the candidate from rh's last H columns (= rhp·R_hᵀ) and the new state.
template <class T>
struct GruStepArgs {
  int phase = 0;
  int64_t batch = 0, hidden = 0;
  const T* xw = nullptr;  // [batch, 3H]
  int64_t xw_ld = 0;
  const T* rh = nullptr;  // [batch, 3H] contiguous
  const T *wb = nullptr, *rb = nullptr;
  const T* hp = nullptr;
  int64_t hp_ld = 0;
  const T* hin = nullptr;  // optional (phase 1)
  int64_t hin_ld = 0;
  T* act = nullptr;  // [batch, 3H]
  int64_t act_ld = 0;
  T* aux = nullptr;
  int64_t aux_ld = 0;
  T* rhp = nullptr;  // [batch, H] contiguous (phase 1)
  T* h = nullptr;    // phases 0 and 2
  int64_t h_ld = 0;
  T* y = nullptr;
  int64_t y_ld = 0;
};

// The gate gradients of one GRU step, in phases:
//   0: linear_before_reset: da (input side) and dar (recurrent side) for all three gates.
//   1: reset before linear: da_z and da_h.
//   2: reset before linear: da_r from drh = da_h·R_h [batch, H] contiguous; dhd += drh ⊙ r.
// Phases 0 and 1 read dH = dhd + dhr + dy (dhr and dy may be null) and leave dhd = dH ⊙ z, the direct part of
// the previous state's gradient. Under recurrent dropout the recurrent parts reach H_prev through the mask:
// dhr ⊙ mask, and in phase 2 da_r from drh ⊙ hin (hin = H_prev ⊙ mask) and dhd += drh ⊙ r ⊙ mask.
template <class T>
struct GruStepGradArgs {
  int phase = 0;
  int64_t batch = 0, hidden = 0;
  const T* act = nullptr;
  int64_t act_ld = 0;
  const T* hp = nullptr;
  int64_t hp_ld = 0;
  const T *hin = nullptr, *mask = nullptr;  // both set or both null
  int64_t hin_ld = 0, mask_ld = 0;
  const T* aux = nullptr;  // phase 0: rh_h + Rb_h of the forward
  int64_t aux_ld = 0;
  T* dhd = nullptr;        // [batch, H] contiguous
  const T* dhr = nullptr;  // [batch, H] contiguous
  const T* dy = nullptr;
  int64_t dy_ld = 0;
  const T* drh = nullptr;  // phase 2
  T* da = nullptr;
  int64_t da_ld = 0;
  T* dar = nullptr;  // phase 0
  int64_t dar_ld = 0;
};

// One simple RNN step with tanh: h = act = tanh(xw + rh + (wb + rb)), also to y when y is set.
template <class T>
struct RnnStepArgs {
  int64_t batch = 0, hidden = 0;
  const T* xw = nullptr;  // [batch, H]
  int64_t xw_ld = 0;
  const T* rh = nullptr;                 // [batch, H] contiguous
  const T *wb = nullptr, *rb = nullptr;  // [H] each, or both null
  T* act = nullptr;                      // the record of h
  int64_t act_ld = 0;
  T* h = nullptr;
  int64_t h_ld = 0;
  T* y = nullptr;  // optional
  int64_t y_ld = 0;
};

// The pre-activation gradient of one simple RNN step: da = (dh [⊙ dh_mask] + dy) ⊙ (1 - act²).
template <class T>
struct RnnStepGradArgs {
  int64_t batch = 0, hidden = 0;
  const T* act = nullptr;
  int64_t act_ld = 0;
  const T* dh = nullptr;  // optional
  int64_t dh_ld = 0;
  const T* dh_mask = nullptr;  // optional
  int64_t dh_mask_ld = 0;
  const T* dy = nullptr;  // optional
  int64_t dy_ld = 0;
  T* da = nullptr;
  int64_t da_ld = 0;
};

// dst = a + b, or a + b ⊙ m, over [rows, cols] (a or b null: zero; m null: ones).
template <class T>
struct RowsSumArgs {
  int64_t rows = 0, cols = 0;
  T* dst = nullptr;
  int64_t dst_ld = 0;
  const T* a = nullptr;
  int64_t a_ld = 0;
  const T* b = nullptr;
  int64_t b_ld = 0;
  const T* m = nullptr;
  int64_t m_ld = 0;
};

template <class T>
cudaError_t launch_lstm_step(const LstmStepArgs<T>& a, cudaStream_t stream);
template <class T>
cudaError_t launch_lstm_step_grad(const LstmStepGradArgs<T>& a, cudaStream_t stream);
template <class T>
cudaError_t launch_gru_step(const GruStepArgs<T>& a, cudaStream_t stream);
template <class T>
cudaError_t launch_gru_step_grad(const GruStepGradArgs<T>& a, cudaStream_t stream);
template <class T>
cudaError_t launch_rnn_step(const RnnStepArgs<T>& a, cudaStream_t stream);
template <class T>
cudaError_t launch_rnn_step_grad(const RnnStepGradArgs<T>& a, cudaStream_t stream);
template <class T>
cudaError_t launch_rows_sum(const RowsSumArgs<T>& a, cudaStream_t stream);

}  // namespace trainer::engine::cuda
