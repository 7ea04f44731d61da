// trainer fit: trains the model a spec describes, with progress for people on stderr and metrics for machines
// on stdout.
#include <fmt/chrono.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "cli/checkpoint_io.h"
#include "cli/common.h"
#include "engine/dist/mpi_communicator.h"
#if TRAINER_HAVE_CUDA
#include "engine/dist/nccl_communicator.h"
#endif
#include "engine/util/error.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint_hash.h"
#include "formats/datasets.h"
#include "formats/onnx_import.h"
#include "formats/tensorboard.h"

namespace trainer::cli {

namespace {

void on_signal(int sig) {
  engine::g_stop_signal.store(sig);
  // A second signal ends the process at once.
  std::signal(sig, SIG_DFL);
}

// A word as a shell reads it back: as it is when it holds nothing a shell treats specially, else in single
// quotes (a quote inside as '\'').
std::string shell_word(const std::string& w) {
  const bool plain = !w.empty() && std::all_of(w.begin(), w.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_./:=+-,@%", c) != nullptr;
  });
  if (plain) return w;
  std::string q = "'";
  for (char c : w) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string logs_text(const engine::Logs& logs) {
  std::string s;
  for (const auto& [k, v] : logs) s += fmt::format(" · {} {}", k, log_number(v));
  return s;
}

std::vector<std::pair<std::string, std::string>> logs_json(const engine::Logs& logs) {
  std::vector<std::pair<std::string, std::string>> f;
  for (const auto& [k, v] : logs) f.emplace_back(k, json_number(v));
  return f;
}

std::string epoch_json(const engine::EpochReport& r) {
  std::vector<std::pair<std::string, std::string>> f = {{"event", json_string("epoch")},
                                                        {"epoch", std::to_string(r.epoch)},
                                                        {"epochs", std::to_string(r.epochs)}};
  for (auto& kv : logs_json(r.logs)) f.push_back(kv);
  f.emplace_back("samples_per_s", json_number(r.samples_per_s));
  f.emplace_back("seconds", json_number(r.seconds));
  return json_object(f);
}

class FitPrinter final : public engine::FitObserver {
 public:
  explicit FitPrinter(Output& out) : out_(out) {}

  void on_train_begin(const engine::FitPlanInfo& info) override {
    out_.say(
        "Training on {} samples, validating on {} · {} steps per epoch{}{} · {} · {} plans in a {:.1f} MiB "
        "arena{}\n",
        info.train_samples, info.val_samples, info.steps_per_epoch,
        info.steps_per_pass != info.steps_per_epoch
            ? fmt::format(" (a pass over the data is {})", info.steps_per_pass)
            : "",
        info.accumulation_steps > 1 ? fmt::format(", an update every {}", info.accumulation_steps) : "",
        info.device, info.plans, info.arena_bytes / 1048576.0,
        info.held_bytes ? fmt::format(" + {:.1f} MiB held by kernels", info.held_bytes / 1048576.0) : "");
    epoch_start_ = std::chrono::steady_clock::now();
  }

  void on_batch_end(int64_t epoch, int64_t step, int64_t steps, int64_t global_step,
                    const engine::Logs& running) override {
    write_tensorboard_batch(global_step, running);
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
    write_tensorboard(r);
    out_.clear_bar();
    out_.say("Epoch {}/{} · {}/{} · {:.1f}s{}\n", r.epoch, r.epochs, r.steps, r.steps, r.seconds,
             logs_text(r.logs));
    std::string line = epoch_json(r);
    out_.json_line(line);
    // Nobody reads the metrics any more (`trainer fit ... | head -1`): the run stops after this step as a
    // signal stops it, with a checkpoint to resume from.
    if (out_.stdout_closed()) engine::g_stop_signal.store(SIGPIPE);
    history_ += line + "\n";
    write_history();
    epoch_start_ = std::chrono::steady_clock::now();
  }

  // history.jsonl (with --output-dir) holds the epochs so far after every epoch and every checkpoint, so that
  // a run that fails later leaves the file of the checkpoints it wrote; the fit_end line is added at the end.
  // Nothing is written before then: a run that fails before it has written anything leaves the folder's
  // files as they were (another run's history among them).
  void keep_history_in(std::string path) { history_path_ = std::move(path); }
  void write_history(const std::string& end_line = "") const {
    if (!history_path_.empty())
      formats::write_file_atomically(history_path_, history_ + (end_line.empty() ? "" : end_line + "\n"));
  }

  // An epoch trained before a resume: its line goes into history.jsonl again, so the file tells the whole
  // run.
  void replay(const engine::EpochReport& r) { history_ += epoch_json(r) + "\n"; }

  void keep_tensorboard(formats::TensorBoardWriter* w, int64_t histogram_freq, int64_t batch_freq) {
    tensorboard_ = w;
    histogram_freq_ = histogram_freq;
    batch_freq_ = batch_freq;
  }

  // Keras's histogram_freq counts epochs from 0: the weights after the 1st, (N+1)-th, (2N+1)-th epoch.
  bool wants_weights(int64_t epoch) const override {
    return tensorboard_ && histogram_freq_ > 0 && (epoch - 1) % histogram_freq_ == 0;
  }
  void on_weights(int64_t epoch,
                  const std::vector<std::pair<std::string, engine::Tensor>>& weights) override {
    if (!tensorboard_) return;
    const std::string error = tensorboard_->write_histograms("train", epoch - 1, weights);
    if (!error.empty()) {
      tensorboard_failed(error);
    }
  }

 private:
  // Shown even with --quiet: the run was asked for events it no longer writes.
  void tensorboard_failed(const std::string& error) {
    out_.clear_bar();
    eprint("trainer: warning: {}; the run goes on without TensorBoard events\n", error);
    tensorboard_ = nullptr;
  }

  // Keras's update_freq "batch" or N: the running loss and metrics of the epoch so far as batch_<name> after
  // every N-th batch, at the batch's 1-based number in the run (the steps trained, a resumed run's
  // included); synced to disk with the epoch's scalars.
  void write_tensorboard_batch(int64_t batch, const engine::Logs& running) {
    if (!tensorboard_ || batch_freq_ <= 0 || batch % batch_freq_ != 0) return;
    std::vector<std::pair<std::string, double>> values;
    for (const auto& [name, v] : running) values.emplace_back("batch_" + name, v);
    const std::string error = tensorboard_->write("train", batch, values, false);
    if (!error.empty()) tensorboard_failed(error);
  }

  // Keras's TensorBoard callback at update_freq "epoch": the epoch's training logs as epoch_<name> in the
  // train run, with epoch_learning_rate (the optimizer's rate after the epoch, as Keras reads it), its val_
  // logs without the prefix in the validation run, at step epoch - 1. A failed write stops the events with a
  // warning, not the training.
  void write_tensorboard(const engine::EpochReport& r) {
    if (!tensorboard_) return;
    std::vector<std::pair<std::string, double>> train, validation;
    for (const auto& [name, v] : r.logs) {
      if (name.starts_with("val_"))
        validation.emplace_back("epoch_" + name.substr(4), v);
      else if (name != "learning_rate")  // ReduceLROnPlateau's; the rate comes next
        train.emplace_back("epoch_" + name, v);
    }
    if (std::isfinite(r.next_learning_rate)) train.emplace_back("epoch_learning_rate", r.next_learning_rate);
    for (const auto& [run, values] : {std::pair{"train", &train}, {"validation", &validation}}) {
      if (values->empty()) continue;
      const std::string error = tensorboard_->write(run, r.epoch - 1, *values);
      if (!error.empty()) {
        tensorboard_failed(error);
        return;
      }
    }
    // Keras's on_test_end: the validation numbers again, at the optimizer's iterations.
    std::vector<std::pair<std::string, double>> by_iteration;
    for (const auto& [name, v] : validation)
      by_iteration.emplace_back("evaluation_" + name.substr(6) + "_vs_iterations", v);  // epoch_<name>
    if (!by_iteration.empty()) {
      const std::string error = tensorboard_->write("validation", r.optimizer_iterations, by_iteration);
      if (!error.empty()) tensorboard_failed(error);
    }
  }

  Output& out_;
  formats::TensorBoardWriter* tensorboard_ = nullptr;
  int64_t histogram_freq_ = 0, batch_freq_ = 0;
  std::chrono::steady_clock::time_point epoch_start_{}, last_draw_{};
  std::string history_, history_path_;
};

// SIGPIPE stands for a closed standard output (see FitPrinter).
const char* signal_name(int sig) {
  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGPIPE (standard output closed)";
}

// The signal as fit_end's interrupted_by names it, for scripts: "SIGINT", "SIGTERM", "SIGPIPE".
const char* signal_id(int sig) {
  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGPIPE";
}

// Whether `name` is one the run writes in --output-dir: its checkpoints (epoch-N.ckpt, as the periodic ones
// and the one at the end are named, and step-N.ckpt, as an interrupt's is, whatever their numbers), the
// link's temporary, and the history.
bool written_by_run(std::string_view name) {
  auto numbered = [&](std::string_view prefix) {
    if (!name.starts_with(prefix) || !name.ends_with(".ckpt")) return false;
    const std::string_view mid = name.substr(prefix.size(), name.size() - prefix.size() - 5);
    return !mid.empty() && std::all_of(mid.begin(), mid.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return name == "last.ckpt" || name == "best.ckpt" || name == "final.ckpt" || name == "last.ckpt.tmp" ||
         name == "history.jsonl" || numbered("epoch-") || numbered("step-");
}

// Writes the checkpoints a run asks for under DIR, keeps `last.ckpt` naming the newest (a hard link replaced
// atomically), and prunes periodic ones beyond keep_last. It holds a lock on DIR (flock on the directory
// itself, so nothing is left in it) from the start: two runs writing one directory would replace each
// other's last.ckpt. A directory that cannot be written is found then too, before any training.
class CheckpointWriter {
 public:
  CheckpointWriter(std::filesystem::path dir, const formats::ModelSpec& spec, int64_t keep_last,
                   double lr_scale)
      : dir_(std::move(dir)), spec_(spec), keep_last_(keep_last), lr_scale_(lr_scale) {
    lock_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock_fd_ < 0 || ::access(dir_.c_str(), W_OK) != 0)
      throw InputError(dir_.string(),
                       fmt::format("cannot write in the output directory: {}", std::strerror(errno)),
                       "give a directory this user can write to");
    // A filesystem that cannot lock (some network mounts: ENOLCK) goes on unlocked.
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
      ::close(lock_fd_);
      lock_fd_ = -1;
      throw InputError(dir_.string(), "another trainer fit is writing its checkpoints in this directory",
                       "give each run its own --output-dir, or wait for the other one to end");
    }
  }
  ~CheckpointWriter() {
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  std::filesystem::path save(const engine::TrainingState& st, engine::SaveReason why, uint64_t signature) {
    std::string name;
    switch (why) {
      case engine::SaveReason::epoch:
        name = fmt::format("epoch-{}.ckpt", st.epoch);
        break;
      case engine::SaveReason::best:
        name = "best.ckpt";
        break;
      case engine::SaveReason::restored:
        name = "final.ckpt";
        break;
      case engine::SaveReason::steps:
      case engine::SaveReason::interrupt:
        name = fmt::format("step-{}.ckpt", st.global_step);
        break;
    }
    std::filesystem::path path = dir_ / name;
    save_training_checkpoint(path.string(), spec_, signature, st, lr_scale_);
    point_last_at(path);
    if (why == engine::SaveReason::epoch || why == engine::SaveReason::steps) {
      // Newest last: a name written again (a run resumed from an earlier checkpoint of this folder) moves.
      std::erase(periodic_, path);
      periodic_.push_back(path);
      while (keep_last_ > 0 && static_cast<int64_t>(periodic_.size()) > keep_last_) {
        std::error_code ec;
        std::filesystem::remove(periodic_.front(), ec);
        periodic_.erase(periodic_.begin());
      }
    }
    last_saved_step_ = st.global_step;
    return path;
  }
  int64_t last_saved_step() const { return last_saved_step_; }
  // A resumed run that writes where its checkpoint's run wrote: that run's periodic checkpoints count
  // towards keep_last too, oldest first.
  void adopt_periodic() {
    std::vector<std::pair<std::filesystem::file_time_type, std::filesystem::path>> found;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
      const std::string name = e.path().filename().string();
      const bool periodic =
          (name.starts_with("epoch-") || name.starts_with("step-")) && name.ends_with(".ckpt");
      if (periodic && e.is_regular_file(ec)) found.emplace_back(e.last_write_time(ec), e.path());
    }
    // Oldest first; names of one time (a coarse clock) in the order of their numbers: epoch-2 before
    // epoch-10.
    auto number = [](const std::filesystem::path& p) {
      const std::string stem = p.stem().string();
      const std::string digits = stem.substr(stem.find('-') + 1);
      return std::pair{
          stem.substr(0, stem.find('-')),
          std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isdigit(c) != 0; }) &&
                  !digits.empty() && digits.size() < 19
              ? std::stoll(digits)
              : int64_t{-1}};
    };
    std::sort(found.begin(), found.end(), [&](const auto& a, const auto& b) {
      if (a.first != b.first) return a.first < b.first;
      const auto na = number(a.second), nb = number(b.second);
      return na != nb ? na < nb : a.second < b.second;
    });
    for (const auto& [when, path] : found) periodic_.push_back(path);
  }
  std::filesystem::path last() const { return dir_ / "last.ckpt"; }

 private:
  void point_last_at(const std::filesystem::path& path) {
    // One name: the directory's lock keeps other writers out, and a killed writer's file is replaced.
    std::filesystem::path tmp = dir_ / "last.ckpt.tmp";
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    std::filesystem::create_hard_link(path, tmp, ec);
    if (ec) std::filesystem::copy_file(path, tmp, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::rename(tmp, dir_ / "last.ckpt");
  }

  std::filesystem::path dir_;
  const formats::ModelSpec& spec_;
  int64_t keep_last_;
  double lr_scale_;
  std::vector<std::filesystem::path> periodic_;
  int64_t last_saved_step_ = -1;
  int lock_fd_ = -1;
};

class SignatureGrabber final : public engine::FitObserver {
 public:
  explicit SignatureGrabber(engine::FitObserver& next) : next_(next) {}
  void on_train_begin(const engine::FitPlanInfo& i) override {
    signature = i.signature;
    next_.on_train_begin(i);
  }
  void on_batch_end(int64_t e, int64_t s, int64_t n, int64_t g, const engine::Logs& l) override {
    next_.on_batch_end(e, s, n, g, l);
  }
  void on_epoch_end(const engine::EpochReport& r) override { next_.on_epoch_end(r); }
  bool wants_weights(int64_t epoch) const override { return next_.wants_weights(epoch); }
  void on_weights(int64_t epoch, const std::vector<std::pair<std::string, engine::Tensor>>& w) override {
    next_.on_weights(epoch, w);
  }
  uint64_t signature = 0;

 private:
  engine::FitObserver& next_;
};

// What a rank of an MPI run trains: the resolved spec (flags and --set included), the ONNX model, the data's
// sizes and the checkpoint a resume starts from (its values too: a stale copy of last.ckpt on one machine has
// the same step), hashed with the checkpoints' XXH64.
uint64_t run_fingerprint(const formats::ModelSpec& s, const std::optional<LoadedCheckpoint>& ck,
                         const SpecData& data) {
  formats::Xxh64 h;
  auto add = [&h](std::string_view text) { h.update(text.data(), text.size()); };
  add(formats::to_toml(s));
  if (s.model.onnx_bytes) add(*s.model.onnx_bytes);
  add(fmt::format("|{}|{}|{}|{}", data.train ? data.train->size() : 0,
                  data.validation ? data.validation->size() : 0, data.test ? data.test->size() : 0,
                  ck ? ck->state.global_step : -1));
  if (ck)
    for (const auto& [name, t] : ck->state.values) {
      add(name);
      h.update(t.raw(), t.nbytes());
    }
  return h.digest();
}

// Every file the run reads: --trace must not name one of them. A data pattern that matches nothing is
// left to the loader, which reports it at its place in the spec.
std::vector<std::string> run_inputs(const formats::ModelSpec& s, const SpecOptions& spec,
                                    const std::string& resume) {
  std::vector<std::string> in;
  for (const std::string& p : {spec.path, spec.train_toml, resume})
    if (!p.empty()) in.push_back(p);
  if (!s.model.onnx.empty()) in.push_back(formats::resolve_data_path(s, s.model.onnx));
  auto add = [&](const std::vector<std::string>& patterns) {
    try {
      for (std::string& f : formats::resolve_data_files(patterns, s.base_dir, {})) in.push_back(std::move(f));
    } catch (const InputError&) {
    }
  };
  for (const auto* src : {&s.data.train, &s.data.validation, &s.data.test}) {
    if (!*src) continue;
    const formats::DataSource& d = **src;
    for (const auto* v : {&d.x, &d.y, &d.sample_weight}) add(*v);
    for (const auto* m : {&d.x_by_input, &d.y_by_output, &d.sample_weight_by_output})
      for (const auto& [name, files] : *m) add(files);
  }
  return in;
}

// Every rank must train the same run: a rank started with other flags (another --seed, an MPMD launch)
// would average another model's gradients into this one's and report numbers of neither. Each rank learns
// which ranks differ from rank 0, and every rank stops.
void check_ranks_agree(engine::dist::Communicator& world, uint64_t fingerprint, const std::string& launcher) {
  uint64_t first = fingerprint;
  world.broadcast(&first, sizeof first, 0);
  std::vector<double> differs(static_cast<size_t>(world.size()), 0.0);
  differs[static_cast<size_t>(world.rank())] = first != fingerprint ? 1.0 : 0.0;
  world.all_reduce_sum(differs.data(), static_cast<int64_t>(differs.size()), engine::DType::f64);
  std::vector<int> ranks;
  for (size_t r = 0; r < differs.size(); ++r)
    if (differs[r] != 0) ranks.push_back(static_cast<int>(r));
  if (ranks.empty()) return;
  throw InputError(
      "",
      fmt::format("{} rank{} {} of {} train{} another run than rank 0: another spec, --set, flag "
                  "(--seed, --epochs, --batch-size, ...), data or checkpoint",
                  launcher, ranks.size() == 1 ? "" : "s", fmt::join(ranks, ", "), world.size(),
                  ranks.size() == 1 ? "s" : ""),
      "start every rank with the same command line and files");
}

}  // namespace

Command add_fit_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("fit", "Train the model a spec describes");
  auto spec = std::make_shared<SpecOptions>();
  auto output = std::make_shared<OutputOptions>();
  auto device = std::make_shared<DeviceOptions>();
  auto parallel = std::make_shared<ParallelOptions>();
  auto output_dir = std::make_shared<std::string>();
  auto resume = std::make_shared<std::string>();
  auto trace_path = std::make_shared<std::string>();
  auto tensorboard_dir = std::make_shared<std::string>();
  auto histogram_freq = std::make_shared<int64_t>(0);
  auto update_freq = std::make_shared<std::string>("epoch");
  spec->add_spec(cmd, "optional with --resume");
  spec->add_overrides(cmd, true);
  cmd->add_option("--resume", *resume,
                  "Continue the run a checkpoint holds, exactly; with SPEC, the two must agree")
      ->type_name("CKPT");
  cmd->add_option("--output-dir", *output_dir, "Folder for the run's files: checkpoints and history.jsonl")
      ->check(CLI::Validator(
          [](std::string& v) {
            return v.empty() ? std::string("names no folder: give a folder's path") : "";
          },
          "DIR"));
  cmd->add_option("--tensorboard", *tensorboard_dir,
                  "Write TensorBoard event files of each epoch's losses, metrics and learning rate under DIR "
                  "(DIR/train, DIR/validation)")
      ->check(CLI::Validator(
          [](std::string& v) {
            return v.empty() ? std::string("names no folder: give a folder's path") : "";
          },
          "DIR"));
  CLI::Option* histogram_option =
      cmd->add_option("--tensorboard-histogram-freq", *histogram_freq,
                      "With --tensorboard: histograms of the weights every N epochs (Keras's histogram_freq; "
                      "0: none)")
          ->type_name("N")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  CLI::Option* update_option =
      cmd->add_option("--tensorboard-update-freq", *update_freq,
                      "With --tensorboard: also the running loss and metrics after every batch (batch) or "
                      "every N batches, as Keras's update_freq (default: epoch)")
          ->type_name("epoch|batch|N")
          ->check(CLI::Validator(
              [](std::string& v) -> std::string {
                if (v == "epoch" || v == "batch") return "";
                int64_t n = 0;
                const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
                return ec == std::errc{} && end == v.data() + v.size() && n > 0
                           ? ""
                           : "must be epoch, batch or a number of batches above 0";
              },
              "epoch|batch|N"));
  CLI::Option* trace_option =
      cmd->add_option(
             "--trace", *trace_path,
             "Write a timeline of the replicas' steps and gradient reductions (Chrome trace JSON) to FILE")
          ->type_name("FILE");
  output->add(cmd);
  device->add(cmd, true);
  parallel->add(cmd);
  auto run = [=]() -> int {
    // Under mpirun or srun every rank runs this; rank 0 alone prints and writes files.
    const engine::dist::LaunchInfo launch = engine::dist::LaunchInfo::from_environment();
    const bool speaks = launch.rank == 0;
    Output out = speaks ? output->make(launch.launcher == "mpirun") : Output(LogFormat::text, true);
    if (spec->path.empty() && resume->empty())
      throw InputError("", "trainer fit needs a SPEC or --resume CKPT", "trainer fit model.toml");
    // Flags that contradict each other, refused before anything is read or any device opened.
    if (parallel->devices > 1 && !device->gpus.empty())
      throw InputError("--devices", "--devices makes CPU replicas, and --gpus chooses GPUs",
                       "leave out one of them");
    if (parallel->devices > 1 && device->device.starts_with("cuda"))
      throw InputError("--devices",
                       fmt::format("--devices {} makes CPU replicas, and --device {} asks for a GPU",
                                   parallel->devices, device->device),
                       "add --device cpu; GPUs are chosen with --gpus");
    for (const CLI::Option* o : {histogram_option, update_option})
      if (o->count() > 0 && tensorboard_dir->empty())
        throw InputError(o->get_name(), "writes into the --tensorboard folder, and none is given",
                         "add --tensorboard DIR");
    // SPEC names an ONNX model when it ends in .onnx; then --train names the TOML of everything else.
    spec->check_combination();
    // --trace is written at the end: a path that cannot take it is found now, not after training.
    if (trace_option->count() > 0) check_output_file(*trace_path, "--trace", {});
    auto load_given = [&] { return spec->load(); };
    std::optional<LoadedCheckpoint> ck;
    formats::ModelSpec s;
    if (!resume->empty()) {
      refuse_spec_as_model(*resume, "fit --resume");
      ck = load_training_checkpoint(*resume);
      s = ck->spec(spec->overrides());
      if (!spec->path.empty()) {
        formats::ModelSpec given = load_given();
        // The statistics trainer fit computed for a Normalization layer (adapt) are in the checkpoint's spec,
        // not in the file it was read from.
        for (size_t k = 0; k < given.model.layers.size() && k < s.model.layers.size(); ++k) {
          formats::LayerSpec& l = given.model.layers[k];
          const formats::LayerSpec& adapted = s.model.layers[k];
          if (l.type == "Normalization" && adapted.type == l.type && !l.args.count("mean") &&
              !l.args.count("variance") && adapted.args.count("mean") && adapted.args.count("variance")) {
            l.args["mean"] = adapted.args.at("mean");
            l.args["variance"] = adapted.args.at("variance");
          }
        }
        // So is the vocabulary it adapted for text data.
        if (given.data.text && s.data.text && given.data.text->vocabulary.empty())
          given.data.text->vocabulary = s.data.text->vocabulary;
        if (!formats::same_settings(given, s))
          throw InputError(spec->path,
                           fmt::format("the spec does not match the checkpoint {}: {}", *resume,
                                       first_difference(formats::to_toml(s), formats::to_toml(given))),
                           "resume with the spec the checkpoint was written with, or leave SPEC out");
        // An ONNX model is the same settings only if it is the same model: the checkpoint embeds its bytes.
        if (!given.model.onnx.empty()) {
          read_onnx_bytes(given);
          if (s.model.onnx_bytes && *given.model.onnx_bytes != *s.model.onnx_bytes)
            throw InputError(
                given.model.onnx_pos.file.empty() ? spec->path : given.model.onnx_pos.str(),
                fmt::format("the ONNX model {} is not the one the checkpoint {} was trained from",
                            given.model.onnx, *resume),
                "resume with the model the checkpoint was written with, or leave SPEC out (the "
                "checkpoint holds its model)");
        }
      }
      // A checkpoint past the epochs asked for would be trained no further and written back as an earlier
      // epoch's (a mid-epoch-3 state as epoch-2.ckpt).
      const engine::TrainingState& at = ck->state;
      if (at.epoch > s.train.epochs || (at.epoch == s.train.epochs && at.batch > 0))
        throw InputError(
            *resume,
            fmt::format("the checkpoint's run {}, past the {} epoch{} asked for",
                        at.batch > 0 ? fmt::format("is in epoch {} at batch {} (step {})", at.epoch + 1,
                                                   at.batch, at.global_step)
                                     : fmt::format("has done {} epoch{}", at.epoch, at.epoch == 1 ? "" : "s"),
                        s.train.epochs, s.train.epochs == 1 ? "" : "s"),
            fmt::format("resume with --epochs {} or more{}", at.epoch + 1,
                        at.batch > 0 ? "" : " to train further"));
    } else {
      s = load_given();
      require_training(s);
      // Read once: the model trained and the model embedded in every checkpoint are the same bytes, even if
      // the file changes during the run.
      read_onnx_bytes(s);
    }
    if (trace_option->count() > 0) {
      check_output_file(*trace_path, "--trace", run_inputs(s, *spec, *resume));
      // Nor a file the run itself writes in --output-dir (the trace, written last, would replace it).
      namespace fs = std::filesystem;
      std::error_code ec;
      const fs::path t(formats::written_path(*trace_path));  // where the trace lands: through a link
      const fs::path dir = t.has_parent_path() ? t.parent_path() : fs::path(".");
      const std::string name = t.filename().string();
      if (!output_dir->empty() && fs::equivalent(dir, *output_dir, ec) && written_by_run(name))
        throw InputError(
            "--trace",
            fmt::format("'{}' is a file the run writes in --output-dir {}", *trace_path, *output_dir),
            "name a trace file outside the output directory, or another name");
    }
    if (s.train.checkpoint.enabled && output_dir->empty())
      throw InputError(s.train.checkpoint.pos.str(), "[train.checkpoint] needs --output-dir",
                       "add --output-dir DIR, where the checkpoints go");
    // Under mpirun/srun a GPU rank drives the GPU of its local rank among those it sees, or the one GPU it
    // sees when the launcher gave each task its own (srun --gpus-per-task=1, CUDA_VISIBLE_DEVICES per rank).
    DeviceOptions chosen = *device;
    std::string rank_gpu;  // its PCI bus id: no two ranks may drive one GPU
    if (launch.size > 1 && device->device.starts_with("cuda:"))
      throw InputError(
          "--device",
          fmt::format("under {} each rank drives the GPU of its local rank, and --device {} names one",
                      launch.launcher, device->device),
          "use --device cuda, or leave --device out; CUDA_VISIBLE_DEVICES chooses a machine's GPUs");
    if (launch.size > 1 && device->device != "cpu") {
      const engine::CudaDevices found = engine::cuda_devices();
      if (!found.devices.empty()) {
        const int count = static_cast<int>(found.devices.size());
        if (count > 1 && (launch.local_size > count || launch.local_rank >= count))
          throw InputError(
              "--device",
              fmt::format("{} ranks on this machine and {} GPU{}: each rank needs a GPU of its own",
                          std::max(launch.local_size, launch.local_rank + 1), count, count == 1 ? "" : "s"),
              fmt::format("start at most {} ranks per machine, or add --device cpu", count));
        const engine::CudaDeviceInfo& gpu = found.devices[count == 1 ? 0 : launch.local_rank];
        chosen.device = fmt::format("cuda:{}", gpu.index);
        chosen.gpus.clear();
        rank_gpu = gpu.pci_bus_id.empty() ? fmt::format("cuda:{}", gpu.index) : gpu.pci_bus_id;
      }
    }
    DeviceOptions::Opened opened = chosen.open(s, output->quiet || !speaks);
    auto& backend = opened.backend;
    models::BuiltModel probe = build(s, probe_batch(s), false, false);  // shapes alone
    check_output_and_loss(s, probe);
    if (const size_t texts = adapt_text(s))
      out.say("Text: a vocabulary of {} words from the {} training texts (adapt).\n",
              s.data.text->vocabulary.size(), texts);
    SpecData data = open_data(s, probe);
    if (!s.model.onnx.empty()) {
      // PyTorch's merged initializers, read apart (formats/onnx_import.h): say so, as the file reads tied.
      const std::shared_ptr<const formats::OnnxModelFile> file = open_onnx(s);
      const auto& untied = file->untied();
      std::vector<std::string> pairs;
      for (size_t i = 0; i < untied.size() && i < 8; ++i)
        pairs.push_back(fmt::format("{} of {}", untied[i].first, untied[i].second));
      if (untied.size() > 8) pairs.push_back(fmt::format("and {} more", untied.size() - 8));
      if (!untied.empty())
        out.say(
            "{} parameter{} of the ONNX model {} merged into another by PyTorch's export (equal initial "
            "values), read apart to train as {} own: {}.\n",
            untied.size(), untied.size() == 1 ? "" : "s", untied.size() == 1 ? "is" : "are",
            untied.size() == 1 ? "its" : "their", fmt::join(pairs, ", "));
    }
    for (const std::string& layer : adapt_normalization(s, data, probe))
      out.say("Normalization layer '{}': mean and variance from the {} training samples (adapt).\n", layer,
              data.train->size());
    engine::FitConfig cfg = fit_config(s);
    cfg.sample_weight_shapes = data.sample_weight_shapes;
    cfg.precision = opened.precision;
    // --devices N: N CPU replicas in threads of this process, each with its share of the CPU threads.
    engine::Replicas replicas;
    std::vector<std::unique_ptr<engine::Backend>> extra;
    std::unique_ptr<engine::dist::ThreadGroup> group;
    std::vector<std::unique_ptr<engine::dist::Communicator>> comms;
    const int n = launch.size > 1         ? launch.size
                  : !device->gpus.empty() ? static_cast<int>(opened.devices.size())
                                          : parallel->devices;
    if (launch.size > 1) {
      // One replica per rank: MPI sums the CPU replicas' gradients and every rank's metrics.
      if (parallel->devices > 1)
        throw InputError("--devices",
                         fmt::format("under {} every rank is one replica, and --devices asks for {}",
                                     launch.launcher, parallel->devices),
                         "leave out --devices; choose the replica count with -np");
      if (!device->gpus.empty() && device->gpus != "1")
        throw InputError(
            "--gpus",
            fmt::format("under {} each of the {} ranks drives one GPU (the one of its local rank), and "
                        "--gpus asks for {}",
                        launch.launcher, launch.size, device->gpus),
            "leave out --gpus; give -np the number of GPUs");
      const auto timeout =
          std::chrono::milliseconds(static_cast<int64_t>(parallel->collective_timeout_s * 1000));
      std::unique_ptr<engine::dist::Communicator> world = engine::dist::mpi_world();
      world->set_timeout(timeout);
      // An MPI that does not understand the launcher starts every task as a world of its own: each would
      // train alone on its share of the rows.
      if (world->size() != launch.size || world->rank() != launch.rank)
        throw InputError(
            "",
            fmt::format("{} started this process as rank {} of {}, but MPI made it rank {} of {}: this MPI "
                        "library did not join the launcher's tasks",
                        launch.launcher, launch.rank, launch.size, world->rank(), world->size()),
            launch.launcher == "srun"
                ? "run srun with the process-management interface this MPI was built for (srun --mpi=pmix; "
                  "srun --mpi=list shows them), or start the run with mpirun"
                : "start the run with the mpirun of the MPI library trainer was built with");
      check_ranks_agree(*world, run_fingerprint(s, ck, data), launch.launcher);
      if (backend->name() != "cpu") {
#if TRAINER_HAVE_CUDA
        // NCCL sums the GPUs' gradients; MPI hands out its unique id from rank 0 and sums the metrics.
        if (!rank_gpu.empty()) engine::dist::check_devices_distinct(*world, rank_gpu, launch.launcher);
        std::string id = launch.rank == 0 ? engine::dist::nccl_unique_id() : std::string();
        size_t id_bytes = id.size();
        world->broadcast(&id_bytes, sizeof id_bytes, 0);
        id.resize(id_bytes);
        world->broadcast(id.data(), id.size(), 0);
        auto nccl = std::make_unique<engine::dist::NcclCommunicator>(
            launch.rank, launch.size, id, opened.devices.front(),
            static_cast<cudaStream_t>(backend->native_stream()));
        nccl->set_timeout(timeout);
        replicas.comms.push_back(nccl.get());
        comms.push_back(std::move(nccl));
#endif
      } else {
        engine::CpuOptions co;
        co.threads = std::max(1, engine::default_cpu_threads() / std::max(1, launch.local_size));
        backend = engine::make_cpu_backend(co);
        replicas.comms.push_back(world.get());
      }
      replicas.host_comm = world.get();
      comms.push_back(std::move(world));
      replicas.first_rank = launch.rank;
    } else if (!device->gpus.empty()) {
      // --gpus: one replica per GPU, one thread each, their gradients summed by NCCL (even with one GPU, so
      // that path is the one --gpus always takes).
#if TRAINER_HAVE_CUDA
      std::vector<cudaStream_t> streams = {static_cast<cudaStream_t>(backend->native_stream())};
      for (auto& b : opened.more) streams.push_back(static_cast<cudaStream_t>(b->native_stream()));
      comms = engine::dist::make_nccl_group(opened.devices, streams);
      for (auto& c : comms) {
        c->set_timeout(
            std::chrono::milliseconds(static_cast<int64_t>(parallel->collective_timeout_s * 1000)));
        replicas.comms.push_back(c.get());
      }
      for (auto& b : opened.more) extra.push_back(std::move(b));
#endif
    } else if (n > 1) {
      if (backend->name() != "cpu")
        throw InputError(
            "--devices",
            fmt::format("--devices {} makes CPU replicas, and this run is on {}", n, backend->name()),
            "add --device cpu; GPUs are chosen with --gpus");
      engine::CpuOptions co;
      co.threads = std::max(1, engine::default_cpu_threads() / n);
      backend = engine::make_cpu_backend(co);
      for (int k = 1; k < n; ++k) extra.push_back(engine::make_cpu_backend(co));
      group = std::make_unique<engine::dist::ThreadGroup>(n);
      for (int k = 0; k < n; ++k) {
        comms.push_back(group->communicator(k));
        comms.back()->set_timeout(
            std::chrono::milliseconds(static_cast<int64_t>(parallel->collective_timeout_s * 1000)));
        replicas.comms.push_back(comms.back().get());
      }
    }
    replicas.backends.push_back(backend.get());
    for (auto& b : extra) replicas.backends.push_back(b.get());
    replicas.world_size = n;
    replicas.allow_uneven = parallel->allow_uneven;
    engine::Trace trace;
    if (!trace_path->empty()) replicas.trace = &trace;
    // The learning rate never changes silently: --scale-lr linear multiplies it by the replica count, and a
    // resumed run keeps its checkpoint's factor unless --scale-lr says otherwise. Either way it is logged.
    const double ck_scale = ck ? ck->lr_scale : 1.0;
    const double lr_scale = parallel->scale_lr == "linear" ? n
                            : parallel->scale_lr == "none" ? 1.0
                                                           : ck_scale;
    // The rates a factor gives: the learning rate, or a piecewise_constant schedule's values (which it reads
    // instead).
    auto rates = [&](double factor) {
      if (cfg.schedule.kind != "piecewise_constant" || cfg.schedule.values.empty())
        return fmt::format("{:g}", cfg.schedule.base * factor);
      std::vector<std::string> v;
      for (double r : cfg.schedule.values) v.push_back(fmt::format("{:g}", r * factor));
      return fmt::format("[{}]", fmt::join(v, ", "));
    };
    const std::string was =
        ck && ck_scale != lr_scale
            ? fmt::format("; the checkpoint's run used {} x {:g} = {}", rates(1), ck_scale, rates(ck_scale))
            : "";
    if (parallel->scale_lr == "linear" && (n > 1 || !was.empty()))
      out.say("Learning rate {} x {} replica{} = {} (--scale-lr linear{}).\n", rates(1), n, n == 1 ? "" : "s",
              rates(lr_scale), was);
    else if (parallel->scale_lr.empty() && lr_scale != 1)
      out.say("Learning rate {} x {:g} = {}, as the checkpoint's run (--scale-lr linear on {:g} replicas).\n",
              rates(1), lr_scale, rates(lr_scale), lr_scale);
    else if (!was.empty())
      out.say("Learning rate {} (--scale-lr none{}).\n", rates(1), was);
    cfg.schedule.scale = lr_scale;
    FitPrinter printer(out);
    SignatureGrabber observer(printer);
    engine::CheckpointPolicy policy;
    engine::SaveFn save;
    std::unique_ptr<CheckpointWriter> writer;
    // Every rank follows the policy (a sharded optimizer state is gathered by all of them); rank 0 writes.
    if (!output_dir->empty() && s.train.checkpoint.enabled) {
      policy.every_epochs = s.train.checkpoint.every_epochs;
      policy.every_steps = s.train.checkpoint.every_steps;
      policy.save_best = s.train.checkpoint.save_best;
      policy.mode = s.train.checkpoint.mode;
    }
    // The directories this run makes (the output directory and any missing parents) go again, innermost
    // first, when the run ends with nothing in them (an error before the first checkpoint: a resume whose
    // checkpoint does not fit the model).
    struct RemoveIfEmpty {
      std::vector<std::filesystem::path> made;  // innermost first
      ~RemoveIfEmpty() {
        std::error_code ignored;
        for (const std::filesystem::path& dir : made)
          if (!std::filesystem::is_empty(dir, ignored) || !std::filesystem::remove(dir, ignored)) break;
      }
    } made_dirs;
    auto prepare_output_dir = [&] {
      std::error_code ec;
      // One level at a time, as the path is written (".." and links resolve as the file system has them),
      // keeping the ones this run made.
      std::filesystem::path at;
      for (const std::filesystem::path& part : std::filesystem::path(*output_dir)) {
        at /= part;
        if (part.empty() || at == at.root_path()) continue;
        if (std::filesystem::create_directory(at, ec)) made_dirs.made.insert(made_dirs.made.begin(), at);
        if (ec) break;
      }
      if (ec || !std::filesystem::is_directory(*output_dir))
        throw InputError(
            *output_dir,
            fmt::format("cannot be the output directory: {}",
                        !ec || ec == std::errc::file_exists
                            ? fmt::format("{} is not a directory",
                                          (ec ? at : std::filesystem::path(*output_dir)).string())
                            : fmt::format("{}: {}", at.string(), ec.message())),
            "give a directory, or a path where one can be made");
      // Any name the run may write to (the checkpoints by their pattern, whatever their number) taken by
      // something other than a file (or a link to one, or to nothing): found now, not when the run gets
      // there.
      for (const auto& e : std::filesystem::directory_iterator(*output_dir, ec)) {
        const std::string name = e.path().filename().string();
        std::error_code kind_ec, target_ec;
        const std::filesystem::file_status st = e.symlink_status(kind_ec);
        const std::filesystem::file_status target = e.status(target_ec);
        const bool file = std::filesystem::is_regular_file(st) ||
                          (std::filesystem::is_symlink(st) &&
                           (std::filesystem::is_regular_file(target) || !std::filesystem::exists(target)));
        if (written_by_run(name) && !kind_ec && !file)
          throw InputError(e.path().string(),
                           fmt::format("is in the way of the run's {}: it is not a file",
                                       name == "history.jsonl" ? "history" : "checkpoint"),
                           "remove it, or give another --output-dir");
      }
      writer = std::make_unique<CheckpointWriter>(*output_dir, s, s.train.checkpoint.keep_last, lr_scale);
      std::error_code same_ec;
      if (ck && std::filesystem::equivalent(std::filesystem::path(*resume).parent_path().empty()
                                                ? std::filesystem::path(".")
                                                : std::filesystem::path(*resume).parent_path(),
                                            *output_dir, same_ec))
        writer->adopt_periodic();
      save = [&](const engine::TrainingState& st, engine::SaveReason why) {
        writer->save(st, why, observer.signature);
        printer.write_history();
      };
    };
    // Under mpirun or srun rank 0 alone prepares the output directory; the other ranks learn whether it
    // could, so that a refused directory (a file, a lock of another run) ends every rank at once: they waited
    // in the first collective until the watchdog's timeout, which then blamed a stalled rank.
    std::exception_ptr refused;
    std::unique_ptr<formats::TensorBoardWriter> tensorboard;
    if ((!output_dir->empty() || !tensorboard_dir->empty()) && speaks) {
      try {
        if (!output_dir->empty()) prepare_output_dir();
        if (!tensorboard_dir->empty())
          tensorboard = std::make_unique<formats::TensorBoardWriter>(*tensorboard_dir);
      } catch (...) {
        refused = std::current_exception();
      }
    }
    printer.keep_tensorboard(tensorboard.get(), *histogram_freq,
                             *update_freq == "epoch"   ? 0
                             : *update_freq == "batch" ? 1
                                                       : std::stoll(*update_freq));
    if (launch.size > 1 && (!output_dir->empty() || !tensorboard_dir->empty())) {
      double failed = refused ? 1.0 : 0.0;
      replicas.host_comm->broadcast(&failed, sizeof failed, 0);
      if (failed != 0 && !speaks) return 2;  // rank 0 says why
    }
    if (refused) std::rethrow_exception(refused);
    if (ck) {
      out.say("Resuming {} at epoch {}, batch {} (step {}).\n", *resume, ck->state.epoch + 1, ck->state.batch,
              ck->state.global_step);
      for (const engine::EpochReport& r : ck->state.history) printer.replay(r);
    }
    if (writer) printer.keep_history_in((std::filesystem::path(*output_dir) / "history.jsonl").string());
    engine::g_stop_signal.store(0);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGPIPE, SIG_IGN);  // a closed stdout ends the run with a checkpoint (FitPrinter)
    engine::FitResult r = at_spec_places(s, [&] {
      return engine::fit(model_factory(s), data.train, data.validation, data.test, data.format, cfg, replicas,
                         observer, policy, save, ck ? &ck->state : nullptr);
    });
    if (!trace_path->empty() && speaks) formats::write_file_atomically(*trace_path, trace.json());
    // The end of a run always leaves a checkpoint of where it ended: final.ckpt when restore_best_weights
    // put back, or use_ema put in, other weights than its last epoch's checkpoint holds.
    // A run that ran all its epochs keeps its last epoch's weights too (epoch-N.ckpt), to train further from.
    if (writer && r.before_restore && writer->last_saved_step() != r.before_restore->global_step)
      writer->save(*r.before_restore, engine::SaveReason::epoch, observer.signature);
    if (writer && !r.interrupted_by && (r.restored_best || r.averaged))
      writer->save(r.final_state, engine::SaveReason::restored, observer.signature);
    else if (writer && !r.interrupted_by && writer->last_saved_step() != r.final_state.global_step)
      writer->save(r.final_state, engine::SaveReason::epoch, observer.signature);
    // The handlers stay until the final checkpoint is written: a signal then is remembered, not fatal.
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    // A SIGINT or SIGTERM after the last step (during the last validation, the test pass or the final
    // checkpoint) stops nothing more: the run is complete and its checkpoint written, and it still ends as
    // interrupted runs end. (A reader of stdout gone by then fails nothing: the run is complete.)
    int late_signal = r.interrupted_by ? 0 : engine::g_stop_signal.load();
    if (late_signal != SIGINT && late_signal != SIGTERM) late_signal = 0;
    std::vector<std::pair<std::string, std::string>> f = {
        {"event", json_string("fit_end")},
        {"epochs_run", std::to_string(r.history.size())},
        {"seconds", json_number(r.seconds)},
        {"stopped_early", r.stopped_early ? "true" : "false"}};
    if (r.stopped_early || r.restored_best) f.emplace_back("best_epoch", std::to_string(r.best_epoch));
    if (r.restored_best) f.emplace_back("restored_best_weights", "true");
    if (r.interrupted_by || late_signal)
      f.emplace_back("interrupted_by",
                     json_string(signal_id(r.interrupted_by ? r.interrupted_by : late_signal)));
    if (writer) f.emplace_back("checkpoint", json_string(writer->last().string()));
    if (!r.history.empty())
      for (auto& kv : logs_json(r.history.back().logs)) f.push_back(kv);
    for (auto& kv : logs_json(r.test)) f.push_back(kv);
    std::string end_line = json_object(f);
    out.json_line(end_line);
    printer.write_history(end_line);
    if (r.interrupted_by) {
      out.say("Interrupted by {} after {} epoch{}.\n", signal_name(r.interrupted_by), r.history.size(),
              r.history.size() == 1 ? "" : "s");
      // The devices this run took go with it (a checkpoint resumes on any count; the same is the least
      // surprise).
      std::string devices;
      if (device->device != "auto") devices += " --device " + device->device;
      if (!device->gpus.empty()) devices += " --gpus " + device->gpus;
      if (parallel->devices > 1) devices += fmt::format(" --devices {}", parallel->devices);
      if (parallel->allow_uneven) devices += " --allow-uneven";
      if (writer)
        out.say(
            "Resume with: trainer fit --resume {} --output-dir {}{}\n", shell_word(writer->last().string()),
            shell_word(writer->last().parent_path().empty() ? "." : writer->last().parent_path().string()),
            devices);
      else
        out.say("No checkpoint was written: run with --output-dir to be able to resume.\n");
      return 128 + r.interrupted_by;
    }
    if (r.stopped_early)
      out.say("Stopped early after epoch {}; the best epoch was {}.\n", r.history.size(), r.best_epoch);
    if (r.restored_best) out.say("Restored the weights of the best epoch, {}.\n", r.best_epoch);
    if (!r.test.empty()) out.say("Test{}\n", logs_text(r.test));
    if (late_signal) {
      out.say("Interrupted by {} after the last step: the run is complete{}.\n", signal_name(late_signal),
              writer ? fmt::format(", and {} holds it", writer->last().string()) : std::string());
      return 128 + late_signal;
    }
    out.say("Done in {:.1f}s.\n", r.seconds);
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
