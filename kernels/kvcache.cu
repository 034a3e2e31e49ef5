// The paged KV cache on the device: blocks of block_size tokens, all in one allocation, laid out
//   cache[block][layer][K=0|V=1][kv_head][slot][head_dim]   float32 (…_f32) or binary16 (…_f16)
// so that one key (or value) of one head is head_dim consecutive elements. Which block holds which
// tokens of a sequence is the host's business (engine/Cache): kernels get a block table.
// CPU reference: engine/Backends/Cpu/CpuBackend.cs StoreKv and CpuKvStore.CopySlot (StoreKvF32 and
// CopySlotF32 in engine/Backends/Cpu/Kernels/KvCacheKernels.cs work on this very layout).
// Launcher:      managed/Kernels/KvCache.cs.
#include "common.cuh"

static __device__ __forceinline__ long long kv_index(int block, int layer, int kind, int head, int slot, int layers,
                                                     int kv_heads, int block_size, int head_dim) {
    return ((((long long) block * layers + layer) * 2 + kind) * kv_heads + head) * (long long) (block_size * head_dim) +
           (long long) slot * head_dim;
}

// store_kv_f32 / store_kv_f16: writes row r of k and v (each [n, kv_heads·head_dim], float32) for one layer
// into slot first_slot + r of the sequence whose blocks are table[] (table[s / block_size] holds slot s);
// the f16 cache rounds each value to nearest even.
// Launch: grid = (n, kv_heads, 1); block = (T, 1, 1), T a multiple of 32 (threads loop over head_dim).
template <typename T>
static __device__ void store_kv(const float * __restrict__ k, const float * __restrict__ v, const int * __restrict__ table, int first_slot,
                                T * cache, int layer, int layers, int kv_heads, int head_dim, int block_size) {
    const int r = blockIdx.x, h = blockIdx.y;
    const int slot = first_slot + r;
    const int block = table[slot / block_size], offset = slot % block_size;
    const long long src = (long long) r * kv_heads * head_dim + (long long) h * head_dim;
    T * kd = cache + kv_index(block, layer, 0, h, offset, layers, kv_heads, block_size, head_dim);
    T * vd = cache + kv_index(block, layer, 1, h, offset, layers, kv_heads, block_size, head_dim);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        kv_store(kd + d, k[src + d]);
        kv_store(vd + d, v[src + d]);
    }
}

extern "C" __global__ void store_kv_f32(const float * __restrict__ k, const float * __restrict__ v, const int * __restrict__ table,
                                        int first_slot, float * cache, int layer, int layers, int kv_heads, int head_dim, int block_size) {
    store_kv(k, v, table, first_slot, cache, layer, layers, kv_heads, head_dim, block_size);
}

extern "C" __global__ void store_kv_f16(const float * __restrict__ k, const float * __restrict__ v, const int * __restrict__ table,
                                        int first_slot, __half * cache, int layer, int layers, int kv_heads, int head_dim, int block_size) {
    store_kv(k, v, table, first_slot, cache, layer, layers, kv_heads, head_dim, block_size);
}

// copy_slot_f32 / copy_slot_f16: copies one token's K and V in every layer and head from (src_block, src_slot)
// to (dst_block, dst_slot) — compacting a sequence to the accepted path of a token tree.
// Launch: grid = (layers · 2 · kv_heads, 1, 1); block = (T, 1, 1), T a multiple of 32.
template <typename T>
static __device__ void copy_slot(T * cache, int src_block, int src_slot, int dst_block, int dst_slot, int layers, int kv_heads, int head_dim,
                                 int block_size) {
    const int h = blockIdx.x % kv_heads;
    const int kind = (blockIdx.x / kv_heads) % 2;
    const int layer = blockIdx.x / (2 * kv_heads);
    const T * s = cache + kv_index(src_block, layer, kind, h, src_slot, layers, kv_heads, block_size, head_dim);
    T * d = cache + kv_index(dst_block, layer, kind, h, dst_slot, layers, kv_heads, block_size, head_dim);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        d[i] = s[i];
    }
}

extern "C" __global__ void copy_slot_f32(float * cache, int src_block, int src_slot, int dst_block, int dst_slot, int layers,
                                         int kv_heads, int head_dim, int block_size) {
    copy_slot(cache, src_block, src_slot, dst_block, dst_slot, layers, kv_heads, head_dim, block_size);
}

extern "C" __global__ void copy_slot_f16(__half * cache, int src_block, int src_slot, int dst_block, int dst_slot, int layers,
                                         int kv_heads, int head_dim, int block_size) {
    copy_slot(cache, src_block, src_slot, dst_block, dst_slot, layers, kv_heads, head_dim, block_size);
}
