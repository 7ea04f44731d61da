// CUDA kernels of op family 'matmul' through cuBLASLt: MatMul, MatMulTransposed, Gemm and FusedGemm, each one
// strided-batched product (a few for batch broadcasts one stride cannot express). The algorithm is chosen
// once per shape at prepare time; launch() only calls cublasLtMatmul (and, for FusedGemm's GELU, one
// elementwise kernel).
#include <cublasLt.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/backend/cuda/dynload.h"
#include "engine/backend/cuda/launch_blas.h"

namespace trainer::engine::cuda {

namespace {

[[noreturn]] void lt_failed(cublasStatus_t s, const char* call, const char* file, int line) {
  throw RuntimeError(fmt::format("cuBLASLt error {} in {} at {}:{}", static_cast<int>(s), call, file, line));
}
#define BLAS_LT_CHECK(call)                                                           \
  do {                                                                                \
    cublasStatus_t blas_lt_status_ = (call);                                          \
    if (blas_lt_status_ != CUBLAS_STATUS_SUCCESS)                                     \
      ::trainer::engine::cuda::lt_failed(blas_lt_status_, #call, __FILE__, __LINE__); \
  } while (0)

// Where each batch's matrices live for y = op(A) · op(B) with numpy broadcasting of the batch dims (as the
// CPU's kernels_matmul.cpp lays them out): op(A) is m x k, op(B) k x n, y [batch..., m, n] row-major.
struct BatchLayout {
  int64_t m = 0, n = 0, k = 0;
  std::vector<int64_t> batch;         // y's batch dims
  std::vector<int64_t> a_off, b_off;  // per flat batch index: element offset of its A and B matrix
};

BatchLayout batch_layout(Shape a, Shape b, bool ta, bool tb) {
  if (a.rank() == 1) a = Shape{1, a[0]};
  if (b.rank() == 1) b = Shape{b[0], 1};
  BatchLayout L;
  const int ra = a.rank(), rb = b.rank();
  const int64_t a_r = a[ra - 2], a_c = a[ra - 1], b_r = b[rb - 2], b_c = b[rb - 1];
  L.m = ta ? a_c : a_r;
  L.k = ta ? a_r : a_c;
  L.n = tb ? b_r : b_c;
  Shape ba(std::vector<int64_t>(a.dims().begin(), a.dims().end() - 2));
  Shape bb(std::vector<int64_t>(b.dims().begin(), b.dims().end() - 2));
  Shape batch;
  TRAINER_ASSERT(broadcast_shapes(ba, bb, &batch), "batch dims {} and {}", ba.str(), bb.str());
  L.batch = batch.dims();
  const int r = batch.rank();
  const std::vector<int64_t> sa = broadcast_strides(ba, batch), sb = broadcast_strides(bb, batch);
  const int64_t count = batch.numel();
  L.a_off.resize(count);
  L.b_off.resize(count);
  for (int64_t f = 0; f < count; ++f) {
    int64_t rest = f, oa = 0, ob = 0;
    for (int i = r - 1; i >= 0; --i) {
      const int64_t idx = rest % L.batch[i];
      rest /= L.batch[i];
      oa += idx * sa[i];
      ob += idx * sb[i];
    }
    L.a_off[f] = oa * a_r * a_c;
    L.b_off[f] = ob * b_r * b_c;
  }
  return L;
}

// One product as cuBLASLt calls: each call multiplies `batch` matrix pairs whose first pair sits at the
// call's element offsets and whose next ones follow at a_stride / b_stride (0: one matrix shared by the whole
// call).
struct Product {
  DType dtype = DType::f32;
  int64_t m = 0, n = 0, k = 0;  // m counts the rows of all folded batches
  bool ta = false, tb = false;
  int batch = 1;
  int64_t a_stride = 0, b_stride = 0;
  struct Call {
    int64_t a = 0, b = 0, y = 0;
  };
  std::vector<Call> calls;
  double alpha = 1.0, beta = 0.0;
  const void* c = nullptr;     // beta * C, C a full [m, n] matrix (only with batch 1 and one call)
  const void* bias = nullptr;  // added to every row of y: n values
  bool relu = false;           // relu in the epilogue, after the bias
};

// Splits a batched layout into calls. A 2-D B shared by contiguous, untransposed A matrices folds the batch
// into A's rows: one plain GEMM, which is what a linear layer over [batch, seq, features] is.
bool plan_calls(const BatchLayout& L, bool ta, bool tb, Product* p) {
  const int64_t count = static_cast<int64_t>(L.a_off.size());
  p->m = L.m;
  p->n = L.n;
  p->k = L.k;
  p->ta = ta;
  p->tb = tb;
  bool fold = !ta && count > 1;
  for (int64_t f = 0; fold && f < count; ++f) fold = L.b_off[f] == 0 && L.a_off[f] == f * L.m * L.k;
  if (count == 1 || fold) {
    p->m = L.m * count;
    p->batch = 1;
    p->calls = {{L.a_off[0], L.b_off[0], 0}};
    return true;
  }
  // One strided call when both operands' offsets step evenly over the whole batch; else one call per run of
  // the last batch dim (within a run only the last index moves, so the offsets step evenly); else one per
  // matrix.
  std::vector<int64_t> runs = {count};
  if (!L.batch.empty()) runs.push_back(L.batch.back());
  runs.push_back(1);
  for (int64_t len : runs) {
    if (len < 1 || count % len != 0 || len > INT32_MAX) continue;
    const int64_t sa = len > 1 ? L.a_off[1] - L.a_off[0] : 0, sb = len > 1 ? L.b_off[1] - L.b_off[0] : 0;
    if (sa < 0 || sb < 0) continue;
    bool even = true;
    for (int64_t f = 0; even && f < count; ++f) {
      const int64_t base = f / len * len, i = f % len;
      even = L.a_off[f] == L.a_off[base] + i * sa && L.b_off[f] == L.b_off[base] + i * sb;
    }
    if (!even) continue;
    p->batch = static_cast<int>(len);
    p->a_stride = sa;
    p->b_stride = sb;
    p->calls.clear();
    for (int64_t base = 0; base < count; base += len)
      p->calls.push_back({L.a_off[base], L.b_off[base], base * L.m * L.n});
    return true;
  }
  return false;
}

// The largest power of two (at most 256) dividing every address: cuBLASLt's heuristic assumes 256-byte
// aligned operands unless told otherwise, and an offset matrix inside a batch may be less aligned than its
// buffer.
uint32_t alignment_of(const std::vector<uintptr_t>& addresses) {
  uintptr_t bits = 256;
  for (uintptr_t a : addresses) bits |= a;
  return static_cast<uint32_t>(bits & (~bits + 1));
}

// Heuristic results per shape, shared by every node and backend of the process: the same layer repeated (a
// transformer's blocks) asks once.
struct AlgoCache {
  std::mutex mu;
  std::map<std::string, cublasLtMatmulAlgo_t> found;
};
AlgoCache& algo_cache() {
  static AlgoCache c;
  return c;
}

// The cuBLASLt state of one product: descriptors, layouts and algorithm, made at prepare time.
class LtProduct {
 public:
  LtProduct() = default;
  LtProduct(const LtProduct&) = delete;
  LtProduct& operator=(const LtProduct&) = delete;
  ~LtProduct() {
    const lib::CublasLt& lt = lib::cublaslt();
    for (cublasLtMatrixLayout_t l : {lay_a_, lay_b_, lay_c_, lay_d_})
      if (l) lt.cublasLtMatrixLayoutDestroy(l);
    if (desc_) lt.cublasLtMatmulDescDestroy(desc_);
  }

  // Builds everything; false when cuBLASLt has no algorithm for the case (the node then runs on the host).
  bool init(const Product& p, const void* a, const void* b, void* y, CudaLibs* libs);

  void run(cudaStream_t stream) const {
    const lib::CublasLt& lt = lib::cublaslt();
    const void* alpha = f64_ ? static_cast<const void*>(&alpha_d_) : static_cast<const void*>(&alpha_f_);
    const void* beta = f64_ ? static_cast<const void*>(&beta_d_) : static_cast<const void*>(&beta_f_);
    for (const Ptrs& c : calls_)
      BLAS_LT_CHECK(lt.cublasLtMatmul(handle_, desc_, alpha, c.a, lay_a_, c.b, lay_b_, beta, c.c, lay_c_, c.d,
                                      lay_d_, &algo_, workspace_, workspace_bytes_, stream));
  }

 private:
  struct Ptrs {
    const void* a;  // cuBLASLt's A: our B
    const void* b;  // cuBLASLt's B: our A
    const void* c;
    void* d;
  };
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t lay_a_ = nullptr, lay_b_ = nullptr, lay_c_ = nullptr, lay_d_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
  std::vector<Ptrs> calls_;
  bool f64_ = false;
  float alpha_f_ = 1, beta_f_ = 0;
  double alpha_d_ = 1, beta_d_ = 0;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

// Row-major y = op(A) · op(B) is column-major y^T = op(B)^T · op(A)^T: cuBLASLt (column-major) gets our B as
// its A and our A as its B, and M = n, N = m. A row-major [r, c] matrix is a column-major c x r one with ld =
// c.
bool LtProduct::init(const Product& p, const void* a, const void* b, void* y, CudaLibs* libs) {
  const lib::CublasLt& lt = lib::cublaslt();
  f64_ = p.dtype == DType::f64;
  // bf16 and fp16 operands (mixed precision, engine/plan/precision.h) multiply on the tensor cores with fp32
  // accumulation and fp32 alpha/beta.
  const bool half = p.dtype == DType::bf16 || p.dtype == DType::f16;
  const cudaDataType dt = f64_                     ? CUDA_R_64F
                          : p.dtype == DType::bf16 ? CUDA_R_16BF
                          : p.dtype == DType::f16  ? CUDA_R_16F
                                                   : CUDA_R_32F;
  const size_t es = f64_ ? 8 : half ? 2 : 4;
  const cublasComputeType_t compute =
      f64_ ? CUBLAS_COMPUTE_64F
           : (libs->allow_tf32 && !half ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
  const cudaDataType scale_type = f64_ ? CUDA_R_64F : CUDA_R_32F;
  alpha_f_ = static_cast<float>(p.alpha);
  beta_f_ = static_cast<float>(p.beta);
  alpha_d_ = p.alpha;
  beta_d_ = p.beta;
  handle_ = libs->cublaslt;
  workspace_ = libs->workspace;
  workspace_bytes_ = libs->workspace_bytes;

  if (lt.cublasLtMatmulDescCreate(&desc_, compute, scale_type) != CUBLAS_STATUS_SUCCESS) return false;
  const int32_t op_a = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  if (p.bias)
    epilogue = p.relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  else if (p.relu)
    epilogue = CUBLASLT_EPILOGUE_RELU;
  bool ok = lt.cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)) ==
                CUBLAS_STATUS_SUCCESS &&
            lt.cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)) ==
                CUBLAS_STATUS_SUCCESS &&
            lt.cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                              sizeof(epilogue)) == CUBLAS_STATUS_SUCCESS;
  if (ok && p.bias)
    ok = lt.cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                           sizeof(p.bias)) == CUBLAS_STATUS_SUCCESS;
  if (!ok) return false;

  auto layout = [&](cublasLtMatrixLayout_t* l, int64_t rows, int64_t cols, int64_t ld, int64_t stride) {
    if (lt.cublasLtMatrixLayoutCreate(l, dt, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld) !=
        CUBLAS_STATUS_SUCCESS)
      return false;
    if (p.batch == 1) return true;
    const int32_t count = p.batch;
    return lt.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                               sizeof(count)) == CUBLAS_STATUS_SUCCESS &&
           lt.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                               sizeof(stride)) == CUBLAS_STATUS_SUCCESS;
  };
  // Our B, row-major [k, n] (or [n, k] transposed), is cuBLASLt's A; our A, [m, k] (or [k, m]), its B.
  ok = (p.tb ? layout(&lay_a_, p.k, p.n, p.k, p.b_stride) : layout(&lay_a_, p.n, p.k, p.n, p.b_stride)) &&
       (p.ta ? layout(&lay_b_, p.m, p.k, p.m, p.a_stride) : layout(&lay_b_, p.k, p.m, p.k, p.a_stride)) &&
       layout(&lay_c_, p.n, p.m, p.n, p.m * p.n) && layout(&lay_d_, p.n, p.m, p.n, p.m * p.n);
  if (!ok) return false;

  const auto* pa = static_cast<const std::byte*>(a);
  const auto* pb = static_cast<const std::byte*>(b);
  auto* py = static_cast<std::byte*>(y);
  std::vector<uintptr_t> addr_a, addr_b, addr_d;
  for (const Product::Call& c : p.calls) {
    Ptrs q{pb + c.b * es, pa + c.a * es, nullptr, py + c.y * es};
    q.c = p.c ? p.c : q.d;  // with beta = 0, C is not read; cuBLASLt still wants a pointer
    calls_.push_back(q);
    addr_a.push_back(reinterpret_cast<uintptr_t>(q.a));
    addr_b.push_back(reinterpret_cast<uintptr_t>(q.b));
    addr_d.push_back(reinterpret_cast<uintptr_t>(q.d));
  }
  if (p.batch > 1) {
    addr_a.push_back(static_cast<uintptr_t>(p.b_stride * es));
    addr_b.push_back(static_cast<uintptr_t>(p.a_stride * es));
    addr_d.push_back(static_cast<uintptr_t>(p.m * p.n * es));
  }
  std::vector<uintptr_t> addr_c = addr_d;
  if (p.c) addr_c = {reinterpret_cast<uintptr_t>(p.c)};
  const uint32_t align_a = alignment_of(addr_a), align_b = alignment_of(addr_b),
                 align_c = alignment_of(addr_c), align_d = alignment_of(addr_d);

  const std::string key =
      fmt::format("{} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}", static_cast<int>(dt),
                  static_cast<int>(compute), p.m, p.n, p.k, p.ta, p.tb, p.batch, p.a_stride, p.b_stride,
                  epilogue, alignment_of({reinterpret_cast<uintptr_t>(p.bias)}), align_a, align_b, align_c,
                  align_d, workspace_bytes_, libs->sm, libs->device);
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  if (auto it = cache.found.find(key); it != cache.found.end()) {
    algo_ = it->second;
    return true;
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if (lt.cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return false;
  const uint64_t max_ws = workspace_bytes_;
  ok = lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws,
                                               sizeof(max_ws)) == CUBLAS_STATUS_SUCCESS;
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d}};
  for (const auto& [attr, value] : aligns)
    ok = ok &&
         lt.cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)) == CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  if (ok)
    ok = lt.cublasLtMatmulAlgoGetHeuristic(handle_, desc_, lay_a_, lay_b_, lay_c_, lay_d_, pref, 1, &result,
                                           &returned) == CUBLAS_STATUS_SUCCESS &&
         returned > 0 && result.state == CUBLAS_STATUS_SUCCESS && result.workspaceSize <= workspace_bytes_;
  lt.cublasLtMatmulPreferenceDestroy(pref);
  if (!ok) return false;
  algo_ = result.algo;
  cache.found.emplace(key, algo_);
  return true;
}

bool supported_dtype(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}

// A kernel for a planned product, or nullptr when cuBLASLt cannot run it.
KernelPtr product_kernel(const Product& p, const KernelArgs& a, void* y) {
  auto lt = std::make_shared<LtProduct>();
  if (!lt->init(p, a.inputs[0], a.inputs[1], y, a.libs)) return nullptr;
  return make_kernel([lt](cudaStream_t stream) { lt->run(stream); });
}

bool is_empty(const BatchLayout& L) {
  return L.a_off.empty() || L.m == 0 || L.n == 0;
}

KernelPtr matmul_like(const KernelArgs& a, bool ta, bool tb, double alpha) {
  if (!supported_dtype(a.in(0).dtype)) return nullptr;
  BatchLayout L = batch_layout(a.in(0).shape, a.in(1).shape, ta, tb);
  if (is_empty(L)) return make_kernel([](cudaStream_t) {});
  if (L.k == 0) return nullptr;  // y = 0: not worth a kernel of its own
  Product p;
  p.dtype = a.in(0).dtype;
  p.alpha = alpha;
  if (!plan_calls(L, ta, tb, &p)) return nullptr;
  return product_kernel(p, a, a.outputs[0]);
}

KernelPtr matmul(const KernelArgs& a) {
  return matmul_like(a, false, false, 1.0);
}

KernelPtr matmul_transposed(const KernelArgs& a) {
  return matmul_like(a, a.attrs().i("transA") != 0, a.attrs().i("transB") != 0, a.attrs().f("alpha"));
}

// Y = alpha * op(A) · op(B) + beta * C. C of shape [m, n] is cuBLASLt's C; a row vector ([n] or [1, n]) with
// beta = 1 is the bias epilogue. Other broadcasts of C (a column, a scalar) or a scaled row run on the host.
KernelPtr gemm(const KernelArgs& a) {
  if (!supported_dtype(a.in(0).dtype)) return nullptr;
  const bool ta = a.attrs().i("transA") != 0, tb = a.attrs().i("transB") != 0;
  BatchLayout L = batch_layout(a.in(0).shape, a.in(1).shape, ta, tb);
  if (is_empty(L)) return make_kernel([](cudaStream_t) {});
  if (L.k == 0) return nullptr;
  Product p;
  p.dtype = a.in(0).dtype;
  p.alpha = a.attrs().f("alpha");
  if (!plan_calls(L, ta, tb, &p)) return nullptr;
  const double beta = a.attrs().f("beta");
  if (a.has_input(2) && beta != 0.0) {
    // C broadcasts to [m, n] (shape inference checked it), so m * n elements are the whole matrix.
    const Shape& cs = a.in(2).shape;
    const bool row = (cs.rank() == 1 && cs[0] == p.n) || (cs.rank() == 2 && cs[0] == 1 && cs[1] == p.n);
    if (cs.numel() == p.m * p.n) {
      p.c = a.inputs[2];
      p.beta = beta;
    } else if (row && beta == 1.0) {
      p.bias = a.inputs[2];
    } else {
      return nullptr;
    }
  }
  return product_kernel(p, a, a.outputs[0]);
}

// y = act(z), z = op(A) · op(B) + bias, with output 1 (when present) holding z. cuBLASLt's epilogue adds the
// bias and, without z, applies relu; GELU (either formula) and any activation with z saved run as a kernel of
// ours after the product, computing the CPU's formula (cuBLASLt's GELU epilogue is an approximation of its
// own).
KernelPtr fused_gemm(const KernelArgs& a) {
  const DType dt = a.in(0).dtype;
  if (!supported_dtype(dt)) return nullptr;
  const Shape& sa = a.in(0).shape;
  const bool ta = a.attrs().i("transA") != 0, tb = a.attrs().i("transB") != 0;
  const Shape a2 = ta ? sa : Shape{sa.numel() / std::max<int64_t>(1, sa[sa.rank() - 1]), sa[sa.rank() - 1]};
  BatchLayout L = batch_layout(a2, a.in(1).shape, ta, tb);
  if (is_empty(L)) return make_kernel([](cudaStream_t) {});
  if (L.k == 0) return nullptr;
  const std::string& act_name = a.attrs().s("activation");
  GemmActivation act = GemmActivation::none;
  if (act_name == "relu")
    act = GemmActivation::relu;
  else if (act_name == "gelu")
    act = GemmActivation::gelu;
  else if (act_name == "gelu_tanh")
    act = GemmActivation::gelu_tanh;
  else if (act_name != "none")
    return nullptr;

  Product p;
  p.dtype = dt;
  if (!plan_calls(L, ta, tb, &p)) return nullptr;
  if (a.has_input(2)) p.bias = a.inputs[2];
  void* y = a.outputs[0];
  void* z = a.has_output(1) ? a.outputs[1] : nullptr;
  const int64_t count = p.m * p.n;
  const size_t bytes = static_cast<size_t>(count) * dtype_bytes(dt);

  if (act == GemmActivation::none || (act == GemmActivation::relu && !z)) {
    p.relu = act == GemmActivation::relu;
    auto lt = std::make_shared<LtProduct>();
    if (!lt->init(p, a.inputs[0], a.inputs[1], y, a.libs)) return nullptr;
    return make_kernel([lt, y, z, bytes](cudaStream_t stream) {
      lt->run(stream);
      if (z) TRAINER_CUDA_CHECK(cudaMemcpyAsync(z, y, bytes, cudaMemcpyDeviceToDevice, stream));
    });
  }
  if (dt != DType::f32 && dt != DType::bf16) return nullptr;  // the activation kernels: f32 and bf16
  // The pre-activation goes to z when it is kept, else to y, which the activation then overwrites in place.
  void* pre = z ? z : y;
  auto lt = std::make_shared<LtProduct>();
  if (!lt->init(p, a.inputs[0], a.inputs[1], pre, a.libs)) return nullptr;
  const bool bf16 = dt == DType::bf16;
  return make_kernel([lt, act, pre, y, count, bf16](cudaStream_t stream) {
    lt->run(stream);
    if (bf16)
      TRAINER_CUDA_CHECK(launch_gemm_activation_bf16(act, pre, y, count, stream));
    else
      TRAINER_CUDA_CHECK(
          launch_gemm_activation(act, static_cast<const float*>(pre), static_cast<float*>(y), count, stream));
  });
}

// dW through cuBLASLt (A^T · dZ, or dZ^T · A for a [n, k] weight), then dB = dZ's column sums by a
// deterministic kernel of ours on the same stream. (cuBLASLt's BGRAD epilogues would fold the sums into the
// GEMM; their layout rules are to be checked on a GPU before they replace this.)
KernelPtr gemm_grad_weight_bias(const KernelArgs& a) {
  const DType dt = a.in(0).dtype;
  if (dt != DType::f32 && dt != DType::f64 && dt != DType::bf16) return nullptr;
  const bool tb = a.attrs().i("transB") != 0;
  const Shape &sa = a.in(0).shape, &sd = a.in(1).shape;
  const void* first = tb ? a.inputs[1] : a.inputs[0];
  const void* second = tb ? a.inputs[0] : a.inputs[1];
  BatchLayout L = tb ? batch_layout(sd, sa, true, false) : batch_layout(sa, sd, true, false);
  const int64_t m = sd[0], n = sd[1];
  const ElemType type = elem_type(dt);
  const void* dz = a.inputs[1];
  void* dw = a.outputs[0];
  void* db = a.outputs[1];
  std::shared_ptr<LtProduct> lt;
  if (!is_empty(L)) {
    if (L.k == 0) return nullptr;
    Product p;
    p.dtype = dt;
    if (!plan_calls(L, true, false, &p)) return nullptr;
    lt = std::make_shared<LtProduct>();
    if (!lt->init(p, first, second, dw, a.libs)) return nullptr;
  }
  void* workspace = a.libs->workspace;
  const size_t workspace_bytes = a.libs->workspace_bytes;
  return make_kernel([lt, type, dz, db, m, n, workspace, workspace_bytes](cudaStream_t stream) {
    if (lt) lt->run(stream);
    // The workspace is free again: the GEMM above is before the sums on the stream.
    TRAINER_CUDA_CHECK(launch_column_sums(type, dz, db, m, n, workspace, workspace_bytes, stream));
  });
}

}  // namespace

void register_blas_kernels(KernelRegistry& r) {
  r.add("GemmGradWeightBias", gemm_grad_weight_bias);
  r.add("MatMul", matmul);
  r.add("MatMulTransposed", matmul_transposed);
  r.add("Gemm", gemm);
  r.add("FusedGemm", fused_gemm);
}

}  // namespace trainer::engine::cuda
