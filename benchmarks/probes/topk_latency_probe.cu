// Probe (perf-log round 287): where do the ~8 us of the one-token top-k go? In the one kernel at
// T = 1 (solo_fast), CTA 0's warpgroup 0 runs routing::topk_select<128, 2> on the token's 256
// logits, and its stamps read: scores 3.0 us, softmax sum 4.3, q 5.6, selected 8.2 (round 284,
// H200). This launches the same code (the repo's topk_token.cuh) alone in one CTA and stamps the
// same steps under six conditions, to tell instruction fetch from data latency from the work:
//   cold       L2 flushed before the launch (code and logits come from DRAM)
//   code-warm  no flush, a logits row this launch is the first to read (data from DRAM)
//   data-warm  L2 flushed, then a small kernel reads the row (code from DRAM, data in L2)
//   warm       the same row as the launch before, no flush
//   i-cold     L2 flushed, then a kernel of 1 MB of straight-line code on every SM (evicts the
//              SMs' instruction caches too: the one kernel's GEMM code does that between calls)
//   i-L2       that kernel only: the probe's code in L2 but not in the SM's instruction caches
// and for two forms: the warpgroup's (128 threads, 2 experts each, named barriers: what runs
// now) and one warp's (32 threads, 8 experts each, no barrier: topk_select<32, 8>). Both must
// select the same experts (checked per launch). Then the warpgroup's form with what surrounds it
// in the one kernel, cold, warm and i-cold: 131 other CTAs polling a flag word (ld.acquire.gpu
// and __nanosleep(32), as FusedDeps::wait_routed) until the top-k ends; CTA 0's warps 5-11
// quantizing a 7168-wide bf16 row (gemm::quantize_row_warps, as solo_fast's phase 1); both; the
// pollers running 1 MB of code before they poll, beside the row warps.
// Build: nvcc -O3 -DNDEBUG -std=c++17 -arch=sm_90a -Isrc -Iinclude
// benchmarks/probes/topk_latency_probe.cu.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "common/globaltimer.cuh"
#include "gemm/token_quantize.cuh"
#include "routing/topk_token.cuh"

using namespace flashmoe;
using namespace flashmoe::routing;

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e_ = (x);                                                      \
    if (e_ != cudaSuccess) {                                                   \
      std::printf("%s: %s\n", #x, cudaGetErrorString(e_));                     \
      return 1;                                                                \
    }                                                                          \
  } while (0)

constexpr int kE = 256;
constexpr int kK = 8;
constexpr int kStamps = 8;     // entry, the 4 top-k steps, exit
constexpr int kRowStride = 4096;  // floats between rows used by consecutive launches (16 KB)

template <int kThreads, int kItems>
__global__ void __launch_bounds__(128, 1)
    topk_probe(RoutingParams rp, int t, uint64_t* stamps, int32_t* selected) {
  __shared__ TopkSmem<kThreads, kItems> sm;
  int const tid = static_cast<int>(threadIdx.x);
  if (tid == 0) stamp_globaltimer(stamps + 0);
  if (tid < kThreads) {
    RoutingBuffers const rb{};
    RoutingParams const rpl = rp;
    if constexpr (kThreads == 128) {
      topk_select<128, 2>(rpl, rb, t, tid, sm, WarpgroupSync{1}, stamps + 1);
    } else {
      topk_select<32, 8>(rpl, rb, t, tid, sm, WarpSync{}, stamps + 1);
    }
    if (tid < kK) selected[tid] = sm.selected[tid];
  }
  if (tid == 0) stamp_globaltimer(stamps + 5);
}

// 65536 dependent FFMAs written out by macros (no loop for the compiler to keep rolled): 1 MB of
// straight-line code that each SM runs once, more than an SM's instruction caches hold.
#define FMA1 x = fmaf(x, 1.0000001f, 1e-7f);
#define FMA8 FMA1 FMA1 FMA1 FMA1 FMA1 FMA1 FMA1 FMA1
#define FMA64 FMA8 FMA8 FMA8 FMA8 FMA8 FMA8 FMA8 FMA8
#define FMA512 FMA64 FMA64 FMA64 FMA64 FMA64 FMA64 FMA64 FMA64
#define FMA4K FMA512 FMA512 FMA512 FMA512 FMA512 FMA512 FMA512 FMA512
__device__ __noinline__ float big_code_body(float x) {
  FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K FMA4K
  return x;
}
__global__ void big_code(float* out, float x) {
  x = big_code_body(x);
  if (x == 1234.5f) *out = x;
}

// The warpgroup's form inside the one kernel's surroundings (see the top). Launched with 384
// threads; `pollers`: 132 CTAs, CTA 0 raises *flag after its top-k, the others poll it; `rows`:
// warps 5-11 of CTA 0 quantize `row` meanwhile (rows & 1); the other CTAs run big_code_body
// before they poll (rows & 2). *flag is zero at launch.
__global__ void __launch_bounds__(384, 1)
    topk_in_context(RoutingParams rp, int t, uint64_t* stamps, int32_t* selected,
                    uint32_t* flag, __nv_bfloat16 const* row, int rows, float* row_scale,
                    uint8_t* row_fp8) {
  __shared__ TopkSmem<128, 2> sm;
  __shared__ float amax[7];
  int const tid = static_cast<int>(threadIdx.x);
  if (blockIdx.x != 0) {
    if (rows & 2) {  // the other SMs first run 1 MB of code (their instruction fetch meanwhile)
      float const x = big_code_body(float(tid));
      if (x == 1234.5f) *row_scale = x;
    }
    if (tid == 0) {
      uint32_t v = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
        if (v == 0) __nanosleep(32);
      } while (v == 0);
    }
    return;
  }
  if (tid == 0) stamp_globaltimer(stamps + 0);
  if (tid < 128) {
    RoutingBuffers const rb{};
    RoutingParams const rpl = rp;
    topk_select<128, 2>(rpl, rb, t, tid, sm, WarpgroupSync{1}, stamps + 1);
    if (tid < kK) selected[tid] = sm.selected[tid];
    if (tid == 0) {
      stamp_globaltimer(stamps + 5);
      asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(1u) : "memory");
    }
  } else if (tid >= 160 && (rows & 1)) {
    auto const sync = [] { asm volatile("bar.sync 2, 224;" ::: "memory"); };
    gemm::quantize_row_warps<__nv_bfloat16, 7>(row, 7168, true, tid - 160, amax, sync, row_scale,
                                               row_fp8);
    asm volatile("bar.sync 2, 224;" ::: "memory");
    if (tid == 160) stamp_globaltimer(stamps + 6);
  }
}

// Brings row t's logits into L2 (data-warm).
__global__ void touch_row(float const* logits, int64_t row, float* sink) {
  float const v = logits[row * kE + threadIdx.x];
  if (v == 12345.f) *sink = v;
}

// Writes 512 MB: evicts L2 (62.9 MB on an H200, 50 MB on an H100), code included.
__global__ void flush(uint4* buf, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    buf[i] = make_uint4(uint32_t(i), 1u, 2u, 3u);
  }
}

int main(int argc, char** argv) {
  int const launches = argc > 1 ? std::atoi(argv[1]) : 200;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("gpu %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  int64_t const rows = int64_t(launches) * 22 + 8;  // code-warm takes two rows, context 15
  size_t const logit_floats = size_t(rows) * kRowStride;
  std::vector<float> h(logit_floats);
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& v : h) v = nd(rng);
  float* logits = nullptr;
  CK(cudaMalloc(&logits, logit_floats * sizeof(float)));
  CK(cudaMemcpy(logits, h.data(), logit_floats * sizeof(float), cudaMemcpyHostToDevice));
  int64_t const flush_vecs = (512ll << 20) / 16;
  uint4* fbuf = nullptr;
  CK(cudaMalloc(&fbuf, flush_vecs * 16));
  uint64_t* stamps = nullptr;
  int32_t* sel = nullptr;
  float* sink = nullptr;
  CK(cudaMalloc(&stamps, kStamps * sizeof(uint64_t)));
  CK(cudaMalloc(&sel, 2 * kK * sizeof(int32_t)));
  CK(cudaMalloc(&sink, 4));

  RoutingParams rp{};
  rp.num_tokens = int32_t(rows * (kRowStride / kE));
  rp.num_experts = kE;
  rp.num_local_experts = kE;
  rp.top_k = kK;
  rp.scoring = static_cast<int32_t>(Scoring::kSoftmax);
  rp.score_dtype = static_cast<int32_t>(DType::kFloat32);
  rp.renormalize = true;
  rp.routing_weights = logits;

  constexpr int kConds = 6;
  char const* cond_names[kConds] = {"cold", "code-warm", "data-warm", "warm", "i-cold", "i-L2"};
  char const* form_names[2] = {"warpgroup <128,2>", "one warp <32,8>  "};
  char const* step_names[5] = {"scores", "sum", "q", "selected", "exit"};
  // samples[form][cond][step]
  std::vector<double> samples[2][kConds][5];
  int mismatches = 0;
  int64_t next_row = 0;
  uint64_t hs[kStamps];
  int32_t hsel[2][kK];
  for (int i = 0; i < launches; ++i) {
    for (int cond = 0; cond < kConds; ++cond) {
      int64_t const row = next_row++;
      int const t = int(row * (kRowStride / kE));  // token index whose row starts at row*stride
      for (int form = 0; form < 2; ++form) {
        // The forms alternate which goes first; code-warm gives the second form a fresh row of
        // its own (data from DRAM for both).
        int const f = (i % 2 == 0) ? form : 1 - form;
        if (cond == 0 || cond == 2 || cond == 4) {
          flush<<<4 * prop.multiProcessorCount, 512>>>(fbuf, flush_vecs);
        }
        if (cond >= 4) big_code<<<prop.multiProcessorCount, 32>>>(sink, float(i));
        if (cond == 2) touch_row<<<1, kE>>>(logits, int64_t(t), sink);
        int const tt = (cond == 1 && form == 1) ? int((next_row++) * (kRowStride / kE)) : t;
        auto const launch = [&](int32_t* out) {
          if (f == 0) topk_probe<128, 2><<<1, 128>>>(rp, tt, stamps, out);
          else topk_probe<32, 8><<<1, 128>>>(rp, tt, stamps, out);
        };
        if (cond == 3) launch(sel);  // warm: one launch before on the same row, not measured
        CK(cudaMemset(stamps, 0, kStamps * sizeof(uint64_t)));
        launch(sel + f * kK);
        CK(cudaGetLastError());
        CK(cudaMemcpy(hs, stamps, sizeof(hs), cudaMemcpyDeviceToHost));
        for (int s = 0; s < 5; ++s) {
          samples[f][cond][s].push_back(double(hs[s + 1] - hs[0]) * 1e-3);
        }
        if (cond != 1) {
          CK(cudaMemcpy(hsel[f], sel + f * kK, sizeof(hsel[f]), cudaMemcpyDeviceToHost));
        }
      }
      if (cond != 1) {
        for (int j = 0; j < kK; ++j) mismatches += hsel[0][j] != hsel[1][j] ? 1 : 0;
      }
    }
  }
  // The warpgroup's form in context: modes 0 alone (384 threads, one CTA), 1 pollers, 2 row
  // warps, 3 both, 4 both with the pollers' code first; cold (flush first), warm (the same
  // launch before, same row) and i-cold (flush, then big_code on every SM).
  int64_t const row_elems = 7168;
  int const row_sets = 64;  // the bf16 rows rotate too (cold unless warm)
  __nv_bfloat16* brow = nullptr;
  uint8_t* qrow = nullptr;
  float* rscale = nullptr;
  uint32_t* flag = nullptr;
  CK(cudaMalloc(&brow, row_sets * row_elems * 2));
  CK(cudaMemset(brow, 0x3c, row_sets * row_elems * 2));
  CK(cudaMalloc(&qrow, row_elems));
  CK(cudaMalloc(&rscale, 4));
  CK(cudaMalloc(&flag, 4));
  constexpr int kModes = 5;
  char const* mode_names[kModes] = {"alone", "131 pollers", "row warps", "pollers+rows",
                                    "pollers+code"};
  std::vector<double> ctx[kModes][3][6];  // [mode][cold, warm, i-cold][scores..exit, row done]
  int ctx_mismatch = 0;
  for (int i = 0; i < launches; ++i) {
    for (int mode = 0; mode < kModes; ++mode) {
      for (int warm = 0; warm < 3; ++warm) {
        int64_t const rrow = next_row++;
        if (rrow >= rows) break;
        int const t = int(rrow * (kRowStride / kE));
        __nv_bfloat16 const* xr = brow + (i % row_sets) * row_elems;
        int const grid = (mode & 1) || mode == 4 ? prop.multiProcessorCount : 1;
        int const with_rows = ((mode & 2) ? 1 : 0) | (mode == 4 ? 3 : 0);  // 2: pollers' code
        if (warm == 1) {
          CK(cudaMemset(flag, 0, 4));
          topk_in_context<<<grid, 384>>>(rp, t, stamps, sel, flag, xr, with_rows, rscale, qrow);
        } else {
          flush<<<4 * prop.multiProcessorCount, 512>>>(fbuf, flush_vecs);
          if (warm == 2) big_code<<<prop.multiProcessorCount, 32>>>(sink, float(i));
        }
        CK(cudaMemset(flag, 0, 4));
        CK(cudaMemset(stamps, 0, kStamps * sizeof(uint64_t)));
        topk_in_context<<<grid, 384>>>(rp, t, stamps, sel + kK, flag, xr, with_rows, rscale,
                                       qrow);
        CK(cudaGetLastError());
        CK(cudaMemcpy(hs, stamps, sizeof(hs), cudaMemcpyDeviceToHost));
        for (int st = 0; st < 5; ++st) ctx[mode][warm][st].push_back(double(hs[st + 1] - hs[0]) * 1e-3);
        if (with_rows) ctx[mode][warm][5].push_back(double(hs[6] - hs[0]) * 1e-3);
        // the same selection as the plain warpgroup kernel on this row
        topk_probe<128, 2><<<1, 128>>>(rp, t, stamps, sel);
        CK(cudaMemcpy(hsel, sel, sizeof(hsel), cudaMemcpyDeviceToHost));
        for (int j = 0; j < kK; ++j) ctx_mismatch += hsel[0][j] != hsel[1][j] ? 1 : 0;
      }
    }
  }
  std::printf("in context: selection mismatches against the plain kernel: %d\n", ctx_mismatch);
  std::printf("selection mismatches between the forms: %d (of %d compared slots)\n", mismatches,
              launches * (kConds - 1) * kK);
  std::printf("us from the CTA's entry, median (p10 / p90) over %d launches\n", launches);
  for (int form = 0; form < 2; ++form) {
    for (int cond = 0; cond < kConds; ++cond) {
      std::printf("%s %-9s", form_names[form], cond_names[cond]);
      for (int s = 0; s < 5; ++s) {
        auto v = samples[form][cond][s];
        std::sort(v.begin(), v.end());
        std::printf("  %s %.2f (%.2f/%.2f)", step_names[s], v[v.size() / 2], v[v.size() / 10],
                    v[v.size() * 9 / 10]);
      }
      std::printf("\n");
    }
  }
  for (int mode = 0; mode < kModes; ++mode) {
    for (int warm = 0; warm < 3; ++warm) {
      std::printf("in context %-13s %-6s", mode_names[mode],
                  warm == 0 ? "cold" : warm == 1 ? "warm" : "i-cold");
      for (int st = 0; st < 6; ++st) {
        auto v = ctx[mode][warm][st];
        if (v.empty()) continue;
        std::sort(v.begin(), v.end());
        std::printf("  %s %.2f (%.2f/%.2f)", st < 5 ? step_names[st] : "row-done",
                    v[v.size() / 2], v[v.size() / 10], v[v.size() * 9 / 10]);
      }
      std::printf("\n");
    }
  }
  return mismatches == 0 && ctx_mismatch == 0 ? 0 : 2;
}
