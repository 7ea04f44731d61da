// Element types of the IR and their sizes, names and ONNX codes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace trainer::engine {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, u8, boolean };

inline constexpr int kNumDTypes = 8;

size_t dtype_bytes(DType t);
std::string_view dtype_name(DType t);
bool is_float(DType t);
bool is_integer(DType t);  // i32, i64, u8, bool: never differentiated
int dtype_to_onnx(DType t);
// Throws InputError when the ONNX element type has no IR counterpart.
DType dtype_from_onnx(int onnx_type);
bool dtype_from_name(std::string_view name, DType* out);

// Maps a C++ type to its DType.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = DType::i64;
};
template <>
struct dtype_of<uint8_t> {
  static constexpr DType value = DType::u8;
};
template <>
struct dtype_of<bool> {
  static constexpr DType value = DType::boolean;
};

}  // namespace trainer::engine
