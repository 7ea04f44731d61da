// The in-process communicator (ThreadGroup), the watchdog's error, and the test-only fault hook.
#include "engine/dist/communicator.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace trainer::engine::dist {

std::string CollectiveTag::str() const {
  if (bucket >= 0 && step >= 0) return fmt::format("bucket {} of step {}", bucket, step);
  if (step >= 0) return fmt::format("step {}", step);
  return "outside a step";
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}

namespace {
std::atomic<FatalCollectiveHandler> fatal_handler{nullptr};
}  // namespace

void set_fatal_collective_handler(FatalCollectiveHandler handler) {
  fatal_handler = handler;
}

FatalCollectiveHandler fatal_collective_handler() {
  return fatal_handler;
}

CollectiveTimeout::CollectiveTimeout(int rank, const std::string& host, const std::string& collective,
                                     const CollectiveTag& tag, double seconds)
    : RuntimeError(
          fmt::format("rank {} on {}: {} ({}) did not complete within {:g} s; another rank stopped or "
                      "hangs",
                      rank, host, collective, tag.str(), seconds)),
      rank_(rank) {}

void check_devices_distinct(Communicator& world, const std::string& device, const std::string& launcher) {
  // Each rank's "host device" as one byte per f64 in its own slot; the sum hands every rank every name.
  constexpr size_t kSlot = 128;
  const std::string mine = (host_name() + " " + device).substr(0, kSlot);
  const int n = world.size();
  std::vector<double> names(static_cast<size_t>(n) * kSlot, 0.0);
  for (size_t i = 0; i < mine.size(); ++i)
    names[static_cast<size_t>(world.rank()) * kSlot + i] = static_cast<unsigned char>(mine[i]);
  world.all_reduce_sum(names.data(), static_cast<int64_t>(names.size()), DType::f64);
  auto name = [&](int r) {
    std::string s;
    for (size_t i = 0; i < kSlot; ++i) {
      const double c = names[static_cast<size_t>(r) * kSlot + i];
      if (c == 0) break;
      s.push_back(static_cast<char>(static_cast<unsigned char>(c)));
    }
    return s;
  };
  std::map<std::string, int> first;
  for (int r = 0; r < n; ++r) {
    const std::string who = name(r);
    const auto [it, fresh] = first.emplace(who, r);
    if (fresh) continue;
    const size_t space = who.rfind(' ');
    throw InputError(
        launcher,
        fmt::format("ranks {} and {} would both drive the GPU {} on {}: each rank needs a GPU of "
                    "its own",
                    it->second, r, who.substr(space + 1), who.substr(0, space)),
        "start at most as many ranks per machine as it has GPUs (srun --ntasks-per-node, "
        "mpirun --map-by ppr:G:node), or add --device cpu");
  }
}

void scale_in_place(void* data, int64_t count, DType dtype, double factor) {
  if (factor == 1.0) return;
  if (dtype == DType::f32) {
    auto* p = static_cast<float*>(data);
    const float f = static_cast<float>(factor);
    for (int64_t i = 0; i < count; ++i) p[i] *= f;
  } else {
    TRAINER_ASSERT(dtype == DType::f64, "scale_in_place of {}", dtype_name(dtype));
    auto* p = static_cast<double*>(data);
    for (int64_t i = 0; i < count; ++i) p[i] *= factor;
  }
}

FaultStall FaultStall::from_environment() {
  FaultStall f;
  const char* v = std::getenv("TRAINER_FAULT_STALL");
  if (!v || !*v) return f;
  if (std::sscanf(v, "%d:%ld:%lf", &f.rank, &f.collective, &f.seconds) != 3) f = FaultStall{};
  return f;
}

struct ThreadGroup::State {
  explicit State(int n) : size(n), ptrs(n, nullptr) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  int64_t generation = 0;
  bool broken = false;  // a rank timed out: every waiting and later collective fails
  std::vector<void*> ptrs;
  const FaultStall stall = FaultStall::from_environment();
};

namespace {

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup::State& s, int rank) : s_(s), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return s_.size; }
  std::string kind() const override { return "threads"; }

  // Rank r owns slice r: it reads that slice of every rank's buffer, sums in rank order, and writes the sum
  // back to every buffer. Slices are disjoint, so no two ranks touch one element.
  void all_reduce_sum(void* data, int64_t count, DType dtype, const CollectiveTag& tag) override {
    TRAINER_ASSERT(dtype == DType::f32 || dtype == DType::f64, "all_reduce of {}", dtype_name(dtype));
    begin("all_reduce", tag);
    publish(data);
    rendezvous("all_reduce", tag);
    const int64_t lo = count * rank_ / s_.size, hi = count * (rank_ + 1) / s_.size;
    if (dtype == DType::f32)
      reduce_slice<float>(lo, hi);
    else
      reduce_slice<double>(lo, hi);
    rendezvous("all_reduce", tag);
  }

  // One rendezvous pair for the whole group: rank r sums slice r of the tensors' concatenated elements.
  void all_reduce_weighted_sum_group(const std::vector<Span>& spans, DType dtype, double weight,
                                     const CollectiveTag& tag) override {
    weighted_group("all_reduce", spans, dtype, weight, tag);
  }

  // As the all-reduce group, with each piece's sum written to its root's buffer only.
  void reduce_weighted_sum_group(const std::vector<Piece>& pieces, DType dtype, double weight,
                                 const CollectiveTag& tag) override {
    weighted_group("reduce", pieces, dtype, weight, tag);
  }

  // One rendezvous pair: every rank copies each piece from its root's source into its own destination.
  void broadcast_group(const std::vector<Copy>& copies, const CollectiveTag& tag) override {
    begin("broadcast", tag);
    publish(const_cast<std::vector<Copy>*>(&copies));
    rendezvous("broadcast", tag);
    for (size_t t = 0; t < copies.size(); ++t) {
      const Copy& from = (*static_cast<std::vector<Copy>*>(s_.ptrs[copies[t].root]))[t];
      if (copies[t].bytes && from.src != copies[t].dst) std::memcpy(copies[t].dst, from.src, copies[t].bytes);
    }
    rendezvous("broadcast", tag);
  }

  void broadcast(void* data, size_t bytes, int root, const CollectiveTag& tag) override {
    begin("broadcast", tag);
    publish(data);
    rendezvous("broadcast", tag);
    if (rank_ != root && bytes) std::memcpy(data, s_.ptrs[root], bytes);
    rendezvous("broadcast", tag);
  }

  void barrier(const CollectiveTag& tag) override {
    begin("barrier", tag);
    rendezvous("barrier", tag);
  }

 private:
  template <class Item>
  void weighted_group(const char* what, const std::vector<Item>& items, DType dtype, double weight,
                      const CollectiveTag& tag) {
    TRAINER_ASSERT(dtype == DType::f32 || dtype == DType::f64, "{} of {}", what, dtype_name(dtype));
    for (const Item& it : items) scale_in_place(it.data, it.count, dtype, weight);
    begin(what, tag);
    publish(const_cast<std::vector<Item>*>(&items));
    rendezvous(what, tag);
    int64_t total = 0;
    for (const Item& it : items) total += it.count;
    const int64_t lo = total * rank_ / s_.size, hi = total * (rank_ + 1) / s_.size;
    if (dtype == DType::f32)
      reduce_group<float>(items, lo, hi);
    else
      reduce_group<double>(items, lo, hi);
    rendezvous(what, tag);
  }

  // Elements [lo, hi) of the concatenation of every rank's spans or pieces (published as their vectors),
  // summed in rank order; a piece's sum goes to its root, a span's to every rank.
  template <class T, class Item>
  void reduce_group(const std::vector<Item>& mine, int64_t lo, int64_t hi) {
    int64_t base = 0;
    for (size_t t = 0; t < mine.size() && base < hi; base += mine[t].count, ++t) {
      const int64_t from = std::max(lo, base) - base, to = std::min(hi, base + mine[t].count) - base;
      int root = -1;
      if constexpr (std::is_same_v<Item, Piece>) root = mine[t].root;
      for (int64_t i = from; i < to; ++i) {
        auto at = [&](int k) {
          return &static_cast<T*>((*static_cast<std::vector<Item>*>(s_.ptrs[k]))[t].data)[i];
        };
        T sum = *at(0);
        for (int k = 1; k < s_.size; ++k) sum += *at(k);
        if (root >= 0) {
          *at(root) = sum;
        } else {
          for (int k = 0; k < s_.size; ++k) *at(k) = sum;
        }
      }
    }
  }

  // Elements [lo, hi) of the one published buffer per rank, summed in rank order into every buffer.
  template <class T>
  void reduce_slice(int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      T sum = static_cast<const T*>(s_.ptrs[0])[i];
      for (int k = 1; k < s_.size; ++k) sum += static_cast<const T*>(s_.ptrs[k])[i];
      for (int k = 0; k < s_.size; ++k) static_cast<T*>(s_.ptrs[k])[i] = sum;
    }
  }

  void begin(const char* what, const CollectiveTag& tag) {
    if (s_.stall.rank == rank_ && s_.stall.collective == collectives_)
      std::this_thread::sleep_for(std::chrono::duration<double>(s_.stall.seconds));
    ++collectives_;
  }

  void publish(void* data) {
    std::lock_guard<std::mutex> lock(s_.mu);
    s_.ptrs[rank_] = data;
  }

  // Waits until every rank has arrived; the watchdog: a wait longer than the timeout breaks the group.
  void rendezvous(const char* what, const CollectiveTag& tag) {
    std::unique_lock<std::mutex> lock(s_.mu);
    auto fail = [&] {
      s_.broken = true;
      s_.cv.notify_all();
      // Through the program's handler, which ends the process without unwinding: a stalled replica that
      // wakes during an unwinding would touch what the other replicas' teardown frees.
      fail_collective(
          CollectiveTimeout(rank_, host_name(), what, tag, std::chrono::duration<double>(timeout_).count()));
    };
    if (s_.broken) fail();
    const int64_t gen = s_.generation;
    if (++s_.arrived == s_.size) {
      s_.arrived = 0;
      ++s_.generation;
      s_.cv.notify_all();
      return;
    }
    if (!s_.cv.wait_for(lock, timeout_, [&] { return s_.generation != gen || s_.broken; }) || s_.broken)
      fail();
  }

  ThreadGroup::State& s_;
  const int rank_;
  int64_t collectives_ = 0;
};

}  // namespace

ThreadGroup::ThreadGroup(int size) : state_(std::make_unique<State>(size)) {
  TRAINER_ASSERT(size >= 1, "a thread group of {} ranks", size);
}

ThreadGroup::~ThreadGroup() = default;

int ThreadGroup::size() const {
  return state_->size;
}

std::unique_ptr<Communicator> ThreadGroup::communicator(int rank) {
  TRAINER_ASSERT(rank >= 0 && rank < state_->size, "rank {} of {}", rank, state_->size);
  return std::make_unique<ThreadCommunicator>(*state_, rank);
}

}  // namespace trainer::engine::dist
