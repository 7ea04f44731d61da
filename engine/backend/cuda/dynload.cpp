// Loads cuBLASLt, cuDNN and NCCL on first use (dynload.h says why).
#include "engine/backend/cuda/dynload.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <string>

#include "engine/util/error.h"

namespace trainer::engine::cuda::lib {

namespace {

void* open_library(const char* soname, const char* what) {
  void* h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!h)
    throw RuntimeError(
        fmt::format("cannot load {} ({}): {}. The CUDA backend needs it; install it, or point "
                    "LD_LIBRARY_PATH at it, or run "
                    "on the CPU with --device cpu",
                    what, soname, dlerror()));
  return h;
}

template <class T>
void resolve(void* handle, const char* soname, const char* name, T& slot) {
  void* p = dlsym(handle, name);
  if (!p)
    throw RuntimeError(
        fmt::format("{} has no function {}: the library is older than the build's", soname, name));
  slot = reinterpret_cast<T>(p);
}

}  // namespace

const CublasLt& cublaslt() {
  static const CublasLt table = [] {
    constexpr const char* so = "libcublasLt.so.13";
    void* h = open_library(so, "cuBLASLt");
    CublasLt t;
#define TRAINER_RESOLVE(f) resolve(h, so, #f, t.f);
    TRAINER_CUBLASLT_FUNCTIONS(TRAINER_RESOLVE)
#undef TRAINER_RESOLVE
    return t;
  }();
  return table;
}

const Cudnn& cudnn() {
  static const Cudnn table = [] {
    constexpr const char* so = "libcudnn.so.9";
    void* h = open_library(so, "cuDNN 9");
    Cudnn t;
#define TRAINER_RESOLVE(f) resolve(h, so, #f, t.f);
    TRAINER_CUDNN_FUNCTIONS(TRAINER_RESOLVE)
#undef TRAINER_RESOLVE
    return t;
  }();
  return table;
}

const Nccl& nccl() {
  static const Nccl table = [] {
    constexpr const char* so = "libnccl.so.2";
    void* h = open_library(so, "NCCL 2");
    Nccl t;
#define TRAINER_RESOLVE(f) resolve(h, so, #f, t.f);
    TRAINER_NCCL_FUNCTIONS(TRAINER_RESOLVE)
#undef TRAINER_RESOLVE
    return t;
  }();
  return table;
}

}  // namespace trainer::engine::cuda::lib
