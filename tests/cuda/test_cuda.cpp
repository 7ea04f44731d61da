// CUDA against the CPU: every registered op (forward outputs and the gradients its backward graph computes,
// so gradient ops are covered through their forward op), training steps, graph replay against eager launches,
// and allocations after warm-up. Run by tools/device-check.sh on a machine with a GPU.
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/autodiff/autodiff.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/launch_blas.h"
#include "engine/data/synthetic.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"
#include "engine/train/training.h"
#include "models/layers.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

// fp32 with TF32 off: the largest difference over the largest magnitude of the tensor.
constexpr double kTolerance = 1e-5;
// f32 runs: the vendor libraries (cuDNN, cuBLASLt, without TF32) and oneDNN sum in different orders.
constexpr double kTolerance32 = 1e-4;

std::unique_ptr<Backend> cuda_backend(bool graph = true) {
  CudaOptions o;
  o.cuda_graph = graph;
  return make_cuda_backend(o);
}

double relative_difference(const Tensor& want, const Tensor& got) {
  REQUIRE(want.numel() == got.numel());
  double scale = 0, diff = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double a = want.get_f64(i), b = got.get_f64(i);
    if (std::isnan(a) != std::isnan(b)) return INFINITY;
    if (std::isnan(a)) continue;
    scale = std::max(scale, std::fabs(a));
    diff = std::max(diff, std::fabs(a - b));
  }
  return scale > 0 ? diff / scale : diff;
}

struct OpCase {
  std::shared_ptr<Graph> g;
  std::vector<std::pair<ValueId, Tensor>> feeds;
  std::vector<ValueId> checked;  // outputs and gradients
};

// The example's node, then loss = sum_k sum(out_k * w_k) and its gradients with respect to every float input.
OpCase build_case(const OpSchema& s, const OpExample& e) {
  OpCase c;
  c.g = std::make_shared<Graph>();
  Graph& g = *c.g;
  std::vector<ValueId> inputs, wrt;
  for (size_t i = 0; i < e.inputs.size(); ++i) {
    std::string name = "in" + std::to_string(i);
    if (i < e.absent.size() && e.absent[i]) {
      inputs.push_back(kNoValue);
    } else if (i < e.constant.size() && e.constant[i]) {
      inputs.push_back(g.add_constant(name, e.inputs[i]));
    } else {
      inputs.push_back(g.add_input(name, e.inputs[i].dtype(), e.inputs[i].shape()));
      c.feeds.emplace_back(inputs.back(), e.inputs[i]);
      if (is_float(e.inputs[i].dtype()) && s.has_grad() && s.input_has_grad(static_cast<int>(i)))
        wrt.push_back(inputs.back());
    }
  }
  NodeId n = g.add_node(s.name(), inputs, e.attrs, e.num_outputs, "op");
  const std::vector<ValueId> outputs = g.node(n).outputs;
  ValueId loss = kNoValue;
  for (size_t k = 0; k < outputs.size(); ++k) {
    ValueId o = outputs[k];
    if (o == kNoValue) continue;
    c.checked.push_back(o);
    if (!is_float(g.value(o).dtype)) continue;
    ValueId w = g.add_constant("w" + std::to_string(k),
                               ops::random_tensor(g.value(o).shape, -1, 1, 100 + k, g.value(o).dtype));
    ValueId term = g.op("ReduceSum", {g.op("Mul", {o, w})}, {{"keepdims", int64_t{0}}});
    loss = loss == kNoValue ? term : g.op("Add", {loss, term});
  }
  if (e.grad_check && s.has_grad() && loss != kNoValue && !wrt.empty()) {
    auto grads = build_backward(g, loss, wrt);
    for (ValueId v : wrt) c.checked.push_back(grads.at(v));
  }
  for (ValueId v : c.checked) g.mark_output(v);
  return c;
}

std::vector<Tensor> run_case(const OpCase& c, Backend& backend) {
  Session sess(c.g, backend);
  for (const auto& [v, t] : c.feeds) sess.write(v, t);
  sess.run(StepContext{7, 1234, 0});
  std::vector<Tensor> out;
  for (ValueId v : c.checked) out.push_back(sess.read(v));
  return out;
}

// A two-layer MLP with BatchNorm and Dropout (so the random stream is covered too), trained by Adam.
struct Mlp {
  ValueId x, y;
  std::unique_ptr<Trainer> trainer;
};
Mlp make_mlp(Backend& backend, int batch) {
  Graph g;
  Mlp m;
  m.x = g.add_input("x", DType::f32, Shape{batch, 2});
  m.y = g.add_input("y", DType::i64, Shape{batch});
  models::LayerContext ctx{g, 3};
  ValueId h = models::dense(ctx, m.x, 64, "relu", "d1");
  ValueId ratio = g.add_constant("dropout/ratio", Tensor::scalar<float>(0.2f));
  ValueId mode = g.add_constant("dropout/training", Tensor::scalar<bool>(true));
  h = g.op("Dropout", {h, ratio, mode});
  h = models::dense(ctx, h, 64, "gelu", "d2");
  ValueId logits = models::dense(ctx, h, 3, "linear", "d3");
  ValueId loss = g.op("SoftmaxCrossEntropyLoss", {logits, m.y});
  TrainingOptions opt;
  opt.optimizer.kind = "adam";
  TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
  m.trainer = std::make_unique<Trainer>(std::move(tg), backend, 3, opt);
  return m;
}

std::vector<float> train_mlp(Backend& backend, int steps) {
  const int batch = 64;
  Mlp m = make_mlp(backend, batch);
  data::Synthetic ds = data::spirals(batch * 4, 3, 0.1f, 5);
  std::vector<float> losses;
  for (int s = 0; s < steps; ++s) {
    Tensor bx(DType::f32, Shape{batch, 2}), by(DType::i64, Shape{batch});
    const int64_t first = (s % 4) * batch;
    std::memcpy(bx.raw(), ds.x.data<float>() + 2 * first, bx.nbytes());
    std::memcpy(by.raw(), ds.y.data<int64_t>() + first, by.nbytes());
    m.trainer->feed(m.x, bx);
    m.trainer->feed(m.y, by);
    losses.push_back(m.trainer->step(0.01f));
  }
  return losses;
}

}  // namespace

TEST_SUITE("cuda") {
  TEST_CASE("cuda: every registered op, forward and gradients, equals the CPU") {
    auto cpu = make_cpu_backend();
    auto gpu = cuda_backend(false);
    int cases = 0, native = 0, fallback = 0;
    Graph probe_graph;
    for (const auto& [name, s] : OpRegistry::global().all()) {
      if (!s.examples_fn()) continue;
      Node probe;
      probe.op = name;
      (gpu->supports(probe_graph, probe) ? native : fallback) += 1;
      std::vector<OpExample> examples = s.examples_fn()();
      // Each example as written (f64: the kernels' arithmetic) and in f32 (the single-precision paths), where
      // the op takes f32 (an op whose schema refuses the f32 form keeps only the first).
      const size_t written = examples.size();
      for (size_t i = 0; i < written; ++i) {
        OpExample f;
        if (ops::as_f32(examples[i], &f)) examples.push_back(std::move(f));
      }
      for (size_t i = 0; i < examples.size(); ++i) {
        const OpExample& e = examples[i];
        CAPTURE(name);
        CAPTURE(e.label);
        const bool f32 = i >= written;
        OpCase c;
        try {
          c = build_case(s, e);
        } catch (const InputError&) {
          if (f32) continue;
          throw;
        }
        std::vector<Tensor> want = run_case(c, *cpu), got = run_case(c, *gpu);
        for (size_t k = 0; k < want.size(); ++k) {
          CAPTURE(c.g->value(c.checked[k]).name);
          if (!is_float(want[k].dtype())) {
            CHECK(std::memcmp(want[k].raw(), got[k].raw(), want[k].nbytes()) == 0);
            continue;
          }
          CHECK(relative_difference(want[k], got[k]) <= (f32 ? kTolerance32 : kTolerance));
        }
        ++cases;
      }
    }
    MESSAGE(cases << " op examples compared; ops with examples: " << native << " with CUDA kernels, "
                  << fallback << " on the host fallback");
    CHECK(cases > 50);
  }

  TEST_CASE(
      "cuda: the bias kernels (a convolution's bias and gradient, a Dense layer's), f32 and bf16, bitwise") {
    // The op examples check these kernels in f32 through Conv; bf16 (the default precision from sm_80 on) is
    // checked here, on shapes that take each path: rows shorter and longer than a block, rows of one element,
    // one chunk per channel and several (with a workspace), and none (without). The values are multiples of
    // 1/8 in [-8, 8]: the bias adds are exact in bf16, the channel sums exact in f32 and double, so the
    // expected bf16 sum is the exact one rounded to nearest even.
    auto bits = [](float v) {
      uint32_t u;
      std::memcpy(&u, &v, 4);
      return u;
    };
    auto to_bf16 = [&](const std::vector<float>& v) {  // round to nearest even
      std::vector<uint16_t> out(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        const uint32_t u = bits(v[i]);
        out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
      }
      return out;
    };
    auto device = [](const void* host, size_t bytes) {
      void* d = nullptr;
      REQUIRE(cudaMalloc(&d, bytes) == cudaSuccess);
      REQUIRE(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
      return d;
    };
    auto read = [](const void* d, size_t bytes) {
      std::vector<unsigned char> out(bytes);
      REQUIRE(cudaMemcpy(out.data(), d, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
      return out;
    };
    auto bytes_of = [](const auto& v) {
      const auto* p = reinterpret_cast<const unsigned char*>(v.data());
      return std::vector<unsigned char>(p, p + v.size() * sizeof(v[0]));
    };
    REQUIRE(cudaSetDevice(0) == cudaSuccess);
    const size_t workspace_bytes = 1 << 20;
    void* workspace = nullptr;
    REQUIRE(cudaMalloc(&workspace, workspace_bytes) == cudaSuccess);
    struct Sizes {
      int64_t batch, channels, spatial;
    };
    for (Sizes z : {Sizes{3, 5, 37}, Sizes{3, 2, 6000}, Sizes{2, 3, 40000}, Sizes{700, 3, 1},
                    Sizes{64, 7, 300}, Sizes{256, 3, 100}, Sizes{256, 2, 256}}) {
      CAPTURE(z.batch);
      CAPTURE(z.channels);
      CAPTURE(z.spatial);
      const int64_t total = z.batch * z.channels * z.spatial;
      std::vector<float> y(total), b(z.channels), added(total), sums(z.channels, 0.0f);
      for (int64_t i = 0; i < total; ++i) y[i] = static_cast<float>((i * 37) % 129 - 64) / 8.0f;
      for (int64_t c = 0; c < z.channels; ++c) b[c] = static_cast<float>(3 * c - 7) / 8.0f;
      for (int64_t i = 0; i < total; ++i) {
        added[i] = y[i] + b[(i / z.spatial) % z.channels];
        sums[(i / z.spatial) % z.channels] += y[i];
      }
      for (cuda::ElemType type : {cuda::ElemType::f32, cuda::ElemType::bf16})
        for (bool with_workspace : {true, false}) {
          const bool f32 = type == cuda::ElemType::f32;
          CAPTURE(f32);
          CAPTURE(with_workspace);
          const std::vector<unsigned char> yb = f32 ? bytes_of(y) : bytes_of(to_bf16(y));
          const std::vector<unsigned char> bb = f32 ? bytes_of(b) : bytes_of(to_bf16(b));
          const size_t width = f32 ? 4 : 2;
          void* dy = device(yb.data(), yb.size());
          void* db = device(bb.data(), bb.size());
          void* dsum = device(bb.data(), bb.size());  // overwritten
          CHECK(cuda::launch_channel_sums(type, dy, dsum, z.batch, z.channels, z.spatial,
                                          with_workspace ? workspace : nullptr, workspace_bytes,
                                          nullptr) == cudaSuccess);
          CHECK(cuda::launch_channel_bias(type, dy, db, z.batch, z.channels, z.spatial, nullptr) ==
                cudaSuccess);
          REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
          CHECK(read(dy, total * width) == (f32 ? bytes_of(added) : bytes_of(to_bf16(added))));
          CHECK(read(dsum, z.channels * width) == (f32 ? bytes_of(sums) : bytes_of(to_bf16(sums))));
          for (void* p : {dy, db, dsum}) cudaFree(p);
        }
    }
    // A Dense layer's bias gradient (GemmGradWeightBias): column sums, in chunks of rows and in one.
    for (auto [m, n] : {std::pair<int64_t, int64_t>{256, 512}, {17, 3}, {1, 10}}) {
      CAPTURE(m);
      CAPTURE(n);
      std::vector<float> dz(m * n), sums(n, 0.0f);
      for (int64_t i = 0; i < m * n; ++i) dz[i] = static_cast<float>((i * 53) % 129 - 64) / 8.0f;
      for (int64_t i = 0; i < m * n; ++i) sums[i % n] += dz[i];
      for (cuda::ElemType type : {cuda::ElemType::f32, cuda::ElemType::bf16})
        for (bool with_workspace : {true, false}) {
          const bool f32 = type == cuda::ElemType::f32;
          CAPTURE(f32);
          CAPTURE(with_workspace);
          const std::vector<unsigned char> zb = f32 ? bytes_of(dz) : bytes_of(to_bf16(dz));
          const size_t width = f32 ? 4 : 2;
          void* d = device(zb.data(), zb.size());
          void* db = nullptr;
          REQUIRE(cudaMalloc(&db, n * width) == cudaSuccess);
          CHECK(cuda::launch_column_sums(type, d, db, m, n, with_workspace ? workspace : nullptr,
                                         workspace_bytes, nullptr) == cudaSuccess);
          REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
          CHECK(read(db, n * width) == (f32 ? bytes_of(sums) : bytes_of(to_bf16(sums))));
          cudaFree(d);
          cudaFree(db);
        }
    }
    // Nothing to sum: zeros.
    void* dz = nullptr;
    REQUIRE(cudaMalloc(&dz, 8) == cudaSuccess);
    REQUIRE(cudaMemset(dz, 0xff, 8) == cudaSuccess);
    CHECK(cuda::launch_channel_sums(cuda::ElemType::f32, dz, dz, 0, 2, 7, workspace, workspace_bytes,
                                    nullptr) == cudaSuccess);
    CHECK(read(dz, 8) == std::vector<unsigned char>(8, 0));
    cudaFree(dz);
    cudaFree(workspace);
  }

  TEST_CASE("cuda: GatherGrad of embedding-sized tables equals the CPU bitwise (repeats summed in order)") {
    // The op examples' tables are small; these take the warp-per-row kernel over many tiles of indices, with
    // several column groups, with an outer axis, and the column kernel that large tables fall back to. Ids
    // repeat often (a vocabulary's common words), so each row sums many dy rows in index order.
    auto cpu = make_cpu_backend();
    auto gpu = cuda_backend(false);
    struct Case {
      std::vector<int64_t> data, indices;
      int64_t axis, distinct;
    };
    for (const Case& k : {Case{{10000, 16}, {64, 200}, 0, 400}, Case{{50, 300}, {3000}, 0, 50},
                          Case{{3, 40, 5}, {2000}, 1, 40}, Case{{300000, 4}, {4096}, 0, 300000}}) {
      const Shape data(k.data), indices(k.indices);
      CAPTURE(data.str());
      CAPTURE(indices.str());
      std::vector<int64_t> ids(static_cast<size_t>(indices.numel()));
      uint64_t state = 12345;
      for (int64_t& id : ids) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        id = static_cast<int64_t>((state >> 33) % static_cast<uint64_t>(k.distinct));
        if ((state >> 20) % 7 == 0) id -= data[static_cast<int>(k.axis)];  // negative: counts from the end
      }
      std::vector<int64_t> dy_dims(k.data.begin(), k.data.begin() + k.axis);
      dy_dims.insert(dy_dims.end(), k.indices.begin(), k.indices.end());
      dy_dims.insert(dy_dims.end(), k.data.begin() + k.axis + 1, k.data.end());
      OpCase c;
      c.g = std::make_shared<Graph>();
      Graph& g = *c.g;
      const ValueId dy = g.add_input("dy", DType::f32, Shape(dy_dims));
      c.feeds.emplace_back(dy, ops::random_tensor(Shape(dy_dims), -1, 1, 29, DType::f32));
      const ValueId at = g.add_constant("indices", Tensor::from<int64_t>(indices, ids));
      c.checked = {g.op("GatherGrad", {dy, at}, {{"axis", k.axis}, {"shape", k.data}})};
      g.mark_output(c.checked[0]);
      const std::vector<Tensor> want = run_case(c, *cpu), got = run_case(c, *gpu);
      CHECK(relative_difference(want[0], got[0]) == 0.0);
      REQUIRE(want[0].nbytes() == got[0].nbytes());
      CHECK(std::memcmp(want[0].raw(), got[0].raw(), want[0].nbytes()) == 0);
    }
  }

  TEST_CASE("cuda: GlobalAveragePool and its gradient over large planes equal the CPU") {
    // Planes of up to 150,000 elements (an image pooled whole after few convolutions): one window of cuDNN's
    // pooling would be that large; the reductions split them.
    auto cpu = make_cpu_backend();
    auto gpu = cuda_backend(false);
    for (Shape xs : {Shape{2, 3, 64, 64}, Shape{1, 2, 1, 3000}, Shape{4, 8, 7, 7}, Shape{1, 1, 384, 384}}) {
      CAPTURE(xs.str());
      OpCase c;
      c.g = std::make_shared<Graph>();
      Graph& g = *c.g;
      const ValueId in = g.add_input("x", DType::f32, xs);
      c.feeds.emplace_back(in, ops::random_tensor(xs, -1, 1, 31, DType::f32));
      const ValueId mean = g.op("GlobalAveragePool", {in});
      const ValueId dy = g.add_constant("dy", ops::random_tensor(g.value(mean).shape, -1, 1, 32, DType::f32));
      c.checked = {mean, g.op("GlobalAveragePoolGrad", {dy}, {{"input_shape", xs.dims()}})};
      for (ValueId v : c.checked) g.mark_output(v);
      const std::vector<Tensor> want = run_case(c, *cpu), got = run_case(c, *gpu);
      CHECK(relative_difference(want[0], got[0]) <= kTolerance);
      CHECK(relative_difference(want[1], got[1]) == 0.0);  // dy / plane, as the CPU divides
    }
  }

  TEST_CASE(
      "cuda: ReduceMax and its gradient over NaN equal the CPU exactly (NaN propagates, dy to the first)") {
    // Groups of 5, 100 and 6000 elements take one thread, a warp and a block (with split partials) per
    // output.
    auto cpu = make_cpu_backend();
    auto gpu = cuda_backend(false);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (Shape xs : {Shape{4, 5, 3}, Shape{3, 100, 2}, Shape{2, 6000, 1}}) {
      CAPTURE(xs.str());
      Tensor x = ops::random_tensor(xs, -1, 1, 23, DType::f32);
      const int64_t n = xs[1], inner = xs[2];
      // Element `row` of group o (the output [o / inner, o % inner]).
      auto at = [&](int64_t o, int64_t row) { return ((o / inner) * n + row) * inner + o % inner; };
      // Group 0: NaN first; group 1: NaN in the middle and last (the first one later in the block's thread
      // order than the second: row 3000 of 6000 falls to warp 5, row 5999 to warp 3); group 2: none; the
      // rest: NaN last.
      x.set_f64(at(0, 0), nan);
      x.set_f64(at(1, n / 2), nan);
      x.set_f64(at(1, n - 1), nan);
      for (int64_t o = 3; o < xs[0] * inner; ++o) x.set_f64(at(o, n - 1), nan);
      OpCase c;
      c.g = std::make_shared<Graph>();
      Graph& g = *c.g;
      const ValueId in = g.add_input("x", DType::f32, xs);
      c.feeds.emplace_back(in, x);
      Tensor axes(DType::i64, Shape{1});
      axes.set_f64(0, 1);
      const ValueId top =
          g.op("ReduceMax", {in, g.add_constant("axes", std::move(axes))}, {{"keepdims", int64_t{1}}});
      const ValueId dy = g.add_constant("dy", ops::random_tensor(g.value(top).shape, 1, 2, 24, DType::f32));
      c.checked = {top, g.op("ReduceMaxGrad", {in, dy}, {{"axes", std::vector<int64_t>{1}}})};
      for (ValueId v : c.checked) g.mark_output(v);
      std::vector<Tensor> want = run_case(c, *cpu), got = run_case(c, *gpu);
      CHECK(std::isnan(want[0].get_f64(0)));
      CHECK(std::isnan(want[0].get_f64(1)));
      for (size_t k = 0; k < want.size(); ++k) CHECK(relative_difference(want[k], got[k]) == 0.0);
    }
  }

  TEST_CASE("cuda: training steps equal the CPU's within 1e-4") {
    auto cpu = make_cpu_backend();
    auto gpu = cuda_backend();
    std::vector<float> want = train_mlp(*cpu, 20), got = train_mlp(*gpu, 20);
    for (size_t i = 0; i < want.size(); ++i) {
      CAPTURE(i);
      CHECK(std::fabs(want[i] - got[i]) <= 1e-4 * std::max(1.0f, std::fabs(want[i])));
    }
    CHECK(got.back() < got.front());
  }

  TEST_CASE("cuda: graph replay equals eager launches bitwise") {
    auto eager = cuda_backend(false);
    auto graph = cuda_backend(true);
    std::vector<float> a = train_mlp(*eager, 12), b = train_mlp(*graph, 12);
    CHECK(a == b);
  }

  TEST_CASE("cuda: steps after warm-up allocate nothing") {
    auto gpu = cuda_backend();
    const int batch = 64;
    Mlp m = make_mlp(*gpu, batch);
    // One batch: the first 64 of the spirals' 3 x 64 points (what it learns does not matter here).
    data::Synthetic ds = data::spirals(batch, 3, 0.1f, 5);
    Tensor bx(DType::f32, Shape{batch, 2}), by(DType::i64, Shape{batch});
    std::memcpy(bx.raw(), ds.x.data<float>(), bx.nbytes());
    std::memcpy(by.raw(), ds.y.data<int64_t>(), by.nbytes());
    m.trainer->feed(m.x, bx);
    m.trainer->feed(m.y, by);
    m.trainer->step(0.01f);
    m.trainer->step(0.01f);  // the first replay: captured here
    gpu->synchronize();
    size_t free_before = 0, total = 0;
    REQUIRE(cudaMemGetInfo(&free_before, &total) == cudaSuccess);
    const uint64_t calls = cuda_allocation_calls();
    for (int i = 0; i < 20; ++i) {
      m.trainer->feed(m.x, bx);
      m.trainer->feed(m.y, by);
      m.trainer->step(0.01f);
    }
    gpu->synchronize();
    size_t free_after = 0;
    REQUIRE(cudaMemGetInfo(&free_after, &total) == cudaSuccess);
    CHECK(cuda_allocation_calls() == calls);
    CHECK(free_after == free_before);
  }
}
