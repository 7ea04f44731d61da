// Attention layers: Keras's MultiHeadAttention, Attention and AdditiveAttention, and KerasHub's
// TokenAndPositionEmbedding, which together with LayerNormalization, Dense and the merges make a transformer
// encoder in a spec. All are plain IR subgraphs (MatMul, Softmax, Gather), so they train, export and run on
// every backend like the rest. Masks (mask_zero) keep padded keys out of the softmax, as Keras's do.
#include <fmt/format.h>

#include <cmath>

#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

// A sequence [steps, features] in the builder's row-major layout ([N, T, F] in the IR).
LayerValue sequence_input(LayerBuilder& b, const LayerValue& in, const char* role) {
  LayerValue x = b.to_channels_last(in);
  if (x.shape.size() != 2)
    b.fail_layer(fmt::format("its {} must be a sequence (None, steps, features), got {} from '{}'", role,
                             keras_shape(x.shape), x.from),
                 "give it the output of an Embedding, a recurrent layer with return_sequences, or a Conv1D");
  return x;
}

// Keras's EinsumDense as MultiHeadAttention uses it, by one MatMul against the kernel viewed as a matrix:
// the input projections take x [N, T, D] with a kernel [D, heads, dim] and a bias [heads, dim]; the output
// projection (`output`) takes [N, T, heads * dim] with a kernel [heads, dim, width] and a bias [width].
// Keras's fans for a rank-3 kernel count its leading axis as a receptive field.
ValueId projection(LayerBuilder& b, ValueId x, const std::string& name, const std::vector<int64_t>& shape,
                   bool output, bool bias) {
  const int64_t numel = shape[0] * shape[1] * shape[2];
  const int64_t rows = output ? shape[0] * shape[1] : shape[0], cols = numel / rows;
  const WeightFans fans{shape[0] * shape[1], shape[0] * shape[2], numel / shape[2], shape[2]};
  ValueId w = b.weight(name + "/kernel", "kernel_initializer", Shape(shape), fans);
  ValueId y = b.op("MatMul", {x, b.op("Reshape", {w, b.shape_constant(name + "/matrix", {rows, cols})})});
  if (!bias) return y;
  const Shape bshape = output ? Shape{shape[2]} : Shape{shape[1], shape[2]};
  ValueId bv = b.weight(name + "/bias", "bias_initializer", bshape, {cols, cols, 1, cols});
  if (!output) bv = b.op("Reshape", {bv, b.shape_constant(name + "/flat_bias", {cols})});
  return b.op("Add", {y, bv});
}

// Keras's masked softmax: a large negative number added, once, to the scores [N, (heads,) Tq, Tv] of the
// query and key steps the masks turn off, the causal mask (use_causal_mask: query step i sees key steps 0..i,
// the lower triangle also when the lengths differ) and the padding masks combined as Keras combines them (a
// logical and). A query row that is all off then weighs every key alike, as Keras's does; two biases added
// apart would instead let the keys only one mask turns off (-1e9) win over those both do (-2e9).
ValueId mask_scores(LayerBuilder& b, ValueId scores, const LayerValue& q, const LayerValue& k, bool heads,
                    bool causal) {
  const int64_t tq = q.shape[0], tv = k.shape[0];
  auto triangle = [&](double on, double off) {
    Tensor t(DType::f32, Shape{tq, tv});
    for (int64_t i = 0; i < tq; ++i)
      for (int64_t j = 0; j < tv; ++j) t.set_f64(i * tv + j, j > i ? off : on);
    return b.constant("causal_mask", std::move(t));
  };
  if (q.mask == kNoValue && k.mask == kNoValue)
    return causal ? b.op("Add", {scores, triangle(0.0, -1e9)}) : scores;
  ValueId on;
  if (q.mask != kNoValue && k.mask != kNoValue)
    on = b.op("Mul", {b.op("Reshape", {q.mask, b.shape_constant("mask/query", {0, tq, 1})}),
                      b.op("Reshape", {k.mask, b.shape_constant("mask/key", {0, 1, tv})})});
  else if (q.mask != kNoValue)
    on = b.op("Reshape", {q.mask, b.shape_constant("mask/query", {0, tq, 1})});
  else
    on = b.op("Reshape", {k.mask, b.shape_constant("mask/key", {0, 1, tv})});
  if (causal) on = b.op("Mul", {on, triangle(1.0, 0.0)});
  if (heads) on = b.op("Unsqueeze", {on, b.shape_constant("mask/head_axis", {1})});
  ValueId off = b.op("Sub", {b.constant("mask/one", Tensor::scalar<float>(1.0f)), on});
  return b.op("Add", {scores, b.op("Mul", {off, b.constant("mask/large", Tensor::scalar<float>(-1e9f))})});
}

// MultiHeadAttention: inputs [query] (self-attention), [query, value] or [query, value, key], as Keras calls
// it. Per head h: softmax(Q_h K_h^T / sqrt(key_dim)) V_h, the heads' results projected back to the query's
// width (or output_shape). use_causal_mask lets step i attend to steps <= i only.
LayerValue build_multi_head_attention(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t heads = b.positive("num_heads");
  const int64_t key_dim = b.positive("key_dim");
  const int64_t value_dim = b.args.has("value_dim") ? b.positive("value_dim") : key_dim;
  const bool bias = b.args.boolean("use_bias");
  const double rate = b.args.number("dropout");
  if (!(rate >= 0 && rate < 1)) b.fail("dropout", fmt::format("dropout must be in [0, 1), got {}", rate));
  const LayerValue q = sequence_input(b, in[0], "query");
  const LayerValue v = in.size() > 1 ? sequence_input(b, in[1], "value") : q;
  const LayerValue k = in.size() > 2 ? sequence_input(b, in[2], "key") : v;
  if (k.shape[0] != v.shape[0])
    b.fail_layer(fmt::format("key and value must have as many steps; '{}' gives {} and '{}' gives {}", k.from,
                             keras_shape(k.shape), v.from, keras_shape(v.shape)));
  const int64_t tq = q.shape[0], tv = v.shape[0];
  const int64_t out_dim = b.args.has("output_shape") ? b.positive("output_shape") : q.shape[1];
  const bool causal = b.args.boolean("use_causal_mask");

  // [N, T, H * d] -> [N, T, H, d] -> the heads first.
  auto split_heads = [&](ValueId x, int64_t steps, int64_t d, const char* name, std::vector<int64_t> perm) {
    ValueId r = b.op("Reshape", {x, b.shape_constant(fmt::format("{}/heads", name), {0, steps, heads, d})});
    return b.op("Transpose", {r}, {{"perm", perm}});
  };
  ValueId query = projection(b, q.value, "query", {q.shape[1], heads, key_dim}, false, bias);
  ValueId key = projection(b, k.value, "key", {k.shape[1], heads, key_dim}, false, bias);
  ValueId value = projection(b, v.value, "value", {v.shape[1], heads, value_dim}, false, bias);
  query = split_heads(query, tq, key_dim, "query", {0, 2, 1, 3});    // [N, H, Tq, d]
  key = split_heads(key, tv, key_dim, "key", {0, 2, 3, 1});          // [N, H, d, Tv]
  value = split_heads(value, tv, value_dim, "value", {0, 2, 1, 3});  // [N, H, Tv, dv]
  // Keras scales the query before the product.
  query = b.op("Mul", {query, b.constant("scale", Tensor::scalar<float>(static_cast<float>(
                                                      1.0 / std::sqrt(double(key_dim)))))});
  ValueId scores = b.op("MatMul", {query, key});  // [N, H, Tq, Tv]
  // Keras combines the value's and the key's masks (with a key of its own, both count).
  LayerValue attended = k;
  if (in.size() > 2 && v.mask != kNoValue)
    attended.mask = k.mask == kNoValue ? v.mask : b.op("Mul", {k.mask, v.mask});
  scores = mask_scores(b, scores, q, attended, true, causal);
  ValueId weights = b.op("Softmax", {scores}, {{"axis", int64_t{-1}}});
  if (b.options.training && rate > 0)  // Keras drops attention weights, each on its own
    weights = b.op("Dropout", {weights, b.constant("ratio", Tensor::scalar<float>(static_cast<float>(rate))),
                               b.constant("training_mode", Tensor::scalar<bool>(true))});
  ValueId context = b.op("MatMul", {weights, value});  // [N, H, Tq, dv]
  context = b.op("Transpose", {context}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
  context = b.op("Reshape", {context, b.shape_constant("merged", {0, tq, heads * value_dim})});
  LayerValue y;
  y.from = q.from;
  y.value = projection(b, context, "attention_output", {heads, value_dim, out_dim}, true, bias);
  y.shape = {tq, out_dim};
  y.mask = q.mask;
  b.info.flops_per_sample =
      2 * heads *
      (tq * q.shape[1] * key_dim + tv * k.shape[1] * key_dim + tv * v.shape[1] * value_dim +
       tq * tv * (key_dim + value_dim) + tq * value_dim * out_dim);
  return y;
}

// Keras's Attention (Luong: score_mode dot, or concat) and AdditiveAttention (Bahdanau): inputs [query,
// value] or [query, value, key] (key defaults to value), each [steps, dim]. Scores: dot, Q·Kᵀ times a
// trainable scalar `scale` with use_scale; concat, concat_score_weight · Σ tanh(scale (q + k)); additive,
// Σ scale ⊙ tanh(q + k) with a trainable vector `scale` (use_scale, its default). Softmax over the keys
// (causal with use_causal_mask), dropout of the weights in training, then the weights times V; outputs at
// masked query steps are zero, as Keras's.
LayerValue build_score_attention(LayerBuilder& b, const std::vector<LayerValue>& in, bool additive) {
  const LayerValue q = sequence_input(b, in[0], "query");
  const LayerValue v = sequence_input(b, in[1], "value");
  const LayerValue k = in.size() > 2 ? sequence_input(b, in[2], "key") : v;
  const int64_t tq = q.shape[0], tv = v.shape[0], dim = q.shape[1];
  if (k.shape != std::vector<int64_t>{tv, dim})
    b.fail_layer(
        fmt::format("the key must be (None, {}, {}) for the value's steps and the query's width; '{}' "
                    "gives {}",
                    tv, dim, k.from, keras_shape(k.shape)));
  const double rate = b.args.number("dropout");
  if (!(rate >= 0 && rate < 1)) b.fail("dropout", fmt::format("dropout must be in [0, 1), got {}", rate));
  const std::string mode = additive ? "concat" : b.choice("score_mode", {"dot", "concat"});
  const bool use_scale = b.args.boolean("use_scale");
  auto scalar_weight = [&](const char* name) {
    return b.weight(name, Tensor::scalar<float>(1.0f));  // Keras initializes both scalars to ones
  };
  ValueId scores;
  if (mode == "dot") {
    scores =
        b.op("MatMul", {q.value, b.op("Transpose", {k.value}, {{"perm", std::vector<int64_t>{0, 2, 1}}})});
    if (use_scale) scores = b.op("Mul", {scores, scalar_weight("scale")});
  } else {
    ValueId sum =
        b.op("Add", {b.op("Unsqueeze", {q.value, b.shape_constant("query_axis", {2})}),
                     b.op("Unsqueeze", {k.value, b.shape_constant("key_axis", {1})})});  // [N, Tq, Tv, D]
    const ValueId last = b.shape_constant("features", {3});
    const Attributes drop{{"keepdims", int64_t{0}}};
    if (additive) {
      ValueId t = b.op("Tanh", {sum});
      if (use_scale)  // Keras's scale vector starts glorot_uniform
        t = b.op("Mul", {t, b.weight("scale", b.initial("glorot_uniform", Shape{dim}, {dim, dim, 1, dim},
                                                        b.seed("scale")))});
      scores = b.op("ReduceSum", {t, last}, drop);
    } else {
      if (use_scale) sum = b.op("Mul", {sum, scalar_weight("scale")});
      scores = b.op("Mul", {b.op("ReduceSum", {b.op("Tanh", {sum}), last}, drop),
                            scalar_weight("concat_score_weight")});
    }
  }
  LayerValue key_mask = k;
  key_mask.mask = v.mask;  // Keras masks the keys by the value's mask
  LayerValue no_query = q;
  no_query.mask = kNoValue;  // masked query rows are zeroed below instead
  scores = mask_scores(b, scores, no_query, key_mask, false, b.args.boolean("use_causal_mask"));
  ValueId weights = b.op("Softmax", {scores}, {{"axis", int64_t{-1}}});
  if (ValueId drop = b.dropout_mask("dropout", {b.options.batch_size, tq, tv}, rate, "seed");
      drop != kNoValue)
    weights = b.op("Mul", {weights, drop});
  LayerValue y;
  y.from = q.from;
  y.shape = {tq, v.shape[1]};
  y.value = b.op("MatMul", {weights, v.value});
  if (q.mask != kNoValue) {
    y.value = b.op("Mul", {y.value, b.op("Unsqueeze", {q.mask, b.shape_constant("mask/feature_axis", {2})})});
    y.mask = q.mask;
  }
  b.info.flops_per_sample = 2 * tq * tv * (dim + v.shape[1]);
  return y;
}
LayerValue build_attention(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_score_attention(b, in, false);
}
LayerValue build_additive_attention(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_score_attention(b, in, true);
}

// TokenAndPositionEmbedding (KerasHub): token ids [N, T] -> the token's embedding plus a learned embedding of
// its position, [N, T, embedding_dim]; T may be shorter than sequence_length (the first T positions).
LayerValue build_token_and_position_embedding(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t vocab = b.positive("vocabulary_size");
  const int64_t length = b.positive("sequence_length");
  const int64_t dim = b.positive("embedding_dim");
  if (in[0].shape.size() != 1)
    b.fail_layer(
        fmt::format("takes token ids (None, steps), got {} from '{}'", keras_shape(in[0].shape), in[0].from));
  const int64_t steps = in[0].shape[0];
  if (steps > length)
    b.fail("sequence_length",
           fmt::format("sequence_length {} is shorter than the input's {} steps", length, steps),
           fmt::format("sequence_length = {} or more", steps));
  ValueId tokens = b.weight("token_embedding/embeddings", "embeddings_initializer", Shape{vocab, dim},
                            {vocab, dim, vocab, dim});
  // KerasHub initializes both tables with embeddings_initializer.
  ValueId positions = b.weight("position_embedding/embeddings", "embeddings_initializer", Shape{length, dim},
                               {length, dim, length, dim});
  if (steps < length)
    positions = b.op("Slice", {positions, b.shape_constant("first", {0}), b.shape_constant("last", {steps}),
                               b.shape_constant("axis", {0})});
  LayerValue y;
  y.from = in[0].from;
  y.shape = {steps, dim};
  y.value = b.op("Add", {b.op("Gather", {tokens, in[0].value}, {{"axis", int64_t{0}}}), positions});
  if (b.args.boolean("mask_zero")) y.mask = b.nonzero_mask(in[0].value);  // as Embedding's
  return y;
}

}  // namespace

void add_attention_layers(std::vector<LayerDef>& defs) {
  using S = std::string;
  defs.push_back({"MultiHeadAttention",
                  "multi_head_attention",
                  {{"num_heads", ArgKind::integer, std::nullopt},
                   {"key_dim", ArgKind::integer, std::nullopt},
                   {"value_dim", ArgKind::integer, std::nullopt, true},
                   {"dropout", ArgKind::number, 0.0},
                   {"use_bias", ArgKind::boolean, true},
                   {"output_shape", ArgKind::int_or_single, std::nullopt, true},
                   {"use_causal_mask", ArgKind::boolean, false},
                   {"kernel_initializer", ArgKind::string, S("glorot_uniform")},
                   {"bias_initializer", ArgKind::string, S("zeros")}},
                  1,
                  3,
                  false,
                  build_multi_head_attention});
  defs.push_back({"TokenAndPositionEmbedding",
                  "token_and_position_embedding",
                  {{"vocabulary_size", ArgKind::integer, std::nullopt},
                   {"sequence_length", ArgKind::integer, std::nullopt},
                   {"embedding_dim", ArgKind::integer, std::nullopt},
                   {"embeddings_initializer", ArgKind::string, S("uniform")},
                   {"mask_zero", ArgKind::boolean, false}},
                  1,
                  1,
                  true,
                  build_token_and_position_embedding});
  for (bool additive : {false, true}) {
    std::vector<ArgDecl> args = {{"use_scale", ArgKind::boolean, additive},
                                 {"dropout", ArgKind::number, 0.0},
                                 {"use_causal_mask", ArgKind::boolean, false},
                                 {"seed", ArgKind::integer, std::nullopt, true}};
    if (!additive) args.push_back({"score_mode", ArgKind::string, S("dot")});
    defs.push_back({additive ? "AdditiveAttention" : "Attention",
                    additive ? "additive_attention" : "attention", args, 2, 3, false,
                    additive ? build_additive_attention : build_attention});
  }
  keep_masks(defs, {"MultiHeadAttention", "Attention", "AdditiveAttention"});
}

}  // namespace trainer::models
