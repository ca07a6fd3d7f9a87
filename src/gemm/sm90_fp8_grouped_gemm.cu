// flashmoe: the sm_90a FP8 grouped GEMM -- its one instantiation and the host launcher (TMA map,
// shared memory attribute, persistent grid). See sm90_fp8_grouped_gemm.cuh for the kernel.
#include "gemm/sm90_fp8_grouped_gemm.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include <cutlass/cuda_host_adapter.hpp>  // cuTensorMapEncodeTiled via cudaGetDriverEntryPoint

#include "fused/cuda_check.h"
#include "gemm/sm90_fp8_grouped_gemm.cuh"

namespace flashmoe::gemm {
namespace {

using Cfg = Sm90Fp8TileDefault;

bool aligned(void const* p, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

int sm90_fp8_grouped_gemm_smem_bytes() { return Cfg::kSmemBytes; }

Status check_sm90_fp8_grouped_gemm(Sm90Fp8GemmParams const& p) {
  if (p.a_dtype != DType::kBFloat16 && p.a_dtype != DType::kFloat16) {
    return Status::BadType(std::string("sm90 fp8 gemm: activations must be bfloat16 or float16, got ") +
                           dtype_name(p.a_dtype));
  }
  if (p.out_dtype != DType::kFloat32 && p.out_dtype != DType::kBFloat16 &&
      p.out_dtype != DType::kFloat16) {
    return Status::BadType(std::string("sm90 fp8 gemm: output must be float32, bfloat16 or "
                                       "float16, got ") + dtype_name(p.out_dtype));
  }
  if (p.k <= 0 || p.k % 16 != 0) {
    return Status::Unsupported("sm90 fp8 gemm: K must be a positive multiple of 16, got " + str(p.k));
  }
  if (p.n <= 0 || p.n % 8 != 0) {
    return Status::Unsupported("sm90 fp8 gemm: N must be a positive multiple of 8, got " + str(p.n));
  }
  bool const gate_up = p.epilogue != Fp8Epilogue::kPlain;
  if (gate_up && p.scale_kind == Fp8ScaleKind::kBlock128 && p.n % kFp8GateUpHalf != 0) {
    return Status::Unsupported("sm90 fp8 gemm: gate-up weights with 128x128 block scales need "
                               "I % 64 == 0, got I = " + str(p.n));
  }
  if (p.num_experts <= 0 || p.num_tile_slots < 0) {
    return Status::Invalid("sm90 fp8 gemm: num_experts must be > 0 and num_tile_slots >= 0");
  }
  if (p.a == nullptr || p.a_scales == nullptr || p.w_fp8 == nullptr || p.w_scales == nullptr ||
      p.out == nullptr || p.scheduler == nullptr ||
      (p.num_tile_slots > 0 && p.tiles == nullptr)) {
    return Status::Invalid("sm90 fp8 gemm: a, a_scales, tiles, w_fp8, w_scales, out and "
                           "scheduler must be non-null");
  }
  if (!aligned(p.a, 16) || p.a_row_stride < p.k || p.a_row_stride % 8 != 0) {
    return Status::Unsupported("sm90 fp8 gemm: activation rows must be 16-byte aligned "
                               "(a % 16 == 0, a_row_stride % 8 == 0, a_row_stride >= K)");
  }
  if (!aligned(p.w_fp8, 16)) {
    return Status::Unsupported("sm90 fp8 gemm: fp8 weights must be 16-byte aligned");
  }
  if (!aligned(p.out, 2 * dtype_size(p.out_dtype)) || p.out_row_stride < p.n ||
      p.out_row_stride % 2 != 0) {
    return Status::Unsupported("sm90 fp8 gemm: output pairs must be aligned (out_row_stride "
                               "even and >= N)");
  }
  int64_t const n_raw = gate_up ? 2 * p.n : p.n;
  int64_t const n_prep = fp8_prepared_rows(n_raw, gate_up);
  int64_t const n_tiles = (n_prep + Cfg::kBlockN - 1) / Cfg::kBlockN;
  if (p.k > INT32_MAX / 2 || n_prep > INT32_MAX / 2 ||
      static_cast<int64_t>(p.num_tile_slots) * n_tiles > INT32_MAX / 2) {
    return Status::Unsupported("sm90 fp8 gemm: problem too large for 32-bit tile indices");
  }
  return Status::Ok();
}

Status launch_sm90_fp8_grouped_gemm(Sm90Fp8GemmParams const& p, cudaStream_t stream) {
  FLASHMOE_RETURN_IF_ERROR(check_sm90_fp8_grouped_gemm(p));
  if (p.num_tile_slots == 0) return Status::Ok();

  int device = 0;
  int major = 0;
  int minor = 0;
  int num_sms = 0;
  FLASHMOE_CUDA_CHECK(cudaGetDevice(&device));
  FLASHMOE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FLASHMOE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  FLASHMOE_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  if (major != 9 || minor != 0) {
    return Status::Unsupported("sm90 fp8 gemm: needs a compute capability 9.0 device (wgmma, "
                               "TMA; built for sm_90a), got " + std::to_string(major) + "." +
                               std::to_string(minor));
  }

  bool const gate_up = p.epilogue != Fp8Epilogue::kPlain;
  int64_t const n_raw = gate_up ? 2 * p.n : p.n;
  int64_t const n_prep = fp8_prepared_rows(n_raw, gate_up);

  Sm90Fp8KernelParams kp{};
  // W8 [E, Np, K] uint8: dims innermost first, strides (bytes) of dims 1 and 2.
  cuuint64_t const dims[3] = {static_cast<cuuint64_t>(p.k), static_cast<cuuint64_t>(n_prep),
                              static_cast<cuuint64_t>(p.num_experts)};
  cuuint64_t const strides[2] = {static_cast<cuuint64_t>(p.k),
                                 static_cast<cuuint64_t>(p.k * n_prep)};
  cuuint32_t const box[3] = {Cfg::kBlockK, Cfg::kBlockN, 1};
  cuuint32_t const elem_strides[3] = {1, 1, 1};
  CUresult const cu = cutlass::call_cuTensorMapEncodeTiled(
      &kp.tmap_w, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(p.w_fp8), dims, strides, box,
      elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (cu != CUDA_SUCCESS) {
    return Status(StatusCode::kCudaError, std::string(__FILE__) + ":" + std::to_string(__LINE__) +
                                              ": cuTensorMapEncodeTiled failed with CUresult " +
                                              std::to_string(static_cast<int>(cu)));
  }
  kp.a = p.a;
  kp.a_rows = p.a_rows;
  kp.a_scales = p.a_scales;
  kp.tiles = p.tiles;
  kp.scheduler = p.scheduler;
  kp.w_scales = p.w_scales;
  kp.out = p.out;
  kp.a_row_stride = p.a_row_stride;
  kp.out_row_stride = p.out_row_stride;
  kp.num_tile_slots = p.num_tile_slots;
  kp.n_tiles = static_cast<int32_t>((n_prep + Cfg::kBlockN - 1) / Cfg::kBlockN);
  kp.k = static_cast<int32_t>(p.k);
  kp.num_kb = static_cast<int32_t>((p.k + Cfg::kBlockK - 1) / Cfg::kBlockK);
  kp.n_out = static_cast<int32_t>(p.n);
  kp.n_raw = static_cast<int32_t>(n_raw);
  kp.n_prep = static_cast<int32_t>(n_prep);
  kp.n_scale_blocks = static_cast<int32_t>((n_raw + 127) / 128);
  kp.scale_block = p.scale_kind == Fp8ScaleKind::kBlock128 ? 1 : 0;
  kp.epilogue = static_cast<int32_t>(p.epilogue);
  kp.a_bf16 = p.a_dtype == DType::kBFloat16 ? 1 : 0;
  kp.out_dtype = p.out_dtype == DType::kFloat32 ? 0 : (p.out_dtype == DType::kBFloat16 ? 1 : 2);

  int64_t const work = static_cast<int64_t>(p.num_tile_slots) * kp.n_tiles;
  int64_t ctas = p.max_ctas > 0 ? std::min<int64_t>(p.max_ctas, num_sms) : num_sms;
  ctas = std::max<int64_t>(1, std::min(ctas, work));

  auto kernel = sm90_fp8_grouped_gemm_kernel<Cfg>;
  // A build without sm_90a (e.g. CMAKE_CUDA_ARCHITECTURES left at the compiler's default) would
  // run the JIT-compiled PTX of a lower target here, whose kernel body is empty.
  cudaFuncAttributes attr{};
  FLASHMOE_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  if (attr.ptxVersion < 90) {
    return Status::Unsupported("sm90 fp8 gemm: this build has no sm_90a code (build with "
                               "CMAKE_CUDA_ARCHITECTURES including 90a-real); found compute_" +
                               std::to_string(attr.ptxVersion));
  }
  FLASHMOE_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
  kernel<<<static_cast<unsigned>(ctas), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(kp);
  FLASHMOE_LAUNCH_CHECK("sm90_fp8_grouped_gemm_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::gemm
