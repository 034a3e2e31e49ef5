// Greedy pick on the device: the index of each row's largest value (the first one on ties, as the
// host's greedy sampler picks), so decoding can download one int instead of the logits.
// CPU reference: engine/Backends/Cpu/Kernels/Activations.cs (Activations.ArgMaxF32).
// Launcher:      managed/Kernels/ArgMax.cs.
#include "common.cuh"

// (value, index) of the warp's maximum, in every lane: the larger value wins, equal values go to the
// smaller index.
static __device__ __forceinline__ void warp_reduce_argmax(float & v, int & idx) {
#pragma unroll
    for (int offset = ENGINE_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, offset);
        if (ov > v || (ov == v && oi < idx)) {
            v = ov;
            idx = oi;
        }
    }
}

// argmax_f32
//   x: [rows, cols] float32      out: [rows] int32
// NaN is never picked unless a row holds only NaN (then index 0).
// Launch: grid = (rows, 1, 1); block = (T, 1, 1) with T a multiple of 32, <= 1024 (the launcher uses 1024).
extern "C" __global__ void argmax_f32(const float * __restrict__ x, int * __restrict__ out, int cols) {
    __shared__ float best_v[ENGINE_WARP_SIZE];
    __shared__ int best_i[ENGINE_WARP_SIZE];
    const float * row = x + (long long) blockIdx.x * cols;
    float v = -INFINITY;
    int idx = 0x7FFFFFFF;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float e = row[c];
        if (e > v) { // strictly greater: this thread's first maximum wins
            v = e;
            idx = c;
        }
    }
    warp_reduce_argmax(v, idx);
    const int lane = threadIdx.x % ENGINE_WARP_SIZE, warp = threadIdx.x / ENGINE_WARP_SIZE;
    if (lane == 0) {
        best_v[warp] = v;
        best_i[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x / ENGINE_WARP_SIZE;
        v = lane < warps ? best_v[lane] : -INFINITY;
        idx = lane < warps ? best_i[lane] : 0x7FFFFFFF;
        warp_reduce_argmax(v, idx);
        if (lane == 0) {
            out[blockIdx.x] = idx == 0x7FFFFFFF ? 0 : idx;
        }
    }
}
