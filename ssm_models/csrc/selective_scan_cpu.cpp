// Selective scan on the CPU: forward and a reverse-scan backward, one (batch, channel) row per
// inner loop with the N-state in a local array. Inputs come in the canonical layout prepared by
// ssm_models/scan.py:
//   u, delta   (Bt, D, L)      delta already biased and softplus-ed
//   A          (D, N)
//   B, C       (Bt, G, L, N)   grouped; channel d uses group d / (D / G)
// Recurrence: x_t = exp(delta_t A) * x_{t-1} + delta_t B_t u_t ;  y_t = sum_n C_t x_t.
// Work is split over (batch, group, chunk of the group's channels); each chunk writes its own
// partial dB/dC/dA slices, summed afterwards, so results do not depend on scheduling.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

template <typename T>
void fwd_kernel(const T* u, const T* dl, const T* A, const T* B, const T* C, T* y, T* last,
                int64_t Bt, int64_t D, int64_t L, int64_t N, int64_t G) {
  const int64_t Dg = D / G;
  at::parallel_for(0, Bt * D, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> x(N);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / D, d = row % D, g = d / Dg;
      const T* ur = u + row * L;
      const T* dr = dl + row * L;
      const T* Ar = A + d * N;
      const T* Bg = B + (b * G + g) * L * N;
      const T* Cg = C + (b * G + g) * L * N;
      T* yr = y + row * L;
      std::fill(x.begin(), x.end(), T(0));
      for (int64_t t = 0; t < L; ++t) {
        const T dt = dr[t], du = dt * ur[t];
        const T* Bt_ = Bg + t * N;
        const T* Ct_ = Cg + t * N;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          x[n] = std::exp(dt * Ar[n]) * x[n] + du * Bt_[n];
          acc += Ct_[n] * x[n];
        }
        yr[t] = acc;
      }
      std::copy(x.begin(), x.end(), last + row * N);
    }
  });
}

template <typename T>
void bwd_kernel(const T* u, const T* dl, const T* A, const T* B, const T* C, const T* gy, const T* glast,
                T* du, T* ddl, T* dA_part, T* dB_part, T* dC_part,
                int64_t Bt, int64_t D, int64_t L, int64_t N, int64_t G, int64_t chunks) {
  const int64_t Dg = D / G;
  const int64_t per = (Dg + chunks - 1) / chunks;
  at::parallel_for(0, Bt * G * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xs(L * N), gx(N), carry(N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (G * chunks), g = (task / chunks) % G, c = task % chunks;
      const T* Bg = B + (b * G + g) * L * N;
      const T* Cg = C + (b * G + g) * L * N;
      T* dBp = dB_part + task * L * N;  // (Bt, G, chunks, L, N)
      T* dCp = dC_part + task * L * N;
      for (int64_t d = g * Dg + c * per; d < std::min(g * Dg + (c + 1) * per, (g + 1) * Dg); ++d) {
        const int64_t row = b * D + d;
        const T* ur = u + row * L;
        const T* dr = dl + row * L;
        const T* Ar = A + d * N;
        const T* gyr = gy + row * L;
        T* dAr = dA_part + row * N;  // (Bt, D, N), summed over the batch afterwards
        // recompute and keep the states of this row
        for (int64_t n = 0; n < N; ++n) gx[n] = 0;
        for (int64_t t = 0; t < L; ++t) {
          const T dt = dr[t], dtu = dt * ur[t];
          const T* Bt_ = Bg + t * N;
          T* xt = xs.data() + t * N;
          const T* xp = t ? xt - N : gx.data();  // gx is all zeros here: x_{-1} = 0
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) xt[n] = std::exp(dt * Ar[n]) * xp[n] + dtu * Bt_[n];
        }
        // reverse scan: gx_t = C_t gy_t + exp(delta_{t+1} A) gx_{t+1}
        for (int64_t n = 0; n < N; ++n) carry[n] = glast ? glast[row * N + n] : T(0);
        for (int64_t t = L - 1; t >= 0; --t) {
          const T dt = dr[t], ut = ur[t], g_y = gyr[t];
          const T* Bt_ = Bg + t * N;
          const T* Ct_ = Cg + t * N;
          const T* xt = xs.data() + t * N;
          T* dBt = dBp + t * N;
          T* dCt = dCp + t * N;
          T d_delta = 0, d_u = 0;
#pragma omp simd reduction(+ : d_delta, d_u)
          for (int64_t n = 0; n < N; ++n) {
            const T a = std::exp(dt * Ar[n]);
            const T xprev = t ? xt[n - N] : T(0);
            const T gxn = Ct_[n] * g_y + carry[n];
            const T darg = gxn * xprev * a;  // d/d(delta_t * A) of exp(...) * x_{t-1}
            d_delta += darg * Ar[n] + gxn * Bt_[n] * ut;
            d_u += gxn * Bt_[n] * dt;
            dAr[n] += darg * dt;
            dBt[n] += gxn * dt * ut;
            dCt[n] += xt[n] * g_y;
            carry[n] = a * gxn;
          }
          ddl[row * L + t] = d_delta;
          du[row * L + t] = d_u;
        }
      }
    }
  });
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions");
}

}  // namespace

std::vector<torch::Tensor> scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                    torch::Tensor C) {
  check(u, "u", 3); check(delta, "delta", 3); check(A, "A", 2); check(B, "B", 4); check(C, "C", 4);
  const int64_t Bt = u.size(0), D = u.size(1), L = u.size(2), N = A.size(1), G = B.size(1);
  auto y = torch::empty_like(u);
  auto last = torch::empty({Bt, D, N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_fwd", [&] {
    fwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                         B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                         last.data_ptr<scalar_t>(), Bt, D, L, N, G);
  });
  return {y, last};
}

std::vector<torch::Tensor> scan_bwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                    torch::Tensor C, torch::Tensor gy, c10::optional<torch::Tensor> glast,
                                    int64_t chunks) {
  check(u, "u", 3); check(delta, "delta", 3); check(A, "A", 2); check(B, "B", 4); check(C, "C", 4);
  check(gy, "grad_y", 3);
  const int64_t Bt = u.size(0), D = u.size(1), L = u.size(2), N = A.size(1), G = B.size(1);
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, D / G));
  auto du = torch::empty_like(u);
  auto ddelta = torch::empty_like(delta);
  auto dA_part = torch::zeros({Bt, D, N}, u.options());
  auto dB_part = torch::zeros({Bt, G, chunks, L, N}, u.options());
  auto dC_part = torch::zeros({Bt, G, chunks, L, N}, u.options());
  const bool has_last = glast.has_value() && glast->defined();
  torch::Tensor gl = has_last ? glast->contiguous() : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_bwd", [&] {
    bwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                         B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(),
                         has_last ? gl.data_ptr<scalar_t>() : nullptr, du.data_ptr<scalar_t>(),
                         ddelta.data_ptr<scalar_t>(), dA_part.data_ptr<scalar_t>(), dB_part.data_ptr<scalar_t>(),
                         dC_part.data_ptr<scalar_t>(), Bt, D, L, N, G, chunks);
  });
  return {du, ddelta, dA_part.sum(0), dB_part.sum(2), dC_part.sum(2)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &scan_fwd, "selective scan forward (CPU)");
  m.def("bwd", &scan_bwd, "selective scan backward (CPU)");
}
