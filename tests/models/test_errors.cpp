// Bad model sections: each error names the place (file:line:col of the argument, or of the layer's table),
// the layer, and gives a hint; misspellings get a did-you-mean.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#include "models/regularizers.h"
#include "spec_builder.h"

using namespace trainer;
using namespace trainer::models;
using models::testing::build_error;
using models::testing::contains;
using models::testing::Spec;
using V = formats::ArgValue;

namespace {

std::vector<int64_t> v(std::initializer_list<int64_t> x) {
  return x;
}

Spec dense_model(std::vector<std::pair<std::string, V>> args) {
  Spec s({8});
  s.add("Dense", {{"units", int64_t{4}}}).add("Dense", std::move(args));
  return s;
}

}  // namespace

TEST_SUITE("errors") {
  TEST_CASE("errors: an unknown layer type is reported at its table with a did-you-mean") {
    Spec s({8});
    s.add("Dense", {{"units", int64_t{4}}}).add("Dens", {{"units", int64_t{2}}});
    InputError e = build_error(s);
    CHECK(e.where() == s.layer_at(1));
    CHECK(e.where() == "model.toml:8:1");
    CHECK(contains(e.what(), "unknown layer type 'Dens'"));
    CHECK(contains(e.hint(), "did you mean 'Dense'?"));

    Spec lower({28, 28, 1});
    lower.add("conv2d", {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}});
    CHECK(contains(build_error(lower).hint(), "did you mean 'Conv2D'?"));

    Spec far({8});
    far.add("Transformer");
    InputError f = build_error(far);
    CHECK_FALSE(contains(f.hint(), "did you mean"));
    CHECK(contains(f.hint(), "LSTM"));  // the list of layers
  }

  TEST_CASE("errors: an unknown argument is reported at the argument with a did-you-mean") {
    Spec s = dense_model({{"unit", int64_t{2}}});
    InputError e = build_error(s);
    CHECK(e.where() == s.arg_at(1, "unit"));
    CHECK(e.where() == "model.toml:10:8");
    CHECK(contains(e.what(), "Dense layer 'dense_1'"));
    CHECK(contains(e.what(), "unknown argument 'unit'"));
    CHECK(contains(e.hint(), "did you mean 'units'?"));

    // A known Keras argument that trainer does not implement says so.
    Spec reg = dense_model({{"units", int64_t{2}}, {"noise_shape", std::string("[1, 2]")}});
    InputError r = build_error(reg);
    CHECK(r.where() == reg.arg_at(1, "noise_shape"));
    CHECK(contains(r.what(), "not supported"));
    // Keras arguments that change nothing here are taken as written; their other values are not.
    Spec same = dense_model({{"units", int64_t{2}},
                             {"dtype", std::string("float32")},
                             {"data_format", std::string("channels_last")}});
    CHECK_NOTHROW(models::testing::build(same));
    Spec first = dense_model({{"units", int64_t{2}}, {"data_format", std::string("channels_first")}});
    InputError df = build_error(first);
    CHECK(df.where() == first.arg_at(1, "data_format"));
    CHECK(contains(df.what(), "not supported"));
    CHECK(contains(df.hint(), "data_format = \"channels_last\""));
    // A value of the wrong type names the values such an argument takes, not "unknown argument".
    Spec impl = dense_model({{"units", int64_t{2}}, {"implementation", true}});
    InputError im = build_error(impl);
    CHECK(im.where() == impl.arg_at(1, "implementation"));
    CHECK(contains(im.what(), "implementation = true is not supported"));
    CHECK(contains(im.hint(), "implementation = 1 or 2"));
    CHECK(contains(build_error(dense_model({{"units", int64_t{2}}, {"implementation", int64_t{3}}})).what(),
                   "implementation = 3 is not supported"));
    CHECK_NOTHROW(
        models::testing::build(dense_model({{"units", int64_t{2}}, {"implementation", int64_t{2}}})));
    Spec act = dense_model({{"units", int64_t{2}}, {"activity_regularizer", std::string("l2(x)")}});
    InputError a = build_error(act);
    CHECK(a.where() == act.arg_at(1, "activity_regularizer"));
    CHECK(contains(a.what(), "the factor 'x' is not a number"));

    Spec bad = dense_model({{"units", int64_t{2}}, {"kernel_regularizer", std::string("l2(x)")}});
    InputError k = build_error(bad);
    CHECK(k.where() == bad.arg_at(1, "kernel_regularizer"));
    CHECK(contains(k.what(), "the factor 'x' is not a number"));
  }

  TEST_CASE("errors: TimeDistributed names its wrapped layer; that layer's arguments are checked") {
    Spec none({3, 4});
    none.add("TimeDistributed", {{"units", int64_t{2}}});
    InputError e = build_error(none);
    CHECK(contains(e.what(), "TimeDistributed needs layer"));

    Spec typo({3, 4});
    typo.add("TimeDistributed", {{"layer", std::string("Dens")}, {"units", int64_t{2}}});
    InputError t = build_error(typo);
    CHECK(t.where() == typo.arg_at(0, "layer"));
    CHECK(contains(t.hint(), "did you mean 'Dense'?"));

    Spec arg({3, 4});
    arg.add("TimeDistributed", {{"layer", std::string("Dense")}, {"unit", int64_t{2}}});
    InputError a = build_error(arg);
    CHECK(a.where() == arg.arg_at(0, "unit"));
    CHECK(contains(a.hint(), "did you mean 'units'?"));

    Spec two({3, 4});
    two.add("TimeDistributed", {{"layer", std::string("Add")}});
    CHECK(contains(build_error(two).what(), "wraps a layer of one input, not Add"));

    Spec flat({4});
    flat.add("TimeDistributed", {{"layer", std::string("Dense")}, {"units", int64_t{2}}});
    CHECK(contains(build_error(flat).what(), "needs steps to distribute over"));
  }

  TEST_CASE("errors: a value of the wrong type is reported at the argument") {
    Spec s = dense_model({{"units", std::string("64")}});
    InputError e = build_error(s);
    CHECK(e.where() == s.arg_at(1, "units"));
    CHECK(contains(e.what(), "argument 'units' must be an integer, got \"64\""));

    Spec f = dense_model({{"units", 2.5}});
    CHECK(build_error(f).where() == f.arg_at(1, "units"));
    // A float with nothing after the point is shown as one: 2.0 is not an integer here.
    CHECK(contains(build_error(dense_model({{"units", 2.0}})).what(), "must be an integer, got 2.0"));

    Spec b = dense_model({{"units", int64_t{2}}, {"use_bias", int64_t{1}}});
    InputError eb = build_error(b);
    CHECK(eb.where() == b.arg_at(1, "use_bias"));
    CHECK(contains(eb.what(), "true or false"));

    Spec k({8, 8, 1});
    k.add("Conv2D", {{"filters", int64_t{2}}, {"kernel_size", v({3, 3, 3})}});
    InputError ek = build_error(k);
    CHECK(ek.where() == k.arg_at(0, "kernel_size"));
    CHECK(contains(ek.what(), "an integer or a list of two integers, got [3, 3, 3]"));
  }

  TEST_CASE("errors: zero units or filters are impossible values at the argument") {
    Spec s = dense_model({{"units", int64_t{0}}});
    InputError e = build_error(s);
    CHECK(e.where() == s.arg_at(1, "units"));
    CHECK(contains(e.what(), "units must be a positive integer, got 0"));

    Spec c({8, 8, 1});
    c.add("Conv2D", {{"filters", int64_t{0}}, {"kernel_size", int64_t{3}}});
    CHECK(build_error(c).where() == c.arg_at(0, "filters"));

    Spec l({4, 4});
    l.add("LSTM", {{"units", int64_t{-3}}});
    CHECK(build_error(l).where() == l.arg_at(0, "units"));
    // Sizes that would overflow the tensors they shape (4 units, a kernel's area) are refused at the
    // argument.
    Spec huge({4, 4});
    huge.add("LSTM", {{"units", int64_t{1} << 62}});
    CHECK(build_error(huge).where() == huge.arg_at(0, "units"));
    CHECK(
        contains(build_error(huge).what(), "units = 4611686018427387904 is too large (at most 2147483647)"));
    Spec wide({8, 8, 1});
    wide.add("Conv2D", {{"filters", int64_t{2}}, {"kernel_size", std::vector<int64_t>{3, int64_t{1} << 32}}});
    CHECK(contains(build_error(wide).what(), "kernel_size must hold positive integers of at most 1048576"));

    Spec d({4});
    d.add("Dropout", {{"rate", 1.0}});
    InputError ed = build_error(d);
    CHECK(ed.where() == d.arg_at(0, "rate"));
    CHECK(contains(ed.what(), "[0, 1)"));
  }

  TEST_CASE("errors: a kernel larger than its input names the layer and both shapes") {
    Spec s({28, 28, 1});
    s.add("Conv2D", {{"filters", int64_t{8}}, {"kernel_size", int64_t{3}}})
        .add("MaxPooling2D", {{"pool_size", int64_t{8}}})
        .add("Conv2D", {{"filters", int64_t{8}}, {"kernel_size", v({5, 3})}}, "head");
    InputError e = build_error(s);
    CHECK(e.where() == s.arg_at(2, "kernel_size"));
    CHECK(contains(e.what(), "Conv2D layer 'head'"));
    CHECK(contains(e.what(), "kernel_size (5, 3) is larger than its input (None, 3, 3, 8)"));
    CHECK(contains(e.hint(), "padding = \"same\""));

    Spec dil({6, 6, 1});
    dil.add("Conv2D", {{"filters", int64_t{1}}, {"kernel_size", int64_t{3}}, {"dilation_rate", int64_t{3}}});
    CHECK(contains(build_error(dil).what(), "7 x 7 pixels"));

    Spec pool({3, 3, 2});
    pool.add("AveragePooling2D", {{"pool_size", int64_t{4}}});
    InputError ep = build_error(pool);
    CHECK(ep.where() == pool.arg_at(0, "pool_size"));
    CHECK(contains(ep.what(), "pool_size (4, 4) is larger than its input (None, 3, 3, 2)"));
  }

  TEST_CASE("errors: Add of mismatched shapes names both inputs and shapes") {
    Spec s({8});
    s.add("Dense", {{"units", int64_t{4}}}, "a", {"input"})
        .add("Dense", {{"units", int64_t{5}}}, "b", {"input"})
        .add("Add", {}, "sum", {"a", "b"});
    InputError e = build_error(s);
    CHECK(e.where() == s.layer_at(2));
    CHECK(contains(e.what(), "Add layer 'sum'"));
    CHECK(contains(e.what(), "'a' gives (None, 4) and 'b' gives (None, 5)"));

    Spec one({8});
    one.add("Add", {}, "lonely", {"input"});
    CHECK(contains(build_error(one).what(), "takes at least 2 inputs, got 1"));

    Spec cat({4, 4, 2});
    cat.add("Conv2D", {{"filters", int64_t{3}}, {"kernel_size", int64_t{2}}}, "c")
        .add("Concatenate", {}, "j", {"c", "input"});
    InputError ec = build_error(cat);
    CHECK(ec.where() == cat.layer_at(1));
    CHECK(contains(ec.what(), "'c' gives (None, 3, 3, 3) and 'input' gives (None, 4, 4, 2)"));
  }

  TEST_CASE("errors: unknown, later and duplicate names in the graph form") {
    Spec s({8});
    s.add("Dense", {{"units", int64_t{4}}}, "encoder")
        .add("Dense", {{"units", int64_t{2}}}, "head", {"encodr"});
    InputError e = build_error(s);
    CHECK(e.where() == s.layer_at(1));
    CHECK(contains(e.what(), "layer 'head' takes an unknown input 'encodr'"));
    CHECK(contains(e.hint(), "did you mean 'encoder'?"));

    Spec later({8});
    later.add("Dense", {{"units", int64_t{4}}}, "a", {"b"})
        .add("Dense", {{"units", int64_t{2}}}, "b", {"input"});
    CHECK(contains(build_error(later).what(), "defined after it"));

    Spec twice({8});
    twice.add("Dense", {{"units", int64_t{4}}}, "x").add("Dense", {{"units", int64_t{2}}}, "x");
    InputError et = build_error(twice);
    CHECK(et.where() == twice.layer_at(1));
    CHECK(contains(et.hint(), twice.layer_at(0)));

    Spec slash({8});
    slash.add("Dense", {{"units", int64_t{4}}}, "block/dense");
    CHECK(build_error(slash).where() == slash.layer_at(0));

    Spec unused({8});
    unused.add("Dense", {{"units", int64_t{4}}}, "dead", {"input"})
        .add("Dense", {{"units", int64_t{2}}}, "out", {"input"});
    InputError eu = build_error(unused);
    CHECK(eu.where() == unused.layer_at(0));
    CHECK(contains(eu.what(), "the output of layer 'dead' is not used"));
  }

  TEST_CASE("errors: bad choices, activations and initializers get a did-you-mean at the argument") {
    Spec a = dense_model({{"units", int64_t{2}}, {"activation", std::string("rellu")}});
    InputError ea = build_error(a);
    CHECK(ea.where() == a.arg_at(1, "activation"));
    CHECK(contains(ea.hint(), "did you mean 'relu'?"));

    Spec p({8, 8, 1});
    p.add("Conv2D", {{"filters", int64_t{2}}, {"kernel_size", int64_t{3}}, {"padding", std::string("smae")}});
    InputError ep = build_error(p);
    CHECK(ep.where() == p.arg_at(0, "padding"));
    CHECK(contains(ep.what(), "padding must be \"valid\" or \"same\""));
    CHECK(ep.hint() == "did you mean 'same'?");

    Spec i = dense_model({{"units", int64_t{2}}, {"kernel_initializer", std::string("glorot_unifrom")}});
    InputError ei = build_error(i);
    CHECK(ei.where() == i.arg_at(1, "kernel_initializer"));
    CHECK(contains(ei.hint(), "did you mean 'glorot_uniform'?"));

    Spec r({4, 3});
    r.add("GRU", {{"units", int64_t{2}}, {"activation", std::string("softmax")}});
    CHECK(build_error(r).where() == r.arg_at(0, "activation"));
  }

  TEST_CASE("errors: shapes and dtypes a layer cannot take") {
    Spec missing({8});
    missing.add("Dense", {{"activation", std::string("relu")}});
    InputError em = build_error(missing);
    CHECK(em.where() == missing.layer_at(0));
    CHECK(contains(em.what(), "the argument 'units' is required"));

    Spec conv({784});
    conv.add("Conv2D", {{"filters", int64_t{2}}, {"kernel_size", int64_t{3}}});
    InputError ec = build_error(conv);
    CHECK(ec.where() == conv.layer_at(0));
    CHECK(contains(ec.what(), "needs an image input (None, height, width, channels), got (None, 784)"));

    Spec rnn({28, 28, 1});
    rnn.add("LSTM", {{"units", int64_t{8}}});
    CHECK(contains(build_error(rnn).what(), "needs a sequence input"));

    Spec ids({10}, "int64");
    ids.add("Dense", {{"units", int64_t{2}}});
    CHECK(contains(build_error(ids).hint(), "Embedding"));

    Spec floats({10});
    floats.add("Embedding", {{"input_dim", int64_t{5}}, {"output_dim", int64_t{2}}});
    CHECK(contains(build_error(floats).hint(), "dtype = \"int64\""));

    Spec reshape({10});
    reshape.add("Reshape", {{"target_shape", v({3, -1})}});
    InputError er = build_error(reshape);
    CHECK(er.where() == reshape.arg_at(0, "target_shape"));
    CHECK(contains(er.what(), "cannot reshape (None, 10)"));

    Spec bn({4, 4, 3});
    bn.add("BatchNormalization", {{"axis", int64_t{1}}});
    InputError eb = build_error(bn);
    CHECK(eb.where() == bn.arg_at(0, "axis"));
    CHECK(contains(eb.what(), "the channel axis of (None, 4, 4, 3) (axis = -1) is the only one"));

    Spec ln({4, 3});
    ln.add("LayerNormalization", {{"axis", int64_t{0}}});  // the batch
    CHECK(build_error(ln).where() == ln.arg_at(0, "axis"));

    Spec groups({4, 4, 3});
    groups.add("Conv2D", {{"filters", int64_t{4}}, {"kernel_size", int64_t{1}}, {"groups", int64_t{2}}});
    CHECK(build_error(groups).where() == groups.arg_at(0, "groups"));

    Spec input({28, 0});
    input.add("Flatten");
    CHECK(build_error(input).where() == "model.toml:2:9");

    Spec dtype({4}, "float16");
    dtype.add("Flatten");
    CHECK(build_error(dtype).where() == "model.toml:2:9");
  }
}

TEST_SUITE("regularizers") {
  using trainer::models::parse_regularizer;
  using trainer::models::Regularizer;

  Regularizer parse(const std::string& text) {
    return parse_regularizer(
        text, [&](const std::string& what, const std::string&) { throw std::runtime_error(what); });
  }

  TEST_CASE("Keras's forms and factors") {
    CHECK(parse("None").l1 == 0);
    CHECK(parse("None").l2 == 0);
    CHECK(parse("l2").l2 == 0.01);
    CHECK(parse("l2").l1 == 0);
    CHECK(parse("L1").l1 == 0.01);
    CHECK(parse("l2(1e-4)").l2 == 1e-4);
    CHECK(parse(" l1 ( l1 = 0.5 ) ").l1 == 0.5);
    Regularizer both = parse("l1_l2(0.1, 0.2)");
    CHECK(both.l1 == 0.1);
    CHECK(both.l2 == 0.2);
    Regularizer named = parse("L1L2(l2=3)");
    CHECK(named.l1 == 0);
    CHECK(named.l2 == 3);
    CHECK(trainer::models::regularizer_arg("recurrent_initializer") == "recurrent_regularizer");
  }

  TEST_CASE("what is not a regularizer fails") {
    for (const char* bad : {"l3", "l2(", "l2()", "l2(1, 2)", "l1_l2", "l1_l2(l1=1, l1=2)", "l2(-0.1)",
                            "l2(nan)", "l1(l2=0.1)", "none(1)"})
      CHECK_THROWS_AS(parse(bad), std::runtime_error);
  }
}
