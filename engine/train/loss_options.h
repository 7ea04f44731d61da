// A loss's own options, as Keras's loss classes take them (Huber(delta=2.0),
// BinaryFocalCrossentropy(gamma=3.0)); the defaults are Keras's.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace trainer::engine {

struct LossOptions {
  double delta = 1.0;                  // huber: the error where the square turns linear
  double gamma = 2.0;                  // the focal losses: the modulating factor's power
  double alpha = 0.25;                 // categorical focal: every class's weight; binary: class 1's, balanced
  bool apply_class_balancing = false;  // binary focal: weigh class 1 by alpha and class 0 by 1 - alpha
  // sparse categorical cross-entropy: the label whose positions the loss and the metrics skip (a void class,
  // such as -1 or 255), as a mask does; none by default
  std::optional<int64_t> ignore_class;
  bool operator==(const LossOptions&) const = default;
};

// What the calls of one output's metrics set, as Keras's metric classes take it (MeanIoU(num_classes=3),
// FBetaScore(beta=2.0), PrecisionAtRecall(recall=0.8)): one value per output, which every call that names
// the argument must agree on. The defaults are Keras's, or "not given".
struct MetricOptions {
  // MeanIoU's, IoU's, OneHotIoU's and OneHotMeanIoU's num_classes: the classes the output must have; 0: any.
  int64_t iou_classes = 0;
  std::optional<int64_t> iou_ignore;  // their ignore_class: positions labelled K are not counted
  // IoU's, OneHotIoU's and BinaryIoU's target_class_ids: the classes averaged; empty: BinaryIoU's (0, 1)
  std::vector<int64_t> iou_targets;
  double iou_threshold = 0.5;  // BinaryIoU's: a prediction at or above it is class 1
  // A binary output's decision threshold for its accuracy, precision, recall, confusion counts and F-scores
  // (BinaryAccuracy's threshold, Precision's thresholds, ...), which an output above it passes: the output as
  // it is, as in Keras (logits under from_logits). None: a probability above 0.5 (a logit above 0).
  std::optional<double> threshold;
  // F1Score's and FBetaScore's average of a categorical output's classes: macro, micro or weighted; "" for
  // a binary output's score at 0.5
  std::string f1_average;
  double beta = 1;  // FBetaScore's: recall weighs beta times as much as precision
  // Precision's and Recall's of a categorical output: class_id, the one class they count (none: every class's
  // entries together, Keras's rule for rows of one-hot labels), and top_k, the k largest outputs of a
  // position are its predicted classes (none: those above the threshold).
  std::optional<int64_t> class_id, top_k;
  // The constraint of PrecisionAtRecall (its recall), RecallAtPrecision (precision), SensitivityAtSpecificity
  // (specificity) and SpecificityAtSensitivity (sensitivity), by the metric's name
  std::map<std::string, double> at;
  // AUC's multi_label: the area of each label of a row of labels, averaged (else of every label together)
  bool auc_multi_label = false;
  int64_t auc_num_labels = 0;  // AUC's num_labels, checked against the output's labels; 0: not given
  bool operator==(const MetricOptions&) const = default;
};

}  // namespace trainer::engine
