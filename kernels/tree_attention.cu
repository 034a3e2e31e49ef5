// Tree attention: a draft tree's nodes (or a decoding token, the one-node case) as queries over the
// paged KV cache (kvcache.cu's layout) — the committed prefix plus the tree's own nodes under an
// ancestor mask — in one launch for the whole tree, grouped-query heads sharing each key load.
// The tree verification of SpecInfer (Miao et al., "SpecInfer: Accelerating Generative LLM Serving
// with Tree-based Speculative Inference and Verification", 2023) with the split-K loop of flash-decoding
// (Dao et al., "Flash-Decoding for long-context inference", 2023) and FlashAttention's key tiles
// (Dao et al., 2022) staged in shared memory.
//
// Batch invariance, the property exact speculative decoding rests on: a query's arithmetic depends
// only on the keys it sees, numbered by rank (the prefix, then its visible tree slots in slot order).
// Ranks are split in fixed chunks (part s = ranks s·chunk ..), each chunk walked in tiles of 32 ranks
// from its start, and per tile the same operations run in the same order whatever else shares the
// launch: lane j scores rank t0 + j with a sequential fused multiply-add over head_dim, the warp takes
// the tile's max and sum by butterfly, the running (max, sum) and the values (lane = dimension) are
// updated with explicit fused multiply-adds. Tiles of prefix keys are staged in shared memory once for
// every query of the block (all heads of a KV group, several nodes); tiles that reach into the tree read
// each query's own keys from global memory — the operations are the same, only the source differs.
// The decode step runs this same kernel with one query, so a node on the accepted path gets bit for
// bit what plain decoding gives that token. attention_combine_f32 (attention.cu) merges the chunks, or
// the launch's last block per KV head does (the same arithmetic, combine_head in common.cuh).
// CPU reference: engine/Backends/Cpu/Kernels/TreeAttention.cs (TreeAttention.TreeAttentionF32).
// Launcher:      managed/Kernels/TreeAttention.cs.
#include "common.cuh"

#define TREE_WARPS 4
#define TREE_MAX_ITEMS_PER_WARP 4 // (query, head) pairs a warp carries through the tiles
#define TREE_KEYS 32              // keys per tile: one per lane when scoring
#define TREE_MAX_HEAD_DIM 128
#define TREE_DIMS_PER_LANE (TREE_MAX_HEAD_DIM / ENGINE_WARP_SIZE)

// tree_attention_f32 (float32 cache) / tree_attention_f16 (binary16 cache)
//   q:        [n, heads·head_dim] float32, already rotated; cache, table, layer, layers: as attention_f32
//   prefix:   committed slots 0..prefix-1, seen by every query; query i's own slot is prefix + i
//   mask:     null for a chain (query i sees batch slots j <= i), else [n][words] bits: query i sees
//             batch slot j when bit j of mask[i·words + j/64] is set (AttentionMask.FromParents)
//   softcap, window_starts: as attention_f32 (soft-capped scores; each query's keys start at its window)
//   chunk:    ranks per split (a multiple of 32; KvCacheKernels.KeysPerSplit)
//   items_per_warp: 1..4 (query, head) pairs per warp; items are enumerated query-major, so a block's
//             items are all heads of one KV group for consecutive queries
//   part_acc: [n, heads, splits, head_dim] unnormalized Σ p·v per split; part_ml: [n, heads, splits, 2]
//             (max, Σ p); a split past a query's last key reports (-inf, 0) and zeros
//   dst:      null (attention_combine_f32 merges the splits after the launch), or [n, heads·head_dim]:
//             then the last split to finish for a (kv head, z) block merges that block's items into dst
//             (combine_head, the combine kernel's arithmetic) — one launch fewer per layer
//   counters: with dst, [kv_heads · gridDim.z] zeros: splits finished per (kv head, z); left zero
// head_dim <= 128.
// Launch: grid = (kv_heads, splits, ceil(n·heads/kv_heads / (4·items_per_warp))); block = (128, 1, 1);
// 40.5 KiB of static shared memory.
template <typename T>
static __device__ void tree_attention(
        const float * __restrict__ q, const T * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int heads, int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask,
        int words, float scale, float softcap, const int * __restrict__ window_starts, int chunk, int items_per_warp, float * __restrict__ part_acc, float * __restrict__ part_ml,
        float * __restrict__ dst, unsigned * __restrict__ counters) {
    __shared__ float s_q[TREE_WARPS * TREE_MAX_ITEMS_PER_WARP][TREE_MAX_HEAD_DIM];
    __shared__ float s_k[TREE_KEYS][TREE_MAX_HEAD_DIM + 1]; // padded: lane j reads row j, 32 banks
    __shared__ float s_v[TREE_KEYS][TREE_MAX_HEAD_DIM];

    const int kv_head = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    const int group = heads / kv_heads;
    const int lane = threadIdx.x % ENGINE_WARP_SIZE, warp = threadIdx.x / ENGINE_WARP_SIZE;
    const int items = n * group;
    const int block_first = blockIdx.z * TREE_WARPS * items_per_warp;
    const long long layer_stride = (long long) kv_heads * block_size * head_dim; // K to V of one layer
    const long long head_base = (((long long) layer * 2) * kv_heads + kv_head) * (long long) (block_size * head_dim);
    const long long block_stride = (long long) layers * 2 * layer_stride;

    // The block's queries into shared memory (slot w·items_per_warp + rr for warp w's item rr).
    for (int i = threadIdx.x; i < TREE_WARPS * items_per_warp * head_dim; i += blockDim.x) {
        const int slot = i / head_dim, d = i % head_dim;
        const int item = block_first + slot;
        float v = 0.0f;
        if (item < items) {
            const int query = item / group, head = kv_head * group + item % group;
            v = q[((long long) query * heads + head) * head_dim + d];
        }
        s_q[slot][d] = v;
    }

    // Each item: its query, head, the end of its ranks in this split, running (max, sum) and values.
    int query[TREE_MAX_ITEMS_PER_WARP], head[TREE_MAX_ITEMS_PER_WARP], limit[TREE_MAX_ITEMS_PER_WARP], lo[TREE_MAX_ITEMS_PER_WARP];
    float m[TREE_MAX_ITEMS_PER_WARP], l[TREE_MAX_ITEMS_PER_WARP], acc[TREE_MAX_ITEMS_PER_WARP][TREE_DIMS_PER_LANE];
    const int begin = split * chunk;
#pragma unroll
    for (int rr = 0; rr < TREE_MAX_ITEMS_PER_WARP; rr++) {
        const int item = block_first + warp * items_per_warp + rr;
        const bool live = rr < items_per_warp && item < items;
        query[rr] = live ? item / group : -1;
        head[rr] = live ? kv_head * group + item % group : 0;
        lo[rr] = live ? window_start(window_starts, query[rr]) : 0;
        const int visible = live ? visible_keys(prefix, query[rr], lo[rr], mask == nullptr ? nullptr : mask + (long long) query[rr] * words, words) : 0;
        limit[rr] = live ? min(begin + chunk, visible) : begin;
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int i = 0; i < TREE_DIMS_PER_LANE; i++) {
            acc[rr][i] = 0.0f;
        }
    }

    // Prefix tiles are staged for the whole block when its queries share one window start (always without
    // a window, and for a decoding token): rank t is then slot lo0 + t for every query.
    const int first_query = min(block_first / group, n - 1);
    const int last_query = (min(items, block_first + TREE_WARPS * items_per_warp) - 1) / group;
    const int lo0 = window_start(window_starts, first_query);
    bool shared_start = true;
    for (int qi = first_query + 1; qi <= last_query; qi++) {
        shared_start = shared_start && window_start(window_starts, qi) == lo0;
    }
    const int end = min(begin + chunk, prefix + n); // no query of the launch sees a rank past this
    for (int t0 = begin; t0 < end; t0 += TREE_KEYS) {
        const bool staged = shared_start && lo0 + t0 + TREE_KEYS <= prefix; // the whole tile is prefix: the same keys for every query
        if (staged) {
            __syncthreads(); // the previous staged tile is used up (and, the first time, s_q is written)
            for (int i = threadIdx.x; i < TREE_KEYS * head_dim; i += blockDim.x) {
                const int j = i / head_dim, d = i % head_dim;
                const int t = lo0 + t0 + j;
                const T * kp = cache + table[t / block_size] * block_stride + head_base + (long long) (t % block_size) * head_dim;
                s_k[j][d] = kv_load(kp + d);
                s_v[j][d] = kv_load(kp + layer_stride + d);
            }
            __syncthreads();
        } else {
            __syncthreads(); // s_q is written before the first tile reads it
        }
#pragma unroll
        for (int rr = 0; rr < TREE_MAX_ITEMS_PER_WARP; rr++) {
            if (t0 >= limit[rr]) {
                continue; // the same for the whole warp: nothing of this item here
            }
            const float * qs = s_q[warp * items_per_warp + rr];
            const int t = t0 + lane;
            const bool valid = t < limit[rr];
            // Lane j's key: shared memory, or the query's own slot for rank t in global memory.
            int slot = 0;
            float s = -INFINITY;
            if (staged) {
                const float * kp = s_k[lane];
                float dot = 0.0f;
                for (int d = 0; d < head_dim; d++) {
                    dot = fmaf(qs[d], kp[d], dot);
                }
                s = soft_cap(dot * scale, softcap);
            } else if (valid) {
                slot = rank_slot(t, prefix, lo[rr], mask == nullptr ? nullptr : mask + (long long) query[rr] * words, words);
                const T * kp = cache + table[slot / block_size] * block_stride + head_base + (long long) (slot % block_size) * head_dim;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; d++) {
                    dot = fmaf(qs[d], kv_load(kp + d), dot); // the same operations as the staged path, on the same values
                }
                s = soft_cap(dot * scale, softcap);
            }
            const float tile_max = warp_reduce_max(s);
            const float m_new = fmaxf(m[rr], tile_max); // finite: lane 0's rank t0 < limit is valid
            const float correction = expf(m[rr] - m_new); // m = -inf before the first tile: 0
            const float p = expf(s - m_new);               // an invalid lane: exp(-inf) = 0
            l[rr] = fmaf(l[rr], correction, warp_reduce_sum(p));
#pragma unroll
            for (int i = 0; i < TREE_DIMS_PER_LANE; i++) {
                acc[rr][i] = acc[rr][i] * correction;
            }
            const int count = min(TREE_KEYS, limit[rr] - t0);
            for (int j = 0; j < count; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
                if (staged) {
                    const float * vp = s_v[j];
#pragma unroll
                    for (int i = 0; i < TREE_DIMS_PER_LANE; i++) {
                        const int d = lane + i * ENGINE_WARP_SIZE;
                        if (d < head_dim) {
                            acc[rr][i] = fmaf(pj, vp[d], acc[rr][i]);
                        }
                    }
                } else {
                    const int sj = __shfl_sync(0xffffffffu, slot, j);
                    const T * vp = cache + table[sj / block_size] * block_stride + head_base + layer_stride + (long long) (sj % block_size) * head_dim;
#pragma unroll
                    for (int i = 0; i < TREE_DIMS_PER_LANE; i++) {
                        const int d = lane + i * ENGINE_WARP_SIZE;
                        if (d < head_dim) {
                            acc[rr][i] = fmaf(pj, kv_load(vp + d), acc[rr][i]);
                        }
                    }
                }
            }
            m[rr] = m_new;
        }
    }

#pragma unroll
    for (int rr = 0; rr < TREE_MAX_ITEMS_PER_WARP; rr++) {
        if (query[rr] < 0) {
            continue;
        }
        const long long part = ((long long) query[rr] * heads + head[rr]) * splits + split;
#pragma unroll
        for (int i = 0; i < TREE_DIMS_PER_LANE; i++) {
            const int d = lane + i * ENGINE_WARP_SIZE;
            if (d < head_dim) {
                part_acc[part * head_dim + d] = acc[rr][i];
            }
        }
        if (lane == 0) {
            part_ml[part * 2] = m[rr];
            part_ml[part * 2 + 1] = l[rr];
        }
    }
    if (dst == nullptr) {
        return;
    }
    // The folded merge: the split that finishes last for this (kv head, z) merges the block's items.
    // Each writer's fence makes its partials visible device-wide before the block takes its ticket.
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    unsigned * counter = counters + (long long) kv_head * gridDim.z + blockIdx.z;
    if (threadIdx.x == 0) {
        s_last = atomicAdd(counter, 1u) == gridDim.y - 1;
    }
    __syncthreads();
    if (!s_last) {
        return;
    }
    for (int slot = 0; slot < TREE_WARPS * items_per_warp; slot++) {
        const int item = block_first + slot;
        if (item >= items) {
            break;
        }
        const int query = item / group, head = kv_head * group + item % group;
        const long long row_head = (long long) query * heads + head;
        combine_head(part_acc, part_ml, dst + row_head * head_dim, row_head * splits, head_dim, splits, threadIdx.x, blockDim.x,
                     [](const float * p) { return __ldcg(p); });
    }
    if (threadIdx.x == 0) {
        *counter = 0; // ready for the next launch
    }
}

extern "C" __global__ void __launch_bounds__(128) tree_attention_f32(
        const float * __restrict__ q, const float * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int heads, int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask,
        int words, float scale, float softcap, const int * __restrict__ window_starts, int chunk, int items_per_warp, float * __restrict__ part_acc, float * __restrict__ part_ml,
        float * __restrict__ dst, unsigned * __restrict__ counters) {
    tree_attention(q, cache, table, layer, layers, heads, kv_heads, head_dim, block_size, prefix, n, mask, words, scale, softcap, window_starts, chunk, items_per_warp,
                   part_acc, part_ml, dst, counters);
}

// tree_attention_f16: tree_attention_f32 over a binary16 cache (keys and values widened exactly on load).
extern "C" __global__ void __launch_bounds__(128) tree_attention_f16(
        const float * __restrict__ q, const __half * __restrict__ cache, const int * __restrict__ table, int layer, int layers,
        int heads, int kv_heads, int head_dim, int block_size, int prefix, int n, const unsigned long long * __restrict__ mask,
        int words, float scale, float softcap, const int * __restrict__ window_starts, int chunk, int items_per_warp, float * __restrict__ part_acc, float * __restrict__ part_ml,
        float * __restrict__ dst, unsigned * __restrict__ counters) {
    tree_attention(q, cache, table, layer, layers, heads, kv_heads, head_dim, block_size, prefix, n, mask, words, scale, softcap, window_starts, chunk, items_per_warp,
                   part_acc, part_ml, dst, counters);
}
