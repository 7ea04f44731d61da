// CPU backend benchmark: GFLOP/s of GEMM and convolution (forward and both gradients) run through the engine
// (Graph + Session), one JSON line per case on stdout. tools/bench/run.sh compares the GEMMs with numpy;
// tools/bench/bench_fit.py takes the GEMM as the ceiling of a training step.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;
using V = std::vector<int64_t>;

namespace {

struct Options {
  int threads = 0;           // 0: every hardware thread
  double min_seconds = 0.3;  // per timing repeat
  int repeats = 5;
  bool gemm = true, conv = true;  // --cases gemm,conv
};

struct Case {
  std::string name;  // "gemm", "conv_fwd", ...
  std::string shape;
  double flops = 0;  // per run
  std::shared_ptr<Graph> graph;
  std::vector<ValueId> inputs;
};

struct Timing {
  double ms = 0;         // the best repeat's mean: on a shared machine other work only ever adds time
  double median_ms = 0;  // the median single run over all repeats: robust when other work preempts some runs
};

// Milliseconds per run of a one-node graph over `repeats` timings after warm-up, each running for at least
// min_seconds.
Timing time_ms(const Case& c, Backend& backend, const Options& o) {
  Session sess(c.graph, backend);
  for (ValueId v : c.inputs) {
    const Value& val = c.graph->value(v);
    sess.write(v, ops::random_tensor(val.shape, -1, 1, static_cast<uint64_t>(v) + 1, val.dtype));
  }
  using clock = std::chrono::steady_clock;
  for (int i = 0; i < 3; ++i) sess.run({});
  std::vector<double> ms, single_ms;
  single_ms.reserve(1 << 16);  // growing it between runs would time the allocator
  for (int r = 0; r < o.repeats; ++r) {
    int64_t runs = 0;
    auto t0 = clock::now();
    double elapsed = 0;
    do {
      auto t1 = clock::now();
      sess.run({static_cast<uint64_t>(runs), 1});
      ++runs;
      auto t2 = clock::now();
      single_ms.push_back(1e3 * std::chrono::duration<double>(t2 - t1).count());
      elapsed = std::chrono::duration<double>(t2 - t0).count();
    } while (elapsed < o.min_seconds);
    ms.push_back(1e3 * elapsed / static_cast<double>(runs));
  }
  std::nth_element(single_ms.begin(), single_ms.begin() + single_ms.size() / 2, single_ms.end());
  return {*std::min_element(ms.begin(), ms.end()), single_ms[single_ms.size() / 2]};
}

Case gemm_case(int64_t m, int64_t k, int64_t n) {
  Case c{"gemm", fmt::format("{}x{}x{}", m, k, n), 2.0 * m * k * n, std::make_shared<Graph>(), {}};
  ValueId a = c.graph->add_input("a", DType::f32, Shape{m, k});
  ValueId b = c.graph->add_input("b", DType::f32, Shape{k, n});
  c.graph->mark_output(c.graph->op("MatMul", {a, b}));
  c.inputs = {a, b};
  return c;
}

// A convolution and its two gradient ops, each timed alone. pads applies to every side.
std::vector<Case> conv_cases(int64_t n, int64_t ch, int64_t hw, int64_t m, int64_t k, int64_t pad) {
  int64_t out = hw + 2 * pad - k + 1;
  double flops = 2.0 * n * m * out * out * ch * k * k;
  std::string shape = fmt::format("N{} C{} {}x{} -> {} {}x{} pad {}", n, ch, hw, hw, m, k, k, pad);
  V pads = {pad, pad, pad, pad};
  std::vector<Case> cases;
  {
    Case c{"conv_fwd", shape, flops, std::make_shared<Graph>(), {}};
    ValueId x = c.graph->add_input("x", DType::f32, Shape{n, ch, hw, hw});
    ValueId w = c.graph->add_input("w", DType::f32, Shape{m, ch, k, k});
    ValueId b = c.graph->add_input("b", DType::f32, Shape{m});
    c.graph->mark_output(c.graph->op("Conv", {x, w, b}, {{"pads", pads}}));
    c.inputs = {x, w, b};
    cases.push_back(c);
  }
  {
    Case c{"conv_bwd_data", shape, flops, std::make_shared<Graph>(), {}};
    ValueId dy = c.graph->add_input("dy", DType::f32, Shape{n, m, out, out});
    ValueId w = c.graph->add_input("w", DType::f32, Shape{m, ch, k, k});
    c.graph->mark_output(
        c.graph->op("ConvGradInput", {dy, w},
                    {{"pads", pads}, {"kernel_shape", V{k, k}}, {"input_shape", V{n, ch, hw, hw}}}));
    c.inputs = {dy, w};
    cases.push_back(c);
  }
  {
    Case c{"conv_bwd_weights", shape, flops, std::make_shared<Graph>(), {}};
    ValueId dy = c.graph->add_input("dy", DType::f32, Shape{n, m, out, out});
    ValueId x = c.graph->add_input("x", DType::f32, Shape{n, ch, hw, hw});
    NodeId id = c.graph->add_node("ConvGradWeight", {dy, x}, {{"pads", pads}, {"kernel_shape", V{k, k}}}, 2);
    for (ValueId v : c.graph->node(id).outputs) c.graph->mark_output(v);
    c.inputs = {dy, x};
    cases.push_back(c);
  }
  return cases;
}

[[noreturn]] void usage(const std::string& why, int code = 2) {
  if (!why.empty()) fmt::print(stderr, "bench_cpu: {}\n", why);
  fmt::print(stderr,
             "usage: bench_cpu [--threads N] [--min-seconds S] [--repeats R] [--cases gemm,conv]\n"
             "Prints one JSON line per case: GFLOP/s of GEMM and convolution on the CPU backend.\n");
  std::exit(code);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help") usage("", 0);
    if (i + 1 >= argc) usage(fmt::format("{} needs a value", arg));
    std::string val = argv[++i];
    try {
      if (arg == "--threads")
        o.threads = std::stoi(val);
      else if (arg == "--min-seconds")
        o.min_seconds = std::stod(val);
      else if (arg == "--repeats")
        o.repeats = std::max(1, std::stoi(val));
      else if (arg == "--cases") {
        o.gemm = val.find("gemm") != std::string::npos;
        o.conv = val.find("conv") != std::string::npos;
        if (!o.gemm && !o.conv) usage(fmt::format("--cases takes gemm, conv or gemm,conv, got '{}'", val));
      } else
        usage(fmt::format("unknown option {}", arg));
    } catch (const std::logic_error&) {
      usage(fmt::format("{} takes a number, got '{}'", arg, val));
    }
  }
  return o;
}

}  // namespace

int run_benchmarks(const Options& o) {
  auto backend = make_cpu_backend(CpuOptions{o.threads});
  int threads = omp_get_max_threads();  // what the backend set
  fmt::print(stderr, "bench_cpu on {}\n", backend->description());
  std::vector<Case> cases;
  if (o.gemm) {
    cases.push_back(gemm_case(64, 784, 1024));
    cases.push_back(gemm_case(64, 1024, 512));
  }
  if (o.conv) {
    for (Case& c : conv_cases(64, 1, 28, 32, 3, 0)) cases.push_back(std::move(c));  // MNIST first layer
    for (Case& c : conv_cases(64, 3, 32, 32, 3, 1)) cases.push_back(std::move(c));  // CIFAR-10 first layer
  }
  for (const Case& c : cases) {
    Timing t = time_ms(c, *backend, o);
    fmt::print(
        "{{\"bench\": \"{}\", \"shape\": \"{}\", \"backend\": \"{}\", \"threads\": {}, \"ms\": {:.4f}, "
        "\"gflops\": {:.2f}, \"median_ms\": {:.4f}, \"median_gflops\": {:.2f}}}\n",
        c.name, c.shape, backend->name(), threads, t.ms, c.flops / (t.ms * 1e-3) / 1e9, t.median_ms,
        c.flops / (t.median_ms * 1e-3) / 1e9);
    std::fflush(stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  try {
    return run_benchmarks(o);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_cpu: {}\n", e.what());
    return 1;
  }
}
