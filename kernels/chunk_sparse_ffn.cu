// BlockFFN's chunk-sparse feed-forward (Song et al., "BlockFFN: Towards End-Side Acceleration-Friendly
// Mixture-of-Experts with Chunk-Level Activation Sparsity", 2025): for a chunk of n tokens (one decoding
// token, a verified draft, a prefill tile), only the blocks in the union of the blocks its tokens
// activate are read, once for the whole chunk:
//   chunk_sparse_up_<type>:   h[i, c, :] = silu(up_e · x[c]) · score[c, e]     e = active[i]
//   chunk_sparse_down_<type>: y[c, r]    = Σ_i down_e[r, :] · h[i, c, :]       i ascending
// The blocks' up matrices are stacked [blocks·size, cols] (block e: rows e·size..), the down matrices
// [blocks·dim, size] (block e: rows e·dim..): each active block is a contiguous run of rows. Every weight
// row's dot product is dot_row (dot_row.cuh), so a row of x gets the same bits whatever else is in the chunk,
// and a block in the union that a token leaves off adds an exact zero to that token's sum.
// CPU reference: engine/Backends/Cpu/Kernels/ChunkSparseFfn.cs (same order of blocks; the CPU's products
// differ in rounding, so the two agree to float32 tolerance).
// Launcher:      managed/Kernels/ChunkSparseFfn.cs.
#include "common.cuh"
#include "quant.cuh"
#include "dot_row.cuh"

#define SPARSE_WARPS 4
#define SPARSE_THREADS (SPARSE_WARPS * ENGINE_WARP_SIZE)
#define SPARSE_COLS 8

// Up: warp k of block b takes row j = 4b + k of the active blocks' rows (active block i = j / size, its
// row j % size) and every token of the chunk, eight at a time.
//   up: [blocks·size, cols]   x: [n, cols]   scores: [n, blocks]   active: [n_active]   h: [n_active, n, size]
// Launch: grid = (ceil(n_active·size / 4), 1, 1); block = (128, 1, 1).
template <typename T>
static __device__ void chunk_sparse_up(const uint8_t * __restrict__ up, long long row_bytes, const float * __restrict__ x, int cols, int n,
                                       const float * __restrict__ scores, int blocks, const int * __restrict__ active, int n_active, int size,
                                       float * __restrict__ h) {
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    const int j = blockIdx.x * SPARSE_WARPS + threadIdx.x / ENGINE_WARP_SIZE;
    if (j >= n_active * size) {
        return;
    }
    const int i = j / size, row = j % size, e = active[i];
    const uint8_t * wr = up + ((long long) e * size + row) * row_bytes;
    for (int c0 = 0; c0 < n; c0 += SPARSE_COLS) {
        const int ncols = min(SPARSE_COLS, n - c0);
        float sum[SPARSE_COLS];
        dot_row<T, SPARSE_COLS>(wr, x + (long long) c0 * cols, cols, ncols, sum);
        if (lane == 0) {
#pragma unroll
            for (int c = 0; c < SPARSE_COLS; c++) {
                if (c < ncols) {
                    const float s = scores[(long long) (c0 + c) * blocks + e];
                    const float u = sum[c];
                    h[((long long) i * n + c0 + c) * size + row] = s == 0.0f ? 0.0f : u / (1.0f + expf(-u)) * s;
                }
            }
        }
    }
}

// Down: warp k of block b takes output row r = 4b + k: for each token, the active blocks' products in
// ascending order, added up as they come.
//   down: [blocks·dim, size]   h: [n_active, n, size]   y: [n, dim]
// Launch: grid = (ceil(dim / 4), 1, 1); block = (128, 1, 1).
template <typename T>
static __device__ void chunk_sparse_down(const uint8_t * __restrict__ down, long long row_bytes, const float * __restrict__ h, int size, int n,
                                         const int * __restrict__ active, int n_active, int dim, float * __restrict__ y) {
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    const int r = blockIdx.x * SPARSE_WARPS + threadIdx.x / ENGINE_WARP_SIZE;
    if (r >= dim) {
        return;
    }
    for (int c0 = 0; c0 < n; c0 += SPARSE_COLS) {
        const int ncols = min(SPARSE_COLS, n - c0);
        float acc[SPARSE_COLS];
#pragma unroll
        for (int c = 0; c < SPARSE_COLS; c++) {
            acc[c] = 0.0f;
        }
        for (int i = 0; i < n_active; i++) {
            const uint8_t * wr = down + ((long long) active[i] * dim + r) * row_bytes;
            float sum[SPARSE_COLS];
            dot_row<T, SPARSE_COLS>(wr, h + ((long long) i * n + c0) * size, size, ncols, sum);
#pragma unroll
            for (int c = 0; c < SPARSE_COLS; c++) {
                acc[c] = __fadd_rn(acc[c], sum[c]);
            }
        }
        if (lane == 0) {
#pragma unroll
            for (int c = 0; c < SPARSE_COLS; c++) {
                if (c < ncols) {
                    y[(long long) (c0 + c) * dim + r] = acc[c];
                }
            }
        }
    }
}

#define CHUNK_SPARSE(name, type)                                                                                         \
    extern "C" __global__ void __launch_bounds__(SPARSE_THREADS) chunk_sparse_up_##name(                                 \
            const uint8_t * up, long long row_bytes, const float * x, int cols, int n, const float * scores, int blocks,  \
            const int * active, int n_active, int size, float * h) {                                                     \
        chunk_sparse_up<type>(up, row_bytes, x, cols, n, scores, blocks, active, n_active, size, h);                     \
    }                                                                                                                    \
    extern "C" __global__ void __launch_bounds__(SPARSE_THREADS) chunk_sparse_down_##name(                               \
            const uint8_t * down, long long row_bytes, const float * h, int size, int n, const int * active, int n_active, \
            int dim, float * y) {                                                                                        \
        chunk_sparse_down<type>(down, row_bytes, h, size, n, active, n_active, dim, y);                                  \
    }
ENGINE_FOR_EACH_WEIGHT_TYPE(CHUNK_SPARSE)
