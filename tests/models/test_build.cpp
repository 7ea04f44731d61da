// build_model on the sample models: parameter counts against Keras's, output shapes, FLOPs, weight names and
// shapes, the NCHW layout inside and the graph form (residual Add, Concatenate).
#include <doctest/doctest.h>

#include <algorithm>

#include "spec_builder.h"

using namespace trainer;
using namespace trainer::engine;
using namespace trainer::models;
using namespace trainer::models::testing;
using V = formats::ArgValue;

namespace {

int64_t total_params(const BuiltModel& m) {
  int64_t n = 0;
  for (const LayerInfo& l : m.layers) n += l.params;
  return n;
}

Shape param_shape(const Graph& g, const std::string& name) {
  ValueId v = g.find(name);
  REQUIRE_MESSAGE(v != kNoValue, name);
  return g.value(v).shape;
}

std::vector<int64_t> v(std::initializer_list<int64_t> x) {
  return x;
}

}  // namespace

TEST_SUITE("build") {
  TEST_CASE("build: the CIFAR-10 CNN has Keras's parameter counts, shapes and FLOPs") {
    BuiltModel m = models::testing::build(cifar_cnn(), false, 8);
    REQUIRE(m.layers.size() == 5);
    std::vector<std::string> names, types;
    for (const LayerInfo& l : m.layers) names.push_back(l.name), types.push_back(l.type);
    CHECK(names == std::vector<std::string>{"conv2d", "max_pooling2d", "flatten", "dense", "dense_1"});
    CHECK(m.layers[0].params == 896);
    CHECK(m.layers[1].params == 0);
    CHECK(m.layers[2].params == 0);
    CHECK(m.layers[3].params == 3686912);
    CHECK(m.layers[4].params == 5130);
    CHECK(total_params(m) == 3692938);
    CHECK(m.layers[3].trainable_params == 3686912);
    CHECK(m.layers[0].output_shape == v({30, 30, 32}));
    CHECK(m.layers[1].output_shape == v({15, 15, 32}));
    CHECK(m.layers[2].output_shape == v({7200}));
    CHECK(m.layers[3].output_shape == v({512}));
    CHECK(m.output_shape == v({10}));
    // 2 x multiply-adds of the convolution and the matrix products; pooling and activations count 0.
    CHECK(m.layers[0].flops_per_sample == 2 * 30 * 30 * 32 * 27);
    CHECK(m.layers[1].flops_per_sample == 0);
    CHECK(m.layers[3].flops_per_sample == 2 * 7200 * 512);
    CHECK(m.layers[4].flops_per_sample == 2 * 512 * 10);
    // Channels-last in the spec, NCHW inside: the loader converts each sample, no Transpose in the graph.
    CHECK(m.input_channels_last);
    CHECK(m.graph.value(m.input).shape == Shape{8, 3, 32, 32});
    CHECK(m.graph.value(m.input).name == "input");
    CHECK(count_ops(m.graph, "Transpose") == 0);
    CHECK(param_shape(m.graph, "conv2d/kernel") == Shape{32, 3, 3, 3});
    CHECK(param_shape(m.graph, "conv2d/bias") == Shape{32});
    CHECK(param_shape(m.graph, "dense/kernel") == Shape{7200, 512});
    CHECK(m.graph.value(m.output).shape == Shape{8, 10});
    CHECK(m.final_activation == "softmax");
    REQUIRE(m.logits != kNoValue);
    CHECK(m.graph.node(m.graph.value(m.output).producer).op == "Softmax");
    CHECK(m.graph.node(m.graph.value(m.output).producer).inputs[0] == m.logits);
    m.graph.validate();
  }

  TEST_CASE("build: the IMDB LSTM has Keras's parameter counts, ONNX weight layouts and a sigmoid head") {
    BuiltModel m = models::testing::build(imdb_lstm(), false, 4);
    REQUIRE(m.layers.size() == 4);
    CHECK(m.layers[0].params == 160000);
    CHECK(m.layers[1].params == 74240);
    CHECK(m.layers[2].params == 2064);
    CHECK(m.layers[3].params == 17);
    CHECK(m.layers[0].output_shape == v({200, 16}));
    CHECK(m.layers[1].output_shape == v({128}));
    CHECK(m.layers[0].flops_per_sample == 0);
    CHECK(m.layers[1].flops_per_sample == 2 * 200 * 4 * 128 * (16 + 128));
    CHECK_FALSE(m.input_channels_last);
    CHECK(m.graph.value(m.input).dtype == DType::i64);
    CHECK(m.graph.value(m.input).shape == Shape{4, 200});
    CHECK(param_shape(m.graph, "embedding/embeddings") == Shape{10000, 16});
    CHECK(param_shape(m.graph, "lstm/kernel") == Shape{1, 512, 16});
    CHECK(param_shape(m.graph, "lstm/recurrent_kernel") == Shape{1, 512, 128});
    CHECK(param_shape(m.graph, "lstm/bias") == Shape{1, 512});
    const Node& lstm = only_node(m.graph, "LSTM");
    CHECK(lstm.attrs.i("layout") == 1);
    CHECK(lstm.attrs.i("hidden_size") == 128);
    CHECK(lstm.attrs.s("activations") == "Sigmoid,Tanh,Tanh");
    CHECK(lstm.outputs[0] == kNoValue);  // only the last step is computed into the arena
    CHECK(m.final_activation == "sigmoid");
    REQUIRE(m.logits != kNoValue);
    CHECK(m.graph.value(m.logits).shape == Shape{4, 1});
    m.graph.validate();
  }

  TEST_CASE("build: the Fashion-MNIST MLP, CNN and LSTM have Keras's parameter counts") {
    BuiltModel mlp = models::testing::build(fashion_mlp());
    CHECK(mlp.layers[0].output_shape == v({784}));
    CHECK(mlp.layers[1].params == 803840);
    CHECK(mlp.layers[2].params == 524800);
    CHECK(mlp.layers[3].params == 5130);
    CHECK(total_params(mlp) == 1333770);
    CHECK(mlp.input_channels_last);

    BuiltModel cnn = models::testing::build(fashion_cnn());
    std::vector<int64_t> params;
    for (const LayerInfo& l : cnn.layers) params.push_back(l.params);
    CHECK(params == v({320, 0, 18496, 0, 0, 0, 16010}));
    CHECK(total_params(cnn) == 34826);
    CHECK(cnn.layers[2].output_shape == v({11, 11, 64}));
    CHECK(cnn.layers[4].output_shape == v({1600}));
    CHECK(count_ops(cnn.graph, "Dropout") == 0);  // inference graph

    BuiltModel lstm = models::testing::build(fashion_lstm());
    CHECK(lstm.layers[0].params == 80384);
    CHECK(lstm.layers[1].params == 2064);
    CHECK(lstm.layers[2].params == 170);
    CHECK_FALSE(lstm.input_channels_last);
    CHECK(lstm.final_activation == "linear");
    CHECK(lstm.logits == kNoValue);
  }

  TEST_CASE("build: GRU counts both biases with reset_after (ONNX linear_before_reset) and one without") {
    Spec a({10, 8});
    a.add("GRU", {{"units", int64_t{32}}, {"return_sequences", true}});
    BuiltModel m = models::testing::build(a);
    CHECK(m.layers[0].params == 3 * 32 * (8 + 32 + 2));
    CHECK(m.layers[0].output_shape == v({10, 32}));
    CHECK(param_shape(m.graph, "gru/bias") == Shape{1, 192});
    CHECK(only_node(m.graph, "GRU").attrs.i("linear_before_reset") == 1);
    CHECK(m.graph.value(m.output).shape == Shape{4, 10, 32});

    Spec b({10, 8});
    b.add("GRU", {{"units", int64_t{32}}, {"reset_after", false}, {"use_bias", true}});
    BuiltModel n = models::testing::build(b);
    CHECK(n.layers[0].params == 3 * 32 * (8 + 32 + 1));
    CHECK(only_node(n.graph, "GRU").attrs.i("linear_before_reset") == 0);

    Spec c({10, 8});
    c.add("LSTM", {{"units", int64_t{5}}, {"use_bias", false}, {"activation", std::string("relu")}});
    BuiltModel l = models::testing::build(c);
    CHECK(l.layers[0].params == 4 * 5 * (8 + 5));
    CHECK(only_node(l.graph, "LSTM").attrs.s("activations") == "Sigmoid,Relu,Relu");
  }

  TEST_CASE("build: BatchNormalization holds moving statistics as state, updated only in training") {
    Spec s({8, 8, 3});
    s.add("Conv2D", {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}, {"padding", std::string("same")}})
        .add("BatchNormalization")
        .add("Flatten")
        .add("Dropout", {{"rate", 0.25}, {"seed", int64_t{5}}})
        .add("Dense", {{"units", int64_t{3}}})
        .add("BatchNormalization", {{"momentum", 0.9}, {"center", false}});
    BuiltModel train = models::testing::build(s, true);
    CHECK(train.layers[1].params == 16);
    CHECK(train.layers[1].trainable_params == 8);
    CHECK(train.layers[5].params == 3 * 3);  // gamma and the two statistics; no beta
    CHECK(train.layers[5].trainable_params == 3);
    CHECK(train.graph.value(train.graph.find("batch_normalization/moving_mean")).kind == ValueKind::state);
    CHECK(train.graph.value(train.graph.find("batch_normalization/gamma")).kind == ValueKind::parameter);
    CHECK(train.graph.find("batch_normalization_1/beta") == kNoValue);
    REQUIRE(train.graph.updates().size() == 4);
    CHECK(train.graph.updates()[0].second == train.graph.find("batch_normalization/moving_mean"));
    CHECK(train.graph.updates()[1].second == train.graph.find("batch_normalization/moving_variance"));
    int bn_seen = 0;
    for (NodeId i = 0; i < train.graph.num_nodes(); ++i) {
      const Node& n = train.graph.node(i);
      if (n.op != "BatchNormalization") continue;
      CHECK(n.attrs.i("training_mode") == 1);
      CHECK(n.attrs.f("momentum") == doctest::Approx(bn_seen == 0 ? 0.99 : 0.9));
      CHECK(n.attrs.f("epsilon") == doctest::Approx(1e-3));
      ++bn_seen;
    }
    CHECK(bn_seen == 2);
    const Node& drop = only_node(train.graph, "Dropout");
    CHECK(drop.attrs.i("seed") == 5);
    CHECK(train.graph.initializer(drop.inputs[1])->get_f64(0) == doctest::Approx(0.25));
    CHECK(train.graph.initializer(drop.inputs[2])->get_f64(0) == 1.0);

    BuiltModel infer = models::testing::build(s, false);
    CHECK(infer.graph.updates().empty());
    CHECK(count_ops(infer.graph, "Dropout") == 0);
    for (NodeId i = 0; i < infer.graph.num_nodes(); ++i)
      if (infer.graph.node(i).op == "BatchNormalization")
        CHECK(infer.graph.node(i).attrs.i("training_mode") == 0);
    // Training and inference graphs name their weights alike, so plans share them by name.
    for (const char* name : {"conv2d/kernel", "batch_normalization/moving_variance", "dense/kernel"})
      CHECK(infer.graph.find(name) != kNoValue);
  }

  TEST_CASE("build: a frozen layer (trainable = false) has no trainable parameters") {
    Spec s({6});
    s.add("Dense", {{"units", int64_t{4}}, {"trainable", false}})
        .add("BatchNormalization", {{"trainable", false}});
    BuiltModel m = models::testing::build(s, true);
    CHECK(m.layers[0].params == 28);
    CHECK(m.layers[0].trainable_params == 0);
    CHECK_FALSE(m.graph.value(m.graph.find("dense/kernel")).trainable);
    // Keras runs a frozen BatchNormalization in inference mode.
    CHECK(m.graph.updates().empty());
  }

  TEST_CASE("build: the graph form builds a residual block and a concatenation") {
    Spec s({8, 8, 3});
    s.add("Conv2D", {{"filters", int64_t{16}}, {"kernel_size", int64_t{3}}, {"padding", std::string("same")}},
          "stem")
        .add("Conv2D",
             {{"filters", int64_t{16}}, {"kernel_size", int64_t{3}}, {"padding", std::string("same")}},
             "branch")
        .add("Add", {}, "residual", {"stem", "branch"})
        .add("Conv2D", {{"filters", int64_t{8}}, {"kernel_size", int64_t{1}}}, "side", {"input"})
        .add("Concatenate", {}, "joined", {"residual", "side"})
        .add("GlobalAveragePooling2D")
        .add("Dense", {{"units", int64_t{2}}, {"activation", std::string("softmax")}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[2].output_shape == v({8, 8, 16}));
    CHECK(m.layers[4].output_shape == v({8, 8, 24}));
    CHECK(m.layers[5].output_shape == v({24}));
    CHECK(m.layers[5].name == "global_average_pooling2d");
    // Concatenate along Keras's channel axis is the IR's axis 1.
    CHECK(only_node(m.graph, "Concat").attrs.i("axis") == 1);
    CHECK(count_ops(m.graph, "Transpose") == 0);
    // The stem's output feeds both the branch and the Add.
    const Graph& g = m.graph;
    const Node& branch = g.node(g.value(g.find("branch/kernel")).consumers.at(0));
    CHECK(g.node(g.value(branch.inputs[0]).producer).inputs[1] == g.find("stem/kernel"));
    CHECK(g.value(branch.inputs[0]).consumers.size() == 2);
    m.graph.validate();
  }

  TEST_CASE("build: layouts change by Reshape when the bytes allow it, by Transpose otherwise") {
    Spec gray({784});
    gray.add("Reshape", {{"target_shape", v({28, 28, 1})}})
        .add("Conv2D", {{"filters", int64_t{2}}, {"kernel_size", int64_t{3}}})
        .add("Flatten")
        .add("Dense", {{"units", int64_t{2}}});
    BuiltModel g1 = models::testing::build(gray);
    CHECK_FALSE(g1.input_channels_last);
    CHECK(count_ops(g1.graph, "Transpose") == 0);
    CHECK(g1.layers[0].output_shape == v({28, 28, 1}));

    Spec color({192});
    color.add("Reshape", {{"target_shape", v({8, -1, 3})}})
        .add("Conv2D",
             {{"filters", int64_t{2}}, {"kernel_size", int64_t{3}}, {"activation", std::string("softmax")}});
    BuiltModel c = models::testing::build(color);
    CHECK(c.layers[0].output_shape == v({8, 8, 3}));
    // One Transpose into NCHW for the Conv, and one back for the image the model outputs (and its logits).
    CHECK(count_ops(c.graph, "Transpose") == 3);
    CHECK(c.output_shape == v({6, 6, 2}));
    CHECK(c.graph.value(c.output).shape == Shape{4, 6, 6, 2});
    CHECK(c.graph.value(c.logits).shape == Shape{4, 6, 6, 2});
    const Node& softmax = only_node(c.graph, "Softmax");
    CHECK(softmax.attrs.i("axis") == 1);  // the channels of NCHW
  }

  TEST_CASE("build: padding same places the odd pixel at the end, as TensorFlow") {
    Spec s({8, 7, 1});
    s.add("Conv2D", {{"filters", int64_t{1}},
                     {"kernel_size", int64_t{3}},
                     {"strides", int64_t{2}},
                     {"padding", std::string("same")}})
        .add("MaxPooling2D",
             {{"pool_size", int64_t{3}}, {"strides", int64_t{1}}, {"padding", std::string("SAME")}})
        .add("AveragePooling2D", {{"pool_size", v({2, 1})}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({4, 4, 1}));
    // rows: out 4, (4-1)*2 + 3 - 8 = 1 -> [0, 1]; cols: (4-1)*2 + 3 - 7 = 2 -> [1, 1].
    CHECK(only_node(m.graph, "Conv").attrs.ints("pads") == v({0, 1, 1, 1}));
    CHECK(only_node(m.graph, "MaxPool").attrs.ints("pads") == v({1, 1, 1, 1}));
    CHECK(m.layers[1].output_shape == v({4, 4, 1}));
    // strides default to pool_size.
    CHECK(only_node(m.graph, "AveragePool").attrs.ints("strides") == v({2, 1}));
    CHECK(only_node(m.graph, "AveragePool").attrs.i("count_include_pad") == 0);
    CHECK(m.layers[2].output_shape == v({2, 4, 1}));
  }

  TEST_CASE("build: Conv2D strides, dilation and groups") {
    Spec s({16, 16, 4});
    s.add("Conv2D", {{"filters", int64_t{8}},
                     {"kernel_size", int64_t{3}},
                     {"dilation_rate", int64_t{2}},
                     {"groups", int64_t{2}},
                     {"use_bias", false}})
        .add("Conv2D", {{"filters", int64_t{4}}, {"kernel_size", v({1, 3})}, {"strides", v({2, 3})}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({12, 12, 8}));
    CHECK(m.layers[0].params == 8 * 2 * 9);
    CHECK(m.layers[0].flops_per_sample == 2 * 12 * 12 * 8 * 2 * 9);
    CHECK(param_shape(m.graph, "conv2d/kernel") == Shape{8, 2, 3, 3});
    CHECK(m.layers[1].output_shape == v({6, 4, 4}));
  }

  TEST_CASE("build: LayerNormalization, Embedding, Activation and Reshape shapes and names") {
    Spec s({5}, "int32");
    s.add("Embedding", {{"input_dim", int64_t{20}}, {"output_dim", int64_t{6}}})
        .add("LayerNormalization")
        .add("LSTM", {{"units", int64_t{3}}, {"return_sequences", true}})
        .add("LayerNormalization", {{"axis", v({1, 2})}, {"center", false}})
        .add("Reshape", {{"target_shape", v({15})}})
        .add("Activation", {{"activation", std::string("gelu")}})
        .add("Dense", {{"units", int64_t{4}}, {"activation", std::string("leaky_relu")}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({5, 6}));
    CHECK(m.layers[1].params == 12);
    CHECK(param_shape(m.graph, "layer_normalization/gamma") == Shape{6});
    CHECK(m.layers[2].output_shape == v({5, 3}));
    CHECK(m.layers[3].params == 15);
    CHECK(param_shape(m.graph, "layer_normalization_1/gamma") == Shape{5, 3});
    CHECK(m.layers[4].output_shape == v({15}));
    CHECK(m.layers[6].output_shape == v({4}));
    CHECK(m.final_activation == "leaky_relu");
    CHECK(only_node(m.graph, "LeakyRelu").attrs.f("alpha") == doctest::Approx(0.2));
    CHECK(count_ops(m.graph, "Gelu") == 1);
    m.graph.validate();
  }

  TEST_CASE("build: Conv2DTranspose has Keras's output sizes, weights and pads") {
    using Args = std::vector<std::pair<std::string, formats::ArgValue>>;
    // pads crop the full transposed convolution ((5 - 1) * strides + span) as TensorFlow's does: the
    // gradient of the "same" convolution of the output, whose odd padded pixel is at the end; extra (ONNX's
    // output_padding) is output past the kernel's reach.
    struct Case {
      Args args;
      std::vector<int64_t> out;  // Keras's (height, width) from 5 x 5
      std::vector<int64_t> pads, extra;
    };
    const std::vector<Case> cases = {
        {{{"kernel_size", int64_t{3}}, {"strides", int64_t{2}}},
         {11, 11},
         {0, 0, 0, 0},
         {0, 0}},  // 5 * 2 + 1
        {{{"kernel_size", int64_t{2}}, {"strides", int64_t{2}}, {"padding", std::string("same")}},
         {10, 10},
         {0, 0, 0, 0},
         {0, 0}},
        {{{"kernel_size", int64_t{1}}, {"strides", int64_t{3}}},
         {15, 15},
         {0, 0, 0, 0},
         {2, 2}},  // beyond the kernel's reach (13): zeros
        {{{"kernel_size", int64_t{3}},
          {"strides", int64_t{2}},
          {"padding", std::string("same")},
          {"output_padding", int64_t{1}}},
         {10, 10},  // (5 - 1) * 2 + 3 - 2 * 1 + 1, of 11: the pixel past the output cropped at the end
         {0, 0, 1, 1},
         {0, 0}},
        {{{"kernel_size", int64_t{4}},
          {"strides", int64_t{3}},
          {"padding", std::string("same")},
          {"output_padding", int64_t{2}}},
         {14, 14},  // (5 - 1) * 3 + 4 - 2 * 2 + 2, of 16
         {1, 1, 1, 1},
         {0, 0}},
        {{{"kernel_size", int64_t{3}},
          {"strides", int64_t{2}},
          {"padding", std::string("valid")},
          {"output_padding", int64_t{1}}},
         {12, 12},
         {0, 0, 0, 0},
         {1, 1}},
        {{{"kernel_size", v({3, 1})}, {"strides", v({1, 2})}, {"dilation_rate", v({2, 1})}},
         {9, 10},
         {0, 0, 0, 0},
         {0, 1}},
    };
    for (const Case& c : cases) {
      CAPTURE(c.out[0]);
      Args args = c.args;
      args.emplace_back("filters", int64_t{4});
      Spec s({5, 5, 3});
      s.add("Conv2DTranspose", args);
      BuiltModel m = models::testing::build(s);
      CHECK(m.layers[0].output_shape == v({c.out[0], c.out[1], 4}));
      const Shape& kernel = param_shape(m.graph, "conv2d_transpose/kernel");
      CHECK(kernel[0] == 3);
      CHECK(kernel[1] == 4);
      CHECK(m.layers[0].params == kernel.numel() + 4);
      // The graph computes the shape the layer reports (NCHW inside).
      const Node& node = only_node(m.graph, "ConvTranspose");
      const Shape& out = m.graph.value(node.outputs[0]).shape;
      CHECK(out == Shape{m.graph.value(m.input).shape[0], 4, c.out[0], c.out[1]});
      CHECK(node.attrs.ints("pads") == c.pads);
      CHECK(node.attrs.ints("output_padding") == c.extra);
      m.graph.validate();
    }
    Spec bad({5, 5, 3});
    bad.add("Conv2DTranspose", {{"filters", int64_t{2}},
                                {"kernel_size", int64_t{3}},
                                {"strides", int64_t{2}},
                                {"output_padding", int64_t{2}}});
    CHECK_THROWS_WITH(models::testing::build(bad),
                      doctest::Contains("must be at least 0 and smaller than strides"));
  }

  TEST_CASE("build: Conv1DTranspose has Keras's output lengths") {
    using Args = std::vector<std::pair<std::string, formats::ArgValue>>;
    struct Case {
      Args args;
      int64_t out;  // Keras's length from 5 steps
    };
    const std::vector<Case> cases = {
        {{{"kernel_size", int64_t{3}}, {"strides", int64_t{2}}}, 11},
        {{{"kernel_size", int64_t{2}}, {"strides", int64_t{2}}, {"padding", std::string("same")}}, 10},
        {{{"kernel_size", int64_t{1}}, {"strides", int64_t{3}}}, 15},
        {{{"kernel_size", int64_t{3}},
          {"strides", int64_t{2}},
          {"padding", std::string("same")},
          {"output_padding", int64_t{1}}},
         10},
        {{{"kernel_size", int64_t{3}}, {"dilation_rate", int64_t{2}}}, 9},
    };
    for (const Case& c : cases) {
      CAPTURE(c.out);
      Args args = c.args;
      args.emplace_back("filters", int64_t{4});
      Spec s({5, 3});
      s.add("Conv1DTranspose", args);
      BuiltModel m = models::testing::build(s);
      CHECK(m.layers[0].output_shape == v({c.out, 4}));
      const Shape& kernel = param_shape(m.graph, "conv1d_transpose/kernel");  // [in, filters, k]
      CHECK(kernel[0] == 3);
      CHECK(kernel[1] == 4);
      const Shape& out = m.graph.value(only_node(m.graph, "ConvTranspose").outputs[0]).shape;
      CHECK(out == Shape{m.graph.value(m.input).shape[0], 4, c.out});
      m.graph.validate();
    }
  }

  TEST_CASE("build: layers without names get Keras's generated names; given names are kept") {
    Spec s({4});
    s.add("Dense", {{"units", int64_t{3}}}, "dense_1")
        .add("Dense", {{"units", int64_t{3}}})
        .add("Dense", {{"units", int64_t{3}}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].name == "dense_1");
    CHECK(m.layers[1].name == "dense");
    CHECK(m.layers[2].name == "dense_2");
    CHECK(m.graph.find("dense_2/bias") != kNoValue);
  }
}

TEST_SUITE("build") {
  TEST_CASE("build: Conv1D and the 1-D poolings have Keras's output lengths") {
    using Args = std::vector<std::pair<std::string, formats::ArgValue>>;
    struct Case {
      const char* type;
      Args args;
      std::vector<int64_t> out;  // from (10, 3)
    };
    const std::vector<Case> cases = {
        {"Conv1D", {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}}, {8, 4}},
        {"Conv1D",
         {{"filters", int64_t{4}},
          {"kernel_size", int64_t{3}},
          {"padding", std::string("same")},
          {"strides", int64_t{3}}},
         {4, 4}},
        {"Conv1D",
         {{"filters", int64_t{2}},
          {"kernel_size", int64_t{3}},
          {"padding", std::string("causal")},
          {"dilation_rate", int64_t{2}}},
         {10, 2}},
        // Keras's 1-D sizes may be tuples of one: kernel_size=(3,), strides=[3], dilation_rate=(2,).
        {"Conv1D",
         {{"filters", int64_t{2}},
          {"kernel_size", std::vector<int64_t>{3}},
          {"padding", std::string("same")},
          {"strides", std::vector<int64_t>{3}}},
         {4, 2}},
        {"Conv1D",
         {{"filters", int64_t{2}},
          {"kernel_size", std::vector<int64_t>{3}},
          {"dilation_rate", std::vector<int64_t>{2}}},
         {6, 2}},
        {"MaxPooling1D", {}, {5, 3}},
        {"MaxPooling1D",
         {{"pool_size", std::vector<int64_t>{3}}, {"strides", std::vector<int64_t>{1}}},
         {8, 3}},
        {"Conv1DTranspose", {{"filters", int64_t{2}}, {"kernel_size", std::vector<int64_t>{3}}}, {12, 2}},
        {"AveragePooling1D", {{"pool_size", int64_t{3}}, {"padding", std::string("same")}}, {4, 3}},
        {"GlobalMaxPooling1D", {}, {3}},
        {"GlobalAveragePooling1D", {{"keepdims", true}}, {1, 3}},
    };
    for (const Case& c : cases) {
      CAPTURE(c.type);
      Spec s({10, 3});
      s.add(c.type, c.args);
      BuiltModel m = models::testing::build(s);
      CHECK(m.layers[0].output_shape == c.out);
      std::vector<int64_t> ir = {m.graph.value(m.input).shape[0]};
      ir.insert(ir.end(), c.out.begin(), c.out.end());
      CHECK(m.graph.value(m.output).shape == Shape(ir));
      m.graph.validate();
    }
    CHECK(param_shape(models::testing::build(
                          Spec({10, 3}).add("Conv1D", {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}}))
                          .graph,
                      "conv1d/kernel") == Shape{4, 3, 3});
    CHECK_THROWS_WITH(models::testing::build(
                          Spec({2, 3}).add("Conv1D", {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}})),
                      doctest::Contains("is longer than its input (None, 2, 3)"));
    CHECK_THROWS_WITH(models::testing::build(Spec({10, 3}).add(
                          "Conv1D", {{"filters", int64_t{4}}, {"kernel_size", std::vector<int64_t>{3, 3}}})),
                      doctest::Contains("must be an integer or a list of one integer"));
  }
}

TEST_SUITE("build") {
  TEST_CASE("build: Bidirectional has Keras's weight names, widths and argument checks") {
    Spec s({7, 3});
    s.add("Bidirectional",
          {{"layer", std::string("LSTM")}, {"units", int64_t{4}}, {"return_sequences", true}})
        .add("Bidirectional",
             {{"layer", std::string("GRU")}, {"units", int64_t{2}}, {"merge_mode", std::string("sum")}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({7, 8}));
    CHECK(m.layers[1].output_shape == v({2}));
    CHECK(param_shape(m.graph, "bidirectional/forward_lstm/kernel") == Shape{1, 16, 3});
    CHECK(param_shape(m.graph, "bidirectional/backward_lstm/recurrent_kernel") == Shape{1, 16, 4});
    CHECK(param_shape(m.graph, "bidirectional_1/backward_gru/bias") ==
          Shape{1, 12});  // reset_after: both biases
    // Keras's counts: 2 x LSTM(4) on 3 features, 2 x GRU(2) with reset_after on 8 features.
    CHECK(m.layers[0].params == 2 * 4 * 4 * (3 + 4 + 1));
    CHECK(m.layers[1].params == 2 * (3 * 2 * (8 + 2) + 2 * 3 * 2));
    m.graph.validate();
    CHECK_THROWS_WITH(
        models::testing::build(
            Spec({7, 3}).add("Bidirectional", {{"layer", std::string("Dense")}, {"units", int64_t{4}}})),
        doctest::Contains("Bidirectional wraps LSTM, GRU, SimpleRNN or ConvLSTM1D/2D/3D, not \"Dense\""));
    CHECK_THROWS_WITH(models::testing::build(Spec({7, 3}).add(
                          "Bidirectional",
                          {{"layer", std::string("LSTM")}, {"units", int64_t{4}}, {"reset_after", false}})),
                      doctest::Contains("reset_after is an argument of GRU"));
  }

  TEST_CASE("build: SimpleRNN has Keras's weight names and parameter count, alone and wrapped") {
    Spec s({7, 3});
    s.add("SimpleRNN", {{"units", int64_t{5}}, {"return_sequences", true}})
        .add("Bidirectional", {{"layer", std::string("SimpleRNN")}, {"units", int64_t{2}}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({7, 5}));
    CHECK(m.layers[1].output_shape == v({4}));
    CHECK(param_shape(m.graph, "simple_rnn/kernel") == Shape{1, 5, 3});
    CHECK(param_shape(m.graph, "simple_rnn/recurrent_kernel") == Shape{1, 5, 5});
    CHECK(param_shape(m.graph, "simple_rnn/bias") == Shape{1, 5});
    CHECK(param_shape(m.graph, "bidirectional/backward_simple_rnn/kernel") == Shape{1, 2, 5});
    CHECK(m.layers[0].params == 5 * (3 + 5 + 1));
    CHECK(m.layers[1].params == 2 * 2 * (5 + 2 + 1));
    CHECK_THROWS_WITH(models::testing::build(
                          Spec({7, 3}).add("Bidirectional", {{"layer", std::string("SimpleRNN")},
                                                             {"units", int64_t{4}},
                                                             {"recurrent_activation", std::string("relu")}})),
                      doctest::Contains("recurrent_activation is an argument of LSTM, GRU and the ConvLSTMs, "
                                        "not of the SimpleRNN this wraps"));
  }
}

TEST_SUITE("build") {
  TEST_CASE("build: DepthwiseConv2D and SeparableConv2D have Keras's shapes and parameter counts") {
    Spec s({8, 8, 3});
    s.add("DepthwiseConv2D", {{"kernel_size", int64_t{3}}, {"depth_multiplier", int64_t{2}}})
        .add("SeparableConv2D",
             {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}, {"padding", std::string("same")}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({6, 6, 6}));
    CHECK(m.layers[0].params == 3 * 3 * 3 * 2 + 6);
    CHECK(m.layers[1].output_shape == v({6, 6, 4}));
    CHECK(m.layers[1].params == 3 * 3 * 6 + 6 * 4 + 4);
    CHECK(param_shape(m.graph, "depthwise_conv2d/depthwise_kernel") == Shape{6, 1, 3, 3});
    CHECK(param_shape(m.graph, "separable_conv2d/pointwise_kernel") == Shape{4, 6, 1, 1});
    m.graph.validate();
  }
}
