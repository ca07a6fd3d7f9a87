// flashmoe_bench: times flashmoe::fused_moe_run on named MoE shapes (bf16 tokens and weights,
// in_out layout unless --layout out_in, softmax top-k, renormalized; with --fp8 channel|block128 the weights are
// prepared once by prepare_experts_fp8 and the FP8 path runs) next to a device-to-device copy
// ceiling measured in the same process.   flashmoe_bench --config seed --fp8 channel --json b.json
// Each rep is one fused_moe_run between two CUDA events on a non-blocking stream. Tokens and
// logits rotate over enough sets that one pass over them exceeds 2x L2 (the weights too when all
// of them fit in 2x L2). Stage times come from a CUDA graph capture of the same call with an
// event record node between every pair of its nodes (graph replay: no host launch gaps).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "flashmoe/fused_moe.h"
#include "flashmoe/quantization.h"
#include "fused/fused_limits.h"  // internal: the fused kernels' phase timeline
#include "fused/moe_config.h"      // internal: choose_moe_config / describe_moe_config
#include "fused/moe_workspace.h"
#include "fused/multikernel_fp8.h"

using namespace flashmoe;

[[noreturn]] static void die(char const* file, int line, char const* what, std::string const& msg) {
  std::fprintf(stderr, "%s:%d: %s: %s\n", file, line, what, msg.c_str());
  std::exit(1);
}
#define CK(x)                                                                \
  do {                                                                       \
    cudaError_t const e_ = (x);                                              \
    if (e_ != cudaSuccess) die(__FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
  } while (0)
#define CKS(x)                                                              \
  do {                                                                      \
    Status const s_ = (x);                                                  \
    if (!s_.ok()) die(__FILE__, __LINE__, #x, s_.message());                \
  } while (0)

namespace {

struct Shape { char const* name; int64_t E, k, H, N; bool ffn; int64_t T; };  // N: D or I
constexpr Shape kShapes[] = {
    {"seed", 256, 8, 4096, 4096, false, 2048},    {"decode-1", 256, 8, 4096, 4096, false, 1},
    {"decode-16", 256, 8, 4096, 4096, false, 16}, {"decode-128", 256, 8, 4096, 4096, false, 128},
    {"prefill", 256, 8, 4096, 4096, false, 16384}, {"dsv3", 256, 8, 7168, 2048, true, 2048},
    {"qwen3", 128, 8, 2048, 768, true, 2048},      {"mixtral", 8, 2, 4096, 14336, true, 2048},
    {"dsv3-16", 256, 8, 7168, 2048, true, 16},     {"dsv3-tp8", 256, 8, 7168, 256, true, 1},
    // A probe, not a model: 2 MB of weights (they stay in L2), one token.
    {"probe-small", 8, 2, 512, 512, false, 1}};

struct Opts {
  std::vector<std::string> configs;
  int64_t tokens = 0;
  int reps = 50, warmup = 10;
  std::string json;
  WeightScale fp8 = WeightScale::kNone;  // kChannel / kBlock128: prepared FP8 weights
  double zipf = 0.0;  // > 0: pre-routed slots, k distinct experts per token drawn from Zipf(s)
  double capacity = 0.0;  // > 0: capacity_factor (routing.h step 6)
  bool reroute = false;   // overflow "reroute" instead of "drop"
  bool deterministic = true;  // false: MoeProblem::deterministic false (atomic combine)
  bool zeroed_ws = false;     // the workspace zero-filled once, MoeArgs::workspace_zeroed
  WeightLayout layout = WeightLayout::kInOut;  // of the raw bf16 weights (--layout)
};
struct Ctx {
  std::string gpu;
  size_t l2 = 0;
  double copy_gbps = 0;
  std::vector<std::string> summary;  // one table row per config, printed last
};

__device__ __forceinline__ uint64_t mix64(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// p[i] = scale * N(0, 1) from a hash of (seed, i): Box-Muller on two 24-bit uniforms.
template <typename T>
__global__ void fill_normal(T* p, size_t n, float scale, uint64_t seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint64_t const h = mix64(seed ^ mix64(i));
    float const u1 = (float((h >> 40) & 0xFFFFFF) + 1.0f) * 0x1p-24f;  // (0, 1]
    float const u2 = float(h & 0xFFFFFF) * 0x1p-24f;
    p[i] = T(scale * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
  }
}
template <typename T>
void fill(T* p, size_t n, float scale, uint64_t seed) {
  fill_normal<T><<<2048, 256>>>(p, n, scale, seed);
  CK(cudaGetLastError());
}
template <typename T>
T* dalloc(size_t elems, std::vector<void*>* owned) {
  void* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(elems * sizeof(T), 256)));
  owned->push_back(p);
  return static_cast<T*>(p);
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  size_t const n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}
std::string json_str(std::string const& s) {
  std::string o = "\"";
  for (char c : s) o += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return o + "\"";
}
std::string json_list(std::vector<float> const& v) {
  std::string o = "[";
  char b[32];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(b, sizeof b, "%s%.5f", i ? ", " : "", v[i]);
    o += b;
  }
  return o + "]";
}

// Short name of a graph node: the kernel's unqualified name without template arguments.
std::string node_name(cudaGraphNode_t node) {
  cudaGraphNodeType t;
  CK(cudaGraphNodeGetType(node, &t));
  if (t != cudaGraphNodeTypeKernel) return t == cudaGraphNodeTypeMemset ? "memset" : "node";
  cudaKernelNodeParams kp;
  char const* mangled = nullptr;
  if (cudaGraphKernelNodeGetParams(node, &kp) != cudaSuccess ||
      cudaFuncGetName(&mangled, kp.func) != cudaSuccess || mangled == nullptr) {
    (void)cudaGetLastError();
    return "kernel";
  }
  int st = 0;
  char* dem = abi::__cxa_demangle(mangled, nullptr, nullptr, &st);
  std::string s = (st == 0 && dem != nullptr) ? dem : mangled;
  std::free(dem);
  for (size_t a; (a = s.find("(anonymous namespace)::")) != std::string::npos;) s.erase(a, 23);
  s = s.substr(0, s.find_first_of("<("));
  size_t const c = s.find_last_of(": ");
  return c == std::string::npos ? s : s.substr(c + 1);
}
std::string stage_of(std::string const& n) {  // the FP8 GEMMs: sm90_fp8_{pipelined,convert}_kernel
  if (n.find("gemm") != std::string::npos || n.rfind("sm90_fp8", 0) == 0) return "gemm";
  return n.find("combine") != std::string::npos ? "combine" : "routing";
}

// Puts event record node ev[i] before node i of a single-chain graph and ev[n] after the last.
bool instrument(cudaGraph_t g, std::vector<cudaEvent_t>* ev, std::vector<std::string>* names) {
  size_t n = 0, nr = 0, nd = 0;
  CK(cudaGraphGetNodes(g, nullptr, &n));
  CK(cudaGraphGetRootNodes(g, nullptr, &nr));
  if (n == 0 || nr != 1) return false;
  std::vector<cudaGraphNode_t> chain(1);
  CK(cudaGraphGetRootNodes(g, chain.data(), &nr));
  while (true) {
    CK(cudaGraphNodeGetDependentNodes(chain.back(), nullptr, nullptr, &nd));
    if (nd != 1) break;
    chain.emplace_back();
    CK(cudaGraphNodeGetDependentNodes(chain[chain.size() - 2], &chain.back(), nullptr, &nd));
  }
  if (nd != 0 || chain.size() != n) return false;
  for (cudaEvent_t e; ev->size() < n + 1; ev->push_back(e)) CK(cudaEventCreate(&e));
  names->clear();
  cudaGraphNode_t e;
  CK(cudaGraphAddEventRecordNode(&e, g, nullptr, 0, (*ev)[0]));
  CK(cudaGraphAddDependencies(g, &e, &chain[0], nullptr, 1));
  for (size_t i = 0; i < n; ++i) {
    names->push_back(node_name(chain[i]));
    if (i + 1 < n) CK(cudaGraphRemoveDependencies(g, &chain[i], &chain[i + 1], nullptr, 1));
    CK(cudaGraphAddEventRecordNode(&e, g, &chain[i], 1, (*ev)[i + 1]));
    if (i + 1 < n) CK(cudaGraphAddDependencies(g, &e, &chain[i + 1], nullptr, 1));
  }
  return true;
}

// Benchmarks one shape; prints its block, appends its table row, returns its JSON object.
std::string bench(Shape const& s, Opts const& o, Ctx* cx) {
  Ctx const& ctx = *cx;
  int64_t const T = o.tokens > 0 ? o.tokens : s.T, E = s.E, H = s.H, N = s.N;
  MoeProblem p;
  p.num_tokens = T, p.hidden = H, p.num_experts = p.num_local_experts = E;
  p.kind = s.ffn ? ExpertKind::kGatedFFN : ExpertKind::kLinear;
  (s.ffn ? p.inter_dim : p.out_dim) = N;
  p.activation = Activation::kSilu, p.layout = o.layout;
  p.token_dtype = p.weight_dtype = DType::kBFloat16, p.score_dtype = DType::kFloat32;
  p.routing.top_k = int(s.k), p.routing.scoring = Scoring::kSoftmax, p.routing.renormalize = true;
  p.prerouted = o.zipf > 0.0;
  p.routing.capacity_factor = o.capacity;
  p.routing.overflow = o.reroute ? Overflow::kReroute : Overflow::kDrop;
  p.deterministic = o.deterministic;
  MoeProblem const raw = p;  // the bf16 weights as filled below (prepare_experts_fp8's input)
  bool const fp8 = o.fp8 != WeightScale::kNone;
  if (fp8) {
    p.weights_prepared = true, p.weight_dtype = DType::kFloat8E4M3, p.weight_scale = o.fp8;
    p.precision = Precision::kFP8;
  }
  KernelPath path = KernelPath::kNone;
  CKS(fused_moe_can_implement(p, &path));
  fused::MoeConfig const cfg =
      fused::choose_moe_config(p, path == KernelPath::kMultiKernelSm90 ||
                                      path == KernelPath::kFusedSm90);
  char const* const layout = o.layout == WeightLayout::kInOut ? "in_out" : "out_in";
  std::string const tile = fp8 ? std::string("fp8 (see FLASHMOE_PRINT_CONFIG)")
                               : fused::describe_moe_config(p, cfg, path);
  std::printf("\n== %s: T=%lld E=%lld k=%lld H=%lld %s=%lld (%s; bf16 tokens, %s weights, "
              "%s, softmax renorm)\n   path=%s | %s\n", s.name, (long long)T, (long long)E,
              (long long)s.k, (long long)H, s.ffn ? "I" : "D", (long long)N,
              s.ffn ? "SwiGLU FFN" : "linear",
              !fp8 ? "bf16" : o.fp8 == WeightScale::kChannel ? "fp8 channel" : "fp8 block128",
              layout, kernel_path_name(path), tile.c_str());

  std::vector<void*> owned;
  int64_t const outN = p.output_dim();
  size_t const w1e = size_t(E * H * (s.ffn ? 2 * N : N)), w2e = s.ffn ? size_t(E * N * H) : 0;
  size_t const w1q = fp8 ? prepared_weight_bytes(raw, 1) : 0;
  size_t const w2q = fp8 && s.ffn ? prepared_weight_bytes(raw, 2) : 0;
  size_t const s1q = fp8 ? prepared_scale_bytes(raw, 1, o.fp8) / 4 : 0;
  size_t const s2q = fp8 && s.ffn ? prepared_scale_bytes(raw, 2, o.fp8) / 4 : 0;
  // Bytes one forward reads when it touches every expert: the raw bf16 or the prepared E4M3.
  size_t const wbytes = fp8 ? w1q + w2q : 2 * (w1e + w2e), ws_bytes = fused_moe_workspace_size(p);
  void* ws = dalloc<char>(ws_bytes, &owned);
  if (o.zeroed_ws) CK(cudaMemset(ws, 0, ws_bytes));
  auto* out = dalloc<__nv_bfloat16>(size_t(T * outN), &owned);
  auto* load = dalloc<int32_t>(size_t(E), &owned);
  size_t fr = 0, tot = 0;
  CK(cudaMemGetInfo(&fr, &tot));
  int64_t nw = wbytes <= 2 * ctx.l2 ? int64_t(2 * ctx.l2 / wbytes + 1) : 1;
  if (nw > 1 && nw * wbytes > fr / 2) {
    std::printf("   note: weights fit in 2x L2 but %lld copies do not fit: not rotated\n",
                (long long)nw);
    nw = 1;
  }
  // bf16: nw sets of raw weights. fp8: one raw set at a time, prepared into set i.
  int64_t const nraw = fp8 ? 1 : nw;
  auto* w1 = dalloc<__nv_bfloat16>(nraw * w1e, &owned);
  auto* w2 = s.ffn ? dalloc<__nv_bfloat16>(nraw * w2e, &owned) : nullptr;
  uint8_t *q1 = nullptr, *q2 = nullptr;
  float *qs1 = nullptr, *qs2 = nullptr;
  if (fp8) {
    q1 = dalloc<uint8_t>(nw * w1q, &owned), qs1 = dalloc<float>(nw * s1q, &owned);
    if (s.ffn) q2 = dalloc<uint8_t>(nw * w2q, &owned), qs2 = dalloc<float>(nw * s2q, &owned);
  }
  for (int64_t i = 0; i < (fp8 ? nw : 1); ++i) {
    fill(w1, nraw * w1e, 1.0f / std::sqrt(float(H)), 0x1000 + E + 17 * i);  // x @ W1 ~ N(0, 1)
    if (s.ffn) fill(w2, nraw * w2e, 1.0f / std::sqrt(float(N)), 0x2000 + E + 17 * i);
    if (fp8)
      CKS(prepare_experts_fp8(raw, w1, w2, o.fp8, q1 + i * w1q, qs1 + i * s1q,
                              s.ffn ? q2 + i * w2q : nullptr, s.ffn ? qs2 + i * s2q : nullptr,
                              nullptr));
  }
  CK(cudaDeviceSynchronize());
  if (fp8) {  // the raw weights are not read again: give their memory to the token sets
    for (void* q : {static_cast<void*>(w1), static_cast<void*>(w2)}) {
      if (q == nullptr) continue;
      owned.erase(std::find(owned.begin(), owned.end(), q));
      CK(cudaFree(q));
    }
  }
  size_t const set_bytes = size_t(T * H * 2 + T * E * 4);
  CK(cudaMemGetInfo(&fr, &tot));
  int64_t nsets = std::max<int64_t>(2, 2 * ctx.l2 / set_bytes + 1);
  if (int64_t const cap = std::max<int64_t>(2, fr / 4 / set_bytes); nsets > cap) {
    std::printf("   note: %lld token sets wanted, memory allows %lld\n", (long long)nsets,
                (long long)cap);
    nsets = cap;
  }
  // --zipf s: every token's k slots are k distinct experts drawn (without replacement) from a
  // Zipf law over the experts -- P(rank r) ~ 1 / r^s, ranks a fixed random permutation of the
  // experts -- with weight 1 / k each (a skewed, pre-routed load: issue 5's straggler test).
  int32_t* zipf_ids = nullptr;
  float* zipf_w = nullptr;
  if (o.zipf > 0.0) {
    std::vector<int32_t> ids(size_t(nsets * T * s.k));
    std::vector<float> wts(ids.size(), 1.0f / float(s.k));
    std::vector<int32_t> perm(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) perm[size_t(e)] = int32_t(e);
    uint64_t rng = 0x5EED0000u + uint64_t(T);
    auto next = [&]() {  // splitmix64 on the host
      rng += 0x9E3779B97F4A7C15ull;
      uint64_t z = rng;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    for (int64_t e = E - 1; e > 0; --e) std::swap(perm[size_t(e)], perm[next() % uint64_t(e + 1)]);
    std::vector<double> w(static_cast<size_t>(E));
    for (int64_t r = 0; r < E; ++r) w[size_t(r)] = 1.0 / std::pow(double(r + 1), o.zipf);
    std::vector<char> taken(static_cast<size_t>(E));
    for (int64_t t = 0; t < nsets * T; ++t) {
      std::fill(taken.begin(), taken.end(), 0);
      double left = 0.0;
      for (double x : w) left += x;
      for (int64_t j = 0; j < s.k; ++j) {
        double u = double(next() >> 11) * 0x1p-53 * left;
        int64_t r = 0;
        for (; r < E - 1; ++r) {
          if (taken[size_t(r)]) continue;
          if (u < w[size_t(r)]) break;
          u -= w[size_t(r)];
        }
        while (taken[size_t(r)]) --r;  // rounding at the end of the range
        taken[size_t(r)] = 1;
        left -= w[size_t(r)];
        ids[size_t(t * s.k + j)] = perm[size_t(r)];
      }
    }
    zipf_ids = dalloc<int32_t>(ids.size(), &owned);
    zipf_w = dalloc<float>(wts.size(), &owned);
    CK(cudaMemcpy(zipf_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(zipf_w, wts.data(), wts.size() * 4, cudaMemcpyHostToDevice));
    std::printf("   routing: pre-routed, Zipf s=%.2f over %lld experts (k distinct per token)\n",
                o.zipf, (long long)E);
  }
  auto* tok = dalloc<__nv_bfloat16>(size_t(nsets * T * H), &owned);
  auto* logit = dalloc<float>(size_t(nsets * T * E), &owned);
  fill(tok, size_t(nsets * T * H), 1.0f, 0x3000 + T);
  fill(logit, size_t(nsets * T * E), 1.0f, 0x4000 + T);
  CK(cudaDeviceSynchronize());
  std::printf("   rotation: %lld token+logit sets (%.1f MB), %lld weight set(s) (%.2f GB), "
              "L2 %.1f MB\n", (long long)nsets, nsets * set_bytes / 1e6, (long long)nw,
              nw * wbytes / 1e9, ctx.l2 / 1e6);

  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  auto key = [&](int64_t i) { return (i % nsets) * nw + i % nw; };  // inputs of global rep i
  auto args = [&](int64_t i, int32_t* ld) {
    MoeArgs a;
    a.tokens = tok + (i % nsets) * T * H;
    if (o.zipf > 0.0) {
      a.topk_ids_in = zipf_ids + (i % nsets) * T * s.k;
      a.topk_weights_in = zipf_w + (i % nsets) * T * s.k;
    } else {
      a.routing_weights = logit + (i % nsets) * T * E;
    }
    if (fp8) {
      a.w1 = q1 + (i % nw) * w1q, a.w1_scale = qs1 + (i % nw) * s1q;
      if (s.ffn) a.w2 = q2 + (i % nw) * w2q, a.w2_scale = qs2 + (i % nw) * s2q;
    } else {
      a.w1 = w1 + (i % nw) * w1e;
      a.w2 = s.ffn ? w2 + (i % nw) * w2e : nullptr;
    }
    a.out = out;
    a.expert_load = ld;
    a.workspace_zeroed = o.zeroed_ws;
    return a;
  };
  auto run = [&](int64_t i, int32_t* ld) {
    KernelPath pth;
    CKS(fused_moe_run(p, args(i, ld), ws, ws_bytes, st, &pth));
  };

  // Untimed probe: the output once (poisoned first: all finite, O(1)), then the experts with
  // load > 0 for the inputs of every timed rep.
  CK(cudaMemsetAsync(out, 0xFF, size_t(T * outN) * 2, st));
  run(o.warmup, nullptr);
  std::vector<__nv_bfloat16> h_out(size_t(T * outN));
  CK(cudaMemcpyAsync(h_out.data(), out, h_out.size() * 2, cudaMemcpyDeviceToHost, st));
  CK(cudaStreamSynchronize(st));
  double ss = 0;
  int64_t bad = 0;
  for (auto v : h_out) {
    float const f = __bfloat162float(v);
    std::isfinite(f) ? void(ss += double(f) * f) : void(++bad);
  }
  std::printf("   check: out rms %.3f, non-finite %lld of %zu\n", std::sqrt(ss / h_out.size()),
              (long long)bad, h_out.size());
  if (bad) die(__FILE__, __LINE__, s.name, "non-finite output: not timed");
  std::map<int64_t, int64_t> touched_of;
  std::vector<int32_t> h_load(static_cast<size_t>(E));
  double touched = 0;
  for (int r = 0; r < o.reps; ++r) {
    int64_t const i = o.warmup + r;
    if (!touched_of.count(key(i))) {
      run(i, load);
      CK(cudaMemcpyAsync(h_load.data(), load, size_t(E) * 4, cudaMemcpyDeviceToHost, st));
      CK(cudaStreamSynchronize(st));
      touched_of[key(i)] = std::count_if(h_load.begin(), h_load.end(), [](int v) { return v > 0; });
    }
    touched += double(touched_of[key(i)]) / o.reps;
  }
  double const touched_bytes = touched * double(wbytes) / E;
  if (nsets * set_bytes <= 2 * ctx.l2)
    std::printf("   note: token sets total < 2x L2; each rep also streams %.1f MB of weights\n",
                touched_bytes / 1e6);

  // Timed: one event pair around each fused_moe_run (stream launches, as a caller makes them).
  std::vector<cudaEvent_t> e0(o.reps), e1(o.reps);
  for (int r = 0; r < o.reps; ++r) {
    CK(cudaEventCreate(&e0[r]));
    CK(cudaEventCreate(&e1[r]));
  }
  for (int i = 0; i < o.warmup; ++i) run(i, nullptr);
  for (int r = 0; r < o.reps; ++r) {
    CK(cudaEventRecord(e0[r], st));
    run(o.warmup + r, nullptr);
    CK(cudaEventRecord(e1[r], st));
  }
  CK(cudaStreamSynchronize(st));
  std::vector<float> ms(o.reps);
  for (int r = 0; r < o.reps; ++r) CK(cudaEventElapsedTime(&ms[r], e0[r], e1[r]));
  for (int r = 0; r < o.reps; ++r) {
    CK(cudaEventDestroy(e0[r]));
    CK(cudaEventDestroy(e1[r]));
  }
  double const med = median(ms), lo = *std::min_element(ms.begin(), ms.end()),
               hi = *std::max_element(ms.begin(), ms.end());
  double const flops = 2.0 * T * s.k * (s.ffn ? 3.0 * H * N : double(H) * N);
  double const gbps = touched_bytes / (med * 1e-3) / 1e9, tflops = flops / (med * 1e-3) / 1e12;
  std::printf("   time: median %.4f ms (min %.4f, max %.4f) over %d reps; %.0f tokens/s\n"
              "   weights: %.1f of %lld experts touched, %.3f GB -> %.0f GB/s = %.2f of copy "
              "(%.0f GB/s)\n   compute: %.1f GFLOP -> %.1f TFLOP/s\n", med, lo, hi, o.reps,
              T / (med * 1e-3), touched, (long long)E, touched_bytes / 1e9, gbps,
              gbps / ctx.copy_gbps, ctx.copy_gbps, flops / 1e9, tflops);

  // FLASHMOE_FUSED_TIMELINE=1 and the fused kernel ran: its phase timeline of one more call
  // (per CTA %globaltimer stamps; printed relative to the earliest start: median / max over CTAs).
  char const* tl = std::getenv("FLASHMOE_FUSED_TIMELINE");
  bool const one_kernel = path == KernelPath::kFusedSm90Fp8 || path == KernelPath::kFusedSm90;
  if (tl != nullptr && std::strcmp(tl, "1") == 0 && one_kernel) {
    fused::MoeWorkspace carved;
    CKS(fused::carve_moe_workspace(p, fp8 ? fused::choose_fp8_config(p) : cfg, ws, &carved));
    int const n = fused::kFusedMaxCtas * fused::kFusedTimelineSlots;
    CK(cudaMemsetAsync(carved.fused_timeline, 0, n * sizeof(uint64_t), st));
    run(o.warmup, nullptr);
    std::vector<uint64_t> h(n);
    CK(cudaMemcpyAsync(h.data(), carved.fused_timeline, n * sizeof(uint64_t),
                       cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    uint64_t t0 = ~uint64_t{0};
    int ctas = 0;
    for (int c = 0; c < fused::kFusedMaxCtas; ++c) {
      if (h[c * fused::kFusedTimelineSlots] == 0) continue;
      ++ctas;
      t0 = std::min(t0, h[c * fused::kFusedTimelineSlots]);
    }
    static char const* const kNames[] = {
        "start",     "routed",     "barrier1",       "dispatched",       "barrier2",
        "gemm done", "barrier3",   "combined",       "top-k(t0)",        "quantized(t0)",
        "item:rows", "item:1st-TMA", "item:last-TMA", "item:1st-full", "item:K-done",
        "item:epi-done",  // the CTA's last GEMM item (FP8 forward only)
        "tk:scores",  "tk:sum",   "tk:q",   "tk:selected",  // the top-k of the CTA's first token
        "first:rows", "first:K-done", "first:split-done", "slot-released",  // first item
        "gemm0 items", "gemm0 last K-done", "row:e4m3(t0)", "fast:written", "gemv:weights",
        "gemv:h-last", "gemv:issued", "finish:start"};
    static int const kOrder[] = {0,  16, 17, 18, 19, 27, 26, 8,  9,  1,  2,  3,
                                 4,  10, 11, 13, 12, 14, 15, 5,  30, 28, 29, 6,
                                 7,  20, 21, 22, 31, 23, 25, 24};  // 24: a count, not a time
    static_assert(sizeof(kOrder) / sizeof(kOrder[0]) == fused::kFusedTimelineSlots, "slots");
    std::string line = "   fused timeline (us from the first CTA's start, median/max over " +
                       std::to_string(ctas) + " CTAs):";
    for (int i : kOrder) {
      if (i == 24) continue;  // a count (printed per CTA below)
      std::vector<float> v;
      for (int c = 0; c < fused::kFusedMaxCtas; ++c) {
        uint64_t const x = h[c * fused::kFusedTimelineSlots + i];
        if (x != 0 && h[c * fused::kFusedTimelineSlots] != 0) v.push_back(float(x - t0) * 1e-3f);
      }
      if (v.empty()) continue;
      char b[96];
      std::snprintf(b, sizeof b, " %s %.1f/%.1f", kNames[i], median(v),
                    *std::max_element(v.begin(), v.end()));
      line += b;
    }
    std::printf("%s\n", line.c_str());
    // FLASHMOE_TIMELINE_PER_CTA=1: every CTA's row as well.
    if (char const* pc = std::getenv("FLASHMOE_TIMELINE_PER_CTA"); pc != nullptr && pc[0] == '1') {
      for (int c = 0; c < fused::kFusedMaxCtas; ++c) {
        uint64_t const* r = h.data() + c * fused::kFusedTimelineSlots;
        if (r[0] == 0) continue;
        std::string row = "   cta " + std::to_string(c) + ":";
        for (int i : kOrder) {
          if (r[i] == 0 || kNames[i][0] == 0) continue;
          char b[64];
          if (i == 24) std::snprintf(b, sizeof b, " %s %llu", kNames[i], (unsigned long long)r[i]);
          else std::snprintf(b, sizeof b, " %s %.1f", kNames[i], float(r[i] - t0) * 1e-3f);
          row += b;
        }
        std::printf("%s\n", row.c_str());
      }
    }
  }

  // Stage times: one graph per distinct input set, event nodes between its nodes, one replay
  // per rep. A failure here is reported and skips the stage times only.
  std::vector<cudaEvent_t> gev;
  std::vector<std::string> names;
  std::map<int64_t, cudaGraphExec_t> execs;
  std::string why;  // non-empty: stage times skipped
  auto soft = [&](cudaError_t e, char const* what) {
    if (e != cudaSuccess && why.empty()) why = std::string(what) + ": " + cudaGetErrorString(e);
    if (e != cudaSuccess) (void)cudaGetLastError();
    return e == cudaSuccess;
  };
  for (int r = 0; r < o.reps && why.empty(); ++r) {
    int64_t const i = o.warmup + r;
    if (execs.count(key(i))) continue;
    cudaGraph_t g = nullptr;
    if (!soft(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed), "capture")) break;
    KernelPath pth;
    Status const rs = fused_moe_run(p, args(i, nullptr), ws, ws_bytes, st, &pth);
    bool const ended = soft(cudaStreamEndCapture(st, &g), "end capture");
    if (!rs.ok() && why.empty()) why = "fused_moe_run under capture: " + rs.message();
    std::vector<std::string> nm;
    if (why.empty() && !(instrument(g, &gev, &nm) && (names.empty() || nm == names)))
      why = "the captured graph is not one chain of nodes";
    names = nm;
    if (why.empty()) soft(cudaGraphInstantiate(&execs[key(i)], g, 0), "instantiate");
    if (ended && g != nullptr) CK(cudaGraphDestroy(g));
  }
  size_t const n = names.size();
  std::vector<std::vector<float>> node_ms(n + 1, std::vector<float>(o.reps));
  for (auto& kv : execs)  // upload and warm every graph
    if (why.empty()) soft(cudaGraphLaunch(kv.second, st), "graph launch");
  if (why.empty()) soft(cudaStreamSynchronize(st), "graph run");
  for (int r = 0; r < o.reps && why.empty(); ++r) {
    soft(cudaGraphLaunch(execs[key(o.warmup + r)], st), "graph launch");
    soft(cudaStreamSynchronize(st), "graph run");
    for (size_t j = 0; j <= n && why.empty(); ++j)  // node j; j == n: the whole graph
      soft(cudaEventElapsedTime(&node_ms[j][r], gev[j < n ? j : 0], gev[j < n ? j + 1 : n]),
           "event node timing");
  }
  std::string stages_json = "null";
  if (!why.empty()) {
    std::printf("   stages: skipped (%s)\n", why.c_str());
  } else {
    std::map<std::string, double> stage;
    std::string per_node;
    char b[200];
    for (size_t j = 0; j < n; ++j) {
      stage[stage_of(names[j])] += median(node_ms[j]);
      std::snprintf(b, sizeof b, "%s %s %.4f", j ? "," : "", names[j].c_str(), median(node_ms[j]));
      per_node += b;
    }
    std::snprintf(b, sizeof b, "{\"routing\": %.5f, \"gemm\": %.5f, \"combine\": %.5f, "
                  "\"graph_total\": %.5f}", stage["routing"], stage["gemm"], stage["combine"],
                  median(node_ms[n]));
    stages_json = b;
    std::printf("   stages (graph replay, median ms): routing %.4f | gemm %.4f | combine %.4f"
                " | graph total %.4f\n   nodes:%s\n", stage["routing"], stage["gemm"],
                stage["combine"], median(node_ms[n]), per_node.c_str());
  }
  for (auto& kv : execs)
    if (kv.second != nullptr) CK(cudaGraphExecDestroy(kv.second));
  for (auto e : gev) CK(cudaEventDestroy(e));
  CK(cudaStreamDestroy(st));
  for (void* q : owned) CK(cudaFree(q));

  char b[768];
  std::snprintf(b, sizeof b, "%-10s %6lld %9.4f %9.4f %9.4f %8.0f %6.2f %8.1f %dx%d", s.name,
                (long long)T, med, lo, hi, gbps, gbps / ctx.copy_gbps, tflops, cfg.bm, cfg.bn);
  cx->summary.push_back(b);
  std::snprintf(b, sizeof b, "{\"gpu\": %s, \"config\": \"%s\", \"tokens\": %lld, "
                "\"median_ms\": %.5f, \"min_ms\": %.5f, \"max_ms\": %.5f, \"copy_gbps\": %.2f, "
                "\"touched_experts\": %.2f, \"touched_weight_bytes\": %.0f, \"weight_gbps\": %.2f, "
                "\"tflops\": %.3f, \"weights\": \"%s\", \"zipf\": %.2f, \"capacity\": %.2f, \"overflow\": \"%s\", \"deterministic\": %s, \"layout\": \"%s\", \"path\": \"%s\", \"token_sets\": %lld, \"weight_sets\": %lld, "
                "\"stages_ms\": %s, ", json_str(ctx.gpu).c_str(), s.name, (long long)T, med, lo,
                hi, ctx.copy_gbps, touched, touched_bytes, gbps, tflops,
                !fp8 ? "bf16" : o.fp8 == WeightScale::kChannel ? "fp8-channel" : "fp8-block128",
                o.zipf, o.capacity, o.reroute ? "reroute" : "drop",
                o.deterministic ? "true" : "false", layout, kernel_path_name(path),
                (long long)nsets, (long long)nw, stages_json.c_str());
  return std::string(b) + "\"tile\": " + json_str(tile) + ", \"samples_ms\": " + json_list(ms) +
         "}";
}

// Device-to-device cudaMemcpyAsync of 2 GiB: (bytes read + written) / time, median of 10.
double copy_ceiling(std::vector<float>* samples) {
  size_t const bytes = size_t(2) << 30;
  void *src = nullptr, *dst = nullptr;
  cudaEvent_t c0, c1;
  CK(cudaMalloc(&src, bytes));
  CK(cudaMalloc(&dst, bytes));
  CK(cudaMemset(src, 0x5A, bytes));
  CK(cudaEventCreate(&c0));
  CK(cudaEventCreate(&c1));
  samples->assign(10, 0.f);
  for (int r = -2; r < 10; ++r) {  // two warm-up copies
    CK(cudaEventRecord(c0, 0));
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
    CK(cudaEventRecord(c1, 0));
    CK(cudaEventSynchronize(c1));
    if (r >= 0) CK(cudaEventElapsedTime(&(*samples)[r], c0, c1));
  }
  CK(cudaEventDestroy(c0));
  CK(cudaEventDestroy(c1));
  CK(cudaFree(src));
  CK(cudaFree(dst));
  return 2.0 * bytes / (median(*samples) * 1e-3) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    bool const has = i + 1 < argc;
    if (a == "--config" && has) o.configs.push_back(argv[++i]);
    else if (a == "--tokens" && has) o.tokens = std::atoll(argv[++i]);
    else if (a == "--reps" && has) o.reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--warmup" && has) o.warmup = std::max(0, std::atoi(argv[++i]));
    else if (a == "--json" && has) o.json = argv[++i];
    else if (a == "--zipf" && has) o.zipf = std::atof(argv[++i]);
    else if (a == "--capacity" && has) o.capacity = std::atof(argv[++i]);
    else if (a == "--nondeterministic") o.deterministic = false;
    else if (a == "--zeroed-workspace") o.zeroed_ws = true;
    else if (a == "--layout" && has) {
      std::string const v = argv[++i];
      if (v != "in_out" && v != "out_in") die(__FILE__, __LINE__, "--layout", "in_out|out_in");
      o.layout = v == "in_out" ? WeightLayout::kInOut : WeightLayout::kOutIn;
    }
    else if (a == "--overflow" && has) {
      std::string const v = argv[++i];
      if (v != "drop" && v != "reroute") die(__FILE__, __LINE__, "--overflow", "drop|reroute");
      o.reroute = v == "reroute";
    }
    else if (a == "--fp8" && has) {
      std::string const v = argv[++i];
      if (v != "channel" && v != "block128") die(__FILE__, __LINE__, "--fp8", "channel|block128");
      o.fp8 = v == "channel" ? WeightScale::kChannel : WeightScale::kBlock128;
    }
    else {
      std::fprintf(stderr, "usage: %s [--config NAME]... [--tokens T] [--reps N] [--warmup N] "
                   "[--fp8 channel|block128] [--zipf S] [--capacity C] [--overflow drop|reroute] "
                   "[--nondeterministic] [--zeroed-workspace] [--layout in_out|out_in] "
                   "[--json PATH]\nconfigs: all", argv[0]);
      for (auto const& s : kShapes) std::fprintf(stderr, " %s", s.name);
      std::fprintf(stderr, "\n");
      return 2;
    }
  }
  if (o.configs.empty()) o.configs.push_back("seed");
  std::vector<Shape> shapes;
  for (auto const& c : o.configs) {
    size_t const before = shapes.size();
    for (auto const& s : kShapes)
      if (c == "all" || c == s.name) shapes.push_back(s);
    if (shapes.size() == before) die(__FILE__, __LINE__, "--config", "unknown config " + c);
  }

  Ctx ctx;
  int dev = 0, l2 = 0;
  cudaDeviceProp prop;
  CK(cudaGetDevice(&dev));
  CK(cudaGetDeviceProperties(&prop, dev));
  CK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  ctx.gpu = prop.name;
  ctx.l2 = size_t(l2);
  std::vector<float> cms;
  ctx.copy_gbps = copy_ceiling(&cms);
  std::printf("gpu: %s, %d SMs, L2 %.1f MB | copy ceiling (2 GiB D2D, read+write): %.0f GB/s\n",
              prop.name, prop.multiProcessorCount, l2 / 1e6, ctx.copy_gbps);

  std::vector<std::string> results;
  for (auto const& s : shapes) results.push_back(bench(s, o, &ctx));
  std::printf("\n%s | copy %.0f GB/s | %d reps, median/min/max ms\n"
              "%-10s %6s %9s %9s %9s %8s %6s %8s %s\n", ctx.gpu.c_str(), ctx.copy_gbps, o.reps,
              "config", "T", "median", "min", "max", "GB/s", "x copy", "TFLOP/s", "tile");
  for (auto const& row : ctx.summary) std::printf("%s\n", row.c_str());

  if (!o.json.empty()) {
    std::string j = "{\"gpu\": " + json_str(ctx.gpu) + ", \"copy_gbps\": " +
                    std::to_string(ctx.copy_gbps) + ", \"copy_samples_ms\": " + json_list(cms) +
                    ", \"l2_bytes\": " + std::to_string(ctx.l2) + ", \"reps\": " +
                    std::to_string(o.reps) + ", \"warmup\": " + std::to_string(o.warmup) +
                    ",\n \"results\": [\n";
    for (size_t i = 0; i < results.size(); ++i)
      j += "  " + results[i] + (i + 1 < results.size() ? ",\n" : "\n");
    j += "]}\n";
    FILE* f = std::fopen(o.json.c_str(), "w");
    if (f == nullptr || std::fwrite(j.data(), 1, j.size(), f) != j.size() || std::fclose(f) != 0)
      die(__FILE__, __LINE__, "--json", "cannot write " + o.json);
    std::printf("wrote %s\n", o.json.c_str());
  }
  return 0;
}
