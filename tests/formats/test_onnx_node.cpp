// ONNX backend node tests: every test of ONNX's node test data whose ops the engine registers is imported,
// run on the CPU backend and compared with the reference outputs. Known gaps are listed, with reasons, in
// tests/onnx_node_exclusions.txt. Environment: TRAINER_ONNX_NODE_DIR (data folder), TRAINER_ONNX_NODE_FILTER
// (run only tests whose name contains it), TRAINER_ONNX_NODE_VERBOSE=1 (print every result),
// TRAINER_ONNX_NODE_RECHECK=1 (also run excluded tests, to find exclusions that are no longer needed).
#include <doctest/doctest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/train/session.h"
#include "formats/onnx_import.h"
#include "formats/onnx_tensor.h"

using namespace trainer;
using namespace trainer::engine;
using namespace trainer::formats;
namespace fs = std::filesystem;

namespace {

constexpr double kRtol = 1e-3;
constexpr double kAtol = 1e-5;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

struct Exclusion {
  std::string reason;
  int line = 0;
};

// `<test_name>  # reason` per line; blank lines and lines starting with '#' are comments. A reason is
// required.
std::map<std::string, Exclusion> read_exclusions(const std::string& path,
                                                 std::vector<std::string>* problems) {
  std::map<std::string, Exclusion> out;
  std::ifstream f(path);
  if (!f) {
    problems->push_back(fmt::format("{}: cannot open the exclusion list", path));
    return out;
  }
  std::string line;
  for (int no = 1; std::getline(f, line); ++no) {
    size_t hash = line.find('#');
    std::string head = line.substr(0, hash);
    head.erase(head.find_last_not_of(" \t\r") + 1);
    head.erase(0, head.find_first_not_of(" \t"));
    if (head.empty()) continue;
    std::string reason = hash == std::string::npos ? "" : line.substr(hash + 1);
    reason.erase(0, reason.find_first_not_of(" \t"));
    if (reason.empty()) problems->push_back(fmt::format("{}:{}: '{}' has no reason", path, no, head));
    if (head.find_first_of(" \t") != std::string::npos)
      problems->push_back(fmt::format("{}:{}: expected '<test_name>  # reason'", path, no));
    if (out.count(head)) problems->push_back(fmt::format("{}:{}: '{}' is listed twice", path, no, head));
    out[head] = {reason, no};
  }
  return out;
}

// Inputs ONNX passes as tensors but which decide shapes or axes; our static-shape IR needs them as constants,
// so a test feeding them from its data has them baked in from that data.
const std::map<std::string, std::vector<int>>& shape_operands() {
  static const std::map<std::string, std::vector<int>> m = {
      {"Reshape", {1}},
      {"Expand", {1}},
      {"Tile", {1}},
      {"Slice", {1, 2, 3, 4}},
      {"Unsqueeze", {1}},
      {"Squeeze", {1}},
      {"Pad", {1, 2, 3}},
      {"TopK", {1}},
      {"OneHot", {1}},
      {"Range", {0, 1, 2}},
      {"ConstantOfShape", {0}},
      {"Resize", {1, 2, 3}},
      {"Upsample", {1}},
      {"HannWindow", {0}},
      {"If", {0}},
      {"Compress", {1}},
      {"NonZero", {0}},
      {"MaxUnpool", {2}},
      {"DFT", {1, 2}},
      {"STFT", {1, 3}},
      {"MelWeightMatrix", {0, 1, 2, 3, 4}},
      {"HammingWindow", {0}},
      {"BlackmanWindow", {0}},
      {"Split", {1}},
      {"CumSum", {1}},
      {"Dropout", {1, 2}},
      {"Trilu", {1}},
      {"CenterCropPad", {1}},
      {"ReduceSum", {1}},
      {"ReduceMean", {1}},
      {"ReduceMax", {1}},
      {"ReduceMin", {1}},
      {"ReduceProd", {1}},
      {"ReduceL1", {1}},
      {"ReduceL2", {1}},
      {"ReduceLogSum", {1}},
      {"ReduceLogSumExp", {1}},
      {"ReduceSumSquare", {1}},
  };
  return m;
}

// For the crash report: the test running when a signal arrives. The handler names it, then hands the signal
// to the handler it replaced (doctest's, which reports the test case).
char g_current_case[512] = "";
constexpr int kFatalSignals[] = {SIGSEGV, SIGFPE, SIGABRT};
void (*g_previous_handlers[3])(int) = {SIG_DFL, SIG_DFL, SIG_DFL};

void on_fatal_signal(int sig) {
  const char prefix[] = "\nONNX node test crashed in: ";
  ssize_t ignored = write(2, prefix, sizeof(prefix) - 1);
  ignored = write(2, g_current_case, strnlen(g_current_case, sizeof(g_current_case)));
  ignored = write(2, "\n", 1);
  (void)ignored;
  for (int i = 0; i < 3; ++i)
    if (kFatalSignals[i] == sig) std::signal(sig, g_previous_handlers[i]);
  std::raise(sig);
}

std::vector<fs::path> sorted_entries(const fs::path& dir, const std::string& prefix) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
  // input_10.pb sorts after input_9.pb.
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) {
    std::string sa = a.filename().string(), sb = b.filename().string();
    return sa.size() != sb.size() ? sa.size() < sb.size() : sa < sb;
  });
  return out;
}

// Empty when `got` matches `want`, else what differs.
std::string compare(const Tensor& got, const Tensor& want, const std::string& name) {
  if (got.dtype() != want.dtype())
    return fmt::format("output '{}' is {}, expected {}", name, dtype_name(got.dtype()),
                       dtype_name(want.dtype()));
  if (got.shape() != want.shape())
    return fmt::format("output '{}' has shape {}, expected {}", name, got.shape().str(), want.shape().str());
  int64_t bad = 0, first = -1;
  double worst = 0;
  bool exact = !is_float(want.dtype());
  for (int64_t i = 0; i < want.numel(); ++i) {
    bool ok;
    if (exact) {
      ok = got.get_i64(i) == want.get_i64(i);
    } else {
      double g = got.get_f64(i), w = want.get_f64(i);
      if (std::isnan(w) || std::isnan(g))
        ok = std::isnan(w) && std::isnan(g);
      else if (std::isinf(w) || std::isinf(g))
        ok = g == w;
      else
        ok = std::abs(g - w) <= kAtol + kRtol * std::abs(w);
      if (!ok && std::isfinite(g) && std::isfinite(w)) worst = std::max(worst, std::abs(g - w));
    }
    if (!ok && bad++ == 0) first = i;
  }
  if (bad == 0) return {};
  return fmt::format(
      "output '{}': {} of {} values differ; first at {}: got {}, expected {}; max abs error {:.3g}", name,
      bad, want.numel(), first, got.get_f64(first), want.get_f64(first), worst);
}

// Reads a test data tensor. ONNX's data stores bfloat16 tensors as uint16, numpy having no bfloat16; the
// model's declared type tells them apart.
Tensor read_test_tensor(const fs::path& path, const onnx::ValueInfoProto& declared) {
  onnx::TensorProto proto;
  std::string bytes = read_file_bytes(path.string());
  if (!proto.ParseFromString(bytes)) throw InputError(path.string(), "not a serialized TensorProto");
  if (proto.data_type() == onnx::TensorProto::UINT16 &&
      declared.type().tensor_type().elem_type() == onnx::TensorProto::BFLOAT16)
    proto.set_data_type(onnx::TensorProto::BFLOAT16);
  return tensor_from_onnx(proto, path.string());
}

// Runs one test folder; returns an empty string when every data set matches.
std::string run_case(const fs::path& dir, const onnx::ModelProto& model, Backend& cpu) {
  std::set<std::string> initializers;
  for (const auto& init : model.graph().initializer()) initializers.insert(init.name());
  std::vector<const onnx::ValueInfoProto*> inputs;
  for (const auto& in : model.graph().input()) {
    if (initializers.count(in.name())) continue;
    if (!in.type().has_tensor_type()) return fmt::format("graph input '{}' is not a tensor", in.name());
    inputs.push_back(&in);
  }
  std::set<std::string> to_bake;
  for (const auto& n : model.graph().node()) {
    auto it = shape_operands().find(n.op_type());
    if (it == shape_operands().end()) continue;
    for (int i : it->second)
      if (i < n.input_size() && !n.input(i).empty()) to_bake.insert(n.input(i));
  }

  std::vector<fs::path> sets = sorted_entries(dir, "test_data_set_");
  if (sets.empty()) return "no test_data_set_* folder";
  for (const fs::path& set : sets) {
    std::vector<fs::path> input_files = sorted_entries(set, "input_");
    std::vector<fs::path> output_files = sorted_entries(set, "output_");
    if (input_files.size() != inputs.size())
      return fmt::format("{}: {} input files for {} graph inputs", set.filename().string(),
                         input_files.size(), inputs.size());
    OnnxImportOptions opt;
    std::vector<std::pair<std::string, Tensor>> fed;
    for (size_t i = 0; i < input_files.size(); ++i) {
      const std::string& name = inputs[i]->name();
      Tensor t = read_test_tensor(input_files[i], *inputs[i]);
      if (to_bake.count(name))
        opt.constant_inputs[name] = std::move(t);
      else
        fed.emplace_back(name, std::move(t));
    }
    OnnxImportResult r = import_onnx_model(model, (dir / "model.onnx").string(), opt, dir.string());
    if (output_files.size() != r.outputs.size())
      return fmt::format("{}: {} output files for {} graph outputs", set.filename().string(),
                         output_files.size(), r.outputs.size());
    std::vector<ValueId> outputs = r.outputs;
    auto graph = std::make_shared<const Graph>(std::move(r.graph));
    Session session(graph, cpu);
    for (auto& [name, t] : fed) {
      ValueId v = graph->find(name);
      if (session.program().slots.at(v).assigned) session.write(v, t);
    }
    session.run({});
    for (size_t j = 0; j < outputs.size(); ++j) {
      Tensor want = read_test_tensor(output_files[j], model.graph().output(static_cast<int>(j)));
      std::string diff = compare(session.read(outputs[j]), want, graph->value(outputs[j]).name);
      if (!diff.empty()) return fmt::format("{}: {}", set.filename().string(), diff);
    }
  }
  return {};
}

}  // namespace

TEST_SUITE("onnx_node") {
  TEST_CASE("ONNX backend node tests pass on the CPU backend") {
    const fs::path data_dir = env_or("TRAINER_ONNX_NODE_DIR", TRAINER_ONNX_NODE_DATA);
    const std::string filter = env_or("TRAINER_ONNX_NODE_FILTER", "");
    const bool verbose = env_or("TRAINER_ONNX_NODE_VERBOSE", "0") != "0";
    const bool recheck = env_or("TRAINER_ONNX_NODE_RECHECK", "0") != "0";
    if (!fs::is_directory(data_dir)) {
      MESSAGE("ONNX node test data not found at " << data_dir.string()
                                                  << "; skipped (install libonnx-testdata)");
      return;
    }
    const std::string exclusions_path = std::string(TRAINER_SOURCE_DIR) + "/tests/onnx_node_exclusions.txt";
    std::vector<std::string> problems;
    std::map<std::string, Exclusion> exclusions = read_exclusions(exclusions_path, &problems);

    std::vector<fs::path> dirs;
    for (const auto& e : fs::directory_iterator(data_dir))
      if (e.is_directory()) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end());
    std::set<std::string> names;
    for (const auto& d : dirs) names.insert(d.filename().string());
    for (const auto& [name, ex] : exclusions)
      if (!names.count(name))
        problems.push_back(
            fmt::format("{}:{}: '{}' is not an ONNX node test", exclusions_path, ex.line, name));

    auto cpu = make_cpu_backend();
    Graph empty;
    for (int i = 0; i < 3; ++i) g_previous_handlers[i] = std::signal(kFatalSignals[i], on_fatal_signal);

    int total = 0, passed = 0, excluded = 0, skipped_ops = 0, skipped_kernels = 0, stale = 0;
    std::set<std::string> missing_ops, missing_kernels;
    std::vector<std::string> failures;
    for (const fs::path& dir : dirs) {
      const std::string name = dir.filename().string();
      if (!filter.empty() && name.find(filter) == std::string::npos) continue;
      onnx::ModelProto model;
      try {
        parse_onnx_model(read_file_bytes((dir / "model.onnx").string()), (dir / "model.onnx").string(),
                         &model);
      } catch (const InputError& e) {
        failures.push_back(fmt::format("{}: {}", name, e.what()));
        ++total;
        continue;
      }
      std::vector<UnsupportedNode> unsupported = find_unsupported_nodes(model);
      if (!unsupported.empty()) {
        ++skipped_ops;
        for (const auto& u : unsupported)
          missing_ops.insert(u.domain.empty() ? u.op_type : u.domain + "." + u.op_type);
        continue;
      }
      // A registered op whose CPU kernel has not landed yet is counted apart from real failures.
      bool kernels = true;
      for (const auto& n : model.graph().node()) {
        if (imported_as_other_ops(n)) continue;  // constants, or other ops whose kernels are checked
        Node probe;
        probe.op = n.op_type();
        if (!cpu->supports(empty, probe)) {
          kernels = false;
          missing_kernels.insert(n.op_type());
        }
      }
      if (!kernels) {
        ++skipped_kernels;
        continue;
      }
      auto ex = exclusions.find(name);
      if (ex != exclusions.end() && !recheck) {
        ++excluded;
        continue;
      }
      snprintf(g_current_case, sizeof(g_current_case), "%s", name.c_str());
      std::string result;
      try {
        result = run_case(dir, model, *cpu);
      } catch (const InputError& e) {
        result = e.hint().empty() ? e.what() : fmt::format("{} (hint: {})", e.what(), e.hint());
      } catch (const std::exception& e) {
        result = e.what();
      }
      if (ex != exclusions.end()) {
        ++excluded;
        if (result.empty()) {
          ++stale;
          std::cout << "excluded test passes now, remove its exclusion: " << name << "\n";
        } else if (verbose) {
          std::cout << "excluded, still fails: " << name << ": " << result << "\n";
        }
        continue;
      }
      ++total;
      if (result.empty()) {
        ++passed;
        if (verbose) std::cout << "pass " << name << "\n";
      } else {
        failures.push_back(fmt::format("{}: {}", name, result));
        if (verbose) std::cout << "FAIL " << name << ": " << result << "\n";
      }
    }
    g_current_case[0] = '\0';
    for (int i = 0; i < 3; ++i) std::signal(kFatalSignals[i], g_previous_handlers[i]);

    std::string summary = fmt::format(
        "ONNX node tests: {}/{} passed; {} excluded{}; {} skipped for {} ops the engine lacks; {} skipped "
        "for {} "
        "ops without a CPU kernel",
        passed, total, excluded, recheck ? fmt::format(" ({} of them pass now)", stale) : "", skipped_ops,
        missing_ops.size(), skipped_kernels, missing_kernels.size());
    std::cout << summary << "\n";
    if (verbose || filter.empty()) {
      std::cout << "ops the engine lacks: " << fmt::format("{}", fmt::join(missing_ops, " ")) << "\n";
      if (!missing_kernels.empty())
        std::cout << "ops without a CPU kernel: " << fmt::format("{}", fmt::join(missing_kernels, " "))
                  << "\n";
    }
    MESSAGE(summary);
    for (const auto& p : problems) FAIL_CHECK(p);
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(passed == total);
  }
}
