// Probe (round 262): does the weight box's DRAM pattern bound the FP8 weight stream?
//
// The FP8 kernels read a weight tile as TMA boxes of 256 rows x 128 bytes out of the prepared
// [E, N, K] layout (K contiguous): each box is 256 runs of 128 bytes, K bytes apart. At decode-1
// (seed shape, T = 1) the one kernel streams its 134 MB at ~2.55 TB/s on an H100 whose D2D copy
// measures ~3.0 TB/s (round 258's timeline). This probe streams the same bytes with the same
// per-SM ring (one CTA per SM, S boxes of 32 KB in flight, nothing computed) in four patterns:
//   strided   the kernels' box: a 3-D map {K, N, E}, CTA c takes expert c / 16, n tile c % 16
//             (the decode-1 items), its K blocks in order;
//   contig    each box one contiguous 32 KB (a blocked layout), a CTA's boxes consecutive;
//   interl    each box contiguous, box i of all CTAs adjacent (a globally sequential sweep);
//   strided6  strided with 6 boxes in flight instead of 4;
// and, as references, cudaMemcpy D2D (counted read + write) and a read-only vector-load kernel.
// Each launch reads another 134 MB region of a 1.47 GB buffer (the bench's weight rotation).
//
// Build: nvcc -std=c++17 -O3 -arch=sm_90a -o tma_stream_probe tma_stream_probe.cu
// Run:   ./tma_stream_probe [reps]
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace {

constexpr int kK = 4096;            // bytes per weight row (seed: H = 4096 E4M3)
constexpr int kN = 4096;            // rows per expert
constexpr int kExpertsPerRegion = 8;
constexpr int kRegions = 11;        // 11 x 134 MB = 1.47 GB
constexpr int kCtas = 128;          // 8 experts x 16 n tiles, one item per CTA (decode-1)
constexpr int kBoxRows = 256;
constexpr int kBoxBytes = kBoxRows * 128;  // 32 KB
constexpr int kBoxesPerCta = kK / 128;     // 32
constexpr int64_t kRegionBytes = int64_t(kExpertsPerRegion) * kN * kK;
constexpr int kMaxStages = 6;

__device__ __forceinline__ uint32_t smem_u32(void const* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* b, uint32_t n) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(n));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      " @!p bra W;\n}\n" ::"r"(smem_u32(b)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void tma_2d(CUtensorMap const* m, uint64_t* bar, void* dst, int c0,
                                       int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4}], [%2];" ::"r"(smem_u32(dst)),
      "l"(m), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
      : "memory");
}
__device__ __forceinline__ void tma_3d(CUtensorMap const* m, uint64_t* bar, void* dst, int c0,
                                       int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4, %5}], [%2];" ::"r"(smem_u32(dst)),
      "l"(m), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// mode 0: strided (3-D map), 1: contig (2-D map of 128-byte rows), 2: interl (the same map).
__global__ void __launch_bounds__(32, 1)
    stream_kernel(__grid_constant__ CUtensorMap const tmap, int mode, int stages, int region,
                  unsigned* sink) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  __shared__ uint64_t full[kMaxStages];
  if (threadIdx.x != 0) return;
  // 128B-swizzled boxes need 1024-byte aligned destinations (the launch adds 1 KB of slack).
  uint8_t* const smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  for (int s = 0; s < stages; ++s) mbar_init(&full[s], 1);
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  int const c = blockIdx.x;
  unsigned acc = 0;
  for (int i = 0; i < kBoxesPerCta; ++i) {
    int const s = i % stages;
    if (i >= stages) {  // the box that used this stage has landed: read a word, reuse it
      mbar_wait(&full[s], static_cast<uint32_t>((i / stages - 1) & 1));
      acc += *reinterpret_cast<unsigned volatile*>(smem + s * kBoxBytes + 4 * (i & 255));
    }
    mbar_expect_tx(&full[s], kBoxBytes);
    uint8_t* dst = smem + s * kBoxBytes;
    if (mode == 0) {
      int const e = region * kExpertsPerRegion + c / 16;
      tma_3d(&tmap, &full[s], dst, i * 128, (c % 16) * kBoxRows, e);
    } else {
      int64_t const box = mode == 1 ? int64_t(c) * kBoxesPerCta + i : int64_t(i) * kCtas + c;
      int64_t const row = (int64_t(region) * kCtas * kBoxesPerCta + box) * kBoxRows;
      tma_2d(&tmap, &full[s], dst, 0, static_cast<int>(row));
    }
  }
  for (int i = kBoxesPerCta; i < kBoxesPerCta + stages; ++i) {
    int const s = i % stages;
    mbar_wait(&full[s], static_cast<uint32_t>((i / stages - 1) & 1));
    acc += *reinterpret_cast<unsigned volatile*>(smem + s * kBoxBytes);
  }
  if (acc == 0x12345678u) *sink = acc;  // keeps the reads
}

// Read-only reference: 16-byte non-coherent loads, 8 in flight per thread.
__global__ void read_kernel(uint4 const* __restrict__ src, int64_t n16, unsigned* sink) {
  unsigned acc = 0;
  int64_t const stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n16; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      int64_t const k = i + j * stride;
      v[j] = k < n16 ? __ldg(src + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  if (acc == 0x12345678u) *sink = acc;
}

using EncodeFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                              cuuint64_t const*, cuuint64_t const*, cuuint32_t const*,
                              cuuint32_t const*, CUtensorMapInterleave, CUtensorMapSwizzle,
                              CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeFn get_encode() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q;
  CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
  if (fn == nullptr) {
    std::fprintf(stderr, "no cuTensorMapEncodeTiled\n");
    std::exit(1);
  }
  return reinterpret_cast<EncodeFn>(fn);
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int const reps = argc > 1 ? std::atoi(argv[1]) : 44;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  int64_t const total = kRegionBytes * kRegions;
  uint8_t* buf = nullptr;
  uint8_t* dst = nullptr;
  unsigned* sink = nullptr;
  CK(cudaMalloc(&buf, total));
  CK(cudaMalloc(&dst, kRegionBytes));
  CK(cudaMalloc(&sink, 4));
  CK(cudaMemset(buf, 0x3c, total));
  std::printf("gpu: %s, %d SMs | region %.1f MB x %d | %d reps per pattern (median)\n", prop.name,
              prop.multiProcessorCount, kRegionBytes / 1e6, kRegions, reps);

  EncodeFn encode = get_encode();
  CUtensorMap strided{}, flat{};
  {
    cuuint64_t dims[3] = {kK, kN, cuuint64_t(kExpertsPerRegion) * kRegions};
    cuuint64_t strides[2] = {kK, cuuint64_t(kN) * kK};
    cuuint32_t box[3] = {128, kBoxRows, 1};
    cuuint32_t es[3] = {1, 1, 1};
    if (encode(&strided, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, buf, dims, strides, box, es,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
      std::fprintf(stderr, "encode strided failed\n");
      return 1;
    }
  }
  {
    cuuint64_t dims[2] = {128, cuuint64_t(total / 128)};
    cuuint64_t strides[1] = {128};
    cuuint32_t box[2] = {128, kBoxRows};
    cuuint32_t es[2] = {1, 1};
    if (encode(&flat, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, buf, dims, strides, box, es,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
      std::fprintf(stderr, "encode flat failed\n");
      return 1;
    }
  }
  int const smem = kMaxStages * kBoxBytes + 1024;
  CK(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));

  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  double const bytes = double(kRegionBytes);
  auto time_it = [&](auto&& launch) {
    for (int r = 0; r < 5; ++r) launch(r % kRegions);
    CK(cudaDeviceSynchronize());
    std::vector<float> ms;
    for (int r = 0; r < reps; ++r) {
      CK(cudaEventRecord(a));
      launch((r + 5) % kRegions);
      CK(cudaEventRecord(b));
      CK(cudaEventSynchronize(b));
      float t = 0;
      CK(cudaEventElapsedTime(&t, a, b));
      ms.push_back(t);
    }
    CK(cudaGetLastError());
    return ms;
  };
  auto report = [&](char const* name, std::vector<float> const& ms, double factor) {
    float const med = median(ms);
    float const mn = *std::min_element(ms.begin(), ms.end());
    std::printf("%-10s median %.2f us (min %.2f)  %.0f GB/s (best %.0f)\n", name, med * 1e3,
                mn * 1e3, factor * bytes / (med * 1e-3) / 1e9, factor * bytes / (mn * 1e-3) / 1e9);
  };
  struct P {
    char const* name;
    int mode;
    int stages;
  };
  P const pats[] = {{"strided", 0, 4}, {"contig", 1, 4}, {"interl", 2, 4}, {"strided6", 0, 6},
                    {"contig6", 1, 6}};
  for (int round = 0; round < 2; ++round) {
    std::printf("-- round %d\n", round);
    report("copy(r+w)", time_it([&](int r) {
             CK(cudaMemcpyAsync(dst, buf + r * kRegionBytes, kRegionBytes,
                                cudaMemcpyDeviceToDevice));
           }),
           2.0);
    report("read", time_it([&](int r) {
             read_kernel<<<prop.multiProcessorCount * 4, 512>>>(
                 reinterpret_cast<uint4 const*>(buf + r * kRegionBytes), kRegionBytes / 16, sink);
           }),
           1.0);
    for (P const& p : pats) {
      report(p.name, time_it([&](int r) {
               stream_kernel<<<kCtas, 32, smem>>>(p.mode == 0 ? strided : flat, p.mode, p.stages,
                                                  r, sink);
             }),
             1.0);
    }
  }
  return 0;
}
