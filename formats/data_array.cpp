// Columns of fixed-size records over byte ranges, and the dataset made of a sample column and a label column.
#include "formats/data_array.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "engine/util/error.h"

namespace trainer::formats {

size_t Column::record_bytes() const {
  return static_cast<size_t>(shape_.numel()) * engine::dtype_bytes(dtype_);
}

void Column::add(Segment s) {
  TRAINER_ASSERT(s.bytes != nullptr);
  TRAINER_ASSERT(s.count == 0 || s.offset + (s.count - 1) * s.stride + record_bytes() <= s.bytes->size(),
                 "segment of {} records overruns {}", s.count, s.file);
  starts_.push_back(size() + s.count);
  segments_.push_back(std::move(s));
}

void Column::append(Column other) {
  if (!segments_.empty() && (other.dtype_ != dtype_ || other.shape_ != shape_)) {
    const std::string mine = segments_.front().file;
    const std::string theirs = other.segments_.empty() ? "?" : other.segments_.front().file;
    throw InputError(theirs,
                     fmt::format("holds {} records of shape {}, but {} holds {} records of shape {}",
                                 engine::dtype_name(other.dtype_), other.shape_.str(), mine,
                                 engine::dtype_name(dtype_), shape_.str()),
                     "files listed together must hold the same kind of data");
  }
  if (segments_.empty()) {
    dtype_ = other.dtype_;
    shape_ = other.shape_;
  }
  for (auto& s : other.segments_) add(std::move(s));
}

const Segment& Column::find(int64_t i, int64_t* index_in_segment) const {
  size_t k = 0;
  if (segments_.size() > 1) {
    k = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin());
  }
  TRAINER_ASSERT(k < segments_.size() && i >= 0, "record {} of {}", i, size());
  *index_in_segment = i - (k == 0 ? 0 : starts_[k - 1]);
  return segments_[k];
}

void Column::read(int64_t i, void* out) const {
  int64_t j = 0;
  const Segment& s = find(i, &j);
  std::memcpy(out, s.bytes->data() + s.offset + static_cast<uint64_t>(j) * s.stride, record_bytes());
}

ArrayDataset::ArrayDataset(Column x, Column y, engine::data::Layout layout, std::string name)
    : x_(std::move(x)), y_(std::move(y)), layout_(layout), name_(std::move(name)) {
  TRAINER_ASSERT(x_.size() == y_.size(), "{} samples, {} labels", x_.size(), y_.size());
}

std::string ArrayDataset::locate(int64_t i) const {
  int64_t jx = 0, jy = 0;
  const Segment& sx = x_.find(i, &jx);
  const Segment& sy = y_.find(i, &jy);
  if (!sy.line_of.empty())
    return fmt::format("{}:{}: sample {}", sy.file, sy.line_of[static_cast<size_t>(jy)], jy);
  if (sx.file == sy.file) return fmt::format("{}: sample {}", sx.file, jx);
  if (jx == jy) return fmt::format("{}, {}: sample {}", sx.file, sy.file, jx);
  return fmt::format("{}: sample {} ({}: sample {})", sy.file, jy, sx.file, jx);
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  const std::string w = lower(word);
  size_t best = std::string::npos;
  std::string best_name;
  for (const auto& cand : candidates) {
    // Edit distance with adjacent transpositions ("lable" is one edit from "label").
    const std::string c = lower(cand);
    const size_t rows = w.size() + 1, cols = c.size() + 1;
    std::vector<size_t> d(rows * cols);
    for (size_t i = 0; i < rows; ++i) d[i * cols] = i;
    for (size_t j = 0; j < cols; ++j) d[j] = j;
    for (size_t i = 1; i < rows; ++i) {
      for (size_t j = 1; j < cols; ++j) {
        size_t v = std::min({d[(i - 1) * cols + j] + 1, d[i * cols + j - 1] + 1,
                             d[(i - 1) * cols + j - 1] + (w[i - 1] == c[j - 1] ? 0 : 1)});
        if (i > 1 && j > 1 && w[i - 1] == c[j - 2] && w[i - 2] == c[j - 1]) {
          v = std::min(v, d[(i - 2) * cols + j - 2] + 1);
        }
        d[i * cols + j] = v;
      }
    }
    if (d.back() < best) {
      best = d.back();
      best_name = cand;
    }
  }
  // Close means about a third of the word changed at most, and something kept ('x' is not a typo of 'y').
  if (best_name.empty() || best > std::max<size_t>(1, (w.size() + 2) / 3) ||
      best >= std::max(w.size(), best_name.size()))
    return "";
  return fmt::format("did you mean '{}'?", best_name);
}

}  // namespace trainer::formats
