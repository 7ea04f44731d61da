// TensorProto <-> engine::Tensor. ONNX stores tensor bytes little-endian, either packed in raw_data, in one
// of the typed repeated fields, or in an external file next to the model.
#include "formats/onnx_tensor.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/util/error.h"

namespace trainer::formats {

using engine::DType;
using engine::Shape;
using engine::Tensor;

namespace {

// Copies little-endian elements of `elem_bytes` each into host order.
void copy_little_endian(void* dst, const void* src, size_t nbytes, size_t elem_bytes) {
  if (nbytes == 0) return;  // an empty tensor's data may be null
  std::memcpy(dst, src, nbytes);
  if constexpr (std::endian::native == std::endian::big) {
    auto* p = static_cast<unsigned char*>(dst);
    for (size_t i = 0; i + elem_bytes <= nbytes; i += elem_bytes) std::reverse(p + i, p + i + elem_bytes);
  }
}

std::string tensor_label(const onnx::TensorProto& t) {
  return t.name().empty() ? std::string("a tensor") : fmt::format("tensor '{}'", t.name());
}

template <class Repeated>
void check_count(const Repeated& field, const char* field_name, uint64_t numel, const onnx::TensorProto& t,
                 const std::string& where) {
  if (static_cast<uint64_t>(field.size()) != numel)
    throw InputError(where,
                     fmt::format("{} has {} values in {} but its shape [{}] holds {}", tensor_label(t),
                                 field.size(), field_name, fmt::join(t.dims(), ", "), numel),
                     "the file is corrupt or was written by a broken exporter");
}

// The bytes of an external-data tensor: `location` relative to the model's folder, optional offset and
// length.
std::string read_external(const onnx::TensorProto& t, const std::string& where, const std::string& base_dir) {
  std::string location;
  int64_t offset = 0, length = -1;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") {
      location = kv.value();
      continue;
    }
    if (kv.key() != "offset" && kv.key() != "length") continue;
    // A whole non-negative number, nothing after it.
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(kv.value(), &used);
    } catch (const std::exception&) {
    }
    if (v < 0 || used != kv.value().size())
      throw InputError(
          where,
          fmt::format("{} has a malformed external_data '{}': '{}'", tensor_label(t), kv.key(), kv.value()),
          "offsets and lengths are whole numbers of bytes");
    (kv.key() == "offset" ? offset : length) = v;
  }
  if (location.empty())
    throw InputError(where, fmt::format("{} is stored externally but names no location", tensor_label(t)));
  // As ONNX's checker asks: a path relative to the model's folder, inside it.
  const std::filesystem::path rel(location);
  if (rel.is_absolute() || std::any_of(rel.begin(), rel.end(), [](const auto& part) { return part == ".."; }))
    throw InputError(
        where, fmt::format("{} is stored in '{}', outside the model's folder", tensor_label(t), location),
        "external data files are named relative to the model's folder, within it");
  std::string path = base_dir.empty() ? location : base_dir + "/" + location;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw InputError(where,
                     fmt::format("{} is stored in '{}', which is not a readable file", tensor_label(t), path),
                     "keep the external data files next to the model");
  std::ifstream f(path, std::ios::binary);
  if (!f)
    throw InputError(where,
                     fmt::format("{} is stored in '{}', which cannot be opened", tensor_label(t), path),
                     "keep the external data files next to the model");
  f.seekg(0, std::ios::end);
  int64_t size = f.tellg();
  if (length < 0) length = std::max<int64_t>(size - offset, 0);
  if (offset > size || length > size - offset)
    throw InputError(where,
                     fmt::format("{} reads {} bytes from offset {} of '{}', which has {}", tensor_label(t),
                                 length, offset, path, size),
                     "the external data file is truncated");
  std::string bytes(static_cast<size_t>(length), '\0');
  f.seekg(offset);
  f.read(bytes.data(), length);
  return bytes;
}

}  // namespace

bool inline_external_data(onnx::TensorProto* t, const std::string& where, const std::string& base_dir) {
  if (t->data_location() != onnx::TensorProto::EXTERNAL) return false;
  std::string bytes = read_external(*t, where, base_dir);
  t->clear_external_data();
  t->set_data_location(onnx::TensorProto::DEFAULT);
  t->set_raw_data(std::move(bytes));
  return true;
}

Tensor tensor_from_onnx(const onnx::TensorProto& t, const std::string& where, const std::string& base_dir) {
  DType dtype;
  try {
    dtype = engine::dtype_from_onnx(t.data_type());
  } catch (const InputError& e) {
    throw InputError(where, fmt::format("{}: {}", tensor_label(t), e.what()), e.hint());
  }
  if (t.has_segment())
    throw InputError(where, fmt::format("{} is segmented, which is not supported", tensor_label(t)),
                     "store each tensor whole, as onnx.save writes it");
  std::vector<int64_t> dims(t.dims().begin(), t.dims().end());
  for (int64_t d : dims)
    if (d < 0)
      throw InputError(where, fmt::format("{} has a negative dimension {}", tensor_label(t), d),
                       "the model file is damaged: export it again");
  const size_t elem = engine::dtype_bytes(dtype);
  // The size its dimensions claim, checked against its data before anything is allocated: a damaged file
  // may claim terabytes.
  constexpr uint64_t kMostBytes = uint64_t{1} << 40;
  uint64_t numel = 1;
  bool huge = false;
  for (int64_t d : dims) {
    if (d == 0) {
      numel = 0, huge = false;
      break;
    }
    if (!huge && numel > kMostBytes / static_cast<uint64_t>(d)) huge = true;
    if (!huge) numel *= static_cast<uint64_t>(d);
  }
  if (huge || numel * elem > kMostBytes)
    throw InputError(where,
                     fmt::format("{} has shape [{}] of {}: over 2^40 bytes, more than one tensor may hold",
                                 tensor_label(t), fmt::join(dims, ", "), engine::dtype_name(dtype)),
                     "the file is corrupt, or the model is too large to load");
  const uint64_t nbytes = numel * elem;
  auto size_error = [&](size_t have, const char* what) {
    return InputError(where,
                      fmt::format("{} has {} bytes of {} but its shape [{}] of {} needs {}", tensor_label(t),
                                  have, what, fmt::join(dims, ", "), engine::dtype_name(dtype), nbytes),
                      "the file is truncated or corrupt");
  };

  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    std::string bytes = read_external(t, where, base_dir);
    if (bytes.size() != nbytes) throw size_error(bytes.size(), "external data");
    Tensor out(dtype, Shape(dims));
    copy_little_endian(out.raw(), bytes.data(), bytes.size(), elem);
    return out;
  }
  if (t.has_raw_data()) {
    const std::string& raw = t.raw_data();
    if (raw.size() != nbytes) throw size_error(raw.size(), "raw_data");
    Tensor out(dtype, Shape(dims));
    copy_little_endian(out.raw(), raw.data(), raw.size(), elem);
    if (dtype == DType::boolean) {
      auto* p = static_cast<uint8_t*>(out.raw());
      for (int64_t i = 0; i < out.numel(); ++i) p[i] = p[i] != 0;
    }
    return out;
  }
  switch (dtype) {  // the typed field's count first
    case DType::f32:
      check_count(t.float_data(), "float_data", numel, t, where);
      break;
    case DType::f64:
      check_count(t.double_data(), "double_data", numel, t, where);
      break;
    case DType::i64:
      check_count(t.int64_data(), "int64_data", numel, t, where);
      break;
    default:  // i32, u8, boolean, f16, bf16: ONNX carries them in int32_data
      check_count(t.int32_data(), "int32_data", numel, t, where);
  }
  Tensor out(dtype, Shape(dims));
  switch (dtype) {
    case DType::f32: {
      std::copy(t.float_data().begin(), t.float_data().end(), out.data<float>());
      break;
    }
    case DType::f64: {
      std::copy(t.double_data().begin(), t.double_data().end(), out.data<double>());
      break;
    }
    case DType::i64: {
      std::copy(t.int64_data().begin(), t.int64_data().end(), out.data<int64_t>());
      break;
    }
    case DType::i32: {
      std::copy(t.int32_data().begin(), t.int32_data().end(), out.data<int32_t>());
      break;
    }
    case DType::u8:
    case DType::boolean: {
      // ONNX widens 8-bit types to int32 in the typed field.
      auto* p = static_cast<uint8_t*>(out.raw());
      for (int i = 0; i < t.int32_data_size(); ++i) {
        int32_t v = t.int32_data(i);
        p[i] = dtype == DType::boolean ? (v != 0) : static_cast<uint8_t>(v);
      }
      break;
    }
    case DType::f16:
    case DType::bf16: {
      // Half-precision values travel as their 16-bit patterns in int32_data.
      auto* p = static_cast<uint16_t*>(out.raw());
      for (int i = 0; i < t.int32_data_size(); ++i) p[i] = static_cast<uint16_t>(t.int32_data(i) & 0xffff);
      break;
    }
  }
  return out;
}

void tensor_to_onnx(const Tensor& tensor, const std::string& name, onnx::TensorProto* proto) {
  proto->Clear();
  proto->set_name(name);
  proto->set_data_type(engine::dtype_to_onnx(tensor.dtype()));
  for (int64_t d : tensor.shape().dims()) proto->add_dims(d);
  std::string raw(tensor.nbytes(), '\0');
  copy_little_endian(raw.data(), tensor.raw(), tensor.nbytes(), engine::dtype_bytes(tensor.dtype()));
  proto->set_raw_data(std::move(raw));
}

std::string read_file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(path, "cannot open the file", "check the path and its permissions");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw InputError(path, "reading the file failed");
  return std::move(ss).str();
}

Tensor parse_onnx_tensor(std::string_view bytes, const std::string& source) {
  onnx::TensorProto proto;
  if (bytes.size() > static_cast<size_t>(INT_MAX) ||
      !proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    throw InputError(source, fmt::format("not a valid serialized ONNX TensorProto ({} bytes)", bytes.size()),
                     "the file is truncated or corrupt");
  return tensor_from_onnx(proto, source);
}

Tensor read_onnx_tensor_file(const std::string& path) {
  return parse_onnx_tensor(read_file_bytes(path), path);
}

}  // namespace trainer::formats
