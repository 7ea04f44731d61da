// Dataset views (subsets) and the epoch permutation: a Fisher-Yates shuffle whose random numbers come from
// Philox, so an epoch's order depends on (seed, epoch) only, on every platform and after a resume.
#include "engine/data/dataset.h"

#include <fmt/format.h>

#include "engine/kernels/philox.h"
#include "engine/util/error.h"

namespace trainer::engine::data {

std::string Dataset::locate(int64_t i) const {
  return fmt::format("{}: sample {}", describe(), i);
}

namespace {

class SubsetDataset final : public Dataset {
 public:
  SubsetDataset(std::shared_ptr<const Dataset> base, int64_t begin, int64_t end)
      : base_(std::move(base)), begin_(begin), size_(end - begin) {}
  int64_t size() const override { return size_; }
  const Shape& sample_shape() const override { return base_->sample_shape(); }
  DType sample_dtype() const override { return base_->sample_dtype(); }
  Layout layout() const override { return base_->layout(); }
  const Shape& label_shape() const override { return base_->label_shape(); }
  DType label_dtype() const override { return base_->label_dtype(); }
  void read_sample(int64_t i, void* out) const override { base_->read_sample(begin_ + i, out); }
  void read_label(int64_t i, void* out) const override { base_->read_label(begin_ + i, out); }
  std::string describe() const override { return base_->describe(); }
  // Messages name the sample as the file numbers it, not as the subset does.
  std::string locate(int64_t i) const override { return base_->locate(begin_ + i); }

 private:
  std::shared_ptr<const Dataset> base_;
  int64_t begin_, size_;
};

// A model's inputs side by side: the first one, with the labels, answers for the sample and label reads.
class JoinedDataset final : public Dataset {
 public:
  JoinedDataset(std::shared_ptr<const Dataset> first, std::vector<std::shared_ptr<const Dataset>> more)
      : first_(std::move(first)), more_(std::move(more)) {}
  int64_t size() const override { return first_->size(); }
  const Shape& sample_shape() const override { return first_->sample_shape(); }
  DType sample_dtype() const override { return first_->sample_dtype(); }
  Layout layout() const override { return first_->layout(); }
  const Shape& label_shape() const override { return first_->label_shape(); }
  DType label_dtype() const override { return first_->label_dtype(); }
  void read_sample(int64_t i, void* out) const override { first_->read_sample(i, out); }
  void read_label(int64_t i, void* out) const override { first_->read_label(i, out); }
  std::string describe() const override { return first_->describe(); }
  std::string locate(int64_t i) const override { return first_->locate(i); }
  std::vector<std::shared_ptr<const Dataset>> more_inputs() const override { return more_; }

 private:
  std::shared_ptr<const Dataset> first_;
  std::vector<std::shared_ptr<const Dataset>> more_;
};

// The Philox stream of shuffles: distinct from the small stream ids that ops (Dropout) take.
constexpr uint64_t kShuffleStream = 0x53485546464c45ull;  // "SHUFFLE"

}  // namespace

std::shared_ptr<Dataset> subset(std::shared_ptr<const Dataset> base, int64_t begin, int64_t end) {
  TRAINER_ASSERT(base != nullptr);
  TRAINER_ASSERT(0 <= begin && begin <= end && end <= base->size(), "subset [{}, {}) of {} samples", begin,
                 end, base->size());
  std::vector<std::shared_ptr<const Dataset>> more = base->more_inputs();
  if (more.empty()) return std::make_shared<SubsetDataset>(std::move(base), begin, end);
  for (auto& d : more) d = subset(d, begin, end);
  return with_more_inputs(std::make_shared<SubsetDataset>(std::move(base), begin, end), std::move(more));
}

std::shared_ptr<Dataset> with_more_inputs(std::shared_ptr<const Dataset> first,
                                          std::vector<std::shared_ptr<const Dataset>> more) {
  TRAINER_ASSERT(first != nullptr);
  // A dataset that has further inputs already keeps them first (its reads go through to its own first).
  std::vector<std::shared_ptr<const Dataset>> all = first->more_inputs();
  for (size_t k = 0; k < more.size(); ++k) {
    TRAINER_ASSERT(more[k] != nullptr);
    if (more[k]->size() != first->size())
      throw InputError(
          more[k]->describe(),
          fmt::format("{} holds {} samples for the model's input {}, and {} holds {} for its first",
                      more[k]->describe(), more[k]->size(), all.size() + 2, first->describe(), first->size()),
          "every input needs one sample per label: give arrays of equal length");
    all.push_back(std::move(more[k]));
  }
  return std::make_shared<JoinedDataset>(std::move(first), std::move(all));
}

void epoch_permutation(int64_t n, uint64_t seed, int64_t epoch, int64_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = i;
  // Position i swaps with j uniform in [0, i]: 64 random bits scaled by (i + 1) with a 128-bit product. The
  // bias is below n / 2^64, and the arithmetic is exact integer math, hence identical everywhere.
  for (int64_t i = n - 1; i > 0; --i) {
    kernels::Philox4x32 r =
        kernels::philox_block(seed, kShuffleStream, static_cast<uint64_t>(epoch), static_cast<uint64_t>(i));
    uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
    auto j =
        static_cast<int64_t>((static_cast<unsigned __int128>(bits) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(out[i], out[j]);
  }
}

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  epoch_permutation(n, seed, epoch, p.data());
  return p;
}

}  // namespace trainer::engine::data
