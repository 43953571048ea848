// Inference forward of an Attentive Normalization layer on the CPU, as one operator.
//
// An AN layer in eval is a per-instance affine map out = a[n,c] * x + b[n,c] whose coefficients come
// from the per-instance moments of x (see attentive_norm/layers/fused.py for the maths). Done with
// PyTorch operators that is two passes over x plus about forty small N×C operators, whose dispatch
// costs more than the arithmetic inside a network. Here one call does it all, instance by instance:
// the moments of instance n in one reading pass, its N×C maths (pooling, attention, mixture,
// standardisation) in plain loops, then the affine map while its data is still in cache.
//
// Layouts: NCHW-contiguous and channels_last. Dtypes: float64 (computed in double), float32, bfloat16
// and float16 (computed in float, written in the input's dtype). Python checks everything else and
// calls this only for a layer in eval (running statistics) with a head it supports.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace {

using at::Tensor;

// Pooling, gate and standardisation codes; attentive_norm/layers/native.py passes the same numbers.
constexpr int64_t kPoolMean = 0;
constexpr int64_t kPoolMeanRsqrtVar = 1;
constexpr int64_t kGateHardSigmoid = 0;
constexpr int64_t kGateSigmoid = 1;
constexpr int64_t kGateSoftmax = 2;

// Largest relative error allowed to the shifted one-pass variance (fused.ONE_PASS_CONDITION); a plane
// beyond it is recomputed with the centred two-pass formula.
constexpr double kOnePassCondition = 1e-5;

// Loads and stores: bfloat16 <-> float as bit operations the compiler vectorises.
template <typename acc_t, typename T>
inline acc_t load(T v) {
  return static_cast<acc_t>(v);
}
template <>
inline float load<float, c10::BFloat16>(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
template <typename T, typename acc_t>
inline void store(T& out, acc_t v) {
  out = static_cast<T>(v);
}
template <>
inline void store<c10::BFloat16, float>(c10::BFloat16& out, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;  // round to nearest even
  out.x = static_cast<uint16_t>(v != v ? 0x7fc0u : rounded);
}

// Parameters of the N×C maths, already in the accumulation dtype and contiguous.
template <typename acc_t>
struct Head {
  int64_t channels, mixtures, groups, pooling, gate;  // groups 0: BatchNorm with running statistics
  acc_t eps, pooling_eps, logit_eps;
  const acc_t* running_mean;  // C (BatchNorm)
  const acc_t* running_rstd;  // C: 1 / sqrt(running_var + eps), computed once per call
  const acc_t* weight;        // K×C projection
  const acc_t* bias;          // K or nullptr
  const acc_t* logit_mean;    // K or nullptr: no logit BatchNorm
  const acc_t* logit_var;
  const acc_t* logit_weight;
  const acc_t* logit_bias;
  const acc_t* mixture_weight;  // K×C
  const acc_t* mixture_bias;    // K×C
};

// Mean and biased variance of one plane given as a shifted sum and sum of squares; recomputed around
// the mean (two passes, through `values(i)`) where the one-pass result would lose precision.
template <typename acc_t, typename Values>
inline void finish_moments(acc_t shift, acc_t sum, acc_t squares, int64_t count, Values values,
                           acc_t& mean, acc_t& var) {
  const acc_t offset = sum / count;
  mean = shift + offset;
  var = std::max(squares / count - offset * offset, acc_t(0));
  const acc_t limit = acc_t(kOnePassCondition) / std::numeric_limits<acc_t>::epsilon();
  if (offset * offset <= limit * var || (offset == acc_t(0) && var == acc_t(0))) return;
  acc_t centred = 0;
  for (int64_t i = 0; i < count; ++i) {
    const acc_t d = values(i) - mean;
    centred += d * d;
  }
  var = centred / count;
}

// Moments of the contiguous planes [c0, c1) of one NCHW instance.
template <typename scalar_t, typename acc_t>
void planar_moments(const scalar_t* x, int64_t hw, int64_t c0, int64_t c1, acc_t* mean, acc_t* var) {
  for (int64_t c = c0; c < c1; ++c) {
    const scalar_t* p = x + c * hw;
    const acc_t shift = load<acc_t>(p[0]);
    acc_t sum = 0, square = 0;
#pragma omp simd reduction(+ : sum, square)
    for (int64_t i = 0; i < hw; ++i) {
      const acc_t d = load<acc_t>(p[i]) - shift;
      sum += d;
      square += d * d;
    }
    finish_moments<acc_t>(shift, sum, square, hw, [p](int64_t j) { return load<acc_t>(p[j]); },
                          mean[c], var[c]);
  }
}

// Moments of the channels [c0, c1) of one channels_last instance (hw rows of C values).
template <typename scalar_t, typename acc_t>
void row_moments(const scalar_t* x, int64_t hw, int64_t channels, int64_t c0, int64_t c1, acc_t* mean,
                 acc_t* var) {
  const int64_t width = c1 - c0;
  std::vector<acc_t> shift(width), sums(width, acc_t(0)), squares(width, acc_t(0));
  for (int64_t c = 0; c < width; ++c) shift[c] = load<acc_t>(x[c0 + c]);
  for (int64_t r = 0; r < hw; ++r) {
    const scalar_t* row = x + r * channels + c0;
    acc_t* __restrict__ sum = sums.data();
    acc_t* __restrict__ square = squares.data();
    const acc_t* __restrict__ origin = shift.data();
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) {
      const acc_t d = load<acc_t>(row[c]) - origin[c];
      sum[c] += d;
      square[c] += d * d;
    }
  }
  for (int64_t c = 0; c < width; ++c) {
    const scalar_t* column = x + c0 + c;
    finish_moments<acc_t>(
        shift[c], sums[c], squares[c], hw,
        [column, channels](int64_t j) { return load<acc_t>(column[j * channels]); }, mean[c0 + c],
        var[c0 + c]);
  }
}

// The N×C maths of one instance: moments in, affine coefficients a (scale) and b (shift) out.
template <typename acc_t>
void coefficients(const Head<acc_t>& h, int64_t hw, const acc_t* mean, const acc_t* var, acc_t* a,
                  acc_t* b) {
  const int64_t C = h.channels, K = h.mixtures;
  std::vector<acc_t> pooled(C), lam(K);
  const acc_t unbias = acc_t(hw) / acc_t(std::max<int64_t>(hw - 1, 1));
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    pooled[c] = h.pooling == kPoolMean ? mean[c] : mean[c] / std::sqrt(var[c] * unbias + h.pooling_eps);
  }
  for (int64_t k = 0; k < K; ++k) {
    const acc_t* w = h.weight + k * C;
    acc_t z = 0;
#pragma omp simd reduction(+ : z)
    for (int64_t c = 0; c < C; ++c) z += w[c] * pooled[c];
    if (h.bias != nullptr) z += h.bias[k];
    if (h.logit_mean != nullptr) {
      z = (z - h.logit_mean[k]) / std::sqrt(h.logit_var[k] + h.logit_eps) * h.logit_weight[k] +
          h.logit_bias[k];
    }
    lam[k] = z;
  }
  if (h.gate == kGateSoftmax) {
    const acc_t top = *std::max_element(lam.begin(), lam.end());
    acc_t total = 0;
    for (auto& z : lam) total += (z = std::exp(z - top));
    for (auto& z : lam) z /= total;
  } else {
    for (auto& z : lam) {
      z = h.gate == kGateHardSigmoid ? std::min(std::max(z + acc_t(3), acc_t(0)), acc_t(6)) / acc_t(6)
                                     : acc_t(1) / (acc_t(1) + std::exp(-z));
    }
  }
  std::fill(a, a + C, acc_t(0));
  std::fill(b, b + C, acc_t(0));
  for (int64_t k = 0; k < K; ++k) {
    const acc_t* gamma = h.mixture_weight + k * C;
    const acc_t* beta = h.mixture_bias + k * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      a[c] += lam[k] * gamma[c];
      b[c] += lam[k] * beta[c];
    }
  }
  if (h.groups == 0) {  // BatchNorm with running statistics
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      a[c] *= h.running_rstd[c];
      b[c] -= h.running_mean[c] * a[c];
    }
    return;
  }
  const int64_t width = C / h.groups;  // GroupNorm: statistics of each group from its channels' moments
  for (int64_t g = 0; g < h.groups; ++g) {
    const int64_t c0 = g * width;
    acc_t group_mean = 0, group_var = 0;
    for (int64_t c = c0; c < c0 + width; ++c) group_mean += mean[c];
    group_mean /= width;
    for (int64_t c = c0; c < c0 + width; ++c) {
      const acc_t d = mean[c] - group_mean;
      group_var += var[c] + d * d;
    }
    group_var /= width;
    const acc_t rstd = width * hw <= 1 ? acc_t(0) : acc_t(1) / std::sqrt(group_var + h.eps);
    for (int64_t c = c0; c < c0 + width; ++c) {
      a[c] *= rstd;
      b[c] -= group_mean * a[c];
    }
  }
}

template <typename scalar_t, typename acc_t>
void planar_affine(const scalar_t* x, scalar_t* out, int64_t hw, int64_t c0, int64_t c1, const acc_t* a,
                   const acc_t* b) {
  for (int64_t c = c0; c < c1; ++c) {
    const scalar_t* p = x + c * hw;
    scalar_t* q = out + c * hw;
    const acc_t scale = a[c], offset = b[c];
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) store(q[i], scale * load<acc_t>(p[i]) + offset);
  }
}

template <typename scalar_t, typename acc_t>
void row_affine(const scalar_t* x, scalar_t* out, int64_t r0, int64_t r1, int64_t channels, const acc_t* a,
                const acc_t* b) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* row = x + r * channels;
    scalar_t* target = out + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) store(target[c], a[c] * load<acc_t>(row[c]) + b[c]);
  }
}

template <typename scalar_t, typename acc_t>
void eval_forward_impl(const Tensor& x, Tensor& out, const Head<acc_t>& head, bool channels_last) {
  const int64_t N = x.size(0), C = x.size(1), hw = x.size(2) * x.size(3);
  const scalar_t* input = x.const_data_ptr<scalar_t>();
  scalar_t* output = out.mutable_data_ptr<scalar_t>();
  std::vector<acc_t> mean(N * C), var(N * C), a(N * C), b(N * C);

  if (N >= at::get_num_threads()) {
    // One instance per task: its moments, maths and affine map while its data is in cache.
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* xn = input + n * C * hw;
        scalar_t* on = output + n * C * hw;
        acc_t *mn = &mean[n * C], *vn = &var[n * C], *an = &a[n * C], *bn = &b[n * C];
        if (channels_last) {
          row_moments(xn, hw, C, 0, C, mn, vn);
        } else {
          planar_moments(xn, hw, 0, C, mn, vn);
        }
        coefficients(head, hw, mn, vn, an, bn);
        if (channels_last) {
          row_affine(xn, on, 0, hw, C, an, bn);
        } else {
          planar_affine(xn, on, hw, 0, C, an, bn);
        }
      }
    });
    return;
  }
  // Fewer instances than threads (e.g. one image): every pass split over channels or rows.
  constexpr int64_t kBlock = 64;  // channels per task in channels_last
  const int64_t blocks = channels_last ? (C + kBlock - 1) / kBlock : C;
  at::parallel_for(0, N * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, block = t % blocks;
      const scalar_t* xn = input + n * C * hw;
      if (channels_last) {
        row_moments(xn, hw, C, block * kBlock, std::min(C, (block + 1) * kBlock), &mean[n * C], &var[n * C]);
      } else {
        planar_moments(xn, hw, block, block + 1, &mean[n * C], &var[n * C]);
      }
    }
  });
  for (int64_t n = 0; n < N; ++n) coefficients(head, hw, &mean[n * C], &var[n * C], &a[n * C], &b[n * C]);
  const int64_t rows = channels_last ? hw : C;  // rows of C values, or planes
  at::parallel_for(0, N * rows, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1;) {
      const int64_t n = t / rows, r0 = t % rows, r1 = std::min(rows, r0 + (t1 - t));
      const scalar_t* xn = input + n * C * hw;
      scalar_t* on = output + n * C * hw;
      if (channels_last) {
        row_affine(xn, on, r0, r1, C, &a[n * C], &b[n * C]);
      } else {
        planar_affine(xn, on, hw, r0, r1, &a[n * C], &b[n * C]);
      }
      t += r1 - r0;
    }
  });
}

// Contiguous tensor in the accumulation dtype (a no-op when it already is), kept alive by `keep`.
const void* prepared(const std::optional<Tensor>& t, at::ScalarType dtype, std::vector<Tensor>& keep) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep.push_back(t->to(dtype).contiguous());
  return keep.back().const_data_ptr();
}

Tensor eval_forward(const Tensor& x, const std::optional<Tensor>& running_mean,
                    const std::optional<Tensor>& running_var, int64_t groups, double eps, int64_t pooling,
                    double pooling_eps, const Tensor& weight, const std::optional<Tensor>& bias,
                    const std::optional<Tensor>& logit_mean, const std::optional<Tensor>& logit_var,
                    const std::optional<Tensor>& logit_weight, const std::optional<Tensor>& logit_bias,
                    double logit_eps, int64_t gate, const Tensor& mixture_weight,
                    const Tensor& mixture_bias) {
  TORCH_CHECK(x.dim() == 4, "eval_forward: expected an N×C×H×W input, got ", x.dim(), " dimensions");
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.is_contiguous() || channels_last, "eval_forward: input must be NCHW or channels_last");
  const int64_t C = x.size(1), K = mixture_weight.size(0);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == K && weight.size(1) == C &&
                  mixture_weight.size(1) == C && mixture_bias.sizes() == mixture_weight.sizes(),
              "eval_forward: parameter shapes do not match ", C, " channels and ", K, " mixtures");
  TORCH_CHECK(groups > 0 ? C % groups == 0 : running_mean.has_value() && running_var.has_value(),
              "eval_forward: needs running statistics or a number of groups dividing the channels");
  TORCH_CHECK(pooling == kPoolMean || pooling == kPoolMeanRsqrtVar, "eval_forward: unknown pooling ", pooling);
  TORCH_CHECK(gate >= kGateHardSigmoid && gate <= kGateSoftmax, "eval_forward: unknown gate ", gate);
  Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "eval_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    std::vector<Tensor> keep;
    auto ptr = [&](const std::optional<Tensor>& t) { return static_cast<const acc_t*>(prepared(t, acc, keep)); };
    const bool logit_norm = logit_mean.has_value() && logit_mean->defined();
    std::vector<acc_t> running_rstd;
    if (groups == 0) {
      const acc_t* running = ptr(running_var);
      for (int64_t c = 0; c < C; ++c) running_rstd.push_back(acc_t(1) / std::sqrt(running[c] + acc_t(eps)));
    }
    Head<acc_t> head{C,
                     K,
                     groups,
                     pooling,
                     gate,
                     static_cast<acc_t>(eps),
                     static_cast<acc_t>(pooling_eps),
                     static_cast<acc_t>(logit_eps),
                     groups > 0 ? nullptr : ptr(running_mean),
                     groups > 0 ? nullptr : running_rstd.data(),
                     ptr(weight),
                     ptr(bias),
                     logit_norm ? ptr(logit_mean) : nullptr,
                     logit_norm ? ptr(logit_var) : nullptr,
                     logit_norm ? ptr(logit_weight) : nullptr,
                     logit_norm ? ptr(logit_bias) : nullptr,
                     ptr(mixture_weight),
                     ptr(mixture_bias)};
    eval_forward_impl<scalar_t, acc_t>(x, out, head, channels_last);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(attentive_norm, m) {
  m.def(
      "eval_forward(Tensor x, Tensor? running_mean, Tensor? running_var, int groups, float eps, "
      "int pooling, float pooling_eps, Tensor weight, Tensor? bias, Tensor? logit_mean, "
      "Tensor? logit_var, Tensor? logit_weight, Tensor? logit_bias, float logit_eps, int gate, "
      "Tensor mixture_weight, Tensor mixture_bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(attentive_norm, CPU, m) {
  m.impl("eval_forward", &eval_forward);
}
