// Matrix products with operands fixed at prepare time, for the recurrent kernels: C (+)= A·B where A and B
// are given by pointer and row/column strides, so transposed weights cost nothing. f32 runs a oneDNN matmul
// primitive built once (executed without allocating); f64, used by the gradient checks, runs a plain loop.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "engine/backend/cpu/dnnl_util.h"
#include "engine/backend/cpu/parallel.h"

namespace trainer::engine::cpu {

// Element (i, j) of a matrix view is p[i * rs + j * cs].
template <class T>
struct MatRef {
  const T* p = nullptr;
  int64_t rs = 0, cs = 0;
};

template <class T>
class FixedGemm {
 public:
  FixedGemm() = default;
  // C[m, n] = A[m, k] · B[k, n], or C += A·B when `accumulate`. C is row-major with leading dimension ldc.
  FixedGemm(int64_t m, int64_t n, int64_t k, MatRef<T> a, MatRef<T> b, T* c, int64_t ldc, bool accumulate)
      : m_(m), n_(n), k_(k), a_(a), b_(b), c_(c), ldc_(ldc), acc_(accumulate) {
    if constexpr (std::is_same_v<T, float>) {
      if (m == 0 || n == 0 || k == 0) return;
      auto a_md = dnnl_strided_md({m, k}, {a.rs, a.cs}, DType::f32);
      auto b_md = dnnl_strided_md({k, n}, {b.rs, b.cs}, DType::f32);
      auto c_md = dnnl_strided_md({m, n}, {ldc, 1}, DType::f32);
      dnnl::primitive_attr attr = dnnl_attr();
      if (accumulate) {
        dnnl::post_ops po;
        po.append_sum(1.f);
        attr.set_post_ops(po);
      }
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, dnnl_cpu_engine());
      call_ = DnnlCall(dnnl::matmul(pd), pd,
                       {{DNNL_ARG_SRC, dnnl_mem(a_md, a.p)},
                        {DNNL_ARG_WEIGHTS, dnnl_mem(b_md, b.p)},
                        {DNNL_ARG_DST, dnnl_mem(c_md, c)}});
    }
  }

  void operator()() const {
    if (m_ == 0 || n_ == 0) return;
    if (k_ == 0) {
      if (!acc_)
        for (int64_t i = 0; i < m_; ++i) std::fill(c_ + i * ldc_, c_ + i * ldc_ + n_, T(0));
      return;
    }
    if constexpr (std::is_same_v<T, float>) {
      call_();
    } else {
      // One row of C per task: each element is summed by one thread in a fixed order.
      const int64_t work = std::max<int64_t>(1, n_ * k_);
      parallel_for(
          m_,
          [&](int64_t i) {
            T* crow = c_ + i * ldc_;
            if (!acc_) std::fill(crow, crow + n_, T(0));
            const T* arow = a_.p + i * a_.rs;
            for (int64_t kk = 0; kk < k_; ++kk) {
              const T av = arow[kk * a_.cs];
              const T* brow = b_.p + kk * b_.rs;
              for (int64_t j = 0; j < n_; ++j) crow[j] += av * brow[j * b_.cs];
            }
          },
          std::max<int64_t>(1, kParallelGrain / work));
    }
  }

 private:
  int64_t m_ = 0, n_ = 0, k_ = 0;
  MatRef<T> a_{}, b_{};
  T* c_ = nullptr;
  int64_t ldc_ = 0;
  bool acc_ = false;
  DnnlCall call_;
};

}  // namespace trainer::engine::cpu
