// CPU kernels of op family 'matmul'. Every op here is one batched product y = act(alpha * op(A)·op(B) + beta
// * C): f32 and bf16 run one oneDNN matmul primitive (transposes as strides, batch broadcasting, bias and
// activation as post-ops; bf16 accumulates in f32), f64 runs plain loops (for the gradient checks).
#include <algorithm>
#include <cstring>
#include <optional>
#include <type_traits>

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/dnnl_util.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/backend/cpu/vec_math.h"
#include "engine/ir/tensor.h"
#include "engine/kernels/functors.h"

namespace trainer::engine::cpu {

namespace k = trainer::engine::kernels;

namespace {

enum class Act { none, relu, gelu, gelu_tanh };

Act parse_act(const std::string& s) {
  if (s == "relu") return Act::relu;
  if (s == "gelu") return Act::gelu;
  if (s == "gelu_tanh") return Act::gelu_tanh;
  return Act::none;
}

template <class T>
T apply_act(Act a, T z) {
  switch (a) {
    case Act::none:
      return z;
    case Act::relu:
      return k::ReluOp{}(z);
    case Act::gelu:
    case Act::gelu_tanh:
      // f32 through vec_math's erf_f and tanh_f (as the Gelu kernel), f64 through libm.
      if constexpr (std::is_same_v<T, float>) return gelu_f(z, a == Act::gelu_tanh);
      return k::GeluOp{a == Act::gelu_tanh}(z);
  }
  return z;
}

// Where each operand of a batched product lives: op(A) is m x k, op(B) is k x n, y is [batch..., m, n]
// row-major.
struct GemmLayout {
  std::vector<int64_t> batch;  // y's batch dims
  std::vector<int64_t> a_dims,
      b_dims;  // the operands' batch dims, right-aligned to `batch` (1 where broadcast)
  std::vector<int64_t> a_off, b_off;  // per flat batch index: element offset of its A and B matrix
  int64_t m = 0, n = 0, kk = 0;
  int64_t a_rs = 0, a_cs = 0;  // element strides of op(A)'s rows (m) and columns (k)
  int64_t b_rs = 0, b_cs = 0;  // element strides of op(B)'s rows (k) and columns (n)
  int64_t batch_count() const { return static_cast<int64_t>(a_off.size()); }
};

// numpy promotion of 1-D operands: a [K] is [1, K], b [K] is [K, 1]; y's memory is the same either way.
GemmLayout gemm_layout(Shape a, Shape b, bool ta, bool tb) {
  if (a.rank() == 1) a = Shape{1, a[0]};
  if (b.rank() == 1) b = Shape{b[0], 1};
  GemmLayout L;
  int ra = a.rank(), rb = b.rank();
  int64_t a_r = a[ra - 2], a_c = a[ra - 1], b_r = b[rb - 2], b_c = b[rb - 1];
  L.m = ta ? a_c : a_r;
  L.kk = ta ? a_r : a_c;
  L.n = tb ? b_r : b_c;
  L.a_rs = ta ? 1 : a_c;
  L.a_cs = ta ? a_c : 1;
  L.b_rs = tb ? 1 : b_c;
  L.b_cs = tb ? b_c : 1;
  Shape ba(std::vector<int64_t>(a.dims().begin(), a.dims().end() - 2));
  Shape bb(std::vector<int64_t>(b.dims().begin(), b.dims().end() - 2));
  Shape batch;
  TRAINER_ASSERT(broadcast_shapes(ba, bb, &batch), "batch dims {} and {}", ba.str(), bb.str());
  L.batch = batch.dims();
  int r = batch.rank();
  L.a_dims.assign(r, 1);
  L.b_dims.assign(r, 1);
  for (int i = 0; i < ba.rank(); ++i) L.a_dims[r - ba.rank() + i] = ba[i];
  for (int i = 0; i < bb.rank(); ++i) L.b_dims[r - bb.rank() + i] = bb[i];
  std::vector<int64_t> sa = broadcast_strides(ba, batch), sb = broadcast_strides(bb, batch);
  int64_t count = batch.numel();
  L.a_off.resize(count);
  L.b_off.resize(count);
  for (int64_t f = 0; f < count; ++f) {
    int64_t rest = f, oa = 0, ob = 0;
    for (int i = r - 1; i >= 0; --i) {
      int64_t idx = rest % L.batch[i];
      rest /= L.batch[i];
      oa += idx * sa[i];
      ob += idx * sb[i];
    }
    L.a_off[f] = oa * a_r * a_c;
    L.b_off[f] = ob * b_r * b_c;
  }
  return L;
}

// The epilogue: y = act(alpha * acc + beta * C), C broadcast to [m, n] (element (i, j) at i*c_rs + j*c_cs);
// z, when set, receives the pre-activation.
struct Epilogue {
  float alpha = 1.0f;
  float beta = 0.0f;
  const void* c = nullptr;
  Shape c_shape;  // rank <= 2, broadcastable to [m, n]
  int64_t c_rs = 0, c_cs = 0;
  Act act = Act::none;
  void* z = nullptr;
};

void set_c(Epilogue* e, const void* c, const Shape& s, int64_t m, int64_t n, float beta) {
  e->c = c;
  e->c_shape = s;
  e->beta = beta;
  std::vector<int64_t> st = broadcast_strides(s, Shape{m, n});
  e->c_rs = st[0];
  e->c_cs = st[1];
}

template <class T>
KernelPtr gemm_loops(const GemmLayout& layout, const Epilogue& e, const T* a, const T* b, T* y) {
  auto L = std::make_shared<GemmLayout>(layout);
  const T* c = static_cast<const T*>(e.c);
  T* z = static_cast<T*>(e.z);
  T alpha = e.alpha, beta = e.beta;
  int64_t c_rs = e.c_rs, c_cs = e.c_cs;
  Act act = e.act;
  return make_kernel([=](const StepContext&) {
    int64_t m = L->m, n = L->n, kk = L->kk;
    int64_t rows = L->batch_count() * m;
    // One output row per iteration: each element is summed by one thread in a fixed order.
    parallel_for(
        rows,
        [&](int64_t r) {
          int64_t bi = r / m, i = r % m;
          const T* pa = a + L->a_off[bi] + i * L->a_rs;
          const T* pb = b + L->b_off[bi];
          T* py = y + r * n;
          for (int64_t j = 0; j < n; ++j) {
            T acc = 0;
            for (int64_t p = 0; p < kk; ++p) acc += pa[p * L->a_cs] * pb[p * L->b_rs + j * L->b_cs];
            T v = alpha * acc;
            if (c) v += beta * c[i * c_rs + j * c_cs];
            if (z) z[r * n + j] = v;
            py[j] = apply_act(act, v);
          }
        },
        std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, n * kk)));
  });
}

dnnl::algorithm dnnl_act(Act a) {
  switch (a) {
    case Act::relu:
      return dnnl::algorithm::eltwise_relu;
    case Act::gelu:
      return dnnl::algorithm::eltwise_gelu_erf;
    case Act::gelu_tanh:
      return dnnl::algorithm::eltwise_gelu_tanh;
    default:
      return dnnl::algorithm::undef;
  }
}

// Copies C, broadcast to [m, n], into y (elements of type E, bit copies).
template <class E>
void fill_c(const void* cv, void* yv, int64_t m, int64_t n, int64_t rs, int64_t cs) {
  const E* c = static_cast<const E*>(cv);
  E* y = static_cast<E*>(yv);
  parallel_for(
      m,
      [&](int64_t i) {
        for (int64_t j = 0; j < n; ++j) y[i * n + j] = c[i * rs + j * cs];
      },
      std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, n)));
}

// State of an f32 or bf16 GEMM: the matmul, an optional eltwise for y = act(z) when z is kept, and C's
// broadcast pre-fill.
struct DnnlGemm {
  DnnlCall matmul;
  DnnlCall act;
  const void* c = nullptr;  // pre-fill y with C (then a sum post-op scales it by beta)
  void* y = nullptr;
  bool bf16 = false;
  int64_t m = 0, n = 0, c_rs = 0, c_cs = 0;
};

// The product in oneDNN, all operands of type t (f32 or bf16; oneDNN accumulates bf16 in f32 and applies
// alpha, C and the activation to the f32 sum before rounding).
KernelPtr gemm_dnnl(const GemmLayout& L, const Epilogue& e, DType t, const std::string& node, const void* a,
                    const void* b, void* y) {
  using dnnl::memory;
  const int r = static_cast<int>(L.batch.size()) + 2;
  auto operand = [&](const std::vector<int64_t>& bdims, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                     int64_t mat) {
    std::vector<int64_t> dims = bdims, strides(r - 2);
    int64_t acc = mat;
    for (int i = r - 3; i >= 0; --i) {
      strides[i] = acc;
      acc *= bdims[i];
    }
    dims.push_back(rows);
    dims.push_back(cols);
    strides.push_back(rs);
    strides.push_back(cs);
    return dnnl_strided_md(dims, strides, t);
  };
  memory::desc a_md = operand(L.a_dims, L.m, L.kk, L.a_rs, L.a_cs, L.m * L.kk);
  memory::desc b_md = operand(L.b_dims, L.kk, L.n, L.b_rs, L.b_cs, L.kk * L.n);
  std::vector<int64_t> y_dims = L.batch;
  y_dims.push_back(L.m);
  y_dims.push_back(L.n);
  memory::desc y_md = dnnl_plain_md(y_dims, t);

  auto st = std::make_shared<DnnlGemm>();
  st->bf16 = t == DType::bf16;
  // Small products (the last layers of a classifier) run on the calling thread.
  const bool serial = L.batch_count() * L.m * L.n * L.kk <= kSerialGemmMacs;
  std::optional<SerialScope> one;
  if (serial) one.emplace();
  dnnl::primitive_attr attr = dnnl_attr();
  dnnl::post_ops po;
  bool keep_z = e.z != nullptr;
  bool has_c = e.c != nullptr && e.beta != 0.0f;
  // A row of n as oneDNN's bias; any other C (a column, a matrix, a scalar) would make oneDNN pick its slow
  // reference matmul, so it is pre-filled into y and summed instead.
  bool c_as_bias = has_c && e.alpha == 1.0f && e.beta == 1.0f && e.c_rs == 0 && e.c_cs != 0;
  if (e.alpha != 1.0f) attr.set_output_scales(0, {e.alpha});
  if (has_c && !c_as_bias) {
    po.append_sum(e.beta);
    st->c = e.c;
    st->y = keep_z ? e.z : y;
    st->m = L.m;
    st->n = L.n;
    st->c_rs = e.c_rs;
    st->c_cs = e.c_cs;
  }
  if (!keep_z && e.act != Act::none) po.append_eltwise(1.0f, dnnl_act(e.act), 0.0f, 0.0f);
  attr.set_post_ops(po);

  void* mm_out = keep_z ? e.z : y;
  std::vector<std::pair<int, memory>> args = {{DNNL_ARG_SRC, dnnl_mem(a_md, a)},
                                              {DNNL_ARG_WEIGHTS, dnnl_mem(b_md, b)},
                                              {DNNL_ARG_DST, dnnl_mem(y_md, mm_out)}};
  dnnl::matmul::primitive_desc pd;
  if (c_as_bias) {
    // C as a bias [1..., 1, n] broadcast over [batch..., m, n]: rank matched with leading ones.
    std::vector<int64_t> cd(r, 1), cs(r, L.n);
    cd[r - 1] = L.n;
    cs[r - 1] = 1;
    memory::desc c_md = dnnl_strided_md(cd, cs, t);
    pd = dnnl_make_pd(t, node, [&] {
      return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md, y_md), attr,
                                          dnnl_cpu_engine());
    });
    args.emplace_back(DNNL_ARG_BIAS, dnnl_mem(c_md, e.c));
  } else {
    pd = dnnl_make_pd(t, node, [&] {
      return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, y_md), attr, dnnl_cpu_engine());
    });
  }
  st->matmul = DnnlCall(dnnl::matmul(pd), pd, std::move(args), serial);
  if (keep_z) {
    memory::desc flat = dnnl_plain_md({L.batch_count() * L.m * L.n}, t);
    if (e.act == Act::none) {
      // y = z: a copy through a linear eltwise keeps the run path one primitive call.
      auto ep = dnnl_make_pd(t, node, [&] {
        return dnnl::eltwise_forward::primitive_desc(
            dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_linear,
                                        flat, 1.0f, 0.0f),
            dnnl_attr(), dnnl_cpu_engine());
      });
      st->act = DnnlCall(dnnl::eltwise_forward(ep), ep,
                         {{DNNL_ARG_SRC, dnnl_mem(flat, e.z)}, {DNNL_ARG_DST, dnnl_mem(flat, y)}}, serial);
    } else {
      auto ep = dnnl_make_pd(t, node, [&] {
        return dnnl::eltwise_forward::primitive_desc(
            dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference, dnnl_act(e.act), flat, 0.0f,
                                        0.0f),
            dnnl_attr(), dnnl_cpu_engine());
      });
      st->act = DnnlCall(dnnl::eltwise_forward(ep), ep,
                         {{DNNL_ARG_SRC, dnnl_mem(flat, e.z)}, {DNNL_ARG_DST, dnnl_mem(flat, y)}}, serial);
    }
  }
  return make_kernel([st](const StepContext&) {
    if (st->c) {
      if (st->bf16)
        fill_c<uint16_t>(st->c, st->y, st->m, st->n, st->c_rs, st->c_cs);
      else
        fill_c<float>(st->c, st->y, st->m, st->n, st->c_rs, st->c_cs);
    }
    st->matmul();
    if (st->act) st->act();
  });
}

// bf16 with an empty inner dimension: no product, y = act(beta * C) (or act(0)), computed in f32.
KernelPtr gemm_empty_bf16(const GemmLayout& L, const Epilogue& e, uint16_t* y) {
  auto c = static_cast<const uint16_t*>(e.c);
  auto z = static_cast<uint16_t*>(e.z);
  int64_t rows = L.batch_count() * L.m, m = L.m, n = L.n, c_rs = e.c_rs, c_cs = e.c_cs;
  float beta = e.beta;
  Act act = e.act;
  return make_kernel([=](const StepContext&) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) {
        float v = c ? beta * bf16_to_f32(c[(r % m) * c_rs + j * c_cs]) : 0.0f;
        if (z) z[r * n + j] = f32_to_bf16(v);
        y[r * n + j] = f32_to_bf16(apply_act(act, v));
      }
  });
}

// Builds the kernel of one product for any dtype.
KernelPtr gemm_kernel(const KernelArgs& a, const GemmLayout& L, const Epilogue& e) {
  int64_t total = L.batch_count() * L.m * L.n;
  if (total == 0) return make_kernel([](const StepContext&) {});
  if (a.in(0).dtype == DType::bf16) {
    // Always oneDNN: bf16 has no arithmetic type of its own for the loops.
    if (L.kk == 0) return gemm_empty_bf16(L, e, a.out_ptr<uint16_t>(0));
    return gemm_dnnl(L, e, DType::bf16, a.node.name, a.inputs[0], a.inputs[1], a.outputs[0]);
  }
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
    if constexpr (std::is_same_v<T, float>) {
      if (L.kk > 0) {
        kp = gemm_dnnl(L, e, DType::f32, a.node.name, a.inputs[0], a.inputs[1], a.outputs[0]);
        return;
      }
    }
    kp = gemm_loops<T>(L, e, a.in_ptr<T>(0), a.in_ptr<T>(1), a.out_ptr<T>(0));
  });
  return kp;
}

KernelPtr matmul(const KernelArgs& a) {
  return gemm_kernel(a, gemm_layout(a.in(0).shape, a.in(1).shape, false, false), Epilogue{});
}

KernelPtr matmul_transposed(const KernelArgs& a) {
  Epilogue e;
  e.alpha = a.attrs().f("alpha");
  return gemm_kernel(
      a, gemm_layout(a.in(0).shape, a.in(1).shape, a.attrs().i("transA") != 0, a.attrs().i("transB") != 0),
      e);
}

KernelPtr gemm(const KernelArgs& a) {
  GemmLayout L =
      gemm_layout(a.in(0).shape, a.in(1).shape, a.attrs().i("transA") != 0, a.attrs().i("transB") != 0);
  Epilogue e;
  e.alpha = a.attrs().f("alpha");
  if (a.has_input(2)) set_c(&e, a.inputs[2], a.in(2).shape, L.m, L.n, a.attrs().f("beta"));
  return gemm_kernel(a, L, e);
}

KernelPtr fused_gemm(const KernelArgs& a) {
  const Shape& sa = a.in(0).shape;
  bool ta = a.attrs().i("transA") != 0;
  // Leading batch dims of A fold into rows: B and the bias are shared by all of them.
  Shape a2 = ta ? sa : Shape{sa.numel() / sa[sa.rank() - 1], sa[sa.rank() - 1]};
  GemmLayout L = gemm_layout(a2, a.in(1).shape, ta, a.attrs().i("transB") != 0);
  Epilogue e;
  e.act = parse_act(a.attrs().s("activation"));
  if (a.has_input(2)) set_c(&e, a.inputs[2], Shape{1, L.n}, L.m, L.n, 1.0f);
  if (a.has_output(1)) e.z = a.outputs[1];
  return gemm_kernel(a, L, e);
}

// dW by the GEMM path every product takes (oneDNN for f32 and bf16), then dB as column sums of dZ in fixed
// per-column order (double accumulators), so the result is the same for any thread count.
KernelPtr gemm_grad_weight_bias(const KernelArgs& a) {
  const bool tb = a.attrs().i("transB") != 0;
  const Shape &sa = a.in(0).shape, &sd = a.in(1).shape;
  KernelArgs w = a;
  w.outputs = {a.outputs[0]};
  if (tb) w.inputs = {a.inputs[1], a.inputs[0]};
  std::shared_ptr<CpuKernel> weight =
      gemm_kernel(w, tb ? gemm_layout(sd, sa, true, false) : gemm_layout(sa, sd, true, false), Epilogue{});
  const int64_t m = sd[0], n = sd[1];
  const DType t = a.in(0).dtype;
  const void* dz = a.inputs[1];
  void* db = a.outputs[1];
  if (t != DType::f32 && t != DType::f64 && t != DType::bf16)
    throw InputError(a.node.name, fmt::format("GemmGradWeightBias on the CPU takes f32, f64 or bf16, not {}",
                                              dtype_name(t)));
  return make_kernel([weight, m, n, t, dz, db](const StepContext& ctx) {
    weight->run(ctx);
    parallel_for(n, [&](int64_t j) {
      double s = 0;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t k = i * n + j;
        s += t == DType::f32   ? static_cast<const float*>(dz)[k]
             : t == DType::f64 ? static_cast<const double*>(dz)[k]
                               : bf16_to_f32(static_cast<const uint16_t*>(dz)[k]);
      }
      if (t == DType::f32)
        static_cast<float*>(db)[j] = static_cast<float>(s);
      else if (t == DType::f64)
        static_cast<double*>(db)[j] = s;
      else
        static_cast<uint16_t*>(db)[j] = f32_to_bf16(static_cast<float>(s));
    });
  });
}

}  // namespace

void register_matmul_cpu_kernels(KernelRegistry& r) {
  r.add("GemmGradWeightBias", gemm_grad_weight_bias);
  r.add("MatMul", matmul);
  r.add("MatMulTransposed", matmul_transposed);
  r.add("Gemm", gemm);
  r.add("FusedGemm", fused_gemm);
}

}  // namespace trainer::engine::cpu
