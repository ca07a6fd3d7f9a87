// Probe (perf-log round 280): does the one-token GEMV's read pattern -- every CTA one 8 KB run
// from each of 8 experts' down matrices (1.8 MB apart within a 470 MB array), per column block,
// two blocks per CTA -- read slower than the same bytes as one contiguous run per CTA? One bulk
// copy per run into shared memory (as solo_down_gemv), one mbarrier per CTA, 132 CTAs; each
// launch reads a fresh set of experts (rotation over the array, so the runs miss L2). Times by
// cudaEvent over 200 launches per pattern, alternating patterns.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <random>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

constexpr int kExperts = 256;
constexpr int64_t kExpertBytes = 7168LL * 256;  // H x I
constexpr int kRun = 8192;                        // W = 32 columns x I = 256 bytes
constexpr int kRows = 8;                          // top-8
constexpr int kBlocksPerCta = 2;

__device__ __forceinline__ void bulk_g2s(void* dst, void const* src, uint32_t bytes, uint64_t* bar) {
  uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  uint32_t b = static_cast<uint32_t>(__cvta_generic_to_shared(bar));
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(d), "l"(src), "r"(bytes), "r"(b) : "memory");
}

// mode 0: the GEMV's pattern (expert ids from `ex`, blocks 2c, 2c+1); mode 1: one contiguous
// run of the same bytes per CTA, inside the same experts' span (expert ex[c % 8], offset by c);
// mode 2: the GEMV's pattern but the 8 runs of a block issued as 8 copies of 1 KB each
// (finer requests); mode 3: the same bytes, 16 runs, each from its own random expert.
__global__ void __launch_bounds__(128, 1) probe(uint8_t const* w, int const* ex, int mode, uint8_t* sink, int runs) {
  extern __shared__ __align__(1024) uint8_t smem[];
  __shared__ uint64_t bar;
  int const c = blockIdx.x;
  uint32_t const total = mode == 4 ? kRun * runs : kRun * kRows * kBlocksPerCta;
  if (mode == 4 && threadIdx.x == 0) {  // contiguous, `runs` runs of 8 KB per CTA (0: no copy)
    uint32_t b = static_cast<uint32_t>(__cvta_generic_to_shared(&bar));
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(b));
    asm volatile("fence.mbarrier_init.release.cluster;");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(b), "r"(total));
    int64_t const base = ex[c % kRows] * kExpertBytes;
    for (int n = 0; n < runs; ++n) {
      int64_t const off = (int64_t(c / kRows) * total + n * kRun) % (kExpertBytes - kRun);
      bulk_g2s(smem + n * kRun, w + base + off / 16 * 16, kRun, &bar);
    }
  } else if (threadIdx.x == 0) {
    uint32_t b = static_cast<uint32_t>(__cvta_generic_to_shared(&bar));
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(b));
    asm volatile("fence.mbarrier_init.release.cluster;");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(b), "r"(total));
    int n = 0;
    for (int k = 0; k < kBlocksPerCta; ++k) {
      int const blk = kBlocksPerCta * c + k;
      for (int d = 0; d < kRows; ++d) {
        uint8_t* dst = smem + n * kRun;
        ++n;
        if (mode == 0) {
          bulk_g2s(dst, w + ex[d] * kExpertBytes + int64_t(blk) * kRun, kRun, &bar);
        } else if (mode == 1) {
          int64_t const base = ex[c % kRows] * kExpertBytes;
          int64_t const off = (int64_t(c / kRows) * total + (n - 1) * kRun) % (kExpertBytes - kRun);
          bulk_g2s(dst, w + base + off / 16 * 16, kRun, &bar);
        } else if (mode == 2) {
          for (int q = 0; q < 8; ++q)
            bulk_g2s(dst + q * 1024, w + ex[d] * kExpertBytes + int64_t(blk) * kRun + q * 1024, 1024, &bar);
        } else {
          bulk_g2s(dst, w + ex[8 + (c * 16 + n) % 248] * kExpertBytes + int64_t(blk) * kRun, kRun, &bar);
        }
      }
    }
  }
  __syncthreads();
  uint32_t b = static_cast<uint32_t>(__cvta_generic_to_shared(&bar));
  asm volatile("{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], 0;\n @!p bra W;\n}" :: "r"(b) : "memory");
  if (threadIdx.x == 0 && total > 0 && smem[c] == 0x7b && smem[total - 1] == 0x7c) sink[c] = 1;  // keep the reads
}

int main() {
  int dev = 0; cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, dev));
  int const ctas = prop.multiProcessorCount;
  printf("gpu %s, %d SMs\n", prop.name, ctas);
  int64_t const bytes = kExperts * kExpertBytes;
  int const sets = 3;  // 3 weight copies: 1.4 GB, like the bench's gate/up + down weights
  uint8_t* w; CK(cudaMalloc(&w, bytes * sets)); CK(cudaMemset(w, 1, bytes * sets));
  uint8_t* sink; CK(cudaMalloc(&sink, 4096));
  int const reps = 200;
  std::mt19937 rng(7);
  std::vector<int> hex(reps * 256);
  for (int r = 0; r < reps; ++r) {
    std::vector<int> p(kExperts); for (int i = 0; i < kExperts; ++i) p[i] = i;
    std::shuffle(p.begin(), p.end(), rng);
    for (int i = 0; i < 256; ++i) hex[r * 256 + i] = p[i] + (r % sets) * kExperts;
  }
  int* ex; CK(cudaMalloc(&ex, hex.size() * 4)); CK(cudaMemcpy(ex, hex.data(), hex.size() * 4, cudaMemcpyHostToDevice));
  int const smem = kRun * 24;
  CK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  char const* names[] = {"gemv (8 experts x 8 KB runs)", "contiguous 128 KB per CTA", "gemv, 1 KB copies", "16 random experts x 8 KB"};
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  for (int round = 0; round < 2; ++round) {
    for (int mode = 0; mode < 8; ++mode) {
      int const runs = mode >= 4 ? (mode - 4) * 8 : 16;
      int const m = mode >= 4 ? 4 : mode;
      std::vector<float> t(reps);
      for (int r = 0; r < reps; ++r) {
        // flush: touch 60 MB elsewhere so L2 holds none of this rep's runs
        CK(cudaMemsetAsync(w + (int64_t(r) * 61 % 7) * 64 * 1024 * 1024 + bytes * sets - 512LL * 1024 * 1024, 2, 64 << 20));
        cudaEventRecord(a);
        probe<<<ctas, 128, smem>>>(w, ex + r * 256, m, sink, runs);
        cudaEventRecord(b);
        CK(cudaEventSynchronize(b));
        cudaEventElapsedTime(&t[r], a, b);
      }
      std::sort(t.begin(), t.end());
      float const med = t[reps / 2] * 1000.f;
      double const mbm = double(ctas) * kRun * runs / 1e6;
      char name[64];
      if (mode < 4) snprintf(name, sizeof name, "%s", names[mode]);
      else snprintf(name, sizeof name, "contiguous, %d KB per CTA", runs * 8);
      printf("round %d  %-32s median %6.2f us  p10 %6.2f  p90 %6.2f  (%.1f MB)\n", round, name, med,
             t[reps / 10] * 1000.f, t[reps * 9 / 10] * 1000.f, mbm);
    }
  }
  CK(cudaGetLastError());
  return 0;
}
