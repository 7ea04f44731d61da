// Elementwise ops: numpy-broadcasting arithmetic, activations, Identity, Cast and Where, with their gradient
// rules. Activation gradients are private ops (ReluGrad, ...) so each is one fused kernel instead of a chain.
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

std::vector<OpExample> binary_examples(double lo_a, double hi_a, double lo_b, double hi_b) {
  return {
      example("same shape", {random_tensor({2, 3}, lo_a, hi_a, 1), random_tensor({2, 3}, lo_b, hi_b, 2)}),
      example("broadcast", {random_tensor({2, 3, 4}, lo_a, hi_a, 3), random_tensor({3, 1}, lo_b, hi_b, 4)}),
      example("scalar", {random_tensor({4}, lo_a, hi_a, 5), random_tensor({}, lo_b, hi_b, 6)}),
      example("both broadcast", {random_tensor({2, 1}, lo_a, hi_a, 7), random_tensor({1, 3}, lo_b, hi_b, 8)}),
  };
}

std::vector<OpExample> unary_examples(double lo, double hi) {
  return {example("matrix", {random_tensor({3, 5}, lo, hi, 11)}),
          example("scalar", {random_tensor({}, lo, hi, 12)})};
}

OpSchema binary(const char* name, GradFn grad, double lo_a, double hi_a, double lo_b, double hi_b) {
  OpSchema s(name);
  s.inputs(2, 2).infer(infer_broadcast).grad(std::move(grad)).inplace(0, 0).examples([=] {
    return binary_examples(lo_a, hi_a, lo_b, hi_b);
  });
  return s;
}

OpSchema unary(const char* name, GradFn grad, double lo, double hi) {
  OpSchema s(name);
  s.inputs(1, 1).infer(infer_like_input0).grad(std::move(grad)).inplace(0, 0).examples([=] {
    return unary_examples(lo, hi);
  });
  return s;
}

// (dy, x-or-y) -> dx, same shapes.
OpSchema activation_grad(const char* name) {
  OpSchema s(name, kPrivateDomain);
  s.inputs(2, 2)
      .infer([](InferContext& c) {
        if (c.shape(0) != c.shape(1)) c.fail("dy and x must have the same shape");
        infer_like_input0(c);
      })
      .non_differentiable(kGradOpReason)
      .inplace(0, 0);
  return s;
}

// An activation whose gradient is one private op of (dy, x), `grad_op`, taking the forward's float
// attributes.
OpSchema activation(const char* name, const char* grad_op, double lo, double hi,
                    std::vector<std::pair<std::string, float>> attrs = {}) {
  OpSchema s = unary(
      name,
      [grad_op, attrs](GradContext& c) {
        Attributes a;
        for (const auto& [n, v] : attrs) a.set(n, c.attrs().f(n));
        c.set_grad(0, c.op(grad_op, {c.dy(), c.input(0)}, std::move(a)));
      },
      lo, hi);
  for (const auto& [n, v] : attrs) s.attr(n, v);
  return s;
}

OpSchema activation_grad_with(const char* name, std::vector<std::pair<std::string, float>> attrs) {
  OpSchema s = activation_grad(name);
  for (const auto& [n, v] : attrs) s.attr(n, v);
  return s;
}

// Greater, Less, ...: broadcasting, a bool result, no gradient.
OpSchema comparison(const char* name) {
  OpSchema s(name);
  s.inputs(2, 2)
      .infer([](InferContext& c) {
        c.expect_same_dtype(0, 1);
        Shape out;
        if (!broadcast_shapes(c.shape(0), c.shape(1), &out))
          c.fail("shapes {} and {} do not broadcast", c.shape(0).str(), c.shape(1).str());
        c.set_output(0, DType::boolean, out);
      })
      .non_differentiable("a comparison: its result is a bool")
      .examples([] {
        auto e = binary_examples(-1, 1, -1, 1);
        // Equal operands, so that equality is exercised too.
        Tensor t = random_tensor({2, 3}, -1, 1, 9);
        e.push_back(example("ties", {t, t}));
        for (auto& x : e) x.grad_check = false;
        return e;
      });
  return s;
}

// Max and Min of two operands: the gradient goes to the first where it wins or ties (a >= b for Max), to
// the second elsewhere, as TensorFlow splits it.
OpSchema extremum(const char* name, const char* first_wins) {
  return binary(
      name,
      [first_wins](GradContext& c) {
        ValueId first = c.op(first_wins, {c.input(0), c.input(1)});
        ValueId zero = c.scalar(0, c.dtype(c.dy()));
        if (c.needs_grad(0))
          c.set_grad(0, c.reduce_to(c.op("Where", {first, c.dy(), zero}), c.shape(c.input(0))));
        if (c.needs_grad(1))
          c.set_grad(1, c.reduce_to(c.op("Where", {first, zero, c.dy()}), c.shape(c.input(1))));
      },
      -1, 1, -1, 1);
}

// Clip's optional min and max: scalars of x's dtype.
void infer_clip_bounds(InferContext& c, int first) {
  for (int i = first; i < first + 2; ++i) {
    if (!c.has_input(i)) continue;
    if (c.dtype(i) != c.dtype(0))
      c.fail("{} is {}, the input is {}", i == first ? "min" : "max", dtype_name(c.dtype(i)),
             dtype_name(c.dtype(0)));
    if (c.shape(i).numel() != 1 || c.rank(i) > 1)
      c.fail("{} must be a scalar, got shape {}", i == first ? "min" : "max", c.shape(i).str());
  }
}

std::vector<OpExample> clip_examples() {
  Tensor lo = Tensor::scalar<double>(-0.5), hi = Tensor::scalar<double>(0.7);
  OpExample both = example("min and max", {random_tensor({3, 5}, -2, 2, 41), lo, hi});
  OpExample only_max = example("max only", {random_tensor({4, 3}, -2, 2, 42), lo, hi});
  only_max.absent[1] = true;
  OpExample only_min = example("min only", {random_tensor({7}, -2, 2, 43), lo});
  OpExample neither = example("no bounds", {random_tensor({2, 2}, -2, 2, 44)});
  // min > max: every output is max, as ONNX's min(max(x, min), max) gives (and no gradient flows).
  OpExample crossed = example("min above max", {random_tensor({5}, -2, 2, 45), hi, lo});
  crossed.grad_check = false;
  std::vector<OpExample> e{both, only_max, only_min, neither, crossed};
  for (auto& x : e)
    for (size_t i = 1; i < x.inputs.size(); ++i) x.constant[i] = true;
  return e;
}

}  // namespace

void register_elementwise_ops(OpRegistry& r) {
  r.add(binary(
      "Add",
      [](GradContext& c) {
        c.set_grad(0, c.reduce_to(c.dy(), c.shape(c.input(0))));
        c.set_grad(1, c.reduce_to(c.dy(), c.shape(c.input(1))));
      },
      -1, 1, -1, 1));
  r.add(binary(
      "Sub",
      [](GradContext& c) {
        c.set_grad(0, c.reduce_to(c.dy(), c.shape(c.input(0))));
        if (c.needs_grad(1)) c.set_grad(1, c.reduce_to(c.op("Neg", {c.dy()}), c.shape(c.input(1))));
      },
      -1, 1, -1, 1));
  r.add(binary(
      "Mul",
      [](GradContext& c) {
        if (c.needs_grad(0))
          c.set_grad(0, c.reduce_to(c.op("Mul", {c.dy(), c.input(1)}), c.shape(c.input(0))));
        if (c.needs_grad(1))
          c.set_grad(1, c.reduce_to(c.op("Mul", {c.dy(), c.input(0)}), c.shape(c.input(1))));
      },
      -1, 1, -1, 1));
  r.add(binary(
      "Div",
      [](GradContext& c) {
        if (c.needs_grad(0))
          c.set_grad(0, c.reduce_to(c.op("Div", {c.dy(), c.input(1)}), c.shape(c.input(0))));
        if (c.needs_grad(1)) {
          // d(a/b)/db = -(a/b)/b = -y/b
          ValueId t = c.op("Mul", {c.dy(), c.op("Div", {c.output(0), c.input(1)})});
          c.set_grad(1, c.reduce_to(c.op("Neg", {t}), c.shape(c.input(1))));
        }
      },
      -1, 1, 0.5, 2));
  r.add(binary(
      "Pow",
      [](GradContext& c) {
        DType t = c.dtype(c.input(0));
        if (c.needs_grad(0)) {
          ValueId bm1 = c.op("Sub", {c.input(1), c.scalar(1, t)});
          ValueId d = c.op("Mul", {c.dy(), c.op("Mul", {c.input(1), c.op("Pow", {c.input(0), bm1})})});
          c.set_grad(0, c.reduce_to(d, c.shape(c.input(0))));
        }
        if (c.needs_grad(1)) {
          ValueId d = c.op("Mul", {c.dy(), c.op("Mul", {c.output(0), c.op("Log", {c.input(0)})})});
          c.set_grad(1, c.reduce_to(d, c.shape(c.input(1))));
        }
      },
      0.5, 2, -1, 2));

  {
    // a = q b + y with q a whole number (floor(a / b) or, under fmod, its truncation), so dy/da = 1 and
    // dy/db = -q away from the jumps; q is recovered exactly as round((a - y) / b).
    OpSchema s = binary(
        "Mod",
        [](GradContext& c) {
          if (c.needs_grad(0)) c.set_grad(0, c.reduce_to(c.dy(), c.shape(c.input(0))));
          if (c.needs_grad(1)) {
            ValueId q = c.op("Round", {c.op("Div", {c.op("Sub", {c.input(0), c.output(0)}), c.input(1)})});
            c.set_grad(1, c.reduce_to(c.op("Neg", {c.op("Mul", {c.dy(), q})}), c.shape(c.input(1))));
          }
        },
        -3, 3, 0.7, 1.9);
    s.since(13).attr("fmod", int64_t{0}).examples([] {
      auto e = binary_examples(-3, 3, 0.7, 1.9);
      OpExample f = e[0];
      f.label = "fmod with negative divisors";
      f.inputs[1] = random_tensor({2, 3}, -1.9, -0.7, 9);
      f.attrs.set("fmod", int64_t{1});
      e.push_back(f);
      OpExample i = example("int32 mixed signs", {Tensor::from<int32_t>({6}, {-7, 7, -7, 7, 9, -9}),
                                                  Tensor::from<int32_t>({6}, {3, 3, -3, -3, 0, 4})});
      i.grad_check = false;
      e.push_back(i);
      OpExample j = i;
      j.label = "int32 mixed signs, fmod";
      j.attrs.set("fmod", int64_t{1});
      e.push_back(j);
      return e;
    });
    r.add(std::move(s));
  }
  r.add(unary(
      "Neg", [](GradContext& c) { c.set_grad(0, c.op("Neg", {c.dy()})); }, -1, 1));
  r.add(unary(
      "Exp",
      [](GradContext& c) {
        c.set_grad(0, c.op("Mul", {c.dy(), c.output(0)}));
      },
      -1, 1));
  r.add(unary(
      "Log",
      [](GradContext& c) {
        c.set_grad(0, c.op("Div", {c.dy(), c.input(0)}));
      },
      0.5, 2));
  r.add(unary(
      "Sqrt",
      [](GradContext& c) {
        ValueId half = c.scalar(0.5, c.dtype(c.input(0)));
        c.set_grad(0, c.op("Div", {c.op("Mul", {c.dy(), half}), c.output(0)}));
      },
      0.5, 2));
  r.add(unary(
      "Relu",
      [](GradContext& c) {
        c.set_grad(0, c.op("ReluGrad", {c.dy(), c.output(0)}));
      },
      -1, 1));
  r.add(unary(
      "Sigmoid",
      [](GradContext& c) {
        c.set_grad(0, c.op("SigmoidGrad", {c.dy(), c.output(0)}));
      },
      -3, 3));
  r.add(unary(
      "Tanh",
      [](GradContext& c) {
        c.set_grad(0, c.op("TanhGrad", {c.dy(), c.output(0)}));
      },
      -2, 2));
  {
    OpSchema s = unary(
        "LeakyRelu",
        [](GradContext& c) {
          c.set_grad(0, c.op("LeakyReluGrad", {c.dy(), c.input(0)}, {{"alpha", c.attrs().f("alpha")}}));
        },
        -1, 1);
    s.attr("alpha", 0.01f).examples([] {
      auto e = unary_examples(-1, 1);
      e[0].attrs.set("alpha", 0.2f);
      return e;
    });
    r.add(std::move(s));
  }
  {
    OpSchema s = unary(
        "Gelu",
        [](GradContext& c) {
          c.set_grad(0,
                     c.op("GeluGrad", {c.dy(), c.input(0)}, {{"approximate", c.attrs().s("approximate")}}));
        },
        -2, 2);
    s.since(20)
        .attr("approximate", std::string("none"))
        .infer([](InferContext& c) {
          const std::string& a = c.attrs().s("approximate");
          if (a != "none" && a != "tanh") c.fail("approximate must be 'none' or 'tanh', got '{}'", a);
          infer_like_input0(c);
        })
        .examples([] {
          auto e = unary_examples(-2, 2);
          OpExample t = e[0];
          t.label = "tanh";
          t.attrs.set("approximate", std::string("tanh"));
          e.push_back(t);
          return e;
        });
    r.add(std::move(s));
  }
  r.add(extremum("Max", "GreaterOrEqual").since(13));
  r.add(extremum("Min", "LessOrEqual").since(13));
  r.add(comparison("Greater").since(13));
  r.add(comparison("Less").since(13));
  r.add(comparison("Equal").since(13));
  r.add(comparison("GreaterOrEqual").since(16));
  r.add(comparison("LessOrEqual").since(16));
  r.add(unary(
            "Abs",
            [](GradContext& c) {
              c.set_grad(0, c.op("AbsGrad", {c.dy(), c.input(0)}));
            },
            -1, 1)
            .since(13));
  r.add(unary(
            "Reciprocal",
            [](GradContext& c) {
              // d(1/x)/dx = -1/x^2 = -y^2
              ValueId y = c.output(0);
              c.set_grad(0, c.op("Neg", {c.op("Mul", {c.dy(), c.op("Mul", {y, y})})}));
            },
            0.5, 2)
            .since(13));
  r.add(activation("Erf", "ErfGrad", -2, 2).since(13));
  r.add(unary(
            "Sin",
            [](GradContext& c) {
              c.set_grad(0, c.op("Mul", {c.dy(), c.op("Cos", {c.input(0)})}));
            },
            -3, 3)
            .since(7));
  r.add(unary(
            "Cos",
            [](GradContext& c) {
              c.set_grad(0, c.op("Neg", {c.op("Mul", {c.dy(), c.op("Sin", {c.input(0)})})}));
            },
            -3, 3)
            .since(7));
  // Inverse trigonometric and hyperbolic functions; each gradient is dy times its derivative in x, written
  // with Sqrt and Div. The examples stay inside the domains, away from the poles of the derivatives.
  {
    auto one_minus_square = [](GradContext& c) {  // 1 - x^2
      ValueId x = c.input(0);
      return c.op("Sub", {c.scalar(1, c.dtype(x)), c.op("Mul", {x, x})});
    };
    auto square_plus = [](GradContext& c, double k) {  // x^2 + k
      ValueId x = c.input(0);
      return c.op("Add", {c.op("Mul", {x, x}), c.scalar(k, c.dtype(x))});
    };
    r.add(unary(
              "Asin",
              [=](GradContext& c) {
                c.set_grad(0, c.op("Div", {c.dy(), c.op("Sqrt", {one_minus_square(c)})}));
              },
              -0.8, 0.8)
              .since(7));
    r.add(unary(
              "Acos",
              [=](GradContext& c) {
                c.set_grad(0, c.op("Neg", {c.op("Div", {c.dy(), c.op("Sqrt", {one_minus_square(c)})})}));
              },
              -0.8, 0.8)
              .since(7));
    r.add(unary(
              "Atan",
              [=](GradContext& c) {
                c.set_grad(0, c.op("Div", {c.dy(), square_plus(c, 1)}));
              },
              -3, 3)
              .since(7));
    r.add(unary(
              "Asinh",
              [=](GradContext& c) {
                c.set_grad(0, c.op("Div", {c.dy(), c.op("Sqrt", {square_plus(c, 1)})}));
              },
              -3, 3)
              .since(9));
    r.add(unary(
              "Acosh",
              [=](GradContext& c) {
                c.set_grad(0, c.op("Div", {c.dy(), c.op("Sqrt", {square_plus(c, -1)})}));
              },
              1.2, 3)
              .since(9));
    r.add(unary(
              "Atanh",
              [=](GradContext& c) {
                c.set_grad(0, c.op("Div", {c.dy(), one_minus_square(c)}));
              },
              -0.8, 0.8)
              .since(9));
  }
  // Piecewise-constant ops: no gradient flows through them (zero almost everywhere), as in PyTorch.
  for (const char* name : {"Floor", "Ceil", "Round", "Sign"})
    r.add(OpSchema(name)
              .since(13)
              .inputs(1, 1)
              .infer(infer_like_input0)
              .non_differentiable("piecewise constant: its derivative is zero almost everywhere")
              .inplace(0, 0)
              .examples([] {
                auto e = unary_examples(-3, 3);
                e.push_back(example("halves and ties",
                                    {Tensor::from<double>({6}, {-2.5, -1.5, -0.5, 0.5, 1.5, 2.5})}));
                for (auto& x : e) x.grad_check = false;
                return e;
              }));
  r.add(activation("Softplus", "SoftplusGrad", -3, 3));
  r.add(activation("Softsign", "SoftsignGrad", -3, 3));
  r.add(OpSchema("PRelu")
            .since(16)
            .inputs(2, 2)
            .infer([](InferContext& c) {
              c.expect_same_dtype(0, 1);
              Shape out;
              if (!broadcast_shapes(c.shape(0), c.shape(1), &out) || out != c.shape(0))
                c.fail("slope {} does not broadcast to the input {}", c.shape(1).str(), c.shape(0).str());
              infer_like_input0(c);
            })
            .grad([](GradContext& c) {
              // As PyTorch: the input's gradient passes where x > 0 and is scaled by the slope elsewhere,
              // where the slope's gradient is x dy.
              ValueId x = c.input(0), slope = c.input(1);
              ValueId positive = c.op("Greater", {x, c.scalar(0, c.dtype(x))});
              if (c.needs_grad(0))
                c.set_grad(0, c.op("Where", {positive, c.dy(), c.op("Mul", {c.dy(), slope})}));
              if (c.needs_grad(1)) {
                ValueId g = c.op("Where", {positive, c.scalar(0, c.dtype(x)), c.op("Mul", {c.dy(), x})});
                c.set_grad(1, c.reduce_to(g, c.shape(slope)));
              }
            })
            .inplace(0, 0)
            .examples([] {
              return std::vector<OpExample>{
                  example("per channel",
                          {random_tensor({2, 3, 4}, -1, 1, 51), random_tensor({3, 1}, 0, 0.5, 52)}),
                  example("scalar slope", {random_tensor({5}, -1, 1, 53), random_tensor({}, 0, 0.5, 54)}),
                  example("same shape",
                          {random_tensor({2, 3}, -1, 1, 55), random_tensor({2, 3}, -0.5, 0.5, 56)}),
              };
            }));
  {
    OpSchema s = activation("Elu", "EluGrad", -2, 2, {{"alpha", 1.0f}}).since(6);
    s.examples([] {
      auto e = unary_examples(-2, 2);
      e[0].attrs.set("alpha", 0.5f);
      return e;
    });
    r.add(std::move(s));
  }
  r.add(activation("Selu", "SeluGrad", -2, 2,
                   {{"alpha", 1.67326319217681884765625f}, {"gamma", 1.05070102214813232421875f}})
            .since(6));
  {
    OpSchema s =
        activation("HardSigmoid", "HardSigmoidGrad", -4, 4, {{"alpha", 0.2f}, {"beta", 0.5f}}).since(6);
    s.examples([] {
      auto e = unary_examples(-4, 4);
      e[0].attrs.set("alpha", 0.25f);
      e[0].attrs.set("beta", 0.25f);
      return e;
    });
    r.add(std::move(s));
  }
  r.add(activation("HardSwish", "HardSwishGrad", -4, 4).since(14));
  r.add(OpSchema("Clip")
            .since(13)
            .inputs(1, 3)
            .no_grad_inputs({1, 2})
            .infer([](InferContext& c) {
              infer_clip_bounds(c, 1);
              infer_like_input0(c);
            })
            .grad([](GradContext& c) {
              std::vector<ValueId> in{c.dy(), c.input(0)};
              for (int i = 1; i < 3; ++i) in.push_back(c.input(i));
              while (in.back() == kNoValue) in.pop_back();
              c.set_grad(0, c.op("ClipGrad", in));
            })
            .inplace(0, 0)
            .examples(clip_examples));
  r.add(OpSchema("ClipGrad", kPrivateDomain)
            .inputs(2, 4)
            .infer([](InferContext& c) {
              if (c.shape(0) != c.shape(1)) c.fail("dy and x must have the same shape");
              infer_clip_bounds(c, 2);
              infer_like_input0(c);
            })
            .non_differentiable(kGradOpReason)
            .inplace(0, 0));
  r.add(activation_grad("AbsGrad"));
  r.add(activation_grad("ErfGrad"));
  r.add(activation_grad("SoftplusGrad"));
  r.add(activation_grad("SoftsignGrad"));
  r.add(activation_grad_with("EluGrad", {{"alpha", 1.0f}}));
  r.add(activation_grad_with("SeluGrad",
                             {{"alpha", 1.67326319217681884765625f}, {"gamma", 1.05070102214813232421875f}}));
  r.add(activation_grad_with("HardSigmoidGrad", {{"alpha", 0.2f}, {"beta", 0.5f}}));
  r.add(activation_grad("HardSwishGrad"));
  r.add(activation_grad("ReluGrad"));
  r.add(activation_grad("SigmoidGrad"));
  r.add(activation_grad("TanhGrad"));
  r.add(activation_grad("LeakyReluGrad").attr("alpha", 0.01f));
  r.add(activation_grad("GeluGrad").attr("approximate", std::string("none")));

  r.add(OpSchema("Identity")
            .inputs(1, 1)
            .infer(infer_like_input0)
            .view(0, 0)
            .grad([](GradContext& c) { c.set_grad(0, c.dy()); })
            .examples([] { return unary_examples(-1, 1); }));

  r.add(
      OpSchema("Cast")
          .inputs(1, 1)
          .attr_required("to", AttrType::i)
          .attr("saturate", int64_t{1})
          .infer([](InferContext& c) {
            c.set_output(0, dtype_from_onnx(static_cast<int>(c.attrs().i("to"))), c.shape(0));
          })
          .grad([](GradContext& c) {
            DType from = c.dtype(c.input(0));
            if (!is_float(from) || !is_float(c.dtype(c.output(0)))) return;
            c.set_grad(0, c.op("Cast", {c.dy()}, {{"to", int64_t{dtype_to_onnx(from)}}}));
          })
          .examples([] {
            OpExample same = example("f64 to f64", {random_tensor({2, 3}, -2, 2, 21)}, {{"to", int64_t{11}}});
            OpExample narrow =
                example("f64 to f32", {random_tensor({2, 3}, -2, 2, 22)}, {{"to", int64_t{1}}});
            narrow.grad_check = false;  // rounding to f32 defeats an f64 finite difference
            OpExample to_int = example("f64 to i64", {random_tensor({4}, -5, 5, 23)}, {{"to", int64_t{7}}});
            to_int.grad_check = false;
            return std::vector<OpExample>{same, narrow, to_int};
          }));

  r.add(OpSchema("Where")
            .inputs(3, 3)
            .no_grad_inputs({0})
            .infer([](InferContext& c) {
              if (c.dtype(0) != DType::boolean)
                c.fail("condition must be bool, got {}", dtype_name(c.dtype(0)));
              c.expect_same_dtype(1, 2);
              Shape s1, s2;
              if (!broadcast_shapes(c.shape(0), c.shape(1), &s1) || !broadcast_shapes(s1, c.shape(2), &s2))
                c.fail("shapes do not broadcast");
              c.set_output(0, c.dtype(1), s2);
            })
            .grad([](GradContext& c) {
              ValueId zero = c.scalar(0, c.dtype(c.dy()));
              if (c.needs_grad(1))
                c.set_grad(1, c.reduce_to(c.op("Where", {c.input(0), c.dy(), zero}), c.shape(c.input(1))));
              if (c.needs_grad(2))
                c.set_grad(2, c.reduce_to(c.op("Where", {c.input(0), zero, c.dy()}), c.shape(c.input(2))));
            })
            .examples([] {
              Tensor cond = Tensor::from<bool>({2, 3}, {true, false, true, false, false, true});
              OpExample e = example("broadcast",
                                    {cond, random_tensor({2, 3}, -1, 1, 31), random_tensor({3}, -1, 1, 32)});
              e.constant[0] = true;
              return std::vector<OpExample>{e};
            }));
}

}  // namespace trainer::engine::ops
