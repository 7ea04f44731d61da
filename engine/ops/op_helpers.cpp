// Shared shape-inference rules and example-tensor generators.
#include "engine/ops/op_helpers.h"

namespace trainer::engine::ops {

void infer_like_input0(InferContext& c) {
  c.set_output(0, c.dtype(0), c.shape(0));
}

void infer_broadcast(InferContext& c) {
  Shape out = c.shape(0);
  for (int i = 1; i < c.num_inputs(); ++i) {
    if (c.dtype(i) != c.dtype(0))
      c.fail("input {} is {}, input 0 is {}", i, dtype_name(c.dtype(i)), dtype_name(c.dtype(0)));
    Shape next;
    if (!broadcast_shapes(out, c.shape(i), &next))
      c.fail("shapes {} and {} do not broadcast", out.str(), c.shape(i).str());
    out = next;
  }
  c.set_output(0, c.dtype(0), out);
}

static uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Tensor random_tensor(const Shape& s, double lo, double hi, uint64_t seed, DType dtype) {
  Tensor t(dtype, s);
  uint64_t st = seed * 0x2545F4914F6CDD1Dull + 1;
  auto next = [&] {
    const double u = static_cast<double>(splitmix64(st) >> 11) * (1.0 / 9007199254740992.0);
    return lo + (hi - lo) * u;
  };
  if (dtype == DType::f32) {  // a model's weights: written directly (set_f64 rounds the same way)
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(next());
  } else {
    for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, next());
  }
  return t;
}

Tensor random_int_tensor(const Shape& s, int64_t lo, int64_t hi, uint64_t seed, DType dtype) {
  Tensor t(dtype, s);
  uint64_t st = seed * 0x2545F4914F6CDD1Dull + 7;
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t v = lo + static_cast<int64_t>(splitmix64(st) % static_cast<uint64_t>(hi - lo));
    if (dtype == DType::i64)
      t.data<int64_t>()[i] = v;
    else
      t.set_f64(i, static_cast<double>(v));
  }
  return t;
}

Tensor i64_tensor(const std::vector<int64_t>& v) {
  return Tensor::from<int64_t>(Shape{static_cast<int64_t>(v.size())}, v);
}

bool as_f32(const OpExample& e, OpExample* out) {
  *out = e;
  bool any = false;
  for (Tensor& t : out->inputs) {
    if (t.dtype() != DType::f64) continue;
    Tensor f(DType::f32, t.shape());
    for (int64_t i = 0; i < t.numel(); ++i) f.set_f64(i, t.get_f64(i));
    t = std::move(f);
    any = true;
  }
  out->label += " (f32)";
  return any;
}

OpExample example(std::string label, std::vector<Tensor> inputs, Attributes attrs) {
  OpExample e;
  e.label = std::move(label);
  e.absent.assign(inputs.size(), false);
  e.constant.assign(inputs.size(), false);
  e.inputs = std::move(inputs);
  e.attrs = std::move(attrs);
  return e;
}

}  // namespace trainer::engine::ops
