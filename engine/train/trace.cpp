// Chrome trace event JSON (trace.h).
#include "engine/train/trace.h"

#include <fmt/format.h>

namespace trainer::engine {

void Trace::span(const std::string& name, int tid, Clock::time_point start, Clock::time_point end,
                 const std::string& args) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back({name, args, 'X', tid, us(start), us(end) - us(start)});
}

void Trace::instant(const std::string& name, int tid, Clock::time_point at, const std::string& args) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back({name, args, 'i', tid, us(at), 0});
}

void Trace::name_thread(int tid, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  names_.emplace_back(tid, name);
}

std::string Trace::json() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = "{\"traceEvents\": [\n";
  bool first = true;
  auto add = [&](const std::string& e) {
    out += first ? "  " : ",\n  ";
    out += e;
    first = false;
  };
  for (const auto& [tid, name] : names_)
    add(fmt::format(
        "{{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": {}, \"args\": {{\"name\": "
        "\"{}\"}}}}",
        tid, name));
  for (const Event& e : events_) {
    std::string s = fmt::format("{{\"name\": \"{}\", \"ph\": \"{}\", \"pid\": 1, \"tid\": {}, \"ts\": {:.3f}",
                                e.name, e.phase, e.tid, e.ts_us);
    if (e.phase == 'X') s += fmt::format(", \"dur\": {:.3f}", e.dur_us);
    if (e.phase == 'i') s += ", \"s\": \"t\"";
    if (!e.args.empty()) s += fmt::format(", \"args\": {{{}}}", e.args);
    add(s + "}");
  }
  return out + "\n], \"displayTimeUnit\": \"ms\"}\n";
}

}  // namespace trainer::engine
