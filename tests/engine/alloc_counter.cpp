// Interposes operator new and the malloc family in the test binary to count allocations: the check behind "a
// steady-state step allocates nothing". The caller's return address says whether oneDNN's library made the
// call.
#include "alloc_counter.h"

#include <link.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);
}

namespace {

std::atomic<bool> armed{false};
std::atomic<int64_t> total{0}, in_dnnl{0}, dnnl_bytes{0};
uintptr_t dnnl_lo = 0, dnnl_hi = 0;  // text range of libdnnl, found when armed

inline void note(void* ret, size_t n) {
  if (!armed.load(std::memory_order_relaxed)) return;
  total.fetch_add(1, std::memory_order_relaxed);
  auto a = reinterpret_cast<uintptr_t>(ret);
  if (a >= dnnl_lo && a < dnnl_hi) {
    in_dnnl.fetch_add(1, std::memory_order_relaxed);
    dnnl_bytes.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
  }
}

int find_dnnl(struct dl_phdr_info* info, size_t, void*) {
  if (!info->dlpi_name || !std::strstr(info->dlpi_name, "libdnnl")) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    dnnl_lo = info->dlpi_addr + ph.p_vaddr;
    dnnl_hi = dnnl_lo + ph.p_memsz;
  }
  return 1;
}

}  // namespace

extern "C" {
void* malloc(size_t n) {
  note(__builtin_return_address(0), n);
  return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
  note(__builtin_return_address(0), a * b);
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
  note(__builtin_return_address(0), n);
  return __libc_realloc(p, n);
}
int posix_memalign(void** out, size_t align, size_t n) {
  note(__builtin_return_address(0), n);
  void* p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void* aligned_alloc(size_t align, size_t n) {
  note(__builtin_return_address(0), n);
  return __libc_memalign(align, n);
}
void free(void* p) {
  __libc_free(p);
}
}

void* operator new(size_t n) {
  note(__builtin_return_address(0), n);
  if (void* p = __libc_malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  note(__builtin_return_address(0), n);
  if (void* p = __libc_malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  __libc_free(p);
}
void operator delete[](void* p) noexcept {
  __libc_free(p);
}
void operator delete(void* p, size_t) noexcept {
  __libc_free(p);
}
void operator delete[](void* p, size_t) noexcept {
  __libc_free(p);
}

namespace trainer::test {

void arm_allocation_counter() {
  if (!dnnl_hi) dl_iterate_phdr(find_dnnl, nullptr);
  total.store(0);
  in_dnnl.store(0);
  dnnl_bytes.store(0);
  armed.store(true);
}

AllocationCounts disarm_allocation_counts() {
  armed.store(false);
  return {total.load(), in_dnnl.load(), dnnl_bytes.load()};
}

}  // namespace trainer::test
