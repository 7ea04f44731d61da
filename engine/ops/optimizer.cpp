// Optimizer update ops: ONNX's training-domain Adam, Momentum and Adagrad (variadic over tensors), and
// private single-tensor updates for what ONNX lacks (AdamW's decoupled decay, Keras's RMSprop, Adamax, Nadam,
// Lion and Adadelta, stateless SGD). Every op takes (R, T, X..., G..., S1..., Sk...) and returns (X_new...,
// S1_new..., Sk_new...): R is the learning rate (float scalar), T the int64 update count. Training graphs
// bind each output onto its input's buffer.
#include <string>
#include <tuple>

#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"

namespace trainer::engine::ops {

namespace {

const char* kUpdateReason = "an optimizer update";

// Checks the (R, T, X..., G..., S1..., Sk...) layout with `slots` state tensors per X and sets the outputs
// (X_new..., S1_new..., Sk_new...). Returns the number of updated tensors.
int infer_update(InferContext& c, int slots) {
  int per = 2 + slots;
  int nin = c.num_inputs();
  if (nin < 2 + per || (nin - 2) % per != 0)
    c.fail("expects R, T and then {} tensors per updated value (X, G and {} state), got {} inputs", per,
           slots, nin);
  int n = (nin - 2) / per;
  if (c.num_outputs() != (1 + slots) * n)
    c.fail("updates {} tensors, so it has {} outputs, not {}", n, (1 + slots) * n, c.num_outputs());
  if (!c.has_input(0) || !c.has_input(1)) c.fail("R and T are required");
  if (!is_float(c.dtype(0)) || c.shape(0).numel() != 1)
    c.fail("R (the learning rate) must be a float scalar, got {} {}", dtype_name(c.dtype(0)),
           c.shape(0).str());
  if (c.dtype(1) != DType::i64 || c.shape(1).numel() != 1)
    c.fail("T (the update count) must be an int64 scalar, got {} {}", dtype_name(c.dtype(1)),
           c.shape(1).str());
  DType t = c.dtype(2);
  if (t != DType::f32 && t != DType::f64) c.fail("updated tensors must be f32 or f64, got {}", dtype_name(t));
  for (int j = 0; j < n; ++j) {
    int x = 2 + j;
    for (int k = 1; k < per; ++k) {
      int i = 2 + k * n + j;
      if (!c.has_input(i)) c.fail("input {} is missing", i);
      if (c.dtype(i) != t || c.shape(i) != c.shape(x))
        c.fail("input {} ({} {}) must match X {} ({} {})", i, dtype_name(c.dtype(i)), c.shape(i).str(), j,
               dtype_name(c.dtype(x)), c.shape(x).str());
    }
    for (int k = 0; k <= slots; ++k) c.set_output(k * n + j, t, c.shape(x));
  }
  return n;
}

OpSchema update_op(const char* name, const char* domain, int slots) {
  OpSchema s(name, domain);
  s.inputs(2 + (2 + slots), -1)
      .outputs(1 + slots, -1)
      .non_differentiable(kUpdateReason)
      .infer([slots](InferContext& c) { infer_update(c, slots); });
  return s;
}

Tensor lr(double v) {
  return Tensor::scalar<float>(static_cast<float>(v));
}
Tensor step(int64_t t) {
  return Tensor::scalar<int64_t>(t);
}

// One updated tensor of shape `s` with `slots` state tensors; second moments stay positive.
std::vector<Tensor> update_inputs(double r, int64_t t, const std::vector<Shape>& shapes, int slots,
                                  bool positive_state, uint64_t seed) {
  std::vector<Tensor> in{lr(r), step(t)};
  for (int k = 0; k < 2 + slots; ++k)
    for (const Shape& s : shapes) {
      bool pos = positive_state && k >= 2;
      in.push_back(random_tensor(s, pos ? 0.01 : -1, 1, seed++));
    }
  return in;
}

// RMSprop's centered inputs with the last state (the mean gradient MG) small enough that V - MG^2 > 0, as
// every reachable state has it (MG^2 <= V by Jensen's inequality).
std::vector<Tensor> centered_inputs(int64_t t, const Shape& shape, int slots, uint64_t seed) {
  std::vector<Tensor> in = update_inputs(0.01, t, {shape}, slots, true, seed);
  in.back() = random_tensor(shape, -0.05, 0.05, seed + 100);
  return in;
}

OpExample forward_example(std::string label, std::vector<Tensor> inputs, Attributes attrs, int num_outputs) {
  OpExample e = example(std::move(label), std::move(inputs), std::move(attrs));
  e.num_outputs = num_outputs;
  e.grad_check = false;  // non-differentiable: only the forward run is checked
  return e;
}

}  // namespace

void register_optimizer_ops(OpRegistry& r) {
  // ONNX Adam:
  //   G' = G + norm_coefficient*X;  V = alpha*V + (1-alpha)*G';  H = beta*H + (1-beta)*G'^2
  //   R' = T > 0 ? R*sqrt(1-beta^T)/(1-alpha^T) : R
  //   X = (1-norm_coefficient_post)*(X - R'*V/(sqrt(H)+epsilon))
  // With a 1-based T this is Keras's Adam (epsilon outside the square root).
  r.add(update_op("Adam", kTrainingDomain, 2)
            .doc("Adam update of X with first moment V and second moment H (ONNX training domain)")
            .attr("alpha", 0.9f)
            .attr("beta", 0.999f)
            .attr("epsilon", 1e-6f)
            .attr("norm_coefficient", 0.0f)
            .attr("norm_coefficient_post", 0.0f)
            .examples([] {
              return std::vector<OpExample>{
                  forward_example("one tensor", update_inputs(0.01, 3, {{2, 3}}, 2, true, 1),
                                  {{"norm_coefficient", 0.01f}, {"norm_coefficient_post", 0.001f}}, 3),
                  forward_example("two tensors, first step", update_inputs(0.1, 0, {{4}, {}}, 2, true, 11),
                                  {{"alpha", 0.8f}, {"beta", 0.9f}, {"epsilon", 1e-7f}}, 6),
              };
            }));

  // ONNX Momentum:
  //   G' = G + norm_coefficient*X;  V = alpha*V + (T > 0 ? beta : 1)*G'
  //   standard: X = X - R*V;  nesterov: X = X - R*(G' + alpha*V)
  r.add(update_op("Momentum", kTrainingDomain, 1)
            .doc("SGD with momentum (standard or Nesterov) of X with velocity V (ONNX training domain)")
            .attr_required("alpha", AttrType::f)
            .attr_required("beta", AttrType::f)
            .attr_required("mode", AttrType::s)
            .attr_required("norm_coefficient", AttrType::f)
            .infer([](InferContext& c) {
              const std::string& mode = c.attrs().s("mode");
              if (mode != "standard" && mode != "nesterov")
                c.fail("mode must be 'standard' or 'nesterov', got '{}'", mode);
              infer_update(c, 1);
            })
            .examples([] {
              Attributes std_attrs{{"alpha", 0.9f},
                                   {"beta", 0.5f},
                                   {"mode", std::string("standard")},
                                   {"norm_coefficient", 0.01f}};
              Attributes nesterov{{"alpha", 0.9f},
                                  {"beta", 1.0f},
                                  {"mode", std::string("nesterov")},
                                  {"norm_coefficient", 0.0f}};
              return std::vector<OpExample>{
                  forward_example("standard", update_inputs(0.1, 2, {{3, 2}}, 1, false, 21), std_attrs, 2),
                  forward_example("nesterov, two tensors", update_inputs(0.1, 1, {{3}, {2, 2}}, 1, false, 31),
                                  nesterov, 4),
              };
            }));

  // ONNX Adagrad:
  //   R' = R/(1 + T*decay_factor);  G' = G + norm_coefficient*X;  H = H + G'^2
  //   X = X - R'*G'/(sqrt(H)+epsilon)
  r.add(update_op("Adagrad", kTrainingDomain, 1)
            .doc("Adagrad update of X with accumulated squared gradient H (ONNX training domain)")
            .attr("decay_factor", 0.0f)
            .attr("epsilon", 1e-6f)
            .attr("norm_coefficient", 0.0f)
            .examples([] {
              return std::vector<OpExample>{
                  forward_example("one tensor", update_inputs(0.1, 5, {{5}}, 1, true, 41),
                                  {{"decay_factor", 0.1f}, {"norm_coefficient", 0.001f}}, 2),
                  forward_example("two tensors", update_inputs(0.1, 0, {{2}, {1, 3}}, 1, true, 51), {}, 4),
              };
            }));

  // Keras's Adam and AdamW with decoupled decay, one tensor. Inputs R, T, X, G, M, V[, VMAX]; outputs X_new,
  // M_new, V_new[, VMAX_new].
  //   X = X - R*weight_decay*X  (decoupled decay, scaled by the learning rate)
  //   M = beta1*M + (1-beta1)*G;  V = beta2*V + (1-beta2)*G^2
  //   amsgrad: VMAX = max(VMAX, V), and VMAX takes V's place below
  //   R' = T > 0 ? R*sqrt(1-beta2^T)/(1-beta1^T) : R;  X = X - R'*M/(sqrt(V)+epsilon)
  // ONNX Adam's norm_coefficient_post decays after the step and ignores R, which is not AdamW.
  r.add(OpSchema("AdamWUpdate", kPrivateDomain)
            .doc("Adam with decoupled weight decay and optional AMSGrad, one tensor (Keras semantics)")
            .inputs(6, 7)
            .outputs(3, 4)
            .attr("beta1", 0.9f)
            .attr("beta2", 0.999f)
            .attr("epsilon", 1e-7f)
            .attr("weight_decay", 0.004f)
            .attr("amsgrad", int64_t{0})
            .non_differentiable(kUpdateReason)
            .infer([](InferContext& c) {
              const int slots = c.attrs().i("amsgrad") ? 3 : 2;
              if (c.num_inputs() != 4 + slots)
                c.fail("amsgrad = {} takes {} inputs (R, T, X, G and {} states), got {}",
                       c.attrs().i("amsgrad"), 4 + slots, slots, c.num_inputs());
              infer_update(c, slots);
            })
            .examples([] {
              return std::vector<OpExample>{
                  forward_example("decay", update_inputs(0.01, 4, {{2, 3}}, 2, true, 61),
                                  {{"weight_decay", 0.1f}}, 3),
                  forward_example("amsgrad", update_inputs(0.01, 3, {{5}}, 3, true, 63),
                                  {{"weight_decay", 0.0f}, {"amsgrad", int64_t{1}}}, 4),
              };
            }));

  // Keras's RMSprop, one tensor. Inputs R, T, X, G, V[, MOM][, MG]; outputs X_new, V_new[, MOM_new][,
  // MG_new]. MOM is there when momentum is not 0 (or given with momentum 0), MG when centered is 1.
  //   G' = G + norm_coefficient*X  (L2);  V = rho*V + (1-rho)*G'^2
  //   centered: MG = rho*MG + (1-rho)*G', and the denominator's V becomes V - MG^2
  //   D = R*G'/sqrt(V + epsilon)  (epsilon inside the root, as Keras)
  //   with MOM: MOM = momentum*MOM + D, X = X - MOM;  without: X = X - D
  // T is unused and kept for the common update layout.
  r.add(OpSchema("RMSpropUpdate", kPrivateDomain)
            .doc("RMSprop with optional momentum and centering, one tensor (Keras semantics)")
            .inputs(5, 7)
            .outputs(2, 4)
            .attr("rho", 0.9f)
            .attr("epsilon", 1e-7f)
            .attr("momentum", 0.0f)
            .attr("norm_coefficient", 0.0f)
            .attr("centered", int64_t{0})
            .non_differentiable(kUpdateReason)
            .infer([](InferContext& c) {
              const int centered = c.attrs().i("centered") ? 1 : 0;
              const int states = c.num_inputs() - 4;
              if (states - centered < 1 || states - centered > 2)
                c.fail("centered = {} takes {} to {} inputs, got {}", centered, 5 + centered, 6 + centered,
                       c.num_inputs());
              for (int i = 4; i < c.num_inputs(); ++i)
                if (!c.has_input(i)) c.fail("an absent state input is written by leaving it out");
              if (states - centered == 1 && c.attrs().f("momentum") != 0.0f)
                c.fail("momentum {} needs the MOM input", c.attrs().f("momentum"));
              infer_update(c, states);
            })
            .examples([] {
              return std::vector<OpExample>{
                  forward_example("plain", update_inputs(0.01, 1, {{3, 2}}, 1, true, 71), {{"rho", 0.8f}}, 2),
                  forward_example("momentum", update_inputs(0.01, 2, {{4}}, 2, true, 81),
                                  {{"momentum", 0.9f}, {"norm_coefficient", 0.01f}}, 3),
                  forward_example("centered", centered_inputs(2, {3}, 2, 83), {{"centered", int64_t{1}}}, 3),
                  forward_example("centered momentum", centered_inputs(2, {2, 2}, 3, 85),
                                  {{"centered", int64_t{1}}, {"momentum", 0.5f}}, 4),
              };
            }));

  // Stateless SGD, one tensor. Inputs R, T, X, G; output X_new.
  //   X = X - R*(G + norm_coefficient*X)
  // ONNX's Momentum with alpha = 0 computes the same but needs a velocity buffer the size of X; plain SGD
  // should cost one read of X and G and one write. T is unused and kept for the common update layout.
  r.add(update_op("SGDUpdate", kPrivateDomain, 0)
            .doc("Plain SGD step with optional L2 term, one tensor")
            .inputs(4, 4)
            .outputs(1, 1)
            .attr("norm_coefficient", 0.0f)
            .examples([] {
              return std::vector<OpExample>{
                  forward_example("l2", update_inputs(0.1, 1, {{2, 2}}, 0, false, 91),
                                  {{"norm_coefficient", 0.01f}}, 1),
              };
            }));

  // Keras 3's Adamax, Nadam, Lion, Adadelta and Adagrad, one tensor each. Inputs R, T, X, G, then the states;
  // outputs X_new and the new states. Each first decays X by R*weight_decay*X (Keras 3's decoupled decay).
  //   Adamax (M, U): M = beta1*M + (1-beta1)*G;  U = max(beta2*U, |G|);  X -= R*M / ((1-beta1^T)*(U+eps))
  //   Nadam (M, V): u_t = beta1*(1 - 0.5*0.96^t), P_t = u_1...u_t;  M, V as Adam's;
  //     X -= R*(u_{T+1}*M/(1-P_{T+1}) + (1-u_T)*G/(1-P_T)) / (sqrt(V/(1-beta2^T)) + eps)
  //   Lion (M): X -= R*sign(beta1*M + (1-beta1)*G);  M = beta2*M + (1-beta2)*G
  //   Adadelta (A, D), rho: A = rho*A + (1-rho)*G^2;  d = -sqrt(D+eps)*G/sqrt(A+eps);
  //     D = rho*D + (1-rho)*d^2;  X += R*d
  //   Adagrad (A): A = A + G^2;  X -= R*G/sqrt(A+eps)  (epsilon inside the root; ONNX's Adagrad, above, and
  //     Keras 2 put it outside)
  for (const auto& [name, slots, doc] :
       {std::tuple<const char*, int, const char*>{"AdamaxUpdate", 2, "Adamax (Keras 3), one tensor"},
        std::tuple<const char*, int, const char*>{"NadamUpdate", 2, "Nadam (Keras 3), one tensor"},
        std::tuple<const char*, int, const char*>{"LionUpdate", 1, "Lion (Keras 3), one tensor"},
        std::tuple<const char*, int, const char*>{"AdadeltaUpdate", 2, "Adadelta (Keras 3), one tensor"},
        std::tuple<const char*, int, const char*>{"AdagradUpdate", 1, "Adagrad (Keras 3), one tensor"}}) {
    const std::string op = name;
    const bool adadelta = op == "AdadeltaUpdate";
    OpSchema s = update_op(name, kPrivateDomain, slots);
    s.doc(doc).inputs(4 + slots, 4 + slots).outputs(1 + slots, 1 + slots).attr("weight_decay", 0.0f);
    if (adadelta)
      s.attr("rho", 0.95f);
    else if (op != "AdagradUpdate")
      s.attr("beta1", 0.9f).attr("beta2", op == "LionUpdate" ? 0.99f : 0.999f);
    if (op != "LionUpdate") s.attr("epsilon", 1e-7f);
    const int n = slots;
    s.examples([n, adadelta] {
      Attributes decay{{"weight_decay", 0.01f}};
      if (adadelta) decay.set("rho", 0.8f);
      return std::vector<OpExample>{
          forward_example("third step", update_inputs(0.01, 3, {{2, 3}}, n, true, 95), {}, 1 + n),
          forward_example("first step, decay", update_inputs(0.1, 1, {{4}}, n, true, 97), decay, 1 + n),
      };
    });
    r.add(std::move(s));
  }

  // Clipping by global norm, all gradients at once (Keras's global_clipnorm):
  //   n = sqrt(sum over every G of sum(G^2));  G_i' = G_i * clipnorm / max(n, clipnorm)
  // Dynamic loss scaling (precision = "fp16"): the backward pass ran on loss * S. Inputs S, G_1..G_k; outputs
  // G_i' = G_i * (1 / S) and `finite`, true when every G_i is finite. With S a power of two the unscaling is
  // exact. The training graph keeps the previous parameters and optimizer state when `finite` is false.
  r.add(OpSchema("UnscaleGradients", kPrivateDomain)
            .doc("Divides gradients by the loss scale and says whether they are all finite")
            .inputs(2, -1)
            .outputs(2, -1)
            .non_differentiable(kUpdateReason)
            .infer([](InferContext& c) {
              const int k = c.num_inputs() - 1;
              if (c.num_outputs() != k + 1)
                c.fail("{} gradients need {} outputs (the gradients and the finite flag), got {}", k, k + 1,
                       c.num_outputs());
              if (c.dtype(0) != DType::f32 || c.shape(0).numel() != 1)
                c.fail("the loss scale must be an f32 scalar, got {} {}", dtype_name(c.dtype(0)),
                       c.shape(0).str());
              for (int i = 1; i <= k; ++i) {
                c.expect_float(i);
                c.expect_same_dtype(i, 1);
                c.set_output(i - 1, c.dtype(i), c.shape(i));
              }
              c.set_output(k, DType::boolean, Shape{});
            })
            .examples([] {
              OpExample e =
                  example("two gradients", {Tensor::scalar<float>(1024.0f), random_tensor({3, 2}, -4, 4, 98),
                                            random_tensor({5}, -4, 4, 99)});
              e.num_outputs = 3;
              return std::vector<OpExample>{e};
            }));

  // Inputs G_1..G_k; outputs G_1'..G_k'; output k (optional extra) is n, for logging.
  r.add(
      OpSchema("ClipByGlobalNorm", kPrivateDomain)
          .doc("Scales every gradient so that their joint L2 norm is at most clipnorm")
          .inputs(1, -1)
          .outputs(1, -1)
          .attr_required("clipnorm", AttrType::f)
          .non_differentiable(kUpdateReason)
          .infer([](InferContext& c) {
            if (c.attrs().f("clipnorm") <= 0)
              c.fail("clipnorm must be positive, got {}", c.attrs().f("clipnorm"));
            int k = c.num_inputs();
            if (c.num_outputs() != k && c.num_outputs() != k + 1)
              c.fail("{} gradients need {} outputs (or {} with the norm), got {}", k, k, k + 1,
                     c.num_outputs());
            for (int i = 0; i < k; ++i) {
              c.expect_float(i);
              c.expect_same_dtype(i, 0);
              c.set_output(i, c.dtype(i), c.shape(i));
            }
            if (c.num_outputs() == k + 1) c.set_output(k, c.dtype(0), Shape{});
          })
          .examples([] {
            OpExample big =
                example("clipped", {random_tensor({3, 2}, -4, 4, 95), random_tensor({5}, -4, 4, 96)},
                        {{"clipnorm", 1.0f}});
            big.num_outputs = 3;
            OpExample small = example("unclipped", {random_tensor({4}, -0.1, 0.1, 97)}, {{"clipnorm", 5.0f}});
            small.num_outputs = 1;
            return std::vector<OpExample>{big, small};
          }));
}

}  // namespace trainer::engine::ops
