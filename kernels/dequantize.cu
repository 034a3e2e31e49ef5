// Weights to F16 for the prefill matrix products (cuBLAS multiplies F16 × F16 into F32), and the
// float32 → F16 conversion of the activations that go with them.
// CPU reference: engine/Backends/Cpu/Kernels/DequantizeF16.cs (DequantizeF16.DequantizeQ4_0F16, ...).
// Launcher:      managed/Kernels/Dequantize.cs.
#include "common.cuh"
#include "quant.cuh"

// dequantize_<type>_f16
//   w: [rows, cols] in <type>'s block format, row_bytes bytes per row     dst: [rows, cols] F16
// Launch: grid = (rows, 1, 1); block = (128, 1, 1); no shared memory.
template <typename T>
static __device__ void dequantize_f16(const uint8_t * __restrict__ w, long long row_bytes, __half * __restrict__ dst, int cols) {
    const int r = blockIdx.x;
    __half * out = dst + (long long) r * cols;
    for_each_value<T>(w + (long long) r * row_bytes, cols, threadIdx.x, blockDim.x, [=](int i, float v) { out[i] = __float2half_rn(v); });
}

#define DEQUANTIZE(name, type)                                                                                   \
    extern "C" __global__ void dequantize_##name##_f16(const uint8_t * w, long long row_bytes, __half * dst, int cols) { \
        dequantize_f16<type>(w, row_bytes, dst, cols);                                                           \
    }
ENGINE_FOR_EACH_WEIGHT_TYPE(DEQUANTIZE)

// convert_f32_f16: dst[i] = (half) x[i], round to nearest even, for i < count.
// Launch: grid = (ceil(count / 256), 1, 1); block = (256, 1, 1).
extern "C" __global__ void convert_f32_f16(const float * __restrict__ x, __half * __restrict__ dst, long long count) {
    const long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        dst[i] = __float2half_rn(x[i]);
    }
}
