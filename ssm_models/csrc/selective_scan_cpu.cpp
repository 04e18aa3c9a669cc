// Selective scan on the CPU: fused forward and a reverse-scan backward (ssm_models/scan.py, "cpu").
//
// One (batch, channel) row at a time, the N-vector state in a small local array, so the work is
// a few multiply-adds and one exp per state element. Inputs as prepared by scan.py:
//   u, delta, z   (Bt, D, L)        float32 or float64, contiguous
//   A             (D, N)
//   B, C          (Bt, G, L, N)     grouped, time-major; channel d uses group d / (D / G)
//              or (D, N)            time-invariant
//   D_, bias      (D,)              optional
// Semantics (mamba-ssm selective_scan_fn):
//   dt  = softplus(delta + bias)   (softplus optional; x > 20 passes through, as F.softplus)
//   x_t = exp(dt_t A) * x_{t-1} + dt_t u_t B_t,  x_{-1} = 0
//   y_t = (<C_t, x_t> + D_ u_t) * silu(z_t)
// The backward recomputes each row's states into per-thread buffers (2 x L x N) instead of
// keeping all states from the forward: that costs one recompute but no (Bt, D, L, N) tensor.
//
// Headers: only what is used. <torch/extension.h> pulls in all of libtorch and triples the
// first-use build time (about 24 s against 8 s here).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------- math
// float exp written out so `omp simd` loops inline and vectorise it: the exps are ~2/3 of the
// forward's time, and a libm call per element would be slower still. e^x = 2^k e^r with
// k = round(x log2 e), |r| <= ln2/2, Cephes' degree-6 polynomial (about 1 ulp), and 2^k added
// straight into the exponent bits. Range: x < -87 gives 0 (true values < 1.7e-38: no denormal
// ever enters the state, denormal arithmetic is very slow on x86); x > 88.37 gives inf (true
// values there are > 2.3e38, within 1.5x of FLT_MAX). NaN stays NaN.
inline float exp_(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.37f);  // a NaN passes both
  const float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &e, sizeof bits);
  bits += static_cast<int32_t>(kf) << 23;  // e * 2^k: exact, the result is normal on [-87, 88.37]
  float out;
  std::memcpy(&out, &bits, sizeof out);
  out = x > 88.37f ? std::numeric_limits<float>::infinity() : out;
  return x < -87.0f ? 0.0f : out;
}
// The same for double, so float64 runs vectorise too (libm's exp is a call per element, ~5x
// slower here): Cephes' reduction with ln2 in two parts and its rational approximation
// e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)), within 2 ulp of libm over [-708, 709]. k goes into
// the exponent through the low bits of k + 1.5 * 2^52 (AVX2 has no double -> int64 conversion).
// x < -708 gives 0 (true values < 3.3e-308, the smallest normals); x > 709 gives inf (true values
// there are > 8.2e307, within 2.2x of DBL_MAX). NaN stays NaN.
inline double exp_(double x) {
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52
  const double xc = std::min(std::max(x, -708.0), 709.0);  // a NaN passes both
  const double kf = (xc * 1.4426950408889634074 + kShift) - kShift;  // round to nearest
  double r = xc - kf * 6.93145751953125e-1;
  r = r - kf * 1.42860682030941723212e-6;
  const double rr = r * r;
  const double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 1.0);
  const double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr + 2.0;
  const double e = 1.0 + 2.0 * (px / (qx - px));
  const double shifted = kf + kShift;  // k in the low mantissa bits, two's complement
  int64_t bits, k;
  std::memcpy(&bits, &e, sizeof bits);
  std::memcpy(&k, &shifted, sizeof k);
  bits += static_cast<int64_t>(static_cast<uint64_t>(k) << 52);  // e * 2^k; normal on [-708, 709]
  double out;
  std::memcpy(&out, &bits, sizeof out);
  out = x > 709.0 ? std::numeric_limits<double>::infinity() : out;
  return x < -708.0 ? 0.0 : out;
}

// log1p on [0, 1] as 2 atanh(y / (2 + y)): no cancellation for small y, s <= 1/3, so seven
// terms of the odd series reach float precision.
inline float log1p01_(float y) {
  const float s = y / (2.0f + y), s2 = s * s;
  float p = 1.0f / 15;
  p = p * s2 + 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  return 2.0f * s * (p * s2 + 1.0f);
}
inline double log1p01_(double y) { return std::log1p(y); }

template <typename T>
inline T softplus_(T x) {  // F.softplus with threshold 20
  const T ax = x < T(0) ? -x : x;
  const T v = (x > T(0) ? x : T(0)) + log1p01_(exp_(-ax));
  return x > T(20) ? x : v;
}
template <typename T>
inline T sigmoid_(T x) { return T(1) / (T(1) + exp_(-x)); }

// Sums over the state index in one fixed order on every CPU: lane j of kLanes partial sums
// takes n = j, j + kLanes, ..., and the lanes are combined pairwise. (`omp simd reduction`
// leaves the order to the compiler and the vector width, so the same run trained on an AVX2
// and an AVX-512 machine diverged; tests/test_scan.py builds both widths and compares bits.)
// N = 16 is two whole lane blocks.
constexpr int64_t kLanes = 8;
template <typename T>
inline T lane_sum(const T* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// ---------------------------------------------------------------------------------- layout
struct Problem {
  int64_t Bt, D, L, N;
  int64_t G;           // groups of the variable B/C (1 if both are time-invariant)
  bool var_B, var_C;   // (Bt, G, L, N) if true, (D, N) if false
  bool softplus;
};

template <typename T>
struct Inputs {
  const T *u, *delta, *A, *B, *C, *Dv, *z, *bias;  // Dv, z, bias may be null
};

// B or C for one row: base pointer and time stride (0 when time-invariant).
template <typename T>
inline const T* coef_row(const T* M, bool var, const Problem& p, int64_t b, int64_t d, int64_t& stride) {
  stride = var ? p.N : 0;
  return var ? M + (b * p.G + d / (p.D / p.G)) * p.L * p.N : M + d * p.N;
}

// Effective delta of one row (bias, softplus), vectorised over time.
template <typename T>
inline void row_delta(const T* delta, T bias, bool softplus, int64_t L, T* dts) {
  if (softplus) {
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) dts[t] = softplus_(delta[t] + bias);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) dts[t] = delta[t] + bias;
  }
}

// ---------------------------------------------------------------------------------- forward
// NS > 0: the state size known at compile time (16, mamba's and VM-UNet's d_state), so the
// n-loops have a fixed trip count, unroll into whole vectors and keep the state in registers;
// with a run-time N the per-step loop set-up costs ~30 %. Measured and not kept: splitting time
// into blocks (exps first, then the recurrence) gave nothing; AVX-512 (-mprefer-vector-width=512)
// was ~20 % slower on this Xeon.
template <typename T, int NS>
void forward(const Problem& p, const Inputs<T>& in, T* y, T* last) {
  const int64_t L = p.L, N = NS ? NS : p.N;
  at::parallel_for(0, p.Bt * p.D, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> dts(L), x_heap(NS ? 0 : N);
    T x_local[NS ? NS : 1];
    T* x = NS ? x_local : x_heap.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p.D, d = row % p.D;
      const T* u = in.u + row * L;
      const T* Ar = in.A + d * N;
      int64_t sB, sC;
      const T* Bp = coef_row(in.B, p.var_B, p, b, d, sB);
      const T* Cp = coef_row(in.C, p.var_C, p, b, d, sC);
      T* yr = y + row * L;
      row_delta(in.delta + row * L, in.bias ? in.bias[d] : T(0), p.softplus, L, dts.data());
      std::fill(x, x + N, T(0));
      for (int64_t t = 0; t < L; ++t) {
        const T dt = dts[t], dtu = dt * u[t];
        const T* Bt_ = Bp + t * sB;
        const T* Ct_ = Cp + t * sC;
        T acc[kLanes] = {};
        for (int64_t n0 = 0; n0 < N; n0 += kLanes) {
          const int64_t m = std::min(kLanes, N - n0);
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) {
            const int64_t n = n0 + j;
            x[n] = exp_(dt * Ar[n]) * x[n] + dtu * Bt_[n];
            acc[j] += Ct_[n] * x[n];
          }
        }
        yr[t] = lane_sum(acc);
      }
      std::copy(x, x + N, last + row * N);
      const T Dd = in.Dv ? in.Dv[d] : T(0);
      if (in.z) {
        const T* z = in.z + row * L;
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) yr[t] = (yr[t] + Dd * u[t]) * z[t] * sigmoid_(z[t]);
      } else if (in.Dv) {
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) yr[t] += Dd * u[t];
      }
    }
  });
}

// ---------------------------------------------------------------------------------- backward
template <typename T>
struct Grads {
  T *du, *ddelta, *dz;  // (Bt, D, L); dz null without z
  T *dA, *dD, *dbias;   // per-row partials (Bt, D, N) / (Bt, D) / (Bt, D), summed over Bt later
  T *dB, *dC;           // variable: per-task partials (Bt, G, chunks, L, N); invariant: (Bt, D, N)
};

// Work is split into tasks (batch, group, chunk of the group's channels). Each task owns its
// slice of the dB/dC partials, so no two threads write the same memory and the result does not
// depend on scheduling (it does depend on the number of chunks, i.e. on the thread count).
// Per row: recompute the states and decays, then one reverse sweep. (Splitting the sweep into
// a dependency-chain pass and an independent pass was measured ~15 % slower: more memory traffic.)
template <typename T, int NS>
void backward(const Problem& p, const Inputs<T>& in, const T* gy, const T* glast, int64_t chunks, Grads<T> g) {
  const int64_t L = p.L, N = NS ? NS : p.N, Dg = p.D / p.G;
  const int64_t per = (Dg + chunks - 1) / chunks;
  at::parallel_for(0, p.Bt * p.G * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xs(L * N), as(L * N), dts(L), yv(in.z ? L : 0), sg(p.softplus ? L : 0), carry_v(NS ? 0 : N),
        zero(N, T(0));
    T carry_local[NS ? NS : 1];
    T* carry = NS ? carry_local : carry_v.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (p.G * chunks), grp = (task / chunks) % p.G, c = task % chunks;
      const int64_t d0 = grp * Dg + c * per, d1 = std::min(d0 + per, (grp + 1) * Dg);
      for (int64_t d = d0; d < d1; ++d) {
        const int64_t row = b * p.D + d;
        const T* u = in.u + row * L;
        const T* Ar = in.A + d * N;
        const T* gyr = gy + row * L;
        int64_t sB, sC;
        const T* Bp = coef_row(in.B, p.var_B, p, b, d, sB);
        const T* Cp = coef_row(in.C, p.var_C, p, b, d, sC);
        // dB/dC targets: the task's (L, N) slice, or the row's N-vector (time stride 0)
        T* dBp = p.var_B ? g.dB + task * L * N : g.dB + row * N;
        T* dCp = p.var_C ? g.dC + task * L * N : g.dC + row * N;
        const int64_t sdB = p.var_B ? N : 0, sdC = p.var_C ? N : 0;
        const T bias = in.bias ? in.bias[d] : T(0);
        const T Dd = in.Dv ? in.Dv[d] : T(0);
        const T* delta = in.delta + row * L;
        row_delta(delta, bias, p.softplus, L, dts.data());
        if (p.softplus) {  // d softplus(v)/dv = sigmoid(v), 1 above the threshold
#pragma omp simd
          for (int64_t t = 0; t < L; ++t) sg[t] = delta[t] + bias > T(20) ? T(1) : sigmoid_(delta[t] + bias);
        }
        // recompute the states and decays (and <C, x> where the z gate needs it)
        for (int64_t t = 0; t < L; ++t) {
          const T dt = dts[t], dtu = dt * u[t];
          const T* Bt_ = Bp + t * sB;
          const T* xp = t ? xs.data() + (t - 1) * N : zero.data();
          T* xt = xs.data() + t * N;
          T* at = as.data() + t * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) {
            at[n] = exp_(dt * Ar[n]);
            xt[n] = at[n] * xp[n] + dtu * Bt_[n];
          }
          if (in.z) {
            const T* Ct_ = Cp + t * sC;
            T acc[kLanes] = {};
            for (int64_t n0 = 0; n0 < N; n0 += kLanes) {
              const int64_t m = std::min(kLanes, N - n0);
#pragma omp simd
              for (int64_t j = 0; j < m; ++j) acc[j] += Ct_[n0 + j] * xt[n0 + j];
            }
            yv[t] = lane_sum(acc);
          }
        }
        // reverse sweep: gx_t = C_t g_t + a_{t+1} gx_{t+1}, starting from the last state's grad
        for (int64_t n = 0; n < N; ++n) carry[n] = glast ? glast[row * N + n] : T(0);
        T dD = 0, dbias = 0;
        T* dAr = g.dA + row * N;
        for (int64_t t = L - 1; t >= 0; --t) {
          T gt = gyr[t];
          if (in.z) {  // out = pre * silu(z); silu'(z) = s (1 + z (1 - s))
            const T zt = in.z[row * L + t], s = sigmoid_(zt);
            const T pre = yv[t] + Dd * u[t];
            g.dz[row * L + t] = gt * pre * s * (T(1) + zt * (T(1) - s));
            gt *= zt * s;
          }
          const T dt = dts[t], ut = u[t], dtu = dt * ut;
          const T* Bt_ = Bp + t * sB;
          const T* Ct_ = Cp + t * sC;
          const T* xt = xs.data() + t * N;
          const T* xp = t ? xt - N : zero.data();
          const T* at = as.data() + t * N;
          T* dBt = dBp + t * sdB;
          T* dCt = dCp + t * sdC;
          T s_arg[kLanes] = {}, s_B[kLanes] = {};
          for (int64_t n0 = 0; n0 < N; n0 += kLanes) {
            const int64_t m = std::min(kLanes, N - n0);
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) {
              const int64_t n = n0 + j;
              const T gx = Ct_[n] * gt + carry[n];
              const T w = gx * xp[n] * at[n];  // d/d(dt A) of exp(dt A) x_{t-1}
              s_arg[j] += w * Ar[n];
              s_B[j] += gx * Bt_[n];
              dAr[n] += w * dt;
              dBt[n] += gx * dtu;
              dCt[n] += xt[n] * gt;
              carry[n] = at[n] * gx;
            }
          }
          const T sum_B = lane_sum(s_B);
          const T ddt = lane_sum(s_arg) + sum_B * ut;
          const T dv = p.softplus ? ddt * sg[t] : ddt;
          g.ddelta[row * L + t] = dv;
          g.du[row * L + t] = sum_B * dt + gt * Dd;
          dD += gt * ut;
          dbias += dv;
        }
        g.dD[row] = dD;
        g.dbias[row] = dbias;
      }
    }
  });
}

// ---------------------------------------------------------------------------------- bindings
void check(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.dim());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have u's dtype");
}

const at::Tensor* opt(const std::optional<at::Tensor>& t) { return t && t->defined() ? &*t : nullptr; }

template <typename T>
const T* ptr(const at::Tensor* t) { return t ? t->data_ptr<T>() : nullptr; }

Problem problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                const at::Tensor& C, const at::Tensor* Dv, const at::Tensor* z, const at::Tensor* bias,
                bool softplus) {
  check(u, "u", 3, u);
  check(delta, "delta", 3, u);
  check(A, "A", 2, u);
  check(B, "B", B.dim() == 2 ? 2 : 4, u);
  check(C, "C", C.dim() == 2 ? 2 : 4, u);
  Problem p{u.size(0), u.size(1), u.size(2), A.size(1), 1, B.dim() == 4, C.dim() == 4, softplus};
  TORCH_CHECK(delta.sizes() == u.sizes() && A.size(0) == p.D, "delta must be (Bt, D, L) and A (D, N)");
  int64_t seen = 0;
  for (const at::Tensor* M : {&B, &C}) {
    if (M->dim() == 4) {
      TORCH_CHECK(M->size(0) == p.Bt && M->size(2) == p.L && M->size(3) == p.N, "B/C must be (Bt, G, L, N)");
      TORCH_CHECK(M->size(1) > 0, "B/C must have at least one group");
      TORCH_CHECK(!seen || seen == M->size(1), "B and C must have the same number of groups");
      seen = p.G = M->size(1);
    } else {
      TORCH_CHECK(M->size(0) == p.D && M->size(1) == p.N, "time-invariant B/C must be (D, N)");
    }
  }
  TORCH_CHECK(p.D % p.G == 0, "D must be divisible by the number of groups");
  if (Dv) check(*Dv, "D", 1, u);
  if (bias) check(*bias, "delta_bias", 1, u);
  TORCH_CHECK((!Dv || Dv->size(0) == p.D) && (!bias || bias->size(0) == p.D), "D and delta_bias must be (D,)");
  if (z) {
    check(*z, "z", 3, u);
    TORCH_CHECK(z->sizes() == u.sizes(), "z must have u's shape");
  }
  return p;
}

std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& Dv,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 bool softplus) {
  const Problem p = problem(u, delta, A, B, C, opt(Dv), opt(z), opt(bias), softplus);
  auto y = at::empty_like(u);
  auto last = at::empty({p.Bt, p.D, p.N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    Inputs<scalar_t> in{u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                        B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), ptr<scalar_t>(opt(Dv)),
                        ptr<scalar_t>(opt(z)), ptr<scalar_t>(opt(bias))};
    (p.N == 16 ? forward<scalar_t, 16> : forward<scalar_t, 0>)(p, in, y.data_ptr<scalar_t>(), last.data_ptr<scalar_t>());
  });
  return {y, last};
}

// Returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (undefined where the input is absent).
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& Dv,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 bool softplus, const at::Tensor& gy, const std::optional<at::Tensor>& glast,
                                 int64_t threads) {
  const Problem p = problem(u, delta, A, B, C, opt(Dv), opt(z), opt(bias), softplus);
  check(gy, "grad of y", 3, u);
  const at::Tensor* gl = opt(glast);
  if (gl) check(*gl, "grad of last_state", 3, u);
  // enough tasks for every thread, and no more partial dB/dC slices than that (at least one: an empty
  // batch or dim has no work, and must not divide by zero)
  const int64_t tasks = std::max<int64_t>(p.Bt * p.G, 1);
  const int64_t chunks = std::max<int64_t>(std::min<int64_t>((threads + tasks - 1) / tasks, p.D / p.G), 1);
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = opt(z) ? at::empty_like(u) : at::Tensor();
  auto dA = at::zeros({p.Bt, p.D, p.N}, u.options());
  auto dD = at::empty({p.Bt, p.D}, u.options()), dbias = at::empty({p.Bt, p.D}, u.options());
  auto part = [&](bool var) {
    return var ? at::zeros({p.Bt, p.G, chunks, p.L, p.N}, u.options()) : at::zeros({p.Bt, p.D, p.N}, u.options());
  };
  auto dB = part(p.var_B), dC = part(p.var_C);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    Inputs<scalar_t> in{u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                        B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), ptr<scalar_t>(opt(Dv)),
                        ptr<scalar_t>(opt(z)), ptr<scalar_t>(opt(bias))};
    Grads<scalar_t> g{du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(),
                      dz.defined() ? dz.data_ptr<scalar_t>() : nullptr, dA.data_ptr<scalar_t>(),
                      dD.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
                      dC.data_ptr<scalar_t>()};
    (p.N == 16 ? backward<scalar_t, 16> : backward<scalar_t, 0>)(p, in, gy.data_ptr<scalar_t>(), ptr<scalar_t>(gl), chunks, g);
  });
  auto reduce = [&](const at::Tensor& t, bool var) { return var ? t.sum(2) : t.sum(0); };
  return {du, ddelta, dA.sum(0), reduce(dB, p.var_B), reduce(dC, p.var_C),
          opt(Dv) ? dD.sum(0) : at::Tensor(), dz, opt(bias) ? dbias.sum(0) : at::Tensor()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The GIL is released: a long scan must not stall the program's other Python threads.
  m.def("fwd", &scan_fwd, "selective scan forward (CPU)", pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("bwd", &scan_bwd, "selective scan backward (CPU)", pybind11::call_guard<pybind11::gil_scoped_release>());
}
