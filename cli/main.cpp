// trainer's entry point: parses the command line, runs the subcommand, and alone decides the exit code
// (0 ok, 1 run-time failure, 2 bad input or usage).
#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <cstdio>

#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"trainer: train neural networks from a model description"};
  app.set_version_flag("--version", std::string("trainer ") + TRAINER_VERSION);
  bool list_ops = false;
  app.add_flag("--list-ops", list_ops, "List the ops the engine implements, one per line: name, domain");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    if (list_ops) {
      for (const auto& [name, schema] : trainer::engine::OpRegistry::global().all())
        fmt::print("{}\t{}\n", name, schema.domain().empty() ? "ai.onnx" : schema.domain());
      return 0;
    }
    fmt::print(stderr, "{}", app.help());
    return 0;
  } catch (const trainer::InputError& e) {
    fmt::print(stderr, "trainer: error: {}\n", e.what());
    if (!e.hint().empty()) fmt::print(stderr, "  hint: {}\n", e.hint());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "trainer: {}\n", e.what());
    return 1;
  }
}
