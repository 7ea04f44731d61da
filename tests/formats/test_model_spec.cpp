// The TOML model-spec reader: a full spec read into ModelSpec, every error class at its exact line:col with
// its hint, --set overrides, and the round trip through to_toml.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/util/error.h"
#include "formats/model_spec.h"

using namespace trainer;
using namespace trainer::formats;

namespace {

// Line numbers are asserted below; keep the text's lines where they are.
const char* kFullSpec = R"(# A small residual CNN on 28x28 images.
format_version = 1

[model]
input = { shape = [28, 28, 1], dtype = "float32" }

[[model.layers]]
type = "Conv2D"
filters = 8
kernel_size = [3, 3]
padding = "same"
activation = "relu"

[[model.layers]]
type = "MaxPooling2D"
pool_size = 2

[[model.layers]]
type = "Conv2D"
filters = 8
kernel_size = 3
padding = "same"
use_bias = false

[[model.layers]]
type = "Add"
name = "residual"
inputs = ["max_pooling2d", "conv2d_1"]

[[model.layers]]
type = "Flatten"

[[model.layers]]
type = "Dropout"
rate = 0.25
noise_shape = [1, 2.5]

[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"

[data]
validation_split = 0.1
scale = 0.00392156862745098
mean = 0.5
std = [0.25]

[data.train]
format = "idx"
x = "images/train-images-idx3-ubyte.gz"
y = ["images/train-labels-idx1-ubyte.gz"]
limit = 1000

[data.test]
format = "csv"
x = "/data/test.csv"
header = false
label_column = 0

[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy", "top_k_accuracy"]
top_k = 3
epochs = 5
batch_size = 64
seed = 42

[train.optimizer]
name = "sgd"
learning_rate = 0.05
momentum = 0.9
nesterov = true
clipnorm = 1.0

[train.optimizer.schedule]
kind = "cosine"
decay_steps = 4000
alpha = 0.1
warmup_steps = 100

[train.early_stopping]
monitor = "val_accuracy"
patience = 2
restore_best_weights = true
)";

// Six lines: a valid spec that error cases extend from line 7 on.
const std::string kHead =
    "format_version = 1\n"
    "[model]\n"
    "input = [4]\n"
    "[[model.layers]]\n"
    "type = \"Dense\"\n"
    "units = 2\n";

struct Failure {
  std::string where, what, hint;
};

Failure failure(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_model_spec(text, "spec.toml", overrides);
  } catch (const InputError& e) {
    std::string what = e.what();
    if (!e.where().empty()) what = what.substr(e.where().size() + 2);  // what() is "where: what"
    return {e.where(), what, e.hint()};
  }
  FAIL("expected an InputError: " << text);
  return {};
}

template <typename T>
T arg(const LayerSpec& l, const std::string& key) {
  auto it = l.args.find(key);
  REQUIRE_MESSAGE(it != l.args.end(), key);
  REQUIRE_MESSAGE(std::holds_alternative<T>(it->second.value), key);
  return std::get<T>(it->second.value);
}

}  // namespace

TEST_SUITE("model_spec") {
  TEST_CASE("a full spec is read into every field with its position") {
    const ModelSpec s = parse_model_spec(kFullSpec, "specs/cnn.toml");
    CHECK(s.format_version == 1);
    CHECK(s.path == "specs/cnn.toml");
    CHECK(s.base_dir == (std::filesystem::current_path() / "specs").string());

    CHECK(s.model.input.shape == std::vector<int64_t>{28, 28, 1});
    CHECK(s.model.input.dtype == "float32");
    CHECK(s.model.input.pos.str() == "specs/cnn.toml:5:9");
    REQUIRE(s.model.layers.size() == 7);
    const auto& L = s.model.layers;
    // Keras-style names: snake_case of the class, numbered per class from the second on.
    CHECK(L[0].name == "conv2d");
    CHECK(L[1].name == "max_pooling2d");
    CHECK(L[2].name == "conv2d_1");
    CHECK(L[3].name == "residual");
    CHECK(L[4].name == "flatten");
    CHECK(L[5].name == "dropout");
    CHECK(L[6].name == "dense");
    CHECK(L[0].type == "Conv2D");
    CHECK(L[0].pos.str() == "specs/cnn.toml:7:1");
    CHECK(L[0].type_pos.str() == "specs/cnn.toml:8:8");
    CHECK(arg<int64_t>(L[0], "filters") == 8);
    CHECK(arg<std::vector<int64_t>>(L[0], "kernel_size") == std::vector<int64_t>{3, 3});
    CHECK(arg<std::string>(L[0], "padding") == "same");
    CHECK(L[0].args.at("kernel_size").pos.str() == "specs/cnn.toml:10:15");
    CHECK(L[0].args.size() == 4);  // type is not an argument
    CHECK(arg<int64_t>(L[2], "kernel_size") == 3);
    CHECK(arg<bool>(L[2], "use_bias") == false);
    CHECK(L[3].inputs == std::vector<std::string>{"max_pooling2d", "conv2d_1"});
    CHECK(L[3].args.empty());
    CHECK(arg<double>(L[5], "rate") == 0.25);
    CHECK(arg<std::vector<double>>(L[5], "noise_shape") == std::vector<double>{1.0, 2.5});  // mixed: floats
    CHECK(L[6].inputs.empty());

    REQUIRE(s.data.train.has_value());
    CHECK(s.data.train->format == "idx");
    CHECK(s.data.train->x == std::vector<std::string>{"images/train-images-idx3-ubyte.gz"});
    CHECK(s.data.train->y == std::vector<std::string>{"images/train-labels-idx1-ubyte.gz"});
    CHECK(s.data.train->limit == 1000);
    CHECK(s.data.train->x_key == "x");
    CHECK(s.data.train->header);
    CHECK(s.data.train->pos.str() == "specs/cnn.toml:49:1");
    CHECK(!s.data.validation.has_value());
    REQUIRE(s.data.test.has_value());
    CHECK(s.data.test->header == false);
    CHECK(s.data.test->label_column == "0");
    CHECK(s.data.validation_split == 0.1);
    CHECK(s.data.scale == 0.00392156862745098);
    CHECK(s.data.mean == std::vector<double>{0.5});
    CHECK(s.data.std == std::vector<double>{0.25});
    CHECK(s.data.shuffle);

    CHECK(s.train.loss == "sparse_categorical_crossentropy");
    CHECK(s.train.loss_pos.str() == "specs/cnn.toml:62:8");
    CHECK(s.train.metrics == std::vector<std::string>{"accuracy", "top_k_accuracy"});
    CHECK(s.train.top_k == 3);
    CHECK(s.train.epochs == 5);
    CHECK(s.train.batch_size == 64);
    CHECK(s.train.seed == 42);
    const OptimizerSpec& o = s.train.optimizer;
    CHECK(o.name == "sgd");
    CHECK(o.learning_rate == 0.05);
    CHECK(o.momentum == 0.9);
    CHECK(o.nesterov);
    CHECK(o.clipnorm == 1.0);
    CHECK(o.weight_decay == 0.0);
    CHECK(o.schedule.kind == "cosine");
    CHECK(o.schedule.decay_steps == 4000);
    CHECK(o.schedule.alpha == 0.1);
    CHECK(o.schedule.warmup_steps == 100);
    CHECK(o.schedule.pos.str() == "specs/cnn.toml:76:1");
    const EarlyStoppingSpec& e = s.train.early_stopping;
    CHECK(e.enabled);
    CHECK(e.monitor == "val_accuracy");
    CHECK(e.mode == "auto");
    CHECK(e.patience == 2);
    CHECK(e.restore_best_weights);

    // Relative data paths resolve against the spec's folder; absolute ones stay.
    CHECK(resolve_data_path(s, s.data.train->x[0]) ==
          (std::filesystem::current_path() / "specs/images/train-images-idx3-ubyte.gz").string());
    CHECK(resolve_data_path(s, "/data/test.csv") == "/data/test.csv");
  }

  TEST_CASE("defaults and shorthands") {
    const ModelSpec s = parse_model_spec(kHead, "m.toml");
    CHECK(s.model.input.shape == std::vector<int64_t>{4});
    CHECK(s.model.input.dtype == "float32");
    CHECK(s.model.input.pos.str() == "m.toml:3:9");
    CHECK(!s.data.train.has_value());
    CHECK(s.train.loss.empty());
    CHECK(s.train.epochs == 1);
    CHECK(s.train.batch_size == 32);
    CHECK(s.train.optimizer.name == "adam");
    CHECK(s.train.optimizer.learning_rate == 0.001);
    CHECK(s.train.optimizer.epsilon == 1e-7);
    CHECK(s.train.optimizer.schedule.kind == "constant");
    CHECK(!s.train.early_stopping.enabled);

    const ModelSpec t = parse_model_spec(kHead +
                                             "[train]\n"
                                             "loss = \"mean_squared_error\"\n"
                                             "metrics = \"accuracy\"\n"
                                             "optimizer = \"adamw\"\n"
                                             "early_stopping = {}\n",
                                         "m.toml");
    CHECK(t.train.loss == "mse");
    CHECK(t.train.metrics == std::vector<std::string>{"accuracy"});
    CHECK(t.train.optimizer.name == "adamw");
    CHECK(t.train.optimizer.weight_decay == 0.004);  // Keras's AdamW default
    CHECK(t.train.optimizer.pos.str() == "m.toml:10:13");
    CHECK(t.train.early_stopping.enabled);
    CHECK(t.train.early_stopping.monitor == "val_loss");
  }

  TEST_CASE("Keras's class names of schedules and other names of layers read as this format's") {
    const std::vector<std::pair<std::string, std::string>> kinds = {
        {"ExponentialDecay", "exponential"},
        {"CosineDecay", "cosine"},
        {"CosineDecayRestarts", "cosine_restarts"},
        {"PiecewiseConstantDecay", "piecewise_constant"},
        {"InverseTimeDecay", "inverse_time"}};
    for (const auto& [keras, kind] : kinds) {
      CAPTURE(keras);
      const ModelSpec t = parse_model_spec(
          kHead + "[train]\nloss = \"mse\"\n[train.optimizer.schedule]\nkind = \"" + keras + "\"\n" +
              (kind == "piecewise_constant" ? "boundaries = [10]\nvalues = [0.1, 0.01]\n"
               : kind == "cosine_restarts"  ? "first_decay_steps = 10\n"
               : kind == "cosine"           ? ""
               : kind == "inverse_time"     ? "decay_steps = 10\ndecay_rate = 0.5\n"
                                            : "decay_steps = 10\n"),
          "m.toml");
      CHECK(t.train.optimizer.schedule.kind == kind);
    }
    CHECK(canonical_layer_type("MaxPool2D") == "MaxPooling2D");
    CHECK(canonical_layer_type("GlobalAvgPool1D") == "GlobalAveragePooling1D");
    CHECK(canonical_layer_type("Convolution3DTranspose") == "Conv3DTranspose");
    CHECK(canonical_layer_type("SeparableConvolution2D") == "SeparableConv2D");
    CHECK(canonical_layer_type("Dense") == "Dense");
    CHECK(canonical_layer_type("MaxPool4D") == "MaxPool4D");
  }

  TEST_CASE("generated layer names skip the names given") {
    const ModelSpec s = parse_model_spec(
        "format_version = 1\n[model]\ninput = { shape = [8], dtype = \"int64\" }\n"
        "[[model.layers]]\ntype = \"Embedding\"\n"
        "[[model.layers]]\ntype = \"LSTM\"\n"
        "[[model.layers]]\ntype = \"Dense\"\n"
        "[[model.layers]]\ntype = \"Dense\"\nname = \"dense_1\"\n"
        "[[model.layers]]\ntype = \"Dense\"\n"
        "[[model.layers]]\ntype = \"BatchNormalization\"\n"
        "[[model.layers]]\ntype = \"GlobalAveragePooling2D\"\n"
        "[[model.layers]]\ntype = \"ReLU\"\n",
        "m.toml");
    CHECK(s.model.input.dtype == "int64");
    std::vector<std::string> names;
    for (const auto& l : s.model.layers) names.push_back(l.name);
    CHECK(names == std::vector<std::string>{"embedding", "lstm", "dense", "dense_1", "dense_2",
                                            "batch_normalization", "global_average_pooling2d", "re_lu"});
  }

  TEST_CASE("TOML syntax errors carry toml++'s position and description") {
    Failure f = failure("format_version = 1\n[model]\ninput = [1, 2\nx = 3\n");
    CHECK(f.where == "spec.toml:4:1");
    CHECK(f.what.find("array") != std::string::npos);
    f = failure("format_version = 1\nformat_version = 2\n");
    CHECK(f.where == "spec.toml:2:18");
    CHECK(f.what.find("redefine") != std::string::npos);
  }

  TEST_CASE("format_version is required and checked") {
    Failure f = failure("[model]\ninput = [4]\n");
    CHECK(f.where == "spec.toml");
    CHECK(f.what == "the spec has no format_version");
    CHECK(f.hint == "add `format_version = 1` as its first line");
    f = failure("\nformat_version = 2\n[model]\nfuture_key = 1\n");
    CHECK(f.where == "spec.toml:2:18");
    CHECK(f.what == "unsupported format_version 2");
    CHECK(f.hint == "this trainer reads format_version = 1");
    f = failure("format_version = \"1\"\n");
    CHECK(f.where == "spec.toml:1:18");
    CHECK(f.what == "format_version must be an integer, not a string (\"1\")");
  }

  TEST_CASE("unknown keys name their place and the nearest key") {
    Failure f = failure(kHead + "[train]\nloss = \"mse\"\n  epoch = 3\n");
    CHECK(f.where == "spec.toml:9:3");
    CHECK(f.what == "unknown key 'epoch' in [train]");
    CHECK(f.hint == "did you mean 'epochs'?");
    // A key in the wrong table: where it belongs.
    f = failure("format_version = 1\nepochs = 3\n[model]\ninput = [4]\n");
    CHECK(f.where == "spec.toml:2:1");
    CHECK(f.what == "unknown key 'epochs' at the top level");
    CHECK(f.hint == "'epochs' belongs in [train]");
    // Nothing near: the table's keys.
    f = failure(kHead + "[train]\nloss = \"mse\"\n[train.optimizer]\nzzz = 1\n");
    CHECK(f.where == "spec.toml:10:1");
    CHECK(f.what == "unknown key 'zzz' in [train.optimizer]");
    CHECK(f.hint.starts_with("[train.optimizer] takes: name, learning_rate, beta_1"));
    f = failure(kHead + "[data]\n[data.train]\nx = \"a.npy\"\nlabels = \"b.npy\"\n");
    CHECK(f.where == "spec.toml:10:1");
    CHECK(f.what == "unknown key 'labels' in [data.train]");
    f = failure("format_version = 1\n[model]\ninput = { shape = [4], dtyp = \"int32\" }\n");
    CHECK(f.where == "spec.toml:3:24");
    CHECK(f.what == "unknown key 'dtyp' in [model.input]");
    CHECK(f.hint == "did you mean 'dtype'?");
  }

  TEST_CASE("wrong types name the expected type, with a hint") {
    Failure f = failure(kHead + "[train]\nloss = \"mse\"\nepochs = \"10\"\n");
    CHECK(f.where == "spec.toml:9:10");
    CHECK(f.what == "train.epochs must be an integer, not a string (\"10\")");
    CHECK(f.hint == "write it without quotes: epochs = 10");
    f = failure(kHead + "[train]\nloss = \"mse\"\nepochs = 5.0\n");
    CHECK(f.where == "spec.toml:9:10");
    CHECK(f.what == "train.epochs must be an integer, not a float (5.0)");
    CHECK(f.hint == "write it without a decimal point: epochs = 5");
    f = failure(kHead + "[train]\nloss = \"mse\"\n[train.optimizer]\nlearning_rate = \"fast\"\n");
    CHECK(f.where == "spec.toml:10:17");
    CHECK(f.what == "train.optimizer.learning_rate must be a number, not a string (\"fast\")");
    f = failure(kHead + "[data]\nshuffle = 1\n[data.train]\nx = \"a.npy\"\n");
    CHECK(f.where == "spec.toml:8:11");
    CHECK(f.what == "data.shuffle must be a boolean (true or false), not an integer (1)");
    f = failure(kHead + "[data]\n[data.train]\nx = [\"a.npy\", 2]\n");
    CHECK(f.where == "spec.toml:9:15");
    CHECK(f.what == "data.train.x must hold strings, not an integer (2)");
    f = failure(kHead + "[train]\nloss = \"mse\"\noptimizer = 3\n");
    CHECK(f.where == "spec.toml:9:13");
    CHECK(f.what == "train.optimizer must be a table, not an integer (3)");
    f = failure("format_version = 1\n[model]\ninput = [28, 0]\n");
    CHECK(f.where == "spec.toml:3:14");
    CHECK(f.what == "model.input.shape must hold positive dimensions, not 0");
  }

  TEST_CASE("impossible values are errors at the value") {
    struct Case {
      std::string text, where, what, hint;
    };
    const std::string T = kHead + "[train]\n";  // line 7
    const Case cases[] = {
        {T + "loss = \"mse\"\nepochs = 0\n", "spec.toml:9:10", "train.epochs must be 1 or more, not 0", ""},
        {T + "loss = \"mse\"\nbatch_size = -1\n", "spec.toml:9:14",
         "train.batch_size must be from 1 to 2147483647 (as --batch-size takes it), not -1",
         "a batch larger than the data is one batch of every sample"},
        // The loader's batches-per-epoch would overflow.
        {T + "loss = \"mse\"\nbatch_size = 9223372036854775807\n", "spec.toml:9:14",
         "train.batch_size must be from 1 to 2147483647 (as --batch-size takes it), not 9223372036854775807",
         "a batch larger than the data is one batch of every sample"},
        {T + "loss = \"mse\"\n[train.optimizer]\nlearning_rate = 0\n", "spec.toml:10:17",
         "train.optimizer.learning_rate must be positive, not 0.0", ""},
        {T + "loss = \"mse\"\n[train.optimizer]\nbeta_2 = 1.5\n", "spec.toml:10:10",
         "train.optimizer.beta_2 must be in [0, 1), not 1.5", ""},
        {T + "loss = \"sparse_categorical_crossentropi\"\n", "spec.toml:8:8",
         "unknown loss 'sparse_categorical_crossentropi'", "did you mean 'sparse_categorical_crossentropy'?"},
        {T + "loss = { name = \"binary_crossentropy\", from_logits = true }\n", "spec.toml:8:8",
         "train.loss must be a string, not a table",
         "name the loss, and set its option beside it: loss = \"sparse_categorical_crossentropy\" and "
         "from_logits = true under [train]"},
        {T + "loss = \"focal\"\n", "spec.toml:8:8", "unknown loss 'focal'",
         "expected one of: sparse_categorical_crossentropy, categorical_crossentropy, binary_crossentropy, "
         "binary_focal_crossentropy, categorical_focal_crossentropy, mse, mae, mean_squared_error, "
         "mean_absolute_error, huber, log_cosh, poisson, kl_divergence, kld, "
         "hinge, squared_hinge, categorical_hinge, cosine_similarity, msle, mean_squared_logarithmic_error, "
         "mape, "
         "mean_absolute_percentage_error"},
        {T + "loss = \"mse\"\nmetrics = [\"accuracy\", \"acuracy\"]\n", "spec.toml:9:24",
         "unknown metric 'acuracy'", "did you mean 'accuracy'?"},
        {T + "loss = \"sparse_categorical_crossentropy\"\nmetrics = [\"accuracy\", \"auc\"]\n",
         "spec.toml:9:24",
         "metric 'auc' is a binary classification metric, and the loss is "
         "sparse_categorical_crossentropy",
         "it needs loss = \"binary_crossentropy\" or binary_focal_crossentropy (one probability per sample)"},
        {T + "loss = \"binary_crossentropy\"\nmetrics = [\"AUCC\"]\n", "spec.toml:9:12",
         "unknown metric 'AUCC'", "did you mean 'auc'?"},
        {T + "loss = \"binary_crossentropy\"\nmetrics = [\"top_k_accuracy\"]\n", "spec.toml:9:12",
         "metric 'top_k_accuracy' ranks classes, and binary_crossentropy's model has one output",
         "report accuracy, precision, recall, auc or pr_auc"},
        {T + "loss = \"sparse_categorical_crossentropy\"\nmetrics = [\"mean_absolute_error\"]\n",
         "spec.toml:9:12",
         "metric 'mae' compares outputs with labels of the same shape, and sparse_categorical_crossentropy's "
         "labels are class ids",
         "report accuracy, or use categorical_crossentropy with one-hot labels"},
        {T + "loss = \"mse\"\nmetrics = [\"mse\", \"mean_squared_error\"]\n", "spec.toml:9:19",
         "metric 'mse' is listed twice", ""},
        {T + "loss = \"mse\"\nmetrics = [\"loss\"]\n", "spec.toml:9:12", "'loss' is not a metric here",
         "the loss is always reported; leave it out of train.metrics"},
        {T + "loss = \"mse\"\noptimizer = \"adma\"\n", "spec.toml:9:13", "unknown optimizer 'adma'",
         "did you mean 'adam'?"},
        {T + "loss = \"mse\"\n[train.optimizer]\nname = \"adam\"\nmomentum = 0.9\n", "spec.toml:11:1",
         "train.optimizer.momentum does not apply to adam",
         "adam takes: learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, clipnorm, "
         "global_clipnorm, clipvalue, gradient_accumulation_steps, use_ema, ema_momentum, "
         "ema_overwrite_frequency"},
        {T + "loss = \"mse\"\n[train.optimizer.schedule]\nkind = \"cosin\"\n", "spec.toml:10:8",
         "unknown schedule kind 'cosin'", "did you mean 'cosine'?"},
        {T + "loss = \"mse\"\n[train.optimizer.schedule]\nkind = \"exponential\"\n", "spec.toml:9:1",
         "the exponential schedule needs decay_steps",
         "add decay_steps = <steps> to [train.optimizer.schedule]"},
        {T + "loss = \"mse\"\ntop_k = 3\n", "spec.toml:9:9",
         "train.top_k is set but train.metrics (or weighted_metrics) has no top_k_accuracy",
         "add \"top_k_accuracy\" to train.metrics, or leave out top_k"},
        {T + "loss = \"mse\"\n[train.early_stopping]\nmonitor = \"val_los\"\n", "spec.toml:10:11",
         "train.early_stopping.monitor 'val_los' is not a reported quantity", "did you mean 'val_loss'?"},
        {T + "loss = \"mse\"\n[train.early_stopping]\nmonitor = \"val_accuracy\"\n", "spec.toml:10:11",
         "train.early_stopping.monitor 'val_accuracy' is not a reported quantity",
         "add \"accuracy\" to train.metrics"},
        {T + "loss = \"mse\"\n[train.reduce_lr_on_plateau]\nfactor = 1.5\n", "spec.toml:10:10",
         "train.reduce_lr_on_plateau.factor must be in (0, 1), not 1.5",
         "the learning rate is multiplied by it: 0.1 or 0.5, say"},
        {T + "loss = \"mse\"\n[train.reduce_lr_on_plateau]\nmonitor = \"val_mae\"\n", "spec.toml:10:11",
         "train.reduce_lr_on_plateau.monitor 'val_mae' is not a reported quantity",
         "add \"mae\" to train.metrics"},
        {T + "loss = \"mse\"\n[train.reduce_lr_on_plateau]\npatience = 2\ncooldown = -1\n", "spec.toml:11:12",
         "train.reduce_lr_on_plateau.cooldown must be 0 or more, not -1", ""},
        {T + "loss = \"mse\"\n[train.reduce_lr_on_plateau]\nmin_lr = 1e-5\nmode = \"min\"\n", "", "", ""},
        {T + "loss = \"mse\"\n[train.optimizer]\nname = \"adagrad\"\ninitial_accumulator_value = -1\n",
         "spec.toml:11:29", "train.optimizer.initial_accumulator_value must be 0 or more, not -1.0", ""},
        {T + "loss = \"mse\"\n[train.optimizer]\ninitial_accumulator_value = 0.5\n", "spec.toml:10:1",
         "train.optimizer.initial_accumulator_value does not apply to adam",
         "adam takes: learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, clipnorm, "
         "global_clipnorm, clipvalue, gradient_accumulation_steps, use_ema, ema_momentum, "
         "ema_overwrite_frequency"},
        {T + "loss = \"mse\"\n[train.optimizer]\nclipnorm = 1.0\nclipvalue = 0.5\n", "spec.toml:11:13",
         "train.optimizer.clipnorm and train.optimizer.clipvalue are both set; gradients are clipped one way",
         "keep one: clipnorm (each gradient's norm), global_clipnorm (their norm together) or clipvalue "
         "(each "
         "element)"},
        {T + "epochs = 3\n", "spec.toml:7:1", "[train] has no loss",
         "e.g. loss = \"sparse_categorical_crossentropy\""},
        {kHead + "[data]\nvalidation_split = 1.0\n[data.train]\nx = \"a.npy\"\n", "spec.toml:8:20",
         "data.validation_split must be in [0, 1), not 1.0",
         "it is the fraction of the training samples held out, e.g. 0.1"},
        {kHead + "[data]\nmean = [0.1, 0.2]\n[data.train]\nx = \"a.npy\"\n", "spec.toml:8:8",
         "data.mean has 2 values but the input has 4 channels (the last dimension of 4)",
         "give one value, or one per channel"},
        {kHead + "[data]\n[data.train]\nformat = \"npx\"\nx = \"a.npy\"\n", "spec.toml:9:10",
         "unknown data format 'npx'", "did you mean 'npy'?"},
        {kHead + "[data]\n[data.train]\nx = \"a.npy\"\n[data.validation]\nx = \"b.npy\"\n[train]\nloss = "
                 "\"mse\"\n[train.early_stopping]\n",
         "", "", ""},  // a validation set: val_loss can be monitored
        {kHead + "[data]\n[data.train]\nx = \"a.npy\"\n[train]\nloss = \"mse\"\n[train.early_stopping]\n",
         "spec.toml:12:1", "early stopping monitors 'val_loss' but [data] has no validation set",
         "add [data.validation] or data.validation_split, or monitor 'loss'"},
        {kHead + "[data]\ntest = { x = \"t.npy\" }\n", "spec.toml:7:1", "[data] has no [data.train]",
         "add a [data.train] table with x = \"...\""},
    };
    for (const Case& c : cases) {
      CAPTURE(c.text);
      if (c.where.empty()) {
        CHECK_NOTHROW(parse_model_spec(c.text, "spec.toml"));
        continue;
      }
      const Failure f = failure(c.text);
      CHECK(f.where == c.where);
      CHECK(f.what == c.what);
      if (!c.hint.empty()) CHECK(f.hint == c.hint);
    }
  }

  TEST_CASE("layer tables: type, name and inputs are checked, other keys are kept") {
    const std::string M = "format_version = 1\n[model]\ninput = [4]\n";  // layers from line 4
    Failure f = failure(M + "[[model.layers]]\nunits = 3\n");
    CHECK(f.where == "spec.toml:4:1");
    CHECK(f.what == "model.layers[0] has no type");
    f = failure(M + "[[model.layers]]\ntype = 3\n");
    CHECK(f.where == "spec.toml:5:8");
    CHECK(f.what == "model.layers[0].type must be a string, not an integer (3)");
    f = failure(M +
                "[[model.layers]]\ntype = \"Dense\"\nname = \"a\"\n[[model.layers]]\ntype = \"Dense\"\n"
                "name = \"a\"\n");
    CHECK(f.where == "spec.toml:9:8");
    CHECK(f.what == "layer name 'a' is used twice");
    CHECK(f.hint == "model.layers[0] at spec.toml:6:8 has it too; names must be unique");
    f = failure(M +
                "[[model.layers]]\ntype = \"Dense\"\n[[model.layers]]\ntype = \"Add\"\n"
                "inputs = [\"input\", \"dens\"]\n");
    CHECK(f.where == "spec.toml:8:20");
    CHECK(f.what == "layer 'add' takes 'dens', which is not a layer before it");
    CHECK(f.hint == "did you mean 'dense'?");
    f = failure(
        M + "[[model.layers]]\ntype = \"Add\"\ninputs = [\"dense\"]\n[[model.layers]]\ntype = \"Dense\"\n");
    CHECK(f.where == "spec.toml:6:11");
    CHECK(f.what == "layer 'add' takes 'dense', which comes later in model.layers");
    f = failure(M + "[[model.layers]]\ntype = \"Add\"\ninputs = [1]\n");
    CHECK(f.where == "spec.toml:6:11");
    CHECK(f.what == "model.layers[0].inputs must hold layer names, not an integer (1)");
    f = failure(M + "[[model.layers]]\ntype = \"Dense\"\nkernel_initializer = { class_name = \"Ones\" }\n");
    CHECK(f.where == "spec.toml:6:22");
    CHECK(f.what ==
          "model.layers[0].kernel_initializer must be a number, a boolean, a string or an array, not a "
          "table");
    f = failure(M + "[model.layers]\ntype = \"Dense\"\n");
    CHECK(f.where == "spec.toml:4:1");
    CHECK(f.hint == "write each layer as its own [[model.layers]] table (double brackets)");
    // Unknown layer arguments are models/'s to judge: they are kept with their position.
    const ModelSpec s = parse_model_spec(M + "[[model.layers]]\ntype = \"Dense\"\nunitz = 3\n", "spec.toml");
    CHECK(arg<int64_t>(s.model.layers[0], "unitz") == 3);
    CHECK(s.model.layers[0].args.at("unitz").pos.str() == "spec.toml:6:9");
    CHECK(s.model.layers[0].args.at("unitz").where_key().str() == "spec.toml:6:1");
    // Keras's nested pairs read as the flat list.
    const ModelSpec pad = parse_model_spec(
        M + "[[model.layers]]\ntype = \"ZeroPadding2D\"\npadding = [[1, 2], [3, 4]]\n", "spec.toml");
    CHECK(arg<std::vector<int64_t>>(pad.model.layers[0], "padding") == std::vector<int64_t>{1, 2, 3, 4});
    f = failure(M + "[[model.layers]]\ntype = \"ZeroPadding2D\"\npadding = [[1, 2], [3]]\n");
    CHECK(f.where == "spec.toml:6:11");
    CHECK(f.what == "model.layers[0].padding must be an array of numbers or of strings");
  }

  TEST_CASE("--set overrides existing keys and creates omitted ones") {
    const ModelSpec s =
        parse_model_spec(kFullSpec, "m.toml",
                         {"train.epochs=1", "train.optimizer.learning_rate=3e-4", "data.train.limit=100",
                          "data.test.limit = 7", "train.loss=mse", "model.layers.6.units=5",
                          "model.layers.0.kernel_initializer=he_normal", "train.optimizer.weight_decay=1",
                          "data.train.x=[\"a.npy\", \"b.npy\"]"});
    CHECK(s.train.epochs == 1);
    CHECK(s.train.optimizer.learning_rate == 3e-4);
    CHECK(s.data.train->limit == 100);
    CHECK(s.data.test->limit == 7);  // created: the file has no data.test.limit
    CHECK(s.train.loss == "mse");    // a bare string
    CHECK(s.train.loss_pos.str() == "--set train.loss=mse");
    CHECK(arg<int64_t>(s.model.layers[6], "units") == 5);
    CHECK(s.model.layers[6].args.at("units").pos.str() == "--set model.layers.6.units=5");
    CHECK(arg<std::string>(s.model.layers[0], "kernel_initializer") == "he_normal");
    CHECK(s.train.optimizer.weight_decay == 1.0);
    CHECK(s.data.train->x == std::vector<std::string>{"a.npy", "b.npy"});
    // Untouched values keep their file positions.
    CHECK(s.train.optimizer.schedule.pos.str() == "m.toml:76:1");

    // A table the file omits is created, positioned at the --set.
    const ModelSpec t =
        parse_model_spec(kHead + "[train]\nloss = \"mse\"\n", "m.toml",
                         {"train.optimizer.schedule.kind=step", "train.optimizer.schedule.step_size=10",
                          "model.input.dtype=int32"});
    CHECK(t.train.optimizer.schedule.kind == "step");
    CHECK(t.train.optimizer.schedule.step_size == 10);
    CHECK(t.train.optimizer.schedule.pos.str() == "--set train.optimizer.schedule.kind=step");
    CHECK(t.model.input.dtype == "int32");  // reached through the `input = [4]` shorthand
    CHECK(t.model.input.shape == std::vector<int64_t>{4});
  }

  TEST_CASE("--set errors name the override") {
    Failure f = failure(kHead + "[train]\nloss = \"mse\"\n", {"train.epoch=3"});
    CHECK(f.where == "--set train.epoch=3");
    CHECK(f.what == "unknown key 'train.epoch'");
    CHECK(f.hint == "did you mean 'train.epochs'?");
    f = failure(kHead + "[train]\nloss = \"mse\"\n", {"train.optimizer.lerning_rate=0.1"});
    CHECK(f.where == "--set train.optimizer.lerning_rate=0.1");
    CHECK(f.what == "unknown key 'train.optimizer.lerning_rate'");
    CHECK(f.hint == "did you mean 'train.optimizer.learning_rate'?");
    f = failure(kHead + "[train]\nloss = \"mse\"\n", {"trian.epochs=3"});
    CHECK(f.where == "--set trian.epochs=3");
    CHECK(f.what == "unknown key 'trian'");
    CHECK(f.hint == "did you mean 'train'?");
    // Validated like the file.
    f = failure(kHead + "[train]\nloss = \"mse\"\n", {"train.epochs=0"});
    CHECK(f.where == "--set train.epochs=0");
    CHECK(f.what == "train.epochs must be 1 or more, not 0");
    f = failure(kHead + "[train]\nloss = \"mse\"\n", {"train.epochs=three"});
    CHECK(f.where == "--set train.epochs=three");
    CHECK(f.what == "train.epochs must be an integer, not a string (\"three\")");
    f = failure(kHead, {"train.epochs"});
    CHECK(f.where == "--set train.epochs");
    CHECK(f.what == "--set expects KEY=VALUE");
    f = failure(kHead, {"model.layers.3.units=4"});
    CHECK(f.where == "--set model.layers.3.units=4");
    CHECK(
        f.what ==
        "cannot set 'model.layers.3.units': 'model.layers' is an array and '3' is not an index from 0 to 0");
    f = failure(kHead + "[train]\nloss = \"mse\"\n", {"train.loss.x=1"});
    CHECK(f.what == "cannot set 'train.loss.x': 'train.loss' is a string (\"mse\"), not a table");
  }

  TEST_CASE("to_toml reads back as the same settings") {
    const ModelSpec a = parse_model_spec(kFullSpec, "specs/cnn.toml");
    const std::string text = to_toml(a);
    CAPTURE(text);
    const ModelSpec b = parse_model_spec(text, "specs/cnn.toml");
    CHECK(same_settings(a, b));
    CHECK(!(a == b));  // positions differ
    CHECK(b.model.layers[3].inputs == a.model.layers[3].inputs);
    CHECK(text.starts_with(
        "format_version = 1\n\n[model]\ninput = { shape = [28, 28, 1], dtype = \"float32\" }\n"));
    // A generated name is left out, to be generated again; a given one is written.
    CHECK(text.find("\n[[model.layers]]\ntype = \"Dropout\"\nnoise_shape = [1.0, 2.5]\nrate = 0.25\n") !=
          std::string::npos);
    CHECK(b.model.layers[4].name == a.model.layers[4].name);
    // A text that writes a generated name (as checkpoints did) has the same settings; another name does not.
    CHECK(same_settings(parse_model_spec(kHead, "spec.toml"),
                        parse_model_spec(kHead + "name = \"dense\"\n", "spec.toml")));
    CHECK_FALSE(same_settings(parse_model_spec(kHead, "spec.toml"),
                              parse_model_spec(kHead + "name = \"dense_9\"\n", "spec.toml")));
    for (const LayerSpec& l : a.model.layers)
      CHECK((text.find(fmt::format("name = \"{}\"", l.name)) != std::string::npos) == l.named);
    CHECK(text.find("scale = 0.00392156862745098\n") != std::string::npos);
    CHECK(
        text.find("[train.optimizer]\nname = \"sgd\"\nlearning_rate = 0.05\nmomentum = 0.9\nnesterov = true\n"
                  "weight_decay = 0.0\nclipnorm = 1.0\n") != std::string::npos);
    // Every setting the reader understands survives, including ones a second spec sets differently.
    const ModelSpec c = parse_model_spec(
        kHead +
            "[data]\nshuffle = false\n[data.train]\nformat = \"npz\"\nx = \"a.npz\"\n"
            "x_key = \"images\"\n[data.validation]\nformat = \"csv\"\nx = \"v.csv\"\n"
            "label_column = \"label\"\n"
            "[train]\nloss = \"binary_crossentropy\"\nfrom_logits = true\nclass_weight = { \"1\" = 3 }\n"
            "label_smoothing = 0.1\n"
            "[train.optimizer]\nname = \"rmsprop\"\nrho = 0.8\nmomentum = 0.5\n"
            "[train.optimizer.schedule]\nkind = \"exponential\"\ndecay_steps = 7\n"
            "decay_rate = 0.5\nstaircase = true\n"
            "[train.early_stopping]\nmode = \"min\"\nmin_delta = 0.01\n"
            "[train.reduce_lr_on_plateau]\nmonitor = \"loss\"\nfactor = 0.2\npatience = 3\n"
            "mode = \"min\"\nmin_delta = 0.0\ncooldown = 2\nmin_lr = 1e-6\n"
            "[parallel]\nshard_optimizer = true\nsync_batch_norm = true\n",
        "c.toml");
    const ModelSpec d = parse_model_spec(to_toml(c), "c.toml");
    CHECK(same_settings(c, d));
    CHECK(d.train.class_weight == std::vector<double>{1.0, 3.0});
    CHECK(d.train.class_weight_by_id);  // still keyed: the classes past 1 weigh 1
    CHECK(!a.train.class_weight_by_id);
    CHECK(d.train.label_smoothing == 0.1);
    CHECK(d.train.reduce_lr.enabled);
    CHECK(d.train.reduce_lr.cooldown == 2);
    CHECK(d.train.reduce_lr.min_lr == 1e-6);
    CHECK(d.data.validation->label_column == "label");
    CHECK(d.train.optimizer.schedule.staircase);
    CHECK(d.parallel.shard_optimizer);
    CHECK(d.parallel.sync_batch_norm);
    CHECK(!same_settings(a, c));
    ModelSpec e = b;
    e.model.layers[0].args["filters"].value = int64_t{9};
    CHECK(!same_settings(a, e));
  }

  TEST_CASE("a class keyed twice in class_weight is an error") {
    const std::string train = "[train]\nloss = \"sparse_categorical_crossentropy\"\n";
    Failure f = failure(kHead + train + "class_weight = { \"1\" = 2, \"01\" = 3 }\n");
    CHECK(f.what == "train.class_weight keys class 1 twice, as '01' and '1'");
    f = failure(kHead + train + "class_weight = { \" 1\" = 2 }\n");
    CHECK(f.what == "train.class_weight has key ' 1', which is not a class id");
  }

  TEST_CASE("adamax, nadam, lion and adadelta take Keras's defaults and round-trip") {
    const std::string train = "[train]\nloss = \"mse\"\n[train.optimizer]\n";
    for (const char* name : {"adamax", "nadam", "lion", "adadelta"}) {
      CAPTURE(name);
      const ModelSpec a = parse_model_spec(kHead + train + "name = \"" + name + "\"\n", "a.toml");
      CHECK(a.train.optimizer.beta_2 == (std::string(name) == "lion" ? 0.99 : 0.999));
      CHECK(a.train.optimizer.rho == (std::string(name) == "adadelta" ? 0.95 : 0.9));
      CHECK(same_settings(a, parse_model_spec(to_toml(a), "a.toml")));
    }
    const Failure f = failure(kHead + train + "name = \"lion\"\nepsilon = 1e-6\n");
    CHECK(f.where == "spec.toml:11:1");
    CHECK(f.what == "train.optimizer.epsilon does not apply to lion");
  }

  TEST_CASE("a cosine's warmup_target is Keras's: read, round-tripped, and refused elsewhere") {
    const std::string train =
        "[train]\nloss = \"mse\"\n[train.optimizer]\nlearning_rate = 1e-4\n[train.optimizer.schedule]\n";
    const ModelSpec a = parse_model_spec(
        kHead + train + "kind = \"cosine\"\nwarmup_steps = 10\nwarmup_target = 1e-3\n", "a.toml");
    REQUIRE(a.train.optimizer.schedule.warmup_target);
    CHECK(*a.train.optimizer.schedule.warmup_target == 1e-3);
    const ModelSpec back = parse_model_spec(to_toml(a), "a.toml");
    CHECK(same_settings(a, back));
    CHECK(back.train.optimizer.schedule.warmup_target == a.train.optimizer.schedule.warmup_target);
    CHECK_FALSE(parse_model_spec(kHead + train + "kind = \"cosine\"\n", "a.toml")
                    .train.optimizer.schedule.warmup_target);
    Failure f = failure(kHead + train + "kind = \"cosine\"\nwarmup_target = 0\n");
    CHECK(f.where == "spec.toml:13:17");
    CHECK(f.what == "train.optimizer.schedule.warmup_target must be a positive rate, not 0.0");
    f = failure(kHead + train + "kind = \"exponential\"\ndecay_steps = 5\nwarmup_target = 1e-3\n");
    CHECK(f.what.find("warmup_target") != std::string::npos);
  }

  TEST_CASE("amsgrad, centered and SGD's learning rate are Keras's, and round-trip") {
    const std::string train = "[train]\nloss = \"mse\"\n[train.optimizer]\n";
    const ModelSpec sgd = parse_model_spec(kHead + train + "name = \"sgd\"\n", "a.toml");
    CHECK(sgd.train.optimizer.learning_rate == 0.01);  // Keras's SGD default; the others take 0.001
    CHECK(parse_model_spec(kHead + "[train]\nloss = \"mse\"\noptimizer = \"sgd\"\n", "a.toml")
              .train.optimizer.learning_rate == 0.01);
    CHECK(parse_model_spec(kHead + train + "name = \"rmsprop\"\n", "a.toml").train.optimizer.learning_rate ==
          0.001);
    for (const char* text : {"name = \"adam\"\namsgrad = true\n", "name = \"adamw\"\namsgrad = true\n",
                             "name = \"rmsprop\"\ncentered = true\nmomentum = 0.5\n"}) {
      CAPTURE(text);
      const ModelSpec a = parse_model_spec(kHead + train + text, "a.toml");
      CHECK(a.train.optimizer.amsgrad == (a.train.optimizer.name != "rmsprop"));
      CHECK(a.train.optimizer.centered == (a.train.optimizer.name == "rmsprop"));
      CHECK(same_settings(a, parse_model_spec(to_toml(a), "a.toml")));
    }
    // Written only when set: a spec without them reads in versions that lack them.
    const std::string plain = to_toml(parse_model_spec(kHead + train + "name = \"rmsprop\"\n", "a.toml")) +
                              to_toml(parse_model_spec(kHead + train + "name = \"adam\"\n", "a.toml"));
    CHECK(plain.find("amsgrad") == std::string::npos);
    CHECK(plain.find("centered") == std::string::npos);
    Failure f = failure(kHead + train + "name = \"nadam\"\namsgrad = true\n");
    CHECK(f.where == "spec.toml:11:1");
    CHECK(f.what == "train.optimizer.amsgrad does not apply to nadam");
    f = failure(kHead + train + "name = \"adam\"\ncentered = true\n");
    CHECK(f.what == "train.optimizer.centered does not apply to adam");
    f = failure(kHead + train + "name = \"rmsprop\"\ncentered = 1\n");
    CHECK(f.where == "spec.toml:11:12");
  }

  TEST_CASE("Keras's class names of optimizers, losses and metrics read as their names") {
    const ModelSpec a =
        parse_model_spec(kHead +
                             "[train]\nloss = \"BinaryCrossentropy\"\n"
                             "metrics = [\"AUC\", \"BinaryAccuracy\", \"F1Score\", \"Precision\"]\n"
                             "optimizer = \"RMSprop\"\n",
                         "a.toml");
    CHECK(a.train.loss == "binary_crossentropy");
    CHECK(a.train.metrics == std::vector<std::string>{"auc", "binary_accuracy", "f1_score", "precision"});
    CHECK(a.train.optimizer.name == "rmsprop");
    for (const auto& [given, name] : std::vector<std::pair<std::string, std::string>>{
             {"SparseCategoricalCrossentropy", "sparse_categorical_crossentropy"},
             {"KLDivergence", "kl_divergence"},
             {"MeanSquaredError", "mse"},
             {"Huber", "huber"}}) {
      CAPTURE(given);
      CHECK(parse_model_spec(kHead + "[train]\nloss = \"" + given + "\"\n", "a.toml").train.loss == name);
    }
    CHECK(parse_model_spec(kHead + "[train]\nloss = \"mse\"\noptimizer = \"SGD\"\n", "a.toml")
              .train.optimizer.name == "sgd");
    CHECK(parse_model_spec(kHead + "[train]\nloss = \"SparseCategoricalCrossentropy\"\n"
                                   "metrics = [\"SparseTopKCategoricalAccuracy\"]\n",
                           "a.toml")
              .train.metrics == std::vector<std::string>{"sparse_top_k_categorical_accuracy"});
    Failure f = failure(kHead + "[train]\nloss = \"MeanSquareError\"\n");
    CHECK(f.what == "unknown loss 'MeanSquareError'");
    // Keras's Accuracy class is an exact match of values, not the loss's accuracy: not taken for it.
    f = failure(kHead + "[train]\nloss = \"mse\"\nmetrics = [\"Accuracy\"]\n");
    CHECK(f.what == "unknown metric 'Accuracy'");
  }

  TEST_CASE("gradient accumulation and moving averages are read, checked and written back") {
    const std::string opt = "[train]\nloss = \"mse\"\n[train.optimizer]\nname = \"adamw\"\n";
    const ModelSpec a = parse_model_spec(kHead + opt +
                                             "gradient_accumulation_steps = 4\nuse_ema = true\nema_momentum "
                                             "= 0.9\nema_overwrite_frequency = 5\n",
                                         "a.toml");
    CHECK(a.train.optimizer.gradient_accumulation_steps == 4);
    CHECK(a.train.optimizer.use_ema);
    CHECK(a.train.optimizer.ema_momentum == 0.9);
    CHECK(a.train.optimizer.ema_overwrite_frequency == 5);
    CHECK(same_settings(a, parse_model_spec(to_toml(a), "a.toml")));
    const ModelSpec plain = parse_model_spec(kHead + opt, "p.toml");
    CHECK(to_toml(plain).find("ema") == std::string::npos);  // written only when set
    CHECK(to_toml(plain).find("gradient_accumulation") == std::string::npos);
    Failure f = failure(kHead + opt + "ema_overwrite_frequency = 2\n");
    CHECK(f.what == "train.optimizer.ema_overwrite_frequency applies with use_ema = true");
    f = failure(kHead +
                "[train]\nloss = \"mse\"\nprecision = "
                "\"fp16\"\n[train.optimizer]\ngradient_accumulation_steps = 2\n");
    CHECK(f.what == "train.precision fp16 (its loss scaling) with gradient accumulation is not supported");
    f = failure(kHead + opt + "gradient_accumulation_steps = 0\n");
    CHECK(f.what ==
          "train.optimizer.gradient_accumulation_steps must be from 1 (an update every step) to 1000000, not "
          "0");
  }

  TEST_CASE("a shared layer takes its layer's type and arguments, and round-trips") {
    const std::string two =
        "format_version = 1\n[[model.inputs]]\nname = \"a\"\nshape = [4]\n[[model.inputs]]\nname = \"b\"\n"
        "shape = [4]\n";
    const std::string dense = "[[model.layers]]\ntype = \"Dense\"\ninputs = [\"a\"]\nunits = 3\n";
    const std::string add = "[[model.layers]]\ntype = \"Add\"\ninputs = [\"dense\", \"dense_1\"]\n";
    const ModelSpec s = parse_model_spec(
        two + dense + "[[model.layers]]\nshares = \"dense\"\ninputs = [\"b\"]\n" + add, "s.toml");
    REQUIRE(s.model.layers.size() == 3);
    const LayerSpec& shared = s.model.layers[1];
    CHECK(shared.type == "Dense");
    CHECK(shared.name == "dense_1");  // named as its type's next layer
    CHECK(shared.shares == "dense");
    CHECK(std::get<int64_t>(shared.args.at("units").value) == 3);
    const std::string written = to_toml(s);
    CHECK(written.find("shares = \"dense\"") != std::string::npos);
    CHECK(same_settings(s, parse_model_spec(written, "s.toml")));
    // A layer sharing a shared layer shares the layer that holds the weights.
    const ModelSpec chain = parse_model_spec(
        two + dense + "[[model.layers]]\nname = \"x\"\nshares = \"dense\"\ninputs = [\"b\"]\n" +
            "[[model.layers]]\nname = \"y\"\nshares = \"x\"\ninputs = [\"a\"]\n" +
            "[[model.layers]]\ntype = \"Add\"\ninputs = [\"dense\", \"x\", \"y\"]\n",
        "c.toml");
    CHECK(chain.model.layers[2].shares == "dense");

    Failure f =
        failure(two + dense + "[[model.layers]]\nshares = \"dense\"\nunits = 4\ninputs = [\"b\"]\n" + add);
    CHECK(f.what ==
          "model.layers[1] shares the layer 'dense', whose arguments it takes: 'units' cannot be set here");
    CHECK(f.where == "spec.toml:14:1");
    f = failure(two + dense + "[[model.layers]]\nshares = \"dens\"\ninputs = [\"b\"]\n" + add);
    CHECK(f.what == "model.layers[1] shares 'dens', which is not a layer before it");
    CHECK(f.hint == "did you mean 'dense'?");
    f = failure(two + "[[model.layers]]\nname = \"e\"\nshares = \"dense\"\ninputs = [\"b\"]\n" + dense +
                "[[model.layers]]\ntype = \"Add\"\ninputs = [\"dense\", \"e\"]\n");
    CHECK(f.what == "layer 'e' shares 'dense', which is not a layer before it");
    f = failure(two + dense + "[[model.layers]]\ntype = \"Conv1D\"\nshares = \"dense\"\ninputs = [\"b\"]\n" +
                add);
    CHECK(f.what == "model.layers[1] is a Conv1D, and the layer 'dense' it shares is a Dense");
    f = failure(two + dense + "[[model.layers]]\nshares = \"\"\ninputs = [\"b\"]\n" + add);
    CHECK(f.what == "model.layers[1].shares is empty");
    f = failure(two + "[[model.layers]]\nshares = \"dense\"\ninputs = [\"b\"]\n" + dense + add);
    CHECK(f.what == "model.layers[0] shares 'dense', which is not a layer before it");
    CHECK(f.hint == "a layer shares a layer listed before it");
    f = failure(two + dense + "[[model.layers]]\nshares = 3\n" + add);
    CHECK(f.what == "model.layers[1].shares must be a layer name, not an integer (3)");
  }

  TEST_CASE("Keras's calls of loss and metric classes read their arguments, and round-trip") {
    const ModelSpec a = parse_model_spec(kHead +
                                             "[train]\nloss = \"keras.losses.BinaryFocalCrossentropy("
                                             "apply_class_balancing=True, alpha=0.4, gamma=3, "
                                             "from_logits=True, label_smoothing=0.1)\"\n",
                                         "a.toml");
    CHECK(a.train.loss == "binary_focal_crossentropy");
    CHECK(a.train.loss_options.apply_class_balancing);
    CHECK(a.train.loss_options.alpha == 0.4);
    CHECK(a.train.loss_options.gamma == 3);
    CHECK(a.train.from_logits);
    CHECK(a.train.label_smoothing == 0.1);
    const std::string written = to_toml(a);
    CHECK(written.find(
              "loss = \"binary_focal_crossentropy(apply_class_balancing=True, alpha=0.4, gamma=3.0)\"") !=
          std::string::npos);
    CHECK(same_settings(a, parse_model_spec(written, "a.toml")));
    const ModelSpec h = parse_model_spec(kHead + "[train]\nloss = \" Huber( delta = 2.5 , ) \"\n", "h.toml");
    CHECK(h.train.loss == "huber");
    CHECK(h.train.loss_options.delta == 2.5);
    CHECK(same_settings(h, parse_model_spec(to_toml(h), "h.toml")));
    // Keras's defaults are written as the name alone.
    const ModelSpec d = parse_model_spec(kHead + "[train]\nloss = \"Huber(delta=1.0)\"\n", "d.toml");
    CHECK(to_toml(d).find("loss = \"huber\"\n") != std::string::npos);

    // A top-k metric's k is the run's top_k.
    const std::string sparse = "[train]\nloss = \"sparse_categorical_crossentropy\"\n";
    const ModelSpec k = parse_model_spec(
        kHead + sparse + "metrics = [\"SparseTopKCategoricalAccuracy(k=3)\", \"accuracy\"]\n", "k.toml");
    CHECK(k.train.metrics == std::vector<std::string>{"sparse_top_k_categorical_accuracy", "accuracy"});
    CHECK(k.train.top_k == 3);
    CHECK(same_settings(k, parse_model_spec(to_toml(k), "k.toml")));
    CHECK(parse_model_spec(kHead + sparse + "metrics = \"top_k_accuracy(k=3)\"\ntop_k = 3\n", "k.toml")
              .train.top_k == 3);

    Failure f = failure(kHead + sparse + "metrics = \"top_k_accuracy(k=3)\"\ntop_k = 4\n");
    CHECK(f.what == "train.top_k is 4, and a metric's call says k=3");
    f = failure(kHead + sparse +
                "weighted_metrics = [\"top_k_accuracy(k=2)\"]\nmetrics = [\"top_k_accuracy(k=3)\"]\n");
    CHECK(f.what == "the top-k metrics' calls say k=3 and k=2");
    // MeanIoU's num_classes is kept for the run, and written back in its call.
    const ModelSpec iou = parse_model_spec(
        kHead + sparse + "metrics = [\"MeanIoU(num_classes=2, sparse_y_true=True)\"]\n", "i.toml");
    CHECK(iou.train.metrics == std::vector<std::string>{"mean_iou"});
    CHECK(iou.train.metric_options.iou_classes == 2);
    CHECK(to_toml(iou).find("\"mean_iou(num_classes=2)\"") != std::string::npos);
    CHECK(same_settings(iou, parse_model_spec(to_toml(iou), "i.toml")));
    f = failure(kHead + sparse + "metrics = [\"MeanIoU(num_classes=2, sparse_y_true=False)\"]\n");
    CHECK(f.what ==
          "metric 'MeanIoU(num_classes=2, sparse_y_true=False)': sparse_y_true = False is not supported "
          "by trainer");
    // Each output's own num_classes.
    const ModelSpec two = parse_model_spec(
        "format_version = 1\n[model]\ninput = [4]\noutputs = [\"a\", \"b\"]\n[[model.layers]]\ntype = "
        "\"Dense\"\nname = \"a\"\nunits = 3\n[[model.layers]]\ntype = \"Dense\"\nname = \"b\"\ninputs = "
        "[\"input\"]\nunits = 4\n[train]\nloss = \"sparse_categorical_crossentropy\"\nmetrics = { a = "
        "[\"MeanIoU(num_classes=3)\"], b = [\"MeanIoU(num_classes=4)\"] }\n",
        "two.toml");
    REQUIRE(two.train.outputs.size() == 2);
    CHECK(two.train.outputs[0].metric_options.iou_classes == 3);
    CHECK(two.train.outputs[1].metric_options.iou_classes == 4);
    CHECK(same_settings(two, parse_model_spec(to_toml(two), "two.toml")));
    // A cross-entropy metric's call says from_logits as the loss does.
    CHECK(parse_model_spec(kHead + "[train]\nloss = \"binary_crossentropy\"\nfrom_logits = true\nmetrics = "
                                   "[\"BinaryCrossentropy(from_logits=True)\"]\n",
                           "l.toml")
              .train.metrics == std::vector<std::string>{"binary_crossentropy"});
    f = failure(
        kHead +
        "[train]\nloss = \"binary_crossentropy\"\nmetrics = [\"BinaryCrossentropy(from_logits=True)\"]\n");
    CHECK(f.what ==
          "metric 'BinaryCrossentropy(from_logits=True)': from_logits = True is not supported by trainer");
    CHECK(f.hint == "binary_crossentropy takes: from_logits=False");
    // Metrics that read probabilities do not take logits.
    f = failure(kHead +
                "[train]\nloss = \"binary_crossentropy\"\nfrom_logits = true\nmetrics = [\"poisson\"]\n");
    CHECK(f.what ==
          "metric 'poisson' reads probabilities, and from_logits = true says the outputs are logits");
    // AUC's PR curve is the metric pr_auc.
    CHECK(parse_model_spec(
              kHead + "[train]\nloss = \"binary_crossentropy\"\nmetrics = [\"AUC(curve='PR')\", \"auc\"]\n",
              "p.toml")
              .train.metrics == std::vector<std::string>{"pr_auc", "auc"});
    f = failure(kHead + "[train]\nloss = \"binary_crossentropy\"\nmetrics = [\"AUC(num_thresholds=100)\"]\n");
    CHECK(f.what == "metric 'AUC(num_thresholds=100)': num_thresholds = 100 is not supported by trainer");
    CHECK(f.where == "spec.toml:9:12");
    f = failure(kHead + "[train]\nloss = \"binary_crossentropy\"\nmetrics = [\"Precision(name='p')\"]\n");
    CHECK(f.what == "metric 'Precision(name='p')': another name for it is not supported by trainer");
    CHECK(f.hint ==
          "it is reported as precision; precision takes: thresholds=0.5, top_k=None, class_id=None");
    // Precision and Recall of a categorical output: class_id and top_k, one of each per output, written back.
    const std::string categorical = kHead + "[train]\nloss = \"sparse_categorical_crossentropy\"\n";
    ModelSpec pr = parse_model_spec(
        categorical + "metrics = [\"Precision(top_k=2, class_id=1)\", \"Recall(None, 2, 1)\"]\n", "p.toml");
    CHECK(pr.train.metrics == std::vector<std::string>{"precision", "recall"});
    CHECK(pr.train.metric_options.class_id == std::optional<int64_t>(1));
    CHECK(pr.train.metric_options.top_k == std::optional<int64_t>(2));
    const std::string pr_text = to_toml(pr);
    CHECK(pr_text.find("\"precision(top_k=2, class_id=1)\", \"recall(top_k=2, class_id=1)\"") !=
          std::string::npos);
    CHECK(parse_model_spec(pr_text, "again.toml").train.metric_options == pr.train.metric_options);
    f = failure(categorical + "metrics = [\"Precision(class_id=1)\", \"Recall(class_id=2)\"]\n");
    CHECK(f.what == "the Precision and Recall calls of one output say class_id=1 and class_id=2");
    f = failure(categorical + "metrics = [\"Precision(top_k=2)\", \"recall\"]\n");
    CHECK(f.what == "one Precision or Recall of this output says top_k=2, and another says nothing");
    f = failure(categorical + "metrics = [\"Precision(class_id=-1)\"]\n");
    CHECK(f.what == "metric 'Precision(class_id=-1)': class_id = -1 is not a valid value");
    f = failure(categorical + "metrics = [\"Recall(top_k=0)\"]\n");
    CHECK(f.hint == "top_k is a whole number, 1 or more: the classes predicted at each position");
    f = failure(kHead + "[train]\nloss = \"binary_crossentropy\"\nmetrics = [\"Precision(class_id=0)\"]\n");
    CHECK(f.what ==
          "Precision's and Recall's class_id pick among the classes of a categorical output, and the "
          "loss is binary_crossentropy");
    f = failure(kHead + "[train]\nloss = \"mse\"\nmetrics = [\"recall\"]\n");
    CHECK(f.what == "metric 'recall' is a classification metric, and the loss is mse");
    f = failure(kHead + "[train]\nloss = \"Huber(delta=1, delta=2)\"\n");
    CHECK(f.what == "train.loss 'Huber(delta=1, delta=2)': its argument 'delta' is given twice");
    // Categorical focal's alpha weighs every class (any weight); binary focal's balances the two classes.
    CHECK(parse_model_spec(kHead + "[train]\nloss = \"CategoricalFocalCrossentropy(alpha=2)\"\n", "a.toml")
              .train.loss_options.alpha == 2);
    f = failure(kHead + "[train]\nloss = \"BinaryFocalCrossentropy(alpha=2)\"\n");
    CHECK(f.what == "train.loss: binary_focal_crossentropy's argument alpha = 2 must be a number in [0, 1]");
    f = failure(kHead + "[train]\nloss = \"CategoricalFocalCrossentropy(alpha=[0.25, 0.5])\"\n");
    CHECK(f.what ==
          "train.loss 'CategoricalFocalCrossentropy(alpha=[0.25, 0.5])': its argument alpha is a list, "
          "which trainer does not take (one number for every class)");
    // Numbers as Python writes them: no C hexadecimal.
    f = failure(kHead + "[train]\nloss = \"Huber(delta=0x2)\"\n");
    CHECK(f.what ==
          "train.loss 'Huber(delta=0x2)': its argument delta = 0x2 is not a number, True, False, a quoted "
          "string or a list");
    // A misspelled name is an unknown name with its did-you-mean, with or without arguments.
    f = failure(kHead + "[train]\nloss = \"binary-crossentropy\"\n");
    CHECK(f.what == "unknown loss 'binary-crossentropy'");
    CHECK(f.hint == "did you mean 'binary_crossentropy'?");
    f = failure(kHead + "[train]\nloss = \"mse\"\nmetrics = [\"root_mean_squard_error(k=3)\"]\n");
    CHECK(f.what == "unknown metric 'root_mean_squard_error'");
    CHECK(f.hint == "did you mean 'root_mean_squared_error'?");
    f = failure(kHead + "[train]\nloss = \"mse\"\nmetrics = [\"Huber(delta=2.0)\"]\n");
    CHECK(f.what == "the loss 'huber' is not a metric here");
    f = failure(kHead + "[train]\nloss = \"Huber(delta=2)\"\nlabel_smoothing = 0.1\n");
    CHECK(f.what ==
          "train.label_smoothing applies to the categorical and binary cross-entropies (focal or not), "
          "and the loss is huber");
    f = failure(kHead +
                "[train]\nloss = \"CategoricalCrossentropy(label_smoothing=0.2)\"\nlabel_smoothing = 0.1\n");
    CHECK(f.what == "train.label_smoothing is 0.1, and the loss's call says label_smoothing=0.2");
    f = failure(kHead + "[train]\nloss = \"CategoricalCrossentropy(ignore_class=0)\"\n");
    CHECK(f.what == "train.loss: categorical_crossentropy has no argument 'ignore_class' here");
    // The sparse cross-entropy's ignore_class, and MeanIoU's, round-trip through the written spec.
    const ModelSpec ig =
        parse_model_spec(kHead +
                             "[train]\nloss = \"SparseCategoricalCrossentropy(ignore_class=255)\"\n"
                             "metrics = [\"MeanIoU(num_classes=2, ignore_class=0)\"]\n",
                         "ig.toml");
    CHECK(ig.train.loss_options.ignore_class == 255);
    CHECK(ig.train.metric_options.iou_classes == 2);
    CHECK(ig.train.metric_options.iou_ignore == 0);
    const std::string ig_text = to_toml(ig);
    CHECK(ig_text.find("ignore_class=255") != std::string::npos);
    CHECK(ig_text.find("mean_iou(num_classes=2, ignore_class=0)") != std::string::npos);
    CHECK(same_settings(parse_model_spec(ig_text, "ig.toml"), ig));
    // F1Score's average, likewise; a categorical output's F1Score needs one.
    const ModelSpec f1 = parse_model_spec(
        kHead +
            "[train]\nloss = \"sparse_categorical_crossentropy\"\nmetrics = [\"F1Score(average='micro')\"]\n",
        "f1.toml");
    CHECK(f1.train.metric_options.f1_average == "micro");
    CHECK(to_toml(f1).find("f1_score(average='micro')") != std::string::npos);
    CHECK(same_settings(parse_model_spec(to_toml(f1), "f1.toml"), f1));
    // Python's None where Keras's default is "not set": accepted, and nothing is set.
    const ModelSpec none = parse_model_spec(
        kHead +
            "[train]\nloss = \"SparseCategoricalCrossentropy(ignore_class=None)\"\nmetrics = "
            "[\"F1Score(average='macro', threshold=None, name=None)\", \"MeanIoU(num_classes=2, "
            "ignore_class=None)\"]\n",
        "none.toml");
    CHECK(!none.train.loss_options.ignore_class);
    CHECK(!none.train.metric_options.iou_ignore);
    CHECK(none.train.metric_options.f1_average == "macro");
    CHECK(parse_model_spec(
              kHead + "[train]\nloss = \"binary_crossentropy\"\nmetrics = [\"Precision(thresholds=None)\"]\n",
              "p.toml")
              .train.metrics == std::vector<std::string>{"precision"});
    // One ignore_class per output: a MeanIoU without it beside one with it is refused.
    f = failure(
        kHead +
        "[train]\nloss = \"sparse_categorical_crossentropy\"\nmetrics = [\"MeanIoU(num_classes=2)\"]\n"
        "weighted_metrics = [\"MeanIoU(num_classes=2, ignore_class=1)\"]\n");
    CHECK(f.what == "one IoU metric of this output says ignore_class=1, and another says none");
    // A binary output's F1 averages its labels; a regression has none to average.
    CHECK(parse_model_spec(
              kHead + "[train]\nloss = \"binary_crossentropy\"\nmetrics = [\"F1Score(average='macro')\"]\n",
              "b.toml")
              .train.metric_options.f1_average == "macro");
    f = failure(kHead + "[train]\nloss = \"mse\"\nmetrics = [\"F1Score(average='macro')\"]\n");
    CHECK(f.what ==
          "metric 'f1_score' averaged counts the classes or labels of a classification, and the loss is mse");
  }

  TEST_CASE("Keras's IoU, F-beta and constrained metrics, positional arguments and lists in calls") {
    const std::string sparse = "[train]\nloss = \"sparse_categorical_crossentropy\"\n";
    const std::string onehot = "[train]\nloss = \"categorical_crossentropy\"\n";
    const std::string binary = "[train]\nloss = \"binary_crossentropy\"\n";
    // Positional arguments take the class's order; lists and tuples of class ids read.
    const ModelSpec iou = parse_model_spec(
        kHead + sparse +
            "metrics = [\"IoU(3, (0, 2), ignore_class=1)\", \"keras.metrics.MeanIoU(3, ignore_class=1)\"]\n",
        "iou.toml");
    CHECK(iou.train.metrics == std::vector<std::string>{"iou", "mean_iou"});
    CHECK(iou.train.metric_options.iou_classes == 3);
    CHECK(iou.train.metric_options.iou_targets == std::vector<int64_t>{0, 2});
    CHECK(iou.train.metric_options.iou_ignore == 1);
    const std::string iou_text = to_toml(iou);
    CHECK(iou_text.find("\"iou(num_classes=3, target_class_ids=[0, 2], ignore_class=1)\"") !=
          std::string::npos);
    CHECK(same_settings(parse_model_spec(iou_text, "iou.toml"), iou));
    const ModelSpec oh = parse_model_spec(
        kHead + onehot +
            "metrics = [\"OneHotIoU(num_classes=2, target_class_ids=[1])\", \"OneHotMeanIoU(2)\"]\n",
        "oh.toml");
    CHECK(oh.train.metrics == std::vector<std::string>{"one_hot_iou", "one_hot_mean_iou"});
    CHECK(same_settings(parse_model_spec(to_toml(oh), "oh.toml"), oh));
    const ModelSpec bi = parse_model_spec(
        kHead + binary +
            "metrics = [\"BinaryIoU(target_class_ids=[1], threshold=0.3)\", \"FBetaScore(beta=2.0)\", "
            "\"PrecisionAtRecall(0.8)\", \"RecallAtPrecision(precision=0.9, num_thresholds=200)\", "
            "\"SensitivityAtSpecificity(0.5)\", \"SpecificityAtSensitivity(sensitivity=0.25)\"]\n",
        "bi.toml");
    CHECK(bi.train.metrics == std::vector<std::string>{"binary_iou", "fbeta_score", "precision_at_recall",
                                                       "recall_at_precision", "sensitivity_at_specificity",
                                                       "specificity_at_sensitivity"});
    const engine::MetricOptions& mo = bi.train.metric_options;
    CHECK(mo.iou_targets == std::vector<int64_t>{1});
    CHECK(mo.iou_threshold == 0.3);
    CHECK(mo.beta == 2.0);
    CHECK(mo.at.at("precision_at_recall") == 0.8);
    CHECK(mo.at.at("recall_at_precision") == 0.9);
    CHECK(mo.at.at("sensitivity_at_specificity") == 0.5);
    CHECK(mo.at.at("specificity_at_sensitivity") == 0.25);
    CHECK(same_settings(parse_model_spec(to_toml(bi), "bi.toml"), bi));
    const ModelSpec fb = parse_model_spec(
        kHead + sparse + "metrics = [\"FBetaScore('weighted', 0.5)\", \"F1Score(average='weighted')\"]\n",
        "fb.toml");
    CHECK(fb.train.metric_options.f1_average == "weighted");
    CHECK(fb.train.metric_options.beta == 0.5);
    CHECK(same_settings(parse_model_spec(to_toml(fb), "fb.toml"), fb));
    // A loss's positional arguments too.
    CHECK(parse_model_spec(kHead + "[train]\nloss = \"Huber(2.0)\"\n", "h.toml").train.loss_options.delta ==
          2.0);
    const ModelSpec sc =
        parse_model_spec(kHead + "[train]\nloss = \"SparseCategoricalCrossentropy(True, 255)\"\n", "s.toml");
    CHECK(sc.train.from_logits);
    CHECK(sc.train.loss_options.ignore_class == 255);

    Failure f = failure(kHead + binary + "metrics = [\"precision_at_recall\"]\n");
    CHECK(f.what == "metric 'precision_at_recall' needs the recall it is computed at");
    CHECK(f.hint == "write its call: \"precision_at_recall(recall=0.8)\"");
    f = failure(kHead + sparse + "metrics = [\"IoU(num_classes=3)\"]\n");
    CHECK(f.what == "metric 'IoU(num_classes=3)' needs the classes it averages (target_class_ids)");
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(1.5)\"]\n");
    CHECK(f.what == "metric 'PrecisionAtRecall(1.5)': recall = 1.5 is not a valid value");
    CHECK(f.hint == "recall is a number in [0, 1]");
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(0.5, 100)\"]\n");
    CHECK(f.what == "metric 'PrecisionAtRecall(0.5, 100)': num_thresholds = 100 is not supported by trainer");
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(recall=0.5, 0.2)\"]\n");
    CHECK(f.what ==
          "metric 'PrecisionAtRecall(recall=0.5, 0.2)': its argument 0.2 has no name and follows one with a "
          "name, as "
          "Python refuses");
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(0.5, recall=0.6)\"]\n");
    CHECK(f.what ==
          "metric 'PrecisionAtRecall(0.5, recall=0.6)': its argument 'recall' is given twice (by position "
          "and by "
          "name)");
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(0.5, 200, None, None, None, None)\"]\n");
    CHECK(f.what ==
          "metric 'PrecisionAtRecall(0.5, 200, None, None, None, None)': it gives 6 arguments without names, "
          "and "
          "PrecisionAtRecall takes at most 5 so (recall, num_thresholds, class_id, name, dtype)");
    // dtype None or float is what trainer counts in; a list's element and a late positional are named.
    CHECK(parse_model_spec(
              kHead + sparse +
                  "metrics = [\"MeanIoU(3, dtype='float32')\", \"F1Score('macro', None, None, None)\"]\n",
              "d.toml")
              .train.metric_options.iou_classes == 3);
    f = failure(kHead + sparse + "metrics = [\"MeanIoU(3, dtype='int32')\"]\n");
    CHECK(f.what == "metric 'MeanIoU(3, dtype='int32')': dtype = 'int32' is not supported by trainer");
    f = failure(kHead + sparse + "metrics = [\"IoU(num_classes=3, [0, 2])\"]\n");
    CHECK(f.what ==
          "metric 'IoU(num_classes=3, [0, 2])': its argument [0, 2] has no name and follows one with a name, "
          "as "
          "Python refuses");
    f = failure(kHead + sparse + "metrics = [\"IoU(3, ['0'])\"]\n");
    CHECK(f.what ==
          "metric 'IoU(3, ['0'])': its argument 2 is a list that holds a quoted string, where numbers go");
    // A setting one call gives, another of the output's calls that takes it must give too.
    f = failure(kHead + binary + "metrics = [\"f1_score\", \"FBetaScore(average='macro')\"]\n");
    CHECK(f.what == "one F-score of this output says average='macro', and another says nothing");
    f = failure(kHead + binary +
                "metrics = [\"FBetaScore(beta=2.0)\", \"BinaryIoU(threshold=0.9)\"]\n"
                "weighted_metrics = [\"fbeta_score\", \"binary_iou\"]\n");
    CHECK(f.what == "one FBetaScore of this output says beta=2.0, and another says nothing");
    f = failure(kHead + binary +
                "metrics = [\"BinaryIoU(threshold=0.9)\"]\nweighted_metrics = [\"binary_iou\"]\n");
    CHECK(f.what == "one BinaryIoU of this output says threshold=0.9, and another says nothing");
    // AUC's num_labels round-trips alone too.
    const ModelSpec nl =
        parse_model_spec(kHead + binary + "metrics = [\"AUC(curve='PR', num_labels=3)\"]\n", "nl.toml");
    CHECK(same_settings(parse_model_spec(to_toml(nl), "nl.toml"), nl));
    CHECK(parse_model_spec(kHead + binary + "metrics = [\"AUC(200, 'ROC', 'interpolation', None, None)\"]\n",
                           "a.toml")
              .train.metrics == std::vector<std::string>{"auc"});
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(0.5)\", \"PrecisionAtRecall(0.6)\"]\n");
    CHECK(f.what == "metric 'precision_at_recall' is listed twice");
    f = failure(kHead + binary +
                "metrics = [\"PrecisionAtRecall(0.5)\"]\nweighted_metrics = [\"PrecisionAtRecall(0.6)\"]\n");
    CHECK(f.what == "the precision_at_recall calls of one output say recall=0.5 and recall=0.6");
    f = failure(kHead + sparse + "metrics = [\"OneHotMeanIoU(3)\"]\n");
    CHECK(f.what ==
          "metric 'one_hot_mean_iou' reads one-hot labels, and sparse_categorical_crossentropy's are "
          "class ids");
    f = failure(kHead + sparse + "metrics = [\"BinaryIoU()\"]\n");
    CHECK(f.what ==
          "metric 'binary_iou' is a binary classification metric, and the loss is "
          "sparse_categorical_crossentropy");
    f = failure(kHead + binary + "metrics = [\"BinaryIoU(target_class_ids=[0, 2])\"]\n");
    CHECK(f.hint == "target_class_ids is a list of the classes 0 and 1: [0, 1], [0] or [1]");
    f = failure(kHead + sparse + "metrics = [\"IoU(3, [0.5])\"]\n");
    CHECK(f.what == "metric 'IoU(3, [0.5])': target_class_ids = [0.5] is not a valid value");
    f = failure(kHead + sparse + "metrics = [\"FBetaScore(beta=2.0)\"]\n");
    CHECK(f.what ==
          "metric 'fbeta_score': the F-beta score of a categorical output is one per class, and trainer "
          "reports one "
          "number");
    f = failure(kHead + binary + "metrics = [\"FBetaScore(beta=0)\"]\n");
    CHECK(f.what == "metric 'FBetaScore(beta=0)': beta = 0 is not a valid value");
    // AUC's multi_label holds for the output's AUCs, and is written back in each.
    const ModelSpec ml = parse_model_spec(
        kHead + binary +
            "metrics = [\"AUC(multi_label=True, num_labels=3)\", \"AUC(curve='PR', multi_label=True)\"]\n",
        "ml.toml");
    CHECK(ml.train.metrics == std::vector<std::string>{"auc", "pr_auc"});
    CHECK(ml.train.metric_options.auc_multi_label);
    CHECK(ml.train.metric_options.auc_num_labels == 3);
    CHECK(same_settings(parse_model_spec(to_toml(ml), "ml.toml"), ml));
    f = failure(kHead + binary + "metrics = [\"AUC(multi_label=True)\", \"pr_auc\"]\n");
    CHECK(f.what == "one AUC of this output says multi_label=True, and another says nothing");
    // A misspelt argument is named (before the required one is missed); Python's (2) is a number, not a
    // tuple; average=None is Keras's default.
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(recal=0.8)\"]\n");
    CHECK(f.what ==
          "metric 'PrecisionAtRecall(recal=0.8)': precision_at_recall has no argument 'recal' here");
    CHECK(f.hint.starts_with("did you mean 'recall'?"));
    f = failure(kHead + sparse + "metrics = [\"IoU(3, (2))\"]\n");
    CHECK(f.what == "metric 'IoU(3, (2))': target_class_ids = (2) is not a valid value");
    CHECK(parse_model_spec(kHead + sparse + "metrics = [\"IoU(3, (2,))\"]\n", "t.toml")
              .train.metric_options.iou_targets == std::vector<int64_t>{2});
    CHECK(parse_model_spec(kHead + binary + "metrics = [\"FBetaScore(None, 2.0, 0.5)\"]\n", "t.toml")
              .train.metric_options.beta == 2.0);
    f = failure(kHead + binary + "metrics = [\"PrecisionAtRecall(0.5, class_id=1)\"]\n");
    CHECK(f.what == "metric 'PrecisionAtRecall(0.5, class_id=1)': class_id = 1 is not supported by trainer");
    f = failure(kHead + "[train]\nloss = \"Huber(2.0, 'sum_over_batch_size', None, 4)\"\n");
    CHECK(f.what ==
          "train.loss 'Huber(2.0, 'sum_over_batch_size', None, 4)': it gives 4 arguments without names, and "
          "Huber "
          "takes at most 3 so (delta, reduction, name)");
  }

  TEST_CASE("early stopping's baseline and start_from_epoch are read, checked and written back") {
    const std::string es = "[train]\nloss = \"mse\"\n[train.early_stopping]\nmonitor = \"loss\"\n";
    const ModelSpec a = parse_model_spec(kHead + es + "baseline = 0.5\nstart_from_epoch = 3\n", "a.toml");
    CHECK(a.train.early_stopping.baseline == 0.5);
    CHECK(a.train.early_stopping.start_from_epoch == 3);
    CHECK(same_settings(a, parse_model_spec(to_toml(a), "a.toml")));
    const ModelSpec b = parse_model_spec(kHead + es, "b.toml");
    CHECK(!b.train.early_stopping.baseline);
    CHECK(to_toml(b).find("baseline") == std::string::npos);  // written only when set
    const Failure f = failure(kHead + es + "start_from_epoch = -1\n");
    CHECK(f.what == "train.early_stopping.start_from_epoch must be 0 or more, not -1");
  }

  TEST_CASE("load_model_spec reads a file and resolves data paths against its folder") {
    const auto dir = std::filesystem::temp_directory_path() / ("model_spec_test_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir / "sub");
    { std::ofstream(dir / "sub" / "m.toml") << kHead << "[data]\n[data.train]\nx = \"../data/x.npy\"\n"; }
    const std::string path = (dir / "sub" / "m.toml").string();
    const ModelSpec s = load_model_spec(path, {"data.train.limit=10"});
    CHECK(s.base_dir == (dir / "sub").string());
    CHECK(s.data.train->x == std::vector<std::string>{"../data/x.npy"});
    CHECK(resolve_data_path(s, s.data.train->x[0]) == (dir / "data" / "x.npy").string());
    CHECK(s.data.train->limit == 10);
    try {
      load_model_spec((dir / "missing.toml").string());
      FAIL("expected an InputError");
    } catch (const InputError& e) {
      CHECK(e.where() == (dir / "missing.toml").string());
      CHECK(std::string(e.what()).find("cannot read the spec") != std::string::npos);
    }
    std::filesystem::remove_all(dir);
  }
}

TEST_SUITE("model_spec") {
  TEST_CASE("[train.checkpoint] is read, checked and written back") {
    const std::string text =
        kHead +
        "[data.train]\nx = \"a.npy\"\ny = \"b.npy\"\n[data.validation]\nx = \"c.npy\"\ny = "
        "\"d.npy\"\n[train]\nloss = \"mse\"\n[train.checkpoint]\nevery_steps = 100\n"
        "keep_last = 2\nsave_best = \"val_loss\"\n";
    const ModelSpec s = parse_model_spec(text, "spec.toml");
    CHECK(s.train.checkpoint.enabled);
    CHECK(s.train.checkpoint.every_epochs == 1);
    CHECK(s.train.checkpoint.every_steps == 100);
    CHECK(s.train.checkpoint.keep_last == 2);
    CHECK(s.train.checkpoint.save_best == "val_loss");
    CHECK(same_settings(s, parse_model_spec(to_toml(s), "spec.toml")));
    CHECK_FALSE(parse_model_spec(kHead + "[train]\nloss = \"mse\"\n", "spec.toml").train.checkpoint.enabled);
    // A cosine schedule without decay_steps (the whole run) survives the round trip.
    const ModelSpec cos = parse_model_spec(
        kHead + "[train]\nloss = \"mse\"\n[train.optimizer.schedule]\nkind = \"cosine\"\n", "spec.toml");
    CHECK(cos.train.optimizer.schedule.decay_steps == 0);
    CHECK(same_settings(cos, parse_model_spec(to_toml(cos), "spec.toml")));
    Failure f = failure(kHead + "[train]\nloss = \"mse\"\n[train.checkpoint]\nkeep_lats = 2\n");
    CHECK(f.where == "spec.toml:10:1");
    CHECK(f.hint.find("keep_last") != std::string::npos);
    f = failure(kHead +
                "[data.train]\nx = \"a.npy\"\n[train]\nloss = \"mse\"\n[train.checkpoint]\nsave_best = "
                "\"val_loss\"\n");
    CHECK(f.what.find("no validation set") != std::string::npos);
    f = failure(kHead + "[train]\nloss = \"mse\"\n[train.checkpoint]\nevery_steps = -1\n");
    CHECK(f.where == "spec.toml:10:15");
  }

  TEST_CASE("[[model.inputs]] and the data of several inputs are read, checked and written back") {
    const std::string model =
        "format_version = 1\n"
        "[[model.inputs]]\nname = \"tokens\"\nshape = [20]\ndtype = \"int64\"\n"
        "[[model.inputs]]\nname = \"meta\"\nshape = [4]\n"
        "[[model.layers]]\ntype = \"Embedding\"\ninput_dim = 9\noutput_dim = 2\n"
        "[[model.layers]]\ntype = \"Flatten\"\n"
        "[[model.layers]]\ntype = \"Concatenate\"\ninputs = [\"flatten\", \"meta\"]\n";
    const ModelSpec s = parse_model_spec(
        model +
            "[data.train]\nx = { tokens = [\"t1.npy\", \"t2.npy\"], meta = \"m.npy\" }\ny = \"y.npy\"\n"
            "[data.validation]\nx = \"v.npz\"\nx_key = { meta = \"features\" }\n[train]\nloss = \"mse\"\n",
        "spec.toml");
    CHECK(s.model.input.name == "tokens");
    CHECK(s.model.input.dtype == "int64");
    CHECK(s.model.input.pos.str() == "spec.toml:2:1");
    REQUIRE(s.model.more_inputs.size() == 1);
    CHECK(s.model.more_inputs[0].name == "meta");
    CHECK(s.model.more_inputs[0].shape == std::vector<int64_t>{4});
    CHECK(s.model.layers[2].inputs == std::vector<std::string>{"flatten", "meta"});
    CHECK(s.data.train->x.empty());
    CHECK(s.data.train->x_by_input.at("tokens") == std::vector<std::string>{"t1.npy", "t2.npy"});
    CHECK(s.data.train->x_by_input.at("meta") == std::vector<std::string>{"m.npy"});
    CHECK(s.data.validation->x_keys.at("meta") == "features");
    const ModelSpec back = parse_model_spec(to_toml(s), "spec.toml");
    CHECK(same_settings(s, back));
    CHECK(back.model.more_inputs.at(0).name == "meta");
    // A model of one input named in [[model.inputs]] keeps its name through the round trip.
    const ModelSpec one = parse_model_spec(
        "format_version = 1\n[[model.inputs]]\nname = \"pixels\"\nshape = [3]\n[[model.layers]]\ntype = "
        "\"Dense\"\nunits = 1\n",
        "spec.toml");
    CHECK(parse_model_spec(to_toml(one), "spec.toml").model.input.name == "pixels");

    Failure f = failure(model.substr(0, model.find("[[model.layers]]")) +
                        "[[model.inputs]]\nname = \"meta\"\nshape = [1]\n" +
                        model.substr(model.find("[[model.layers]]")));
    CHECK(f.what == "two inputs are named 'meta'");
    f = failure(model + "[[model.layers]]\ntype = \"Dense\"\nname = \"tokens\"\nunits = 1\n");
    CHECK(f.what == "model.layers[3].name 'tokens' is the name of a model input");
    f = failure(model + "[[model.layers]]\ntype = \"Dense\"\ninputs = [\"metta\"]\nunits = 1\n");
    CHECK(f.what == "layer 'dense' takes 'metta', which is not a layer before it");
    CHECK(f.hint.find("meta") != std::string::npos);
    f = failure("format_version = 1\n[model]\ninput = [2]\n" + model.substr(model.find("[[model.inputs]]")));
    CHECK(f.what == "model.input and [[model.inputs]] both define the model's input");
    f = failure("format_version = 1\n[[model.inputs]]\nname = \"a b\"\nshape = [2]\n");
    CHECK(f.what == "model.inputs[0].name \"a b\" is not a valid input name");
    f = failure(model + "[data]\nmean = 0.5\n[data.train]\nx = \"a.npz\"\n");
    CHECK(f.what == "data.mean applies to a model of one input, and this model has 2");
    f = failure(model + "[data.train]\nx = { tokens = 3 }\n");
    CHECK(f.what == "data.train.x.tokens must be a file name or an array of them, not an integer (3)");
  }

  TEST_CASE("[model] outputs and [train]'s tables by output name are read, checked and written back") {
    const std::string model =
        "format_version = 1\n[model]\ninput = [4]\noutputs = [\"cls\", \"reg\"]\n"
        "[[model.layers]]\ntype = \"Dense\"\nname = \"cls\"\nunits = 3\n"
        "[[model.layers]]\ntype = \"Dense\"\nname = \"reg\"\nunits = 1\ninputs = [\"input\"]\n";
    const std::string data =
        "[data.train]\nx = \"x.npy\"\ny = { reg = \"r.npy\", cls = [\"c1.npy\", \"c2.npy\"] }\n"
        "sample_weight = { reg = \"w.npy\" }\n"
        "[data.validation]\nx = \"v.npz\"\ny_key = { cls = \"labels\" }\nsample_weight_key = { cls = \"wc\" "
        "}\n";
    const ModelSpec s = parse_model_spec(
        model + data +
            "[train]\nloss = { cls = \"sparse_categorical_crossentropy\", reg = \"mean_squared_error\" }\n"
            "from_logits = { cls = true }\nmetrics = { cls = [\"accuracy\", \"top_k_accuracy\"], reg = "
            "\"mean_absolute_error\" }\nloss_weights = [2, 0.5]\ntop_k = 2\n"
            "weighted_metrics = { reg = [\"mae\", \"mse\"] }\n"
            "[train.early_stopping]\nmonitor = \"val_reg_weighted_mae\"\n",
        "spec.toml");
    CHECK(s.model.outputs == std::vector<std::string>{"cls", "reg"});
    CHECK(s.model.outputs_pos.at(1).str() == "spec.toml:4:19");
    REQUIRE(s.train.outputs.size() == 2);
    CHECK(s.train.outputs[0].name == "cls");
    CHECK(s.train.outputs[0].from_logits);
    CHECK(s.train.outputs[0].loss_weight == 2);
    CHECK(s.train.outputs[1].loss == "mse");
    CHECK(!s.train.outputs[1].from_logits);
    CHECK(s.train.outputs[1].metrics == std::vector<std::string>{"mae"});
    CHECK(s.train.outputs[1].loss_weight == 0.5);
    CHECK(s.train.loss == "sparse_categorical_crossentropy");  // the first output's
    CHECK(s.train.from_logits);
    CHECK(s.train.outputs[0].weighted_metrics.empty());
    CHECK(s.train.outputs[1].weighted_metrics == std::vector<std::string>{"mae", "mse"});
    // A weighted metric that the unweighted ones name too is reported as weighted_NAME, as Keras reports it.
    CHECK(reported_quantities(s.train) == std::vector<std::string>{"loss", "cls_loss", "reg_loss",
                                                                   "cls_accuracy", "cls_top_k_accuracy",
                                                                   "reg_mae", "reg_weighted_mae", "reg_mse"});
    CHECK(s.data.train->y.empty());
    CHECK(s.data.train->y_by_output.at("cls") == std::vector<std::string>{"c1.npy", "c2.npy"});
    CHECK(s.data.validation->y_keys.at("cls") == "labels");
    CHECK(s.data.train->sample_weight_by_output.at("reg") == std::vector<std::string>{"w.npy"});
    CHECK(s.data.validation->sample_weight_keys.at("cls") == "wc");
    CHECK(same_settings(s, parse_model_spec(to_toml(s), "spec.toml")));
    // One loss for every output; label smoothing for one of them.
    const ModelSpec all = parse_model_spec(model + "[train]\nloss = \"mse\"\n", "spec.toml");
    CHECK(all.train.outputs.at(0).loss == "mse");
    CHECK(all.train.outputs.at(1).loss == "mse");
    const ModelSpec smooth = parse_model_spec(
        model +
            "[train]\nloss = { cls = \"categorical_crossentropy\", reg = \"mse\" }\nlabel_smoothing = { cls "
            "= 0.1 }\n",
        "spec.toml");
    CHECK(smooth.train.outputs.at(0).label_smoothing == 0.1);
    CHECK(smooth.train.outputs.at(1).label_smoothing == 0);
    CHECK(same_settings(smooth, parse_model_spec(to_toml(smooth), "spec.toml")));

    const std::string train =
        "[train]\nloss = { cls = \"sparse_categorical_crossentropy\", reg = \"mse\" }\n";
    Failure f = failure(model + "[train]\nloss = { cls = \"mse\", rge = \"mse\" }\n");
    CHECK(f.what == "train.loss names 'rge', which model.outputs does not list (cls, reg)");
    CHECK(f.hint == "did you mean 'reg'?");
    f = failure(model + "[train]\nloss = { cls = \"mse\" }\n");
    CHECK(f.what == "train.loss gives no loss for the output 'reg'");
    f = failure(model + train + "metrics = { reg = [\"accuracy\", \"auc\"] }\n");
    CHECK(f.what == "metric 'auc' is a binary classification metric, and the loss is mse");
    f = failure(model + train + "weighted_metrics = { reg = [\"auc\"] }\n");
    CHECK(f.what == "metric 'auc' is a binary classification metric, and the loss is mse");
    f = failure(model + train + "weighted_metrics = { rgx = [\"mae\"] }\n");
    CHECK(f.what == "train.weighted_metrics names 'rgx', which model.outputs does not list (cls, reg)");
    f = failure(model + train + "label_smoothing = { reg = 0.1 }\n");
    CHECK(f.what.starts_with("train.label_smoothing.reg applies to the categorical and binary"));
    f = failure(model + train + "loss_weights = { reg = -1 }\n");
    CHECK(f.what == "train.loss_weights.reg must be 0 or more, not -1.0");
    f = failure(model + train + "[train.early_stopping]\nmonitor = \"val_accuracy\"\n");
    CHECK(f.what == "train.early_stopping.monitor 'val_accuracy' is not a reported quantity");
    f = failure(kHead + "[train]\nloss = \"mse\"\nmetrics = { dense = [\"mae\"] }\n");
    CHECK(f.what == "train.metrics is a table by output name, and [model] outputs lists none");
    f = failure(
        "format_version = 1\n[model]\nonnx = \"m.onnx\"\n[train]\nloss = \"mse\"\nfrom_logits = { cls = true "
        "}\n");
    CHECK(f.what == "train.from_logits is a table by output name, and [model] outputs lists none");
    CHECK(f.hint.find("list the ONNX model's outputs that train in [model] outputs") == 0);
    f = failure(kHead + "[train]\nloss = \"mse\"\nloss_weights = [1]\n");
    CHECK(f.what == "train.loss_weights weighs the losses of a model's several outputs");
    f = failure("format_version = 1\n[model]\ninput = [4]\noutputs = [\"a\", \"a\"]\n");
    CHECK(f.what == "model.outputs lists 'a' twice");
  }

  TEST_CASE("Keras's other schedules are read, checked and written back") {
    const std::string head = kHead + "[train]\nloss = \"mse\"\n[train.optimizer]\n";
    for (const char* schedule :
         {"kind = \"polynomial\"\ndecay_steps = 100\nend_learning_rate = 0.001\npower = 2\ncycle = true\n",
          "kind = \"inverse_time\"\ndecay_steps = 10\ndecay_rate = 0.5\nstaircase = true\n",
          "kind = \"cosine_restarts\"\nfirst_decay_steps = 10\nt_mul = 1.5\nm_mul = 0.9\nalpha = 0.1\n",
          "kind = \"piecewise_constant\"\nboundaries = [10, 20]\nvalues = [0.5, 0.25, 0.125]\n"}) {
      CAPTURE(schedule);
      const ModelSpec s = parse_model_spec(head + "[train.optimizer.schedule]\n" + schedule, "spec.toml");
      CHECK(same_settings(s, parse_model_spec(to_toml(s), "spec.toml")));
    }
    const ModelSpec p = parse_model_spec(
        head +
            "[train.optimizer.schedule]\nkind = \"piecewise_constant\"\nboundaries = [10]\nvalues = [0.5, "
            "0.1]\n",
        "spec.toml");
    CHECK(p.train.optimizer.learning_rate == 0.5);
    CHECK(p.train.optimizer.schedule.boundaries == std::vector<int64_t>{10});
    Failure f = failure(head +
                        "learning_rate = 0.1\n[train.optimizer.schedule]\nkind = \"piecewise_constant\"\n"
                        "boundaries = [10]\nvalues = [0.5, 0.1]\n");
    CHECK(f.what.find("the piecewise_constant schedule's values are the rates") != std::string::npos);
    f = failure(head +
                "[train.optimizer.schedule]\nkind = \"piecewise_constant\"\nboundaries = [10, 5]\nvalues = "
                "[0.5, 0.1, 0.01]\n");
    CHECK(f.what == "train.optimizer.schedule.boundaries must be increasing whole step numbers");
    f = failure(head +
                "[train.optimizer.schedule]\nkind = \"piecewise_constant\"\nboundaries = [10]\nvalues = "
                "[0.5]\n");
    CHECK(f.what ==
          "train.optimizer.schedule.values has 1 rates for 1 boundaries; it needs one more rate than "
          "boundaries");
    f = failure(head + "[train.optimizer.schedule]\nkind = \"inverse_time\"\ndecay_steps = 10\n");
    CHECK(f.what == "the inverse_time schedule needs decay_rate");
    f = failure(head + "[train.optimizer.schedule]\nkind = \"polynomial\"\ndecay_steps = 10\nt_mul = 2\n");
    CHECK(f.what == "train.optimizer.schedule.t_mul does not apply to the polynomial schedule");
  }

  TEST_CASE("validation_freq is read, checked and written back") {
    const ModelSpec s =
        parse_model_spec(kHead + "[train]\nloss = \"mse\"\nvalidation_freq = 3\n", "spec.toml");
    CHECK(s.train.validation_freq == 3);
    CHECK(parse_model_spec(to_toml(s), "spec.toml").train.validation_freq == 3);
    CHECK(parse_model_spec(kHead + "[train]\nloss = \"mse\"\n", "spec.toml").train.validation_freq == 1);
    const Failure f = failure(kHead + "[train]\nloss = \"mse\"\nvalidation_freq = 0\n");
    CHECK(f.what == "train.validation_freq must be 1 or more, not 0");
  }

  TEST_CASE("steps_per_epoch and validation_steps are read, checked and written back") {
    const ModelSpec s = parse_model_spec(
        kHead + "[train]\nloss = \"mse\"\nsteps_per_epoch = 100\nvalidation_steps = 7\n", "spec.toml");
    CHECK(s.train.steps_per_epoch == 100);
    CHECK(s.train.validation_steps == 7);
    const ModelSpec back = parse_model_spec(to_toml(s), "spec.toml");
    CHECK(back.train.steps_per_epoch == 100);
    CHECK(back.train.validation_steps == 7);
    const ModelSpec plain = parse_model_spec(kHead + "[train]\nloss = \"mse\"\n", "spec.toml");
    CHECK(plain.train.steps_per_epoch == 0);
    CHECK(plain.train.validation_steps == 0);
    CHECK(to_toml(plain).find("steps_per_epoch") == std::string::npos);
    CHECK(to_toml(plain).find("validation_steps") == std::string::npos);
    CHECK(failure(kHead + "[train]\nloss = \"mse\"\nsteps_per_epoch = -3\n").what ==
          "train.steps_per_epoch must be 1 or more, not -3");
    CHECK(failure(kHead + "[train]\nloss = \"mse\"\nvalidation_steps = 0\n").what ==
          "train.validation_steps must be 1 or more, not 0");
  }

  TEST_CASE("[data.sequences] is read, checked and written back") {
    const std::string data = "[data.train]\nx = \"imdb.npz\"\nx_key = \"x_train\"\ny_key = \"y_train\"\n";
    const ModelSpec s =
        parse_model_spec(kHead + data +
                             "[data.sequences]\nload_data = true\nnum_words = 10000\nmaxlen = "
                             "80\npadding = \"post\"\nskip_top = 4\n[train]\nloss = \"mse\"\n",
                         "spec.toml");
    REQUIRE(s.data.sequences);
    const SequenceSpec& q = *s.data.sequences;
    CHECK(q.load_data);
    CHECK(q.num_words == 10000);
    CHECK(q.maxlen == 80);
    CHECK(q.padding == "post");
    CHECK(q.truncating == "pre");
    CHECK(q.skip_top == 4);
    CHECK(q.start_char == 1);
    CHECK(q.oov_char == 2);
    CHECK(q.index_from == 3);
    // Written back and read again: the same settings (the positions aside).
    auto settings = [](const ModelSpec& m) {
      SequenceSpec c = *m.data.sequences;
      c.pos = {};
      return c;
    };
    CHECK(settings(parse_model_spec(to_toml(s), "spec.toml")) == settings(s));
    const ModelSpec plain =
        parse_model_spec(kHead + data + "[data.sequences]\n[train]\nloss = \"mse\"\n", "spec.toml");
    REQUIRE(plain.data.sequences);
    CHECK(!plain.data.sequences->load_data);
    CHECK(plain.data.sequences->maxlen == 0);
    CHECK(settings(parse_model_spec(to_toml(plain), "spec.toml")) == settings(plain));
    CHECK(!parse_model_spec(kHead + data + "[train]\nloss = \"mse\"\n", "spec.toml").data.sequences);
    // Keras's start_char=None and oov_char=None, as false, written back as false.
    const ModelSpec none = parse_model_spec(kHead + data +
                                                "[data.sequences]\nload_data = true\nstart_char = "
                                                "false\noov_char = false\n[train]\nloss = \"mse\"\n",
                                            "spec.toml");
    CHECK(none.data.sequences->start_char == -1);
    CHECK(none.data.sequences->oov_char == -1);
    CHECK(to_toml(none).find("start_char = false\noov_char = false") != std::string::npos);
    CHECK(settings(parse_model_spec(to_toml(none), "spec.toml")) == settings(none));
    CHECK(failure(kHead + data + "[data.sequences]\noov_char = 5\n").what ==
          "data.sequences.oov_char is a setting of Keras's load_data id mapping");
    CHECK(failure(kHead + data + "[data.sequences]\nload_data = true\nindex_from = -1\n").what ==
          "data.sequences.index_from must be from 0 to 2147483647, not -1");
    CHECK(failure(kHead + data + "[data.sequences]\nmaxlen = 0\n").what ==
          "data.sequences.maxlen must be 1 or more, not 0");
  }

  TEST_CASE("sample weights: files or an .npz array, one of the two, written back") {
    const ModelSpec s =
        parse_model_spec(kHead +
                             "[data.train]\nx = \"a.npz\"\nsample_weight_key = \"w\"\n"
                             "[data.validation]\nx = \"v.npy\"\ny = \"vy.npy\"\n"
                             "sample_weight = [\"w1.npy\", \"w2.npy\"]\n[train]\nloss = \"mse\"\n",
                         "spec.toml");
    CHECK(s.data.train->sample_weight_key == "w");
    CHECK(s.data.validation->sample_weight == std::vector<std::string>{"w1.npy", "w2.npy"});
    CHECK(same_settings(s, parse_model_spec(to_toml(s), "spec.toml")));
    Failure f = failure(
        kHead + "[data.train]\nx = \"a.npz\"\nsample_weight = \"w.npy\"\nsample_weight_key = \"w\"\n");
    CHECK(f.what == "data.train.sample_weight and data.train.sample_weight_key both give the sample weights");
    f = failure(kHead + "[data.train]\nx = \"a.npz\"\nsample_weights = \"w.npy\"\n");
    CHECK(f.hint == "did you mean 'sample_weight'?");
  }
}

TEST_SUITE("model_spec") {
  TEST_CASE(
      "[data.text]: TextVectorization settings, a vocabulary given or left to adapt, and their errors") {
    // Six lines, as kHead: an input of 8 token ids.
    const std::string kTextHead =
        "format_version = 1\n[model]\ninput = { shape = [8], dtype = \"int32\" }\n[[model.layers]]\n"
        "type = \"Flatten\"\nname = \"f\"\n";
    const std::string data =
        "[data.train]\nformat = \"text\"\nx = \"aclImdb/train\"\nclass_names = [\"neg\", \"pos\"]\n"
        "[train]\nloss = \"mse\"\n";  // lines 7-12
    const std::string text = "[data.text]\nmax_tokens = 6\noutput_sequence_length = 8\npadding = \"pre\"\n";
    const ModelSpec s = parse_model_spec(kTextHead + data + text, "spec.toml");
    REQUIRE(s.data.text);
    CHECK(s.data.text->max_tokens == 6);
    CHECK(s.data.text->output_sequence_length == 8);
    CHECK(s.data.text->padding == "pre");
    CHECK(s.data.text->truncating == "post");
    CHECK(s.data.text->standardize == "lower_and_strip_punctuation");
    CHECK(s.data.text->vocabulary.empty());
    CHECK(s.data.train->class_names == std::vector<std::string>{"neg", "pos"});

    // An adapted vocabulary (with a word TOML must escape) reads back from to_toml.
    ModelSpec adapted = s;
    adapted.data.text->vocabulary = {"the", "a\"b", "naïve"};
    const ModelSpec back = parse_model_spec(to_toml(adapted), "spec.toml");
    CHECK(same_settings(adapted, back));
    CHECK(back.data.text->vocabulary == adapted.data.text->vocabulary);
    CHECK_FALSE(same_settings(s, back));

    // Keras's get_vocabulary() list (padding and [UNK] first) is taken as meant.
    CHECK(parse_model_spec(kTextHead + data + text + "vocabulary = [\"\", \"[UNK]\", \"x\", \"y\"]\n",
                           "spec.toml")
              .data.text->vocabulary == std::vector<std::string>{"x", "y"});

    Failure f = failure(kTextHead + data + "[data.text]\nmax_tokens = 6\n");
    CHECK(f.where == "spec.toml:13:1");
    CHECK(f.what == "[data.text] has no output_sequence_length");
    f = failure(kTextHead + data + "[data.text]\nmax_tokens = 2\noutput_sequence_length = 8\n");
    CHECK(f.where == "spec.toml:14:14");
    CHECK(f.what.find("so it must be 3 or more") != std::string::npos);
    f = failure(kTextHead + data + text + "vocabulary = [\"x\", \"x\"]\n");
    CHECK(f.what == "data.text.vocabulary must hold distinct words of UTF-8 without white space, not 'x'");
    f = failure(kTextHead + data + text + "vocabulary = [\"a\\u00a0b\"]\n");  // a no-break space splits
    CHECK(f.what.find("data.text.vocabulary must hold distinct words of UTF-8") == 0);
    f = failure(kTextHead + data + text + "vocabulary = [\"a\", \"b\", \"c\", \"d\", \"e\"]\n");
    CHECK(f.what.find("data.text.vocabulary holds 5 words, more than max_tokens = 6 leaves room for") == 0);
    CHECK(f.hint == "raise max_tokens to 7, or give fewer words");
    f = failure(kTextHead + data + text + "padding = \"both\"\n");
    CHECK(f.where == "spec.toml:17:11");
    f = failure(kTextHead + data);
    CHECK(f.where == "spec.toml:7:1");
    CHECK(f.what == "text data needs a [data.text] table");
    f = failure(
        kTextHead +
        "[data.train]\nx = \"a.npy\"\ny = \"b.npy\"\nclass_names = [\"a\"]\n[train]\nloss = \"mse\"\n");
    CHECK(f.what == "class_names is for folders of class folders (format = \"text\" or \"images\")");
    f = failure(kTextHead + "[data.train]\nx = \"a.npy\"\ny = \"b.npy\"\n[train]\nloss = \"mse\"\n" + text);
    CHECK(f.what == "[data.text] is for text sources, and no source has format = \"text\"");
    // The ids go to a spec's input: integers, as many as output_sequence_length.
    f = failure(kTextHead + data + "[data.text]\noutput_sequence_length = 9\n");
    CHECK(f.where == "spec.toml:13:1");
    CHECK(f.what == "data.text.output_sequence_length is 9, and the model's input is [8]");
    f = failure(
        "format_version = 1\n[model]\ninput = [8]\n[[model.layers]]\ntype = \"Flatten\"\nname = \"f\"\n" +
        data + text);
    CHECK(f.what == "text data gives token ids, and the model's input is float32");
    CHECK(f.hint == "declare input = { shape = [8], dtype = \"int32\" }, read by an Embedding");
  }
}
