// A complete training run through the engine's C++ API: a 3-class spiral problem, an MLP (Dense 64 relu,
// Dense 64 relu, Dense 3) with Adam and softmax cross-entropy, on the CPU. Progress on stderr, one JSON line
// per epoch on stdout.
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <vector>

#include "engine/data/synthetic.h"
#include "engine/train/training.h"
#include "models/layers.h"

using namespace trainer;
using namespace trainer::engine;

int main() {
  const int classes = 3, per_class = 200, batch = 60, epochs = 40;
  const uint64_t seed = 7;
  data::Synthetic ds = data::spirals(per_class, classes, 0.2f, seed);
  const int64_t n = ds.x.shape()[0];

  Graph g;
  ValueId x = g.add_input("x", DType::f32, Shape{batch, 2});
  ValueId y = g.add_input("y", DType::i64, Shape{batch});
  models::LayerContext ctx{g, seed};
  ValueId h = models::dense(ctx, x, 64, "relu", "dense_1");
  h = models::dense(ctx, h, 64, "relu", "dense_2");
  ValueId logits = models::dense(ctx, h, classes, "linear", "dense_3");
  ValueId loss = g.op("SoftmaxCrossEntropyLoss", {logits, y});
  g.mark_output(logits);

  TrainingOptions opt;
  opt.optimizer.kind = "adam";
  TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
  auto backend = make_cpu_backend();
  Trainer trainer(std::move(tg), *backend, seed, opt);
  const Program& p = trainer.session().program();
  fmt::print(stderr, "spiral MLP on {}: {} steps in the plan, arena {:.1f} KiB (naive {:.1f} KiB)\n",
             backend->description(), p.steps.size(), p.arena_bytes() / 1024.0, p.naive_bytes / 1024.0);

  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::vector<float> bx(batch * 2), blogits(batch * classes);
  std::vector<int64_t> by(batch);
  uint64_t shuffle_state = seed;
  auto next = [&] {
    uint64_t z = (shuffle_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  float last_loss = 0, last_acc = 0;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[next() % (i + 1)]);
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t b = 0; b < n / batch; ++b) {
      for (int i = 0; i < batch; ++i) {
        int64_t k = order[b * batch + i];
        bx[2 * i] = ds.x.data<float>()[2 * k];
        bx[2 * i + 1] = ds.x.data<float>()[2 * k + 1];
        by[i] = ds.y.data<int64_t>()[k];
      }
      trainer.feed(x, bx.data(), bx.size() * sizeof(float));
      trainer.feed(y, by.data(), by.size() * sizeof(int64_t));
      loss_sum += trainer.step(0.01f);
      trainer.session().read(logits, blogits.data(), blogits.size() * sizeof(float));
      for (int i = 0; i < batch; ++i) {
        const float* row = &blogits[i * classes];
        correct += (std::max_element(row, row + classes) - row) == by[i];
      }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    last_loss = static_cast<float>(loss_sum / (n / batch));
    last_acc = static_cast<float>(correct) / n;
    fmt::print(stderr, "Epoch {}/{} · {:.3f}s · loss {:.4f} · accuracy {:.4f}\n", epoch, epochs, secs,
               last_loss, last_acc);
    fmt::print("{{\"epoch\": {}, \"loss\": {:.6f}, \"accuracy\": {:.6f}, \"seconds\": {:.6f}}}\n", epoch,
               last_loss, last_acc, secs);
  }
  return last_acc > 0.9f ? 0 : 1;
}
