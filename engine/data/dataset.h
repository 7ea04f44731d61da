// Datasets and the batch loader. A Dataset is random access over samples of one fixed shape (memory-mapped or
// streamed by its reader in formats/). The BatchLoader gathers shuffled batches on a background thread into
// preallocated buffers, converting types, scaling, normalizing and laying images out as the model's IR
// expects.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/ir/dtype.h"
#include "engine/ir/shape.h"

namespace trainer::engine::data {

// How a stored image sample orders its dimensions. The IR is NCHW; Keras-style HWC data is converted by the
// loader, once per sample on the loader thread, never by a transpose in the step.
enum class Layout { plain, hwc, chw };

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual const Shape& sample_shape() const = 0;  // as stored, without the batch dimension
  virtual DType sample_dtype() const = 0;         // u8, i32, i64, f32 or f64
  virtual Layout layout() const { return Layout::plain; }
  virtual const Shape& label_shape() const = 0;  // [] for class ids; [k] for one-hot or vector targets
  virtual DType label_dtype() const = 0;
  // Raw bytes of sample i / label i, in the stored dtype and layout. Thread-safe.
  virtual void read_sample(int64_t i, void* out) const = 0;
  virtual void read_label(int64_t i, void* out) const = 0;
  // Names the source in messages ("train-images-idx3-ubyte.gz").
  virtual std::string describe() const = 0;
  // Where sample i comes from, for messages about it: "data_batch_3.bin: sample 1234" (the file and the index
  // in it).
  virtual std::string locate(int64_t i) const;
  // A model of several inputs: the samples of its second, third, ... input, sample i of each going with
  // sample i here (their own labels are not read). Empty for a model of one input.
  virtual std::vector<std::shared_ptr<const Dataset>> more_inputs() const { return {}; }
};

// The samples of a model's first input (with the labels) joined with those of its further inputs, each of
// the same size (an InputError names the first that is not). When `first` has further inputs already, `more`
// come after them.
std::shared_ptr<Dataset> with_more_inputs(std::shared_ptr<const Dataset> first,
                                          std::vector<std::shared_ptr<const Dataset>> more);

// Samples [begin, end) of another dataset (validation_split, limit), and of its further inputs.
std::shared_ptr<Dataset> subset(std::shared_ptr<const Dataset> base, int64_t begin, int64_t end);

// How one model input's samples become its batch value.
struct InputFormat {
  DType x_dtype = DType::f32;  // f32 for features; i32/i64 for token ids (no scaling then)
  bool to_chw = false;         // convert HWC samples to CHW
  bool to_hwc = false;         // convert CHW samples to HWC (an exported channels-last model fed CIFAR-10)
  // > 0: the samples' values are already in [C, H, W] order with this many channels (a model's CHW input
  // fed NCHW arrays or flat rows), which per-channel mean and std follow; 0: see mean and std below.
  int64_t chw_channels = 0;
  double scale = 1.0;  // x = (x * scale - mean[c]) / std[c]
  // Empty, one value, or one per channel. The channel is the first dimension of CHW output and the last one
  // otherwise (HWC images; CSV features, one value per column).
  std::vector<double> mean, std;
  // Token ids (integer x_dtype) must lie in [0, num_tokens) when > 0 (an Embedding's input_dim).
  int64_t num_tokens = 0;
  // Said after the range in the hint of an id outside it: where the ids came from, and how to bound them.
  std::string token_hint;
  // The labels of a model's further output, fed as an input: no scaling; class ids (integer x_dtype) must
  // lie in [0, label_classes), other targets in [0, label_classes - 1], when label_classes > 0 (as
  // BatchFormat::num_classes checks the first output's).
  bool labels = false;
  int64_t label_classes = 0;
  std::optional<int64_t> label_ignore;  // a class id the loss skips, allowed whatever label_classes says
};

// What a batch must look like for the model: its first input (the InputFormat it extends), its labels, and
// its further inputs, if any.
struct BatchFormat : InputFormat {
  DType y_dtype = DType::i64;  // i64 class ids, or f32 targets
  // Labels must be class ids in [0, num_classes) when > 0; a bad label is an InputError naming the sample
  // index. With f32 targets the values must lie in [0, num_classes - 1] (binary labels in [0, 1]).
  int64_t num_classes = 0;
  // A class id that the loss skips (its ignore_class, such as -1 or 255), allowed outside [0, num_classes).
  std::optional<int64_t> ignore_class;
  // The formats of a model's second, third, ... input, each read from its own dataset (see BatchLoader).
  std::vector<InputFormat> more_inputs;
  // The validation and test data's own formats where their files store samples otherwise than the training
  // data's (channels first or last): null, this one.
  std::shared_ptr<const BatchFormat> validation, test;
  const BatchFormat& of_validation() const { return validation ? *validation : *this; }
  const BatchFormat& of_test() const { return test ? *test : *this; }
};

struct Batch {
  int64_t size = 0;         // samples in this batch (the last one may be short)
  const void* x = nullptr;  // the first input's values
  const void* y = nullptr;
  int64_t first = 0;  // index of the batch's first sample in the epoch's order
  // Every input's values, in the model's order (xs[0] == x); valid as long as x is.
  std::span<const void* const> xs;
};

// Produces the batches of one epoch after another on a background thread, `prefetch` batches ahead.
class BatchLoader {
 public:
  BatchLoader(std::shared_ptr<const Dataset> dataset, int64_t batch_size, BatchFormat format, bool shuffle,
              uint64_t seed, int prefetch = 2);
  // A dataset with more_inputs() fills one value per input: format.more_inputs[k] converts the samples of
  // more_inputs()[k].
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  int64_t batches_per_epoch() const;  // ceil(size / batch_size): no sample is dropped
  // [batch, ...] in the model's layout. With to_chw: HWC samples become [batch, C, H, W], CHW ones stay,
  // plain [H, W] images become [batch, 1, H, W] (same bytes).
  Shape x_shape(int64_t batch, size_t input = 0) const;
  size_t inputs() const;
  Shape y_shape(int64_t batch) const;
  // Starts epoch `epoch` (0-based): one pass over the data, whose order is a pure function of (seed, epoch):
  // a permutation from the counter-based generator, identical on every machine and after a resume.
  void start_epoch(int64_t epoch);
  // Starts a run of `count` batches at batch `batch` of pass `pass` (numbered as epochs are above), going on
  // into the passes after it when it reaches a pass's end: the batches of an epoch of steps_per_epoch steps,
  // read from the endless stream of passes. Batches before `batch` are not read.
  void start(int64_t pass, int64_t batch, int64_t count);
  // The next batch of the epoch (or run), valid until the next call of next() or start(); false at its end.
  // Rethrows reader errors and bad labels (InputError) at the batch that holds them. Allocates nothing.
  bool next(Batch* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Checks every sample's labels as a BatchLoader of `format` converts them when their batch comes: an
// InputError naming the first bad one, before any step rather than an epoch in.
void check_labels(const Dataset& ds, const BatchFormat& format);

// The epoch's sample order: a Fisher-Yates permutation driven by Philox keyed by (seed, epoch).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);
// The same into out[0..n), allocating nothing.
void epoch_permutation(int64_t n, uint64_t seed, int64_t epoch, int64_t* out);

}  // namespace trainer::engine::data
