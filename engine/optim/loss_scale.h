// Dynamic loss scaling for fp16 training, on the host: the scale doubles after `growth_interval` finite steps
// in a row and halves at every step whose gradients overflowed, which the training graph then skips.
#pragma once

#include <algorithm>
#include <cstdint>

namespace trainer::engine {

struct LossScaleOptions {
  float initial_scale = 65536.0f;  // 2^16
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int64_t growth_interval = 2000;
  float min_scale = 1.0f;
  float max_scale = 16777216.0f;  // 2^24: further doubling only invites overflow
};

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(const LossScaleOptions& o = {}) : o_(o), scale_(o.initial_scale) {}

  float scale() const { return scale_; }
  int64_t applied_steps() const { return applied_; }  // updates the optimizer made
  int64_t skipped_steps() const { return skipped_; }
  int64_t good_steps() const { return good_; }  // finite steps since the last change of scale

  // After a step: `finite` is the graph's flag. Without scaling every step is applied and the scale is
  // unused.
  void update(bool finite, bool scaling = true) {
    if (!scaling) {
      ++applied_;
      return;
    }
    if (!finite) {
      ++skipped_;
      good_ = 0;
      scale_ = std::max(o_.min_scale, scale_ * o_.backoff_factor);
      return;
    }
    ++applied_;
    if (++good_ >= o_.growth_interval) {
      good_ = 0;
      scale_ = std::min(o_.max_scale, scale_ * o_.growth_factor);
    }
  }

  // The state a checkpoint keeps, so that a resumed run scales and counts as the uninterrupted one.
  void restore(float scale, int64_t good, int64_t applied, int64_t skipped) {
    scale_ = scale;
    good_ = good;
    applied_ = applied;
    skipped_ = skipped;
  }

 private:
  LossScaleOptions o_;
  float scale_;
  int64_t good_ = 0, applied_ = 0, skipped_ = 0;
};

}  // namespace trainer::engine
