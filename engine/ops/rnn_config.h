// The attributes and shapes of an ONNX LSTM, GRU or RNN node (and of their gradient ops), parsed once into
// one struct that shape inference validates and the kernels read.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/ir/attribute.h"
#include "engine/ir/shape.h"

namespace trainer::engine::ops {

enum class RnnCell { lstm, gru, rnn };  // rnn: ONNX's simple RNN, H = f(X·Wᵀ + H·Rᵀ + b)

// The activations ONNX allows in recurrent cells that this engine implements. Each has a derivative that can
// be computed from its output alone, so the backward pass keeps activations only.
enum class RnnActKind { sigmoid, tanh, relu, hard_sigmoid, leaky_relu };

struct RnnActivation {
  RnnActKind kind = RnnActKind::sigmoid;
  float alpha = 0;
  float beta = 0;
};

// Forward inputs: ONNX's (X, W, R, B, sequence_lens, initial_h, then LSTM's initial_c and P), then one
// private input that ONNX does not define: the recurrent dropout mask, [dirs, batch, hidden] (or [batch,
// dirs, hidden] under layout 1, as the states), which multiplies the previous hidden state where it enters
// the recurrent product H·Rᵀ, never where it is carried (Keras's recurrent_dropout). Only training graphs
// hold it, so an exported model never does.
inline int rnn_mask_input(RnnCell cell) {
  return cell == RnnCell::lstm ? 8 : 6;
}
inline int rnn_forward_inputs(RnnCell cell) {
  return rnn_mask_input(cell) + 1;
}
inline const char* rnn_op_name(RnnCell cell) {
  return cell == RnnCell::lstm ? "LSTM" : cell == RnnCell::gru ? "GRU" : "RNN";
}

struct RnnConfig {
  RnnCell cell = RnnCell::lstm;
  int64_t seq = 0, batch = 0, input = 0, hidden = 0;
  int dirs = 1;
  bool reverse = false;  // direction == "reverse" (a bidirectional node runs direction 1 in reverse)
  int layout = 0;        // 0: [seq, batch, ...]; 1: [batch, seq, ...]
  std::optional<float> clip;
  bool input_forget = false;         // LSTM: the forget gate is 1 - input gate
  bool linear_before_reset = false;  // GRU
  // acts_per_dir() entries per direction: LSTM f, g, h; GRU f, g; RNN f.
  std::vector<RnnActivation> acts;

  int gates() const { return cell == RnnCell::lstm ? 4 : cell == RnnCell::gru ? 3 : 1; }
  int acts_per_dir() const { return cell == RnnCell::lstm ? 3 : cell == RnnCell::gru ? 2 : 1; }
  bool dir_reversed(int d) const { return reverse || d == 1; }
  const RnnActivation& act(int d, int k) const { return acts[d * acts_per_dir() + k]; }

  // Shapes of the states (initial_h, Y_h, ...) and of Y under the layout.
  Shape state_shape() const { return layout == 0 ? Shape{dirs, batch, hidden} : Shape{batch, dirs, hidden}; }
  Shape y_shape() const {
    return layout == 0 ? Shape{seq, dirs, batch, hidden} : Shape{batch, seq, dirs, hidden};
  }
  // Element offsets of row (t, b) of X, of Y for direction d, and of a state for direction d.
  int64_t x_row(int64_t t, int64_t b) const { return layout == 0 ? t * batch + b : b * seq + t; }
  int64_t y_offset(int64_t t, int d, int64_t b) const {
    return (layout == 0 ? (t * dirs + d) * batch + b : (b * seq + t) * dirs + d) * hidden;
  }
  int64_t state_offset(int d, int64_t b) const {
    return (layout == 0 ? d * batch + b : b * dirs + d) * hidden;
  }
};

namespace rnn_detail {

inline bool parse_act(const std::string& name, RnnActKind* k) {
  if (name == "Sigmoid")
    *k = RnnActKind::sigmoid;
  else if (name == "Tanh")
    *k = RnnActKind::tanh;
  else if (name == "Relu")
    *k = RnnActKind::relu;
  else if (name == "HardSigmoid")
    *k = RnnActKind::hard_sigmoid;
  else if (name == "LeakyRelu")
    *k = RnnActKind::leaky_relu;
  else
    return false;
  return true;
}

inline std::vector<std::string> split_names(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == ',' || ch == ' ') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

}  // namespace rnn_detail

// Parses the node's attributes against X [seq, batch, input] (layout 0) or [batch, seq, input] (layout 1) and
// R [dirs, gates*hidden, hidden]. Returns an error message, or an empty string when the node is valid.
// `activations` is a string attribute: the ONNX list of names joined with commas (the IR has no
// list-of-strings attribute type), e.g. "Sigmoid,Tanh,Tanh".
inline std::string parse_rnn_config(RnnCell cell, const Attributes& a, const Shape& x, const Shape& r,
                                    RnnConfig* out) {
  RnnConfig c;
  c.cell = cell;
  if (x.rank() != 3) return "X must have rank 3";
  if (r.rank() != 3) return "R must have rank 3 [num_directions, gates * hidden_size, hidden_size]";
  c.layout = static_cast<int>(a.i_or("layout", 0));
  if (c.layout != 0 && c.layout != 1) return fmt::format("layout must be 0 or 1, got {}", c.layout);
  c.seq = c.layout == 0 ? x[0] : x[1];
  c.batch = c.layout == 0 ? x[1] : x[0];
  c.input = x[2];
  c.hidden = r[2];
  if (a.has("hidden_size") && a.i("hidden_size") != c.hidden)
    return fmt::format("hidden_size is {} but R has hidden size {}", a.i("hidden_size"), c.hidden);
  const std::string dir = a.has("direction") ? a.s("direction") : std::string("forward");
  if (dir == "forward")
    c.dirs = 1;
  else if (dir == "reverse")
    c.dirs = 1, c.reverse = true;
  else if (dir == "bidirectional")
    c.dirs = 2;
  else
    return fmt::format("direction must be forward, reverse or bidirectional, got '{}'", dir);
  if (r[0] != c.dirs) return fmt::format("direction {} needs {} directions in R, got {}", dir, c.dirs, r[0]);
  if (r[1] != c.gates() * c.hidden)
    return fmt::format("R must be [{}, {}, {}] ({} gates)", c.dirs, c.gates() * c.hidden, c.hidden,
                       c.gates());
  if (a.has("clip")) {
    float v = a.f("clip");
    if (!(v > 0)) return fmt::format("clip must be positive, got {}", v);
    c.clip = v;
  }
  if (cell == RnnCell::lstm) c.input_forget = a.i_or("input_forget", 0) != 0;
  if (cell == RnnCell::gru) c.linear_before_reset = a.i_or("linear_before_reset", 0) != 0;

  // Activations: defaults per cell; a list of acts_per_dir() names (applied to every direction) or of
  // acts_per_dir() * dirs names. Alphas and betas are consumed in order by the functions that take them.
  std::vector<std::string> names = cell == RnnCell::rnn ? std::vector<std::string>{"Tanh"}
                                   : cell == RnnCell::lstm
                                       ? std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"}
                                       : std::vector<std::string>{"Sigmoid", "Tanh"};
  if (a.has("activations")) {
    std::vector<std::string> given = rnn_detail::split_names(a.s("activations"));
    size_t per = static_cast<size_t>(c.acts_per_dir());
    if (given.size() != per && given.size() != per * c.dirs)
      return fmt::format("activations lists {} functions; {} takes {} per direction", given.size(),
                         rnn_op_name(cell), per);
    names = given;
  }
  if (static_cast<int>(names.size()) < c.acts_per_dir() * c.dirs) {
    std::vector<std::string> rep;
    for (int d = 0; d < c.dirs; ++d) rep.insert(rep.end(), names.begin(), names.end());
    names = rep;
  }
  std::vector<float> alphas = a.has("activation_alpha") ? a.floats("activation_alpha") : std::vector<float>{};
  std::vector<float> betas = a.has("activation_beta") ? a.floats("activation_beta") : std::vector<float>{};
  size_t ai = 0, bi = 0;
  for (const std::string& n : names) {
    RnnActivation act;
    if (!rnn_detail::parse_act(n, &act.kind))
      return fmt::format(
          "activation '{}' is not supported; use Sigmoid, Tanh, Relu, HardSigmoid or LeakyRelu", n);
    if (act.kind == RnnActKind::hard_sigmoid) {
      act.alpha = ai < alphas.size() ? alphas[ai++] : 0.2f;
      act.beta = bi < betas.size() ? betas[bi++] : 0.5f;
      if (!(act.alpha > 0)) return "HardSigmoid needs a positive alpha";
    } else if (act.kind == RnnActKind::leaky_relu) {
      act.alpha = ai < alphas.size() ? alphas[ai++] : 0.01f;
      // The backward pass reads the slope from the output's sign, which needs alpha >= 0.
      if (act.alpha < 0) return "LeakyRelu in a recurrent cell needs alpha >= 0";
    }
    c.acts.push_back(act);
  }
  *out = std::move(c);
  return {};
}

}  // namespace trainer::engine::ops
