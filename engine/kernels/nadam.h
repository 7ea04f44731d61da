// Keras 3's Nadam step factors, shared by the CPU and CUDA update kernels: the momentum schedule u_t =
// beta1 (1 - 0.5 * 0.96^t) and its running product P_t = u_1 ... u_t, from which each step weighs the moment,
// the gradient and the second moment.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/kernels/hd.h"

namespace trainer::engine::kernels {

struct NadamFactors {
  double moment = 0;    // u_{t+1} / (1 - P_{t+1})
  double gradient = 0;  // (1 - u_t) / (1 - P_t)
  double second = 0;    // 1 / (1 - beta2^t)
};

// P_t = beta1^t * Q_t with Q_t = (1 - 0.5 * 0.96) ... (1 - 0.5 * 0.96^t): past t = 1100, 0.5 * 0.96^t is
// below double's resolution next to 1, so Q stops changing and the loop stops there.
TRAINER_HD NadamFactors nadam_factors(double beta1, double beta2, int64_t t) {
  double q = 1, w = 1;
  const int64_t n = t < 1100 ? t : 1100;
  for (int64_t i = 1; i <= n; ++i) {
    w *= 0.96;
    q *= 1 - 0.5 * w;
  }
  const double td = static_cast<double>(t);
  const double u_t = beta1 * (1 - 0.5 * pow(0.96, td)), u_next = beta1 * (1 - 0.5 * pow(0.96, td + 1));
  const double p_t = pow(beta1, td) * q, p_next = p_t * u_next;
  NadamFactors f;
  f.moment = u_next / (1 - p_next);
  f.gradient = (1 - u_t) / (1 - p_t);
  f.second = 1 / (1 - pow(beta2, td));
  return f;
}

}  // namespace trainer::engine::kernels
