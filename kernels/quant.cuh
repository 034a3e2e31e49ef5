// Weight formats as the GGUF specification lays them out (ggml-common.h), read by every kernel that
// touches weights: get_rows (embedding gather), gemv (decode) and dequantize (prefill). One struct per
// type; each splits a block into CHUNKS chunks of VALS values so that a thread reads one chunk:
//   load(block, chunk, v)  the chunk's values as float, v[0..VALS)
//   pos(chunk, i)          where value i of the chunk sits in the block (0..QK)
// A row of `cols` values is cols/QK blocks of BYTES bytes. Block fields are read with loads no wider
// than the block's alignment (Q4_0/Q8_0/Q6_K blocks are 18/34/210 bytes: 2-byte aligned only).
// CPU reference: engine/Quantization/Dequantize.cs (Dequantize.Row), the same formats in C#.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

static __device__ __forceinline__ float half_to_float(const uint8_t * p) {
    return __half2float(__ushort_as_half(*(const uint16_t *) p));
}

static __device__ __forceinline__ float bf16_to_float(uint16_t bits) {
    return __uint_as_float(((uint32_t) bits) << 16);
}

// Four bytes from a 2-byte aligned address, as one little-endian word.
static __device__ __forceinline__ uint32_t load_u32_a2(const uint8_t * p) {
    const uint16_t * h = (const uint16_t *) p;
    return (uint32_t) h[0] | ((uint32_t) h[1] << 16);
}

// Four activations from a 16-byte aligned address, with one vector load (float4): a GEMV lane reads its
// chunk's activations as whole vectors, not value by value.
static __device__ __forceinline__ void load_x4(const float * __restrict__ p, float * v) {
    const float4 f = __ldg((const float4 *) p);
    v[0] = f.x;
    v[1] = f.y;
    v[2] = f.z;
    v[3] = f.w;
}

// F32: one value per chunk; consecutive threads read consecutive floats.
struct type_f32 {
    static constexpr int QK = 1, BYTES = 4, CHUNKS = 1, VALS = 1;
    static __device__ __forceinline__ void load(const uint8_t * b, int, float (&v)[VALS]) { v[0] = *(const float *) b; }
    static __device__ __forceinline__ int pos(int, int i) { return i; }
    // The chunk's activations: xv[i] = xb[pos(chunk, i)] (xb: the block's first activation).
    static __device__ __forceinline__ void load_x(const float * __restrict__ xb, int, float (&xv)[VALS]) { xv[0] = __ldg(xb); }
};

// Two halves packed in a word (the lower one first) as floats.
static __device__ __forceinline__ void halves_to_float(uint32_t w, float & lo, float & hi) {
    lo = __half2float(__ushort_as_half((unsigned short) (w & 0xFFFF)));
    hi = __half2float(__ushort_as_half((unsigned short) (w >> 16)));
}

// F16: eight values (one 16-byte load) per chunk; rows need a multiple of 8 values, so that every
// chunk is 16-byte aligned (a row is cols·2 bytes; allocations are 256-byte aligned).
struct type_f16 {
    static constexpr int QK = 8, BYTES = 16, CHUNKS = 1, VALS = 8;
    static __device__ __forceinline__ void load(const uint8_t * b, int, float (&v)[VALS]) {
        const uint4 w = *(const uint4 *) b;
        halves_to_float(w.x, v[0], v[1]);
        halves_to_float(w.y, v[2], v[3]);
        halves_to_float(w.z, v[4], v[5]);
        halves_to_float(w.w, v[6], v[7]);
    }
    static __device__ __forceinline__ int pos(int, int i) { return i; }
    static __device__ __forceinline__ void load_x(const float * __restrict__ xb, int, float (&xv)[VALS]) {
        load_x4(xb, xv);
        load_x4(xb + 4, xv + 4);
    }
};

// BF16: the high half of a float32; eight values per chunk, as F16.
struct type_bf16 {
    static constexpr int QK = 8, BYTES = 16, CHUNKS = 1, VALS = 8;
    static __device__ __forceinline__ void load(const uint8_t * b, int, float (&v)[VALS]) {
        const uint4 w = *(const uint4 *) b;
        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[2 * i] = bf16_to_float((uint16_t) (words[i] & 0xFFFF));
            v[2 * i + 1] = bf16_to_float((uint16_t) (words[i] >> 16));
        }
    }
    static __device__ __forceinline__ int pos(int, int i) { return i; }
    static __device__ __forceinline__ void load_x(const float * __restrict__ xb, int, float (&xv)[VALS]) {
        load_x4(xb, xv);
        load_x4(xb + 4, xv + 4);
    }
};

// Q8_0: { half d; int8 qs[32]; } — value i = d · qs[i]. Chunk p: qs[8p .. 8p+7].
struct type_q8_0 {
    static constexpr int QK = 32, BYTES = 34, CHUNKS = 4, VALS = 8;
    static __device__ __forceinline__ void load(const uint8_t * b, int p, float (&v)[VALS]) {
        const float d = half_to_float(b);
        const uint32_t w0 = load_u32_a2(b + 2 + 8 * p), w1 = load_u32_a2(b + 2 + 8 * p + 4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[i] = d * (float) (int8_t) (w0 >> (8 * i));
            v[i + 4] = d * (float) (int8_t) (w1 >> (8 * i));
        }
    }
    static __device__ __forceinline__ int pos(int p, int i) { return 8 * p + i; }
    static __device__ __forceinline__ void load_x(const float * __restrict__ xb, int p, float (&xv)[VALS]) {
        load_x4(xb + 8 * p, xv);
        load_x4(xb + 8 * p + 4, xv + 4);
    }
};

// Q4_0: { half d; uint8 qs[16]; } — value j = d · ((qs[j] & 15) - 8), value j+16 = d · ((qs[j] >> 4) - 8).
// Chunk p: qs[4p .. 4p+3], giving values 4p..4p+3 (low nibbles) and 16+4p..16+4p+3 (high nibbles).
struct type_q4_0 {
    static constexpr int QK = 32, BYTES = 18, CHUNKS = 4, VALS = 8;
    static __device__ __forceinline__ void load(const uint8_t * b, int p, float (&v)[VALS]) {
        const float d = half_to_float(b);
        const uint32_t w = load_u32_a2(b + 2 + 4 * p);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[i] = d * (float) ((int) ((w >> (8 * i)) & 15) - 8);
            v[i + 4] = d * (float) ((int) ((w >> (8 * i + 4)) & 15) - 8);
        }
    }
    static __device__ __forceinline__ int pos(int p, int i) { return i < 4 ? 4 * p + i : 16 + 4 * p + (i - 4); }
    static __device__ __forceinline__ void load_x(const float * __restrict__ xb, int p, float (&xv)[VALS]) {
        load_x4(xb + 4 * p, xv);
        load_x4(xb + 16 + 4 * p, xv + 4);
    }
};

// 6-bit scale and min j (0..7) of a Q4_K super-block (ggml's get_scale_min_k4).
static __device__ __forceinline__ void q4_k_scale_min(int j, const uint8_t * q, int & sc, int & m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K: { half d; half dmin; uint8 scales[12]; uint8 qs[128]; } over 256 values in 4 groups of 64:
// group j's low nibbles qs[32j + l] are values 64j + l (scale/min 2j), its high nibbles values
// 64j + 32 + l (scale/min 2j+1); value = d·sc·q - dmin·m. Chunk p: 8 bytes qs[32j + 8(p%4) ..] of
// group j = p/4 — 8 low and 8 high values.
struct type_q4_k {
    static constexpr int QK = 256, BYTES = 144, CHUNKS = 16, VALS = 16;
    static __device__ __forceinline__ void load(const uint8_t * b, int p, float (&v)[VALS]) {
        const float d = half_to_float(b), dmin = half_to_float(b + 2);
        const int j = p / 4;
        int sc0, m0, sc1, m1;
        q4_k_scale_min(2 * j, b + 4, sc0, m0);
        q4_k_scale_min(2 * j + 1, b + 4, sc1, m1);
        const float d0 = d * sc0, o0 = dmin * m0, d1 = d * sc1, o1 = dmin * m1;
        const uint32_t * q = (const uint32_t *) (b + 16 + 32 * j + 8 * (p % 4)); // 144-byte blocks: 16-byte aligned
        const uint32_t w0 = q[0], w1 = q[1];
        // Product and difference rounded separately (no fused multiply-add), as the C# dequantizer
        // computes them: the decoded weights are then the same floats on both sides.
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[i] = __fsub_rn(__fmul_rn(d0, (float) ((w0 >> (8 * i)) & 15)), o0);
            v[i + 4] = __fsub_rn(__fmul_rn(d0, (float) ((w1 >> (8 * i)) & 15)), o0);
            v[i + 8] = __fsub_rn(__fmul_rn(d1, (float) ((w0 >> (8 * i + 4)) & 15)), o1);
            v[i + 12] = __fsub_rn(__fmul_rn(d1, (float) ((w1 >> (8 * i + 4)) & 15)), o1);
        }
    }
    static __device__ __forceinline__ int pos(int p, int i) {
        const int base = 64 * (p / 4) + 8 * (p % 4);
        return i < 8 ? base + i : base + 32 + (i - 8);
    }
    static __device__ __forceinline__ void load_x(const float * __restrict__ xb, int p, float (&xv)[VALS]) {
        const float * x0 = xb + 64 * (p / 4) + 8 * (p % 4);
        load_x4(x0, xv);
        load_x4(x0 + 4, xv + 4);
        load_x4(x0 + 32, xv + 8);
        load_x4(x0 + 36, xv + 12);
    }
};

// Q6_K: { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; } over 256 values in two halves of 128.
// In half h, for l in 0..31 (ggml's dequantize_row_q6_K):
//   value 128h+l    = d·sc[8h + l/16 + 0]·((ql[64h+l]    & 15 | ((qh[32h+l] >> 0) & 3) << 4) - 32)
//   value 128h+l+32 = d·sc[8h + l/16 + 2]·((ql[64h+l+32] & 15 | ((qh[32h+l] >> 2) & 3) << 4) - 32)
//   value 128h+l+64 = d·sc[8h + l/16 + 4]·((ql[64h+l]    >> 4 | ((qh[32h+l] >> 4) & 3) << 4) - 32)
//   value 128h+l+96 = d·sc[8h + l/16 + 6]·((ql[64h+l+32] >> 4 | ((qh[32h+l] >> 6) & 3) << 4) - 32)
// Chunk p: half h = p/8, l = 4(p%8) .. 4(p%8)+3 — 4 values of each of the 4 quarters.
struct type_q6_k {
    static constexpr int QK = 256, BYTES = 210, CHUNKS = 16, VALS = 16;
    static __device__ __forceinline__ void load(const uint8_t * b, int p, float (&v)[VALS]) {
        const int h = p / 8, l = 4 * (p % 8);
        const float d = half_to_float(b + 208);
        const int8_t * sc = (const int8_t *) (b + 192) + 8 * h + l / 16;
        const uint32_t lo = load_u32_a2(b + 64 * h + l), hi = load_u32_a2(b + 64 * h + l + 32);
        const uint32_t qh = load_u32_a2(b + 128 + 32 * h + l);
        const float d0 = d * sc[0], d2 = d * sc[2], d4 = d * sc[4], d6 = d * sc[6];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t a = (lo >> (8 * i)) & 0xFF, c = (hi >> (8 * i)) & 0xFF, e = (qh >> (8 * i)) & 0xFF;
            v[i] = d0 * (float) ((int) ((a & 15) | (((e >> 0) & 3) << 4)) - 32);
            v[i + 4] = d2 * (float) ((int) ((c & 15) | (((e >> 2) & 3) << 4)) - 32);
            v[i + 8] = d4 * (float) ((int) ((a >> 4) | (((e >> 4) & 3) << 4)) - 32);
            v[i + 12] = d6 * (float) ((int) ((c >> 4) | (((e >> 6) & 3) << 4)) - 32);
        }
    }
    static __device__ __forceinline__ int pos(int p, int i) { return 128 * (p / 8) + 4 * (p % 8) + 32 * (i / 4) + (i % 4); }
    static __device__ __forceinline__ void load_x(const float * __restrict__ xb, int p, float (&xv)[VALS]) {
        const float * x0 = xb + 128 * (p / 8) + 4 * (p % 8);
        load_x4(x0, xv);
        load_x4(x0 + 32, xv + 4);
        load_x4(x0 + 64, xv + 8);
        load_x4(x0 + 96, xv + 12);
    }
};

// Calls store(index, value) for each value of a row of `cols` values, in chunks first, first + stride,
// ... — a kernel passes (threadIdx.x, blockDim.x) so that a block's threads split the row; the host
// build (kernels/host) passes (0, 1).
template <typename T, typename Store>
static __device__ __forceinline__ void for_each_value(const uint8_t * row, int cols, int first, int stride, Store store) {
    const int chunks = cols / T::QK * T::CHUNKS;
    for (int c = first; c < chunks; c += stride) {
        const int blk = c / T::CHUNKS, part = c % T::CHUNKS;
        float v[T::VALS];
        T::load(row + (long long) blk * T::BYTES, part, v);
#pragma unroll
        for (int i = 0; i < T::VALS; i++) {
            store(blk * T::QK + T::pos(part, i), v[i]);
        }
    }
}

// Instantiates MACRO(name, type) for every weight format, in the order of the C# WeightKernels table.
#define ENGINE_FOR_EACH_WEIGHT_TYPE(MACRO) \
    MACRO(f32, type_f32)                  \
    MACRO(f16, type_f16)                  \
    MACRO(bf16, type_bf16)                \
    MACRO(q8_0, type_q8_0)                \
    MACRO(q4_0, type_q4_0)                \
    MACRO(q4_k, type_q4_k)                \
    MACRO(q6_k, type_q6_k)
