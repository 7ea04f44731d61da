// Writes a checkpoint with every dtype, a scalar and an empty tensor, and a JSON file of the values and
// metadata it holds, for the numpy cross-check (checkpoint_numpy_check.py). Usage: checkpoint_write_sample
// CKPT EXPECTED
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "engine/util/error.h"
#include "formats/checkpoint.h"
#include "formats/checkpoint_json.h"

using trainer::engine::DType;
using trainer::engine::Shape;
using trainer::engine::Tensor;

namespace {

Tensor filled(DType dt, Shape shape, double scale, double shift) {
  Tensor t(dt, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, static_cast<double>(i) * scale + shift);
  return t;
}

std::string quoted(const std::string& s) {
  std::string out;
  if (!trainer::formats::append_json_string(out, s)) throw std::runtime_error("not UTF-8: " + s);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: checkpoint_write_sample CKPT EXPECTED_JSON\n";
    return 2;
  }
  trainer::formats::Checkpoint c;
  c.metadata = {{"spec", "[model]\nname = \"mlp \\u00e9\"\t# caf\xc3\xa9\n"},
                {"plan_signature", "3f2a9c0d11e8b7a4"},
                {"epoch", "1"},
                {"step", "469"},
                {"cursor", "epoch=1 batch=0"},
                {"rng", "seed=42 counter=469"},
                {"note", "control \x01 and \"quotes\" and \\"}};
  c.tensors = {
      {"dense/kernel", filled(DType::f32, {3, 4}, 0.25, -1.5)},
      {"dense/bias", filled(DType::f32, {4}, 1.0 / 3.0, 0.1)},
      {"mask", Tensor::from<bool>({3}, {true, false, true})},
      {"w64", filled(DType::f64, {2, 3}, 1.0 / 7.0, -0.3)},
      {"half", filled(DType::f16, {5}, 0.5, -1.0)},
      {"brain", filled(DType::bf16, {2, 2}, 0.75, 2.0)},
      {"count", Tensor::from<int32_t>({3}, {-7, 0, 2147483647})},
      {"big", Tensor::from<int64_t>({2}, {-(int64_t{1} << 60), (int64_t{1} << 53) + 1})},
      {"bytes", Tensor::from<uint8_t>({4}, {0, 1, 128, 255})},
      {"scalar", Tensor::scalar<float>(3.5f)},
      {"empty", Tensor(DType::f32, {0, 3})},
      {"optimizer/step", Tensor::scalar<int64_t>(469)},
  };
  trainer::formats::write_checkpoint(argv[1], c);

  std::string json = "{\"metadata\":{";
  bool first = true;
  for (const auto& [k, v] : c.metadata) {
    json += fmt::format("{}{}:{}", first ? "" : ",", quoted(k), quoted(v));
    first = false;
  }
  json += "},\"tensors\":{";
  first = true;
  for (const auto& t : c.tensors) {
    const Tensor& v = t.value;
    std::vector<std::string> values;
    for (int64_t i = 0; i < v.numel(); ++i)
      values.push_back(trainer::engine::is_float(v.dtype()) ? fmt::format("{}", v.get_f64(i))
                                                            : fmt::format("{}", v.get_i64(i)));
    json += fmt::format("{}{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"values\":[{}]}}", first ? "" : ",",
                        quoted(t.name), trainer::formats::safetensors_dtype_name(v.dtype()),
                        fmt::join(v.shape().dims(), ","), fmt::join(values, ","));
    first = false;
  }
  json += "}}\n";
  std::ofstream(argv[2]) << json;
  return 0;
}
