// The batch loader: a producer thread (with helpers for large batches) gathers the samples of each batch in
// the epoch's order into a ring of preallocated buffers, converting dtype, scaling, normalizing and
// transposing HWC images to CHW, so the training step only ever sees ready batches and next() allocates
// nothing.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "engine/data/dataset.h"
#include "engine/util/error.h"

namespace trainer::engine::data {

namespace {

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte[], AlignedFree>;

Buffer aligned_buffer(size_t bytes) {
  size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  auto* p = static_cast<std::byte*>(std::aligned_alloc(64, rounded));
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  return Buffer(p);
}

bool is_supported_sample_dtype(DType t) {
  return t == DType::u8 || t == DType::i32 || t == DType::i64 || t == DType::f32 || t == DType::f64;
}

// How a sample's elements map from the stored order to the batch: element (c, p) of channel c and position p
// reads src[c * src_c + p * src_p] and writes dst[c * dst_c + p * dst_p].
struct Geometry {
  int64_t channels = 1, positions = 1;
  int64_t src_c = 0, src_p = 1, dst_c = 0, dst_p = 1;
};

// Element i of a buffer of T, as double.
template <class T>
double as_double(const void* p, int64_t i) {
  return static_cast<double>(static_cast<const T*>(p)[i]);
}

// What the per-sample converters need: read-only after construction, shared by the gathering threads.
struct Conversion {
  const Dataset* ds = nullptr;
  InputFormat format;
  int64_t sample_elems = 0;
  Geometry geo;
  std::vector<double> alpha, beta;  // per normalization channel: x * alpha + beta
};

using XConvert = void (*)(const Conversion&, const void* src, void* dst, int64_t sample);

}  // namespace

struct BatchLoader::Impl {
  std::shared_ptr<const Dataset> ds;  // the first input's samples, and the labels
  int64_t n = 0, batch_size = 0, bpe = 0;
  BatchFormat format;
  bool shuffle = true;
  uint64_t seed = 0;
  int nslots = 0;

  // Per-sample geometry and conversion of one input.
  struct Input {
    std::shared_ptr<const Dataset> ds;
    InputFormat format;
    DType src_dtype = DType::f32;
    size_t src_sample_bytes = 0, dst_sample_bytes = 0;
    int64_t sample_elems = 0;
    Shape out_sample_shape;
    Conversion cv;
    bool direct_copy = false;  // stored bytes are already the batch's bytes
    XConvert x_convert = nullptr;
  };
  std::vector<Input> inputs;
  DType label_src_dtype = DType::i64;
  size_t src_label_bytes = 0, dst_label_bytes = 0;
  int64_t label_elems = 0;

  struct Slot {
    std::vector<Buffer> x;        // one per input
    std::vector<const void*> xs;  // their addresses, as a Batch shows them
    Buffer y;
  };
  std::vector<Slot> slots;

  // Producer-owned state.
  std::vector<int64_t> perm;
  int64_t perm_epoch = -1;

  // Shared state, guarded by mu. Batches are numbered by a sequence that runs through consecutive epochs from
  // base_epoch on: the producer fills the ring ahead, also into the next epoch while the trainer evaluates.
  std::mutex mu;
  std::condition_variable producer_cv, consumer_cv;
  bool started = false, stop = false, holding = false, failed = false;
  uint64_t gen = 0;
  int64_t base_epoch = 0, produced = 0, consumed = 0, epoch_end = 0, error_seq = -1;
  std::exception_ptr error;
  std::atomic<uint64_t> gen_now{0};
  std::atomic<bool> stopping{false};
  std::thread producer;

  // Helpers that gather parts of a large batch in parallel with the producer.
  struct Worker {
    std::vector<Buffer> x_scratch;  // one per input
    Buffer y_scratch;
    std::exception_ptr error;
  };
  std::vector<Worker> workers;  // [0] is the producer itself
  struct Job {
    const Slot* slot = nullptr;
    const int64_t* order = nullptr;  // sample of batch position k: order[k], or first + k when null
    int64_t first = 0, count = 0;
    uint64_t gen = 0;
  };
  std::mutex pool_mu;
  std::condition_variable pool_cv, pool_done_cv;
  Job job;
  uint64_t job_id = 0;
  int pool_pending = 0;
  bool pool_stop = false;
  std::vector<std::thread> helpers;

  void plan();
  void plan_input(Input& in) const;
  void gather(const Job& j, int w, int parts);
  void convert_label(const void* src, std::byte* dst, int64_t sample) const;
  void fill(int64_t seq, int64_t epoch, uint64_t g);
  void produce_loop();
  void helper_loop(int w);
  int64_t released() const { return consumed - (holding ? 1 : 0); }
  int64_t batch_count(int64_t b) const { return std::min(batch_size, n - b * batch_size); }
};

namespace {

// Computed in double and rounded once, so f32 results are the correctly rounded (x * scale - mean) / std in
// practice, and the unit-stride loop (every layout but a transpose) vectorizes.
template <class S, class D>
void convert_float(const Conversion& im, const void* src_v, void* dst_v, int64_t) {
  const S* src = static_cast<const S*>(src_v);
  D* dst = static_cast<D*>(dst_v);
  const Geometry& g = im.geo;
  for (int64_t c = 0; c < g.channels; ++c) {
    const S* s = src + c * g.src_c;
    D* d = dst + c * g.dst_c;
    const size_t nc = im.alpha.size() > 1 ? static_cast<size_t>(c) : 0;
    const double a = im.alpha[nc], b = im.beta[nc];
    if (g.src_p == 1 && g.dst_p == 1) {
      for (int64_t p = 0; p < g.positions; ++p) d[p] = static_cast<D>(static_cast<double>(s[p]) * a + b);
    } else {
      for (int64_t p = 0; p < g.positions; ++p) {
        d[p * g.dst_p] = static_cast<D>(static_cast<double>(s[p * g.src_p]) * a + b);
      }
    }
  }
}

// Token ids: integer conversion, checked against the embedding's size; scaling does not apply.
template <class S, class D>
void convert_ids(const Conversion& im, const void* src_v, void* dst_v, int64_t sample) {
  const S* src = static_cast<const S*>(src_v);
  D* dst = static_cast<D*>(dst_v);
  const int64_t limit = im.format.num_tokens;
  const Geometry& g = im.geo;
  for (int64_t c = 0; c < g.channels; ++c) {
    for (int64_t p = 0; p < g.positions; ++p) {
      const int64_t e = c * g.src_c + p * g.src_p;
      const S v = src[e];
      if constexpr (std::is_floating_point_v<S>) {
        if (!(v == std::floor(v))) {
          throw InputError(im.ds->locate(sample), fmt::format("element {} is {}, not a token id", e, v),
                           "token ids are whole numbers; store them as integers");
        }
      }
      const double dv = static_cast<double>(v);
      if (limit > 0 && (dv < 0 || dv >= static_cast<double>(limit))) {
        throw InputError(
            im.ds->locate(sample),
            fmt::format("token id {} (element {}) is out of range for {} tokens", v, e, limit),
            fmt::format("the model takes {} distinct token ids: ids must lie in [0, {}]{}", limit, limit - 1,
                        im.format.token_hint.empty() ? "" : "; " + im.format.token_hint));
      }
      dst[c * g.dst_c + p * g.dst_p] = static_cast<D>(v);
    }
  }
}

template <template <class, class> class F, class S>
XConvert pick_dst(DType dst) {
  switch (dst) {
    case DType::f32:
      return &F<S, float>::run;
    case DType::f64:
      return &F<S, double>::run;
    case DType::i32:
      return &F<S, int32_t>::run;
    case DType::i64:
      return &F<S, int64_t>::run;
    default:
      return nullptr;
  }
}

template <class S, class D>
struct XConv {
  static void run(const Conversion& im, const void* s, void* d, int64_t i) {
    if constexpr (std::is_floating_point_v<D>) {
      convert_float<S, D>(im, s, d, i);
    } else {
      convert_ids<S, D>(im, s, d, i);
    }
  }
};

XConvert pick_converter(DType src, DType dst) {
  switch (src) {
    case DType::u8:
      return pick_dst<XConv, uint8_t>(dst);
    case DType::i32:
      return pick_dst<XConv, int32_t>(dst);
    case DType::i64:
      return pick_dst<XConv, int64_t>(dst);
    case DType::f32:
      return pick_dst<XConv, float>(dst);
    case DType::f64:
      return pick_dst<XConv, double>(dst);
    default:
      return nullptr;
  }
}

double read_as_double(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::u8:
      return as_double<uint8_t>(p, i);
    case DType::i32:
      return as_double<int32_t>(p, i);
    case DType::i64:
      return as_double<int64_t>(p, i);
    case DType::f32:
      return as_double<float>(p, i);
    case DType::f64:
      return as_double<double>(p, i);
    default:
      return 0;
  }
}

// Sample `sample`'s n labels from src (of dtype src_t) into dst (of dtype dst_t): class ids (integer dst_t)
// must be whole numbers in [0, k) or `ignore` (the loss's ignore_class), other targets lie in [0, k - 1]
// (binary labels in [0, 1]), when k > 0.
void store_labels(DType src_t, const void* src, DType dst_t, std::byte* dst, int64_t n, int64_t k,
                  const std::optional<int64_t>& ignore, const Dataset& ds, int64_t sample) {
  for (int64_t e = 0; e < n; ++e) {
    double v = read_as_double(src_t, src, e);
    if (!std::isfinite(v))
      throw InputError(ds.locate(sample), fmt::format("label {} (element {}) is not a finite number", v, e),
                       "the loss would be NaN: fix or drop the samples whose labels are NaN or infinite");
    const bool class_ids = dst_t == DType::i64 || dst_t == DType::i32;
    if (class_ids && !(v == std::floor(v))) {
      throw InputError(
          ds.locate(sample), fmt::format("label {} is not a class id", v),
          "class ids are whole numbers; use categorical_crossentropy or mse for fractional targets");
    }
    const bool ignored = class_ids && ignore && v == static_cast<double>(*ignore);
    if (k > 0 && !ignored &&
        (class_ids ? (v < 0 || v >= static_cast<double>(k)) : !(v >= 0 && v <= static_cast<double>(k - 1)))) {
      if (class_ids && k == 1)
        throw InputError(
            ds.locate(sample), fmt::format("label {} is a class id, and the model's output has one unit", v),
            "one unit gives one probability: use binary_crossentropy with 0/1 labels, or give the "
            "last layer one unit per class");
      if (!class_ids && k == 2)
        throw InputError(ds.locate(sample), fmt::format("label {} (element {}) is not a binary label", v, e),
                         "binary cross-entropy takes labels in [0, 1] (0 or 1, or a probability between); "
                         "for class ids use sparse_categorical_crossentropy with one output unit per class");
      throw InputError(
          ds.locate(sample), fmt::format("label {} is out of range for {} classes", v, k),
          class_ids && !ignore
              ? fmt::format(
                    "the model's output has {} classes: labels must lie in [0, {}]; a void label for "
                    "the loss to skip takes loss = \"SparseCategoricalCrossentropy(ignore_class={})\"",
                    k, k - 1, v)
              : fmt::format("the model's output has {} classes: labels must lie in [0, {}]", k, k - 1));
    }
    switch (dst_t) {
      case DType::i64:
        reinterpret_cast<int64_t*>(dst)[e] = static_cast<int64_t>(v);
        break;
      case DType::i32:
        reinterpret_cast<int32_t*>(dst)[e] = static_cast<int32_t>(v);
        break;
      case DType::f32:
        reinterpret_cast<float*>(dst)[e] = static_cast<float>(v);
        break;
      default:
        reinterpret_cast<double*>(dst)[e] = v;
        break;
    }
  }
}

// The labels of a further output, fed as an input (InputFormat::labels).
void convert_labels(const Conversion& im, const void* src, void* dst, int64_t sample) {
  store_labels(im.ds->sample_dtype(), src, im.format.x_dtype, static_cast<std::byte*>(dst), im.sample_elems,
               im.format.label_classes, im.format.label_ignore, *im.ds, sample);
}

}  // namespace

void BatchLoader::Impl::plan() {
  label_src_dtype = ds->label_dtype();
  TRAINER_ASSERT(is_supported_sample_dtype(label_src_dtype), "label dtype {}", dtype_name(label_src_dtype));
  label_elems = ds->label_shape().numel();
  src_label_bytes = static_cast<size_t>(label_elems) * dtype_bytes(label_src_dtype);
  dst_label_bytes = static_cast<size_t>(label_elems) * dtype_bytes(format.y_dtype);
  TRAINER_ASSERT(format.y_dtype == DType::i64 || format.y_dtype == DType::i32 ||
                     format.y_dtype == DType::f32 || format.y_dtype == DType::f64,
                 "batch y dtype {}", dtype_name(format.y_dtype));
  for (Input& in : inputs) plan_input(in);
}

void BatchLoader::Impl::plan_input(Input& in) const {
  const Dataset* const ds = in.ds.get();
  const InputFormat& format = in.format;
  const Shape& s = ds->sample_shape();
  const Layout layout = ds->layout();
  DType& src_dtype = in.src_dtype;
  int64_t& sample_elems = in.sample_elems;
  Shape& out_sample_shape = in.out_sample_shape;
  Conversion& cv = in.cv;
  src_dtype = ds->sample_dtype();
  TRAINER_ASSERT(is_supported_sample_dtype(src_dtype), "sample dtype {}", dtype_name(src_dtype));
  sample_elems = s.numel();
  in.src_sample_bytes = static_cast<size_t>(sample_elems) * dtype_bytes(src_dtype);
  in.dst_sample_bytes = static_cast<size_t>(sample_elems) * dtype_bytes(format.x_dtype);
  TRAINER_ASSERT(format.x_dtype == DType::f32 || format.x_dtype == DType::f64 ||
                     format.x_dtype == DType::i32 || format.x_dtype == DType::i64,
                 "batch x dtype {}", dtype_name(format.x_dtype));

  // The output layout and where the channel sits in it.
  bool channel_first = layout == Layout::chw;
  bool transpose = false, transpose_back = false;
  out_sample_shape = s;
  if (format.to_hwc) {
    TRAINER_ASSERT(s.rank() == 3 && !format.to_chw, "to_hwc of samples of shape {}", s.str());
    out_sample_shape = Shape{s[1], s[2], s[0]};
    transpose_back = true;
  } else if (!format.to_chw && format.chw_channels > 0) {
    channel_first = true;
  } else if (format.to_chw) {
    if (layout == Layout::hwc) {
      if (s.rank() != 3) {
        throw InputError(ds->describe(), fmt::format("HWC samples must have rank 3, not shape {}", s.str()));
      }
      out_sample_shape = Shape{s[2], s[0], s[1]};
      transpose = true;
      channel_first = true;
    } else if (layout == Layout::plain && s.rank() == 2) {
      out_sample_shape = Shape{1, s[0], s[1]};
      channel_first = true;
    } else if (s.rank() == 3) {
      channel_first = true;
    } else {
      throw InputError(ds->describe(), fmt::format("samples of shape {} are not images", s.str()),
                       "a convolutional model needs [H, W] or [H, W, C] samples");
    }
  }
  const int64_t rank = s.rank();
  int64_t channels = 1;
  if (transpose) {
    channels = s[2];
  } else if (transpose_back) {
    channels = s[0];
  } else if (!format.to_chw && format.chw_channels > 0) {
    channels = format.chw_channels;
  } else if (channel_first) {
    channels = out_sample_shape[0];
  } else if (rank > 0) {
    channels = s[rank - 1];
  }

  // Normalization constants, per channel when mean or std has one value per channel.
  const bool ids = format.x_dtype == DType::i32 || format.x_dtype == DType::i64;
  const size_t norm_channels = ids ? 1 : std::max<size_t>({1, format.mean.size(), format.std.size()});
  if (!ids) {
    for (const auto* v : {&format.mean, &format.std}) {
      if (v->size() > 1 && static_cast<int64_t>(v->size()) != channels) {
        throw InputError(ds->describe(),
                         fmt::format("data.{} has {} values, but the samples (shape {}) have {} channels",
                                     v == &format.mean ? "mean" : "std", v->size(), s.str(), channels),
                         "give one value, or one per channel");
      }
    }
    for (double sd : format.std) {
      if (!(sd > 0))
        throw InputError(ds->describe(), fmt::format("data.std holds {}", sd), "std must be > 0");
    }
  }
  cv.alpha.assign(norm_channels, 1.0);
  cv.beta.assign(norm_channels, 0.0);
  for (size_t c = 0; c < norm_channels; ++c) {
    double m = format.mean.empty() ? 0.0 : format.mean[format.mean.size() == 1 ? 0 : c];
    double sd = format.std.empty() ? 1.0 : format.std[format.std.size() == 1 ? 0 : c];
    cv.alpha[c] = format.scale / sd;
    cv.beta[c] = -m / sd;
  }
  // Element order: a transpose, or per-channel constants in a channel-first or channel-last layout, or one
  // flat run.
  const int64_t positions = channels > 0 ? sample_elems / channels : 0;
  if (transpose) {
    cv.geo = Geometry{channels, positions, 1, channels, positions, 1};
  } else if (transpose_back) {  // [C, H, W] -> [H, W, C]
    cv.geo = Geometry{channels, positions, positions, 1, 1, channels};
  } else if (norm_channels > 1 && channel_first) {
    cv.geo = Geometry{channels, positions, positions, 1, positions, 1};
  } else if (norm_channels > 1) {
    cv.geo = Geometry{channels, positions, 1, channels, 1, channels};
  } else {
    cv.geo = Geometry{1, sample_elems, 0, 1, 0, 1};
  }
  const bool identity_values = format.scale == 1.0 && format.mean.empty() && format.std.empty();
  in.direct_copy = src_dtype == format.x_dtype && !transpose && !transpose_back &&
                   (ids ? format.num_tokens == 0 : identity_values);
  cv.ds = ds;
  cv.format = format;
  cv.sample_elems = sample_elems;
  in.x_convert = pick_converter(src_dtype, format.x_dtype);
  if (format.labels) {
    in.direct_copy = false;
    in.x_convert = &convert_labels;
  }
  TRAINER_ASSERT(in.x_convert != nullptr);
}

void BatchLoader::Impl::convert_label(const void* src, std::byte* dst, int64_t sample) const {
  store_labels(label_src_dtype, src, format.y_dtype, dst, label_elems, format.num_classes,
               format.ignore_class, *ds, sample);
}

namespace {

// A float feature that is NaN or infinite would make the loss NaN steps later, far from its cause.
template <class T>
void check_finite_features(const T* v, int64_t n, const Dataset& ds, int64_t sample) {
  for (int64_t e = 0; e < n; ++e)
    if (!std::isfinite(v[e]))
      throw InputError(ds.locate(sample),
                       fmt::format("feature {} (element {}) is not a finite number", v[e], e),
                       "the loss would be NaN: fix or drop the samples whose features are NaN or infinite");
}

}  // namespace

// Gathers part w of `parts` of a batch. Abandons the work as soon as the loader is reset or destroyed.
void BatchLoader::Impl::gather(const Job& j, int w, int parts) {
  const int64_t k0 = j.count * w / parts, k1 = j.count * (w + 1) / parts;
  Worker& wk = workers[static_cast<size_t>(w)];
  for (int64_t k = k0; k < k1; ++k) {
    if (gen_now.load(std::memory_order_relaxed) != j.gen || stopping.load(std::memory_order_relaxed)) return;
    const int64_t i = j.order ? j.order[k] : j.first + k;
    for (size_t q = 0; q < inputs.size(); ++q) {
      const Input& in = inputs[q];
      std::byte* x = j.slot->x[q].get() + static_cast<size_t>(k) * in.dst_sample_bytes;
      if (in.direct_copy) {
        in.ds->read_sample(i, x);
      } else {
        in.ds->read_sample(i, wk.x_scratch[q].get());
        in.x_convert(in.cv, wk.x_scratch[q].get(), x, i);
      }
      if (is_float(in.src_dtype) && !in.format.labels) {
        if (in.format.x_dtype == DType::f32)
          check_finite_features(reinterpret_cast<const float*>(x), in.sample_elems, *in.ds, i);
        else if (in.format.x_dtype == DType::f64)
          check_finite_features(reinterpret_cast<const double*>(x), in.sample_elems, *in.ds, i);
      }
    }
    ds->read_label(i, wk.y_scratch.get());
    convert_label(wk.y_scratch.get(), j.slot->y.get() + static_cast<size_t>(k) * dst_label_bytes, i);
  }
}

void BatchLoader::Impl::fill(int64_t seq, int64_t epoch, uint64_t g) {
  const int64_t b = seq % bpe;
  Job j;
  Slot& slot = slots[static_cast<size_t>(seq % nslots)];
  j.slot = &slot;
  j.first = b * batch_size;
  j.count = batch_count(b);
  j.gen = g;
  if (shuffle) {
    if (perm_epoch != epoch) {
      epoch_permutation(n, seed, epoch, perm.data());
      perm_epoch = epoch;
    }
    j.order = perm.data() + j.first;
  }
  const int parts = static_cast<int>(workers.size());
  workers[0].error = nullptr;
  if (parts > 1) {
    std::lock_guard<std::mutex> lk(pool_mu);
    job = j;
    pool_pending = parts - 1;
    ++job_id;
    for (auto& wk : workers) wk.error = nullptr;
    pool_cv.notify_all();
  }
  try {
    gather(j, 0, parts);
  } catch (...) {
    workers[0].error = std::current_exception();
  }
  if (parts > 1) {
    std::unique_lock<std::mutex> lk(pool_mu);
    pool_done_cv.wait(lk, [&] { return pool_pending == 0; });
  }
  // Parts cover consecutive positions, so the first part that failed holds the batch's first bad sample.
  for (auto& wk : workers) {
    if (wk.error) std::rethrow_exception(wk.error);
  }
}

void BatchLoader::Impl::helper_loop(int w) {
  std::unique_lock<std::mutex> lk(pool_mu);
  uint64_t seen = 0;
  for (;;) {
    pool_cv.wait(lk, [&] { return pool_stop || job_id != seen; });
    if (pool_stop) return;
    seen = job_id;
    Job j = job;
    lk.unlock();
    try {
      gather(j, w, static_cast<int>(workers.size()));
    } catch (...) {
      workers[static_cast<size_t>(w)].error = std::current_exception();
    }
    lk.lock();
    if (--pool_pending == 0) pool_done_cv.notify_one();
  }
}

void BatchLoader::Impl::produce_loop() {
  std::unique_lock<std::mutex> lk(mu);
  for (;;) {
    producer_cv.wait(
        lk, [&] { return stop || (started && !failed && bpe > 0 && produced - released() < nslots); });
    if (stop) return;
    const uint64_t g = gen;
    const int64_t seq = produced;
    const int64_t epoch = base_epoch + seq / bpe;
    lk.unlock();
    std::exception_ptr err;
    try {
      fill(seq, epoch, g);
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    if (g != gen || stop) continue;  // reset or shut down while filling: the batch is stale
    if (err) {
      error = err;
      error_seq = seq;
      failed = true;
    } else {
      ++produced;
    }
    consumer_cv.notify_all();
  }
}

BatchLoader::BatchLoader(std::shared_ptr<const Dataset> dataset, int64_t batch_size, BatchFormat format,
                         bool shuffle, uint64_t seed, int prefetch)
    : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  TRAINER_ASSERT(dataset != nullptr);
  TRAINER_ASSERT(batch_size > 0, "batch size {}", batch_size);
  std::vector<std::shared_ptr<const Dataset>> inputs = {dataset};
  for (auto& d : dataset->more_inputs()) inputs.push_back(d);
  TRAINER_ASSERT(inputs.size() == format.more_inputs.size() + 1, "{} inputs, {} formats", inputs.size(),
                 format.more_inputs.size() + 1);
  im.ds = std::move(dataset);
  im.n = im.ds->size();
  im.batch_size = batch_size;
  im.bpe = (im.n + batch_size - 1) / batch_size;
  im.format = std::move(format);
  for (size_t q = 0; q < inputs.size(); ++q) {
    Impl::Input in;
    in.ds = inputs[q];
    in.format = q == 0 ? static_cast<const InputFormat&>(im.format) : im.format.more_inputs[q - 1];
    im.inputs.push_back(std::move(in));
  }
  im.shuffle = shuffle;
  im.seed = seed;
  // One slot more than the batches kept ready: the trainer holds the batch it is working on.
  im.nslots = std::max(1, prefetch) + 1;
  im.plan();
  im.slots.resize(static_cast<size_t>(im.nslots));
  size_t work_bytes = 0;
  // A batch holds at most the dataset's samples (a batch_size beyond them gives one batch of them all).
  const auto most = static_cast<size_t>(std::min<int64_t>(batch_size, std::max<int64_t>(im.n, 1)));
  for (auto& s : im.slots) {
    for (const Impl::Input& in : im.inputs) {
      s.x.push_back(aligned_buffer(most * in.dst_sample_bytes));
      s.xs.push_back(s.x.back().get());
    }
    s.y = aligned_buffer(most * im.dst_label_bytes);
  }
  for (const Impl::Input& in : im.inputs) work_bytes += most * (in.src_sample_bytes + in.dst_sample_bytes);
  if (shuffle) im.perm.resize(static_cast<size_t>(im.n));
  // Gathering is memory-bound and cheap next to a training step; helpers pay off only for large batches,
  // whose reads may also wait on the disk when a dataset does not fit in memory.
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int helpers = std::clamp(static_cast<int>(work_bytes >> 20), 0, std::min(3, cores - 1));
  im.workers.resize(static_cast<size_t>(1 + helpers));
  for (auto& w : im.workers) {
    for (const Impl::Input& in : im.inputs) w.x_scratch.push_back(aligned_buffer(in.src_sample_bytes));
    w.y_scratch = aligned_buffer(im.src_label_bytes);
  }
  for (int w = 1; w <= helpers; ++w) im.helpers.emplace_back([&im, w] { im.helper_loop(w); });
  im.producer = std::thread([&im] { im.produce_loop(); });
}

BatchLoader::~BatchLoader() {
  Impl& im = *impl_;
  {
    std::lock_guard<std::mutex> lk(im.mu);
    im.stop = true;
    im.stopping.store(true);
  }
  im.producer_cv.notify_all();
  if (im.producer.joinable()) im.producer.join();
  {
    std::lock_guard<std::mutex> lk(im.pool_mu);
    im.pool_stop = true;
  }
  im.pool_cv.notify_all();
  for (auto& t : im.helpers) t.join();
}

int64_t BatchLoader::batches_per_epoch() const {
  return impl_->bpe;
}

Shape BatchLoader::x_shape(int64_t batch, size_t input) const {
  std::vector<int64_t> d{batch};
  for (int64_t v : impl_->inputs.at(input).out_sample_shape.dims()) d.push_back(v);
  return Shape(std::move(d));
}

size_t BatchLoader::inputs() const {
  return impl_->inputs.size();
}

Shape BatchLoader::y_shape(int64_t batch) const {
  std::vector<int64_t> d{batch};
  for (int64_t v : impl_->ds->label_shape().dims()) d.push_back(v);
  return Shape(std::move(d));
}

void BatchLoader::start_epoch(int64_t epoch) {
  start(epoch, 0, impl_->bpe);
}

void BatchLoader::start(int64_t pass, int64_t batch, int64_t count) {
  Impl& im = *impl_;
  TRAINER_ASSERT(pass >= 0 && batch >= 0 && count >= 0 && (batch < im.bpe || (batch == 0 && im.bpe == 0)),
                 "start at batch {} of pass {} ({} batches per pass)", batch, pass, im.bpe);
  {
    std::lock_guard<std::mutex> lk(im.mu);
    im.holding = false;
    // The producer runs ahead through the passes that follow; what it made stays valid when the trainer asks
    // for the batch that comes next in that sequence, or (without shuffle, when every pass has the same
    // order: evaluation restarts pass 0 each time) for any pass at the same batch. Anything else starts over.
    const bool in_sequence =
        im.started &&
        (im.shuffle ? pass >= im.base_epoch && im.consumed == (pass - im.base_epoch) * im.bpe + batch
                    : im.bpe == 0 || im.consumed % im.bpe == batch);
    if (!in_sequence) {
      ++im.gen;
      im.gen_now.store(im.gen);
      im.base_epoch = pass;
      // The sequence numbers batches from the pass's first: those before `batch` are never made.
      im.produced = im.consumed = batch;
      im.failed = false;
      im.error = nullptr;
      im.error_seq = -1;
    }
    im.started = true;
    im.epoch_end = im.consumed + count;
  }
  im.producer_cv.notify_all();
}

void check_labels(const Dataset& ds, const BatchFormat& format) {
  const int64_t elems = ds.label_shape().numel();
  std::vector<std::byte> src(static_cast<size_t>(elems) * dtype_bytes(ds.label_dtype()));
  std::vector<std::byte> dst(static_cast<size_t>(elems) * dtype_bytes(format.y_dtype));
  for (int64_t i = 0; i < ds.size(); ++i) {
    ds.read_label(i, src.data());
    store_labels(ds.label_dtype(), src.data(), format.y_dtype, dst.data(), elems, format.num_classes,
                 format.ignore_class, ds, i);
  }
}

bool BatchLoader::next(Batch* out) {
  Impl& im = *impl_;
  std::unique_lock<std::mutex> lk(im.mu);
  TRAINER_ASSERT(im.started, "BatchLoader::next before start_epoch");
  if (im.holding) {
    im.holding = false;
    im.producer_cv.notify_all();
  }
  if (im.consumed >= im.epoch_end) return false;
  im.consumer_cv.wait(
      lk, [&] { return im.produced > im.consumed || (im.failed && im.error_seq == im.consumed); });
  if (im.produced <= im.consumed) std::rethrow_exception(im.error);
  const int64_t seq = im.consumed;
  const int64_t b = seq % im.bpe;
  const Impl::Slot& slot = im.slots[static_cast<size_t>(seq % im.nslots)];
  out->size = im.batch_count(b);
  out->x = slot.x[0].get();
  out->xs = slot.xs;
  out->y = slot.y.get();
  out->first = b * im.batch_size;
  ++im.consumed;
  im.holding = true;
  return true;
}

}  // namespace trainer::engine::data
