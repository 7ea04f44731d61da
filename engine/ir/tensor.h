// A host tensor: dtype, shape and owned bytes. Initializers, parameters on the host, and test data.
#pragma once

#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <utility>
#include <vector>

#include "engine/ir/dtype.h"
#include "engine/ir/shape.h"
#include "engine/util/error.h"

namespace trainer::engine {

// The bytes a tensor of `shape` holds. Sizes no model or batch here needs (a negative dimension, or more than
// 2^40 bytes: a mistyped `units = 2000000000`, a corrupt file's dimensions) are an InputError naming the
// shape, before anything is allocated.
size_t tensor_bytes(const Shape& shape, DType dtype);
// tensor_bytes of a tensor allocated here, in host memory: more than the memory this process may use
// (engine/util/memory.h) is an InputError too. Shapes of device buffers and plans are judged by tensor_bytes
// alone.
size_t host_tensor_bytes(const Shape& shape, DType dtype);

// A Tensor's storage: calloc'd and left as calloc leaves it instead of zeroed element by element, so a large
// tensor of zeros (optimizer state, the weights `trainer summary` builds) costs no memory until it is written
// (the kernel's zero pages). Only for storage sized once: growing a vector within its capacity would leave
// what the shrink left, not zeros.
template <class T>
struct ZeroedAllocator {
  using value_type = T;
  ZeroedAllocator() = default;
  template <class U>
  ZeroedAllocator(const ZeroedAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n == 0) return nullptr;
    void* p = std::calloc(n, sizeof(T));
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }
  template <class U>
  void construct(U*) noexcept {}  // value-initialization: calloc's zeros stand
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
  template <class U>
  bool operator==(const ZeroedAllocator<U>&) const noexcept {
    return true;
  }
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape)
      : dtype_(dtype), shape_(std::move(shape)), bytes_(host_tensor_bytes(shape_, dtype)) {}

  template <class T>
  static Tensor from(Shape shape, const std::vector<T>& values) {
    Tensor t(dtype_of<T>::value, std::move(shape));
    TRAINER_ASSERT(static_cast<int64_t>(values.size()) == t.numel(), "{} values for shape {}", values.size(),
                   t.shape().str());
    if constexpr (std::is_same_v<T, bool>) {
      for (size_t i = 0; i < values.size(); ++i)
        t.bytes_[i] = std::byte{static_cast<unsigned char>(values[i] ? 1 : 0)};
    } else if (t.nbytes() > 0) {  // an empty tensor has no storage to copy into
      std::memcpy(t.bytes_.data(), values.data(), t.nbytes());
    }
    return t;
  }
  template <class T>
  static Tensor scalar(T v) {
    return from<T>(Shape{}, {v});
  }

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return bytes_.size(); }
  void* raw() { return bytes_.data(); }
  const void* raw() const { return bytes_.data(); }

  template <class T>
  T* data() {
    TRAINER_ASSERT(dtype_of<T>::value == dtype_, "tensor is {}", dtype_name(dtype_));
    return reinterpret_cast<T*>(bytes_.data());
  }
  template <class T>
  const T* data() const {
    TRAINER_ASSERT(dtype_of<T>::value == dtype_, "tensor is {}", dtype_name(dtype_));
    return reinterpret_cast<const T*>(bytes_.data());
  }
  template <class T>
  std::vector<T> to_vector() const {
    const T* p = data<T>();
    return std::vector<T>(p, p + numel());
  }
  // Element i converted to double / int64, whatever the dtype (slow; for tests, shapes and constants).
  double get_f64(int64_t i) const;
  int64_t get_i64(int64_t i) const;
  void set_f64(int64_t i, double v);
  // A copy converted to another dtype.
  Tensor cast(DType to) const;
  Tensor reshaped(Shape s) const;

 private:
  DType dtype_ = DType::f32;
  Shape shape_;
  std::vector<std::byte, ZeroedAllocator<std::byte>> bytes_;
};

// bf16/f16 <-> f32 conversions (round to nearest even), shared with the kernels.
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace trainer::engine
