// Host tensor element access and dtype conversion.
#include "engine/ir/tensor.h"

#include <bit>
#include <cmath>

#include "engine/util/memory.h"

namespace trainer::engine {

size_t tensor_bytes(const Shape& shape, DType dtype) {
  constexpr int64_t kLimit = int64_t{1} << 40;
  int64_t bytes = static_cast<int64_t>(dtype_bytes(dtype));
  for (int64_t d : shape.dims())
    if (d < 0 || __builtin_mul_overflow(bytes, d, &bytes) || bytes > kLimit)
      throw InputError("",
                       fmt::format("a tensor of shape {} ({}) is too large: over 2^40 bytes", shape.str(),
                                   dtype_name(dtype)),
                       "check the sizes the model and data give: units, filters, input shapes, batch_size, "
                       "and an ONNX file's dimensions");
  return static_cast<size_t>(bytes);
}

size_t host_tensor_bytes(const Shape& shape, DType dtype) {
  const size_t bytes = tensor_bytes(shape, dtype);
  // Said before allocating: an allocation past the memory this process may use fails, or draws the
  // out-of-memory killer.
  const double memory = usable_memory_bytes();
  if (memory > 0 && static_cast<double>(bytes) > memory)
    throw InputError(
        "",
        fmt::format("a tensor of shape {} ({}) needs {:.1f} GiB, more than the {:.1f} GiB of memory "
                    "this process may use",
                    shape.str(), dtype_name(dtype), static_cast<double>(bytes) / (1 << 30),
                    memory / (1 << 30)),
        "check the sizes the model and data give: units, filters, input shapes, batch_size, and an "
        "ONNX file's dimensions");
  return bytes;
}

float bf16_to_f32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while (!(man & 0x400));
      u = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 112) << 23 | man << 13;
  }
  return std::bit_cast<float>(u);
}

uint16_t f32_to_f16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  uint32_t sign = (u >> 16) & 0x8000;
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7e00);
  float a = std::fabs(f);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7c00);
  if (a < 6.103515625e-05f) {   // subnormal or zero: scale so the integer part holds the mantissa
    float m = a * 16777216.0f;  // 2^24
    uint32_t r = static_cast<uint32_t>(std::nearbyint(m));
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t exp = ((u >> 23) & 0xff) - 112, man = u & 0x7fffff;
  uint32_t h = exp << 10 | man >> 13;
  uint32_t rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

double Tensor::get_f64(int64_t i) const {
  const std::byte* p = bytes_.data();
  switch (dtype_) {
    case DType::f32:
      return reinterpret_cast<const float*>(p)[i];
    case DType::f64:
      return reinterpret_cast<const double*>(p)[i];
    case DType::bf16:
      return bf16_to_f32(reinterpret_cast<const uint16_t*>(p)[i]);
    case DType::f16:
      return f16_to_f32(reinterpret_cast<const uint16_t*>(p)[i]);
    case DType::i32:
      return reinterpret_cast<const int32_t*>(p)[i];
    case DType::i64:
      return static_cast<double>(reinterpret_cast<const int64_t*>(p)[i]);
    case DType::u8:
      return reinterpret_cast<const uint8_t*>(p)[i];
    case DType::boolean:
      return reinterpret_cast<const uint8_t*>(p)[i] != 0;
  }
  return 0;
}

int64_t Tensor::get_i64(int64_t i) const {
  if (dtype_ == DType::i64) return reinterpret_cast<const int64_t*>(bytes_.data())[i];
  return static_cast<int64_t>(get_f64(i));
}

void Tensor::set_f64(int64_t i, double v) {
  std::byte* p = bytes_.data();
  switch (dtype_) {
    case DType::f32:
      reinterpret_cast<float*>(p)[i] = static_cast<float>(v);
      break;
    case DType::f64:
      reinterpret_cast<double*>(p)[i] = v;
      break;
    case DType::bf16:
      reinterpret_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v));
      break;
    case DType::f16:
      reinterpret_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v));
      break;
    case DType::i32:
      reinterpret_cast<int32_t*>(p)[i] = static_cast<int32_t>(v);
      break;
    case DType::i64:
      reinterpret_cast<int64_t*>(p)[i] = static_cast<int64_t>(v);
      break;
    case DType::u8:
      reinterpret_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v);
      break;
    case DType::boolean:
      reinterpret_cast<uint8_t*>(p)[i] = v != 0;
      break;
  }
}

Tensor Tensor::cast(DType to) const {
  Tensor t(to, shape_);
  if (to == dtype_) {
    t.bytes_ = bytes_;
    return t;
  }
  if (to == DType::i64) {
    for (int64_t i = 0; i < numel(); ++i) reinterpret_cast<int64_t*>(t.bytes_.data())[i] = get_i64(i);
    return t;
  }
  for (int64_t i = 0; i < numel(); ++i) t.set_f64(i, get_f64(i));
  return t;
}

Tensor Tensor::reshaped(Shape s) const {
  TRAINER_ASSERT(s.numel() == numel(), "reshape {} to {}", shape_.str(), s.str());
  Tensor t = *this;
  t.shape_ = std::move(s);
  return t;
}

}  // namespace trainer::engine
