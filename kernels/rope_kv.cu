// RoPE on the queries and keys of a batch and the keys and values into the paged KV cache, in one
// launch: what rope_f32 (twice) and store_kv_f32 do, with the same arithmetic (rope_pair, kv_store),
// so the fused step is bit for bit the three it replaces.
// CPU reference: engine/Backends/Cpu/Kernels/Rope.cs (Rope.RopeF32) then KvCacheKernels.StoreKvF32 —
// the composition Backend.RopeStoreKv spells out (engine/Backends/Backend.cs).
// Launcher:      managed/Kernels/RopeKv.cs.
#include "common.cuh"

// rope_store_kv_f32 / rope_store_kv_f16
//   q: [n, heads·head_dim] rotated in place      k: [n, kv_heads·head_dim] rotated in place
//   v: [n, kv_heads·head_dim]                    positions: [n]; inv_freq, pairs, neox: as rope_f32
//   table, first_slot, cache, layer, layers, block_size: as store_kv_f32 (row r goes to slot first_slot + r)
//   mscale: as rope_f32
// Launch: grid = (n, heads + kv_heads, 1): blocks y < heads rotate query head y; the others rotate key
//         head y - heads and store it with its value; block = (T, 1, 1), T a multiple of 32, T >= pairs.
template <typename T>
static __device__ void rope_store_kv(float * q, float * k, const float * __restrict__ v, const int * __restrict__ positions,
                                     const double * __restrict__ inv_freq, int heads, int kv_heads, int head_dim, int pairs, int neox,
                                     const int * __restrict__ table, int first_slot, T * cache, int layer, int layers, int block_size,
                                     double mscale) {
    const int r = blockIdx.x, y = blockIdx.y, i = threadIdx.x;
    const bool is_key = y >= heads;
    const int h = is_key ? y - heads : y;
    float * head = is_key ? k + ((long long) r * kv_heads + h) * head_dim : q + ((long long) r * heads + h) * head_dim;
    T * kd = nullptr;
    if (is_key) {
        const int slot = first_slot + r;
        const long long base = (((long long) table[slot / block_size] * layers + layer) * 2 * kv_heads + h) * (long long) (block_size * head_dim) +
                               (long long) (slot % block_size) * head_dim;
        kd = cache + base;
        T * vd = kd + (long long) kv_heads * block_size * head_dim; // V follows K within the layer
        const float * vs = v + ((long long) r * kv_heads + h) * head_dim;
        for (int d = i; d < head_dim; d += blockDim.x) {
            kv_store(vd + d, vs[d]);
        }
    }
    if (i < pairs) {
        double s, c;
        sincos((double) positions[r] * inv_freq[i], &s, &c);
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + pairs : 2 * i + 1;
        rope_pair(head[a], head[b], (float) (c * mscale), (float) (s * mscale), head[a], head[b]);
        if (is_key) {
            kv_store(kd + a, head[a]);
            kv_store(kd + b, head[b]);
        }
    }
    if (is_key) {
        for (int d = 2 * pairs + i; d < head_dim; d += blockDim.x) { // dimensions past the rotated pairs pass through
            kv_store(kd + d, head[d]);
        }
    }
}

extern "C" __global__ void rope_store_kv_f32(float * q, float * k, const float * __restrict__ v, const int * __restrict__ positions,
                                             const double * __restrict__ inv_freq, int heads, int kv_heads, int head_dim, int pairs, int neox,
                                             const int * __restrict__ table, int first_slot, float * cache, int layer, int layers, int block_size,
                                             double mscale) {
    rope_store_kv(q, k, v, positions, inv_freq, heads, kv_heads, head_dim, pairs, neox, table, first_slot, cache, layer, layers, block_size, mscale);
}

extern "C" __global__ void rope_store_kv_f16(float * q, float * k, const float * __restrict__ v, const int * __restrict__ positions,
                                             const double * __restrict__ inv_freq, int heads, int kv_heads, int head_dim, int pairs, int neox,
                                             const int * __restrict__ table, int first_slot, __half * cache, int layer, int layers, int block_size,
                                             double mscale) {
    rope_store_kv(q, k, v, positions, inv_freq, heads, kv_heads, head_dim, pairs, neox, table, first_slot, cache, layer, layers, block_size, mscale);
}
