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

// One table per library, loaded on first use: `list` is the library's X-macro list of functions.
#define TRAINER_RESOLVE(f) resolve(h, so, #f, t.f);
#define TRAINER_DEFINE_TABLE(Type, accessor, soname, what, list) \
  const Type& accessor() {                                       \
    static const Type table = [] {                               \
      constexpr const char* so = soname;                         \
      void* h = open_library(so, what);                          \
      Type t;                                                    \
      list(TRAINER_RESOLVE) return t;                            \
    }();                                                         \
    return table;                                                \
  }

TRAINER_DEFINE_TABLE(CublasLt, cublaslt, "libcublasLt.so.13", "cuBLASLt", TRAINER_CUBLASLT_FUNCTIONS)
TRAINER_DEFINE_TABLE(Cudnn, cudnn, "libcudnn.so.9", "cuDNN 9", TRAINER_CUDNN_FUNCTIONS)
TRAINER_DEFINE_TABLE(Nccl, nccl, "libnccl.so.2", "NCCL 2", TRAINER_NCCL_FUNCTIONS)

#undef TRAINER_DEFINE_TABLE
#undef TRAINER_RESOLVE

}  // namespace trainer::engine::cuda::lib
