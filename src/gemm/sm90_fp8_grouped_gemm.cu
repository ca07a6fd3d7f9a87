// flashmoe: the sm_90a FP8 grouped GEMM -- its instantiations (one per variant family: the base
// kernel, the pipelined kernel with 64- and 128-row items) and the host launcher (variant choice,
// TMA map, shared memory plan, persistent grid). See sm90_fp8_grouped_gemm.cuh for the kernels.
#include "gemm/sm90_fp8_grouped_gemm.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <cutlass/cuda_host_adapter.hpp>  // cuTensorMapEncodeTiled via cudaGetDriverEntryPoint

#include "common/env_flag.h"
#include "fused/cuda_check.h"
#include "gemm/sm90_fp8_convert_kernel.cuh"
#include "gemm/sm90_fp8_grouped_gemm.cuh"
#include "gemm/sm90_grouped_gemm.h"

namespace flashmoe::gemm {
namespace {

using Cfg = Sm90Fp8TileDefault;  // the base kernel
using Pipe64 = Sm90Fp8PipeTile<64>;
using Pipe128 = Sm90Fp8PipeTile<128>;
static_assert(Cfg::kBlockN == kSm90Fp8BlockN && Pipe64::kBlockN == kSm90Fp8BlockN &&
                  Pipe128::kBlockN == kSm90Fp8BlockN,
              "sm90_fp8_n_tiles counts the kernels' N tiles");

struct VariantName {
  Sm90Fp8Variant variant;
  char const* name;
};
constexpr VariantName kVariantNames[] = {
    {Sm90Fp8Variant::kBase, "base"},
    {Sm90Fp8Variant::kM64, "m64"},
    {Sm90Fp8Variant::kM128, "m128"},
    {Sm90Fp8Variant::kM128Hint, "m128h"},
    {Sm90Fp8Variant::kM128Convert, "m128c"},
};

bool aligned(void const* p, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

char const* sm90_fp8_variant_name(Sm90Fp8Variant v) {
  for (auto const& n : kVariantNames) {
    if (n.variant == v) return n.name;
  }
  return "auto";
}

bool sm90_fp8_parse_variant(char const* name, Sm90Fp8Variant* out) {
  if (name == nullptr) return false;
  for (auto const& n : kVariantNames) {
    if (std::strcmp(name, n.name) == 0) {
      if (out != nullptr) *out = n.variant;
      return true;
    }
  }
  return false;
}

Sm90Fp8Variant sm90_fp8_env_variant_or(Sm90Fp8Variant chosen) {
  Sm90Fp8Variant v = chosen;
  sm90_fp8_parse_variant(std::getenv("FLASHMOE_SM90_VARIANT"), &v);
  return v;
}

Sm90Fp8Variant sm90_fp8_resolve_variant(Sm90Fp8Variant requested) {
  if (requested != Sm90Fp8Variant::kAuto) return requested;
  return sm90_fp8_env_variant_or(kSm90Fp8DefaultVariant);
}

int sm90_fp8_grouped_gemm_smem_bytes(Sm90Fp8Variant variant, bool fp8_source) {
  switch (sm90_fp8_resolve_variant(variant)) {
    case Sm90Fp8Variant::kBase:
      return Cfg::kSmemBytes;
    case Sm90Fp8Variant::kM64:
      return sm90_fp8_detail::pipe_smem_plan<Pipe64>(fp8_source).bytes;
    case Sm90Fp8Variant::kM128Convert:
      if (!fp8_source) return sm90_fp8_detail::conv_smem_bytes();
      return sm90_fp8_detail::pipe_smem_plan<Pipe128>(true).bytes;
    default:
      return sm90_fp8_detail::pipe_smem_plan<Pipe128>(fp8_source).bytes;
  }
}

int sm90_fp8_grouped_gemm_smem_bytes() {
  return sm90_fp8_grouped_gemm_smem_bytes(kSm90Fp8DefaultVariant, false);
}

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
  Sm90Fp8Variant const variant = sm90_fp8_resolve_variant(p.variant);
  if (variant != Sm90Fp8Variant::kBase && variant != Sm90Fp8Variant::kM64 &&
      variant != Sm90Fp8Variant::kM128 && variant != Sm90Fp8Variant::kM128Hint &&
      variant != Sm90Fp8Variant::kM128Convert) {
    return Status::Invalid("sm90 fp8 gemm: unknown variant " +
                           std::to_string(static_cast<int>(p.variant)));
  }
  bool const gathers_a = p.a_fp8 == nullptr || variant == Sm90Fp8Variant::kBase;
  if ((gathers_a && p.a == nullptr) || p.a_scales == nullptr || p.w_fp8 == nullptr ||
      p.w_scales == nullptr || p.out == nullptr || p.scheduler == nullptr ||
      (p.num_tile_slots > 0 && p.tiles == nullptr)) {
    return Status::Invalid("sm90 fp8 gemm: a (or a_fp8; the variant base always reads a), "
                           "a_scales, tiles, w_fp8, w_scales, out and scheduler must be non-null");
  }
  if (gathers_a && (!aligned(p.a, 16) || p.a_row_stride < p.k || p.a_row_stride % 8 != 0)) {
    return Status::Unsupported("sm90 fp8 gemm: activation rows must be 16-byte aligned "
                               "(a % 16 == 0, a_row_stride % 8 == 0, a_row_stride >= K)");
  }
  if (p.a_fp8 != nullptr &&
      (!aligned(p.a_fp8, 16) || p.a_fp8_row_stride < p.k || p.a_fp8_row_stride % 16 != 0)) {
    return Status::Unsupported("sm90 fp8 gemm: pre-quantized rows must be 16-byte aligned "
                               "(a_fp8 % 16 == 0, a_fp8_row_stride % 16 == 0 and >= K)");
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
  int64_t const n_tiles = sm90_fp8_n_tiles(p.n, gate_up);
  // Block-scale indices are 32-bit in the kernels (block_scale_rows): E * blocks * K blocks < 2^30.
  int64_t const scale_entries = p.num_experts * ((n_raw + 127) / 128) * ((p.k + 127) / 128);
  if (scale_entries > INT32_MAX / 2) {
    return Status::Unsupported("sm90 fp8 gemm: too many weight scales for 32-bit indices");
  }
  if (p.k_splits < 1 || p.k_splits > 127) {
    return Status::Invalid("sm90 fp8 gemm: k_splits must be in [1, 127], got " +
                           str(p.k_splits));
  }
  if (p.k > INT32_MAX / 2 || n_prep > INT32_MAX / 2 ||
      static_cast<int64_t>(p.num_tile_slots) * n_tiles * p.k_splits > INT32_MAX / 2 ||
      static_cast<int64_t>(p.num_tile_slots) >= (1 << 22)) {
    return Status::Unsupported("sm90 fp8 gemm: problem too large for 32-bit tile indices");
  }
  if (p.promote_kb != 1 && p.promote_kb != 2) {
    return Status::Invalid("sm90 fp8 gemm: promote_kb must be 1 or 2, got " + str(p.promote_kb));
  }
  if (p.promote_kb == 2) {
    if (gate_up || p.scale_kind != Fp8ScaleKind::kChannel || p.a_fp8 == nullptr ||
        !sm90_fp8_variant_pairs_kb(variant)) {
      return Status::Unsupported("sm90 fp8 gemm: promote_kb = 2 needs channel scales, the plain "
                                 "epilogue, pre-quantized rows (a_fp8) and the variant m128 or "
                                 "m128h (got variant " +
                                 std::string(sm90_fp8_variant_name(variant)) + ")");
    }
    // Every tile an even count of K blocks (with the ring's even stage count, set at launch):
    // every tile starts at an even stage, so the kernel's pairs never depend on the CTA's past.
    int64_t const num_kb = (p.k + 127) / 128;
    int64_t const per = (num_kb + p.k_splits - 1) / p.k_splits;
    if (num_kb % 2 != 0 || (p.k_splits > 1 && per % 2 != 0)) {
      return Status::Unsupported("sm90 fp8 gemm: promote_kb = 2 needs an even count of 128-wide "
                                 "K blocks per work item, got K = " + str(p.k) +
                                 " in " + str(p.k_splits) + " range(s)");
    }
  }
  // The pipelined kernel (m64, m128, m128h; m128c on pre-quantized rows runs m128): the only one
  // that splits K or loads dense A rows.
  bool const pipelined = variant == Sm90Fp8Variant::kM64 || variant == Sm90Fp8Variant::kM128 ||
                         variant == Sm90Fp8Variant::kM128Hint ||
                         variant == Sm90Fp8Variant::kM128Convert;
  if (p.a_fp8_dense) {
    if (p.a_fp8 == nullptr || !pipelined || p.a_fp8_dense_rows <= 0) {
      return Status::Unsupported("sm90 fp8 gemm: dense A rows (a_fp8_dense) need pre-quantized "
                                 "rows (a_fp8), a_fp8_dense_rows > 0 and a pipelined variant "
                                 "(got " + std::string(sm90_fp8_variant_name(variant)) + ")");
    }
  }
  if (p.k_splits > 1) {
    if (p.a_fp8 == nullptr || !pipelined) {
      return Status::Unsupported("sm90 fp8 gemm: split-K (k_splits > 1) runs in the pipelined "
                                 "variants on pre-quantized rows (a_fp8) only");
    }
    int64_t const num_kb = (p.k + 127) / 128;
    int64_t const per = (num_kb + p.k_splits - 1) / p.k_splits;
    if ((p.k_splits - 1) * per >= num_kb) {
      return Status::Invalid("sm90 fp8 gemm: k_splits = " + str(p.k_splits) + " leaves a K "
                             "range empty (K blocks: " + str(num_kb) + ")");
    }
    if (p.split_partial == nullptr || p.split_count == nullptr || p.split_tile_slots <= 0) {
      return Status::Invalid("sm90 fp8 gemm: split-K needs split_partial, split_count and "
                             "split_tile_slots > 0");
    }
  }
  return Status::Ok();
}

int sm90_fp8_k_splits(int64_t items, int64_t k, int ctas) {
  int64_t const num_kb = (k + 127) / 128;
  if (items <= 0 || items * 4 > ctas || num_kb < 8) return 1;
  int64_t want = std::min<int64_t>(ctas / items, num_kb / 4);
  want = std::min<int64_t>(want, 127);
  if (want <= 1) return 1;
  // Ranges of ceil(num_kb / want) blocks; their count, so that none is empty.
  int64_t const per = (num_kb + want - 1) / want;
  return static_cast<int>((num_kb + per - 1) / per);
}

// Checked params (check_sm90_fp8_grouped_gemm) -> the kernel's: the weights' TMA map and every
// field but the shared-memory plan of the variant.
static Status make_sm90_fp8_kernel_params(Sm90Fp8GemmParams const& p,
                                          Sm90Fp8KernelParams* kp_out) {
  Sm90Fp8KernelParams& kp = *kp_out;
  kp = Sm90Fp8KernelParams{};
  bool const gate_up = p.epilogue != Fp8Epilogue::kPlain;
  int64_t const n_raw = gate_up ? 2 * p.n : p.n;
  int64_t const n_prep = fp8_prepared_rows(n_raw, gate_up);

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
  kp.n_tiles = static_cast<int32_t>(sm90_fp8_n_tiles(p.n, gate_up));
  kp.k = static_cast<int32_t>(p.k);
  kp.num_kb = static_cast<int32_t>((p.k + Cfg::kBlockK - 1) / Cfg::kBlockK);
  kp.n_out = static_cast<int32_t>(p.n);
  kp.n_raw = static_cast<int32_t>(n_raw);
  kp.n_prep = static_cast<int32_t>(n_prep);
  kp.n_scale_blocks = static_cast<int32_t>((n_raw + 127) / 128);
  kp.scale_block = p.scale_kind == Fp8ScaleKind::kBlock128 ? 1 : 0;
  // The pipelined body copies the row scales with the channel scales (block128 tiles have no
  // such copy); the one-kernel FFN turns it off for its down projection (fused_sm90_fp8.cu).
  // FLASHMOE_FP8_ROW_SCALES=0 (for comparisons): the epilogue loads them everywhere.
  bool const early_off = detail::env_is("FLASHMOE_FP8_ROW_SCALES", "0");
  kp.row_scales_early = kp.scale_block || early_off ? 0 : 1;
  kp.epilogue = static_cast<int32_t>(p.epilogue);
  kp.a_bf16 = p.a_dtype == DType::kBFloat16 ? 1 : 0;
  kp.out_dtype = p.out_dtype == DType::kFloat32 ? 0 : (p.out_dtype == DType::kBFloat16 ? 1 : 2);
  kp.out_vec8 = kp.out_dtype != 0 && reinterpret_cast<std::uintptr_t>(p.out) % 8 == 0 &&
                p.out_row_stride % 4 == 0;

  Sm90Fp8Variant const variant = sm90_fp8_resolve_variant(p.variant);
  bool const fp8_source = p.a_fp8 != nullptr && variant != Sm90Fp8Variant::kBase;
  kp.a_fp8 = p.a_fp8;
  kp.a_fp8_row_stride = p.a_fp8_row_stride;
  kp.a_mode = fp8_source ? 2 : (kp.a_bf16 ? 0 : 1);
  kp.token_hint = variant == Sm90Fp8Variant::kM128Hint ? 1 : 0;
  kp.w_cache_hint = static_cast<uint64_t>(variant == Sm90Fp8Variant::kM128Hint
                                              ? cute::TMA::CacheHintSm90::EVICT_FIRST
                                              : cute::TMA::CacheHintSm90::EVICT_NORMAL);
  kp.merge_pairs = (variant == Sm90Fp8Variant::kM128 || variant == Sm90Fp8Variant::kM128Hint ||
                    variant == Sm90Fp8Variant::kM128Convert)
                       ? 1
                       : 0;
  kp.promote_kb = p.promote_kb;
  if (fp8_source && p.a_fp8_dense) {
    // a_fp8 [dense rows, K] uint8, box {128 bytes of K, 64 rows}, 128B swizzle: one box is one
    // 64-row half of a stage in the layout the wgmma reads (rows and K past the tensor: zeros).
    cuuint64_t const adims[2] = {static_cast<cuuint64_t>(p.k),
                                 static_cast<cuuint64_t>(p.a_fp8_dense_rows)};
    cuuint64_t const astrides[1] = {static_cast<cuuint64_t>(p.a_fp8_row_stride)};
    cuuint32_t const abox[2] = {Cfg::kBlockK, sm90_fp8_detail::kDenseBoxBytes / Cfg::kBlockK};
    cuuint32_t const aelem[2] = {1, 1};
    CUresult const ca = cutlass::call_cuTensorMapEncodeTiled(
        &kp.tmap_a, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(p.a_fp8), adims, astrides,
        abox, aelem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (ca != CUDA_SUCCESS) {
      return Status(StatusCode::kCudaError, std::string(__FILE__) + ":" +
                                                std::to_string(__LINE__) +
                                                ": cuTensorMapEncodeTiled (dense A rows) failed "
                                                "with CUresult " +
                                                std::to_string(static_cast<int>(ca)));
    }
    kp.a_dense = 1;
  }
  kp.k_splits = p.k_splits;
  kp.kb_per_split = (kp.num_kb + p.k_splits - 1) / p.k_splits;
  kp.split_tile_slots = p.split_tile_slots;
  kp.split_partial = p.split_partial;
  kp.split_count = p.split_count;

  return Status::Ok();
}

// promote_kb = 2 takes stages in pairs that must not wrap around the ring: an even stage count.
static Status check_promote_ring(Sm90Fp8KernelParams const& kp, int stages) {
  if (kp.promote_kb == 2 && stages % 2 != 0) {
    return Status(StatusCode::kInternal, "sm90 fp8 gemm: promote_kb = 2 needs an even stage "
                                         "count, the shared-memory plan has " + str(stages));
  }
  return Status::Ok();
}

Status sm90_fp8_prequant_m128_params(Sm90Fp8GemmParams const& p, Sm90Fp8KernelParams* kp,
                                     int* smem_bytes) {
  FLASHMOE_RETURN_IF_ERROR(check_sm90_fp8_grouped_gemm(p));
  if (p.a_fp8 == nullptr) {
    return Status::Invalid("sm90 fp8 gemm: the m128 kernel body of the fused kernel reads "
                           "pre-quantized rows (a_fp8)");
  }
  Sm90Fp8GemmParams q = p;
  q.variant = Sm90Fp8Variant::kM128;
  FLASHMOE_RETURN_IF_ERROR(make_sm90_fp8_kernel_params(q, kp));
  auto const plan = sm90_fp8_detail::pipe_smem_plan<Pipe128>(true);
  FLASHMOE_RETURN_IF_ERROR(check_promote_ring(*kp, plan.stages));
  kp->num_stages = plan.stages;
  kp->staging_offset = plan.staging_offset;
  kp->control_offset = plan.control_offset;
  *smem_bytes = plan.bytes;
  return Status::Ok();
}

Status launch_sm90_fp8_grouped_gemm(Sm90Fp8GemmParams const& p, cudaStream_t stream) {
  FLASHMOE_RETURN_IF_ERROR(check_sm90_fp8_grouped_gemm(p));
  if (p.num_tile_slots == 0) return Status::Ok();

  int num_sms = 0;
  FLASHMOE_RETURN_IF_ERROR(sm90_device_sms("sm90 fp8 gemm", &num_sms));

  Sm90Fp8KernelParams kp;
  FLASHMOE_RETURN_IF_ERROR(make_sm90_fp8_kernel_params(p, &kp));
  Sm90Fp8Variant const variant = sm90_fp8_resolve_variant(p.variant);
  bool const fp8_source = p.a_fp8 != nullptr && variant != Sm90Fp8Variant::kBase;

  int64_t const work = static_cast<int64_t>(p.num_tile_slots) * kp.n_tiles * kp.k_splits;
  int64_t ctas = p.max_ctas > 0 ? std::min<int64_t>(p.max_ctas, num_sms) : num_sms;
  ctas = std::max<int64_t>(1, std::min(ctas, work));

  void const* kernel = nullptr;
  int smem_bytes = 0;
  unsigned threads = 0;
  switch (variant) {
    case Sm90Fp8Variant::kBase:
      kernel = reinterpret_cast<void const*>(&sm90_fp8_grouped_gemm_kernel<Cfg>);
      smem_bytes = Cfg::kSmemBytes;
      threads = Cfg::kThreads;
      break;
    case Sm90Fp8Variant::kM64: {
      auto const plan = sm90_fp8_detail::pipe_smem_plan<Pipe64>(fp8_source);
      kernel = reinterpret_cast<void const*>(&sm90_fp8_pipelined_kernel<Pipe64>);
      smem_bytes = plan.bytes;
      threads = Pipe64::kThreads;
      kp.num_stages = plan.stages;
      kp.staging_offset = plan.staging_offset;
      kp.control_offset = plan.control_offset;
      break;
    }
    case Sm90Fp8Variant::kM128Convert:
      if (!fp8_source && kp.num_kb >= 2) {  // K <= 128: see sm90_fp8_convert_kernel.cuh
        kernel = kp.a_bf16 ? reinterpret_cast<void const*>(&sm90_fp8_convert_kernel<true>)
                           : reinterpret_cast<void const*>(&sm90_fp8_convert_kernel<false>);
        smem_bytes = sm90_fp8_detail::conv_smem_bytes();
        threads = Sm90Fp8ConvTile::kThreads;
        break;
      }
      [[fallthrough]];  // pre-quantized rows or K <= 128: the m128 kernel (the same bits)
    default: {
      auto const plan = sm90_fp8_detail::pipe_smem_plan<Pipe128>(fp8_source);
      FLASHMOE_RETURN_IF_ERROR(check_promote_ring(kp, plan.stages));
      kernel = reinterpret_cast<void const*>(&sm90_fp8_pipelined_kernel<Pipe128>);
      smem_bytes = plan.bytes;
      threads = Pipe128::kThreads;
      kp.num_stages = plan.stages;
      kp.staging_offset = plan.staging_offset;
      kp.control_offset = plan.control_offset;
      break;
    }
  }
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
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  void* args[] = {&kp};
  FLASHMOE_CUDA_CHECK(cudaLaunchKernel(kernel, dim3(static_cast<unsigned>(ctas)), dim3(threads),
                                       args, static_cast<std::size_t>(smem_bytes), stream));
  FLASHMOE_LAUNCH_CHECK("sm90_fp8_grouped_gemm");
  return Status::Ok();
}

}  // namespace flashmoe::gemm
