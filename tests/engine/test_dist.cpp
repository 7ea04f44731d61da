// The in-process communicator's collectives (sums in rank order, bitwise), ZeRO-1's reduce-scatter and
// all-gather, the watchdog, and the bucket reducer's two ways of reducing a bucket: on its communication
// thread, and on the calling thread (what a CUDA graph capture uses).
#include <doctest/doctest.h>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/dist/bucket_reducer.h"
#include "engine/dist/communicator.h"
#include "engine/dist/mpi_communicator.h"
#include "engine/dist/replica_threads.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

// Runs body(rank) on `n` threads and joins them; an exception on a rank fails the test.
void on_ranks(int n, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  std::vector<std::string> errors(n);
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) CHECK_MESSAGE(errors[r].empty(), "rank " << r << ": " << errors[r]);
}

// Rank r's value at element i, and the weighted sum over ranks in rank order (float additions, as the
// communicator makes them).
float value(int r, int i) {
  return 0.1f * static_cast<float>(r + 1) + 0.001f * static_cast<float>(i);
}
float weighted_sum(int n, int i, const std::vector<double>& w) {
  float sum = value(0, i) * static_cast<float>(w[0]);
  for (int r = 1; r < n; ++r) sum += value(r, i) * static_cast<float>(w[r]);
  return sum;
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("dist: a bucket's all-reduce sums the weighted tensors in rank order, on every rank") {
    const int n = 3;
    const std::vector<double> w = {0.25, 0.5, 0.25};
    dist::ThreadGroup group(n);
    std::vector<std::vector<float>> a(n, std::vector<float>(5)), b(n, std::vector<float>(7));
    on_ranks(n, [&](int r) {
      for (int i = 0; i < 5; ++i) a[r][i] = value(r, i);
      for (int i = 0; i < 7; ++i) b[r][i] = value(r, 5 + i);
      auto comm = group.communicator(r);
      comm->all_reduce_weighted_sum_group({{a[r].data(), 5}, {b[r].data(), 7}}, DType::f32, w[r]);
    });
    for (int r = 0; r < n; ++r) {
      for (int i = 0; i < 5; ++i) CHECK(a[r][i] == weighted_sum(n, i, w));
      for (int i = 0; i < 7; ++i) CHECK(b[r][i] == weighted_sum(n, 5 + i, w));
    }
  }

  TEST_CASE(
      "dist: ZeRO-1's reduce-scatter lands each piece's sum at its root, and the all-gather copies it") {
    const int n = 3;
    const std::vector<double> w = {1, 1, 1};
    dist::ThreadGroup group(n);
    // Two tensors in three pieces: [0, 4) of the first to rank 2, [4, 6) to rank 0, the second to rank 1.
    std::vector<std::vector<float>> x(n, std::vector<float>(6)), y(n, std::vector<float>(3));
    std::vector<std::vector<float>> shard(n, std::vector<float>(4, -1.0f)), whole(n, std::vector<float>(9));
    on_ranks(n, [&](int r) {
      for (int i = 0; i < 6; ++i) x[r][i] = value(r, i);
      for (int i = 0; i < 3; ++i) y[r][i] = value(r, 6 + i);
      auto comm = group.communicator(r);
      comm->reduce_weighted_sum_group({{x[r].data(), 4, 2}, {x[r].data() + 4, 2, 0}, {y[r].data(), 3, 1}},
                                      DType::f32, 1.0);
      // Each rank's "shard" holds what it owns; the all-gather puts every shard into `whole` everywhere.
      const std::vector<std::pair<float*, int>> mine = {
          {x[r].data() + 4, 2}, {y[r].data(), 3}, {x[r].data(), 4}};  // the pieces of ranks 0, 1, 2
      std::copy(mine[r].first, mine[r].first + mine[r].second, shard[r].begin());
      comm->broadcast_group({{shard[r].data(), whole[r].data(), 4 * sizeof(float), 2},
                             {shard[r].data(), whole[r].data() + 4, 2 * sizeof(float), 0},
                             {shard[r].data(), whole[r].data() + 6, 3 * sizeof(float), 1}});
    });
    for (int i = 0; i < 4; ++i) CHECK(x[2][i] == weighted_sum(n, i, w));
    for (int i = 4; i < 6; ++i) CHECK(x[0][i] == weighted_sum(n, i, w));
    for (int i = 0; i < 3; ++i) CHECK(y[1][i] == weighted_sum(n, 6 + i, w));
    CHECK(x[1][0] == value(1, 0));  // not a root of that piece: its buffer is its own
    for (int r = 0; r < n; ++r)
      for (int i = 0; i < 9; ++i)
        CHECK_MESSAGE(whole[r][i] == weighted_sum(n, i, w), "rank " << r << " " << i);
  }

  TEST_CASE("dist: a rank that never arrives fails the others within the timeout, naming the collective") {
    dist::ThreadGroup group(2);
    auto comm = group.communicator(0);
    comm->set_timeout(std::chrono::milliseconds(200));
    std::vector<float> v(4, 1.0f);
    const auto t0 = std::chrono::steady_clock::now();
    std::string what;
    try {
      comm->all_reduce_weighted_sum_group({{v.data(), 4}}, DType::f32, 1.0, {3, 7});
    } catch (const dist::CollectiveTimeout& e) {
      what = e.what();
    }
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
    CHECK(what.find("all_reduce (bucket 3 of step 7) did not complete within 0.2 s") != std::string::npos);
  }

  TEST_CASE("dist: the bucket reducer sums on its thread, or on the caller's while a step is captured") {
    const int n = 2;
    dist::ThreadGroup group(n);
    std::vector<std::unique_ptr<dist::Communicator>> comms;
    for (int r = 0; r < n; ++r) comms.push_back(group.communicator(r));
    std::vector<std::vector<float>> g(n, std::vector<float>(6));
    const std::vector<double> w = {0.5, 0.5};
    for (bool inline_reduction : {false, true}) {
      CAPTURE(inline_reduction);
      on_ranks(n, [&](int r) {
        for (int i = 0; i < 6; ++i) g[r][i] = value(r, i);
        dist::BucketReducer reducer(comms[r].get(), nullptr, r);
        const dist::BucketReducer::Bucket bucket = {{{g[r].data(), 6, DType::f32}}};
        reducer.begin_step({bucket}, 0, w[r]);
        if (inline_reduction) {
          reducer.reduce_now(&bucket, 0);
          reducer.order_after(0);
        } else {
          reducer.ready(&bucket, 0);
          reducer.wait(0);
        }
        CHECK(reducer.captured_weight() == w[r]);
      });
      for (int r = 0; r < n; ++r)
        for (int i = 0; i < 6; ++i) CHECK(g[r][i] == weighted_sum(n, i, w));
    }
  }

  TEST_CASE("dist: accumulated buckets are summed on update steps only, unweighted") {
    const int n = 2;
    dist::ThreadGroup group(n);
    std::vector<std::unique_ptr<dist::Communicator>> comms;
    for (int r = 0; r < n; ++r) comms.push_back(group.communicator(r));
    // Bucket 0 holds accumulated gradients (weighted by each replica's graph), bucket 1 a ReplicaMean's
    // values, reduced every step with the step's weights.
    std::vector<std::vector<float>> acc(n, std::vector<float>(4)), mean(n, std::vector<float>(3));
    const std::vector<double> w = {0.25, 0.75};
    for (bool update : {false, true}) {
      CAPTURE(update);
      on_ranks(n, [&](int r) {
        for (int i = 0; i < 4; ++i) acc[r][i] = value(r, i);
        for (int i = 0; i < 3; ++i) mean[r][i] = value(r, i);
        dist::BucketReducer reducer(comms[r].get(), nullptr, r);
        std::vector<dist::BucketReducer::Bucket> buckets(2);
        buckets[0] = {{{acc[r].data(), 4, DType::f32}}, true};
        buckets[1] = {{{mean[r].data(), 3, DType::f32}}, false};
        reducer.begin_step(buckets, 0, w[r], update);
        for (int b : {0, 1}) reducer.ready(&buckets[b], b);
        for (int b : {0, 1}) reducer.wait(b);
        // A captured step of each kind reduces differently: their keys differ.
        CHECK((reducer.captured_weight() == w[r]) == update);
      });
      for (int r = 0; r < n; ++r) {
        for (int i = 0; i < 4; ++i) CHECK(acc[r][i] == (update ? value(0, i) + value(1, i) : value(r, i)));
        for (int i = 0; i < 3; ++i) CHECK(mean[r][i] == weighted_sum(n, i, w));
      }
    }
  }

  TEST_CASE("dist: two ranks given one GPU are refused on every rank, naming both") {
    const int n = 3;
    for (const bool shared : {false, true}) {
      CAPTURE(shared);
      dist::ThreadGroup group(n);
      std::vector<std::string> errors(n);
      on_ranks(n, [&](int r) {
        auto comm = group.communicator(r);
        // Rank 2 gets rank 1's GPU when shared.
        const std::string gpu = fmt::format("0000:{:02x}:00.0", shared && r == 2 ? 1 : r);
        try {
          dist::check_devices_distinct(*comm, gpu, "srun");
        } catch (const InputError& e) {
          errors[r] = e.what();
        }
      });
      for (int r = 0; r < n; ++r) {
        if (!shared) {
          CHECK(errors[r].empty());
          continue;
        }
        CHECK(errors[r].find("ranks 1 and 2 would both drive the GPU 0000:01:00.0 on ") != std::string::npos);
      }
    }
  }

  TEST_CASE("dist: the launcher's environment gives rank, size and the ranks on this machine") {
    // Whatever launched this test, its variables are set aside and put back.
    const char* names[] = {"OMPI_COMM_WORLD_SIZE",
                           "OMPI_COMM_WORLD_RANK",
                           "OMPI_COMM_WORLD_LOCAL_RANK",
                           "OMPI_COMM_WORLD_LOCAL_SIZE",
                           "SLURM_NTASKS",
                           "SLURM_PROCID",
                           "SLURM_LOCALID",
                           "SLURM_NODEID",
                           "SLURM_NTASKS_PER_NODE",
                           "SLURM_STEP_TASKS_PER_NODE",
                           "SLURM_TASKS_PER_NODE",
                           "SLURM_STEP_NUM_TASKS",
                           "PMI_SIZE",
                           "PMI_RANK",
                           "MPI_LOCALRANKID",
                           "MPI_LOCALNRANKS"};
    std::vector<std::pair<std::string, std::string>> saved;
    for (const char* name : names)
      if (const char* v = std::getenv(name)) saved.emplace_back(name, v);
    auto clear = [&] {
      for (const char* name : names) unsetenv(name);
    };
    // Each case: the launcher's variables alone, and what they say.
    struct Case {
      const char* what;
      std::vector<std::pair<const char*, const char*>> env;
      std::string launcher;
      int size, rank, local_rank, local_size;
    };
    const std::vector<Case> cases = {
        {"no launcher", {}, "", 1, 0, 0, 1},
        {"a batch script's own environment: the job's tasks, but no srun step",
         {{"SLURM_NTASKS", "8"},
          {"SLURM_PROCID", "0"},
          {"SLURM_LOCALID", "0"},
          {"SLURM_TASKS_PER_NODE", "4(x2)"}},
         "",
         1,
         0,
         0,
         1},
        {"srun, the last machine of 2(x3),1",
         {{"SLURM_STEP_NUM_TASKS", "7"},
          {"SLURM_PROCID", "6"},
          {"SLURM_LOCALID", "0"},
          {"SLURM_NODEID", "3"},
          {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1"}},
         "srun",
         7,
         6,
         0,
         1},
        {"srun, the second machine of 2(x3),1",
         {{"SLURM_STEP_NUM_TASKS", "7"},
          {"SLURM_PROCID", "3"},
          {"SLURM_LOCALID", "1"},
          {"SLURM_NODEID", "1"},
          {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1"}},
         "srun",
         7,
         3,
         1,
         2},
        {"srun without the step's layout: the job's",
         {{"SLURM_STEP_NUM_TASKS", "7"},
          {"SLURM_PROCID", "6"},
          {"SLURM_LOCALID", "2"},
          {"SLURM_NODEID", "1"},
          {"SLURM_TASKS_PER_NODE", "4,3"}},
         "srun",
         7,
         6,
         2,
         3},
        {"srun with a malformed layout: SLURM_NTASKS_PER_NODE",
         {{"SLURM_STEP_NUM_TASKS", "7"},
          {"SLURM_PROCID", "6"},
          {"SLURM_LOCALID", "2"},
          {"SLURM_NODEID", "1"},
          {"SLURM_TASKS_PER_NODE", "4(x"},
          {"SLURM_NTASKS_PER_NODE", "5"}},
         "srun",
         7,
         6,
         2,
         5},
        {"MPICH's mpiexec inside a Slurm job: its helpers are srun's tasks, one per machine; the ranks are "
         "PMI's",
         {{"SLURM_STEP_NUM_TASKS", "2"},
          {"SLURM_PROCID", "1"},
          {"SLURM_LOCALID", "0"},
          {"PMI_SIZE", "8"},
          {"PMI_RANK", "5"},
          {"MPI_LOCALRANKID", "1"},
          {"MPI_LOCALNRANKS", "4"}},
         "mpirun",
         8,
         5,
         1,
         4},
        {"srun --mpi=pmi2: PMI's ranks are the step's tasks",
         {{"SLURM_STEP_NUM_TASKS", "4"},
          {"SLURM_PROCID", "3"},
          {"SLURM_LOCALID", "1"},
          {"SLURM_NODEID", "1"},
          {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"},
          {"PMI_SIZE", "4"},
          {"PMI_RANK", "3"}},
         "srun",
         4,
         3,
         1,
         2},
        {"OpenMPI's mpirun",
         {{"OMPI_COMM_WORLD_SIZE", "4"},
          {"OMPI_COMM_WORLD_RANK", "3"},
          {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
          {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}},
         "mpirun",
         4,
         3,
         1,
         2},
    };
    for (const Case& c : cases) {
      CAPTURE(c.what);
      clear();
      for (const auto& [name, value] : c.env) setenv(name, value, 1);
      const dist::LaunchInfo l = dist::LaunchInfo::from_environment();
      CHECK(l.launcher == c.launcher);
      CHECK(l.size == c.size);
      CHECK(l.rank == c.rank);
      CHECK(l.local_rank == c.local_rank);
      CHECK(l.local_size == c.local_size);
    }
    clear();
    for (const auto& [name, value] : saved) setenv(name.c_str(), value.c_str(), 1);
  }

  TEST_CASE("dist: a replica whose step never ends fails the run within the timeout, naming it") {
    // As with NCCL, whose collectives return before they complete: nothing else would notice the stall.
    dist::ReplicaThreads threads(3);
    std::atomic<int> sleep_ms{100};
    std::function<void(int)> job = [&](int k) {
      if (k == 2) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms.load()));
    };
    threads.run(job, std::chrono::milliseconds(2000), {-1, 6});  // slow, but in time: no error
    sleep_ms = 1500;
    const auto t0 = std::chrono::steady_clock::now();
    std::string error;
    try {
      threads.run(job, std::chrono::milliseconds(200), {-1, 7});
    } catch (const dist::CollectiveTimeout& e) {
      error = e.what();
    }
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    CHECK(error.find("rank 0 on ") == 0);
    CHECK(error.find("waiting for replica 2's step (step 7) did not complete within 0.2 s") !=
          std::string::npos);
  }
}
