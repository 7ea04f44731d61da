// CUDA kernels of the reduce, loss, LayerNormalization and optimizer families, and GlobalAveragePool: the
// factories read a node once and capture plain geometry for the launchers of reduce.cu. A case they do not
// handle (a dtype other than f32/f64, a rank past the geometry's limit, a workspace too small) returns
// nullptr and runs on the host.
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/backend/cuda/launch_reduce.h"
#include "engine/ops/reduce_axes.h"

namespace trainer::engine::cuda {

namespace {

std::optional<Real> real_of(DType t) {
  if (t == DType::f32) return Real::f32;
  if (t == DType::f64) return Real::f64;
  return std::nullopt;
}

bool fits_workspace(const KernelArgs& a, size_t bytes) {
  return bytes == 0 || (a.libs && a.libs->workspace && bytes <= a.libs->workspace_bytes);
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// ---- reductions ----

// The reduction of `in` over `axes` as ReduceGeometry: size-1 dims dropped and adjacent dims of the same kind
// merged (as the CPU does), then the threads per output and the number of splits chosen from the shape alone,
// so the combining order (and the result's bits) never depends on the GPU. nullopt past kReduceMaxDims.
std::optional<ReduceGeometry> reduce_geometry(const Shape& in, const std::vector<int>& axes,
                                              int64_t out_numel) {
  ReduceGeometry g;
  if (in.numel() == 0) {  // every output reduces nothing
    g.out_count = out_numel;
    g.red_count = 0;
    return g;
  }
  std::vector<int64_t> dims;
  std::vector<bool> red;
  for (int d = 0; d < in.rank(); ++d) {
    if (in[d] == 1) continue;
    bool r = std::find(axes.begin(), axes.end(), d) != axes.end();
    if (!red.empty() && red.back() == r) {
      dims.back() *= in[d];
    } else {
      dims.push_back(in[d]);
      red.push_back(r);
    }
  }
  int n = static_cast<int>(dims.size());
  std::vector<int64_t> stride(n);
  int64_t acc = 1;
  for (int d = n - 1; d >= 0; --d) {
    stride[d] = acc;
    acc *= dims[d];
  }
  for (int d = 0; d < n; ++d) {
    if (red[d]) {
      if (g.nr == kReduceMaxDims) return std::nullopt;
      g.rdim[g.nr] = dims[d];
      g.rstr[g.nr++] = stride[d];
      g.red_count *= dims[d];
    } else {
      if (g.nk == kReduceMaxDims) return std::nullopt;
      g.kdim[g.nk] = dims[d];
      g.kstr[g.nk++] = stride[d];
      g.out_count *= dims[d];
    }
  }
  // A reduced innermost dim: threads of a group read one contiguous run together. A kept innermost dim:
  // one thread per output, so neighbouring threads read neighbouring columns.
  bool inner_reduced = n > 0 && red[n - 1];
  g.tpo = inner_reduced ? threads_for_run(g.red_count) : 1;
  return g;
}

// Splits a long reduction over few outputs into chunks (combined by a second pass in chunk order), so the GPU
// has work for ~128K threads; never more than the workspace holds.
void choose_splits(ReduceGeometry& g, Real t, size_t workspace_bytes) {
  const int64_t threads = g.out_count * g.tpo, target = int64_t{1} << 17;
  const int64_t min_chunk = g.tpo == 1 ? 64 : 16 * g.tpo;
  if (g.out_count == 0 || g.red_count < 2 * min_chunk || threads >= target) return;
  int64_t s = std::min({ceil_div(g.red_count, min_chunk), ceil_div(target, threads), int64_t{1024}});
  int64_t elem = t == Real::f64 ? 8 : 4;
  s = std::min<int64_t>(s, static_cast<int64_t>(workspace_bytes / static_cast<size_t>(g.out_count * elem)));
  g.splits = s >= 2 ? s : 1;
}

// The reduction `op` of the node's input 0 over `axes` into its output 0.
KernelPtr reduce_kernel(const KernelArgs& a, ReduceOp op, const std::vector<int>& axes) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  if (!rt || !a.libs) return nullptr;
  std::optional<ReduceGeometry> g = reduce_geometry(a.in(0).shape, axes, a.out(0).shape.numel());
  if (!g) return nullptr;
  void* x = a.inputs[0];
  void* y = a.outputs[0];
  if (g->red_count != 0 && g->nr == 0) {  // only size-1 dims (or none) reduced
    size_t bytes = a.out(0).nbytes();
    return make_kernel([=](cudaStream_t s) {
      if (bytes && x != y) TRAINER_CUDA_CHECK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s));
    });
  }
  choose_splits(*g, *rt, a.libs->workspace_bytes);
  void* ws = a.libs->workspace;
  if (!fits_workspace(a, reduce_workspace_bytes(*g, *rt))) return nullptr;
  return make_kernel(
      [=, g = *g, rt = *rt](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_reduce(op, rt, x, y, g, ws, s)); });
}

KernelPtr reduce_factory(const KernelArgs& a, ReduceOp op) {
  const Tensor* axes_t = a.has_input(1) ? a.graph.initializer(a.node.inputs[1]) : nullptr;
  ops::ReduceAxes ax = ops::resolve_reduce_axes(a.in(0).shape, a.attrs(), axes_t, a.has_input(1));
  if (!ax.error.empty()) return nullptr;
  if (ax.identity) ax.axes.clear();  // no reduced axis: a copy
  return reduce_kernel(a, op, ax.axes);
}

KernelPtr reduce_max_grad(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  if (!rt) return nullptr;
  const Shape& xs = a.in(0).shape;
  std::vector<int> axes;
  for (int64_t v : a.attrs().ints("axes")) axes.push_back(normalize_axis(v, xs.rank()));
  int64_t n = xs.numel();
  std::optional<ReduceGeometry> g = reduce_geometry(xs, axes, a.in(1).shape.numel());
  if (!g) return nullptr;
  const void* x = a.inputs[0];
  const void* dy = a.inputs[1];
  void* dx = a.outputs[0];
  return make_kernel([=, g = *g, rt = *rt](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_reduce_max_grad(rt, x, dy, dx, n, g, s));
  });
}

// GlobalAveragePool: the mean over every axis past the channels, by the reductions' fixed trees (cuDNN's
// pooling would take the whole plane as one window, and rejects large ones at launch).
KernelPtr global_avg_pool(const KernelArgs& a) {
  const int rank = a.in(0).shape.rank();
  if (rank < 3) return nullptr;
  std::vector<int> axes;
  for (int d = 2; d < rank; ++d) axes.push_back(d);
  return reduce_kernel(a, ReduceOp::mean, axes);
}

// GlobalAveragePoolGrad(dY) -> dX of shape input_shape: dY / plane spread over each plane.
KernelPtr global_avg_pool_grad(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  const Shape xs(a.attrs().ints("input_shape"));
  if (!rt || xs.rank() < 3) return nullptr;
  const int64_t groups = xs[0] * xs[1], plane = xs.numel() / std::max<int64_t>(1, groups);
  const void* dy = a.inputs[0];
  void* dx = a.outputs[0];
  return make_kernel([=, rt = *rt](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_spread_mean(rt, dy, dx, groups, plane, s));
  });
}

// ---- softmax ----

AxisRows axis_rows(const Shape& s, int64_t axis_attr) {
  AxisRows g;
  int axis = normalize_axis(axis_attr, s.rank());
  for (int d = 0; d < axis; ++d) g.outer *= s[d];
  g.n = s.rank() ? s[axis] : 1;
  for (int d = axis + 1; d < s.rank(); ++d) g.inner *= s[d];
  g.tpo = g.inner > 1 ? 1 : threads_for_run(g.n);
  return g;
}

template <bool kLog>
KernelPtr softmax(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  if (!rt) return nullptr;
  AxisRows g = axis_rows(a.in(0).shape, a.attrs().i("axis"));
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  return make_kernel(
      [=, rt = *rt](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_softmax(kLog, rt, x, y, g, s)); });
}

template <bool kLog>
KernelPtr softmax_grad(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  if (!rt) return nullptr;
  AxisRows g = axis_rows(a.in(0).shape, a.attrs().i("axis"));
  const void* dy = a.inputs[0];
  const void* y = a.inputs[1];
  void* dx = a.outputs[0];
  return make_kernel(
      [=, rt = *rt](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_softmax_grad(kLog, rt, dy, y, dx, g, s)); });
}

// ---- losses ----

LossReduction reduction_of(const KernelArgs& a) {
  const std::string& r = a.attrs().s("reduction");
  return r == "sum" ? LossReduction::sum : r == "none" ? LossReduction::none : LossReduction::mean;
}

// `first` is the index of the scores input; labels and the optional weights follow it.
std::optional<ClassLabels> class_labels(const KernelArgs& a, int first) {
  DType lt = a.in(first + 1).dtype;
  if (lt != DType::i32 && lt != DType::i64) return std::nullopt;
  ClassLabels l;
  l.labels = a.inputs[first + 1];
  l.i64 = lt == DType::i64;
  l.has_ignore = a.attrs().has("ignore_index");
  if (l.has_ignore) l.ignore = a.attrs().i("ignore_index");
  l.weights = a.has_input(first + 2) ? a.inputs[first + 2] : nullptr;
  l.classes = a.in(first).shape[1];
  return l;
}

ClassGeometry class_geometry(const Shape& s) {
  ClassGeometry g;
  g.n = s[0];
  g.c = s[1];
  for (int k = 2; k < s.rank(); ++k) g.d *= s[k];
  g.tpo = g.d > 1 ? 1 : threads_for_run(g.c);
  return g;
}

KernelPtr softmax_cross_entropy(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  std::optional<ClassLabels> l = class_labels(a, 0);
  if (!rt || !l || !a.libs) return nullptr;
  ClassGeometry g = class_geometry(a.in(0).shape);
  LossReduction r = reduction_of(a);
  void* ws = r == LossReduction::none ? nullptr : a.libs->workspace;
  if (ws && !fits_workspace(a, class_loss_workspace_bytes(g.n * g.d))) return nullptr;
  const void* x = a.inputs[0];
  void* loss = a.outputs[0];
  void* log_prob = a.has_output(1) ? a.outputs[1] : nullptr;
  return make_kernel([=, rt = *rt, l = *l](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_softmax_cross_entropy(rt, x, l, g, r, loss, log_prob, ws, s));
  });
}

// Inputs (dloss, scores, labels, [weights], [d log_prob]) -> dscores.
KernelPtr softmax_cross_entropy_grad(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(1).dtype);
  std::optional<ClassLabels> l = class_labels(a, 1);
  if (!rt || !l || !a.libs) return nullptr;
  ClassGeometry g = class_geometry(a.in(1).shape);
  LossReduction r = reduction_of(a);
  void* ws = r == LossReduction::mean ? a.libs->workspace : nullptr;
  if (ws && !fits_workspace(a, class_loss_workspace_bytes(g.n * g.d))) return nullptr;
  const void* dloss = a.inputs[0];
  const void* x = a.inputs[1];
  const void* g_log_prob = a.has_input(4) ? a.inputs[4] : nullptr;
  void* dx = a.outputs[0];
  return make_kernel([=, rt = *rt, l = *l](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_softmax_cross_entropy_grad(rt, dloss, x, l, g, r, g_log_prob, dx, ws, s));
  });
}

KernelPtr nll(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  std::optional<ClassLabels> l = class_labels(a, 0);
  if (!rt || !l || !a.libs) return nullptr;
  ClassGeometry g = class_geometry(a.in(0).shape);
  LossReduction r = reduction_of(a);
  void* ws = r == LossReduction::none ? nullptr : a.libs->workspace;
  if (ws && !fits_workspace(a, class_loss_workspace_bytes(g.n * g.d))) return nullptr;
  const void* x = a.inputs[0];
  void* loss = a.outputs[0];
  return make_kernel(
      [=, rt = *rt, l = *l](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_nll(rt, x, l, g, r, loss, ws, s)); });
}

// Inputs (dloss, input, target, [weight]) -> dinput.
KernelPtr nll_grad(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(1).dtype);
  std::optional<ClassLabels> l = class_labels(a, 1);
  if (!rt || !l || !a.libs) return nullptr;
  ClassGeometry g = class_geometry(a.in(1).shape);
  LossReduction r = reduction_of(a);
  void* ws = r == LossReduction::mean ? a.libs->workspace : nullptr;
  if (ws && !fits_workspace(a, class_loss_workspace_bytes(g.n * g.d))) return nullptr;
  const void* dloss = a.inputs[0];
  void* dx = a.outputs[0];
  return make_kernel([=, rt = *rt, l = *l](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_nll_grad(rt, dloss, l, g, r, dx, ws, s));
  });
}

// Inputs (prediction, target) -> loss.
KernelFactory point_loss(PointLoss fn) {
  return [fn](const KernelArgs& a) -> KernelPtr {
    std::optional<Real> rt = real_of(a.in(0).dtype);
    if (!rt || !a.libs) return nullptr;
    LossReduction r = reduction_of(a);
    void* ws = r == LossReduction::none ? nullptr : a.libs->workspace;
    if (ws && !fits_workspace(a, kPointLossWorkspaceBytes)) return nullptr;
    double eps = fn == PointLoss::binary_cross_entropy ? static_cast<double>(a.attrs().f("epsilon")) : 0.0;
    const void* p = a.inputs[0];
    const void* t = a.inputs[1];
    void* loss = a.outputs[0];
    int64_t n = a.in(0).shape.numel();
    return make_kernel([=, rt = *rt](cudaStream_t s) {
      TRAINER_CUDA_CHECK(launch_point_loss(fn, eps, rt, p, t, n, r, loss, ws, s));
    });
  };
}

// Inputs (dloss, prediction, target) -> dprediction.
KernelFactory point_loss_grad(PointLoss fn) {
  return [fn](const KernelArgs& a) -> KernelPtr {
    std::optional<Real> rt = real_of(a.in(1).dtype);
    if (!rt) return nullptr;
    LossReduction r = reduction_of(a);
    double eps = fn == PointLoss::binary_cross_entropy ? static_cast<double>(a.attrs().f("epsilon")) : 0.0;
    const void* dloss = a.inputs[0];
    const void* p = a.inputs[1];
    const void* t = a.inputs[2];
    void* dp = a.outputs[0];
    int64_t n = a.in(1).shape.numel();
    return make_kernel([=, rt = *rt](cudaStream_t s) {
      TRAINER_CUDA_CHECK(launch_point_loss_grad(fn, eps, rt, dloss, p, t, n, r, dp, s));
    });
  };
}

// ---- LayerNormalization ----

LayerNormGeometry layer_norm_geometry(const KernelArgs& a, const Shape& x) {
  LayerNormGeometry g;
  int axis = normalize_axis(a.attrs().i("axis"), x.rank());
  for (int k = 0; k < x.rank(); ++k) (k < axis ? g.rows : g.inner) *= x[k];
  g.tpo = threads_for_run(g.inner);
  g.eps = a.attrs().f("epsilon");
  // dScale/dB: enough (row block, column) threads to fill the GPU, at least one row per block.
  int64_t blocks = g.inner > 0 ? ceil_div(int64_t{1} << 17, g.inner) : 1;
  g.row_blocks = std::clamp<int64_t>(blocks, 1, std::clamp<int64_t>(g.rows, 1, 1024));
  return g;
}

KernelPtr layer_norm(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  if (!rt) return nullptr;
  LayerNormGeometry g = layer_norm_geometry(a, a.in(0).shape);
  const void* x = a.inputs[0];
  const void* scale = a.inputs[1];
  const void* bias = a.has_input(2) ? a.inputs[2] : nullptr;
  void* y = a.outputs[0];
  void* mean = a.has_output(1) ? a.outputs[1] : nullptr;
  void* inv_std = a.has_output(2) ? a.outputs[2] : nullptr;
  return make_kernel([=, rt = *rt](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_layer_norm(rt, x, scale, bias, y, mean, inv_std, g, s));
  });
}

// Inputs (dY, X, Scale, [g_Mean], [g_InvStdDev]); outputs dX, dScale, [dB].
KernelPtr layer_norm_grad(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(1).dtype);
  if (!rt || !a.libs) return nullptr;
  LayerNormGeometry g = layer_norm_geometry(a, a.in(1).shape);
  if (!fits_workspace(a, layer_norm_grad_workspace_bytes(g))) return nullptr;
  void* ws = a.libs->workspace;
  const void* dy = a.inputs[0];
  const void* x = a.inputs[1];
  const void* scale = a.inputs[2];
  const void* g_mean = a.has_input(3) ? a.inputs[3] : nullptr;
  const void* g_inv = a.has_input(4) ? a.inputs[4] : nullptr;
  void* dx = a.outputs[0];
  void* dscale = a.outputs[1];
  void* dbias = a.has_output(2) ? a.outputs[2] : nullptr;
  return make_kernel([=, rt = *rt](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_layer_norm_grad(rt, dy, x, scale, g_mean, g_inv, dx, dscale, dbias, g, ws, s));
  });
}

// ---- optimizer updates ----

// An update node (R, T, X..., G..., S1..., SK...) -> (X_new..., S1_new..., SK_new...): all its tensors in one
// pass; R and T stay on the device and are read by the kernel at run time.
KernelPtr update_factory(const KernelArgs& a, const UpdateHyper& h, int states) {
  int nin = static_cast<int>(a.inputs.size());
  int n = (nin - 2) / (2 + states);
  if (n < 1 || nin != 2 + (2 + states) * n) return nullptr;
  std::optional<Real> rt = real_of(a.in(2).dtype);
  DType r_type = a.in(0).dtype;
  if (!rt || (r_type != DType::f32 && r_type != DType::f64) || a.in(1).dtype != DType::i64) return nullptr;
  for (int i = 0; i < nin; ++i)
    if (!a.has_input(i)) return nullptr;
  std::vector<UpdateTensor> tensors(n);
  for (int j = 0; j < n; ++j) {
    UpdateTensor& u = tensors[j];
    u.x = a.inputs[2 + j];
    u.g = a.inputs[2 + n + j];
    if (states > 0) u.s0 = a.inputs[2 + 2 * n + j];
    if (states > 1) u.s1 = a.inputs[2 + 3 * n + j];
    if (states > 2) u.s2 = a.inputs[2 + 4 * n + j];
    u.x_out = a.has_output(j) ? a.outputs[j] : nullptr;
    if (states > 0 && a.has_output(n + j)) u.s0_out = a.outputs[n + j];
    if (states > 1 && a.has_output(2 * n + j)) u.s1_out = a.outputs[2 * n + j];
    if (states > 2 && a.has_output(3 * n + j)) u.s2_out = a.outputs[3 * n + j];
    u.n = a.in(2 + j).shape.numel();
  }
  UpdateScalars sc{a.inputs[0], r_type == DType::f64, static_cast<const int64_t*>(a.inputs[1])};
  return make_kernel([=, rt = *rt](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_update(h, rt, sc, tensors.data(), static_cast<int>(tensors.size()), s));
  });
}

KernelPtr adam(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  UpdateHyper h;
  h.rule = UpdateRule::adam;
  h.alpha = at.f("alpha");
  h.beta = at.f("beta");
  h.eps = at.f("epsilon");
  h.l2 = at.f("norm_coefficient");
  h.post = at.f("norm_coefficient_post");
  return update_factory(a, h, 2);
}

KernelPtr adamw(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  UpdateHyper h;
  const bool amsgrad = at.i("amsgrad") != 0;
  h.rule = amsgrad ? UpdateRule::adamw_amsgrad : UpdateRule::adamw;
  h.alpha = at.f("beta1");
  h.beta = at.f("beta2");
  h.eps = at.f("epsilon");
  h.decay = at.f("weight_decay");
  return update_factory(a, h, amsgrad ? 3 : 2);
}

KernelPtr momentum(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  UpdateHyper h;
  h.rule = at.s("mode") == "nesterov" ? UpdateRule::nesterov : UpdateRule::momentum;
  h.alpha = at.f("alpha");
  h.beta = at.f("beta");
  h.l2 = at.f("norm_coefficient");
  return update_factory(a, h, 1);
}

KernelPtr adagrad(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  UpdateHyper h;
  h.rule = UpdateRule::adagrad;
  h.decay = at.f("decay_factor");
  h.eps = at.f("epsilon");
  h.l2 = at.f("norm_coefficient");
  return update_factory(a, h, 1);
}

KernelPtr rmsprop(const KernelArgs& a) {
  const Attributes& at = a.attrs();
  // The states: V, then MOM when there are two (or three), then MG when centered.
  const bool centered = at.i("centered") != 0;
  const int states = static_cast<int>(a.inputs.size()) - 4;
  const bool mom = states - (centered ? 1 : 0) == 2;
  UpdateHyper h;
  h.rule = centered ? (mom ? UpdateRule::rmsprop_centered_momentum : UpdateRule::rmsprop_centered)
                    : (mom ? UpdateRule::rmsprop_momentum : UpdateRule::rmsprop);
  h.rho = at.f("rho");
  h.eps = at.f("epsilon");
  h.momentum = at.f("momentum");
  h.l2 = at.f("norm_coefficient");
  return update_factory(a, h, states);
}

// Keras 3's Adamax, Nadam, Lion (beta1, beta2 in alpha, beta), Adadelta (rho) and Adagrad, each with
// decoupled decay.
KernelPtr keras_update(const KernelArgs& a, UpdateRule rule, int states) {
  const Attributes& at = a.attrs();
  UpdateHyper h;
  h.rule = rule;
  if (rule == UpdateRule::adadelta) {
    h.rho = at.f("rho");
  } else if (rule != UpdateRule::adagrad_keras) {
    h.alpha = at.f("beta1");
    h.beta = at.f("beta2");
  }
  if (rule != UpdateRule::lion) h.eps = at.f("epsilon");
  h.decay = at.f("weight_decay");
  return update_factory(a, h, states);
}

KernelPtr sgd(const KernelArgs& a) {
  UpdateHyper h;
  h.rule = UpdateRule::sgd;
  h.l2 = a.attrs().f("norm_coefficient");
  return update_factory(a, h, 0);
}

// Inputs G_1..G_k; outputs G_1'..G_k' and optionally the norm.
KernelPtr clip_by_global_norm(const KernelArgs& a) {
  std::optional<Real> rt = real_of(a.in(0).dtype);
  if (!rt || !a.libs) return nullptr;
  int k = static_cast<int>(a.node.inputs.size());
  std::vector<ClipTensor> tensors;
  for (int i = 0; i < k; ++i) {
    if (!a.has_input(i) || !a.has_output(i) || a.in(i).dtype != a.in(0).dtype) return nullptr;
    tensors.push_back({a.inputs[i], a.outputs[i], a.in(i).shape.numel()});
  }
  if (!fits_workspace(a, clip_workspace_bytes(tensors.data(), k))) return nullptr;
  void* norm_out = a.has_output(k) ? a.outputs[k] : nullptr;
  double clipnorm = a.attrs().f("clipnorm");
  void* ws = a.libs->workspace;
  return make_kernel([=, rt = *rt](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_clip_by_global_norm(rt, tensors.data(), static_cast<int>(tensors.size()),
                                                  clipnorm, norm_out, ws, s));
  });
}

KernelPtr unscale_gradients(const KernelArgs& a) {
  const int k = static_cast<int>(a.node.inputs.size()) - 1;
  std::optional<Real> rt = real_of(a.in(1).dtype);
  if (!rt || !a.libs || k < 1 || !fits_workspace(a, sizeof(int))) return nullptr;
  std::vector<UnscaleTensor> tensors;
  for (int i = 0; i < k; ++i) {
    if (!a.has_output(i) || a.in(i + 1).dtype != a.in(1).dtype) return nullptr;
    tensors.push_back({a.inputs[i + 1], a.outputs[i], a.in(i + 1).shape.numel()});
  }
  const float* scale = a.in_ptr<float>(0);
  bool* finite = a.out_ptr<bool>(k);
  int* flag = static_cast<int*>(a.libs->workspace);
  return make_kernel([=, rt = *rt](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_unscale_gradients(rt, scale, tensors.data(), static_cast<int>(tensors.size()),
                                                finite, flag, s));
  });
}

}  // namespace

void register_reduce_kernels(KernelRegistry& r) {
  r.add("UnscaleGradients", unscale_gradients);
  r.add("ReduceSum", [](const KernelArgs& a) { return reduce_factory(a, ReduceOp::sum); });
  r.add("ReduceMean", [](const KernelArgs& a) { return reduce_factory(a, ReduceOp::mean); });
  r.add("GlobalAveragePool", global_avg_pool);
  r.add("GlobalAveragePoolGrad", global_avg_pool_grad);
  r.add("ReduceMax", [](const KernelArgs& a) { return reduce_factory(a, ReduceOp::max); });
  r.add("ReduceMaxGrad", reduce_max_grad);
  r.add("Softmax", softmax<false>);
  r.add("LogSoftmax", softmax<true>);
  r.add("SoftmaxGrad", softmax_grad<false>);
  r.add("LogSoftmaxGrad", softmax_grad<true>);

  r.add("SoftmaxCrossEntropyLoss", softmax_cross_entropy);
  r.add("SoftmaxCrossEntropyLossGrad", softmax_cross_entropy_grad);
  r.add("NegativeLogLikelihoodLoss", nll);
  r.add("NegativeLogLikelihoodLossGrad", nll_grad);
  r.add("BinaryCrossEntropy", point_loss(PointLoss::binary_cross_entropy));
  r.add("BinaryCrossEntropyGrad", point_loss_grad(PointLoss::binary_cross_entropy));
  r.add("BinaryCrossEntropyWithLogits", point_loss(PointLoss::binary_cross_entropy_with_logits));
  r.add("BinaryCrossEntropyWithLogitsGrad", point_loss_grad(PointLoss::binary_cross_entropy_with_logits));
  r.add("MeanSquaredError", point_loss(PointLoss::squared));
  r.add("MeanSquaredErrorGrad", point_loss_grad(PointLoss::squared));
  r.add("MeanAbsoluteError", point_loss(PointLoss::absolute));
  r.add("MeanAbsoluteErrorGrad", point_loss_grad(PointLoss::absolute));

  r.add("LayerNormalization", layer_norm);
  r.add("LayerNormalizationGrad", layer_norm_grad);

  r.add("ClipByGlobalNorm", clip_by_global_norm);
  r.add("Adam", adam);
  r.add("AdamWUpdate", adamw);
  r.add("Momentum", momentum);
  r.add("Adagrad", adagrad);
  r.add("RMSpropUpdate", rmsprop);
  r.add("AdamaxUpdate", [](const KernelArgs& a) { return keras_update(a, UpdateRule::adamax, 2); });
  r.add("NadamUpdate", [](const KernelArgs& a) { return keras_update(a, UpdateRule::nadam, 2); });
  r.add("LionUpdate", [](const KernelArgs& a) { return keras_update(a, UpdateRule::lion, 1); });
  r.add("AdadeltaUpdate", [](const KernelArgs& a) { return keras_update(a, UpdateRule::adadelta, 2); });
  r.add("AdagradUpdate", [](const KernelArgs& a) { return keras_update(a, UpdateRule::adagrad_keras, 1); });
  r.add("SGDUpdate", sgd);
}

}  // namespace trainer::engine::cuda
