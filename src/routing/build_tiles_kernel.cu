// flashmoe: the GEMM's M tiles over the dense assignment list, in one block: offsets = the
// exclusive scan of the per-local-expert counts (the histogram), tiles per expert =
// ceil(count / BM), their exclusive scan, and for every tile slot of the grid the (expert,
// first row, rows) it covers -- expert -1 past the last tile. Runs without a host sync: the grid
// of the GEMM is sized on the host for the worst case and empty slots exit at once.
#include <cub/block/block_scan.cuh>

#include "fused/cuda_check.h"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kThreads = 512;

__global__ void __launch_bounds__(kThreads)
    moe_build_tiles_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  int const tid = threadIdx.x;
  int const num_local = rp.num_local_experts;
  int const bm = rp.tile_m;
  int32_t* const tile_starts = rb.local_offsets + (num_local + 1);  // [E_local + 1] after offsets

  int row_carry = 0;
  int tile_carry = 0;
  for (int base = 0; base < num_local; base += kThreads) {
    int const e = base + tid;
    int const count = e < num_local ? rb.local_counts[e] : 0;
    int const tiles = (count + bm - 1) / bm;
    int row_off = 0;
    int row_total = 0;
    int tile_off = 0;
    int tile_total = 0;
    Scan(tmp).ExclusiveSum(count, row_off, row_total);
    __syncthreads();
    Scan(tmp).ExclusiveSum(tiles, tile_off, tile_total);
    __syncthreads();
    if (e < num_local) {
      rb.local_offsets[e] = row_carry + row_off;
      tile_starts[e] = tile_carry + tile_off;
    }
    row_carry += row_total;
    tile_carry += tile_total;
  }
  if (tid == 0) {
    rb.local_offsets[num_local] = row_carry;
    tile_starts[num_local] = tile_carry;
  }
  __syncthreads();  // global writes of this block are visible to it after the barrier

  int const num_tiles = tile_carry;
  for (int m = tid; m < rp.num_tile_slots; m += kThreads) {
    gemm::TileInfo info{-1, 0, 0, 0};
    if (m < num_tiles) {
      // The last expert whose first tile is <= m (experts without tiles share their
      // successor's start, so the last of equal starts is the one that has tiles).
      int lo = 0;
      int hi = num_local;  // upper_bound over tile_starts[0, num_local)
      while (lo < hi) {
        int const mid = (lo + hi) / 2;
        if (tile_starts[mid] <= m) lo = mid + 1; else hi = mid;
      }
      int const e = lo - 1;
      int const first = (m - tile_starts[e]) * bm;
      info.expert = e;
      info.row0 = rb.local_offsets[e] + first;
      info.rows = min(bm, rb.local_counts[e] - first);
      info.index = m - tile_starts[e];
    }
    rb.tiles[m] = info;
  }
}

}  // namespace

Status launch_build_tiles(RoutingParams const& rp, RoutingBuffers const& rb,
                          cudaStream_t stream) {
  moe_build_tiles_kernel<<<1, kThreads, 0, stream>>>(rp, rb);
  FLASHMOE_LAUNCH_CHECK("moe_build_tiles_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
