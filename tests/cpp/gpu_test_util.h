// Helpers of the GPU tests: random problem data on the host, device buffers, one GPU run of
// fused_moe_run with poisoned outputs and workspace, one run of the CPU reference, comparisons.
//
// Every GPU test starts with FLASHMOE_REQUIRE_GPU(): without a CUDA device it is skipped with a
// visible reason, so the binary runs (and passes) on CI machines that have no GPU.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "flashmoe/fused_moe.h"
#include "flashmoe/reference.h"
#include "reference/float_bits.h"

namespace flashmoe::gpu_test {

inline bool has_cuda_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define FLASHMOE_REQUIRE_GPU()                                                  \
  do {                                                                          \
    if (!::flashmoe::gpu_test::has_cuda_device()) {                             \
      GTEST_SKIP() << "no CUDA device: GPU test not run";                       \
    }                                                                           \
  } while (0)

#define FLASHMOE_ASSERT_CUDA(expr)                                              \
  do {                                                                          \
    cudaError_t const _e = (expr);                                              \
    ASSERT_EQ(_e, cudaSuccess) << #expr << ": " << cudaGetErrorString(_e);      \
  } while (0)

/// A device allocation (freed on scope exit).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) { resize(bytes); }
  DeviceBuffer(DeviceBuffer const&) = delete;
  DeviceBuffer& operator=(DeviceBuffer const&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  void resize(std::size_t bytes) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = bytes;
    if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

template <typename T>
void upload(DeviceBuffer* d, std::vector<T> const& h) {
  d->resize(h.size() * sizeof(T));
  if (!h.empty()) cudaMemcpy(d->get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
}

template <typename T>
std::vector<T> download(DeviceBuffer const& d, std::size_t n) {
  std::vector<T> h(n);
  if (n > 0) cudaMemcpy(h.data(), d.get(), n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

inline uint16_t to_bits(DType t, double v) {
  return t == DType::kBFloat16 ? detail::double_to_bf16_bits(v) : detail::double_to_fp16_bits(v);
}
inline double from_bits(DType t, uint16_t b) {
  return t == DType::kBFloat16 ? detail::bf16_bits_to_double(b) : detail::fp16_bits_to_double(b);
}

inline MoeProblem linear_problem(int64_t T, int64_t E, int k, int64_t H, int64_t D,
                                 DType dtype = DType::kBFloat16,
                                 WeightLayout layout = WeightLayout::kInOut) {
  MoeProblem p;
  p.num_tokens = T;
  p.hidden = H;
  p.num_experts = E;
  p.num_local_experts = E;
  p.kind = ExpertKind::kLinear;
  p.out_dim = D;
  p.layout = layout;
  p.token_dtype = dtype;
  p.weight_dtype = dtype;
  p.score_dtype = DType::kFloat32;
  p.routing.top_k = k;
  return p;
}

inline MoeProblem ffn_problem(int64_t T, int64_t E, int k, int64_t H, int64_t I,
                              Activation act = Activation::kSilu, DType dtype = DType::kBFloat16,
                              WeightLayout layout = WeightLayout::kInOut) {
  MoeProblem p = linear_problem(T, E, k, H, 0, dtype, layout);
  p.kind = ExpertKind::kGatedFFN;
  p.out_dim = 0;
  p.inter_dim = I;
  p.activation = act;
  return p;
}

/// How the router scores are drawn.
enum class Logits {
  kNormal,        // N(0, 1) per (token, expert)
  kOneExpert,     // expert `hot` gets +12: it is every token's first choice
  kSkewed,        // + 0.4 * e: high experts are popular (capacity overflows)
  kCoarse,        // integers in [-2, 2]: many exact ties (ties go to the lower index)
  kProbabilities  // positive, rows sum to 1 (scoring "none")
};

/// The host arrays of one problem (16-bit floats as raw bits).
struct HostData {
  std::vector<uint16_t> tokens;      // [T, H]
  std::vector<uint16_t> w1;          // [E_local, ...]
  std::vector<uint16_t> w2;          // gated FFN only
  std::vector<float> scores_f32;     // [T, E] when score_dtype is float32
  std::vector<uint16_t> scores_16;   // [T, E] when score_dtype is bf16 / fp16
  std::vector<float> bias;           // [E]
  std::vector<int32_t> ids_in;       // [T, k] pre-routed
  std::vector<float> weights_in;     // [T, k] pre-routed
  std::vector<int32_t> expert_map;   // [E]
};

/// Fresh random data for `p` (never zeros): tokens in [-1, 1), weights in [-1, 1) / sqrt(fan-in).
inline HostData make_data(MoeProblem const& p, uint32_t seed, Logits logits = Logits::kNormal,
                          int hot = 0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  HostData d;
  int64_t const T = p.num_tokens, H = p.hidden, E = p.num_experts, EL = p.num_local_experts;
  int const k = p.routing.top_k;
  d.tokens.resize(T * H);
  for (auto& v : d.tokens) v = to_bits(p.token_dtype, uni(rng));
  bool const ffn = p.kind == ExpertKind::kGatedFFN;
  int64_t const n1 = ffn ? 2 * p.inter_dim : p.out_dim;
  double const s1 = 1.0 / std::sqrt(static_cast<double>(H));
  d.w1.resize(EL * H * n1);
  for (auto& v : d.w1) v = to_bits(p.weight_dtype, uni(rng) * s1 * 2.0);
  if (ffn) {
    double const s2 = 1.0 / std::sqrt(static_cast<double>(p.inter_dim));
    d.w2.resize(EL * p.inter_dim * H);
    for (auto& v : d.w2) v = to_bits(p.weight_dtype, uni(rng) * s2 * 4.0);
  }
  if (!p.prerouted) {
    std::vector<double> s(T * E);
    for (int64_t t = 0; t < T; ++t) {
      double row_sum = 0.0;
      for (int64_t e = 0; e < E; ++e) {
        double v = normal(rng);
        switch (logits) {
          case Logits::kOneExpert: v += (e == hot) ? 12.0 : 0.0; break;
          case Logits::kSkewed: v += 0.4 * static_cast<double>(e); break;
          case Logits::kCoarse: v = std::round(std::clamp(v * 1.2, -2.0, 2.0)); break;
          case Logits::kProbabilities: v = 0.05 + std::fabs(v); break;
          default: break;
        }
        s[t * E + e] = v;
        row_sum += v;
      }
      if (logits == Logits::kProbabilities) {
        for (int64_t e = 0; e < E; ++e) s[t * E + e] /= row_sum;
      }
    }
    if (p.score_dtype == DType::kFloat32) {
      d.scores_f32.assign(s.begin(), s.end());
    } else {
      d.scores_16.resize(s.size());
      for (size_t i = 0; i < s.size(); ++i) d.scores_16[i] = to_bits(p.score_dtype, s[i]);
    }
  }
  if (p.has_correction_bias) {
    d.bias.resize(E);
    for (auto& b : d.bias) b = static_cast<float>(0.3 * uni(rng));
  }
  if (p.prerouted) {
    d.ids_in.resize(T * k);
    d.weights_in.resize(T * k);
    std::vector<int32_t> perm(E);
    std::uniform_real_distribution<double> w01(0.05, 1.0);
    for (int64_t t = 0; t < T; ++t) {
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int j = 0; j < k; ++j) {
        bool const none = w01(rng) < 0.1;  // some slots carry no expert
        d.ids_in[t * k + j] = none ? -1 : perm[j];
        d.weights_in[t * k + j] = static_cast<float>(w01(rng));
      }
    }
  }
  if (p.has_expert_map) {
    // A random subset of E_local experts is local, in random order.
    std::vector<int32_t> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    d.expert_map.assign(E, -1);
    for (int64_t i = 0; i < EL; ++i) d.expert_map[perm[i]] = static_cast<int32_t>(i);
  }
  return d;
}

/// deterministic = false against the deterministic output of the same call (T <= 256: the one-
/// kernel forwards' atomic combine; above, the deterministic one runs): the atomic combine
/// rounds each of a token's k partial sums to bf16/fp16 (2^-9 / 2^-12 relative each), the
/// deterministic one only the final sum.
inline constexpr double kAtomicCombineTol = 1e-2;

/// The bf16/fp16 path fused_moe_run takes for `p` on the current device: on a compute
/// capability 9.0 device (unless FLASHMOE_GEMM=sm80) the one-kernel forward when E <= 256 and
/// FLASHMOE_FUSED is not 0, else the multi-kernel sm_90a one; elsewhere the sm_80 GEMMs.
inline KernelPath expected_16bit_path(MoeProblem const& p) {
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  char const* gemm = std::getenv("FLASHMOE_GEMM");
  bool const forced = gemm != nullptr && std::string(gemm) == "sm80";
  if (major != 9 || minor != 0 || forced) return KernelPath::kMultiKernelSm80;
  char const* fused = std::getenv("FLASHMOE_FUSED");
  bool const fused_off = fused != nullptr && std::string(fused) == "0";
  return !fused_off && p.num_experts <= 256 && p.num_local_experts <= 256
             ? KernelPath::kFusedSm90
             : KernelPath::kMultiKernelSm90;
}

/// What one forward produced (host copies).
struct Result {
  Status status;
  KernelPath path = KernelPath::kNone;
  std::vector<uint16_t> out;
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_weights;
  std::vector<int32_t> expert_load;
  std::vector<int64_t> counts;
};

inline MoeArgs host_args(MoeProblem const& p, HostData const& d) {
  MoeArgs a;
  a.tokens = d.tokens.data();
  a.w1 = d.w1.data();
  a.w2 = d.w2.empty() ? nullptr : d.w2.data();
  if (!p.prerouted) {
    a.routing_weights = p.score_dtype == DType::kFloat32
                            ? static_cast<void const*>(d.scores_f32.data())
                            : static_cast<void const*>(d.scores_16.data());
  }
  a.correction_bias = d.bias.empty() ? nullptr : d.bias.data();
  a.topk_ids_in = d.ids_in.empty() ? nullptr : d.ids_in.data();
  a.topk_weights_in = d.weights_in.empty() ? nullptr : d.weights_in.data();
  a.expert_map = d.expert_map.empty() ? nullptr : d.expert_map.data();
  return a;
}

/// The CPU reference with every optional output.
inline Result run_reference(MoeProblem const& p, HostData const& d) {
  Result r;
  int64_t const T = p.num_tokens;
  int const k = p.routing.top_k;
  MoeArgs a = host_args(p, d);
  r.out.assign(T * p.output_dim(), 0);
  r.topk_ids.assign(T * k, 0);
  r.topk_weights.assign(T * k, 0.f);
  r.expert_load.assign(p.num_experts, 0);
  r.counts.assign(2, 0);
  a.out = r.out.data();
  a.topk_ids_out = r.topk_ids.data();
  a.topk_weights_out = r.topk_weights.data();
  a.expert_load = r.expert_load.data();
  a.drop_reroute_counts = r.counts.data();
  r.status = reference_fused_moe(p, a);
  r.path = KernelPath::kNone;
  return r;
}

/// The device copies of one problem's inputs, reusable across runs.
struct DeviceInputs {
  DeviceBuffer tokens, w1, w2, scores, bias, ids_in, weights_in, expert_map;

  void load(MoeProblem const& p, HostData const& d) {
    upload(&tokens, d.tokens);
    upload(&w1, d.w1);
    upload(&w2, d.w2);
    if (!p.prerouted) {
      if (p.score_dtype == DType::kFloat32) upload(&scores, d.scores_f32);
      else upload(&scores, d.scores_16);
    }
    upload(&bias, d.bias);
    upload(&ids_in, d.ids_in);
    upload(&weights_in, d.weights_in);
    upload(&expert_map, d.expert_map);
    // Pageable cudaMemcpy may return before its DMA lands, and the runs use non-blocking
    // streams that do not wait for the legacy stream.
    cudaDeviceSynchronize();
  }
  MoeArgs args(MoeProblem const& p) const {
    MoeArgs a;
    a.tokens = tokens.get();
    a.w1 = w1.get();
    a.w2 = w2.get();
    a.routing_weights = p.prerouted ? nullptr : scores.get();
    a.correction_bias = bias.get<float>();
    a.topk_ids_in = ids_in.get<int32_t>();
    a.topk_weights_in = weights_in.get<float>();
    a.expert_map = expert_map.get<int32_t>();
    return a;
  }
};

/// One fused_moe_run on a fresh stream: output, optional outputs and workspace poisoned first
/// (0xFF: NaN in bf16/fp16; 0x7F in the integer/float optional outputs), then synchronized.
/// `set_weights`, if given, replaces the weight pointers of the args (e.g. prepared FP8 weights);
/// `inspect`, if given, reads the workspace after a successful run (before it is freed).
inline Result run_gpu(MoeProblem const& p, DeviceInputs const& in, bool optional_outputs = true,
                      std::function<void(MoeArgs&)> const& set_weights = nullptr,
                      std::function<void(void*)> const& inspect = nullptr) {
  Result r;
  int64_t const T = p.num_tokens;
  int const k = p.routing.top_k;
  std::size_t const out_elems = static_cast<std::size_t>(T * p.output_dim());
  DeviceBuffer out(std::max<std::size_t>(out_elems * 2, 16));
  DeviceBuffer ids(std::max<std::size_t>(T * k * 4, 16));
  DeviceBuffer wts(std::max<std::size_t>(T * k * 4, 16));
  DeviceBuffer load(std::max<std::size_t>(p.num_experts * 4, 16));
  DeviceBuffer counts(16);
  std::size_t const ws_bytes = fused_moe_workspace_size(p);
  DeviceBuffer ws(ws_bytes);
  // The poison goes on the run's own (non-blocking) stream, so it is ordered before the run.
  cudaStream_t stream = nullptr;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaMemsetAsync(out.get(), 0xFF, out.bytes(), stream);
  cudaMemsetAsync(ids.get(), 0x7F, ids.bytes(), stream);
  cudaMemsetAsync(wts.get(), 0x7F, wts.bytes(), stream);
  cudaMemsetAsync(load.get(), 0x7F, load.bytes(), stream);
  cudaMemsetAsync(counts.get(), 0x7F, counts.bytes(), stream);
  if (ws_bytes > 0) cudaMemsetAsync(ws.get(), 0xFF, ws_bytes, stream);
  MoeArgs a = in.args(p);
  if (set_weights) set_weights(a);
  a.out = out.get();
  if (optional_outputs) {
    a.topk_ids_out = ids.get<int32_t>();
    a.topk_weights_out = wts.get<float>();
    a.expert_load = load.get<int32_t>();
    a.drop_reroute_counts = counts.get<int64_t>();
  }
  r.status = fused_moe_run(p, a, ws.get(), ws_bytes, stream, &r.path);
  cudaError_t const sync = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  if (r.status.ok() && sync != cudaSuccess) {
    r.status = Status(StatusCode::kCudaError,
                      std::string("kernel failed: ") + cudaGetErrorString(sync));
  }
  if (!r.status.ok()) return r;
  if (inspect) inspect(ws.get());
  r.out = download<uint16_t>(out, out_elems);
  if (optional_outputs) {
    r.topk_ids = download<int32_t>(ids, T * k);
    r.topk_weights = download<float>(wts, T * k);
    r.expert_load = download<int32_t>(load, p.num_experts);
    r.counts = download<int64_t>(counts, 2);
  }
  return r;
}

/// sqrt(sum (g - r)^2 / sum r^2) over the outputs; +inf if the GPU output has a NaN/inf.
inline double rel_frobenius(DType t, std::vector<uint16_t> const& gpu,
                            std::vector<uint16_t> const& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    double const g = from_bits(t, gpu[i]);
    double const r = from_bits(t, ref[i]);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - r) * (g - r);
    den += r * r;
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

}  // namespace flashmoe::gpu_test
