// Small-batch LSTM / GRU kernels for hybridrnn (built on first use by hybridrnn/nn/_compiled.py).
//
// One call per time step (step()) or per sequence (the whole time loop), so a step costs no Python or
// per-op dispatch: at batch 1, hidden 64 that overhead is most of the time of the pure-torch path. The matrix
// products are plain loops that the compiler vectorises (-O3, `omp simd`); the float gate non-linearities use
// a vectorisable exp (Cephes polynomial, about 1 ulp) instead of scalar libm calls; double uses libm (the
// float64 parity tests compare with torch to 1e-10). Check with -fopt-info-vec that the gate loops stay
// vectorised after a change (std::min/max, floor() or a memcpy bit cast inside them stopped it with GCC 12).
//
// Layouts (all contiguous, row-major, batch-major inside a step, as in hybridrnn.nn._scan):
//   LSTM gates (i, f, g, o), G = 4; GRU gates (r, z, n), G = 3, torch's reset-after form
//   n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
//   xg (T, B, G*H): the hoisted input projection (for the LSTM with b_hh already added).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// ------------------------------------------------------------------------------------------------ maths
inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);   // (no std::min/max: they block vectorising)
    // n = round(x / ln 2) by the 1.5 * 2^23 trick: plain arithmetic, which vectorises where floor() does not
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    const float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    return p * __builtin_bit_cast(float, bits);
}

inline float sigm(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }

inline float tanh_s(float x) {
    const float ax = std::fabs(x);
    const float e = exp_f(2.0f * (ax < 9.0f ? ax : 9.0f));
    const float big = 1.0f - 2.0f / (e + 1.0f);
    const float z = x * x;
    const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                          + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * ax + ax;
    const float r = ax < 0.625f ? small : big;
    return std::copysign(r, x);
}
inline double tanh_s(double x) { return std::tanh(x); }

// ------------------------------------------------------------------------------------------------ products
#if defined(__AVX512F__)
// float, 16 rows at a time: one 16-lane partial sum per row over k (x loaded once for the 16 rows), each reduced
// at the end; measured 0.8 us against 1.3 us for the portable 4-row loop at 256 x 64. Returns the rows done.
inline int64_t mv_dot16(const float* x, int64_t K, const float* W, int64_t N, float* o, bool accumulate) {
    const int64_t K16 = K - K % 16;
    int64_t n = 0;
    for (; n + 16 <= N; n += 16) {
        __m512 acc[16];
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t k = 0; k < K16; k += 16) {
            const __m512 xv = _mm512_loadu_ps(x + k);
            for (int r = 0; r < 16; ++r) acc[r] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(W + (n + r) * K + k), acc[r]);
        }
        for (int r = 0; r < 16; ++r) {
            float s = _mm512_reduce_add_ps(acc[r]);
            const float* w = W + (n + r) * K;
            for (int64_t k = K16; k < K; ++k) s += x[k] * w[k];
            o[n + r] = accumulate ? o[n + r] + s : s;
        }
    }
    return n;
}
#endif

// out[b, n] (+)= sum_k in[b, k] * W[n, k]; W (N, K) row-major (torch's weight layout): dots over k, four rows
// at a time (independent accumulators, one load of x for four rows); float with AVX-512 16 rows at a time.
template <typename T>
void mv_dot(const T* in, int64_t B, int64_t K, const T* W, int64_t N, T* out, bool accumulate) {
    for (int64_t b = 0; b < B; ++b) {
        const T* x = in + b * K;
        T* o = out + b * N;
        int64_t n = 0;
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<T, float>) n = mv_dot16(x, K, W, N, o, accumulate);
#endif
        for (; n + 4 <= N; n += 4) {
            const T* w0 = W + n * K;
            const T* w1 = w0 + K;
            const T* w2 = w1 + K;
            const T* w3 = w2 + K;
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t k = 0; k < K; ++k) {
                const T xk = x[k];
                s0 += xk * w0[k];
                s1 += xk * w1[k];
                s2 += xk * w2[k];
                s3 += xk * w3[k];
            }
            if (accumulate) {
                o[n] += s0; o[n + 1] += s1; o[n + 2] += s2; o[n + 3] += s3;
            } else {
                o[n] = s0; o[n + 1] = s1; o[n + 2] = s2; o[n + 3] = s3;
            }
        }
        for (; n < N; ++n) {
            const T* w = W + n * K;
            T s = 0;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < K; ++k) s += x[k] * w[k];
            o[n] = accumulate ? o[n] + s : s;
        }
    }
}

// RB rows of out[:, n0:n0+NB] += in @ M[:, n0:n0+NB]: the RB x NB accumulators stay in registers over k, and
// each row of M's block is loaded once for the RB rows.
template <typename T, int RB, int64_t NB>
inline void axpy_rows(const T* in, int64_t K, const T* M, int64_t N, T* out, int64_t n0) {
    T acc[RB][NB];
    for (int r = 0; r < RB; ++r) {
#pragma omp simd
        for (int64_t j = 0; j < NB; ++j) acc[r][j] = out[r * N + n0 + j];
    }
    for (int64_t k = 0; k < K; ++k) {
        const T* m = M + k * N + n0;
        for (int r = 0; r < RB; ++r) {
            const T a = in[r * K + k];
#pragma omp simd
            for (int64_t j = 0; j < NB; ++j) acc[r][j] += a * m[j];
        }
    }
    for (int r = 0; r < RB; ++r) {
#pragma omp simd
        for (int64_t j = 0; j < NB; ++j) out[r * N + n0 + j] = acc[r][j];
    }
}

// out[b, :N] += sum_k in[b, k] * M[k, :N]; M (K, N) row-major (a transposed weight, or W itself for dW h).
// Blocks of 64 columns by 4 rows (float; 2 for double): 16 AVX-512 accumulators, measured 1.5-2x faster than
// one row at a time for batch >= 4 (20-40 GFLOP/s on one core: reading M from L2 bounds it at batch 1).
template <typename T>
void mv_axpy(const T* in, int64_t B, int64_t K, const T* M, int64_t N, T* out) {
    constexpr int64_t NB = 64;
    constexpr int RB = sizeof(T) == 4 ? 4 : 2;
    int64_t n0 = 0;
    for (; n0 + NB <= N; n0 += NB) {
        int64_t b = 0;
        for (; b + RB <= B; b += RB) axpy_rows<T, RB, NB>(in + b * K, K, M, N, out + b * N, n0);
        for (; b < B; ++b) axpy_rows<T, 1, NB>(in + b * K, K, M, N, out + b * N, n0);
    }
    if (n0 == N) return;
    for (int64_t b = 0; b < B; ++b) {
        const T* x = in + b * K;
        T* o = out + b * N;
        for (int64_t k = 0; k < K; ++k) {
            const T a = x[k];
            const T* m = M + k * N;
#pragma omp simd
            for (int64_t n = n0; n < N; ++n) o[n] += a * m[n];
        }
    }
}

// With more than one intra-op thread, batches of at least this many rows multiply with torch's BLAS (MKL sgemm,
// which uses those threads), fewer with the loops above. On one thread the loops were as fast as or faster than
// sgemm at every measured size, batch 8-128, hidden 64-256, training and inference (benchmarks/small_batch.md).
int64_t g_gemm_rows = 16;

template <typename T>
void product(const T* in, int64_t B, int64_t K, const T* M, int64_t N, T* out, bool accumulate) {
    if (B >= g_gemm_rows && at::get_num_threads() > 1) {
        const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
        at::Tensor a = at::from_blob(const_cast<T*>(in), {B, K}, opt);
        at::Tensor m = at::from_blob(const_cast<T*>(M), {K, N}, opt);
        at::Tensor o = at::from_blob(out, {B, N}, opt);
        if (accumulate) at::addmm_out(o, o, a, m);
        else at::mm_out(o, a, m);
        return;
    }
    if (!accumulate) std::fill(out, out + B * N, T(0));
    mv_axpy(in, B, K, M, N, out);
}

// h_mask: (B, H) variational recurrent dropout (the same mask every step, multiplied into h where it enters the
// recurrent product), or an empty tensor for none.
void check_mask(const at::Tensor& m, const at::Tensor& h0) {
    TORCH_CHECK(!m.numel() || (m.sizes() == h0.sizes() && m.device().is_cpu() && m.scalar_type() == h0.scalar_type()),
                "hybridrnn compiled sequence: h_mask must be like h0 ", h0.sizes(), ", got ", m.sizes());
}

// out = h * m, row by row (B, H).
template <typename T>
inline void masked(const T* h, const T* m, int64_t n, T* out) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = h[j] * m[j];
}

template <typename T>
T* scratch(size_t n) {
    thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// d^T @ x over all rows, d (N, A), x (N, B) -> (A, B): a whole sequence's weight gradient in one matmul.
// weight_mode 0: in d's dtype (at::mm); 1: both cast to bf16 first (torch's CPU bf16 matmul: float32 accumulation,
// the result rounded to bf16 and returned in d's dtype), as hybridrnn.nn._scan._weight_grad does under
// train.bf16; 2: not here (an empty tensor: the caller computes it from the returned gradient, on oneDNN).
at::Tensor weight_grad(const at::Tensor& d, const at::Tensor& x, int64_t weight_mode) {
    if (weight_mode == 2) return at::empty({0}, d.options());
    if (weight_mode == 0) return at::mm(d.t(), x);
    return at::mm(d.to(at::kBFloat16).t(), x.to(at::kBFloat16)).to(d.scalar_type());   // cast, then the view
}

// (T*B, H): the state each step multiplied, [h0, out[:-1]] (* h_mask).
at::Tensor masked_prev(const at::Tensor& h0, const at::Tensor& out, const at::Tensor& h_mask) {
    const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
    at::Tensor prev = at::cat({h0.unsqueeze(0), out.narrow(0, 0, T_ - 1)}, 0);
    if (h_mask.numel()) prev.mul_(h_mask);
    return prev.view({T_ * B, H});
}

// ------------------------------------------------------------------------------------------------ gate maths
// LSTM: gates (B, G*H) pre-activations -> h, c (B, H) in place of c; acts (B, G*H) activations and tc = tanh(c')
// kept when not null. G = 4 (i, f, g, o), or 3 (i, g, o) for the coupled gate f = 1 - i.
template <typename T, bool Save, bool Coupled>
void lstm_gates(const T* gates, int64_t B, int64_t H, const T* c_prev, T* h, T* c, T* acts, T* tc) {
    constexpr int64_t GN = Coupled ? 3 : 4;   // coupled: gates (i, g, o) and f = 1 - i
    for (int64_t b = 0; b < B; ++b) {
        const T* g = gates + b * GN * H;
        const T* cp = c_prev + b * H;
        T* hb = h + b * H;
        T* cb = c + b * H;
        T* ab = Save ? acts + b * GN * H : nullptr;
        T* tb = Save ? tc + b * H : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
            const T i = sigm(g[j]);
            const T f = Coupled ? T(1) - i : sigm(g[H + j]);
            const T gg = tanh_s(g[(GN - 2) * H + j]);
            const T o = sigm(g[(GN - 1) * H + j]);
            const T cn = Coupled ? cp[j] + i * (gg - cp[j]) : f * cp[j] + i * gg;
            const T t = tanh_s(cn);
            cb[j] = cn;
            hb[j] = o * t;
            if constexpr (Save) {
                ab[j] = i;
                if constexpr (!Coupled) ab[H + j] = f;
                ab[(GN - 2) * H + j] = gg;
                ab[(GN - 1) * H + j] = o;
                tb[j] = t;
            }
        }
    }
}

// GRU: xg (B, 3H) input part, gh (B, 3H) recurrent part W_hh h + b_hh -> h (B, H); acts (B, 4H) = (r, z, n,
// gh_n) kept when not null.
template <typename T, bool Save>
void gru_gates(const T* xg, const T* gh, int64_t B, int64_t H, const T* h_prev, T* h, T* acts) {
    for (int64_t b = 0; b < B; ++b) {
        const T* x = xg + b * 3 * H;
        const T* r_ = gh + b * 3 * H;
        const T* hp = h_prev + b * H;
        T* hb = h + b * H;
        T* ab = Save ? acts + b * 4 * H : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
            const T r = sigm(x[j] + r_[j]);
            const T z = sigm(x[H + j] + r_[H + j]);
            const T hn = r_[2 * H + j];
            const T n = tanh_s(x[2 * H + j] + r * hn);
            hb[j] = n + z * (hp[j] - n);
            if constexpr (Save) {
                ab[j] = r;
                ab[H + j] = z;
                ab[2 * H + j] = n;
                ab[3 * H + j] = hn;
            }
        }
    }
}

// Calls f(float{}) or f(double{}) (not AT_DISPATCH: `omp simd` pragmas cannot sit inside a macro argument).
template <typename F>
void dispatch(at::ScalarType st, F&& f) {
    if (st == at::kDouble) f(double{});
    else f(float{});
}

void check_cpu(const at::Tensor& t, const char* what) {
    TORCH_CHECK(t.device().is_cpu(), "hybridrnn compiled kernel: ", what, " must be on the CPU");
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
                "hybridrnn compiled kernel: ", what, " must be float32 or float64");
}

// Every tensor on the CPU with x's dtype, and the shapes a step needs: weights per layer (G*H, I_l), (G*H, H)
// [, (G*H,), (G*H,)]; states (L, B, H) or empty.
void check_step(const at::Tensor& x, const std::vector<at::Tensor>& weights, int64_t per, int64_t G,
                std::initializer_list<const at::Tensor*> states) {
    check_cpu(x, "x");
    TORCH_CHECK(x.dim() == 2 && !weights.empty() && weights.size() % per == 0,
                "hybridrnn compiled step: x must be (B, I) and weights a list of ", per, " tensors per layer");
    const int64_t L = static_cast<int64_t>(weights.size()) / per;
    const int64_t H = weights[1].size(1);
    const auto dtype = x.scalar_type();
    int64_t I = x.size(1);
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t j = 0; j < per; ++j) {
            const at::Tensor& w = weights[l * per + j];
            TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == dtype,
                        "hybridrnn compiled step: every weight must be on the CPU with x's dtype ", dtype);
            const bool ok = j == 0 ? (w.dim() == 2 && w.size(0) == G * H && w.size(1) == I)
                          : j == 1 ? (w.dim() == 2 && w.size(0) == G * H && w.size(1) == H)
                                   : (w.dim() == 1 && w.size(0) == G * H);
            TORCH_CHECK(ok, "hybridrnn compiled step: weight ", j, " of layer ", l, " has shape ", w.sizes());
        }
        I = H;
    }
    for (const at::Tensor* s : states) {
        if (!s->numel()) continue;
        TORCH_CHECK(s->device().is_cpu() && s->scalar_type() == dtype && s->dim() == 3 && s->size(0) == L
                        && s->size(1) == x.size(0) && s->size(2) == H,
                    "hybridrnn compiled step: a state must be (", L, ", ", x.size(0), ", ", H, ") on the CPU in ",
                    dtype, ", got ", s->sizes(), " ", s->scalar_type());
    }
}

// xg (T >= 1, B, G*H), h0 (and c0) (B, H), w_hh (G*H, H): on the CPU, one float dtype.
void check_sequence(const at::Tensor& xg, const at::Tensor& h0, const at::Tensor& w_hh, int64_t G,
                    std::initializer_list<const at::Tensor*> more) {
    check_cpu(xg, "xg");
    TORCH_CHECK(xg.dim() == 3 && xg.size(0) >= 1 && h0.dim() == 2 && h0.size(0) == xg.size(1)
                    && xg.size(2) == G * h0.size(1),
                "hybridrnn compiled sequence: xg must be (T, B, ", G, "*H) and h0 (B, H), got ", xg.sizes(), " and ",
                h0.sizes());
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == G * h0.size(1) && w_hh.size(1) == h0.size(1),
                "hybridrnn compiled sequence: w_hh must be (", G, "*H, H), got ", w_hh.sizes());
    for (const at::Tensor* t : {&h0, &w_hh}) {
        TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == xg.scalar_type(),
                    "hybridrnn compiled sequence: every tensor must be on the CPU with xg's dtype");
    }
    for (const at::Tensor* t : more) {
        TORCH_CHECK(t->sizes() == h0.sizes() && t->device().is_cpu() && t->scalar_type() == xg.scalar_type(),
                    "hybridrnn compiled sequence: c0 must be like h0");
    }
}

// ------------------------------------------------------------------------------------------------ step()
// x (B, I); h, c (L, B, H), or empty tensors for zeros (a pybind optional costs microseconds per call);
// weights: per layer w_ih, w_hh[, b_ih, b_hh].
// Returns (y (B, H) = h'[L-1], h' (L, B, H), c' (L, B, H)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_step(const at::Tensor& x_in, const at::Tensor& h_in,
                                                       const at::Tensor& c_in,
                                                       const std::vector<at::Tensor>& weights, bool has_bias) {
    const int64_t per = has_bias ? 4 : 2;
    check_step(x_in, weights, per, 4, {&h_in, &c_in});
    const int64_t L = static_cast<int64_t>(weights.size()) / per;
    const int64_t B = x_in.size(0);
    const int64_t H = weights[1].size(1);
    at::Tensor x = x_in.contiguous();
    at::Tensor h_out = at::empty({L, B, H}, x.options());
    at::Tensor c_out = at::empty({L, B, H}, x.options());
    dispatch(x.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        at::Tensor h0 = h_in.numel() ? h_in.contiguous() : at::Tensor();
        at::Tensor c0 = c_in.numel() ? c_in.contiguous() : at::Tensor();
        T* gates = scratch<T>(static_cast<size_t>(B * 4 * H + B * H));
        T* zeros = gates + B * 4 * H;
        const T* inp = x.data_ptr<T>();
        int64_t I = x.size(1);
        for (int64_t l = 0; l < L; ++l) {
            at::Tensor w_ih = weights[l * per].contiguous(), w_hh = weights[l * per + 1].contiguous();
            const T* hp;
            const T* cp;
            if (h0.defined()) {
                hp = h0.data_ptr<T>() + l * B * H;
                cp = c0.data_ptr<T>() + l * B * H;
            } else {
                std::fill(zeros, zeros + B * H, T(0));
                hp = cp = zeros;
            }
            mv_dot(inp, B, I, w_ih.data_ptr<T>(), 4 * H, gates, false);
            mv_dot(hp, B, H, w_hh.data_ptr<T>(), 4 * H, gates, true);
            if (has_bias) {
                const T* bi = weights[l * per + 2].data_ptr<T>();
                const T* bh = weights[l * per + 3].data_ptr<T>();
                for (int64_t b = 0; b < B; ++b) {
                    T* g = gates + b * 4 * H;
#pragma omp simd
                    for (int64_t n = 0; n < 4 * H; ++n) g[n] += bi[n] + bh[n];
                }
            }
            T* hl = h_out.data_ptr<T>() + l * B * H;
            lstm_gates<T, false, false>(gates, B, H, cp, hl, c_out.data_ptr<T>() + l * B * H, nullptr, nullptr);
            inp = hl;
            I = H;
        }
    });
    return {h_out.select(0, L - 1), h_out, c_out};
}

// x (B, I); h (L, B, H) or empty (zeros); weights as in lstm_step (rows r, z, n). Returns (y (B, H), h' (L, B, H)).
std::tuple<at::Tensor, at::Tensor> gru_step(const at::Tensor& x_in, const at::Tensor& h_in,
                                            const std::vector<at::Tensor>& weights, bool has_bias) {
    const int64_t per = has_bias ? 4 : 2;
    check_step(x_in, weights, per, 3, {&h_in});
    const int64_t L = static_cast<int64_t>(weights.size()) / per;
    const int64_t B = x_in.size(0);
    const int64_t H = weights[1].size(1);
    at::Tensor x = x_in.contiguous();
    at::Tensor h_out = at::empty({L, B, H}, x.options());
    dispatch(x.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        at::Tensor h0 = h_in.numel() ? h_in.contiguous() : at::Tensor();
        T* gi = scratch<T>(static_cast<size_t>(2 * B * 3 * H + B * H));
        T* gh = gi + B * 3 * H;
        T* zeros = gh + B * 3 * H;
        const T* inp = x.data_ptr<T>();
        int64_t I = x.size(1);
        for (int64_t l = 0; l < L; ++l) {
            at::Tensor w_ih = weights[l * per].contiguous(), w_hh = weights[l * per + 1].contiguous();
            const T* hp;
            if (h0.defined()) {
                hp = h0.data_ptr<T>() + l * B * H;
            } else {
                std::fill(zeros, zeros + B * H, T(0));
                hp = zeros;
            }
            mv_dot(inp, B, I, w_ih.data_ptr<T>(), 3 * H, gi, false);
            mv_dot(hp, B, H, w_hh.data_ptr<T>(), 3 * H, gh, false);
            if (has_bias) {
                const T* bi = weights[l * per + 2].data_ptr<T>();
                const T* bh = weights[l * per + 3].data_ptr<T>();
                for (int64_t b = 0; b < B; ++b) {
                    T* a = gi + b * 3 * H;
                    T* r = gh + b * 3 * H;
#pragma omp simd
                    for (int64_t n = 0; n < 3 * H; ++n) {
                        a[n] += bi[n];
                        r[n] += bh[n];
                    }
                }
            }
            T* hl = h_out.data_ptr<T>() + l * B * H;
            gru_gates<T, false>(gi, gh, B, H, hp, hl, nullptr);
            inp = hl;
            I = H;
        }
    });
    return {h_out.select(0, L - 1), h_out};
}

// ------------------------------------------------------------------------------------------------ sequences
// LSTM forward over a sequence: xg (T, B, 4H) with b_hh added, h0, c0 (B, H), w_hh (4H, H).
// Returns (out (T, B, H), h_T, c_T, acts (T, B, 4H), cs (T, B, H), tcs (T, B, H)); the last three are empty
// unless save (what the backward needs: gate activations, cells, tanh of cells).
std::vector<at::Tensor> lstm_forward(const at::Tensor& xg_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                     const at::Tensor& w_hh, const at::Tensor& h_mask_in, bool coupled, bool save) {
    const int64_t GN = coupled ? 3 : 4;
    check_sequence(xg_in, h0_in, w_hh, GN, {&c0_in});
    check_mask(h_mask_in, h0_in);
    at::Tensor h_mask = h_mask_in.contiguous();
    const int64_t T_ = xg_in.size(0), B = xg_in.size(1), H = h0_in.size(1);
    at::Tensor xg = xg_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
    at::Tensor wt = w_hh.t().contiguous();   // (H, 4H): rows of the product are contiguous
    auto opt = xg.options();
    at::Tensor out = at::empty({T_, B, H}, opt);
    at::Tensor cs = at::empty({save ? T_ : 1, B, H}, opt);
    at::Tensor acts = save ? at::empty({T_, B, GN * H}, opt) : at::empty({0}, opt);
    at::Tensor tcs = save ? at::empty({T_, B, H}, opt) : at::empty({0}, opt);
    dispatch(xg.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        T* gates = scratch<T>(static_cast<size_t>(B * GN * H + B * H));
        T* hm = gates + B * GN * H;
        const T* mk = h_mask.numel() ? h_mask.data_ptr<T>() : nullptr;
        const T* x = xg.data_ptr<T>();
        const T* w = wt.data_ptr<T>();
        const T* hp = h0.data_ptr<T>();
        const T* cp = c0.data_ptr<T>();
        T* o = out.data_ptr<T>();
        T* c = cs.data_ptr<T>();
        for (int64_t t = 0; t < T_; ++t) {
            std::memcpy(gates, x + t * B * GN * H, sizeof(T) * B * GN * H);
            if (mk) masked(hp, mk, B * H, hm);
            product(mk ? hm : hp, B, H, w, GN * H, gates, true);
            T* ct = save ? c + t * B * H : c;
            T* ht = o + t * B * H;
            if (save)
                (coupled ? lstm_gates<T, true, true> : lstm_gates<T, true, false>)(
                    gates, B, H, cp, ht, ct, acts.data_ptr<T>() + t * B * GN * H, tcs.data_ptr<T>() + t * B * H);
            else
                (coupled ? lstm_gates<T, false, true> : lstm_gates<T, false, false>)(gates, B, H, cp, ht, ct, nullptr,
                                                                                     nullptr);
            hp = ht;
            cp = ct;   // without save the cell buffer is reused in place: lstm_gates reads c_prev[j] before it
                       // writes c[j], element by element
        }
    });
    at::Tensor c_T = save ? cs[T_ - 1].clone() : cs[0].clone();
    return {out, out[T_ - 1].clone(), c_T, acts, cs, tcs};
}

// LSTM backward: gradients of (out, h_T, c_T) -> (d xg (T, B, 4H), d h0, d c0, d w_hh (see weight_grad)).
std::vector<at::Tensor> lstm_backward(const at::Tensor& d_out_in, const at::Tensor& d_hT_in, const at::Tensor& d_cT_in,
                                      const at::Tensor& acts, const at::Tensor& cs, const at::Tensor& tcs,
                                      const at::Tensor& out, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                      const at::Tensor& w_hh_in, const at::Tensor& h_mask_in, bool coupled,
                                      int64_t weight_mode) {
    at::Tensor h_mask = h_mask_in.contiguous();
    const int64_t GN = coupled ? 3 : 4;
    const int64_t T_ = acts.size(0), B = acts.size(1), H = acts.size(2) / GN;
    at::Tensor d_out = d_out_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
    at::Tensor w_hh = w_hh_in.contiguous();
    at::Tensor dG = at::empty({T_, B, GN * H}, acts.options());
    at::Tensor dh = d_hT_in.contiguous().clone();
    at::Tensor dc = d_cT_in.contiguous().clone();
    dispatch(acts.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        const T* A = acts.data_ptr<T>();
        const T* C = cs.data_ptr<T>();
        const T* TC = tcs.data_ptr<T>();
        const T* dO = d_out.data_ptr<T>();
        const T* w = w_hh.data_ptr<T>();
        T* dg_all = dG.data_ptr<T>();
        T* dhc = dh.data_ptr<T>();
        T* dcc = dc.data_ptr<T>();
        for (int64_t t = T_ - 1; t >= 0; --t) {
            T* dg = dg_all + t * B * GN * H;
            const T* cprev = t > 0 ? C + (t - 1) * B * H : c0.data_ptr<T>();
            for (int64_t b = 0; b < B; ++b) {
                const T* a = A + (t * B + b) * GN * H;
                const T* tc = TC + (t * B + b) * H;
                const T* cp = cprev + b * H;
                const T* go = dO + (t * B + b) * H;
                T* g = dg + b * GN * H;
                T* dhb = dhc + b * H;
                T* dcb = dcc + b * H;
                if (coupled) {                        // gates (i, g, o), f = 1 - i: c' = c + i (g - c)
#pragma omp simd
                    for (int64_t j = 0; j < H; ++j) {
                        const T i = a[j], gg = a[H + j], o = a[2 * H + j], th = tc[j];
                        const T dht = go[j] + dhb[j];
                        const T dct = dcb[j] + dht * o * (T(1) - th * th);
                        g[j] = dct * (gg - cp[j]) * i * (T(1) - i);
                        g[H + j] = dct * i * (T(1) - gg * gg);
                        g[2 * H + j] = dht * th * o * (T(1) - o);
                        dcb[j] = dct * (T(1) - i);
                    }
                } else {
#pragma omp simd
                    for (int64_t j = 0; j < H; ++j) {
                        const T i = a[j], f = a[H + j], gg = a[2 * H + j], o = a[3 * H + j], th = tc[j];
                        const T dht = go[j] + dhb[j];
                        const T dct = dcb[j] + dht * o * (T(1) - th * th);
                        g[j] = dct * gg * i * (T(1) - i);
                        g[H + j] = dct * cp[j] * f * (T(1) - f);
                        g[2 * H + j] = dct * i * (T(1) - gg * gg);
                        g[3 * H + j] = dht * th * o * (T(1) - o);
                        dcb[j] = dct * f;
                    }
                }
            }
            product(dg, B, GN * H, w, H, dhc, false);   // d h_{t-1} = dG_t W_hh (* h_mask)
            if (h_mask.numel()) masked(dhc, h_mask.data_ptr<T>(), B * H, dhc);
        }
    });
    at::Tensor dW = weight_mode == 2 ? weight_grad(dG, dG, 2)
                                     : weight_grad(dG.view({T_ * B, GN * H}), masked_prev(h0, out, h_mask), weight_mode);
    return {dG, dh, dc, dW};
}

// GRU forward: xg (T, B, 3H) (input part with b_ih), h0 (B, H), w_hh (3H, H), b_hh (3H) or empty.
// Returns (out (T, B, H), h_T, acts (T, B, 4H) = (r, z, n, W_hn h + b_hn) or empty unless save).
std::vector<at::Tensor> gru_forward(const at::Tensor& xg_in, const at::Tensor& h0_in, const at::Tensor& w_hh,
                                    const at::Tensor& b_hh, const at::Tensor& h_mask_in, bool save) {
    check_sequence(xg_in, h0_in, w_hh, 3, {});
    check_mask(h_mask_in, h0_in);
    at::Tensor h_mask = h_mask_in.contiguous();
    TORCH_CHECK(!b_hh.numel() || (b_hh.dim() == 1 && b_hh.size(0) == w_hh.size(0) && b_hh.device().is_cpu()
                                  && b_hh.scalar_type() == xg_in.scalar_type()),
                "hybridrnn compiled GRU: b_hh must be (3H,) like w_hh's rows, got ", b_hh.sizes());
    const int64_t T_ = xg_in.size(0), B = xg_in.size(1), H = h0_in.size(1);
    at::Tensor xg = xg_in.contiguous(), h0 = h0_in.contiguous();
    at::Tensor wt = w_hh.t().contiguous();   // (H, 3H)
    at::Tensor bias = b_hh.numel() ? b_hh.contiguous() : b_hh;
    auto opt = xg.options();
    at::Tensor out = at::empty({T_, B, H}, opt);
    at::Tensor acts = save ? at::empty({T_, B, 4 * H}, opt) : at::empty({0}, opt);
    dispatch(xg.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        T* gh = scratch<T>(static_cast<size_t>(B * 3 * H + B * H));
        T* hm = gh + B * 3 * H;
        const T* mk = h_mask.numel() ? h_mask.data_ptr<T>() : nullptr;
        const T* x = xg.data_ptr<T>();
        const T* w = wt.data_ptr<T>();
        const T* bh = bias.numel() ? bias.data_ptr<T>() : nullptr;
        const T* hp = h0.data_ptr<T>();
        T* o = out.data_ptr<T>();
        for (int64_t t = 0; t < T_; ++t) {
            for (int64_t b = 0; b < B; ++b) {
                T* g = gh + b * 3 * H;
                if (bh) std::memcpy(g, bh, sizeof(T) * 3 * H);
                else std::fill(g, g + 3 * H, T(0));
            }
            if (mk) masked(hp, mk, B * H, hm);
            product(mk ? hm : hp, B, H, w, 3 * H, gh, true);   // W_hh (h * h_mask) + b_hh; the gates use h itself
            T* ht = o + t * B * H;
            if (save)
                gru_gates<T, true>(x + t * B * 3 * H, gh, B, H, hp, ht, acts.data_ptr<T>() + t * B * 4 * H);
            else
                gru_gates<T, false>(x + t * B * 3 * H, gh, B, H, hp, ht, nullptr);
            hp = ht;
        }
    });
    return {out, out[T_ - 1].clone(), acts};
}

// GRU backward: gradients of (out, h_T) -> (d xg (T, B, 3H), d h0, d w_hh (see weight_grad), d b_hh, and dR
// (T, B, 3H), the gradient of W_hh h + b_hh).
std::vector<at::Tensor> gru_backward(const at::Tensor& d_out_in, const at::Tensor& d_hT_in, const at::Tensor& acts,
                                     const at::Tensor& out, const at::Tensor& h0_in, const at::Tensor& w_hh_in,
                                     const at::Tensor& h_mask_in, int64_t weight_mode) {
    at::Tensor h_mask = h_mask_in.contiguous();
    const int64_t T_ = acts.size(0), B = acts.size(1), H = acts.size(2) / 4;
    at::Tensor d_out = d_out_in.contiguous(), h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
    at::Tensor dX = at::empty({T_, B, 3 * H}, acts.options());
    at::Tensor dR = at::empty({T_, B, 3 * H}, acts.options());   // gradient of W_hh h + b_hh
    at::Tensor dh = d_hT_in.contiguous().clone();
    dispatch(acts.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        const T* A = acts.data_ptr<T>();
        const T* O = out.data_ptr<T>();
        const T* dO = d_out.data_ptr<T>();
        const T* w = w_hh.data_ptr<T>();
        T* dhc = dh.data_ptr<T>();
        T* tmp = h_mask.numel() ? scratch<T>(static_cast<size_t>(B * H)) : nullptr;   // (dR_t W_hh), masked
        for (int64_t t = T_ - 1; t >= 0; --t) {
            const T* hprev = t > 0 ? O + (t - 1) * B * H : h0.data_ptr<T>();
            T* dr_t = dR.data_ptr<T>() + t * B * 3 * H;
            for (int64_t b = 0; b < B; ++b) {
                const T* a = A + (t * B + b) * 4 * H;
                const T* hp = hprev + b * H;
                const T* go = dO + (t * B + b) * H;
                T* dx = dX.data_ptr<T>() + (t * B + b) * 3 * H;
                T* dr = dr_t + b * 3 * H;
                T* dhb = dhc + b * H;
#pragma omp simd
                for (int64_t j = 0; j < H; ++j) {
                    const T r = a[j], z = a[H + j], n = a[2 * H + j], hn = a[3 * H + j];
                    const T dht = go[j] + dhb[j];
                    const T dnp = dht * (T(1) - z) * (T(1) - n * n);
                    const T drp = dnp * hn * r * (T(1) - r);
                    const T dzp = dht * (hp[j] - n) * z * (T(1) - z);
                    dx[j] = drp;
                    dx[H + j] = dzp;
                    dx[2 * H + j] = dnp;
                    dr[j] = drp;
                    dr[H + j] = dzp;
                    dr[2 * H + j] = dnp * r;
                    dhb[j] = dht * z;
                }
            }
            if (tmp) {                              // d h_{t-1} += (dR_t W_hh) * h_mask
                product(dr_t, B, 3 * H, w, H, tmp, false);
                const T* mk = h_mask.data_ptr<T>();
#pragma omp simd
                for (int64_t n = 0; n < B * H; ++n) dhc[n] += tmp[n] * mk[n];
            } else {
                product(dr_t, B, 3 * H, w, H, dhc, true);   // d h_{t-1} += dR_t W_hh
            }
        }
    });
    at::Tensor dRf = dR.view({T_ * B, 3 * H});
    at::Tensor dW = weight_mode == 2 ? weight_grad(dRf, dRf, 2)
                                     : weight_grad(dRf, masked_prev(h0, out, h_mask), weight_mode);
    return {dX, dh, dW, dRf.sum(0), dR};
}

// ------------------------------------------------------------------------------------------------ layer norm
// The layer-norm LSTM of hybridrnn.nn._scan (cells.lstm_step with layer norm), per step:
//   a = W_hh h + b_hh;  pre = [gain_ih * LN(xg_t) + bias_ih | xg_t] + gain_hh * LN(a)   (LN over each gate's H)
//   c' = f c + i g;     h' = o * tanh(gain_c * LN(c') + bias_c)
// where LN(v) = (v - mean(v)) / sqrt(var(v) + eps) (biased variance, as torch.nn.functional.layer_norm); the
// input norm runs when gain_ih is given, else xg is used as it comes (normalised by the caller).

// mean and 1 / sqrt(var + eps) of v[0:H], in two passes (as exact as torch's in float64).
template <typename T>
inline void row_stats(const T* v, int64_t H, T eps, T& mean, T& rstd) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < H; ++j) s += v[j];
    const T m = s / static_cast<T>(H);
    T q = 0;
#pragma omp simd reduction(+ : q)
    for (int64_t j = 0; j < H; ++j) q += (v[j] - m) * (v[j] - m);
    mean = m;
    rstd = T(1) / std::sqrt(q / static_cast<T>(H) + eps);
}

// y = (v - mean) * rstd over H; returns rstd.
template <typename T>
inline T normalise(const T* v, int64_t H, T eps, T* y) {
    T m, r;
    row_stats(v, H, eps, m, r);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) y[j] = (v[j] - m) * r;
    return r;
}

// The input gradient of a layer norm: dx = rstd * (dy - mean(dy) - y * mean(dy * y)) over H, y the normalised
// values.
template <typename T>
inline void norm_grad(const T* dy, const T* y, int64_t H, T rstd, T* dx) {
    T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < H; ++j) {
        s1 += dy[j];
        s2 += dy[j] * y[j];
    }
    const T m1 = s1 / static_cast<T>(H), m2 = s2 / static_cast<T>(H);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dx[j] = rstd * (dy[j] - m1 - y[j] * m2);
}

void check_vector(const at::Tensor& v, int64_t n, const at::Tensor& like, const char* what, bool optional) {
    if (optional && !v.numel()) return;
    TORCH_CHECK(v.dim() == 1 && v.size(0) == n && v.device().is_cpu() && v.scalar_type() == like.scalar_type(),
                "hybridrnn compiled layer-norm LSTM: ", what, " must be (", n, ",) on the CPU in ", like.scalar_type(),
                ", got ", v.sizes(), " ", v.scalar_type());
}

// Layer-norm LSTM forward: xg (T, B, 4H); h0, c0 (B, H); w_hh (4H, H); b_hh (4H) or empty; gain_hh (4H); gain_ih,
// bias_ih (4H) or empty (no input norm); gain_c, bias_c (H). Returns (out (T, B, H), h_T, c_T, and, when save,
// acts (T, B, 4H), cs (T, B, H), tcs (T, B, H) = tanh(gain_c LN(c) + bias_c), ahat (T, B, 4H) = LN(a),
// rstd_a (T, B, 4), chat (T, B, H) = LN(c), rstd_c (T, B), and with the input norm stats_x (T, B, 4, 2), the mean
// and rstd of each gate's block of xg (backward recomputes LN(xg) from them: one (T, B, 4H) tensor less to write);
// empty tensors otherwise).
std::vector<at::Tensor> lstm_ln_forward(const at::Tensor& xg_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                        const at::Tensor& w_hh, const at::Tensor& b_hh_in,
                                        const at::Tensor& gain_hh_in, const at::Tensor& gain_ih_in,
                                        const at::Tensor& bias_ih_in, const at::Tensor& gain_c_in,
                                        const at::Tensor& bias_c_in, double eps_in, bool save) {
    check_sequence(xg_in, h0_in, w_hh, 4, {&c0_in});
    const int64_t T_ = xg_in.size(0), B = xg_in.size(1), H = h0_in.size(1), G = 4 * H;
    check_vector(b_hh_in, G, xg_in, "b_hh", true);
    check_vector(gain_hh_in, G, xg_in, "gain_hh", false);
    check_vector(gain_ih_in, G, xg_in, "gain_ih", true);
    check_vector(bias_ih_in, G, xg_in, "bias_ih", !gain_ih_in.numel());
    check_vector(gain_c_in, H, xg_in, "gain_c", false);
    check_vector(bias_c_in, H, xg_in, "bias_c", false);
    const bool in_norm = gain_ih_in.numel() > 0, has_b = b_hh_in.numel() > 0;
    at::Tensor xg = xg_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
    at::Tensor b_hh = b_hh_in.contiguous(), gain_hh = gain_hh_in.contiguous(), gain_ih = gain_ih_in.contiguous();
    at::Tensor bias_ih = bias_ih_in.contiguous(), gain_c = gain_c_in.contiguous(), bias_c = bias_c_in.contiguous();
    at::Tensor wt = w_hh.t().contiguous();   // (H, 4H)
    auto opt = xg.options();
    auto maybe = [&](std::initializer_list<int64_t> shape, bool on) {
        return on ? at::empty(shape, opt) : at::empty({0}, opt);
    };
    at::Tensor out = at::empty({T_, B, H}, opt);
    at::Tensor cs = at::empty({save ? T_ : 1, B, H}, opt);
    at::Tensor acts = maybe({T_, B, G}, save), tcs = maybe({T_, B, H}, save);
    at::Tensor ahat = maybe({T_, B, G}, save), rstd_a = maybe({T_, B, 4}, save);
    at::Tensor chat = maybe({T_, B, H}, save), rstd_c = maybe({T_, B}, save);
    at::Tensor stats_x = maybe({T_, B, 4, 2}, save && in_norm);
    dispatch(xg.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        const T eps = static_cast<T>(eps_in);
        T* a = scratch<T>(static_cast<size_t>(B * G + 4 * G + 2 * H));   // W_hh h, then per-row temporaries
        T* pre = a + B * G;
        T* ah_tmp = pre + G;
        T* xh_tmp = ah_tmp + G;
        T* ch_tmp = xh_tmp + G;
        T* o_tmp = ch_tmp + H;
        T* zeros_g = o_tmp + H;
        std::fill(zeros_g, zeros_g + G, T(0));
        const T* x = xg.data_ptr<T>();
        const T* w = wt.data_ptr<T>();
        const T* bh = has_b ? b_hh.data_ptr<T>() : zeros_g;
        const T* ghh = gain_hh.data_ptr<T>();
        const T* gih = in_norm ? gain_ih.data_ptr<T>() : nullptr;
        const T* bih = in_norm ? bias_ih.data_ptr<T>() : nullptr;
        const T* gc = gain_c.data_ptr<T>();
        const T* bc = bias_c.data_ptr<T>();
        const T* hp = h0.data_ptr<T>();
        const T* cp = c0.data_ptr<T>();
        T* o = out.data_ptr<T>();
        T* c = cs.data_ptr<T>();
        for (int64_t t = 0; t < T_; ++t) {
            product(hp, B, H, w, G, a, false);   // W_hh h; b_hh is added where a is read (zeros without it)
            T* ct = save ? c + t * B * H : c;
            for (int64_t b = 0; b < B; ++b) {
                const int64_t row = t * B + b;
                const T* xr = x + row * G;
                const T* ar = a + b * G;
                T* ah = save ? ahat.data_ptr<T>() + row * G : ah_tmp;
                for (int64_t k = 0; k < 4; ++k) {    // per gate block: the stats, then one pass writes LN(a), pre
                    const int64_t o = k * H;
                    const T* av = ar + o;
                    const T* bv = bh + o;
                    const T* xv = xr + o;
                    // a + b_hh and (input norm) xg: both means, then both variances (two passes, as exact as
                    // torch's in float64), one loop each so that the two reductions overlap
                    T sa = 0, sx = 0;
#pragma omp simd reduction(+ : sa, sx)
                    for (int64_t j = 0; j < H; ++j) {
                        sa += av[j] + bv[j];
                        sx += xv[j];
                    }
                    const T ma = sa / static_cast<T>(H), mx = sx / static_cast<T>(H);
                    T qa = 0, qx = 0;
#pragma omp simd reduction(+ : qa, qx)
                    for (int64_t j = 0; j < H; ++j) {
                        const T da = av[j] + bv[j] - ma, dx = xv[j] - mx;
                        qa += da * da;
                        qx += dx * dx;
                    }
                    const T ra = T(1) / std::sqrt(qa / static_cast<T>(H) + eps);
                    const T rx = T(1) / std::sqrt(qx / static_cast<T>(H) + eps);
                    if (save) rstd_a.data_ptr<T>()[row * 4 + k] = ra;
                    if (in_norm) {
                        if (save) {
                            stats_x.data_ptr<T>()[(row * 4 + k) * 2] = mx;
                            stats_x.data_ptr<T>()[(row * 4 + k) * 2 + 1] = rx;
                        }
#pragma omp simd
                        for (int64_t j = 0; j < H; ++j) {
                            const T an = (av[j] + bv[j] - ma) * ra;
                            ah[o + j] = an;
                            pre[o + j] = gih[o + j] * ((xv[j] - mx) * rx) + bih[o + j] + ghh[o + j] * an;
                        }
                    } else {
#pragma omp simd
                        for (int64_t j = 0; j < H; ++j) {
                            const T an = (av[j] + bv[j] - ma) * ra;
                            ah[o + j] = an;
                            pre[o + j] = xv[j] + ghh[o + j] * an;
                        }
                    }
                }
                const T* cpb = cp + b * H;
                T* cb = ct + b * H;
                T* acb = save ? acts.data_ptr<T>() + row * G : nullptr;
                T* og = save ? acb + 3 * H : o_tmp;
#pragma omp simd
                for (int64_t j = 0; j < H; ++j) {
                    const T i = sigm(pre[j]);
                    const T f = sigm(pre[H + j]);
                    const T g = tanh_s(pre[2 * H + j]);
                    og[j] = sigm(pre[3 * H + j]);
                    cb[j] = f * cpb[j] + i * g;   // (in place without save: cpb[j] is read before cb[j] is written)
                    if (save) {
                        acb[j] = i;
                        acb[H + j] = f;
                        acb[2 * H + j] = g;
                    }
                }
                T* ch = save ? chat.data_ptr<T>() + row * H : ch_tmp;
                T mc, rc;
                row_stats(cb, H, eps, mc, rc);
                if (save) rstd_c.data_ptr<T>()[row] = rc;
                T* tcb = save ? tcs.data_ptr<T>() + row * H : nullptr;
                T* hb = o + row * H;
#pragma omp simd
                for (int64_t j = 0; j < H; ++j) {
                    const T cn = (cb[j] - mc) * rc;
                    const T th = tanh_s(gc[j] * cn + bc[j]);
                    hb[j] = og[j] * th;
                    if (save) {
                        ch[j] = cn;
                        tcb[j] = th;
                    }
                }
            }
            hp = o + t * B * H;
            cp = ct;
        }
    });
    at::Tensor c_T = save ? cs[T_ - 1].clone() : cs[0].clone();
    return {out, out[T_ - 1].clone(), c_T, acts, cs, tcs, ahat, rstd_a, chat, rstd_c, stats_x};
}

// Layer-norm LSTM backward, from lstm_ln_forward's saved tensors and the gradients of (out, h_T, c_T). Returns
// (d xg (T, B, 4H), d h0, d c0, d w_hh (4H, H), d b_hh (4H), d gain_hh (4H), d gain_c (H), d bias_c (H),
// d gain_ih (4H), d bias_ih (4H), dA (T, B, 4H) the gradient of W_hh h + b_hh); d gain_ih and d bias_ih empty
// without the input norm, d w_hh as weight_grad's mode says.
std::vector<at::Tensor> lstm_ln_backward(const at::Tensor& d_out_in, const at::Tensor& d_hT_in,
                                         const at::Tensor& d_cT_in, const at::Tensor& acts, const at::Tensor& cs,
                                         const at::Tensor& tcs, const at::Tensor& ahat, const at::Tensor& rstd_a,
                                         const at::Tensor& chat, const at::Tensor& rstd_c, const at::Tensor& xg_in,
                                         const at::Tensor& stats_x, const at::Tensor& out, const at::Tensor& h0_in,
                                         const at::Tensor& c0_in, const at::Tensor& w_hh_in,
                                         const at::Tensor& gain_hh_in, const at::Tensor& gain_ih_in,
                                         const at::Tensor& gain_c_in, int64_t weight_mode) {
    const int64_t T_ = acts.size(0), B = acts.size(1), G = acts.size(2), H = G / 4;
    const bool in_norm = gain_ih_in.numel() > 0;
    auto opt = acts.options();
    at::Tensor d_out = d_out_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
    at::Tensor w_hh = w_hh_in.contiguous(), gain_hh = gain_hh_in.contiguous(), gain_c = gain_c_in.contiguous();
    at::Tensor gain_ih = gain_ih_in.contiguous(), xg = in_norm ? xg_in.contiguous() : xg_in;
    at::Tensor dX = at::empty({T_, B, G}, opt);
    at::Tensor dA = at::empty({T_, B, G}, opt);   // gradient of a = W_hh h + b_hh
    at::Tensor dP = in_norm ? at::empty({B, G}, opt) : at::empty({0}, opt);   // gradient of pre, one step
    at::Tensor dh = d_hT_in.contiguous().clone();
    at::Tensor dc = d_cT_in.contiguous().clone();
    at::Tensor g_b_hh = at::zeros({G}, opt), g_gain_hh = at::zeros({G}, opt), g_gain_c = at::zeros({H}, opt), g_bias_c = at::zeros({H}, opt);
    at::Tensor g_gain_ih = in_norm ? at::zeros({G}, opt) : at::empty({0}, opt);
    at::Tensor g_bias_ih = in_norm ? at::zeros({G}, opt) : at::empty({0}, opt);
    dispatch(acts.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        T* tmp = scratch<T>(static_cast<size_t>(2 * G));
        T* xh = tmp + G;
        const T* A = acts.data_ptr<T>();
        const T* C = cs.data_ptr<T>();
        const T* TC = tcs.data_ptr<T>();
        const T* AH = ahat.data_ptr<T>();
        const T* RA = rstd_a.data_ptr<T>();
        const T* CH = chat.data_ptr<T>();
        const T* RC = rstd_c.data_ptr<T>();
        const T* XG = in_norm ? xg.data_ptr<T>() : nullptr;
        const T* SX = in_norm ? stats_x.data_ptr<T>() : nullptr;
        const T* dO = d_out.data_ptr<T>();
        const T* w = w_hh.data_ptr<T>();
        const T* ghh = gain_hh.data_ptr<T>();
        const T* gih = in_norm ? gain_ih.data_ptr<T>() : nullptr;
        const T* gc = gain_c.data_ptr<T>();
        T* sb_hh = g_b_hh.data_ptr<T>();
        T* sg_hh = g_gain_hh.data_ptr<T>();
        T* sg_c = g_gain_c.data_ptr<T>();
        T* sb_c = g_bias_c.data_ptr<T>();
        T* sg_ih = in_norm ? g_gain_ih.data_ptr<T>() : nullptr;
        T* sb_ih = in_norm ? g_bias_ih.data_ptr<T>() : nullptr;
        T* dhc = dh.data_ptr<T>();
        T* dcc = dc.data_ptr<T>();
        for (int64_t t = T_ - 1; t >= 0; --t) {
            const T* cprev = t > 0 ? C + (t - 1) * B * H : c0.data_ptr<T>();
            T* da_t = dA.data_ptr<T>() + t * B * G;
            for (int64_t b = 0; b < B; ++b) {
                const int64_t row = t * B + b;
                const T* a = A + row * G;
                const T* tc = TC + row * H;
                const T* ch = CH + row * H;
                const T* cp = cprev + b * H;
                const T* go = dO + row * H;
                T* dp = in_norm ? dP.data_ptr<T>() + b * G : dX.data_ptr<T>() + row * G;   // d pre
                T* dhb = dhc + b * H;
                T* dcb = dcc + b * H;
                T s1 = 0, s2 = 0;                     // the cell norm's input gradient: sums, then in the gates' pass
#pragma omp simd reduction(+ : s1, s2)
                for (int64_t j = 0; j < H; ++j) {
                    const T o = a[3 * H + j], th = tc[j];
                    const T dht = go[j] + dhb[j];
                    dp[3 * H + j] = dht * th * o * (T(1) - o);
                    const T dy = dht * o * (T(1) - th * th);   // d (gain_c LN(c) + bias_c)
                    sg_c[j] += dy * ch[j];
                    sb_c[j] += dy;
                    const T u = dy * gc[j];
                    tmp[j] = u;
                    s1 += u;
                    s2 += u * ch[j];
                }
                const T rc = RC[row], m1 = s1 / static_cast<T>(H), m2 = s2 / static_cast<T>(H);
#pragma omp simd
                for (int64_t j = 0; j < H; ++j) {
                    const T i = a[j], f = a[H + j], g = a[2 * H + j];
                    const T dcn = dcb[j] + rc * (tmp[j] - m1 - ch[j] * m2);
                    dp[j] = dcn * g * i * (T(1) - i);
                    dp[H + j] = dcn * cp[j] * f * (T(1) - f);
                    dp[2 * H + j] = dcn * i * (T(1) - g * g);
                    dcb[j] = dcn * f;
                }
                // recurrent norm, per gate block: one pass for the gain's gradient and the two sums of the input
                // gradient (norm_grad), one to write it (dA) and sum the bias gradient
                const T* ah = AH + row * G;
                T* da = da_t + b * G;
                for (int64_t k = 0; k < 4; ++k) {
                    const int64_t o = k * H;
                    T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
                    for (int64_t j = 0; j < H; ++j) {
                        const T g = dp[o + j], u = g * ghh[o + j];
                        sg_hh[o + j] += g * ah[o + j];
                        tmp[o + j] = u;
                        s1 += u;
                        s2 += u * ah[o + j];
                    }
                    const T r = RA[row * 4 + k], m1 = s1 / static_cast<T>(H), m2 = s2 / static_cast<T>(H);
#pragma omp simd
                    for (int64_t j = 0; j < H; ++j) {
                        const T v = r * (tmp[o + j] - m1 - ah[o + j] * m2);
                        da[o + j] = v;
                        sb_hh[o + j] += v;
                    }
                }
                if (in_norm) {                        // input norm: LN(xg) recomputed from its saved stats
                    const T* xr = XG + row * G;
                    const T* st = SX + row * 8;
                    T* dx = dX.data_ptr<T>() + row * G;
                    for (int64_t k = 0; k < 4; ++k) {
                        const int64_t o = k * H;
                        const T m = st[2 * k], r = st[2 * k + 1];
                        T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
                        for (int64_t j = 0; j < H; ++j) {
                            const T g = dp[o + j], xn = (xr[o + j] - m) * r, u = g * gih[o + j];
                            xh[o + j] = xn;
                            sg_ih[o + j] += g * xn;
                            sb_ih[o + j] += g;
                            tmp[o + j] = u;
                            s1 += u;
                            s2 += u * xn;
                        }
                        const T m1 = s1 / static_cast<T>(H), m2 = s2 / static_cast<T>(H);
#pragma omp simd
                        for (int64_t j = 0; j < H; ++j) dx[o + j] = r * (tmp[o + j] - m1 - xh[o + j] * m2);
                    }
                }
            }
            product(da_t, B, G, w, H, dhc, false);   // d h_{t-1} = dA_t W_hh
        }
    });
    // d W_hh = sum_t dA_t^T h_{t-1}: step 0 with h0, the rest with out[:-1] (no concatenated copy in float)
    at::Tensor dW;
    if (weight_mode != 0) {
        dW = weight_mode == 2 ? weight_grad(dA, dA, 2)
                              : weight_grad(dA.view({T_ * B, G}),
                                            at::cat({h0.unsqueeze(0), out.narrow(0, 0, T_ - 1)}, 0).view({T_ * B, H}),
                                            weight_mode);
    } else {
        dW = at::mm(dA[0].t(), h0);
        if (T_ > 1)
            dW.addmm_(dA.narrow(0, 1, T_ - 1).reshape({(T_ - 1) * B, G}).t(),
                      out.narrow(0, 0, T_ - 1).reshape({(T_ - 1) * B, H}));
    }
    return {dX, dh, dc, dW, g_b_hh, g_gain_hh, g_gain_c, g_bias_c, g_gain_ih, g_bias_ih, dA};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "hybridrnn small-batch LSTM/GRU kernels (step and whole-sequence forward/backward)";
    m.def("lstm_step", &lstm_step, "one LSTM step over all layers");
    m.def("gru_step", &gru_step, "one GRU step over all layers");
    m.def("lstm_forward", &lstm_forward, "LSTM forward over a sequence");
    m.def("lstm_backward", &lstm_backward, "LSTM backward over a sequence");
    m.def("gru_forward", &gru_forward, "GRU forward over a sequence");
    m.def("gru_backward", &gru_backward, "GRU backward over a sequence");
    m.def("lstm_ln_forward", &lstm_ln_forward, "layer-norm LSTM forward over a sequence");
    m.def("lstm_ln_backward", &lstm_ln_backward, "layer-norm LSTM backward over a sequence");
    m.def("set_gemm_rows", [](int64_t rows) { g_gemm_rows = rows; }, "batch from which products use sgemm");
    m.def("gemm_rows", []() { return g_gemm_rows; }, "batch from which products use sgemm");
}
