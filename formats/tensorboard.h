// TensorBoard event files, as Keras's TensorBoard callback writes them: one file per run of `fit` in
// LOG_DIR/train and LOG_DIR/validation, with the epoch's scalars (epoch_loss, epoch_accuracy, ...,
// epoch_learning_rate) at step epoch - 1.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "engine/ir/tensor.h"

namespace trainer::formats {

// CRC-32C (Castagnoli), the checksum of TFRecord framing.
uint32_t crc32c(const void* data, size_t n);

// One TFRecord: the length, its masked CRC-32C, the data and its masked CRC-32C.
std::string tfrecord(const std::string& data);

// An Event protobuf holding scalar summaries (tag, value) at a step, or the file's version record when
// `values` is empty and `file_version` is not.
std::string tensorboard_event(double wall_time, int64_t step,
                              const std::vector<std::pair<std::string, double>>& values,
                              const std::string& file_version = "");

// The histogram TensorBoard's histograms and distributions dashboards show of a tensor's finite values: equal
// buckets from its minimum to its maximum (one bucket when they are equal), with the count, sum and sum of
// squares.
struct Histogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;  // right edges, counts
};
Histogram histogram_of(const engine::Tensor& t, int buckets = 30);

// An Event holding histogram summaries (tag, histogram) at a step.
std::string tensorboard_histogram_event(double wall_time, int64_t step,
                                        const std::vector<std::pair<std::string, Histogram>>& histograms);

class TensorBoardWriter {
 public:
  // Creates log_dir/train and log_dir/validation (an InputError naming the folder when it cannot); the
  // event files are created at the first scalars of their run. The folders made here are removed again, if
  // still empty, when the writer ends without having written (a run that failed before its first epoch).
  explicit TensorBoardWriter(std::string log_dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Appends the scalars of one step to run ("train" or "validation") and flushes them, so that a
  // TensorBoard watching the folder sees them at once; with `sync`, to the disk too (at each epoch's end:
  // per-batch scalars are synced with it). Returns an error message ("" when written).
  std::string write(const std::string& run, int64_t step,
                    const std::vector<std::pair<std::string, double>>& values, bool sync = true);
  // Appends histograms of the tensors (Keras's histogram_freq: the weights, in the train run).
  std::string write_histograms(const std::string& run, int64_t step,
                               const std::vector<std::pair<std::string, engine::Tensor>>& tensors);

  const std::string& log_dir() const { return log_dir_; }

 private:
  struct File {
    std::string run;
    std::FILE* f = nullptr;
  };
  std::string append(const std::string& run, const std::string& event, bool sync = true);
  std::string log_dir_;
  std::vector<File> files_;
  std::vector<std::string> made_;  // outermost first
};

}  // namespace trainer::formats
