// Prefill attention on tensor cores: a batch of query rows (a prompt, or a large tree that need not be
// batch-invariant) over the paged binary16 KV cache, the score and value products as 16×16×16 WMMA
// tiles (binary16 in, float32 accumulation) — where attention_prefill_f16 multiplies on CUDA cores.
// FlashAttention's tiling (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with
// IO-Awareness", 2022; "FlashAttention-2", 2023): a block takes 64 query rows of one head (16 per warp)
// and walks the keys in tiles of 32 staged in shared memory, so each key and value is read once per 64
// rows. Two passes over the keys instead of the online rescaling: the first finds each row's max and
// sum, the second adds exp(s - max)/sum · V into accumulators that never need rescaling — the
// accumulators stay in tensor-core fragments, whose element layout a kernel may not rely on.
// Rounding: the queries (times the scale) and the probabilities are rounded to binary16 for the
// products, the keys and values already are; scores, maxima, sums and outputs are float32. The batch
// path of the CUDA backend (cuBLAS products in F16) accepts that; exact verification never comes here.
// CPU reference: engine/Backends/Cpu/Kernels/KvCacheKernels.cs (AttentionF32: the same visibility rules);
// the test rounds as the kernel does. Launcher: managed/Kernels/Attention.cs.
#include "common.cuh"
#include <mma.h>

#define TC_WARPS 4
#define TC_ROWS 16                        // query rows per warp: one WMMA tile
#define TC_KEYS 32                        // keys per tile
#define TC_MAX_HEAD_DIM 128
#define TC_LD (TC_MAX_HEAD_DIM + 8)       // halves per staged K/V/Q row (a 16-byte pad against bank conflicts)
#define TC_SLD (TC_KEYS + 4)              // floats per score row
#define TC_PLD (TC_KEYS + 8)              // halves per probability row
#define TC_SCRATCH (TC_ROWS * TC_LD / 2)  // floats of a warp's scratch: its Q rows, then its scores and probabilities

using namespace nvcuda;

// Whether query row `row` (of n) sees key slot t: the prefix always; batch slot j = t - prefix when
// causal (j <= row) or the mask allows, none below the row's window start. Padding rows past n see nothing.
static __device__ __forceinline__ bool tc_visible(int row, int t, int n, int prefix, const unsigned long long * __restrict__ mask, int words,
                                                  const int * __restrict__ window_starts) {
    if (row >= n || t < window_start(window_starts, row)) {
        return false;
    }
    if (t < prefix) {
        return true;
    }
    const int j = t - prefix;
    if (j >= n) {
        return false;
    }
    return mask == nullptr ? j <= row : ((mask[(long long) row * words + (j >> 6)] >> (j & 63)) & 1ull) != 0;
}

// attention_prefill_tc_f16: arguments as attention_prefill_f16 (kernels/attention.cu), over a binary16
// cache; head_dim a multiple of 16, at most 128.
// Launch: grid = (heads, ceil(n / 64), 1); block = (128, 1, 1); 34 KiB of static shared memory.
extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_prefill_tc_f16(
        const float * __restrict__ q, const __half * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, float softcap, const int * __restrict__ window_starts, float * __restrict__ dst) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
    __shared__ __align__(32) __half s_k[TC_KEYS][TC_LD];
    __shared__ __align__(32) __half s_v[TC_KEYS][TC_LD];
    __shared__ __align__(32) float s_w[TC_WARPS][TC_SCRATCH];

    const int head = blockIdx.x, heads = gridDim.x;
    const int kv_head = head / (heads / kv_heads);
    const int lane = threadIdx.x % ENGINE_WARP_SIZE, warp = threadIdx.x / ENGINE_WARP_SIZE;
    const int row0 = blockIdx.y * TC_WARPS * TC_ROWS;
    const int wrow0 = row0 + warp * TC_ROWS;
    const int kd = head_dim / 16;
    float * scores = s_w[warp];                                 // [16][TC_SLD]
    __half * probs = (__half *) (s_w[warp] + TC_ROWS * TC_SLD); // [16][TC_PLD]

    // The warp's 16 query rows, times the scale, as binary16 fragments.
    __half * qs = (__half *) s_w[warp];
    for (int i = lane; i < TC_ROWS * head_dim; i += ENGINE_WARP_SIZE) {
        const int r = i / head_dim, d = i % head_dim;
        const int row = wrow0 + r;
        qs[r * TC_LD + d] = __float2half_rn(row < n ? q[((long long) row * heads + head) * head_dim + d] * scale : 0.0f);
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qf[TC_MAX_HEAD_DIM / 16];
#pragma unroll
    for (int k = 0; k < TC_MAX_HEAD_DIM / 16; k++) {
        if (k < kd) {
            wmma::load_matrix_sync(qf[k], qs + 16 * k, TC_LD);
        }
    }
    __syncwarp(); // the scratch becomes scores and probabilities

    // Keys the block's rows may see, and the warp's own rows.
    const int end = mask != nullptr ? prefix + n : prefix + min(n, row0 + TC_WARPS * TC_ROWS);
    const int warp_end = mask != nullptr ? prefix + n : prefix + min(n, wrow0 + TC_ROWS);
    const long long layer_stride = (long long) kv_heads * block_size * head_dim; // K to V of one layer
    const int chunks = head_dim / 8;                                           // 16-byte pieces of a key row
    int start = prefix + n; // the smallest window start of the block's rows (0 without a window)
    for (int rr = row0; rr < min(n, row0 + TC_WARPS * TC_ROWS); rr++) {
        start = min(start, window_start(window_starts, rr));
    }

    // Lane pair (2r, 2r + 1) owns row r of the warp's tile: columns 16·(lane % 2) .. + 15.
    const int r = lane / 2, c0 = 16 * (lane % 2);
    const int row = wrow0 + r;
    float m = -INFINITY, l = 0.0f;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[TC_MAX_HEAD_DIM / 16];
#pragma unroll
    for (int d = 0; d < TC_MAX_HEAD_DIM / 16; d++) {
        wmma::fill_fragment(of[d], 0.0f);
    }

    for (int pass = 0; pass < 2; pass++) {
        const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
        for (int t0 = start; t0 < end; t0 += TC_KEYS) {
            __syncthreads(); // the previous tile is used up
            for (int i = threadIdx.x; i < TC_KEYS * chunks; i += blockDim.x) {
                const int j = i / chunks, d = 8 * (i % chunks);
                const int t = t0 + j;
                uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0); // past the end: zeros, never NaN
                if (t < end) {
                    const __half * kp = cache + ((((long long) table[t / block_size] * layers + layer) * 2) * kv_heads + kv_head) * (long long) (block_size * head_dim)
                                        + (long long) (t % block_size) * head_dim + d;
                    kv = *(const uint4 *) kp;
                    if (pass == 1) {
                        vv = *(const uint4 *) (kp + layer_stride);
                    }
                }
                *(uint4 *) &s_k[j][d] = kv;
                *(uint4 *) &s_v[j][d] = vv;
            }
            __syncthreads();
            if (t0 >= warp_end) {
                continue; // the same for the whole warp: no row of it sees this tile
            }
            // scores [16 rows][32 keys] = (q·scale) · kᵀ
#pragma unroll
            for (int nt = 0; nt < TC_KEYS / 16; nt++) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
                wmma::fill_fragment(sf, 0.0f);
#pragma unroll
                for (int k = 0; k < TC_MAX_HEAD_DIM / 16; k++) {
                    if (k < kd) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kf;
                        wmma::load_matrix_sync(kf, &s_k[16 * nt][16 * k], TC_LD);
                        wmma::mma_sync(sf, qf[k], kf, sf);
                    }
                }
                wmma::store_matrix_sync(scores + 16 * nt, sf, TC_SLD, wmma::mem_row_major);
            }
            __syncwarp();
            float s[16];
            float tile_max = -INFINITY;
#pragma unroll
            for (int c = 0; c < 16; c++) {
                s[c] = tc_visible(row, t0 + c0 + c, n, prefix, mask, words, window_starts) ? soft_cap(scores[r * TC_SLD + c0 + c], softcap) : -INFINITY;
                tile_max = fmaxf(tile_max, s[c]);
            }
            if (pass == 0) {
                // the row's running max and sum (the pair's halves combined)
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
                const float m_new = fmaxf(m, tile_max);
                float sum = 0.0f;
                if (m_new != -INFINITY) {
#pragma unroll
                    for (int c = 0; c < 16; c++) {
                        sum += expf(s[c] - m_new);
                    }
                }
                sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                if (m_new != -INFINITY) {
                    l = l * expf(m - m_new) + sum;
                    m = m_new;
                }
                __syncwarp(); // the scores are read before the next tile overwrites them
                continue;
            }
            // pass 1: the probabilities as binary16, then out += P · V
#pragma unroll
            for (int c = 0; c < 16; c++) {
                const float p = m == -INFINITY ? 0.0f : expf(s[c] - m) * inv_l;
                probs[r * TC_PLD + c0 + c] = __float2half_rn(p);
            }
            __syncwarp();
#pragma unroll
            for (int kt = 0; kt < TC_KEYS / 16; kt++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pf;
                wmma::load_matrix_sync(pf, probs + 16 * kt, TC_PLD);
#pragma unroll
                for (int d = 0; d < TC_MAX_HEAD_DIM / 16; d++) {
                    if (d < kd) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vf;
                        wmma::load_matrix_sync(vf, &s_v[16 * kt][16 * d], TC_LD);
                        wmma::mma_sync(of[d], pf, vf, of[d]);
                    }
                }
            }
            __syncwarp();
        }
    }

    // The warp's rows out, one 16×16 tile at a time through its scratch.
#pragma unroll
    for (int d = 0; d < TC_MAX_HEAD_DIM / 16; d++) {
        if (d < kd) {
            wmma::store_matrix_sync(scores, of[d], 16, wmma::mem_row_major);
            __syncwarp();
            for (int i = lane; i < 256; i += ENGINE_WARP_SIZE) {
                const int rr = wrow0 + i / 16;
                if (rr < n) {
                    dst[((long long) rr * heads + head) * head_dim + 16 * d + i % 16] = scores[i];
                }
            }
            __syncwarp();
        }
    }
#endif
}
