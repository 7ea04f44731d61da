// CPU kernels of op family 'shape'. Data movement is typed by element size only, so every dtype shares one
// instantiation per size; copies run row by row with memcpy where the innermost dim is contiguous.
#include <algorithm>
#include <cstring>

#include "engine/backend/cpu/broadcast.h"
#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/ops/pad_geometry.h"
#include "engine/ops/shape_slice.h"
#include "engine/ops/transpose_geometry.h"

namespace trainer::engine::cpu {

namespace {

// Calls f.template operator()<U>() with an unsigned integer type of the element size.
template <class F>
void dispatch_bytes(DType t, F&& f) {
  switch (dtype_bytes(t)) {
    case 1:
      f.template operator()<uint8_t>();
      return;
    case 2:
      f.template operator()<uint16_t>();
      return;
    case 4:
      f.template operator()<uint32_t>();
      return;
    case 8:
      f.template operator()<uint64_t>();
      return;
    default:
      TRAINER_ASSERT(false, "no element type of {} bytes", dtype_bytes(t));
  }
}

int64_t row_grain(int64_t inner) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(inner, 1));
}

// Views (Reshape, Flatten, Squeeze, Unsqueeze): the planner usually gives the output the input's buffer; when
// it could not (the input is persistent or a graph output), the bytes are copied.
KernelPtr view_copy(const KernelArgs& a) {
  const void* x = a.inputs[0];
  void* y = a.outputs[0];
  size_t bytes = a.out(0).nbytes();
  return make_kernel([=](const StepContext&) {
    if (x != y) std::memcpy(y, x, bytes);
  });
}

void parallel_zero(void* p, size_t bytes) {
  auto* b = static_cast<std::byte*>(p);
  parallel_chunks(
      static_cast<int64_t>(bytes), [&](int64_t lo, int64_t hi) { std::memset(b + lo, 0, hi - lo); },
      int64_t{1} << 20);
}

// A dense row-major index space (`dims`) mapped to a strided one: element i of the dense side sits at
// base + sum(idx_d * strides[d]) on the strided side. Walked row by row (rows of the last dim).
struct StridedMap {
  std::vector<int64_t> dims, strides;
  int64_t base = 0;
  int64_t inner() const { return dims.empty() ? 1 : dims.back(); }
  int64_t inner_stride() const { return strides.empty() ? 1 : strides.back(); }
  int64_t rows() const {
    int64_t n = 1;
    for (size_t d = 0; d + 1 < dims.size(); ++d) n *= dims[d];
    return inner() ? n : 0;
  }
  int64_t offset(int64_t row) const {
    int64_t off = base;
    for (int d = static_cast<int>(dims.size()) - 2; d >= 0; --d) {
      off += (row % dims[d]) * strides[d];
      row /= dims[d];
    }
    return off;
  }
};

std::vector<int64_t> row_major_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size());
  int64_t acc = 1;
  for (int d = static_cast<int>(dims.size()) - 1; d >= 0; --d) {
    s[d] = acc;
    acc *= dims[d];
  }
  return s;
}

// dense[row-major] = strided[map]  (gather) or strided[map] = dense (scatter).
template <class T, bool kScatter>
void strided_copy(const StridedMap& m, T* strided, T* dense) {
  int64_t inner = m.inner(), s = m.inner_stride();
  parallel_for(
      m.rows(),
      [&](int64_t r) {
        T* d = dense + r * inner;
        T* p = strided + m.offset(r);
        if (s == 1) {
          if constexpr (kScatter)
            std::memcpy(p, d, inner * sizeof(T));
          else
            std::memcpy(d, p, inner * sizeof(T));
        } else {
          for (int64_t i = 0; i < inner; ++i) {
            if constexpr (kScatter)
              p[i * s] = d[i];
            else
              d[i] = p[i * s];
          }
        }
      },
      row_grain(inner));
}

KernelPtr expand(const KernelArgs& a) {
  KernelPtr kp;
  dispatch_bytes(a.in(0).dtype, [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    auto br = std::make_shared<BroadcastRows<1>>(a.out(0).shape, std::array<const Shape*, 1>{&a.in(0).shape});
    kp = make_kernel([=](const StepContext&) {
      int64_t inner = br->inner(), s = br->inner_stride(0);
      parallel_for(
          br->rows(),
          [&](int64_t r) {
            std::array<int64_t, 1> off;
            br->offsets(r, &off);
            T* py = y + r * inner;
            if (s)
              std::memcpy(py, x + off[0], inner * sizeof(T));
            else
              std::fill(py, py + inner, x[off[0]]);
          },
          row_grain(inner));
    });
  });
  return kp;
}

// out[c * R + r] = in[r * C + c] for one R x C matrix, in 32 x 32 tiles so both sides stay in cache.
constexpr int64_t kTile = 32;
template <class T>
void transpose_tile(const T* in, T* out, int64_t R, int64_t C, int64_t r0, int64_t c0) {
  int64_t r1 = std::min(r0 + kTile, R), c1 = std::min(c0 + kTile, C);
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = r0; r < r1; ++r) out[c * R + r] = in[r * C + c];
}

KernelPtr transpose(const KernelArgs& a) {
  const Shape& in = a.in(0).shape;
  const ops::MergedTranspose m = ops::merge_transpose(in, a.attrs());
  const std::vector<int64_t>& mdims = m.dims;
  const std::vector<int>& mperm = m.perm;
  int r = static_cast<int>(mdims.size());
  KernelPtr kp;
  dispatch_bytes(a.in(0).dtype, [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    int64_t n = in.numel();
    if (r <= 1) {
      kp = make_kernel([=](const StepContext&) { std::memcpy(y, x, n * sizeof(T)); });
    } else if (m.is_batched_2d()) {
      int64_t B = r == 3 ? mdims[0] : 1, R = mdims[r - 2], C = mdims[r - 1];
      int64_t tr = (R + kTile - 1) / kTile, tc = (C + kTile - 1) / kTile;
      kp = make_kernel([=](const StepContext&) {
        parallel_for(
            B * tr * tc,
            [&](int64_t t) {
              int64_t b = t / (tr * tc), rem = t % (tr * tc);
              transpose_tile(x + b * R * C, y + b * R * C, R, C, (rem / tc) * kTile, (rem % tc) * kTile);
            },
            row_grain(kTile * kTile));
      });
    } else {
      auto m = std::make_shared<StridedMap>();
      std::vector<int64_t> in_strides = row_major_strides(mdims);
      for (int i = 0; i < r; ++i) {
        m->dims.push_back(mdims[mperm[i]]);
        m->strides.push_back(in_strides[mperm[i]]);
      }
      kp = make_kernel([=](const StepContext&) { strided_copy<T, false>(*m, const_cast<T*>(x), y); });
    }
  });
  return kp;
}

KernelPtr concat(const KernelArgs& a) {
  const Shape& os = a.out(0).shape;
  int axis = normalize_axis(a.attrs().i("axis"), os.rank());
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= os[d];
  for (int d = axis + 1; d < os.rank(); ++d) inner *= os[d];
  struct Part {
    const std::byte* src;
    int64_t bytes;   // per outer index
    int64_t offset;  // within an output row, bytes
  };
  auto parts = std::make_shared<std::vector<Part>>();
  size_t es = dtype_bytes(a.out(0).dtype);
  int64_t off = 0;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    int64_t b = a.in(static_cast<int>(i)).shape[axis] * inner * static_cast<int64_t>(es);
    parts->push_back({static_cast<const std::byte*>(a.inputs[i]), b, off});
    off += b;
  }
  int64_t row_bytes = off;
  auto* y = static_cast<std::byte*>(a.outputs[0]);
  int64_t np = static_cast<int64_t>(parts->size());
  return make_kernel([=](const StepContext&) {
    parallel_for(
        outer * np,
        [&](int64_t t) {
          int64_t o = t / np;
          const Part& p = (*parts)[t % np];
          std::memcpy(y + o * row_bytes + p.offset, p.src + o * p.bytes, p.bytes);
        },
        row_grain(row_bytes / static_cast<int64_t>(es) / std::max<int64_t>(np, 1)));
  });
}

// The map from the sliced (dense) tensor into the sliced-from one.
std::shared_ptr<StridedMap> slice_map(const Shape& full, const std::vector<int64_t>& start,
                                      const std::vector<int64_t>& step, const std::vector<int64_t>& count) {
  auto m = std::make_shared<StridedMap>();
  std::vector<int64_t> st = row_major_strides(full.dims());
  for (int d = 0; d < full.rank(); ++d) {
    m->base += start[d] * st[d];
    m->dims.push_back(count[d]);
    m->strides.push_back(step[d] * st[d]);
  }
  return m;
}

KernelPtr slice(const KernelArgs& a) {
  std::array<const Tensor*, 4> consts{};
  std::array<bool, 4> present{};
  for (int k = 0; k < 4; ++k) {
    present[k] = k + 1 < static_cast<int>(a.node.inputs.size()) && a.node.inputs[k + 1] != kNoValue;
    consts[k] = present[k] ? a.graph.initializer(a.node.inputs[k + 1]) : nullptr;
  }
  ops::SliceDims sd;
  std::string err = ops::slice_of_node(a.in(0).shape, a.attrs(), consts, present, &sd);
  TRAINER_ASSERT(err.empty(), "{}", err);
  if (a.in(0).shape.rank() == 1 && sd.step[0] == 1) {
    // A contiguous range of a vector, which the planner may have left where it lies (a view at an offset).
    const auto* x = static_cast<const std::byte*>(a.inputs[0]) + sd.start[0] * dtype_bytes(a.in(0).dtype);
    void* y = a.outputs[0];
    const size_t bytes = a.out(0).nbytes();
    return make_kernel([=](const StepContext&) {
      if (x != y) std::memcpy(y, x, bytes);
    });
  }
  auto m = slice_map(a.in(0).shape, sd.start, sd.step, sd.count);
  KernelPtr kp;
  dispatch_bytes(a.in(0).dtype, [&]<class T>() {
    T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    kp = make_kernel([=](const StepContext&) { strided_copy<T, false>(*m, x, y); });
  });
  return kp;
}

// Pad and PadGrad: the index math of engine/kernels/pad.h, one element per output (Pad) or per input element
// (PadGrad, which sums the outputs that read it, in the same order as the CUDA kernel).
KernelPtr pad(const KernelArgs& a) {
  kernels::PadGeom g;
  if (!ops::pad_node_geom(a.graph, a.node, &g)) return nullptr;
  const kernels::PadMode mode = ops::pad_mode(a.attrs().s("mode"));
  KernelPtr kp;
  dispatch_numeric(a.in(0).dtype, "Pad", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    const T* value = a.has_input(2) ? a.in_ptr<T>(2) : nullptr;
    T* y = a.out_ptr<T>(0);
    const int64_t n = a.out(0).shape.numel();
    kp = make_kernel([=](const StepContext&) {
      const T v = value ? *value : T(0);
      parallel_for(n, [&](int64_t i) { y[i] = kernels::pad_element(mode, g, x, v, i); });
    });
  });
  return kp;
}

KernelPtr pad_grad(const KernelArgs& a) {
  const kernels::PadGeom g = ops::pad_geom(a.out(0).shape, a.in(0).shape, a.attrs().ints("pads"));
  const kernels::PadMode mode = ops::pad_mode(a.attrs().s("mode"));
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "PadGrad", [&]<class T>() {
    const T* dy = a.in_ptr<T>(0);
    T* dx = a.out_ptr<T>(0);
    const int64_t n = a.out(0).shape.numel();
    kp = make_kernel([=](const StepContext&) {
      parallel_for(n, [&](int64_t i) { dx[i] = kernels::pad_grad_element(mode, g, dy, i); });
    });
  });
  return kp;
}

KernelPtr slice_grad(const KernelArgs& a) {
  auto m = slice_map(a.out(0).shape, a.attrs().ints("starts"), a.attrs().ints("steps"), a.in(0).shape.dims());
  KernelPtr kp;
  dispatch_bytes(a.in(0).dtype, [&]<class T>() {
    T* dy = a.in_ptr<T>(0);
    T* dx = a.out_ptr<T>(0);
    size_t bytes = a.out(0).nbytes();
    kp = make_kernel([=](const StepContext&) {
      parallel_zero(dx, bytes);
      strided_copy<T, true>(*m, dx, dy);
    });
  });
  return kp;
}

// Gather as [outer, N, inner] indexed along N by K indices.
struct GatherGeom {
  int64_t outer = 1, n = 1, inner = 1, k = 1;
};
GatherGeom gather_geom(const Shape& data, int axis, const Shape& indices) {
  GatherGeom g;
  for (int d = 0; d < axis; ++d) g.outer *= data[d];
  g.n = data[axis];
  for (int d = axis + 1; d < data.rank(); ++d) g.inner *= data[d];
  g.k = indices.numel();
  return g;
}

// Out-of-range indices are user data errors; checked serially before the parallel part, which must not throw.
template <class I>
void check_indices(const I* idx, int64_t k, int64_t n, const std::string* node_name) {
  for (int64_t i = 0; i < k; ++i)
    if (idx[i] < -n || idx[i] >= n)
      throw InputError(*node_name,
                       fmt::format("index {} (at position {}) is out of range for a dim of size {}",
                                   static_cast<int64_t>(idx[i]), i, n),
                       "check the indices fed to this node");
}

template <class F>
void dispatch_index(DType t, F&& f) {
  if (t == DType::i64)
    f.template operator()<int64_t>();
  else
    f.template operator()<int32_t>();
}

KernelPtr gather(const KernelArgs& a) {
  int axis = normalize_axis(a.attrs().i("axis"), a.in(0).shape.rank());
  GatherGeom g = gather_geom(a.in(0).shape, axis, a.in(1).shape);
  auto name = std::make_shared<std::string>(a.node.name);
  KernelPtr kp;
  dispatch_bytes(a.in(0).dtype, [&]<class T>() {
    dispatch_index(a.in(1).dtype, [&]<class I>() {
      const T* x = a.in_ptr<T>(0);
      const I* idx = a.in_ptr<I>(1);
      T* y = a.out_ptr<T>(0);
      kp = make_kernel([=](const StepContext&) {
        check_indices(idx, g.k, g.n, name.get());
        parallel_for(
            g.outer * g.k,
            [&](int64_t t) {
              int64_t o = t / g.k, i = idx[t % g.k];
              if (i < 0) i += g.n;
              std::memcpy(y + t * g.inner, x + (o * g.n + i) * g.inner, g.inner * sizeof(T));
            },
            row_grain(g.inner));
      });
    });
  });
  return kp;
}

// Scatter-add in index order. Work items are (outer index, column block); each owns its output columns across
// all indices, so repeated indices are summed in the same order whatever the thread count.
KernelPtr gather_grad(const KernelArgs& a) {
  Shape data(a.attrs().ints("shape"));
  int axis = normalize_axis(a.attrs().i("axis"), data.rank());
  GatherGeom g = gather_geom(data, axis, a.in(1).shape);
  auto name = std::make_shared<std::string>(a.node.name);
  constexpr int64_t kCols = 256;
  int64_t blocks = (g.inner + kCols - 1) / kCols;
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "GatherGrad", [&]<class T>() {
    dispatch_index(a.in(1).dtype, [&]<class I>() {
      const T* dy = a.in_ptr<T>(0);
      const I* idx = a.in_ptr<I>(1);
      T* dx = a.out_ptr<T>(0);
      size_t bytes = a.out(0).nbytes();
      kp = make_kernel([=](const StepContext&) {
        check_indices(idx, g.k, g.n, name.get());
        parallel_zero(dx, bytes);
        parallel_for(
            g.outer * blocks,
            [&](int64_t t) {
              int64_t o = t / blocks, c0 = (t % blocks) * kCols, c1 = std::min(c0 + kCols, g.inner);
              for (int64_t k = 0; k < g.k; ++k) {
                int64_t i = idx[k];
                if (i < 0) i += g.n;
                T* d = dx + (o * g.n + i) * g.inner;
                const T* s = dy + (o * g.k + k) * g.inner;
                for (int64_t c = c0; c < c1; ++c) d[c] += s[c];
              }
            },
            std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.k * std::min(kCols, g.inner), 1)));
      });
    });
  });
  return kp;
}

// Shape: the dims are known at prepare time; each step writes them (the output buffer may be reused between
// steps).
KernelPtr shape_of(const KernelArgs& a) {
  const Shape& in = a.in(0).shape;
  int r = in.rank();
  auto clamp_dim = [r](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + r : v, 0, r); };
  int64_t b = clamp_dim(a.attrs().i("start")), e = clamp_dim(a.attrs().i_or("end", r));
  auto dims =
      std::make_shared<std::vector<int64_t>>(in.dims().begin() + b, in.dims().begin() + std::max(b, e));
  int64_t* y = a.out_ptr<int64_t>(0);
  return make_kernel([=](const StepContext&) { std::copy(dims->begin(), dims->end(), y); });
}

}  // namespace

void register_shape_cpu_kernels(KernelRegistry& r) {
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
  r.add("Shape", shape_of);
}

}  // namespace trainer::engine::cpu
