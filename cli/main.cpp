// trainer's entry point: wires the subcommands, runs the one parsed, and alone decides the exit code
// (0 ok, 1 run-time failure, 2 bad input or usage, 128+signal when interrupted).
#include <fmt/core.h>
#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <system_error>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "cli/common.h"
#include "engine/dist/mpi_communicator.h"
#include "engine/ir/op_schema.h"
#include "engine/util/error.h"
#include "formats/model_spec_text.h"
#include "formats/onnx_import.h"

// OpenMP's default is to spin for a long time before an idle thread sleeps. On a machine whose cores other
// processes also use, a spinning thread waits on a descheduled partner and steps slow down tenfold or more; a
// short spin costs almost nothing on an idle machine. libgomp reads its settings before main runs, so when
// the user set neither, trainer sets a short spin count and executes itself again, once.
static void shorten_openmp_spin(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  setenv("GOMP_SPINCOUNT", "10000", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run with the defaults
}

// Asynchronous signals run their handlers on one thread that does nothing else. The f32 GEMM kernels that
// oneDNN generates for AVX2 and AVX-512 (in the versions distributions ship) point the stack pointer into a
// heap buffer while they run: a handler that runs on such a thread pushes its frame there and corrupts the
// heap (a SIGINT that stopped a fit ended in glibc's "corrupted size vs. prev_size" now and then). The main
// thread blocks the asynchronous signals before any other thread exists, so every thread started
// later (OpenMP's, MPI's, CUDA's, the data loaders') inherits the mask; the one thread left unblocked takes
// every signal sent to the process. Default actions (ending the process) are the same on any thread.
static void route_signals_to_one_thread() {
  sigset_t routed, before;
  sigemptyset(&routed);
  // The standard signals, but not those a thread's own action raises (faults, abort(), a write to a closed
  // pipe or past the file size limit, terminal I/O from the background, which a blocked SIGTTIN or SIGTTOU
  // would let through), nor the real-time ones that a library may send to a thread of its own. SIGPROF is
  // routed too: an interval-timer profiler then samples the signal thread only (perf does not use signals).
  for (int s = 1; s < SIGRTMIN; ++s) sigaddset(&routed, s);
  for (int s :
       {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT, SIGPIPE, SIGXFSZ, SIGTTIN, SIGTTOU})
    sigdelset(&routed, s);
  if (pthread_sigmask(SIG_BLOCK, &routed, &before) != 0) return;
  try {
    std::thread([before] {
      pthread_sigmask(SIG_SETMASK, &before, nullptr);  // what the process was started with
      for (;;) pause();
    }).detach();
  } catch (const std::system_error&) {  // no thread to spare: signals stay as they were
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
  }
}

namespace trainer::cli {
Command add_bench_command(CLI::App& app);  // cli/bench.cpp
}  // namespace trainer::cli

// The length of the well-formed UTF-8 sequence that starts s (2 to 4 bytes: no overlong forms, surrogates or
// code points past U+10FFFF), or 0.
static size_t utf8_sequence_length(std::string_view s) {
  if (s.empty()) return 0;
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  const size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (len == 0 || s.size() < len) return 0;
  const unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
  const unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
  if (b(1) < lo || b(1) > hi) return 0;
  for (size_t i = 2; i < len; ++i)
    if (b(i) < 0x80 || b(i) > 0xBF) return 0;
  return len;
}

// A message with every run of more than 300 bytes without a space (a quoted value, key or name of a spec or
// an option, thousands of characters long) cut to its first 200 and last 40 bytes, at UTF-8 boundaries: data
// errors clip their quotes where they are made (formats::clipped), and this clips the rest.
static std::string clip_long_runs(std::string_view s) {
  constexpr size_t kLongest = 300, kHead = 200, kTail = 40;
  auto continuation = [&](size_t i) {
    return i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80;
  };
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t end = s.find(' ', i);
    if (end == std::string_view::npos) end = s.size();
    if (end - i <= kLongest) {
      out.append(s.substr(i, end - i));
    } else {
      size_t head = i + kHead, tail = end - kTail;
      while (head > i && continuation(head)) --head;
      while (continuation(tail)) ++tail;
      out.append(s.substr(i, head - i));
      out += fmt::format("...({} bytes)...", tail - head);
      out.append(s.substr(tail, end - tail));
    }
    if (end < s.size()) out += ' ';
    i = end + 1;
  }
  return out;
}

// A message as the terminal shows it, on one line: bytes of a damaged input that it quotes (a NUL, control
// characters, bytes that are not UTF-8) escaped as \xNN, line ends as \n and \r, so that stderr stays UTF-8
// text. Quotes of input are clipped where they are made (formats::clipped) or here (clip_long_runs); a
// message is cut at 64 KiB only as a last resort.
static std::string printable(std::string_view given) {
  const std::string clipped = clip_long_runs(given);
  const std::string_view s = clipped;
  constexpr size_t kMost = size_t{64} << 10;
  std::string out;
  size_t n = std::min(s.size(), kMost);
  while (n < s.size() && n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // whole UTF-8
  for (size_t i = 0; i < n;) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {  // a well-formed UTF-8 sequence goes out whole; any other byte as \xNN
      const size_t len = utf8_sequence_length(s.substr(i, std::min<size_t>(4, n - i)));
      if (len > 0) {
        out.append(s.substr(i, len));
        i += len;
        continue;
      }
    }
    if (c == '\n' || c == '\r')  // a message is one line: a line end in it is quoted input's
      out += c == '\n' ? "\\n" : "\\r";
    else if ((c < 0x20 && c != '\t') || c >= 0x7f)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
    ++i;
  }
  if (n < s.size()) out += fmt::format(" ... ({} more bytes)", s.size() - n);
  return out;
}

// An input error (a mistyped option, a bad spec) under mpirun or srun, where every rank reads the same
// command line and files and so meets the same mistake: ranks other than 0 wait a moment before saying
// theirs, and the rank that says it ends the whole run (MPI_Abort, once MPI has started; before that, mpirun
// ends the job when rank 0 exits non-zero), so the message is printed once. An error rank 0 does not meet (a
// file missing on one machine) is still said, by the rank that meets it.
static void say_once_per_run(const std::function<void()>& say) {
  const trainer::engine::dist::LaunchInfo launch = trainer::engine::dist::LaunchInfo::from_environment();
  // Long enough for rank 0 to meet the mistake too on a loaded machine (2 s was not: rank 0, slower to read a
  // checkpoint and build the model, had not aborted the world when rank 1 spoke).
  if (launch.size > 1 && launch.rank != 0) std::this_thread::sleep_for(std::chrono::seconds(10));
  say();
  std::fflush(stderr);
  if (launch.size > 1) trainer::engine::dist::abort_world(2);  // returns when MPI has not started
}

// A collective that timed out or failed ends the run: its line, then every rank of an MPI run, without
// unwinding the stack (on GPUs a destructor would wait for a stream stuck behind the collective). Under MPI
// the world ends a moment later, so that the other ranks waiting on the same collective say theirs too.
// Replicas of one process that fail as well wait here while the first ends the process.
[[noreturn]] static void end_run_on_collective_failure(const trainer::RuntimeError& e,
                                                       const std::function<void()>& before_exit) {
  static std::mutex once;
  once.lock();  // never unlocked: the process ends below
  std::fflush(stdout);
  const bool timeout = dynamic_cast<const trainer::engine::dist::CollectiveTimeout*>(&e) != nullptr;
  trainer::eprint("trainer: {}{}\n", timeout ? "error: " : "", e.what());
  std::fflush(stderr);
  if (before_exit) before_exit();  // said first: an NCCL abort may take seconds
  if (trainer::engine::dist::LaunchInfo::from_environment().size > 1) {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    trainer::engine::dist::abort_world(1);
  }
  std::_Exit(1);
}

// The one of `names` that `word` most likely meant: within two edits (three for words of ten characters or
// more, one for words of up to four, none for shorter ones), or the only name it begins; else "".
static std::string closest(const std::string& word, const std::vector<std::string>& names) {
  std::string best;
  size_t best_distance = word.size() < 3 ? 1 : word.size() <= 4 ? 2 : word.size() < 10 ? 3 : 4;
  std::vector<std::string> extending;
  for (const std::string& n : names) {
    const size_t d = trainer::formats::spec_text::edit_distance(word, n);
    if (d < best_distance) best_distance = d, best = n;
    if (n.size() > word.size() && n.compare(0, word.size(), word) == 0) extending.push_back(n);
  }
  if (best.empty() && extending.size() == 1) best = extending.front();
  return best;
}

// A usage error read like every other bad input: what, where (the option or word), and a hint, with the
// option or subcommand a typo most likely meant.
static void print_usage_error(CLI::App& app, const CLI::ParseError& e) {
  const std::vector<CLI::App*> given = app.get_subcommands();
  CLI::App* at = given.empty() ? &app : given.back();
  const std::string command = given.empty() ? "trainer" : "trainer " + at->get_name();
  std::string what = e.what(), hint = command + " --help lists the options";
  if (dynamic_cast<const CLI::ExtrasError*>(&e) && !at->remaining().empty()) {
    std::string word = at->remaining().front();
    if (word.size() > 1 && word[0] == '-') {
      word = word.substr(0, word.find('='));
      std::vector<std::string> names;
      for (const CLI::Option* o : at->get_options()) {
        for (const std::string& l : o->get_lnames()) names.push_back("--" + l);
        for (const std::string& n : o->get_snames()) names.push_back("-" + n);
      }
      what = fmt::format("{}: {} has no such option", word, command);
      if (std::string m = closest(word, names); !m.empty())
        hint = fmt::format("did you mean {}? {} --help lists the options", m, command);
    } else if (given.empty()) {
      std::vector<std::string> names;
      for (const CLI::App* sub : app.get_subcommands({})) names.push_back(sub->get_name());
      what = fmt::format("'{}' is no subcommand", word);
      hint = "trainer --help lists the subcommands";
      if (std::string m = closest(word, names); !m.empty())
        hint = fmt::format("did you mean {}? trainer --help lists the subcommands", m);
    } else {
      what = fmt::format("'{}': {} takes no more arguments", word, command);
      hint = command + " --help shows what it takes";
    }
  } else if (dynamic_cast<const CLI::ArgumentMismatch*>(&e)) {
    // CLI11 says "NAME: 1 required TYPE missing" or "NAME: At Most 1 required but received 2".
    const std::string name = what.substr(0, what.find(": "));
    if (what.find("missing") != std::string::npos)
      what = fmt::format("{}: a value is missing after it", name);
    else if (what.find("At Most") != std::string::npos)
      what = fmt::format("{}: given more than once; give it once", name);
  }
  trainer::eprint("trainer: error: {}\n  hint: {}\n", printable(what), printable(hint));
}

namespace {

// Memory the run needs and cannot have: one line and a hint, exit 1 (a failure at run time).
int out_of_memory(const char* what, const char* hint) {
  std::fflush(stdout);
  trainer::eprint("trainer: error: {}\n  hint: {}\n", printable(what), printable(hint));
  return 1;
}

// What a command wrote to stdout must have reached it: a full disk or a closed device is an error (exit 1),
// not a silent success.
int stdout_written() {
  errno = 0;
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return 0;
  // The error of the write that failed, when an earlier flush (a JSON line) saw it; errno is later's.
  const int err = trainer::cli::stdout_error() != 0 ? trainer::cli::stdout_error() : errno;
  if (err == EPIPE) return 0;  // the reader had what it wanted (`trainer summary x | head -3`)
  trainer::eprint(
      "trainer: error: writing to standard output failed: {}\n  hint: check the space left where "
      "the output goes\n",
      std::strerror(err != 0 ? err : EIO));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace trainer;
  shorten_openmp_spin(argv);
  route_signals_to_one_thread();
  // A closed pipe is an error of the write (EPIPE), never a kill: a reader of stdout that quits early ends
  // the command as its man page says, and stderr piped into a reader that is gone costs no output.
  std::signal(SIGPIPE, SIG_IGN);
  engine::dist::set_fatal_collective_handler(end_run_on_collective_failure);
  CLI::App app{"trainer: train neural networks from a model description"};
  app.set_version_flag("--version", std::string("trainer ") + TRAINER_VERSION);
  app.require_subcommand(0, 1);
  bool list_ops = false;
  app.add_flag(
      "--list-ops", list_ops,
      "List the ops a model may use, one per line: name, domain, and engine (an engine op) or import "
      "(ONNX ops imported as constants or as other ops)");
  std::vector<cli::Command> commands = {cli::add_fit_command(app),     cli::add_summary_command(app),
                                        cli::add_check_command(app),   cli::add_export_command(app),
                                        cli::add_predict_command(app), cli::add_evaluate_command(app),
                                        cli::add_bench_command(app)};
  auto* help = app.add_subcommand("help", "Show the help of a subcommand: trainer help fit");
  std::string help_topic;
  help->add_option("SUBCOMMAND", help_topic, "Subcommand");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {  // --help
      app.exit(e);
      return stdout_written();
    }
    say_once_per_run([&] { print_usage_error(app, e); });
    return 2;
  }
  try {
    if (list_ops) {
      std::map<std::string, std::string> lines;  // by name: domain, then how the op runs
      for (const auto& [name, schema] : engine::OpRegistry::global().all())
        lines[name] = fmt::format("{}\tengine", schema.domain().empty() ? "ai.onnx" : schema.domain());
      for (const std::string& name : formats::onnx_ops_imported_as_others()) lines[name] = "ai.onnx\timport";
      for (const auto& [name, rest] : lines) fmt::print("{}\t{}\n", name, rest);
      return stdout_written();
    }
    if (help->parsed()) {
      if (help_topic.empty()) {  // the whole program's (app.help() would give the parsed help's own)
        fmt::print("{}", app.get_formatter()->make_help(&app, app.get_name(), CLI::AppFormatMode::Normal));
        return stdout_written();
      }
      if (help_topic == "help") {
        fmt::print("{}", help->help(app.get_name()));
        return stdout_written();
      }
      for (const cli::Command& c : commands)
        if (c.app->get_name() == help_topic) {
          fmt::print("{}", c.app->help(app.get_name()));
          return stdout_written();
        }
      std::vector<std::string> names;
      for (const cli::Command& c : commands) names.push_back(c.app->get_name());
      const std::string meant = closest(help_topic, names);
      trainer::eprint(
          "trainer: error: '{}' is no subcommand\n  hint: {}trainer --help lists the subcommands\n",
          printable(help_topic), meant.empty() ? "" : fmt::format("did you mean {}? ", meant));
      return 2;
    }
    for (const cli::Command& c : commands)
      if (c.app->parsed()) {
        // Only fit trains with a rank per replica; any other subcommand under mpirun or srun would run once
        // per rank, each writing the same output. Rank 0 says so; the others end quietly.
        const engine::dist::LaunchInfo launch = engine::dist::LaunchInfo::from_environment();
        if (launch.size > 1 && c.app->get_name() != "fit") {
          if (launch.rank != 0) return 2;
          throw InputError(
              launch.launcher,
              fmt::format("trainer {} runs in one process, and {} started {} ranks of it", c.app->get_name(),
                          launch.launcher, launch.size),
              fmt::format("run trainer {} without {}; only trainer fit trains with a rank per replica",
                          c.app->get_name(), launch.launcher));
        }
        const int rc = c.run();
        return rc == 0 ? stdout_written() : rc;
      }
    trainer::eprint("{}", app.help());
    return 2;
  } catch (const InputError& e) {
    std::fflush(stdout);
    const std::string what = e.where().empty() ? e.message() : e.where() + ": " + e.message();
    say_once_per_run([&] {
      trainer::eprint("trainer: error: {}\n", printable(what));
      if (!e.hint().empty()) trainer::eprint("  hint: {}\n", printable(e.hint()));
    });
    return 2;
  } catch (const engine::dist::CollectiveTimeout& e) {
    // The watchdog: this rank says what it waited for, then the whole run ends. Under mpirun or srun the
    // other ranks may be stuck in a collective or a stalled step, so MPI is told to end them all; in one
    // process, a stalled replica's thread may still be running, so nothing is destroyed under it.
    end_run_on_collective_failure(e, {});
  } catch (const RuntimeError& e) {
    std::fflush(stdout);
    trainer::eprint("trainer: error: {}\n", printable(e.what()));
    if (!e.hint().empty()) trainer::eprint("  hint: {}\n", printable(e.hint()));
    return 1;
  } catch (const std::system_error& e) {               // a write that failed: a full disk or a closed device
    if (e.code() == std::errc::broken_pipe) return 0;  // stdout's reader quit early (only pipes say EPIPE)
    std::fflush(stdout);
    trainer::eprint("trainer: error: {}\n  hint: check the space left where the output goes\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    return out_of_memory("out of memory",
                         "a smaller batch_size, model or data, or a machine with more memory; "
                         "trainer summary shows a model's sizes");
  } catch (const std::length_error&) {
    return out_of_memory(
        "out of memory: a size too large to hold",
        "check the sizes the model and data give (units, filters, input shapes, batch_size)");
  } catch (const std::exception& e) {
    trainer::eprint("trainer: internal error: {}\n", e.what());
    return 1;
  }
}
