// Device code of the recurrent cells: the pointwise part of one LSTM, GRU or RNN time step, forward and
// backward.
// The products (X·Wᵀ, H·Rᵀ, dA·R, ...) run in cuBLASLt around these kernels (kernels_rnn.cpp); each kernel
// here is one pass over [batch, hidden] in which a thread owns one (row, unit) and all of its gates, so a
// step's gate math is one launch and reads each operand once.
#include "engine/backend/cuda/launch_rnn.h"
#include "engine/kernels/functors.h"

namespace trainer::engine::cuda {

namespace k = trainer::engine::kernels;

namespace {

template <class T>
__device__ __forceinline__ T sigmoid(T x) {
  return k::SigmoidOp{}(x);
}
template <class T>
__device__ __forceinline__ T tanh_(T x) {
  return k::TanhOp{}(x);
}

// ---- kernels: one thread per (batch row, hidden unit), grid-stride ----

template <class T>
__global__ void lstm_step(LstmStepArgs<T> a) {
  const int64_t H = a.hidden, n = a.batch * H;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    const T* xw = a.xw + b * a.xw_ld;
    const T* rh = a.rh + b * 4 * H;
    T pre[4];
    for (int g = 0; g < 4; ++g) {
      const int64_t q = g * H + j;
      pre[g] = xw[q] + rh[q];
      if (a.wb) pre[g] += a.wb[q] + a.rb[q];
    }
    const T gi = sigmoid(pre[0]), go = sigmoid(pre[1]), gf = sigmoid(pre[2]), gc = tanh_(pre[3]);
    const T cn = gf * a.cp[b * a.cp_ld + j] + gi * gc;
    const T hn = go * tanh_(cn);
    T* act = a.act + b * a.act_ld;
    act[j] = gi;
    act[H + j] = go;
    act[2 * H + j] = gf;
    act[3 * H + j] = gc;
    a.c[b * a.c_ld + j] = cn;
    a.h[b * a.h_ld + j] = hn;
    if (a.y) a.y[b * a.y_ld + j] = hn;
  }
}

template <class T>
__global__ void lstm_step_grad(LstmStepGradArgs<T> a) {
  const int64_t H = a.hidden, n = a.batch * H;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    const T* act = a.act + b * a.act_ld;
    const T gi = act[j], go = act[H + j], gf = act[2 * H + j], gc = act[3 * H + j];
    const T cp = a.cp[b * a.cp_ld + j];
    const T hc = tanh_(gf * cp + gi * gc);  // h(C) of the forward, from the same expression
    T dH = a.dh ? a.dh[b * a.dh_ld + j] : T(0);
    if (a.dh_mask) dH *= a.dh_mask[b * a.dh_mask_ld + j];
    if (a.dy) dH += a.dy[b * a.dy_ld + j];
    const T dC = a.dc[i] + dH * go * (T(1) - hc * hc);
    T* da = a.da + b * a.da_ld;
    da[j] = dC * gc * (gi * (T(1) - gi));
    da[H + j] = dH * hc * (go * (T(1) - go));
    da[2 * H + j] = dC * cp * (gf * (T(1) - gf));
    da[3 * H + j] = dC * gi * (T(1) - gc * gc);
    a.dc[i] = dC * gf;
  }
}

template <class T>
__global__ void gru_step(GruStepArgs<T> a) {
  const int64_t H = a.hidden, n = a.batch * H;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    const T* xw = a.xw + b * a.xw_ld;
    const T* rh = a.rh + b * 3 * H;
    T* act = a.act + b * a.act_ld;
    const T hp = a.hp[b * a.hp_ld + j];
    T z, hh;
    if (a.phase == 2) {
      T pre = xw[2 * H + j] + rh[2 * H + j];
      if (a.wb) pre += a.wb[2 * H + j] + a.rb[2 * H + j];
      z = act[j];
      hh = tanh_(pre);
    } else {
      T pz = xw[j] + rh[j], pr = xw[H + j] + rh[H + j];
      if (a.wb) {
        pz += a.wb[j] + a.rb[j];
        pr += a.wb[H + j] + a.rb[H + j];
      }
      z = sigmoid(pz);
      const T r = sigmoid(pr);
      act[j] = z;
      act[H + j] = r;
      if (a.phase == 1) {
        const T rp = r * (a.hin ? a.hin[b * a.hin_ld + j] : hp);
        a.rhp[i] = rp;
        if (a.aux) a.aux[b * a.aux_ld + j] = rp;
        continue;
      }
      // Linear before reset: the candidate's recurrent term, with its own bias, is scaled by r.
      const T lin = rh[2 * H + j] + (a.rb ? a.rb[2 * H + j] : T(0));
      if (a.aux) a.aux[b * a.aux_ld + j] = lin;
      hh = tanh_(xw[2 * H + j] + (a.wb ? a.wb[2 * H + j] : T(0)) + r * lin);
    }
    act[2 * H + j] = hh;
    const T hn = (T(1) - z) * hh + z * hp;
    a.h[b * a.h_ld + j] = hn;
    if (a.y) a.y[b * a.y_ld + j] = hn;
  }
}

template <class T>
__global__ void gru_step_grad(GruStepGradArgs<T> a) {
  const int64_t H = a.hidden, n = a.batch * H;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    const T* act = a.act + b * a.act_ld;
    const T z = act[j], r = act[H + j], hh = act[2 * H + j];
    const T hp = a.hp[b * a.hp_ld + j];
    T* da = a.da + b * a.da_ld;
    const T m = a.mask ? a.mask[b * a.mask_ld + j] : T(1);
    if (a.phase == 2) {
      const T drh = a.drh[i];
      const T hr = a.hin ? a.hin[b * a.hin_ld + j] : hp;  // the state as the recurrent product saw it
      da[H + j] = drh * hr * (r * (T(1) - r));
      a.dhd[i] += drh * r * m;
      continue;
    }
    T dH = a.dhd[i];
    if (a.dhr) dH += a.dhr[i] * m;
    if (a.dy) dH += a.dy[b * a.dy_ld + j];
    const T daz = dH * (hp - hh) * (z * (T(1) - z));
    const T dah = dH * (T(1) - z) * (T(1) - hh * hh);
    da[j] = daz;
    da[2 * H + j] = dah;
    if (a.phase == 0) {
      const T dar = dah * a.aux[b * a.aux_ld + j] * (r * (T(1) - r));
      da[H + j] = dar;
      T* dr = a.dar + b * a.dar_ld;
      dr[j] = daz;
      dr[H + j] = dar;
      dr[2 * H + j] = dah * r;
    }
    a.dhd[i] = dH * z;
  }
}

template <class T>
__global__ void rnn_step(RnnStepArgs<T> a) {
  const int64_t H = a.hidden, n = a.batch * H;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    T pre = a.xw[b * a.xw_ld + j] + a.rh[b * H + j];
    if (a.wb) pre += a.wb[j] + a.rb[j];
    const T hn = tanh_(pre);
    a.act[b * a.act_ld + j] = hn;
    a.h[b * a.h_ld + j] = hn;
    if (a.y) a.y[b * a.y_ld + j] = hn;
  }
}

template <class T>
__global__ void rnn_step_grad(RnnStepGradArgs<T> a) {
  const int64_t H = a.hidden, n = a.batch * H;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    T dH = a.dh ? a.dh[b * a.dh_ld + j] : T(0);
    if (a.dh_mask) dH *= a.dh_mask[b * a.dh_mask_ld + j];
    if (a.dy) dH += a.dy[b * a.dy_ld + j];
    const T h = a.act[b * a.act_ld + j];
    a.da[b * a.da_ld + j] = dH * (T(1) - h * h);
  }
}

template <class T>
__global__ void rows_sum(RowsSumArgs<T> a) {
  const int64_t n = a.rows * a.cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / a.cols, c = i % a.cols;
    T v = a.a ? a.a[r * a.a_ld + c] : T(0);
    if (a.b) v += a.m ? a.b[r * a.b_ld + c] * a.m[r * a.m_ld + c] : a.b[r * a.b_ld + c];
    a.dst[r * a.dst_ld + c] = v;
  }
}

constexpr unsigned kBlock = 256;

unsigned grid_of(int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > 65535 * 8 ? 65535 * 8 : blocks);
}

}  // namespace

// ---- launchers ----

template <class T>
cudaError_t launch_lstm_step(const LstmStepArgs<T>& a, cudaStream_t stream) {
  if (a.batch * a.hidden <= 0) return cudaSuccess;
  if (!a.xw || !a.rh || !a.hp || !a.cp || !a.act || !a.h || !a.c || !a.wb != !a.rb)
    return cudaErrorInvalidValue;
  lstm_step<T><<<grid_of(a.batch * a.hidden), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_lstm_step_grad(const LstmStepGradArgs<T>& a, cudaStream_t stream) {
  if (a.batch * a.hidden <= 0) return cudaSuccess;
  if (!a.act || !a.cp || !a.dc || !a.da) return cudaErrorInvalidValue;
  lstm_step_grad<T><<<grid_of(a.batch * a.hidden), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_gru_step(const GruStepArgs<T>& a, cudaStream_t stream) {
  if (a.batch * a.hidden <= 0) return cudaSuccess;
  if (a.phase < 0 || a.phase > 2 || !a.xw || !a.rh || !a.hp || !a.act || !a.wb != !a.rb ||
      (a.phase == 1 ? !a.rhp : !a.h))
    return cudaErrorInvalidValue;
  gru_step<T><<<grid_of(a.batch * a.hidden), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_gru_step_grad(const GruStepGradArgs<T>& a, cudaStream_t stream) {
  if (a.batch * a.hidden <= 0) return cudaSuccess;
  if (a.phase < 0 || a.phase > 2 || !a.act || !a.hp || !a.dhd || !a.da || !a.hin != !a.mask ||
      (a.phase == 0 && (!a.aux || !a.dar)) || (a.phase == 2 && !a.drh))
    return cudaErrorInvalidValue;
  gru_step_grad<T><<<grid_of(a.batch * a.hidden), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_rnn_step(const RnnStepArgs<T>& a, cudaStream_t stream) {
  if (a.batch * a.hidden <= 0) return cudaSuccess;
  if (!a.xw || !a.rh || !a.act || !a.h || !a.wb != !a.rb) return cudaErrorInvalidValue;
  rnn_step<T><<<grid_of(a.batch * a.hidden), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_rnn_step_grad(const RnnStepGradArgs<T>& a, cudaStream_t stream) {
  if (a.batch * a.hidden <= 0) return cudaSuccess;
  if (!a.act || !a.da) return cudaErrorInvalidValue;
  rnn_step_grad<T><<<grid_of(a.batch * a.hidden), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_rows_sum(const RowsSumArgs<T>& a, cudaStream_t stream) {
  if (a.rows * a.cols <= 0) return cudaSuccess;
  if (!a.dst) return cudaErrorInvalidValue;
  rows_sum<T><<<grid_of(a.rows * a.cols), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

#define TRAINER_RNN_INSTANTIATE(T)                                                         \
  template cudaError_t launch_lstm_step<T>(const LstmStepArgs<T>&, cudaStream_t);          \
  template cudaError_t launch_lstm_step_grad<T>(const LstmStepGradArgs<T>&, cudaStream_t); \
  template cudaError_t launch_gru_step<T>(const GruStepArgs<T>&, cudaStream_t);            \
  template cudaError_t launch_gru_step_grad<T>(const GruStepGradArgs<T>&, cudaStream_t);   \
  template cudaError_t launch_rnn_step<T>(const RnnStepArgs<T>&, cudaStream_t);            \
  template cudaError_t launch_rnn_step_grad<T>(const RnnStepGradArgs<T>&, cudaStream_t);   \
  template cudaError_t launch_rows_sum<T>(const RowsSumArgs<T>&, cudaStream_t);
TRAINER_RNN_INSTANTIATE(float)
TRAINER_RNN_INSTANTIATE(double)
#undef TRAINER_RNN_INSTANTIATE

}  // namespace trainer::engine::cuda
