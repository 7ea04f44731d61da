// DType tables: sizes, names, and the mapping to ONNX TensorProto element types.
#include "engine/ir/dtype.h"

#include "engine/util/error.h"

namespace trainer::engine {

size_t dtype_bytes(DType t) {
  switch (t) {
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::bf16:
    case DType::f16:
      return 2;
    case DType::u8:
    case DType::boolean:
      return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::u8:
      return "u8";
    case DType::boolean:
      return "bool";
  }
  return "?";
}

bool is_float(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}
bool is_integer(DType t) {
  return !is_float(t);
}

// ONNX TensorProto.DataType codes.
int dtype_to_onnx(DType t) {
  switch (t) {
    case DType::f32:
      return 1;
    case DType::u8:
      return 2;
    case DType::i32:
      return 6;
    case DType::i64:
      return 7;
    case DType::boolean:
      return 9;
    case DType::f16:
      return 10;
    case DType::f64:
      return 11;
    case DType::bf16:
      return 16;
  }
  return 0;
}

DType dtype_from_onnx(int code) {
  switch (code) {
    case 1:
      return DType::f32;
    case 2:
      return DType::u8;
    case 6:
      return DType::i32;
    case 7:
      return DType::i64;
    case 9:
      return DType::boolean;
    case 10:
      return DType::f16;
    case 11:
      return DType::f64;
    case 16:
      return DType::bf16;
    default:
      throw InputError("", fmt::format("ONNX element type {} is not supported", code),
                       "supported: float, double, bfloat16, float16, int32, int64, uint8, bool");
  }
}

bool dtype_from_name(std::string_view n, DType* out) {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (dtype_name(static_cast<DType>(i)) == n) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

}  // namespace trainer::engine
