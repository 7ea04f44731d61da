// The NCCL communicator: the dlopen table without a GPU (when libnccl.so.2 is installed), and on a GPU the
// collectives of a group of one (two or more when the machine has them) and the watchdog's timeout.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/dist/nccl_communicator.h"

using namespace trainer::engine;
using namespace trainer::engine::dist;

namespace {

void check_cuda(cudaError_t status) {
  REQUIRE_MESSAGE(status == cudaSuccess, cudaGetErrorString(status));
}

// Device memory holding `host`'s bytes; freed at scope end.
struct DeviceBytes {
  explicit DeviceBytes(const void* host, size_t n) : bytes(n) {
    check_cuda(cudaMalloc(&ptr, n));
    check_cuda(cudaMemcpy(ptr, host, n, cudaMemcpyHostToDevice));
    // From pageable memory the copy may still be in flight when cudaMemcpy returns, on the legacy stream that
    // the non-blocking compute and NCCL streams do not wait for.
    check_cuda(cudaDeviceSynchronize());
  }
  ~DeviceBytes() { cudaFree(ptr); }
  std::vector<unsigned char> read(cudaStream_t stream) const {
    std::vector<unsigned char> out(bytes);
    check_cuda(cudaMemcpyAsync(out.data(), ptr, bytes, cudaMemcpyDeviceToHost, stream));
    check_cuda(cudaStreamSynchronize(stream));
    return out;
  }
  void* ptr = nullptr;
  size_t bytes;
};

template <class T>
std::vector<unsigned char> as_bytes(const std::vector<T>& v) {
  std::vector<unsigned char> out(v.size() * sizeof(T));
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// When the watchdog gave up: fail_collective calls the handler first, before the abort (ncclCommAbort frees
// pinned memory, which waits for the device: for the test's host function still holding the stream).
std::atomic<int64_t> g_gave_up_ns{0};
void note_gave_up(const trainer::RuntimeError&, const std::function<void()>&) {
  g_gave_up_ns = std::chrono::steady_clock::now().time_since_epoch().count();
}

void sleep_on_host(void* ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(reinterpret_cast<intptr_t>(ms)));
}

}  // namespace

TEST_SUITE("cuda_registry") {
  TEST_CASE("cuda_registry: the NCCL dlopen table loads when libnccl.so.2 is installed") {
    void* probe = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!probe) {
      MESSAGE("skipped: libnccl.so.2 is not installed here (" << dlerror() << ")");
      return;
    }
    dlclose(probe);
    const int version = nccl_version();  // resolves every function of the table, or throws naming it
    MESSAGE("NCCL " << version);
    CHECK(version / 10000 == 2);
    CHECK(version >= 21400);  // ncclCommFinalize, which the group's teardown calls, came in 2.14
  }
}

TEST_SUITE("cuda") {
  TEST_CASE("cuda: NCCL group of one: all_reduce_sum, broadcast and barrier keep the rank's data") {
    cudaStream_t compute = nullptr;
    check_cuda(cudaSetDevice(0));
    check_cuda(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    {
      std::vector<std::unique_ptr<Communicator>> group = make_nccl_group({0}, {compute});
      REQUIRE(group.size() == 1);
      auto& comm = dynamic_cast<NcclCommunicator&>(*group[0]);
      CHECK(comm.kind() == "nccl");
      CHECK(comm.rank() == 0);
      CHECK(comm.size() == 1);
      comm.set_timeout(std::chrono::milliseconds(60000));

      std::vector<float> f32(1000);
      for (size_t i = 0; i < f32.size(); ++i) f32[i] = 0.25f * static_cast<float>(i) - 7.0f;
      std::vector<double> f64(333);
      for (size_t i = 0; i < f64.size(); ++i) f64[i] = 1.0 / (1.0 + static_cast<double>(i));
      std::vector<uint16_t> bf16(257);
      for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = static_cast<uint16_t>(0x3f80 + i);  // 1.0 and up

      DeviceBytes d32(f32.data(), f32.size() * 4), d64(f64.data(), f64.size() * 8),
          d16(bf16.data(), bf16.size() * 2);
      const CollectiveTag tag{0, 1};
      comm.all_reduce_sum(d32.ptr, static_cast<int64_t>(f32.size()), DType::f32, tag);
      comm.all_reduce_sum(d64.ptr, static_cast<int64_t>(f64.size()), DType::f64, tag);
      comm.all_reduce_sum(d16.ptr, static_cast<int64_t>(bf16.size()), DType::bf16, tag);
      comm.wait(tag);
      CHECK(d32.read(compute) == as_bytes(f32));  // the sum over one rank is that rank's data, bitwise
      CHECK(d64.read(compute) == as_bytes(f64));
      CHECK(d16.read(compute) == as_bytes(bf16));

      std::vector<unsigned char> blob(4099);
      for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<unsigned char>(i * 7 + 3);
      DeviceBytes db(blob.data(), blob.size());
      comm.broadcast(db.ptr, blob.size(), 0, tag);
      comm.barrier(tag);  // waits for the broadcast before it too
      CHECK(db.read(compute) == blob);
    }
    check_cuda(cudaStreamDestroy(compute));
  }

  TEST_CASE("cuda: NCCL watchdog: a collective that cannot complete in time aborts and names it") {
    // The collective is ordered after the compute stream, which a host function holds for 1.5 s: with a
    // 0.2 s timeout, wait() must give up, abort, and name the rank, the collective, the bucket and the step.
    cudaStream_t compute = nullptr;
    check_cuda(cudaSetDevice(0));
    check_cuda(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    {
      std::vector<std::unique_ptr<Communicator>> group = make_nccl_group({0}, {compute});
      auto& comm = dynamic_cast<NcclCommunicator&>(*group[0]);
      comm.set_timeout(std::chrono::milliseconds(200));
      std::vector<float> x(64, 1.0f);
      DeviceBytes d(x.data(), x.size() * 4);
      check_cuda(cudaLaunchHostFunc(compute, sleep_on_host, reinterpret_cast<void*>(intptr_t{1500})));
      comm.all_reduce_sum(d.ptr, 64, DType::f32, CollectiveTag{3, 7});
      std::string message;
      const FatalCollectiveHandler before = fatal_collective_handler();
      set_fatal_collective_handler(note_gave_up);  // returns: the abort and the throw follow
      g_gave_up_ns = 0;
      const auto start = std::chrono::steady_clock::now();
      try {
        comm.wait(CollectiveTag{-1, 7});
      } catch (const CollectiveTimeout& e) {
        message = e.what();
        CHECK(e.rank() == 0);
      }
      set_fatal_collective_handler(before);
      REQUIRE(g_gave_up_ns.load() != 0);
      const auto gave_up =
          std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(g_gave_up_ns.load()));
      const double waited_s = std::chrono::duration<double>(gave_up - start).count();
      CHECK(waited_s >= 0.2);
      CHECK(message.find("rank 0") != std::string::npos);
      CHECK(message.find("all_reduce") != std::string::npos);
      CHECK(message.find("bucket 3 of step 7") != std::string::npos);
      CHECK(waited_s < 1.2);  // it gave up at the timeout, not when the stream got going again
      // The communicator is aborted: later collectives refuse to run.
      CHECK_THROWS_AS(comm.all_reduce_sum(d.ptr, 64, DType::f32, CollectiveTag{4, 7}), trainer::RuntimeError);
      check_cuda(cudaStreamSynchronize(compute));
    }
    check_cuda(cudaStreamDestroy(compute));
  }

  TEST_CASE("cuda: NCCL group of every GPU: sums across ranks, one thread per rank") {
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices));
    if (devices < 2) {
      MESSAGE("skipped: " << devices << " GPU (a real sum needs two)");
      return;
    }
    std::vector<int> ids(devices);
    std::vector<cudaStream_t> streams(devices);
    for (int r = 0; r < devices; ++r) {
      ids[r] = r;
      check_cuda(cudaSetDevice(r));
      check_cuda(cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking));
    }
    {
      std::vector<std::unique_ptr<Communicator>> group = make_nccl_group(ids, streams);
      const size_t n = 4096;
      // Rank r holds i % 100 + r: small integers, whose sum is exact in any order of addition.
      std::vector<std::vector<float>> results(devices, std::vector<float>(n));
      std::vector<std::string> errors(devices);
      std::vector<std::thread> threads;
      for (int r = 0; r < devices; ++r)
        threads.emplace_back([&, r] {
          // A failed assertion would throw out of the thread: errors are carried to the test's thread.
          void* d = nullptr;
          try {
            auto cuda = [](cudaError_t s) {
              if (s != cudaSuccess) throw std::runtime_error(cudaGetErrorString(s));
            };
            cuda(cudaSetDevice(r));
            std::vector<float> x(n);
            for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 100 + r);
            cuda(cudaMalloc(&d, n * 4));
            cuda(cudaMemcpy(d, x.data(), n * 4, cudaMemcpyHostToDevice));
            auto& comm = dynamic_cast<NcclCommunicator&>(*group[r]);
            comm.all_reduce_sum(d, static_cast<int64_t>(n), DType::f32, CollectiveTag{0, 0});
            comm.wait();
            comm.barrier();
            cuda(cudaMemcpyAsync(results[r].data(), d, n * 4, cudaMemcpyDeviceToHost, streams[r]));
            cuda(cudaStreamSynchronize(streams[r]));
          } catch (const std::exception& e) {
            errors[r] = e.what();
          }
          cudaFree(d);
        });
      for (auto& t : threads) t.join();
      for (int r = 0; r < devices; ++r) CHECK_MESSAGE(errors[r].empty(), "rank ", r, ": ", errors[r]);
      const float ranks_sum = static_cast<float>(devices * (devices - 1) / 2);
      for (int r = 0; r < devices; ++r)
        for (size_t i = 0; i < n; i += 97) {
          CAPTURE(r);
          CAPTURE(i);
          CHECK(results[r][i] == static_cast<float>(devices) * static_cast<float>(i % 100) + ranks_sum);
        }
    }
    for (int r = 0; r < devices; ++r) cudaStreamDestroy(streams[r]);
  }
}
