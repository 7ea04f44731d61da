// CUDA kernels of the elementwise and shape op families (and Dropout, whose mask must be the CPU's): the
// factories read the graph once, reduce each node to a dense or strided geometry, and bind a launcher of
// elementwise.cu. The CPU kernels (backend/cpu/kernels_{elementwise,shape,norm}.cpp) are the reference.
#include <algorithm>
#include <cstring>

#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/backend/cuda/launch_elementwise.h"
#include "engine/ops/conv_geometry.h"
#include "engine/ops/norm_dropout.h"
#include "engine/ops/pad_geometry.h"
#include "engine/ops/shape_slice.h"
#include "engine/ops/transpose_geometry.h"

namespace trainer::engine::cuda {

ElemType elem_type(DType t) {
  switch (t) {
    case DType::f32:
      return ElemType::f32;
    case DType::f64:
      return ElemType::f64;
    case DType::bf16:
      return ElemType::bf16;
    case DType::f16:
      return ElemType::f16;
    case DType::i32:
      return ElemType::i32;
    case DType::i64:
      return ElemType::i64;
    case DType::u8:
      return ElemType::u8;
    case DType::boolean:
      return ElemType::boolean;
  }
  TRAINER_ASSERT(false, "unknown dtype {}", static_cast<int>(t));
}
static_assert(kNumDTypes == 8, "a new DType needs an ElemType");

namespace {

// The types of the CPU's dispatch_float and dispatch_numeric: other types run on the host, which reports
// them.
bool is_float_type(DType t) {
  return t == DType::f32 || t == DType::f64;
}
bool is_numeric_type(DType t) {
  return is_float_type(t) || t == DType::i32 || t == DType::i64 || t == DType::u8;
}

// An index map over `dims` for operands with the given strides: size-1 dims are dropped and neighbours that
// are contiguous in every operand merged, so a same-shape op becomes rank 1 and a bias add rank 2. Returns
// false when more than kMaxDims dims remain.
bool make_map(const std::vector<int64_t>& dims, const std::vector<std::vector<int64_t>>& strides,
              IndexMap* m) {
  const size_t ops = strides.size();
  TRAINER_ASSERT(ops >= 1 && ops <= static_cast<size_t>(kMaxOperands), "{} operands", ops);
  std::vector<int64_t> md;
  std::vector<std::vector<int64_t>> ms(ops);
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 1) continue;
    bool merge = !md.empty();
    for (size_t k = 0; k < ops && merge; ++k) merge = ms[k].back() == strides[k][d] * dims[d];
    if (merge) {
      md.back() *= dims[d];
      for (size_t k = 0; k < ops; ++k) ms[k].back() = strides[k][d];
    } else {
      md.push_back(dims[d]);
      for (size_t k = 0; k < ops; ++k) ms[k].push_back(strides[k][d]);
    }
  }
  if (md.empty()) {  // a single element
    md.push_back(1);
    for (size_t k = 0; k < ops; ++k) ms[k].push_back(0);
  }
  if (md.size() > static_cast<size_t>(kMaxDims)) return false;
  *m = IndexMap{};
  m->rank = static_cast<int>(md.size());
  for (int d = 0; d < m->rank; ++d) {
    m->dims[d] = md[d];
    for (size_t k = 0; k < ops; ++k) m->strides[k][d] = ms[k][d];
  }
  return true;
}

bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// A strided copy of elem_bytes-byte elements whose innermost dim is contiguous on both sides moves wider
// units instead (up to 16 bytes) when the sizes, strides and pointers allow. Rewrites the one-operand map and
// n in place and returns the unit's size.
int widen(IndexMap* m, int64_t* n, int elem_bytes, const void* strided, const void* dense) {
  const int last = m->rank - 1;
  if (m->strides[0][last] != 1) return elem_bytes;
  for (int unit = 16; unit > elem_bytes; unit /= 2) {
    if (unit % elem_bytes != 0) continue;
    bool ok = (m->dims[last] * elem_bytes) % unit == 0 && aligned(strided, unit) && aligned(dense, unit);
    for (int d = 0; d < last && ok; ++d) ok = (m->strides[0][d] * elem_bytes) % unit == 0;
    if (!ok) continue;
    const int64_t r = unit / elem_bytes;
    m->dims[last] /= r;
    for (int d = 0; d < last; ++d) m->strides[0][d] /= r;
    *n /= r;
    return unit;
  }
  return elem_bytes;
}

std::vector<int64_t> row_major_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size());
  int64_t acc = 1;
  for (int d = static_cast<int>(dims.size()) - 1; d >= 0; --d) {
    s[d] = acc;
    acc *= dims[d];
  }
  return s;
}

// A kernel copying a strided tensor into a dense one (gather) or a dense one into a strided one (scatter),
// over `dims` with `strides` on the strided side, elements starting at `strided`; nullptr past kMaxDims.
KernelPtr strided_copy(bool scatter, int elem_bytes, void* strided, void* dense,
                       const std::vector<int64_t>& dims, const std::vector<int64_t>& strides) {
  IndexMap m;
  if (!make_map(dims, {strides}, &m)) return nullptr;
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  const int unit = widen(&m, &n, elem_bytes, strided, dense);
  return make_kernel([=](cudaStream_t s) {
    TRAINER_CUDA_CHECK(launch_strided_copy(unit, scatter, strided, dense, m, n, s));
  });
}

// ---- elementwise ----

// The index map of a two-operand op broadcast to its output; false when the types or the dims do not fit a
// kernel (the host runs the node then).
bool binary_map(const KernelArgs& a, IndexMap* m) {
  if (!is_numeric_type(a.in(0).dtype) || a.in(1).dtype != a.in(0).dtype) return false;
  const Shape& so = a.out(0).shape;
  return make_map(so.dims(), {broadcast_strides(a.in(0).shape, so), broadcast_strides(a.in(1).shape, so)}, m);
}

template <BinaryOp kOp>
KernelPtr binary(const KernelArgs& a) {
  IndexMap m;
  if (!binary_map(a, &m)) return nullptr;
  const Shape& so = a.out(0).shape;
  const ElemType t = elem_type(a.in(0).dtype);
  const void* x = a.inputs[0];
  const void* y = a.inputs[1];
  void* z = a.outputs[0];
  const int64_t n = so.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_binary(kOp, t, x, y, z, m, n, s)); });
}

template <CompareOp kOp>
KernelPtr compare(const KernelArgs& a) {
  IndexMap m;
  if (!binary_map(a, &m)) return nullptr;
  const Shape& so = a.out(0).shape;
  const ElemType t = elem_type(a.in(0).dtype);
  const void* x = a.inputs[0];
  const void* y = a.inputs[1];
  auto* z = static_cast<uint8_t*>(a.outputs[0]);
  const int64_t n = so.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_compare(kOp, t, x, y, z, m, n, s)); });
}

// Clip (x, min?, max?) and ClipGrad (dy, x, min?, max?): the bounds stay on the device, read by the kernel.
KernelPtr clip(const KernelArgs& a) {
  if (!is_numeric_type(a.in(0).dtype)) return nullptr;
  const ElemType t = elem_type(a.in(0).dtype);
  const void* x = a.inputs[0];
  const void* lo = a.has_input(1) ? a.inputs[1] : nullptr;
  const void* hi = a.has_input(2) ? a.inputs[2] : nullptr;
  void* y = a.outputs[0];
  const int64_t n = a.in(0).shape.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_clip(t, x, lo, hi, y, n, s)); });
}

KernelPtr clip_grad(const KernelArgs& a) {
  if (!is_float_type(a.in(0).dtype) || a.in(1).dtype != a.in(0).dtype) return nullptr;
  const ElemType t = elem_type(a.in(0).dtype);
  const void* dy = a.inputs[0];
  const void* x = a.inputs[1];
  const void* lo = a.has_input(2) ? a.inputs[2] : nullptr;
  const void* hi = a.has_input(3) ? a.inputs[3] : nullptr;
  void* dx = a.outputs[0];
  const int64_t n = a.in(0).shape.numel();
  return make_kernel(
      [=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_clip_grad(t, dy, x, lo, hi, dx, n, s)); });
}

KernelPtr unary_with(UnaryOp op, UnaryParams p, const KernelArgs& a) {
  const DType dt = a.in(0).dtype;
  const bool numeric = op == UnaryOp::neg || op == UnaryOp::abs || op == UnaryOp::sign;
  if (numeric ? !is_numeric_type(dt) : !is_float_type(dt)) return nullptr;
  const ElemType t = elem_type(dt);
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  const int64_t n = a.in(0).shape.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_unary(op, p, t, x, y, n, s)); });
}

// The parameters of a parameterized activation from its node's attributes (LeakyRelu's and Elu's alpha,
// Selu's alpha and gamma, HardSigmoid's alpha and beta, Gelu's approximation); others keep the defaults.
UnaryParams params_of(const KernelArgs& a) {
  UnaryParams p;
  const Attributes& at = a.attrs();
  if (at.has("alpha")) p.alpha = at.f("alpha");
  if (at.has("beta")) p.beta = at.f("beta");
  if (at.has("gamma")) p.gamma = at.f("gamma");
  if (at.has("approximate")) p.tanh_approx = at.s("approximate") == "tanh";
  return p;
}

template <UnaryOp kOp>
KernelPtr unary(const KernelArgs& a) {
  return unary_with(kOp, params_of(a), a);
}

// (dy, x or y) -> dx: input 1 is what the functor of the op takes (ReluGrad, SigmoidGrad and TanhGrad the
// forward output; LeakyReluGrad and GeluGrad the forward input), as the gradient rules of ops/elementwise.cpp
// wire it.
KernelPtr activation_grad_with(ActivationGrad op, UnaryParams p, const KernelArgs& a) {
  if (!is_float_type(a.in(0).dtype) || a.in(1).dtype != a.in(0).dtype) return nullptr;
  const ElemType t = elem_type(a.in(0).dtype);
  const void* dy = a.inputs[0];
  const void* xy = a.inputs[1];
  void* dx = a.outputs[0];
  const int64_t n = a.in(0).shape.numel();
  return make_kernel(
      [=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_activation_grad(op, p, t, dy, xy, dx, n, s)); });
}

template <ActivationGrad kOp>
KernelPtr activation_grad(const KernelArgs& a) {
  return activation_grad_with(kOp, params_of(a), a);
}

// Views and Identity: the planner usually gives the output the input's buffer, and then there is nothing to
// do; when it could not (a persistent input, a graph output), the bytes are copied.
KernelPtr view_copy(const KernelArgs& a) {
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  const size_t bytes = a.out(0).nbytes();
  return make_kernel([=](cudaStream_t s) {
    if (x != y && bytes > 0) TRAINER_CUDA_CHECK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s));
  });
}

KernelPtr cast(const KernelArgs& a) {
  const DType from = a.in(0).dtype, to = a.out(0).dtype;
  if (from == to) return view_copy(a);
  const ElemType tf = elem_type(from), tt = elem_type(to);
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  const int64_t n = a.in(0).shape.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_cast(tf, tt, x, y, n, s)); });
}

KernelPtr where(const KernelArgs& a) {
  const DType dt = a.in(1).dtype;
  if (!is_numeric_type(dt) || a.in(2).dtype != dt || dtype_bytes(a.in(0).dtype) != 1) return nullptr;
  const Shape& so = a.out(0).shape;
  IndexMap m;
  if (!make_map(so.dims(),
                {broadcast_strides(a.in(0).shape, so), broadcast_strides(a.in(1).shape, so),
                 broadcast_strides(a.in(2).shape, so)},
                &m))
    return nullptr;
  const ElemType t = elem_type(dt);
  const auto* c = a.in_ptr<const uint8_t>(0);
  const void* x = a.inputs[1];
  const void* y = a.inputs[2];
  void* z = a.outputs[0];
  const int64_t n = so.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_where(t, c, x, y, z, m, n, s)); });
}

// Dropout and DropoutGrad draw the CPU's mask (kernels_norm.cpp): the same Philox stream (the forward node's
// name hashed here, on the host), the same per-element index and the same keep rule; the step's counters are
// read on the device from args.ctx.
KernelPtr dropout_with(const KernelArgs& a, uint64_t stream, bool with_mask) {
  if (!is_float_type(a.in(0).dtype)) return nullptr;
  DropoutArgs d;
  if (a.has_input(1)) {
    if (!is_float_type(a.in(1).dtype)) return nullptr;  // the host kernel reports it
    d.ratio = a.inputs[1];
    d.ratio_f64 = a.in(1).dtype == DType::f64;
  }
  if (a.has_input(2)) d.training = a.in_ptr<const uint8_t>(2);
  d.has_seed = a.attrs().has("seed");
  if (d.has_seed) d.seed = a.attrs().i("seed");
  d.stream = stream;
  const Shape& shape = a.in(0).shape;
  const int64_t n = shape.numel();
  d.per_sample =
      ops::elements_per_sample(n, shape.rank() ? shape[0] : 0,
                               a.attrs().has(ops::kRowsPerSample) ? a.attrs().i(ops::kRowsPerSample) : 1);
  const ElemType t = elem_type(a.in(0).dtype);
  const DeviceStepContext* ctx = a.ctx;
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  uint8_t* mask = with_mask && a.has_output(1) ? a.out_ptr<uint8_t>(1) : nullptr;
  return make_kernel(
      [=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_dropout(t, d, ctx, x, y, mask, n, s)); });
}

KernelPtr dropout(const KernelArgs& a) {
  return dropout_with(a, ops::dropout_stream(a.node.name), true);
}

// RandomNormalLike and RandomUniformLike: the CPU's draw (kernels_norm.cpp), keyed as Dropout's mask.
KernelPtr random_like(const KernelArgs& a) {
  if (!is_float_type(a.out(0).dtype)) return nullptr;
  RandomArgs r;
  r.normal = a.node.op == "RandomNormalLike";
  r.shift = r.normal ? a.attrs().f("mean") : a.attrs().f("low");
  r.width = r.normal ? a.attrs().f("scale") : a.attrs().f("high") - a.attrs().f("low");
  r.has_seed = a.attrs().has("seed");
  if (r.has_seed) r.seed = static_cast<int64_t>(a.attrs().f("seed"));
  r.stream = ops::dropout_stream(a.node.name);
  const Shape& shape = a.out(0).shape;
  const int64_t n = shape.numel();
  r.per_sample =
      ops::elements_per_sample(n, shape.rank() ? shape[0] : 0,
                               a.attrs().has(ops::kRowsPerSample) ? a.attrs().i(ops::kRowsPerSample) : 1);
  const ElemType t = elem_type(a.out(0).dtype);
  const DeviceStepContext* ctx = a.ctx;
  void* y = a.outputs[0];
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_random(t, r, ctx, y, n, s)); });
}

KernelPtr dropout_grad(const KernelArgs& a) {
  return dropout_with(a, static_cast<uint64_t>(a.attrs().i("stream")), false);
}

// ---- shape ----

KernelPtr expand(const KernelArgs& a) {
  const Shape& so = a.out(0).shape;
  return strided_copy(false, static_cast<int>(dtype_bytes(a.in(0).dtype)), a.inputs[0], a.outputs[0],
                      so.dims(), broadcast_strides(a.in(0).shape, so));
}

// As the CPU: size-1 dims are dropped and output dims adjacent in the input merged, so NCHW -> NHWC is a
// batched 2-D transpose [N, C, HW] -> [N, HW, C], which runs tiled; other permutations are strided copies.
KernelPtr transpose(const KernelArgs& a) {
  const ops::MergedTranspose m = ops::merge_transpose(a.in(0).shape, a.attrs());
  const std::vector<int64_t>& mdims = m.dims;
  const std::vector<int>& mperm = m.perm;
  const int r = static_cast<int>(mdims.size());
  const int es = static_cast<int>(dtype_bytes(a.in(0).dtype));
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  if (r <= 1) {
    const size_t bytes = a.in(0).nbytes();
    return make_kernel([=](cudaStream_t s) {
      if (x != y && bytes > 0) TRAINER_CUDA_CHECK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s));
    });
  }
  if (m.is_batched_2d()) {
    const int64_t batch = r == 3 ? mdims[0] : 1, rows = mdims[r - 2], cols = mdims[r - 1];
    return make_kernel(
        [=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_transpose(es, x, y, batch, rows, cols, s)); });
  }
  const std::vector<int64_t> in_strides = row_major_strides(mdims);
  std::vector<int64_t> out_dims, strides;
  for (int i = 0; i < r; ++i) {
    out_dims.push_back(mdims[mperm[i]]);
    strides.push_back(in_strides[mperm[i]]);
  }
  return strided_copy(false, es, const_cast<void*>(x), y, out_dims, strides);
}

// Each input is a dense [outer, its part of the row] scattered into the output at its offset within a row.
KernelPtr concat(const KernelArgs& a) {
  const Shape& os = a.out(0).shape;
  const int axis = normalize_axis(a.attrs().i("axis"), os.rank());
  if (axis < 0) return nullptr;
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= os[d];
  for (int d = axis + 1; d < os.rank(); ++d) inner *= os[d];
  const int es = static_cast<int>(dtype_bytes(a.out(0).dtype));
  const int64_t row = os[axis] * inner;  // elements
  auto* y = static_cast<std::byte*>(a.outputs[0]);
  std::vector<KernelPtr> parts;
  int64_t offset = 0;  // elements within a row
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const int64_t part = a.in(static_cast<int>(i)).shape[axis] * inner;
    if (part > 0 && outer > 0) {
      KernelPtr k = strided_copy(true, es, y + offset * es, a.inputs[i], {outer, part}, {row, 1});
      if (!k) return nullptr;
      parts.push_back(std::move(k));
    }
    offset += part;
  }
  auto shared = std::make_shared<std::vector<KernelPtr>>(std::move(parts));
  return make_kernel([shared](cudaStream_t s) {
    for (const KernelPtr& k : *shared) k->launch(s);
  });
}

// The sliced (dense) tensor as a view of the sliced-from one: its dims, and the strides and first element
// within the full tensor.
struct SliceView {
  std::vector<int64_t> dims, strides;
  int64_t base = 0;
};
SliceView slice_view(const Shape& full, const std::vector<int64_t>& start, const std::vector<int64_t>& step,
                     const std::vector<int64_t>& count) {
  SliceView v;
  const std::vector<int64_t> st = row_major_strides(full.dims());
  for (int d = 0; d < full.rank(); ++d) {
    v.base += start[d] * st[d];
    v.dims.push_back(count[d]);
    v.strides.push_back(step[d] * st[d]);
  }
  return v;
}

KernelPtr slice(const KernelArgs& a) {
  std::array<const Tensor*, 4> consts{};
  std::array<bool, 4> present{};
  for (int k = 0; k < 4; ++k) {
    present[k] = k + 1 < static_cast<int>(a.node.inputs.size()) && a.node.inputs[k + 1] != kNoValue;
    consts[k] = present[k] ? a.graph.initializer(a.node.inputs[k + 1]) : nullptr;
  }
  ops::SliceDims sd;
  if (!ops::slice_of_node(a.in(0).shape, a.attrs(), consts, present, &sd).empty()) return nullptr;
  if (a.in(0).shape.rank() == 1 && sd.step[0] == 1) {
    // A contiguous range of a vector, which the planner may have left where it lies (a view at an offset).
    const auto* x = static_cast<const std::byte*>(a.inputs[0]) + sd.start[0] * dtype_bytes(a.in(0).dtype);
    void* y = a.outputs[0];
    const size_t bytes = a.out(0).nbytes();
    return make_kernel([=](cudaStream_t s) {
      if (x != y && bytes > 0) TRAINER_CUDA_CHECK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s));
    });
  }
  const SliceView v = slice_view(a.in(0).shape, sd.start, sd.step, sd.count);
  const int64_t es = static_cast<int64_t>(dtype_bytes(a.in(0).dtype));
  auto* x = static_cast<std::byte*>(a.inputs[0]);
  return strided_copy(false, static_cast<int>(es), x + v.base * es, a.outputs[0], v.dims, v.strides);
}

// Pad and PadGrad: engine/kernels/pad.h's index math on the device, as the CPU kernels (kernels_shape.cpp).
KernelPtr pad(const KernelArgs& a) {
  kernels::PadGeom g;
  if (!is_numeric_type(a.in(0).dtype) || !ops::pad_node_geom(a.graph, a.node, &g)) return nullptr;
  const kernels::PadMode mode = ops::pad_mode(a.attrs().s("mode"));
  const ElemType t = elem_type(a.in(0).dtype);
  const void* x = a.inputs[0];
  const void* value = a.has_input(2) ? a.inputs[2] : nullptr;
  void* y = a.outputs[0];
  const int64_t n = a.out(0).shape.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_pad(t, mode, g, x, value, y, n, s)); });
}

KernelPtr pad_grad(const KernelArgs& a) {
  if (!is_float_type(a.in(0).dtype) || a.in(0).shape.rank() > 8) return nullptr;
  const kernels::PadGeom g = ops::pad_geom(a.out(0).shape, a.in(0).shape, a.attrs().ints("pads"));
  const kernels::PadMode mode = ops::pad_mode(a.attrs().s("mode"));
  const ElemType t = elem_type(a.in(0).dtype);
  const void* dy = a.inputs[0];
  void* dx = a.outputs[0];
  const int64_t n = a.out(0).shape.numel();
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_pad_grad(t, mode, g, dy, dx, n, s)); });
}

KernelPtr slice_grad(const KernelArgs& a) {
  const SliceView v =
      slice_view(a.out(0).shape, a.attrs().ints("starts"), a.attrs().ints("steps"), a.in(0).shape.dims());
  const int64_t es = static_cast<int64_t>(dtype_bytes(a.in(0).dtype));
  auto* dx = static_cast<std::byte*>(a.outputs[0]);
  const size_t bytes = a.out(0).nbytes();
  KernelPtr scatter;
  if (a.in(0).shape.numel() > 0) {
    scatter = strided_copy(true, static_cast<int>(es), dx + v.base * es, a.inputs[0], v.dims, v.strides);
    if (!scatter) return nullptr;
  }
  auto k = std::shared_ptr<CudaKernel>(std::move(scatter));
  return make_kernel([=](cudaStream_t s) {
    if (bytes > 0) TRAINER_CUDA_CHECK(cudaMemsetAsync(dx, 0, bytes, s));
    if (k) k->launch(s);
  });
}

GatherGeom gather_geom(const Shape& data, int axis, const Shape& indices) {
  GatherGeom g;
  for (int d = 0; d < axis; ++d) g.outer *= data[d];
  g.n = data[axis];
  for (int d = axis + 1; d < data.rank(); ++d) g.inner *= data[d];
  g.k = indices.numel();
  return g;
}

bool is_index_type(DType t) {
  return t == DType::i32 || t == DType::i64;
}

// Out-of-range indices cannot throw on the device as they do on the CPU: Gather writes zeros for them and
// GatherGrad skips them (a check of the data pipeline belongs before the step).
KernelPtr gather(const KernelArgs& a) {
  const int axis = normalize_axis(a.attrs().i("axis"), a.in(0).shape.rank());
  if (axis < 0 || !is_index_type(a.in(1).dtype)) return nullptr;
  GatherGeom g = gather_geom(a.in(0).shape, axis, a.in(1).shape);
  const void* x = a.inputs[0];
  const void* idx = a.inputs[1];
  void* y = a.outputs[0];
  // Rows move in the widest unit that divides them: an f32 embedding row of 768 moves as 16-byte words.
  const int64_t row_bytes = g.inner * static_cast<int64_t>(dtype_bytes(a.in(0).dtype));
  int unit = 16;
  while (unit > 1 && (row_bytes % unit != 0 || !aligned(x, unit) || !aligned(y, unit))) unit /= 2;
  g.inner = row_bytes / unit;
  const bool idx64 = a.in(1).dtype == DType::i64;
  return make_kernel(
      [=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_gather(unit, idx64, x, idx, y, g, s)); });
}

KernelPtr gather_grad(const KernelArgs& a) {
  const Shape data(a.attrs().ints("shape"));
  const int axis = normalize_axis(a.attrs().i("axis"), data.rank());
  if (axis < 0 || !is_float_type(a.in(0).dtype) || !is_index_type(a.in(1).dtype)) return nullptr;
  const GatherGeom g = gather_geom(data, axis, a.in(1).shape);
  const ElemType t = elem_type(a.in(0).dtype);
  const bool idx64 = a.in(1).dtype == DType::i64;
  const void* dy = a.inputs[0];
  const void* idx = a.inputs[1];
  void* dx = a.outputs[0];
  return make_kernel(
      [=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_gather_grad(t, idx64, dy, idx, dx, g, s)); });
}

// Empty images (no channel, row or column) go to the host, which writes the zeros they sample.
KernelPtr grid_sample(const KernelArgs& a) {
  const DType dt = a.in(0).dtype;
  if (dt != DType::f32 && dt != DType::f64) return nullptr;
  const kernels::GridGeom g = ops::grid_geom(a.in(0).shape, a.in(1).shape, a.attrs());
  if (g.c == 0 || g.h < 1 || g.w < 1) return nullptr;
  const ElemType t = elem_type(dt);
  const void* x = a.inputs[0];
  const void* grid = a.inputs[1];
  void* y = a.outputs[0];
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_grid_sample(t, x, grid, y, g, s)); });
}

KernelPtr grid_sample_grad(const KernelArgs& a) {
  const DType dt = a.in(0).dtype;
  if (dt != DType::f32 && dt != DType::f64) return nullptr;
  const kernels::GridGeom g = ops::grid_geom(a.in(1).shape, a.in(2).shape, a.attrs());
  if (g.c == 0 || g.h < 1 || g.w < 1) return nullptr;
  const ElemType t = elem_type(dt);
  const void* dy = a.inputs[0];
  const void* x = a.inputs[1];
  const void* grid = a.inputs[2];
  void* dx = a.has_output(0) ? a.outputs[0] : nullptr;
  void* dgrid = a.has_output(1) ? a.outputs[1] : nullptr;
  return make_kernel(
      [=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_grid_sample_grad(t, dy, x, grid, dx, dgrid, g, s)); });
}

// Shape: the dims are known now; each step writes them, as the output buffer may be reused between steps.
KernelPtr shape_of(const KernelArgs& a) {
  const Shape& in = a.in(0).shape;
  const int r = in.rank();
  auto clamp_dim = [r](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + r : v, 0, r); };
  const int64_t b = clamp_dim(a.attrs().i("start")), e = clamp_dim(a.attrs().i_or("end", r));
  SmallInts v;
  if (e - b > kMaxDims) return nullptr;
  for (int64_t d = b; d < e; ++d) v.v[v.count++] = in[static_cast<int>(d)];
  int64_t* y = a.out_ptr<int64_t>(0);
  return make_kernel([=](cudaStream_t s) { TRAINER_CUDA_CHECK(launch_write_ints(v, y, s)); });
}

}  // namespace

void register_elementwise_kernels(KernelRegistry& r) {
  // kernels_elementwise.cpp of the CPU
  r.add("Add", binary<BinaryOp::add>);
  r.add("Sub", binary<BinaryOp::sub>);
  r.add("Mul", binary<BinaryOp::mul>);
  r.add("Div", binary<BinaryOp::div>);
  r.add("Pow", binary<BinaryOp::pow>);
  r.add("Mod", [](const KernelArgs& a) {
    return a.attrs().i("fmod") ? binary<BinaryOp::fmod>(a) : binary<BinaryOp::mod>(a);
  });
  r.add("Neg", unary<UnaryOp::neg>);
  r.add("Exp", unary<UnaryOp::exp>);
  r.add("Log", unary<UnaryOp::log>);
  r.add("Sqrt", unary<UnaryOp::sqrt>);
  r.add("Relu", unary<UnaryOp::relu>);
  r.add("Sigmoid", unary<UnaryOp::sigmoid>);
  r.add("Tanh", unary<UnaryOp::tanh>);
  r.add("LeakyRelu", unary<UnaryOp::leaky_relu>);
  r.add("Gelu", unary<UnaryOp::gelu>);
  r.add("PRelu", binary<BinaryOp::prelu>);
  r.add("Softsign", unary<UnaryOp::softsign>);
  r.add("SoftsignGrad", activation_grad<ActivationGrad::softsign>);
  r.add("Max", binary<BinaryOp::max>);
  r.add("Min", binary<BinaryOp::min>);
  r.add("Greater", compare<CompareOp::greater>);
  r.add("Less", compare<CompareOp::less>);
  r.add("Equal", compare<CompareOp::equal>);
  r.add("GreaterOrEqual", compare<CompareOp::greater_or_equal>);
  r.add("LessOrEqual", compare<CompareOp::less_or_equal>);
  r.add("Abs", unary<UnaryOp::abs>);
  r.add("Sign", unary<UnaryOp::sign>);
  r.add("Floor", unary<UnaryOp::floor>);
  r.add("Ceil", unary<UnaryOp::ceil>);
  r.add("Round", unary<UnaryOp::round>);
  r.add("Sin", unary<UnaryOp::sin>);
  r.add("Cos", unary<UnaryOp::cos>);
  r.add("Asin", unary<UnaryOp::asin>);
  r.add("Acos", unary<UnaryOp::acos>);
  r.add("Atan", unary<UnaryOp::atan>);
  r.add("Asinh", unary<UnaryOp::asinh>);
  r.add("Acosh", unary<UnaryOp::acosh>);
  r.add("Atanh", unary<UnaryOp::atanh>);
  r.add("Reciprocal", unary<UnaryOp::reciprocal>);
  r.add("Erf", unary<UnaryOp::erf>);
  r.add("Softplus", unary<UnaryOp::softplus>);
  r.add("Elu", unary<UnaryOp::elu>);
  r.add("Selu", unary<UnaryOp::selu>);
  r.add("HardSigmoid", unary<UnaryOp::hard_sigmoid>);
  r.add("HardSwish", unary<UnaryOp::hard_swish>);
  r.add("Clip", clip);
  r.add("AbsGrad", activation_grad<ActivationGrad::abs>);
  r.add("ErfGrad", activation_grad<ActivationGrad::erf>);
  r.add("SoftplusGrad", activation_grad<ActivationGrad::softplus>);
  r.add("EluGrad", activation_grad<ActivationGrad::elu>);
  r.add("SeluGrad", activation_grad<ActivationGrad::selu>);
  r.add("HardSigmoidGrad", activation_grad<ActivationGrad::hard_sigmoid>);
  r.add("HardSwishGrad", activation_grad<ActivationGrad::hard_swish>);
  r.add("ClipGrad", clip_grad);
  r.add("ReluGrad", activation_grad<ActivationGrad::relu>);
  r.add("SigmoidGrad", activation_grad<ActivationGrad::sigmoid>);
  r.add("TanhGrad", activation_grad<ActivationGrad::tanh>);
  r.add("LeakyReluGrad", activation_grad<ActivationGrad::leaky_relu>);
  r.add("GeluGrad", activation_grad<ActivationGrad::gelu>);
  r.add("Identity", view_copy);
  // The copy only: the data-parallel layer averages the output across replicas (its plan bucket).
  r.add("ReplicaMean", view_copy);
  r.add("Cast", cast);
  r.add("Where", where);
  // kernels_shape.cpp of the CPU
  r.add("Reshape", view_copy);
  r.add("Flatten", view_copy);
  r.add("Squeeze", view_copy);
  r.add("Unsqueeze", view_copy);
  r.add("Expand", expand);
  r.add("Transpose", transpose);
  r.add("Concat", concat);
  r.add("Slice", slice);
  r.add("SliceGrad", slice_grad);
  r.add("Pad", pad);
  r.add("PadGrad", pad_grad);
  r.add("Gather", gather);
  r.add("GatherGrad", gather_grad);
  r.add("GridSample", grid_sample);
  r.add("GridSampleGrad", grid_sample_grad);
  r.add("Shape", shape_of);
  // Dropout of the CPU's kernels_norm.cpp: here, because its mask is an elementwise Philox draw.
  r.add("Dropout", dropout);
  r.add("DropoutGrad", dropout_grad);
  r.add("RandomNormalLike", random_like);
  r.add("RandomUniformLike", random_like);
}

}  // namespace trainer::engine::cuda
