// flashmoe: the sm_90a bf16/fp16 grouped GEMM -- its four instantiations ({bf16, fp16} x B
// layout) and the host launcher (checks, TMA map, persistent grid). The kernel is in
// sm90_grouped_gemm.cuh.
#include "gemm/sm90_grouped_gemm.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>

#include <cutlass/cuda_host_adapter.hpp>  // cuTensorMapEncodeTiled via cudaGetDriverEntryPoint

#include "common/str_cat.h"
#include "fused/cuda_check.h"
#include "gemm/sm90_grouped_gemm.cuh"

namespace flashmoe::gemm {
namespace {

using detail::cat;
using Bf16K = Sm90GemmTile<cute::bfloat16_t, false>;
using Bf16Mn = Sm90GemmTile<cute::bfloat16_t, true>;
using Fp16K = Sm90GemmTile<cute::half_t, false>;
using Fp16Mn = Sm90GemmTile<cute::half_t, true>;

bool aligned16(void const* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void const* kernel_for(DType dtype, WeightLayout layout, int* smem_bytes) {
  bool const mn = layout == WeightLayout::kInOut;
  if (dtype == DType::kBFloat16) {
    *smem_bytes = mn ? sm90_gemm_smem_bytes<Bf16Mn>() : sm90_gemm_smem_bytes<Bf16K>();
    return mn ? reinterpret_cast<void const*>(&sm90_grouped_gemm_kernel<Bf16Mn>)
              : reinterpret_cast<void const*>(&sm90_grouped_gemm_kernel<Bf16K>);
  }
  *smem_bytes = mn ? sm90_gemm_smem_bytes<Fp16Mn>() : sm90_gemm_smem_bytes<Fp16K>();
  return mn ? reinterpret_cast<void const*>(&sm90_grouped_gemm_kernel<Fp16Mn>)
            : reinterpret_cast<void const*>(&sm90_grouped_gemm_kernel<Fp16K>);
}

int64_t n_tiles_of(GroupedGemmArgs const& a, bool gate_up) {
  // gate-up: 128 outputs per item (64 per math warpgroup); plain: 256 columns.
  int64_t const per_item = gate_up ? kSm90GemmBlockN / 2 : kSm90GemmBlockN;
  return (a.n_out + per_item - 1) / per_item;
}

}  // namespace

Status sm90_device_sms(char const* who, int* num_sms) {
  int device = 0;
  int major = 0;
  int minor = 0;
  FLASHMOE_CUDA_CHECK(cudaGetDevice(&device));
  FLASHMOE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FLASHMOE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  FLASHMOE_CUDA_CHECK(cudaDeviceGetAttribute(num_sms, cudaDevAttrMultiProcessorCount, device));
  if (major != 9 || minor != 0) {
    return Status::Unsupported(cat(who, ": needs a compute capability 9.0 device (wgmma, TMA; "
                                   "built for sm_90a), got ", major, ".", minor));
  }
  return Status::Ok();
}

bool sm90_grouped_gemm_built() {
  // ptxVersion of the code the current device would run: 90 only from the sm_90a cubin (a build
  // without it runs the sm_80 cubin's empty body on a 9.0 device).
  static std::once_flag once;
  static bool built = false;
  std::call_once(once, [] {
    cudaFuncAttributes attr{};
    built = cudaFuncGetAttributes(&attr, reinterpret_cast<void const*>(
                                             &sm90_grouped_gemm_kernel<Bf16K>)) == cudaSuccess &&
            attr.ptxVersion >= 90;
    cudaGetLastError();  // a failed query leaves no sticky error behind
  });
  return built;
}

Status check_sm90_grouped_gemm(GroupedGemmArgs const& a, DType dtype, WeightLayout layout) {
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16) {
    return Status::BadType(cat("sm90 grouped gemm: operands must be bfloat16 or float16, got ",
                               dtype_name(dtype)));
  }
  if (layout != WeightLayout::kInOut && layout != WeightLayout::kOutIn) {
    return Status::Invalid("sm90 grouped gemm: unknown weight layout");
  }
  if (a.k <= 0 || a.k % 8 != 0 || a.n_out <= 0 || a.n_out % 8 != 0 || a.b_cols <= 0 ||
      a.b_cols % 8 != 0) {
    return Status::Unsupported(cat("sm90 grouped gemm: K, N and B's columns must be positive "
                                   "multiples of 8 (16-byte rows), got K=",
                                   a.k, " N=", a.n_out, " b_cols=", a.b_cols));
  }
  if (a.num_experts <= 0 || a.num_tile_slots < 0) {
    return Status::Invalid("sm90 grouped gemm: num_experts must be > 0 and num_tile_slots >= 0");
  }
  if (a.a == nullptr || a.b == nullptr || a.c == nullptr ||
      (a.num_tile_slots > 0 && a.tiles == nullptr)) {
    return Status::Invalid("sm90 grouped gemm: a, b, c and tiles must be non-null");
  }
  if (!aligned16(a.a) || !aligned16(a.b) || !aligned16(a.c)) {
    return Status::Unsupported("sm90 grouped gemm: a, b and c must be 16-byte aligned");
  }
  bool const gate_up = a.b_cols != a.n_out;
  if (a.k > INT32_MAX / 2 || a.b_cols > INT32_MAX / 2 ||
      static_cast<int64_t>(a.num_tile_slots) * n_tiles_of(a, gate_up) > INT32_MAX / 2) {
    return Status::Unsupported("sm90 grouped gemm: problem too large for 32-bit tile indices");
  }
  return Status::Ok();
}

namespace {

// What a launch needs beyond the shapes: the epilogue matching B's columns, a work queue.
Status check_sm90_gemm_launch(GroupedGemmArgs const& a, DType dtype, WeightLayout layout,
                              bool gate_up, int32_t const* scheduler) {
  FLASHMOE_RETURN_IF_ERROR(check_sm90_grouped_gemm(a, dtype, layout));
  if (gate_up != (a.b_cols == 2 * a.n_out)) {
    return Status::Invalid("sm90 grouped gemm: gate-up needs b_cols == 2 * n_out, plain "
                           "b_cols == n_out");
  }
  if (scheduler == nullptr) return Status::Invalid("sm90 grouped gemm: scheduler must be non-null");
  return Status::Ok();
}

}  // namespace

Status sm90_gemm_kernel_params(GroupedGemmArgs const& a, DType dtype, WeightLayout layout,
                               bool gate_up, int32_t* scheduler, Sm90GemmKernelParams* out) {
  FLASHMOE_RETURN_IF_ERROR(check_sm90_gemm_launch(a, dtype, layout, gate_up, scheduler));
  Sm90GemmKernelParams& kp = *out;
  kp = Sm90GemmKernelParams{};
  // B as a 3-D uint16 tensor, innermost dimension first; box 64 x 64 (128 bytes innermost).
  bool const mn = layout == WeightLayout::kInOut;
  cuuint64_t const inner = static_cast<cuuint64_t>(mn ? a.b_cols : a.k);
  cuuint64_t const outer = static_cast<cuuint64_t>(mn ? a.k : a.b_cols);
  cuuint64_t const dims[3] = {inner, outer, static_cast<cuuint64_t>(a.num_experts)};
  cuuint64_t const strides[2] = {inner * 2, inner * outer * 2};
  cuuint32_t const box[3] = {64, 64, 1};
  cuuint32_t const elem_strides[3] = {1, 1, 1};
  CUresult const cu = cutlass::call_cuTensorMapEncodeTiled(
      &kp.tmap_b, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, const_cast<void*>(a.b), dims, strides, box,
      elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (cu != CUDA_SUCCESS) {
    return Status(StatusCode::kCudaError,
                  cat(__FILE__, ":", __LINE__, ": cuTensorMapEncodeTiled failed with CUresult ",
                      static_cast<int>(cu)));
  }
  kp.a = a.a;
  kp.a_rows = a.a_rows;
  kp.c = a.c;
  kp.tiles = a.tiles;
  kp.scheduler = scheduler;
  kp.a_row_stride = a.k;
  kp.c_row_stride = a.n_out;
  kp.num_tile_slots = a.num_tile_slots;
  kp.n_tiles = static_cast<int32_t>(n_tiles_of(a, gate_up));
  kp.k = static_cast<int32_t>(a.k);
  kp.num_kb = static_cast<int32_t>((a.k + 63) / 64);
  kp.n_out = static_cast<int32_t>(a.n_out);
  kp.gate_up = gate_up ? 1 : 0;
  kp.activation = static_cast<int32_t>(a.activation);
  kp.out_dtype = dtype == DType::kBFloat16 ? 1 : 2;
  kp.out_vec8 = reinterpret_cast<std::uintptr_t>(a.c) % 8 == 0 && a.n_out % 4 == 0 ? 1 : 0;
  return Status::Ok();
}

Status launch_sm90_grouped_gemm(GroupedGemmArgs const& a, DType dtype, WeightLayout layout,
                                bool gate_up, int32_t* scheduler, cudaStream_t stream,
                                int max_ctas) {
  FLASHMOE_RETURN_IF_ERROR(check_sm90_gemm_launch(a, dtype, layout, gate_up, scheduler));
  if (a.num_tile_slots == 0) return Status::Ok();

  int num_sms = 0;
  FLASHMOE_RETURN_IF_ERROR(sm90_device_sms("sm90 grouped gemm", &num_sms));
  if (!sm90_grouped_gemm_built()) {
    return Status::Unsupported("sm90 grouped gemm: this build has no sm_90a code (build with "
                               "CMAKE_CUDA_ARCHITECTURES including 90a-real)");
  }

  Sm90GemmKernelParams kp{};
  FLASHMOE_RETURN_IF_ERROR(sm90_gemm_kernel_params(a, dtype, layout, gate_up, scheduler, &kp));
  int smem_bytes = 0;
  void const* kernel = kernel_for(dtype, layout, &smem_bytes);
  int64_t const work = static_cast<int64_t>(a.num_tile_slots) * kp.n_tiles;
  int64_t ctas = max_ctas > 0 ? std::min<int64_t>(max_ctas, num_sms) : num_sms;
  ctas = std::max<int64_t>(1, std::min(ctas, work));
  FLASHMOE_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  void* args[] = {&kp};
  FLASHMOE_CUDA_CHECK(cudaLaunchKernel(kernel, dim3(static_cast<unsigned>(ctas)),
                                       dim3(Bf16K::kThreads), args,
                                       static_cast<std::size_t>(smem_bytes), stream));
  FLASHMOE_LAUNCH_CHECK("sm90_grouped_gemm");
  return Status::Ok();
}

}  // namespace flashmoe::gemm
