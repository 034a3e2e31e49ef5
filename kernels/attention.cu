// Scaled dot-product attention over the paged KV cache (kvcache.cu's layout) with grouped-query heads,
// split along the keys as in flash-decoding (Dao et al., "Flash-Decoding for long-context inference",
// 2023): each block of attention_f32 runs an online softmax (Milakov & Gimelshein, "Online normalizer
// calculation for softmax", 2018) over one chunk of keys for one (query row, head) and writes its
// partial (max, sum, weighted values); attention_combine_f32 merges the chunks. One decoding token
// thus spreads over heads × splits blocks instead of heads. The same kernels serve a batch (prefill,
// a verified draft): row i sees the committed prefix and the batch tokens its mask allows.
// Batch invariance: a row's keys are numbered by rank among the keys it sees (the prefix, then the
// batch slots its mask allows, in slot order), and splits, warps and order all follow the rank. A
// draft token verified in a tree therefore gets the very arithmetic it gets when decoded alone after
// its accepted ancestors, whatever else is in the batch and wherever its ancestors sit.
// attention_prefill_f32 is the tiled form for batches (prefill, large trees), in the manner of
// FlashAttention (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with
// IO-Awareness", 2022) on CUDA cores: a block takes 16 query rows of one head and walks the keys in
// tiles of 32 staged in shared memory, so each key and value is read from memory once per 16 rows.
// Each kernel comes for a float32 cache (…_f32) and a binary16 one (…_f16); scores and sums are float32.
// CPU references: engine/Backends/Cpu/Kernels/KvCacheKernels.cs (AttentionF32, AttentionPrefillF32);
// the CPU backend's own attention is engine/Backends/Cpu/Kernels/Attention.cs (Attention.Head).
// Launcher:      managed/Kernels/Attention.cs.
#include "common.cuh"

#define ATTN_WARPS 4

#define ATTN_MAX_HEAD_DIM 256
#define ATTN_DIMS_PER_LANE (ATTN_MAX_HEAD_DIM / ENGINE_WARP_SIZE)

// attention_f32
//   q:        [n, heads·head_dim] float32, already rotated
//   cache:    the KV blocks; table: block ids of the sequence (slot s in block table[s / block_size])
//   prefix:   committed tokens (slots 0..prefix-1), all visible; batch token j is slot prefix + j
//   mask:     null for causal (row i sees batch tokens j <= i), else [n][words] bits: row i sees j
//             when bit j of mask[i·words + j/64] is set
//   softcap:  0, or Gemma 2's soft-capping: scores become softcap · tanh(score / softcap)
//   window_starts: null, or [n] ints: row i sees no slot below window_starts[i] (sliding-window
//             attention; a mask must already exclude the batch slots outside the window)
//   chunk:    keys per split; split s covers the keys of rank s·chunk .. (s+1)·chunk - 1 among those the
//             row sees (splits past a row's last key find nothing and report an empty partial)
//   part_acc: [n, heads, splits, head_dim] float32 partial Σ p·v     part_ml: [n, heads, splits, 2] (max, Σ p)
// head_dim <= 256. Scores are (q·k)·scale in float32 with exp through expf.
// Launch: grid = (heads, n, splits); block = (128, 1, 1); no dynamic shared memory.
template <typename T>
static __device__ void attention_split(
        const float * __restrict__ q, const T * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, float softcap, const int * __restrict__ window_starts, int chunk, float * __restrict__ part_acc, float * __restrict__ part_ml) {
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][ATTN_MAX_HEAD_DIM];

    const int head = blockIdx.x, row = blockIdx.y, split = blockIdx.z;
    const int heads = gridDim.x, splits = gridDim.z;
    const int kv_head = head / (heads / kv_heads);
    const int lane = threadIdx.x % ENGINE_WARP_SIZE, warp = threadIdx.x / ENGINE_WARP_SIZE;
    const float * qr = q + ((long long) row * heads + head) * head_dim;

    float qd[ATTN_DIMS_PER_LANE], acc[ATTN_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
        const int d = lane + i * ENGINE_WARP_SIZE;
        qd[i] = d < head_dim ? qr[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;

    // The keys this row sees, by rank: the prefix from its window's start, then its visible batch slots.
    const unsigned long long * row_mask = mask == nullptr ? nullptr : mask + (long long) row * words;
    const int lo = window_start(window_starts, row);
    const int visible = visible_keys(prefix, row, lo, row_mask, words);
    const int begin = split * chunk;
    const int end = min(begin + chunk, visible);
    const long long layer_stride = (long long) kv_heads * block_size * head_dim; // K to V of one layer
    for (int r = begin + warp; r < end; r += ATTN_WARPS) {
        const int t = rank_slot(r, prefix, lo, row_mask, words);
        const int block = table[t / block_size], slot = t % block_size;
        const T * kp = cache + ((((long long) block * layers + layer) * 2) * kv_heads + kv_head) * (long long) (block_size * head_dim)
                       + (long long) slot * head_dim;
        const T * vp = kp + layer_stride;
        float partial = 0.0f;
#pragma unroll
        for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
            const int d = lane + i * ENGINE_WARP_SIZE;
            if (d < head_dim) {
                partial = fmaf(qd[i], kv_load(kp + d), partial);
            }
        }
        const float s = soft_cap(warp_reduce_sum(partial) * scale, softcap);
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new); // m = -inf the first time: exp(-inf) = 0
        const float p = expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
            const int d = lane + i * ENGINE_WARP_SIZE;
            acc[i] = acc[i] * correction + (d < head_dim ? p * kv_load(vp + d) : 0.0f);
        }
        m = m_new;
    }

    // Merge the warps of this block.
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
        const int d = lane + i * ENGINE_WARP_SIZE;
        if (d < head_dim) {
            s_acc[warp][d] = acc[i];
        }
    }
    __syncthreads();
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) {
        mb = fmaxf(mb, s_m[w]);
    }
    const long long part = ((long long) row * heads + head) * splits + split;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        if (mb != -INFINITY) {
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++) {
                if (s_m[w] != -INFINITY) {
                    a += expf(s_m[w] - mb) * s_acc[w][d];
                }
            }
        }
        part_acc[part * head_dim + d] = a;
    }
    if (threadIdx.x == 0) {
        float lb = 0.0f;
        if (mb != -INFINITY) {
            for (int w = 0; w < ATTN_WARPS; w++) {
                if (s_m[w] != -INFINITY) {
                    lb += expf(s_m[w] - mb) * s_l[w];
                }
            }
        }
        part_ml[part * 2] = mb;
        part_ml[part * 2 + 1] = lb;
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_f32(
        const float * __restrict__ q, const float * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, float softcap, const int * __restrict__ window_starts, int chunk, float * __restrict__ part_acc, float * __restrict__ part_ml) {
    attention_split(q, cache, table, layer, layers, kv_heads, head_dim, block_size, prefix, n, mask, words, scale, softcap, window_starts, chunk, part_acc, part_ml);
}

// attention_f16: attention_f32 over a binary16 cache.
extern "C" __global__ void __launch_bounds__(128) attention_f16(
        const float * __restrict__ q, const __half * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, float softcap, const int * __restrict__ window_starts, int chunk, float * __restrict__ part_acc, float * __restrict__ part_ml) {
    attention_split(q, cache, table, layer, layers, kv_heads, head_dim, block_size, prefix, n, mask, words, scale, softcap, window_starts, chunk, part_acc, part_ml);
}

// attention_combine_f32: dst[row, head·head_dim + d] = Σ_s e^(m_s - M)·acc_s[d] / Σ_s e^(m_s - M)·l_s
// over the splits s of (row, head), M = max_s m_s. Every row sees at least itself, so M is finite.
// Launch: grid = (heads, n, 1); block = (T, 1, 1), T a multiple of 32 (threads loop over head_dim).
extern "C" __global__ void attention_combine_f32(const float * __restrict__ part_acc, const float * __restrict__ part_ml,
                                                 float * __restrict__ dst, int head_dim, int splits) {
    const int head = blockIdx.x, row = blockIdx.y, heads = gridDim.x;
    const long long first = ((long long) row * heads + head) * splits;
    combine_head(part_acc, part_ml, dst + ((long long) row * heads + head) * head_dim, first, head_dim, splits, threadIdx.x, blockDim.x,
                 [](const float * p) { return *p; });
}

#define PREFILL_ROWS 16          // query rows per block, 4 per warp
#define PREFILL_ROWS_PER_WARP 4
#define PREFILL_KEYS 32          // keys per tile, one per lane when scoring
#define PREFILL_MAX_HEAD_DIM 128
#define PREFILL_DIMS_PER_LANE (PREFILL_MAX_HEAD_DIM / ENGINE_WARP_SIZE)

// attention_prefill_f32: arguments as attention_f32 (same cache layout, mask and visibility rules),
// writing dst [n, heads·head_dim] directly. head_dim <= 128.
// Per tile, lane j scores key j for each of its warp's rows (q from shared memory, K rows padded by
// one float so the 32 lanes hit 32 banks); the warp then updates its running max, sum and values as
// in the online softmax, the tile's probabilities broadcast lane to lane.
// Launch: grid = (heads, ceil(n / 16), 1); block = (128, 1, 1); 40.5 KiB of static shared memory.
template <typename T>
static __device__ void attention_prefill(
        const float * __restrict__ q, const T * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, float softcap, const int * __restrict__ window_starts, float * __restrict__ dst) {
    __shared__ float s_q[PREFILL_ROWS][PREFILL_MAX_HEAD_DIM];
    __shared__ float s_k[PREFILL_KEYS][PREFILL_MAX_HEAD_DIM + 1];
    __shared__ float s_v[PREFILL_KEYS][PREFILL_MAX_HEAD_DIM];

    const int head = blockIdx.x, heads = gridDim.x;
    const int row0 = blockIdx.y * PREFILL_ROWS;
    const int rows_here = min(PREFILL_ROWS, n - row0);
    const int kv_head = head / (heads / kv_heads);
    const int lane = threadIdx.x % ENGINE_WARP_SIZE, warp = threadIdx.x / ENGINE_WARP_SIZE;

    for (int i = threadIdx.x; i < PREFILL_ROWS * head_dim; i += blockDim.x) {
        const int r = i / head_dim, d = i % head_dim;
        s_q[r][d] = r < rows_here ? q[((long long) (row0 + r) * heads + head) * head_dim + d] : 0.0f;
    }

    float m[PREFILL_ROWS_PER_WARP], l[PREFILL_ROWS_PER_WARP], acc[PREFILL_ROWS_PER_WARP][PREFILL_DIMS_PER_LANE];
#pragma unroll
    for (int rr = 0; rr < PREFILL_ROWS_PER_WARP; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int i = 0; i < PREFILL_DIMS_PER_LANE; i++) {
            acc[rr][i] = 0.0f;
        }
    }

    // The block's rows see keys below `end` (the causal window of its last row, or the whole batch) and
    // none below its first row's window start (starts never decrease along a causal batch; under a mask
    // the smallest start of the block's rows).
    const int end = mask == nullptr ? prefix + row0 + rows_here : prefix + n;
    int start = window_start(window_starts, row0);
    if (mask != nullptr) {
        for (int r = 1; r < rows_here; r++) {
            start = min(start, window_start(window_starts, row0 + r));
        }
    }
    const long long layer_stride = (long long) kv_heads * block_size * head_dim;
    for (int t0 = start; t0 < end; t0 += PREFILL_KEYS) {
        __syncthreads(); // the previous tile is used up (and, the first time, q is in place)
        for (int i = threadIdx.x; i < PREFILL_KEYS * head_dim; i += blockDim.x) {
            const int j = i / head_dim, d = i % head_dim;
            const int t = t0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (t < end) {
                const int block = table[t / block_size], slot = t % block_size;
                const T * kp = cache + ((((long long) block * layers + layer) * 2) * kv_heads + kv_head) * (long long) (block_size * head_dim)
                               + (long long) slot * head_dim;
                kv = kv_load(kp + d);
                vv = kv_load(kp + layer_stride + d);
            }
            s_k[j][d] = kv;
            s_v[j][d] = vv;
        }
        __syncthreads();

        const int t = t0 + lane;
#pragma unroll
        for (int rr = 0; rr < PREFILL_ROWS_PER_WARP; rr++) {
            const int r = warp * PREFILL_ROWS_PER_WARP + rr;
            const int row = row0 + r;
            if (r >= rows_here) {
                break; // the same for the whole warp
            }
            bool visible = t < end && t >= window_start(window_starts, row);
            if (visible && t >= prefix) {
                const int j = t - prefix;
                visible = mask == nullptr ? j <= row : ((mask[(long long) row * words + (j >> 6)] >> (j & 63)) & 1ull) != 0;
            }
            float s = -INFINITY;
            if (visible) {
                float dot = 0.0f;
                for (int d = 0; d < head_dim; d++) {
                    dot = fmaf(s_q[r][d], s_k[lane][d], dot);
                }
                s = soft_cap(dot * scale, softcap);
            }
            const float tile_max = warp_reduce_max(s);
            if (tile_max == -INFINITY) {
                continue; // nothing visible in this tile for this row (the same for the whole warp)
            }
            const float m_new = fmaxf(m[rr], tile_max);
            const float correction = expf(m[rr] - m_new); // m = -inf before the first visible key: 0
            const float p = expf(s - m_new);               // an invisible key: exp(-inf) = 0
            l[rr] = l[rr] * correction + warp_reduce_sum(p);
#pragma unroll
            for (int i = 0; i < PREFILL_DIMS_PER_LANE; i++) {
                acc[rr][i] *= correction;
            }
            for (int j = 0; j < PREFILL_KEYS; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int i = 0; i < PREFILL_DIMS_PER_LANE; i++) {
                    const int d = lane + i * ENGINE_WARP_SIZE;
                    if (d < head_dim) {
                        acc[rr][i] = fmaf(pj, s_v[j][d], acc[rr][i]);
                    }
                }
            }
            m[rr] = m_new;
        }
    }

#pragma unroll
    for (int rr = 0; rr < PREFILL_ROWS_PER_WARP; rr++) {
        const int r = warp * PREFILL_ROWS_PER_WARP + rr;
        if (r < rows_here) {
            const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
            float * out = dst + ((long long) (row0 + r) * heads + head) * head_dim;
#pragma unroll
            for (int i = 0; i < PREFILL_DIMS_PER_LANE; i++) {
                const int d = lane + i * ENGINE_WARP_SIZE;
                if (d < head_dim) {
                    out[d] = acc[rr][i] * inv;
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_prefill_f32(
        const float * __restrict__ q, const float * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, float softcap, const int * __restrict__ window_starts, float * __restrict__ dst) {
    attention_prefill(q, cache, table, layer, layers, kv_heads, head_dim, block_size, prefix, n, mask, words, scale, softcap, window_starts, dst);
}

// attention_prefill_f16: attention_prefill_f32 over a binary16 cache.
extern "C" __global__ void __launch_bounds__(128) attention_prefill_f16(
        const float * __restrict__ q, const __half * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, float softcap, const int * __restrict__ window_starts, float * __restrict__ dst) {
    attention_prefill(q, cache, table, layer, layers, kv_heads, head_dim, block_size, prefix, n, mask, words, scale, softcap, window_starts, dst);
}
