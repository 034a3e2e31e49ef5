// Scaled dot-product attention over the paged KV cache (kvcache.cu's layout) with grouped-query heads,
// split along the keys as in flash-decoding (Dao et al., "Flash-Decoding for long-context inference",
// 2023): each block of attention_f32 runs an online softmax (Milakov & Gimelshein, "Online normalizer
// calculation for softmax", 2018) over one chunk of keys for one (query row, head) and writes its
// partial (max, sum, weighted values); attention_combine_f32 merges the chunks. One decoding token
// thus spreads over heads × splits blocks instead of heads. The same kernels serve a batch (prefill,
// a verified draft): row i sees the committed prefix and the batch tokens its mask allows.
// CPU reference: engine/Backends/Cpu/Kernels/Attention.cs (Attention.Head).
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
//   chunk:    keys per split; split s covers keys [s·chunk, (s+1)·chunk) of [0, prefix + n)
//   part_acc: [n, heads, splits, head_dim] float32 partial Σ p·v     part_ml: [n, heads, splits, 2] (max, Σ p)
// head_dim <= 256. Scores are (q·k)·scale in float32 with exp through expf.
// Launch: grid = (heads, n, splits); block = (128, 1, 1); no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(128) attention_f32(
        const float * __restrict__ q, const float * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask, int words,
        float scale, int chunk, float * __restrict__ part_acc, float * __restrict__ part_ml) {
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

    const int begin = split * chunk;
    const int end = min(begin + chunk, mask == nullptr ? prefix + row + 1 : prefix + n);
    const long long layer_stride = (long long) kv_heads * block_size * head_dim; // K to V of one layer
    for (int t = begin + warp; t < end; t += ATTN_WARPS) {
        if (t >= prefix && mask != nullptr) {
            const int j = t - prefix;
            if (((mask[(long long) row * words + (j >> 6)] >> (j & 63)) & 1ull) == 0) {
                continue; // same decision in every lane of the warp
            }
        }
        const int block = table[t / block_size], slot = t % block_size;
        const float * kp = cache + ((((long long) block * layers + layer) * 2) * kv_heads + kv_head) * (long long) (block_size * head_dim)
                           + (long long) slot * head_dim;
        const float * vp = kp + layer_stride;
        float partial = 0.0f;
#pragma unroll
        for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
            const int d = lane + i * ENGINE_WARP_SIZE;
            if (d < head_dim) {
                partial = fmaf(qd[i], kp[d], partial);
            }
        }
        const float s = warp_reduce_sum(partial) * scale;
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new); // m = -inf the first time: exp(-inf) = 0
        const float p = expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
            const int d = lane + i * ENGINE_WARP_SIZE;
            acc[i] = acc[i] * correction + (d < head_dim ? p * vp[d] : 0.0f);
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

// attention_combine_f32: dst[row, head·head_dim + d] = Σ_s e^(m_s - M)·acc_s[d] / Σ_s e^(m_s - M)·l_s
// over the splits s of (row, head), M = max_s m_s. Every row sees at least itself, so M is finite.
// Launch: grid = (heads, n, 1); block = (T, 1, 1), T a multiple of 32 (threads loop over head_dim).
extern "C" __global__ void attention_combine_f32(const float * __restrict__ part_acc, const float * __restrict__ part_ml,
                                                 float * __restrict__ dst, int head_dim, int splits) {
    const int head = blockIdx.x, row = blockIdx.y, heads = gridDim.x;
    const long long first = ((long long) row * heads + head) * splits;
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) {
        mx = fmaxf(mx, part_ml[(first + s) * 2]);
    }
    float den = 0.0f;
    for (int s = 0; s < splits; s++) {
        const float ms = part_ml[(first + s) * 2];
        if (ms != -INFINITY) {
            den += expf(ms - mx) * part_ml[(first + s) * 2 + 1];
        }
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float num = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float ms = part_ml[(first + s) * 2];
            if (ms != -INFINITY) {
                num += expf(ms - mx) * part_acc[(first + s) * head_dim + d];
            }
        }
        dst[((long long) row * heads + head) * head_dim + d] = num * inv;
    }
}
