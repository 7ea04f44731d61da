// Launchers of the reduce-family device code (reduce.cu): reductions, softmax, losses, LayerNormalization and
// the optimizer updates. Plain declarations (pointers, sizes, POD structs, a stream) that g++ and nvcc both
// read; every launcher returns the launch status (cudaGetLastError) for the caller to check.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace trainer::engine::cuda {

// The element type of a float tensor.
enum class Real : int { f32, f64 };

// Threads that cooperate on one row, group or output: 1 (a thread walks it alone; neighbouring threads take
// neighbouring columns, so loads stay coalesced when the walked axis is not the innermost), 32 (a warp) or
// 256 (a block).
inline int threads_for_run(int64_t run_length) {
  return run_length >= 1024 ? 256 : 32;
}

// ---- ReduceSum / ReduceMean / ReduceMax / ReduceMaxGrad ----

enum class ReduceOp : int { sum, mean, max };
inline constexpr int kReduceMaxDims = 8;

// A reduction over a row-major tensor with size-1 dims dropped and adjacent dims of the same kind merged.
// Output o is row-major over the kept dims; the elements reduced into it are numbered row-major over the
// reduced dims (outermost first), i.e. in memory order.
struct ReduceGeometry {
  int64_t out_count = 1;
  int64_t red_count = 1;  // 0 for an empty input: every output is the reduction of nothing
  int nk = 0, nr = 0;
  int64_t kdim[kReduceMaxDims] = {}, kstr[kReduceMaxDims] = {};
  int64_t rdim[kReduceMaxDims] = {}, rstr[kReduceMaxDims] = {};
  int tpo = 1;  // threads per output (see threads_for_run)
  int64_t splits =
      1;  // chunks of the reduced range; > 1 writes partials that a second pass combines in order
};

// Workspace bytes launch_reduce needs for g (0 without splits).
size_t reduce_workspace_bytes(const ReduceGeometry& g, Real t);
cudaError_t launch_reduce(ReduceOp op, Real t, const void* x, void* y, const ReduceGeometry& g,
                          void* workspace, cudaStream_t stream);
// dx (numel n) = dy at the first maximum (memory order) of each group, zero elsewhere; g.splits must be 1.
cudaError_t launch_reduce_max_grad(Real t, const void* x, const void* dy, void* dx, int64_t n,
                                   const ReduceGeometry& g, cudaStream_t stream);

// GlobalAveragePoolGrad: dx (groups x plane) = each group's dy divided by plane, as the CPU computes it.
cudaError_t launch_spread_mean(Real t, const void* dy, void* dx, int64_t groups, int64_t plane,
                               cudaStream_t stream);

// ---- Softmax / LogSoftmax and their gradients ----

// A tensor viewed as [outer, n, inner], normalized along n. tpo is 1 when inner > 1.
struct AxisRows {
  int64_t outer = 1, n = 1, inner = 1;
  int tpo = 1;
};
cudaError_t launch_softmax(bool log, Real t, const void* x, void* y, const AxisRows& g, cudaStream_t stream);
// dx may be dy (the op is in place).
cudaError_t launch_softmax_grad(bool log, Real t, const void* dy, const void* y, void* dx, const AxisRows& g,
                                cudaStream_t stream);

// ---- losses ----

enum class LossReduction : int { none, sum, mean };

// Class-index labels (i32 or i64), one per position, with ignore_index and optional per-class weights (of
// the scores' type).
struct ClassLabels {
  const void* labels = nullptr;
  bool i64 = true;
  bool has_ignore = false;
  int64_t ignore = 0;
  const void* weights = nullptr;
  int64_t classes = 0;
};
// Scores [n, c, d...] viewed as [n, c, d]: position p = (sample, d) holds its c scores at stride d.
struct ClassGeometry {
  int64_t n = 1, c = 1, d = 1;
  int tpo = 1;  // threads per position: 1 when d > 1
};
// Workspace bytes of the class losses over `positions` positions.
size_t class_loss_workspace_bytes(int64_t positions);

// A label outside [0, classes) that is not ignore_index makes its position's loss (and so a reduced loss)
// NaN: the device cannot throw, and NaN is what a training loop notices.
cudaError_t launch_softmax_cross_entropy(Real t, const void* scores, const ClassLabels& labels,
                                         const ClassGeometry& g, LossReduction r, void* loss, void* log_prob,
                                         void* workspace, cudaStream_t stream);
cudaError_t launch_softmax_cross_entropy_grad(Real t, const void* dloss, const void* scores,
                                              const ClassLabels& labels, const ClassGeometry& g,
                                              LossReduction r, const void* d_log_prob, void* dscores,
                                              void* workspace, cudaStream_t stream);
cudaError_t launch_nll(Real t, const void* input, const ClassLabels& labels, const ClassGeometry& g,
                       LossReduction r, void* loss, void* workspace, cudaStream_t stream);
cudaError_t launch_nll_grad(Real t, const void* dloss, const ClassLabels& labels, const ClassGeometry& g,
                            LossReduction r, void* dinput, void* workspace, cudaStream_t stream);

// The elementwise losses of engine/ops/loss_functors.h.
enum class PointLoss : int { binary_cross_entropy, binary_cross_entropy_with_logits, squared, absolute };
inline constexpr size_t kPointLossWorkspaceBytes = 2 * 1024 * sizeof(double);
cudaError_t launch_point_loss(PointLoss fn, double eps, Real t, const void* pred, const void* target,
                              int64_t n, LossReduction r, void* loss, void* workspace, cudaStream_t stream);
cudaError_t launch_point_loss_grad(PointLoss fn, double eps, Real t, const void* dloss, const void* pred,
                                   const void* target, int64_t n, LossReduction r, void* dpred,
                                   cudaStream_t stream);

// ---- LayerNormalization ----

// X viewed as [rows, inner]. row_blocks: how many fixed groups of rows the dScale/dB sums are split into.
struct LayerNormGeometry {
  int64_t rows = 1, inner = 1;
  int tpo = 32;
  int64_t row_blocks = 1;
  double eps = 1e-5;
};
cudaError_t launch_layer_norm(Real t, const void* x, const void* scale, const void* bias, void* y, void* mean,
                              void* inv_std, const LayerNormGeometry& g, cudaStream_t stream);
size_t layer_norm_grad_workspace_bytes(const LayerNormGeometry& g);
cudaError_t launch_layer_norm_grad(Real t, const void* dy, const void* x, const void* scale,
                                   const void* g_mean, const void* g_inv_std, void* dx, void* dscale,
                                   void* dbias, const LayerNormGeometry& g, void* workspace,
                                   cudaStream_t stream);

// ---- optimizer updates and ClipByGlobalNorm ----

enum class UpdateRule : int {
  adam,
  adamw,
  momentum,
  nesterov,
  adagrad,
  rmsprop,
  rmsprop_momentum,
  sgd,
  adamax,
  nadam,
  lion,
  adadelta,
  adamw_amsgrad,
  rmsprop_centered,
  rmsprop_centered_momentum,
  adagrad_keras
};
// The attributes of one update node (the fields its rule reads; see engine/ops/optimizer.cpp).
struct UpdateHyper {
  UpdateRule rule = UpdateRule::sgd;
  double alpha = 0, beta = 0;  // Adam/Momentum alpha, beta; AdamW beta1, beta2
  double eps = 0, l2 = 0;      // epsilon, norm_coefficient
  double post = 0;             // Adam norm_coefficient_post
  double decay = 0;            // weight_decay of the private updates; ONNX Adagrad's decay_factor
  double rho = 0, momentum = 0;
};
// The learning rate R (f32 or f64 scalar) and update count T (i64 scalar), read on the device at run time.
struct UpdateScalars {
  const void* r = nullptr;
  bool r_f64 = false;
  const int64_t* t = nullptr;
};
// One updated tensor: X, G and up to three states, their outputs (nullptr when absent; an output may be its
// input's buffer).
struct UpdateTensor {
  const void* x = nullptr;
  const void* g = nullptr;
  const void* s0 = nullptr;
  const void* s1 = nullptr;
  const void* s2 = nullptr;
  void* x_out = nullptr;
  void* s0_out = nullptr;
  void* s1_out = nullptr;
  void* s2_out = nullptr;
  int64_t n = 0;
};
// All tensors of the node in one pass (one launch per batch of up to a few dozen tensors).
cudaError_t launch_update(const UpdateHyper& h, Real t, const UpdateScalars& s, const UpdateTensor* tensors,
                          int count, cudaStream_t stream);

struct ClipTensor {
  const void* g = nullptr;
  void* out = nullptr;
  int64_t n = 0;
};
size_t clip_workspace_bytes(const ClipTensor* tensors, int count);
cudaError_t launch_clip_by_global_norm(Real t, const ClipTensor* tensors, int count, double clipnorm,
                                       void* norm_out, void* workspace, cudaStream_t stream);

// UnscaleGradients: out = g * (1 / *scale) for every tensor, and *finite = every g finite. `flag` is 4 bytes
// of scratch (the workspace); any non-finite element sets it, in any order, so the result is deterministic.
struct UnscaleTensor {
  const void* g = nullptr;
  void* out = nullptr;
  int64_t n = 0;
};
cudaError_t launch_unscale_gradients(Real t, const float* scale, const UnscaleTensor* tensors, int count,
                                     bool* finite, int* flag, cudaStream_t stream);

}  // namespace trainer::engine::cuda
