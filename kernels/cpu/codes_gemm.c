// Native CPU kernels, loaded by engine/Backends/Cpu/NativeKernels.cs through LibraryImport. The C#
// kernels stay the portable path and the reference; this file exists because .NET 10 exposes no
// AVX-512 VNNI, and on CPUs that have it (Zen 4/5, Ice Lake and later) one vpdpbusd on 512 bits does
// 64 multiply-adds against 32 for the AVX-VNNI the JIT can emit (measured in docs/benchmarks.md:
// the matrix kernel below runs 1.5-1.65x the C# Gemm.Codes32x4x2 on the same data).
//
// Each kernel does, per output element, exactly the float operations of its C# counterpart, in the
// same order, so results are bit-identical (tests/Engine.Tests/NativeKernelTests.cs checks this).
// Functions carry their target ISA as an attribute instead of global -m flags, so the library loads
// on any x86-64 CPU and engine_cpu_supported() decides at run time.
#include <immintrin.h>
#include <stdint.h>

#define ENGINE_ABI 2
#define AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,f16c")))

#if defined(_WIN32)
#define EXPORT __declspec(dllexport)
#else
#define EXPORT __attribute__((visibility("default")))
#endif

// The version of the calling convention below; the C# side refuses a library with another.
EXPORT int engine_cpu_abi(void) { return ENGINE_ABI; }

// 1 when this CPU runs the kernels (AVX-512 F/BW/DQ/VL + VNNI + FMA), else 0.
EXPORT int engine_cpu_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

// The pieces both matrix kernels share.

// p[i] += the u8 codes of weight row i (values 0..count-1 from c) times the int8 activations of
// both groups: lanes 0..7 group g's 8 rows, lanes 8..15 group g+1's, 4 values per step. Two sums per
// row (even and odd steps), added at the end, so that sixteen vpdpbusd chains are in flight instead of
// eight (measured 10% faster); integer sums are exact, so the result is the same.
AVX512_VNNI static inline void dot_step(__m512i p[8], const uint8_t* c, int64_t codeStride, const int8_t* x0, const int8_t* x1, int count)
{
    __m512i q[8];
    for (int i = 0; i < 8; i++)
        q[i] = _mm512_setzero_si512();
    for (int k = 0; k < count; k += 8)
    {
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(x0 + 8 * k))),
            _mm256_loadu_si256((const __m256i*)(x1 + 8 * k)), 1);
        __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(x0 + 8 * k + 32))),
            _mm256_loadu_si256((const __m256i*)(x1 + 8 * k + 32)), 1);
        for (int i = 0; i < 8; i++)
        {
            int32_t w0, w1;
            __builtin_memcpy(&w0, c + i * codeStride + k, 4);
            __builtin_memcpy(&w1, c + i * codeStride + k + 4, 4);
            p[i] = _mm512_dpbusd_epi32(p[i], _mm512_set1_epi32(w0), v);
            q[i] = _mm512_dpbusd_epi32(q[i], _mm512_set1_epi32(w1), u);
        }
    }
    for (int i = 0; i < 8; i++)
        p[i] = _mm512_add_epi32(p[i], q[i]);
}

// acc[i] = fma(float(p[i]), scale_i*dx, fma(bias_i, xs, acc[i])) per element — Gemm.Step's order.
// scales/biases point at the sub-block's entry of weight row 0 (row i at + i*scaleStride).
AVX512_VNNI static inline void accumulate(__m512 acc[8], const __m512i p[8], const float* scales, const float* biases,
    int64_t scaleStride, const float* xd0, const float* xd1, const float* xs0, const float* xs1)
{
    __m512 dx = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(xd0)), _mm256_loadu_ps(xd1), 1);
    __m512 xs = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(xs0)), _mm256_loadu_ps(xs1), 1);
    for (int i = 0; i < 8; i++)
    {
        __m512 sv = _mm512_set1_ps(scales[i * scaleStride]);
        __m512 bv = _mm512_set1_ps(biases[i * scaleStride]);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[i]), _mm512_mul_ps(sv, dx), _mm512_fmadd_ps(bv, xs, acc[i]));
    }
}

// Transposes [8 weight rows][16 activation rows] into y: y[r*ldy + i].
AVX512_VNNI static inline void store_transposed(const __m512 acc[8], float* y, int64_t ldy)
{
    float tile[8][16];
    for (int i = 0; i < 8; i++)
        _mm512_storeu_ps(tile[i], acc[i]);
    for (int r = 0; r < 16; r++)
    {
        __m256 v = _mm256_setr_ps(tile[0][r], tile[1][r], tile[2][r], tile[3][r], tile[4][r], tile[5][r], tile[6][r], tile[7][r]);
        _mm256_storeu_ps(y + r * ldy, v);
    }
}

// codes32_8x16: 8 decoded weight rows against 16 activation rows — the same contract as
// Gemm.Codes32x4x2 with twice the weight rows, and both 8-row activation groups in one zmm.
//
//   codes   8 rows of unsigned byte codes, row i at codes + i*codeStride (32 per block)
//   scales, biases   per row and block of 32 (row i at + i*scaleStride): w = scale*code + bias
//   xq0/xq1 the interleaved int8 activations of groups g and g+1 (per block 256 bytes: for each
//           step of 4 values, 8 rows x 4 bytes), xd0/xd1 their scales and xs0/xs1 scale*sum per
//           row and block (8 floats per block)
//   y       y[r*ldy + i] = row r of the 16 activation rows times weight row i
AVX512_VNNI EXPORT void engine_codes32_8x16(const uint8_t* codes, int64_t codeStride, const float* scales, const float* biases,
    int64_t scaleStride, int32_t blocks, const int8_t* xq0, const int8_t* xq1, const float* xd0, const float* xd1,
    const float* xs0, const float* xs1, float* y, int64_t ldy)
{
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        __m512i p[8];
        for (int i = 0; i < 8; i++)
            p[i] = _mm512_setzero_si512();
        dot_step(p, codes + (int64_t)b * 32, codeStride, xq0 + (int64_t)b * 256, xq1 + (int64_t)b * 256, 32);
        accumulate(acc, p, scales + b, biases + b, scaleStride, xd0 + b * 8, xd1 + b * 8, xs0 + b * 8, xs1 + b * 8);
    }
    store_transposed(acc, y, ldy);
}

// codes16_8x16: codes32_8x16 for sub-blocks of 16 values (Q6_K, Q3_K, Q2_K), as Gemm.Codes16x4x2:
// each block of 32 is taken as two halves, each with its own scale and bias and its own activation
// sums (xs0/xs1: scale*sum per row and half-block, 8 floats per half), the activation scale shared.
AVX512_VNNI EXPORT void engine_codes16_8x16(const uint8_t* codes, int64_t codeStride, const float* scales, const float* biases,
    int64_t scaleStride, int32_t blocks, const int8_t* xq0, const int8_t* xq1, const float* xd0, const float* xd1,
    const float* xs0, const float* xs1, float* y, int64_t ldy)
{
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int h = 0; h < 2 * blocks; h++)
    {
        int b = h / 2;
        __m512i p[8];
        for (int i = 0; i < 8; i++)
            p[i] = _mm512_setzero_si512();
        dot_step(p, codes + (int64_t)h * 16, codeStride, xq0 + (int64_t)h * 128, xq1 + (int64_t)h * 128, 16);
        accumulate(acc, p, scales + h, biases + h, scaleStride, xd0 + b * 8, xd1 + b * 8, xs0 + h * 8, xs1 + h * 8);
    }
    store_transposed(acc, y, ldy);
}

// q4_0_8x16: codes32_8x16 reading 8 Q4_0 weight rows as the GGUF file holds them, blocks of
// { half d; u8 qs[16] } with value j the low nibble of qs[j] and value j+16 its high nibble, so the
// decoding pass (DecodedRows.DecodeQ4_0, which wrote a byte per weight to be read back) disappears:
// one broadcast of qs[k..k+3] yields the codes of values k..k+3 (low nibbles) and k+16..k+19 (high).
// The scale and bias are DecodeQ4_0's, d and -8d (the half converted exactly), so every output is
// bit for bit codes32_8x16's on the decoded rows. The next 8 rows (the next call's) are prefetched,
// three cache lines a block, so that they arrive while this call computes: without it the kernel
// waits on memory (measured from memory, K = 768: 0.155 -> 0.12 ns a weight; 0.10 from cache).
//
//   w        8 rows of Q4_0 blocks, row i at w + i*rowBytes
//   the rest as codes32_8x16
AVX512_VNNI EXPORT void engine_q4_0_8x16(const uint8_t* w, int64_t rowBytes, int32_t blocks, const int8_t* xq0, const int8_t* xq1,
    const float* xd0, const float* xd1, const float* xs0, const float* xs1, float* y, int64_t ldy)
{
    const __m512i low = _mm512_set1_epi8(0x0F);
    const uint8_t* next = w + 8 * rowBytes; // past the matrix's end a prefetch is dropped, not a fault
    const int64_t ahead = 8 * rowBytes;
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        const uint8_t* blk = w + (int64_t)b * 18;
        const int8_t* x0 = xq0 + (int64_t)b * 256;
        const int8_t* x1 = xq1 + (int64_t)b * 256;
        for (int64_t line = 3 * b * 64; line < 3 * (b + 1) * 64 && line < ahead; line += 64)
            _mm_prefetch((const char*)(next + line), _MM_HINT_T0);
        __m512i p[8], q[8];
        for (int i = 0; i < 8; i++)
        {
            p[i] = _mm512_setzero_si512();
            q[i] = _mm512_setzero_si512();
        }
        for (int k = 0; k < 16; k += 4)
        {
            __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(x0 + 8 * k))),
                _mm256_loadu_si256((const __m256i*)(x1 + 8 * k)), 1);
            __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(x0 + 8 * (k + 16)))),
                _mm256_loadu_si256((const __m256i*)(x1 + 8 * (k + 16))), 1);
            for (int i = 0; i < 8; i++)
            {
                int32_t packed;
                __builtin_memcpy(&packed, blk + i * rowBytes + 2 + k, 4);
                __m512i both = _mm512_set1_epi32(packed);
                p[i] = _mm512_dpbusd_epi32(p[i], _mm512_and_si512(both, low), lo);
                q[i] = _mm512_dpbusd_epi32(q[i], _mm512_and_si512(_mm512_srli_epi16(both, 4), low), hi);
            }
        }
        float scales[8], biases[8];
        for (int i = 0; i < 8; i++)
        {
            uint16_t half;
            __builtin_memcpy(&half, blk + i * rowBytes, 2);
            scales[i] = _cvtsh_ss(half);
            biases[i] = -8 * scales[i];
            p[i] = _mm512_add_epi32(p[i], q[i]);
        }
        accumulate(acc, p, scales, biases, 1, xd0 + b * 8, xd1 + b * 8, xs0 + b * 8, xs1 + b * 8);
    }
    store_transposed(acc, y, ldy);
}
