// A timeline of a run for people and tools: spans and instants from several threads, written as Chrome's
// trace event JSON (chrome://tracing, Perfetto). trainer fit --trace FILE records each replica's steps, the
// moments backward finishes each gradient bucket, and each bucket's reduction on the communication thread.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace trainer::engine {

class Trace {
 public:
  using Clock = std::chrono::steady_clock;
  Trace() : origin_(Clock::now()) {}
  // A span on timeline `tid` ("X" event); `args` is a JSON object's members ("\"bucket\": 3") or "".
  void span(const std::string& name, int tid, Clock::time_point start, Clock::time_point end,
            const std::string& args = "");
  void instant(const std::string& name, int tid, Clock::time_point at, const std::string& args = "");
  // Names a timeline ("replica 0", "replica 0 communication").
  void name_thread(int tid, const std::string& name);
  std::string json() const;

 private:
  struct Event {
    std::string name, args;
    char phase;
    int tid;
    double ts_us, dur_us;
  };
  double us(Clock::time_point t) const {
    return std::chrono::duration<double, std::micro>(t - origin_).count();
  }
  Clock::time_point origin_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
  std::vector<std::pair<int, std::string>> names_;
};

}  // namespace trainer::engine
