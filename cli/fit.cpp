// trainer fit: trains the model a spec describes, with progress for people on stderr and metrics for machines
// on stdout.
#include <fmt/chrono.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>

#include "cli/common.h"
#include "engine/util/error.h"

namespace trainer::cli {

namespace {

void on_signal(int sig) {
  engine::g_stop_signal.store(sig);
  // A second signal ends the process at once.
  std::signal(sig, SIG_DFL);
}

std::string logs_text(const engine::Logs& logs) {
  std::string s;
  for (const auto& [k, v] : logs) s += fmt::format(" · {} {:.4f}", k, v);
  return s;
}

std::vector<std::pair<std::string, std::string>> logs_json(const engine::Logs& logs) {
  std::vector<std::pair<std::string, std::string>> f;
  for (const auto& [k, v] : logs) f.emplace_back(k, json_number(v));
  return f;
}

// Writes `text` to `path` crash-safely: a temporary file in the same folder, fsync, rename, fsync of the
// folder.
void write_atomically(const std::filesystem::path& path, const std::string& text) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw InputError(path.string(), "cannot write the file", "check that --output-dir is writable");
  const char* p = text.data();
  size_t left = text.size();
  while (left) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0) {
      ::close(fd);
      throw RuntimeError(fmt::format("writing {} failed", tmp.string()));
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  ::fsync(fd);
  ::close(fd);
  std::filesystem::rename(tmp, path);
  int dfd = ::open(path.parent_path().empty() ? "." : path.parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

class FitPrinter final : public engine::FitObserver {
 public:
  explicit FitPrinter(Output& out) : out_(out) {}

  void on_train_begin(const engine::FitPlanInfo& info) override {
    out_.say(
        "Training on {} samples, validating on {} · {} steps per epoch · {} · {} plans in a {:.1f} MiB "
        "arena\n",
        info.train_samples, info.val_samples, info.steps_per_epoch, info.device, info.plans,
        info.arena_bytes / 1048576.0);
    epoch_start_ = std::chrono::steady_clock::now();
  }

  void on_batch_end(int64_t epoch, int64_t step, int64_t steps, const engine::Logs& running) override {
    if (!out_.progress_bar()) return;
    auto now = std::chrono::steady_clock::now();
    if (step != steps && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    if (step == 1) epoch_start_ = now;
    int width = 24, filled = static_cast<int>(width * step / std::max<int64_t>(steps, 1));
    std::string bar(filled, '=');
    if (filled < width) bar += '>' + std::string(width - filled - 1, '.');
    double secs = std::chrono::duration<double>(now - epoch_start_).count();
    out_.bar(
        fmt::format("Epoch {} · {}/{} [{}] {:.1f}s{}", epoch, step, steps, bar, secs, logs_text(running)));
  }

  void on_epoch_end(const engine::EpochReport& r) override {
    out_.clear_bar();
    out_.say("Epoch {}/{} · {}/{} · {:.1f}s{}\n", r.epoch, r.epochs, r.steps, r.steps, r.seconds,
             logs_text(r.logs));
    std::vector<std::pair<std::string, std::string>> f = {{"event", json_string("epoch")},
                                                          {"epoch", std::to_string(r.epoch)},
                                                          {"epochs", std::to_string(r.epochs)}};
    for (auto& kv : logs_json(r.logs)) f.push_back(kv);
    f.emplace_back("samples_per_s", json_number(r.samples_per_s));
    f.emplace_back("seconds", json_number(r.seconds));
    std::string line = json_object(f);
    out_.json_line(line);
    history_ += line + "\n";
    epoch_start_ = std::chrono::steady_clock::now();
  }

  const std::string& history() const { return history_; }

 private:
  Output& out_;
  std::chrono::steady_clock::time_point epoch_start_{}, last_draw_{};
  std::string history_;
};

}  // namespace

Command add_fit_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("fit", "Train the model a spec describes");
  auto spec = std::make_shared<SpecOptions>();
  auto output = std::make_shared<OutputOptions>();
  auto device = std::make_shared<DeviceOptions>();
  auto output_dir = std::make_shared<std::string>();
  spec->add_spec(cmd);
  spec->add_overrides(cmd, true);
  cmd->add_option("--output-dir", *output_dir, "Folder for the run's files (history.jsonl)");
  output->add(cmd);
  device->add(cmd);
  auto run = [=]() -> int {
    Output out = output->make();
    formats::ModelSpec s = spec->load();
    auto backend = device->make_backend();
    models::BuiltModel probe = build(s, 1, false);
    SpecData data = open_data(s, probe);
    engine::FitConfig cfg = fit_config(s);
    FitPrinter printer(out);
    engine::g_stop_signal.store(0);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    engine::FitResult r = at_spec_places(s, [&] {
      return engine::fit(model_factory(s), data.train, data.validation, data.test, data.format, cfg, *backend,
                         printer);
    });
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    std::vector<std::pair<std::string, std::string>> f = {
        {"event", json_string("fit_end")},
        {"epochs_run", std::to_string(r.history.size())},
        {"seconds", json_number(r.seconds)},
        {"stopped_early", r.stopped_early ? "true" : "false"}};
    if (r.stopped_early) f.emplace_back("best_epoch", std::to_string(r.best_epoch));
    if (r.interrupted_by)
      f.emplace_back("interrupted_by", json_string(r.interrupted_by == SIGINT ? "SIGINT" : "SIGTERM"));
    if (!r.history.empty())
      for (auto& kv : logs_json(r.history.back().logs)) f.push_back(kv);
    for (auto& kv : logs_json(r.test)) f.push_back(kv);
    std::string end_line = json_object(f);
    out.json_line(end_line);
    if (!output_dir->empty()) {
      std::filesystem::create_directories(*output_dir);
      write_atomically(std::filesystem::path(*output_dir) / "history.jsonl",
                       printer.history() + end_line + "\n");
    }
    if (r.interrupted_by) {
      out.say("Interrupted by {} after {} epochs.\n", r.interrupted_by == SIGINT ? "SIGINT" : "SIGTERM",
              r.history.size());
      return 128 + r.interrupted_by;
    }
    if (r.stopped_early)
      out.say("Stopped early after epoch {}; kept the weights of epoch {}.\n", r.history.size(),
              r.best_epoch);
    if (!r.test.empty()) out.say("Test{}\n", logs_text(r.test));
    out.say("Done in {:.1f}s.\n", r.seconds);
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
