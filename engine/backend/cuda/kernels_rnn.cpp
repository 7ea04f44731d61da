// CUDA kernels of ONNX LSTM, GRU and RNN and of their gradients (LSTMGrad, GRUGrad, RNNGrad), matching the
// CPU's engine/backend/cpu/kernels_rnn.cpp. Per direction: one cuBLASLt product projects the whole sequence
// (X·Wᵀ), then each time step runs a product for the recurrence (H·Rᵀ) and one pointwise kernel (rnn.cu) for
// the gates. Backward mirrors it: per step in reverse a pointwise kernel and a product for dH, then
// whole-sequence products for dW, dR, dB (a product with a ones vector: column sums in a fixed order, no
// atomics) and dX. Every pointer and every product's algorithm is fixed in the factory, so launch() replays a
// prepared list of calls (a CUDA graph holds all steps). Covered: forward, reverse and bidirectional, both
// layouts, default activations (RNN: tanh), with or without B and initial states, GRU's linear_before_reset 0
// and 1, the recurrent dropout mask, f32 and f64. Sequence lengths, clip, peepholes, input_forget and other
// activations return nullptr: the host runs those.
#include <cublasLt.h>
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/backend/cuda/dynload.h"
#include "engine/backend/cuda/launch_rnn.h"
#include "engine/backend/weak_registry.h"
#include "engine/ops/rnn_config.h"

namespace trainer::engine::cuda {

namespace {

using ops::RnnActKind;
using ops::RnnCell;
using ops::RnnConfig;

[[noreturn]] void rnn_lt_failed(cublasStatus_t s, const char* call, const char* file, int line) {
  throw RuntimeError(fmt::format("cuBLASLt error {} in {} at {}:{}", static_cast<int>(s), call, file, line));
}
#define RNN_LT_CHECK(call)                                                               \
  do {                                                                                   \
    cublasStatus_t rnn_lt_status_ = (call);                                              \
    if (rnn_lt_status_ != CUBLAS_STATUS_SUCCESS)                                         \
      ::trainer::engine::cuda::rnn_lt_failed(rnn_lt_status_, #call, __FILE__, __LINE__); \
  } while (0)

// Carves typed buffers out of one allocation, each 256-byte aligned: first count the sizes, then allocate.
class Carver {
 public:
  size_t add(int64_t elems, size_t elem_bytes) {
    const size_t at = bytes_;
    bytes_ += (static_cast<size_t>(std::max<int64_t>(elems, 0)) * elem_bytes + 255) / 256 * 256;
    return at;
  }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
};

// The largest power of two (at most 256) dividing every address, which cuBLASLt's heuristic must be told.
uint32_t alignment_of(const std::vector<uintptr_t>& addresses) {
  uintptr_t bits = 256;
  for (uintptr_t a : addresses) bits |= a;
  return static_cast<uint32_t>(bits & (~bits + 1));
}

// Row-major C[m, n] (leading dimension ldc) = op(A)·op(B) + beta·C, op(A) m x k, op(B) k x n, of one shape
// applied to several operand sets (one per time step): A is [m, k] (or [k, m] when ta) with leading dimension
// lda, B [k, n] (or [n, k] when tb). cuBLASLt is column-major, so it computes Cᵀ = op(B)ᵀ·op(A)ᵀ: our B is
// its A and our A its B, and a row-major [r, c] matrix with leading dimension ld is a column-major c x r one.
class LtGemm {
 public:
  struct Shape {
    int64_t m = 0, n = 0, k = 0;
    bool ta = false, tb = false;
    int64_t lda = 0, ldb = 0, ldc = 0;
  };
  LtGemm() = default;
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  ~LtGemm() {
    if (!desc_) return;
    const lib::CublasLt& lt = lib::cublaslt();
    for (cublasLtMatrixLayout_t l : {lay_a_, lay_b_, lay_c_})
      if (l) lt.cublasLtMatrixLayoutDestroy(l);
    lt.cublasLtMatmulDescDestroy(desc_);
  }

  // Returns the index of the operand set for run().
  size_t add(const void* a, const void* b, void* c, bool accumulate = false) {
    calls_.push_back({a, b, c, accumulate ? 1.0 : 0.0, accumulate ? 1.0f : 0.0f});
    return calls_.size() - 1;
  }

  // Builds the descriptors and picks the algorithm for the operand sets added so far; false when cuBLASLt has
  // none (the node then runs on the host).
  bool init(const Shape& s, bool f64, const CudaLibs& libs) {
    const lib::CublasLt& lt = lib::cublaslt();
    f64_ = f64;
    handle_ = libs.cublaslt;
    workspace_ = libs.workspace;
    workspace_bytes_ = libs.workspace_bytes;
    const cudaDataType dt = f64 ? CUDA_R_64F : CUDA_R_32F;
    const cublasComputeType_t compute =
        f64 ? CUBLAS_COMPUTE_64F : (libs.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
    if (lt.cublasLtMatmulDescCreate(&desc_, compute, f64 ? CUDA_R_64F : CUDA_R_32F) !=
        CUBLAS_STATUS_SUCCESS) {
      desc_ = nullptr;
      return false;
    }
    const int32_t op_a = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (lt.cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)) !=
            CUBLAS_STATUS_SUCCESS ||
        lt.cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)) !=
            CUBLAS_STATUS_SUCCESS)
      return false;
    auto layout = [&](cublasLtMatrixLayout_t* l, int64_t rows, int64_t cols, int64_t ld) {
      return lt.cublasLtMatrixLayoutCreate(l, dt, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols),
                                           ld) == CUBLAS_STATUS_SUCCESS;
    };
    const bool ok = (s.tb ? layout(&lay_a_, s.k, s.n, s.ldb) : layout(&lay_a_, s.n, s.k, s.ldb)) &&
                    (s.ta ? layout(&lay_b_, s.m, s.k, s.lda) : layout(&lay_b_, s.k, s.m, s.lda)) &&
                    layout(&lay_c_, s.n, s.m, s.ldc);
    if (!ok) return false;

    std::vector<uintptr_t> addr_a, addr_b, addr_c;
    for (const Call& c : calls_) {
      addr_a.push_back(reinterpret_cast<uintptr_t>(c.b));  // cuBLASLt's A is our B
      addr_b.push_back(reinterpret_cast<uintptr_t>(c.a));
      addr_c.push_back(reinterpret_cast<uintptr_t>(c.c));
    }
    cublasLtMatmulPreference_t pref = nullptr;
    if (lt.cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return false;
    const uint64_t max_ws = workspace_bytes_;
    bool set = lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &max_ws, sizeof(max_ws)) == CUBLAS_STATUS_SUCCESS;
    const uint32_t align_a = alignment_of(addr_a), align_b = alignment_of(addr_b),
                   align_c = alignment_of(addr_c);
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}};
    for (const auto& [attr, value] : aligns)
      set = set && lt.cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)) ==
                       CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    // C and D share one layout: accumulating calls run in place (C == D), which cuBLASLt allows when their
    // descriptors are equal.
    if (set)
      set = lt.cublasLtMatmulAlgoGetHeuristic(handle_, desc_, lay_a_, lay_b_, lay_c_, lay_c_, pref, 1,
                                              &result, &returned) == CUBLAS_STATUS_SUCCESS &&
            returned > 0 && result.state == CUBLAS_STATUS_SUCCESS && result.workspaceSize <= workspace_bytes_;
    lt.cublasLtMatmulPreferenceDestroy(pref);
    if (!set) return false;
    algo_ = result.algo;
    return true;
  }

  void run(size_t i, cudaStream_t stream) const {
    const Call& c = calls_[i];
    const void* alpha = f64_ ? static_cast<const void*>(&kOneD) : static_cast<const void*>(&kOneF);
    const void* beta = f64_ ? static_cast<const void*>(&c.beta_d) : static_cast<const void*>(&c.beta_f);
    RNN_LT_CHECK(lib::cublaslt().cublasLtMatmul(handle_, desc_, alpha, c.b, lay_a_, c.a, lay_b_, beta, c.c,
                                                lay_c_, c.c, lay_c_, &algo_, workspace_, workspace_bytes_,
                                                stream));
  }

 private:
  struct Call {
    const void* a;
    const void* b;
    void* c;
    double beta_d;
    float beta_f;
  };
  static constexpr double kOneD = 1.0;
  static constexpr float kOneF = 1.0f;
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t lay_a_ = nullptr, lay_b_ = nullptr, lay_c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
  std::vector<Call> calls_;  // stable once init ran: run() passes pointers to their betas
  bool f64_ = false;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

// Whether this backend computes the node: the default cell of each family without the ONNX options the CPU
// kernel also handles (those run on the host).
bool supported(const KernelArgs& a, RnnCell cell, const RnnConfig& cfg) {
  const DType t = a.in(0).dtype;
  if (t != DType::f32 && t != DType::f64) return false;
  if (cfg.seq <= 0 || cfg.batch <= 0 || cfg.input <= 0 || cfg.hidden <= 0) return false;
  if (a.has_input(4) || cfg.clip || cfg.input_forget) return false;
  // Peepholes, and LSTMGrad's peephole gradient (output 6), which the host computes also without them (a
  // training graph asks for it only where the node has peepholes).
  if (cell == RnnCell::lstm && (a.has_input(7) || a.has_output(6))) return false;
  for (int d = 0; d < cfg.dirs; ++d) {
    if (cell == RnnCell::rnn) {
      if (cfg.act(d, 0).kind != RnnActKind::tanh) return false;
      continue;
    }
    if (cfg.act(d, 0).kind != RnnActKind::sigmoid || cfg.act(d, 1).kind != RnnActKind::tanh) return false;
    if (cell == RnnCell::lstm && cfg.act(d, 2).kind != RnnActKind::tanh) return false;
  }
  return true;
}

// What the backward pass reads from the forward pass of one direction, in X's row order (row x_row(t, b)):
// the gate activations, the hidden state before each step, and the LSTM's cell state before each step or the
// GRU's aux (r ⊙ H_prev, or H_prev·R_hᵀ + Rb_h with linear_before_reset); under recurrent dropout also the
// recurrent product's input H_prev ⊙ mask (rin).
template <class T>
struct Records {
  std::unique_ptr<KernelMemory> mem;
  T *act = nullptr, *hprev = nullptr, *cprev = nullptr, *aux = nullptr, *rin = nullptr;
};

template <class T>
class RnnRunner {
 public:
  // `shared`: the records of the forward kernel of the same node in this plan (backward only); the forward
  // pass is then not rerun.
  RnnRunner(const KernelArgs& a, RnnCell cell, const RnnConfig& cfg, bool backward,
            std::shared_ptr<Records<T>> shared)
      : cfg_(cfg),
        lstm_(cell == RnnCell::lstm),
        rnn_(cell == RnnCell::rnn),
        lbr_(cfg.linear_before_reset),
        backward_(backward) {
    const int64_t S = cfg.seq, Bt = cfg.batch, H = cfg.hidden, GH = cfg.gates() * H;
    const int64_t N = S * Bt;
    H_ = H;
    GH_ = GH;
    x_ = a.in_ptr<const T>(0);
    w_ = a.in_ptr<const T>(1);
    r_ = a.in_ptr<const T>(2);
    b_ = a.has_input(3) ? a.in_ptr<const T>(3) : nullptr;
    h0_ = a.has_input(5) ? a.in_ptr<const T>(5) : nullptr;
    if (lstm_) c0_ = a.has_input(6) ? a.in_ptr<const T>(6) : nullptr;
    const int nf = ops::rnn_forward_inputs(cell);
    if (const int m = ops::rnn_mask_input(cell); a.has_input(m)) mask_ = a.in_ptr<const T>(m);
    if (!backward) {
      y_ = a.has_output(0) ? a.out_ptr<T>(0) : nullptr;
      yh_ = a.has_output(1) ? a.out_ptr<T>(1) : nullptr;
      if (lstm_) yc_ = a.has_output(2) ? a.out_ptr<T>(2) : nullptr;
    } else {
      dy_ = a.has_input(nf) ? a.in_ptr<const T>(nf) : nullptr;
      dyh_ = a.has_input(nf + 1) ? a.in_ptr<const T>(nf + 1) : nullptr;
      if (lstm_) dyc_ = a.has_input(nf + 2) ? a.in_ptr<const T>(nf + 2) : nullptr;
      auto out = [&](int k) { return a.has_output(k) ? a.out_ptr<T>(k) : nullptr; };
      dx_ = out(0);
      dw_ = out(1);
      dr_ = out(2);
      db_ = out(3);
      dh0_ = out(4);
      if (lstm_) dc0_ = out(5);
    }

    // One allocation for the records (unless shared) and one for this kernel's scratch.
    const size_t es = sizeof(T);
    if (shared) {
      rec_ = std::move(shared);
    } else {
      rec_ = std::make_shared<Records<T>>();
      Carver c;
      const size_t o_act = c.add(N * GH, es), o_h = c.add(N * H, es), o_c = c.add(rnn_ ? 0 : N * H, es),
                   o_rin = c.add(mask_ ? N * H : 0, es);
      rec_->mem = std::make_unique<KernelMemory>(*a.libs, c.bytes());
      rec_->act = reinterpret_cast<T*>(rec_->mem->data() + o_act);
      rec_->hprev = reinterpret_cast<T*>(rec_->mem->data() + o_h);
      if (mask_) rec_->rin = reinterpret_cast<T*>(rec_->mem->data() + o_rin);
      if (!rnn_) (lstm_ ? rec_->cprev : rec_->aux) = reinterpret_cast<T*>(rec_->mem->data() + o_c);
    }
    Carver c;
    const bool fwd = !shared;  // this kernel runs the forward pass
    const size_t o_xw = c.add(fwd ? N * GH : 0, es), o_rh = c.add(fwd ? Bt * GH : 0, es),
                 o_rhp = c.add(fwd ? Bt * H : 0, es), o_hl = c.add(fwd ? Bt * H : 0, es),
                 o_cl = c.add(fwd ? Bt * H : 0, es);
    const size_t o_daw = c.add(backward ? N * GH : 0, es), o_dar = c.add(backward && lbr_ ? N * GH : 0, es),
                 o_dhr = c.add(backward ? Bt * H : 0, es), o_dhd = c.add(backward ? Bt * H : 0, es),
                 o_dc = c.add(backward ? Bt * H : 0, es), o_drh = c.add(backward ? Bt * H : 0, es),
                 o_ones = c.add(backward ? N : 0, es);
    mem_ = std::make_unique<KernelMemory>(*a.libs, c.bytes());
    auto buf = [&](size_t off) { return reinterpret_cast<T*>(mem_->data() + off); };
    xw_ = buf(o_xw);
    rh_ = buf(o_rh);
    rhp_ = buf(o_rhp);
    hlast_ = buf(o_hl);
    clast_ = buf(o_cl);
    daw_ = buf(o_daw);
    dar_ = lbr_ ? buf(o_dar) : daw_;
    dhr_ = buf(o_dhr);
    dhd_ = buf(o_dhd);
    dc_ = buf(o_dc);
    drh_ = buf(o_drh);
    ones_ = buf(o_ones);
    if (backward && db_) {
      const std::vector<T> ones(static_cast<size_t>(N), T(1));
      TRAINER_CUDA_CHECK(cudaMemcpy(ones_, ones.data(), N * es, cudaMemcpyHostToDevice));
      // A copy from pageable memory may return before the transfer ends, and the compute stream
      // (non-blocking) does not wait for the legacy stream: finished here, at prepare time.
      TRAINER_CUDA_CHECK(cudaDeviceSynchronize());
    }
  }

  // Plans every call of the step; false when cuBLASLt cannot run one of the products.
  bool plan(const CudaLibs& libs) {
    const bool f64 = std::is_same_v<T, double>;
    for (int d = 0; d < cfg_.dirs; ++d) {
      if (!backward_ || !rec_shared_) plan_forward(d);
      if (backward_) plan_backward(d);
    }
    for (LtGemm* g : {&g_xw_, &g_rh_, &g_rh2_, &g_dh_, &g_drh_, &g_dw_, &g_dr_, &g_dr2_, &g_db_, &g_dx_})
      if (!gemm_calls_[g].empty() && !g->init(gemm_shapes_[g], f64, libs)) return false;
    return true;
  }

  void mark_shared() { rec_shared_ = true; }
  std::shared_ptr<Records<T>> records() const { return rec_; }

  void run(cudaStream_t stream) const {
    for (const auto& op : ops_) op(stream);
  }

 private:
  using Shape = LtGemm::Shape;

  // Rows of step t of a buffer in X's row order with `width` columns: the slice and its leading dimension.
  int64_t row_ld(int64_t width) const { return (cfg_.layout == 0 ? 1 : cfg_.seq) * width; }
  template <class P>
  P* step_rows(P* base, int64_t t, int64_t width) const {
    return base + cfg_.x_row(t, 0) * width;
  }
  int64_t y_ld() const { return cfg_.layout == 0 ? H_ : cfg_.seq * cfg_.dirs * H_; }
  int64_t state_ld() const { return cfg_.layout == 0 ? H_ : cfg_.dirs * H_; }
  int64_t time_of(int d, int64_t s) const { return cfg_.dir_reversed(d) ? cfg_.seq - 1 - s : s; }

  // Adds a product call to the list of ops, planning its shape once per LtGemm.
  void gemm(LtGemm& g, const Shape& s, const void* a, const void* b, void* c, bool accumulate = false) {
    auto [it, fresh] = gemm_shapes_.emplace(&g, s);
    TRAINER_ASSERT(fresh || (it->second.m == s.m && it->second.n == s.n && it->second.k == s.k),
                   "one recurrent product with two shapes");
    const size_t i = g.add(a, b, c, accumulate);
    gemm_calls_[&g].push_back(i);
    const LtGemm* gp = &g;
    ops_.push_back([gp, i](cudaStream_t stream) { gp->run(i, stream); });
  }

  // The state gradient a step's LSTM or RNN gradient kernel reads: the final state's on the first step
  // backward, else the recurrent product's input gradient dhr_, through the recurrent dropout mask.
  template <class Args>
  void state_grad(Args& p, bool first, int64_t sd) const {
    p.dh = first ? (dyh_ ? dyh_ + sd : nullptr) : dhr_;
    p.dh_ld = first ? state_ld() : H_;
    if (mask_ && !first) {
      p.dh_mask = mask_ + sd;
      p.dh_mask_ld = state_ld();
    }
  }

  void rows_sum(T* dst, int64_t dst_ld, const T* a, int64_t a_ld, const T* b, int64_t b_ld,
                const T* m = nullptr, int64_t m_ld = 0) {
    RowsSumArgs<T> r;
    r.m = m;
    r.m_ld = m_ld;
    r.rows = cfg_.batch;
    r.cols = H_;
    r.dst = dst;
    r.dst_ld = dst_ld;
    r.a = a;
    r.a_ld = a_ld;
    r.b = b;
    r.b_ld = b_ld;
    ops_.push_back([r](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_rows_sum(r, stream)); });
  }

  void plan_forward(int d) {
    const int64_t S = cfg_.seq, Bt = cfg_.batch, I = cfg_.input, H = H_, GH = GH_, N = S * Bt;
    const T* wd = w_ + d * GH * I;
    const T* rd = r_ + d * GH * H;
    const T* wb = b_ ? b_ + d * 2 * GH : nullptr;
    const T* rb = b_ ? wb + GH : nullptr;
    const int64_t sd = cfg_.state_offset(d, 0);
    // X·Wᵀ for the whole sequence, rows in X's order.
    gemm(g_xw_, {N, GH, I, false, true, I, I, GH}, x_, wd, xw_);
    // The state before the first step, from initial_h / initial_c or zeros.
    const int64_t t0 = time_of(d, 0);
    rows_sum(step_rows(rec_->hprev, t0, H), row_ld(H), h0_ ? h0_ + sd : nullptr, state_ld(), nullptr, 0);
    if (lstm_)
      rows_sum(step_rows(rec_->cprev, t0, H), row_ld(H), c0_ ? c0_ + sd : nullptr, state_ld(), nullptr, 0);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = time_of(d, s);
      const bool last = s + 1 == S;
      const int64_t tn = last ? 0 : time_of(d, s + 1);
      const T* hp = step_rows(rec_->hprev, t, H);
      // The recurrent product's input: H_prev, or H_prev ⊙ mask under recurrent dropout (recorded for dR).
      const T* hin = hp;
      if (mask_) {
        T* rin = step_rows(rec_->rin, t, H);
        rows_sum(rin, row_ld(H), nullptr, 0, hp, row_ld(H), mask_ + sd, state_ld());
        hin = rin;
      }
      // Where the new states go: the next step's records, or the final states.
      T* h_next = last ? (yh_ ? yh_ + sd : hlast_) : step_rows(rec_->hprev, tn, H);
      const int64_t h_next_ld = last ? (yh_ ? state_ld() : H) : row_ld(H);
      T* y = y_ ? y_ + cfg_.y_offset(t, d, 0) : nullptr;
      // The operands every cell's step kernel takes.
      auto step_operands = [&](auto& p) {
        p.batch = Bt;
        p.hidden = H;
        p.xw = step_rows(xw_, t, GH);
        p.xw_ld = row_ld(GH);
        p.rh = rh_;
        p.wb = wb;
        p.rb = rb;
        p.act = step_rows(rec_->act, t, GH);
        p.act_ld = row_ld(GH);
        p.h = h_next;
        p.h_ld = h_next_ld;
        p.y = y;
        p.y_ld = y_ld();
      };
      if (rnn_) {
        gemm(g_rh_, {Bt, GH, H, false, true, row_ld(H), H, GH}, hin, rd, rh_);
        RnnStepArgs<T> p;
        step_operands(p);
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_rnn_step(p, stream)); });
        continue;
      }
      if (lstm_) {
        gemm(g_rh_, {Bt, GH, H, false, true, row_ld(H), H, GH}, hin, rd, rh_);
        LstmStepArgs<T> p;
        step_operands(p);
        p.hp = hp;
        p.hp_ld = row_ld(H);
        p.cp = step_rows(rec_->cprev, t, H);
        p.cp_ld = row_ld(H);
        p.c = last ? (yc_ ? yc_ + sd : clast_) : step_rows(rec_->cprev, tn, H);
        p.c_ld = last ? (yc_ ? state_ld() : H) : row_ld(H);
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_lstm_step(p, stream)); });
        continue;
      }
      GruStepArgs<T> p;
      step_operands(p);
      p.hp = hp;
      p.hp_ld = row_ld(H);
      if (mask_) {
        p.hin = hin;
        p.hin_ld = row_ld(H);
      }
      p.aux = step_rows(rec_->aux, t, H);
      p.aux_ld = row_ld(H);
      p.rhp = rhp_;
      if (lbr_) {
        gemm(g_rh_, {Bt, GH, H, false, true, row_ld(H), H, GH}, hin, rd, rh_);
        p.phase = 0;
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_gru_step(p, stream)); });
      } else {
        // z and r from H·R[z,r]ᵀ; then the candidate from (r ⊙ H)·R[h]ᵀ.
        gemm(g_rh_, {Bt, 2 * H, H, false, true, row_ld(H), H, GH}, hin, rd, rh_);
        p.phase = 1;
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_gru_step(p, stream)); });
        gemm(g_rh2_, {Bt, H, H, false, true, H, H, GH}, rhp_, rd + 2 * H * H, rh_ + 2 * H);
        p.phase = 2;
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_gru_step(p, stream)); });
      }
    }
  }

  void plan_backward(int d) {
    const int64_t S = cfg_.seq, Bt = cfg_.batch, I = cfg_.input, H = H_, GH = GH_, N = S * Bt;
    const T* wd = w_ + d * GH * I;
    const T* rd = r_ + d * GH * H;
    const int64_t sd = cfg_.state_offset(d, 0);
    // The gradients flowing into the final states.
    if (lstm_)
      rows_sum(dc_, H, dyc_ ? dyc_ + sd : nullptr, state_ld(), nullptr, 0);
    else if (!rnn_)
      rows_sum(dhd_, H, dyh_ ? dyh_ + sd : nullptr, state_ld(), nullptr, 0);
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t t = time_of(d, s);
      const bool first = s == S - 1;  // the first step backward: no recurrent gradient yet
      const T* dy = dy_ ? dy_ + cfg_.y_offset(t, d, 0) : nullptr;
      T* da = step_rows(daw_, t, GH);
      if (rnn_) {
        RnnStepGradArgs<T> p;
        p.batch = Bt;
        p.hidden = H;
        p.act = step_rows(rec_->act, t, GH);
        p.act_ld = row_ld(GH);
        state_grad(p, first, sd);
        p.dy = dy;
        p.dy_ld = y_ld();
        p.da = da;
        p.da_ld = row_ld(GH);
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_rnn_step_grad(p, stream)); });
        gemm(g_dh_, {Bt, H, GH, false, false, row_ld(GH), H, H}, da, rd, dhr_);
        continue;
      }
      if (lstm_) {
        LstmStepGradArgs<T> p;
        p.batch = Bt;
        p.hidden = H;
        p.act = step_rows(rec_->act, t, GH);
        p.act_ld = row_ld(GH);
        p.cp = step_rows(rec_->cprev, t, H);
        p.cp_ld = row_ld(H);
        state_grad(p, first, sd);
        p.dy = dy;
        p.dy_ld = y_ld();
        p.dc = dc_;
        p.da = da;
        p.da_ld = row_ld(GH);
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_lstm_step_grad(p, stream)); });
        gemm(g_dh_, {Bt, H, GH, false, false, row_ld(GH), H, H}, da, rd, dhr_);
        continue;
      }
      GruStepGradArgs<T> p;
      p.batch = Bt;
      p.hidden = H;
      p.act = step_rows(rec_->act, t, GH);
      p.act_ld = row_ld(GH);
      p.hp = step_rows(rec_->hprev, t, H);
      p.hp_ld = row_ld(H);
      if (mask_) {
        p.hin = step_rows(rec_->rin, t, H);
        p.hin_ld = row_ld(H);
        p.mask = mask_ + sd;
        p.mask_ld = state_ld();
      }
      p.aux = step_rows(rec_->aux, t, H);
      p.aux_ld = row_ld(H);
      p.dhd = dhd_;
      p.dhr = first ? nullptr : dhr_;
      p.dy = dy;
      p.dy_ld = y_ld();
      p.drh = drh_;
      p.da = da;
      p.da_ld = row_ld(GH);
      if (lbr_) {
        p.dar = step_rows(dar_, t, GH);
        p.dar_ld = row_ld(GH);
        p.phase = 0;
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_gru_step_grad(p, stream)); });
        gemm(g_dh_, {Bt, H, GH, false, false, row_ld(GH), H, H}, p.dar, rd, dhr_);
      } else {
        p.phase = 1;
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_gru_step_grad(p, stream)); });
        // d(r ⊙ H_prev) = da_h · R[h], then da_r, then dH_prev's recurrent part from da[z, r] · R[z, r].
        gemm(g_drh_, {Bt, H, H, false, false, row_ld(GH), H, H}, da + 2 * H, rd + 2 * H * H, drh_);
        p.phase = 2;
        ops_.push_back([p](cudaStream_t stream) { TRAINER_CUDA_CHECK(launch_gru_step_grad(p, stream)); });
        gemm(g_dh_, {Bt, H, 2 * H, false, false, row_ld(GH), H, H}, da, rd, dhr_);
      }
    }
    if (dh0_)
      rows_sum(dh0_ + sd, state_ld(), lstm_ || rnn_ ? nullptr : dhd_, H, dhr_, H,
               mask_ ? mask_ + sd : nullptr, state_ld());
    if (lstm_ && dc0_) rows_sum(dc0_ + sd, state_ld(), dc_, H, nullptr, 0);

    // Whole-sequence products over the rows of every step (X's row order throughout).
    if (dw_) gemm(g_dw_, {GH, I, N, true, false, GH, I, I}, daw_, x_, dw_ + d * GH * I);
    if (dr_) {
      T* drd = dr_ + d * GH * H;
      const T* hin = mask_ ? rec_->rin : rec_->hprev;
      if (lstm_ || rnn_ || lbr_) {
        gemm(g_dr_, {GH, H, N, true, false, GH, H, H}, dar_, hin, drd);
      } else {
        gemm(g_dr_, {2 * H, H, N, true, false, GH, H, H}, daw_, hin, drd);
        gemm(g_dr2_, {H, H, N, true, false, GH, H, H}, daw_ + 2 * H, rec_->aux, drd + 2 * H * H);
      }
    }
    if (db_) {
      // Column sums as ones[1, N] · dA[N, GH]: Wb's from the input side, Rb's from the recurrent side (the
      // same values except for a linear-before-reset GRU).
      T* dbw = db_ + d * 2 * GH;
      gemm(g_db_, {1, GH, N, false, false, N, GH, GH}, ones_, daw_, dbw);
      if (lbr_) {
        gemm(g_db_, {1, GH, N, false, false, N, GH, GH}, ones_, dar_, dbw + GH);
      } else {
        const size_t bytes = static_cast<size_t>(GH) * sizeof(T);
        ops_.push_back([dbw, GH, bytes](cudaStream_t stream) {
          TRAINER_CUDA_CHECK(cudaMemcpyAsync(dbw + GH, dbw, bytes, cudaMemcpyDeviceToDevice, stream));
        });
      }
    }
    // dX sums over the directions: the second accumulates in place.
    if (dx_) gemm(g_dx_, {N, I, GH, false, false, GH, I, I}, daw_, wd, dx_, d > 0);
  }

  RnnConfig cfg_;
  bool lstm_ = false, rnn_ = false, lbr_ = false, backward_ = false, rec_shared_ = false;
  int64_t H_ = 0, GH_ = 0;
  const T *x_ = nullptr, *w_ = nullptr, *r_ = nullptr, *b_ = nullptr, *h0_ = nullptr, *c0_ = nullptr,
          *mask_ = nullptr;
  T *y_ = nullptr, *yh_ = nullptr, *yc_ = nullptr;
  const T *dy_ = nullptr, *dyh_ = nullptr, *dyc_ = nullptr;
  T *dx_ = nullptr, *dw_ = nullptr, *dr_ = nullptr, *db_ = nullptr, *dh0_ = nullptr, *dc0_ = nullptr;

  std::shared_ptr<Records<T>> rec_;
  std::unique_ptr<KernelMemory> mem_;
  // Forward scratch: the sequence's input projections; per step the recurrent projections, GRU's r ⊙ H_prev,
  // and final states nobody asked for.
  T *xw_ = nullptr, *rh_ = nullptr, *rhp_ = nullptr, *hlast_ = nullptr, *clast_ = nullptr;
  // Backward: pre-activation gradients of the input side (daw) and, for a linear-before-reset GRU, of the
  // recurrent side (dar; else the same buffer); per step dH_prev's recurrent part (dhr), GRU's direct part
  // (dhd), the LSTM's cell gradient (dc), GRU's d(r ⊙ H_prev) (drh); ones for the bias sums.
  T *daw_ = nullptr, *dar_ = nullptr, *dhr_ = nullptr, *dhd_ = nullptr, *dc_ = nullptr, *drh_ = nullptr,
    *ones_ = nullptr;

  LtGemm g_xw_, g_rh_, g_rh2_, g_dh_, g_drh_, g_dw_, g_dr_, g_dr2_, g_db_, g_dx_;
  std::map<const LtGemm*, Shape> gemm_shapes_;
  std::map<const LtGemm*, std::vector<size_t>> gemm_calls_;
  std::vector<std::function<void(cudaStream_t)>> ops_;
};

// What identifies a forward node's computation in one prepared plan: the graph, the forward inputs (value ids
// and their arena pointers) and the dtype. Only supported nodes share, so their attributes are the defaults
// except those listed.
std::string share_key(const KernelArgs& a, RnnCell cell, const RnnConfig& cfg) {
  const int nf = ops::rnn_forward_inputs(cell);
  std::string key = fmt::format("{}", static_cast<const void*>(&a.graph));
  for (int i = 0; i < nf; ++i) {
    const bool present = i < static_cast<int>(a.node.inputs.size()) && a.node.inputs[i] != kNoValue;
    key += fmt::format("|{}@{}", present ? a.node.inputs[i] : kNoValue,
                       present ? a.inputs[i] : static_cast<const void*>(nullptr));
  }
  key += fmt::format("|{} {} {} {} {}", static_cast<int>(a.in(0).dtype), cfg.dirs, cfg.reverse, cfg.layout,
                     cfg.linear_before_reset);
  return key;
}

// The records of supported single-direction forward kernels by share_key, for the gradient kernel of the same
// node, prepared later in the same plan: the plan runs the forward first and nothing writes the forward's
// inputs in between, so the gradient kernel reads the forward's records instead of recomputing them. Entries
// expire with their kernels.
template <class T>
using ForwardRecords = WeakRegistry<Records<T>>;

template <class T>
KernelPtr make_rnn_kernel(const KernelArgs& a, RnnCell cell, const RnnConfig& cfg, bool backward) {
  const std::string key = share_key(a, cell, cfg);
  std::shared_ptr<Records<T>> shared;
  if (backward && cfg.dirs == 1) shared = ForwardRecords<T>::find(key);
  const bool is_shared = shared != nullptr;
  auto runner = std::make_shared<RnnRunner<T>>(a, cell, cfg, backward, std::move(shared));
  if (is_shared) runner->mark_shared();
  if (!runner->plan(*a.libs)) return nullptr;
  if (!backward && cfg.dirs == 1) ForwardRecords<T>::add(key, runner->records());
  return make_kernel([runner](cudaStream_t stream) { runner->run(stream); });
}

KernelFactory rnn_factory(RnnCell cell, bool backward) {
  return [cell, backward](const KernelArgs& a) -> KernelPtr {
    RnnConfig cfg;
    if (!ops::parse_rnn_config(cell, a.attrs(), a.in(0).shape, a.in(2).shape, &cfg).empty()) return nullptr;
    if (!supported(a, cell, cfg)) return nullptr;
    if (a.in(0).dtype == DType::f64) return make_rnn_kernel<double>(a, cell, cfg, backward);
    return make_rnn_kernel<float>(a, cell, cfg, backward);
  };
}

}  // namespace

void register_rnn_kernels(KernelRegistry& r) {
  r.add("LSTM", rnn_factory(RnnCell::lstm, false));
  r.add("GRU", rnn_factory(RnnCell::gru, false));
  r.add("LSTMGrad", rnn_factory(RnnCell::lstm, true));
  r.add("GRUGrad", rnn_factory(RnnCell::gru, true));
  r.add("RNN", rnn_factory(RnnCell::rnn, false));
  r.add("RNNGrad", rnn_factory(RnnCell::rnn, true));
}

}  // namespace trainer::engine::cuda
