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

#define ENGINE_ABI 9
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

// The pieces the matrix kernels share.

// Activations of values k..k+3 of a block of both groups (lanes 0..7 group g's rows, 8..15 group g+1's).
AVX512_VNNI static inline __m512i activation_pair(const int8_t* x0, const int8_t* x1, int64_t offset)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(x0 + offset))),
        _mm256_loadu_si256((const __m256i*)(x1 + offset)), 1);
}

// The per-row floats of both groups for one block (lanes 0..7 group g's rows, 8..15 group g+1's).
AVX512_VNNI static inline __m512 float_pair(const float* f0, const float* f1)
{
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(f0)), _mm256_loadu_ps(f1), 1);
}

// -offset·Σx of both groups' rows for one block (xi: the activations' integer block sums), offset 2^shift:
// where a block's sums start, so that they end as Σ (code - offset)·x.
AVX512_VNNI static inline __m512i offset_start(const int32_t* xi0, const int32_t* xi1, int offsetShift)
{
    __m512i sums = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)xi0)), _mm256_loadu_si256((const __m256i*)xi1), 1);
    return _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, offsetShift));
}

static inline int32_t load32(const uint8_t* p)
{
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

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
        __m512i v = activation_pair(x0, x1, 8 * k), u = activation_pair(x0, x1, 8 * k + 32);
        for (int i = 0; i < 8; i++)
        {
            p[i] = _mm512_dpbusd_epi32(p[i], _mm512_set1_epi32(load32(c + i * codeStride + k)), v);
            q[i] = _mm512_dpbusd_epi32(q[i], _mm512_set1_epi32(load32(c + i * codeStride + k + 4)), u);
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
    __m512 dx = float_pair(xd0, xd1), xs = float_pair(xs0, xs1);
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

// The kernels below read 8 weight rows as the GGUF file holds them instead of rows DecodedRows decoded
// (which wrote a byte per weight to be read back): the codes are unpacked in registers from one
// broadcast of 4 packed values per row, and the scales and biases are computed as DecodedRows computes
// them (halves converted exactly), so every output is bit for bit codes32_8x16's on the decoded rows.
// Each kernel prefetches the next 8 rows (the next call's) a few cache lines per block, so that they
// arrive while this call computes: without it the kernel waits on memory (measured from memory, Q4_0,
// K = 768: 0.155 -> 0.12 ns a weight; 0.10 from cache).
//
//   w        8 weight rows, row i at w + i*rowBytes
//   blocks   blocks per row (Q4_K: super-blocks of 256)
//   the rest as codes32_8x16

// Lines [first, first + count) of the next call's rows (past the matrix's end a prefetch is dropped, not a fault).
// Compiled for the kernels' target and always inlined: as a plain static function, GCC inlined it into the
// AVX-512 kernels and then dropped the prefetches (none in the built x16_rows), and the 16-row kernels ran
// 1.3-1.6x slower on weights out of cache than in it. Every address is clamped to the last line, so the loop's
// only exit is its count.
AVX512_VNNI static inline __attribute__((always_inline)) void prefetch_lines(const uint8_t* next, int64_t bytes, int64_t first, int count)
{
    const uint8_t* last = next + bytes - 64;
    for (int i = 0; i < count; i++)
    {
        const uint8_t* line = next + (first + i) * 64;
        _mm_prefetch((const char*)(line < last ? line : last), _MM_HINT_T0);
    }
}

AVX512_VNNI static inline float load_half(const uint8_t* p)
{
    uint16_t h;
    __builtin_memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// Q4_0 and Q8_0 codes are the value plus a power-of-two offset (8, 128), so a block's dot product with
// the offset taken out, Σ (code - offset)·x, is an integer: each row's sums start at -offset·Σx (xi: the
// activations' block sums, 8 rows of group g then of g+1) and the block adds float(sum)·(d·dx) with one
// fused multiply-add. Exact where the decoded rows' form (a float scale times the code sum plus a float
// bias times the activation sum) rounds twice, and two vector operations a row and block fewer: measured
// on Q4_0, 0.0705 -> 0.0642 ns a weight per 16 rows from cache. Checked against a scalar C# reference of
// the same arithmetic (NativeKernelTests).
AVX512_VNNI static inline void offset_sums(__m512i p[8], __m512i q[8], const int32_t* xi0, const int32_t* xi1, int offsetShift)
{
    __m512i start = offset_start(xi0, xi1, offsetShift);
    for (int i = 0; i < 8; i++)
    {
        p[i] = start;
        q[i] = _mm512_setzero_si512();
    }
}

// The end of a Q4_0 or Q8_0 block: sum = p[i] + (q[i] >> shift) (shift 4: high nibbles taken in place),
// acc[i] = fma(float(sum), d_i·dx, acc[i]) with d_i row i's block scale (a half).
AVX512_VNNI static inline void accumulate_block(__m512 acc[8], const __m512i p[8], const __m512i q[8], int shift, const uint8_t* blk, int64_t rowBytes,
    const float* xd0, const float* xd1)
{
    __m512 dx = float_pair(xd0, xd1);
    for (int i = 0; i < 8; i++)
    {
        __m512i sum = _mm512_add_epi32(p[i], _mm512_srai_epi32(q[i], shift));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(_mm512_set1_ps(load_half(blk + i * rowBytes)), dx), acc[i]);
    }
}

AVX512_VNNI static inline void zero_sums(__m512i p[8], __m512i q[8])
{
    for (int i = 0; i < 8; i++)
    {
        p[i] = _mm512_setzero_si512();
        q[i] = _mm512_setzero_si512();
    }
}

// Q4_0 blocks { half d; u8 qs[16] }: value j the low nibble of qs[j], value j+16 its high nibble, less 8;
// scale d (offset_sums, accumulate_block). The high nibbles are used in place (byte & 0xF0, 16
// times the code: at most 240, still a u8 for vpdpbusd) and their sum divided by 16 once per block,
// exactly — one instruction a broadcast instead of a shift and a mask (measured 7% faster).
AVX512_VNNI static inline void q4_0_8x16(const uint8_t* w, int64_t rowBytes, int32_t blocks, const int8_t* xq0, const int8_t* xq1,
    const float* xd0, const float* xd1, const float* xs0, const float* xs1, const int32_t* xi0, const int32_t* xi1, float* y, int64_t ldy)
{
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8((char)0xF0);
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        const uint8_t* blk = w + (int64_t)b * 18;
        const int8_t* x0 = xq0 + (int64_t)b * 256;
        const int8_t* x1 = xq1 + (int64_t)b * 256;
        prefetch_lines(w + 8 * rowBytes, 8 * rowBytes, 3 * (int64_t)b, 3); // 8 x 18 bytes a block
        __m512i p[8], q[8];
        offset_sums(p, q, xi0 + b * 8, xi1 + b * 8, 3);
        for (int k = 0; k < 16; k += 4)
        {
            __m512i lo = activation_pair(x0, x1, 8 * k), hi = activation_pair(x0, x1, 8 * (k + 16));
            for (int i = 0; i < 8; i++)
            {
                const uint8_t* packed = blk + i * rowBytes + 2 + k;
                p[i] = _mm512_dpbusd_epi32(p[i], _mm512_and_si512(_mm512_set1_epi32(load32(packed)), low), lo);
                q[i] = _mm512_dpbusd_epi32(q[i], _mm512_and_si512(_mm512_set1_epi32(load32(packed)), high), hi);
            }
        }
        accumulate_block(acc, p, q, 4, blk, rowBytes, xd0 + b * 8, xd1 + b * 8);
    }
    store_transposed(acc, y, ldy);
}

// Q8_0 blocks { half d; i8 qs[32] }: code qs[j] + 128 (the sign bit flipped: vpdpbusd takes unsigned
// weights), the offset taken out again as Q4_0's (offset_sums); scale d.
AVX512_VNNI static inline void q8_0_8x16(const uint8_t* w, int64_t rowBytes, int32_t blocks, const int8_t* xq0, const int8_t* xq1,
    const float* xd0, const float* xd1, const float* xs0, const float* xs1, const int32_t* xi0, const int32_t* xi1, float* y, int64_t ldy)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        const uint8_t* blk = w + (int64_t)b * 34;
        const int8_t* x0 = xq0 + (int64_t)b * 256;
        const int8_t* x1 = xq1 + (int64_t)b * 256;
        prefetch_lines(w + 8 * rowBytes, 8 * rowBytes, 5 * (int64_t)b, 5); // 8 x 34 bytes a block
        __m512i p[8], q[8];
        offset_sums(p, q, xi0 + b * 8, xi1 + b * 8, 7);
        for (int k = 0; k < 32; k += 8)
        {
            __m512i v = activation_pair(x0, x1, 8 * k), u = activation_pair(x0, x1, 8 * k + 32);
            for (int i = 0; i < 8; i++)
            {
                const uint8_t* qs = blk + i * rowBytes + 2 + k;
                p[i] = _mm512_dpbusd_epi32(p[i], _mm512_xor_si512(_mm512_set1_epi32(load32(qs)), flip), v);
                q[i] = _mm512_dpbusd_epi32(q[i], _mm512_xor_si512(_mm512_set1_epi32(load32(qs + 4)), flip), u);
            }
        }
        accumulate_block(acc, p, q, 0, blk, rowBytes, xd0 + b * 8, xd1 + b * 8);
    }
    store_transposed(acc, y, ldy);
}

// A Q4_K or Q5_K super-block's 8 sub-blocks' 6-bit scales (sm[0..8)) and mins (sm[8..16)), unpacked as
// VecDot.ScalesAndMins does.
AVX512_VNNI static inline void k_scale_bytes(const uint8_t* blk, uint8_t sm[16])
{
    uint32_t a = (uint32_t)load32(blk + 4), m = (uint32_t)load32(blk + 8), c = (uint32_t)load32(blk + 12);
    const uint32_t six = 0x3F3F3F3F, four = 0x0F0F0F0F, two = 0x03030303;
    uint32_t packed[4] = { a & six, (c & four) | (((a >> 6) & two) << 4), m & six, ((c >> 4) & four) | (((m >> 6) & two) << 4) };
    __builtin_memcpy(sm, packed, 16);
}

// Their scales and biases as floats: scale d*sc, bias -dmin*m (DecodedRows.DecodeQ4_K).
AVX512_VNNI static inline void k_scales(const uint8_t* blk, float* scales, float* biases)
{
    float d = load_half(blk), dmin = load_half(blk + 2);
    uint8_t sm[16];
    k_scale_bytes(blk, sm);
    for (int j = 0; j < 8; j++)
    {
        scales[j] = d * (float)sm[j];
        biases[j] = -dmin * (float)sm[8 + j];
    }
}

// Q4_K super-blocks of 256 { half d, dmin; u8 scales[12]; u8 qs[128] }: chunk c (values 64c..64c+63)
// is qs[32c..32c+31], low nibbles sub-block 2c, high nibbles sub-block 2c+1; sub-block j's 6-bit scale
// and min unpacked as VecDot.ScalesAndMins does, scale d*sc, bias -dmin*m (DecodedRows.DecodeQ4_K).
// The two sub-blocks of a chunk are summed side by side (the high nibbles in place, as in q4_0_8x16)
// and accumulated in order, as the decoded rows are.
AVX512_VNNI static inline void q4_k_8x16(const uint8_t* w, int64_t rowBytes, int32_t blocks, const int8_t* xq0, const int8_t* xq1,
    const float* xd0, const float* xd1, const float* xs0, const float* xs1, const int32_t* xi0, const int32_t* xi1, float* y, int64_t ldy)
{
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8((char)0xF0);
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        float scales[8 * 8], biases[8 * 8]; // [row][sub-block]
        for (int i = 0; i < 8; i++)
        {
            k_scales(w + i * rowBytes + (int64_t)b * 144, scales + i * 8, biases + i * 8);
        }
        for (int chunk = 0; chunk < 4; chunk++)
        {
            int64_t s = (int64_t)b * 8 + 2 * chunk; // the chunk's first sub-block of 32 in the row
            const int8_t* x0 = xq0 + s * 256;
            const int8_t* x1 = xq1 + s * 256;
            prefetch_lines(w + 8 * rowBytes, 8 * rowBytes, 18 * (int64_t)b + 5 * chunk, 5); // 8 x 144 bytes a super-block
            __m512i p[8], q[8];
            zero_sums(p, q);
            for (int k = 0; k < 32; k += 4)
            {
                __m512i lo = activation_pair(x0, x1, 8 * k), hi = activation_pair(x0, x1, 256 + 8 * k);
                for (int i = 0; i < 8; i++)
                {
                    const uint8_t* packed = w + i * rowBytes + (int64_t)b * 144 + 16 + 32 * chunk + k;
                    p[i] = _mm512_dpbusd_epi32(p[i], _mm512_and_si512(_mm512_set1_epi32(load32(packed)), low), lo);
                    q[i] = _mm512_dpbusd_epi32(q[i], _mm512_and_si512(_mm512_set1_epi32(load32(packed)), high), hi);
                }
            }
            for (int i = 0; i < 8; i++)
                q[i] = _mm512_srai_epi32(q[i], 4); // the high nibbles were taken in place, 16 times their value
            accumulate(acc, p, scales + 2 * chunk, biases + 2 * chunk, 8, xd0 + s * 8, xd1 + s * 8, xs0 + s * 8, xs1 + s * 8);
            accumulate(acc, q, scales + 2 * chunk + 1, biases + 2 * chunk + 1, 8, xd0 + (s + 1) * 8, xd1 + (s + 1) * 8, xs0 + (s + 1) * 8, xs1 + (s + 1) * 8);
        }
    }
    store_transposed(acc, y, ldy);
}

// Q6_K super-blocks of 256 { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d }: half h (values 128h..128h+127)
// takes ql[64h..64h+63] and qh[32h..32h+31]; value 128h+32p+l is nibble (p >> 1) of ql[64h+32(p&1)+l]
// with bits 2p, 2p+1 of qh[32h+l] above it, the value code - 32; sub-block j of 16 has scale d*sc[j]
// (DecodedRows.DecodeQ6_K). Unpacking 6-bit codes from a broadcast costs three times the instructions of
// a nibble's, so each super-block of the 8 rows is unpacked once, 64 bytes at a time, into 2 KiB of
// codes that stay in L1, then dotted as codes16_8x16 dots decoded rows, with Q4_0's exact offset
// (MatMul.ExactOffsetReference).
AVX512_VNNI static inline void q6_k_8x16(const uint8_t* w, int64_t rowBytes, int32_t blocks, const int8_t* xq0, const int8_t* xq1,
    const float* xd0, const float* xd1, const float* xs0, const float* xs1, const int32_t* xi0, const int32_t* xi1, float* y, int64_t ldy)
{
    const __m512i nibble = _mm512_set1_epi8(0x0F), high2 = _mm512_set1_epi8(0x30);
    __attribute__((aligned(64))) uint8_t codes[8 * 256];
    float scales[8 * 16]; // [row][sub-block]: d·sc
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        prefetch_lines(w + 8 * rowBytes, 8 * rowBytes, 27 * (int64_t)b, 27); // 8 x 210 bytes a super-block
        for (int i = 0; i < 8; i++)
        {
            const uint8_t* blk = w + i * rowBytes + (int64_t)b * 210;
            for (int h = 0; h < 2; h++)
            {
                // ql: values 32p+l for p = 0,1 in the low nibbles, p = 2,3 in the high; qh2: qh beside qh >> 2,
                // so bits 0-1 (p = 0) and 2-3 (p = 1) both land at 4-5 after << 4, and 4-5, 6-7 in place
                __m512i ql = _mm512_loadu_si512(blk + 64 * h);
                __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h));
                __m512i qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                __m512i lo = _mm512_ternarylogic_epi32(ql, _mm512_and_si512(_mm512_slli_epi16(qh2, 4), high2), nibble, 0xE4); // (ql & 0F) | (qh' & ~0F)
                __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), _mm512_and_si512(qh2, high2), nibble, 0xE4);
                _mm512_store_si512(codes + i * 256 + 128 * h, lo);
                _mm512_store_si512(codes + i * 256 + 128 * h + 64, hi);
            }
            float d = load_half(blk + 208);
            __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(blk + 192))));
            _mm512_storeu_ps(scales + i * 16, _mm512_mul_ps(_mm512_set1_ps(d), sc));
        }
        for (int j = 0; j < 16; j++)
        {
            int64_t h = (int64_t)b * 16 + j; // the sub-block of 16 in the row
            int64_t s = h / 2;                // its block of 32
            // codes are the value + 32: the sums start at -32·Σx (as Q4_0's, offset_sums), so each sub-block
            // adds float(Σ (code - 32)·x)·(d·sc·dx) with one fused multiply-add
            __m512i start = offset_start(xi0 + h * 8, xi1 + h * 8, 5), p[8];
            for (int i = 0; i < 8; i++)
                p[i] = start;
            dot_step(p, codes + j * 16, 256, xq0 + h * 128, xq1 + h * 128, 16);
            __m512 dx = float_pair(xd0 + s * 8, xd1 + s * 8);
            for (int i = 0; i < 8; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[i]), _mm512_mul_ps(_mm512_set1_ps(scales[i * 16 + j]), dx), acc[i]);
        }
    }
    store_transposed(acc, y, ldy);
}

// Q5_K super-blocks of 256 { half d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: Q4_K's nibbles and
// scales with a fifth bit, bit 2c of qh[l] for value 64c+l and bit 2c+1 for value 64c+32+l
// (DecodedRows.DecodeQ4_K with fiveBits). Unpacked as q6_k_8x16 unpacks, two chunks of 64 per 512 bits,
// and run as codes32_8x16 runs decoded rows.
AVX512_VNNI static inline void q5_k_8x16(const uint8_t* w, int64_t rowBytes, int32_t blocks, const int8_t* xq0, const int8_t* xq1,
    const float* xd0, const float* xd1, const float* xs0, const float* xs1, const int32_t* xi0, const int32_t* xi1, float* y, int64_t ldy)
{
    const __m512i nibble = _mm512_set1_epi8(0x0F), sixteen = _mm512_set1_epi8(0x10);
    // the qh bit of each chunk's low and high halves, for chunks (0, 1) and (2, 3) side by side
    const __m512i bitLow01 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(0x01)), _mm256_set1_epi8(0x04), 1);
    const __m512i bitHigh01 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(0x02)), _mm256_set1_epi8(0x08), 1);
    const __m512i bitLow23 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(0x10)), _mm256_set1_epi8(0x40), 1);
    const __m512i bitHigh23 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(0x20)), _mm256_set1_epi8((char)0x80), 1);
    __attribute__((aligned(64))) uint8_t codes[8 * 256];
    float scales[8 * 8], biases[8 * 8]; // [row][sub-block]
    __m512 acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        prefetch_lines(w + 8 * rowBytes, 8 * rowBytes, 22 * (int64_t)b, 22); // 8 x 176 bytes a super-block
        for (int i = 0; i < 8; i++)
        {
            const uint8_t* blk = w + i * rowBytes + (int64_t)b * 176;
            __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 16));
            __m512i qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), qh, 1);
            for (int pair = 0; pair < 2; pair++)
            {
                __m512i ql = _mm512_loadu_si512(blk + 48 + 64 * pair);
                __m512i lo = _mm512_and_si512(ql, nibble), hi = _mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble);
                lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(qh2, pair ? bitLow23 : bitLow01), lo, sixteen);
                hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(qh2, pair ? bitHigh23 : bitHigh01), hi, sixteen);
                // chunk 2·pair: low then high half; chunk 2·pair + 1 the same
                _mm512_store_si512(codes + i * 256 + 128 * pair, _mm512_shuffle_i64x2(lo, hi, 0x44));
                _mm512_store_si512(codes + i * 256 + 128 * pair + 64, _mm512_shuffle_i64x2(lo, hi, 0xEE));
            }
            k_scales(blk, scales + i * 8, biases + i * 8);
        }
        for (int j = 0; j < 8; j++)
        {
            int64_t s = (int64_t)b * 8 + j; // the sub-block of 32 in the row
            __m512i p[8];
            for (int i = 0; i < 8; i++)
                p[i] = _mm512_setzero_si512();
            dot_step(p, codes + j * 32, 256, xq0 + s * 256, xq1 + s * 256, 32);
            accumulate(acc, p, scales + j, biases + j, 8, xd0 + s * 8, xd1 + s * 8, xs0 + s * 8, xs1 + s * 8);
        }
    }
    store_transposed(acc, y, ldy);
}

// Q4_0 and Q8_0 interleaved sixteen rows at a time (built once per matrix by engine_x16_pack): for each group
// of 16 weight rows and each block of 32 values, the 16 rows' scales as floats (64 bytes), then the rows'
// codes four values at a time, row i's four bytes at 4i of each 64: Q4_0 its packed bytes 4k..4k+3 for
// k = 0..3 (low nibbles values 4k..4k+3, high nibbles 16+4k..16+4k+3), 4 x 64 bytes; Q8_0 its values
// 4k..4k+3 for k = 0..7 with the sign bit flipped (code + 128, unsigned as vpdpbusd takes them), 8 x 64.
// One 512-bit load then holds four values of all 16 rows, so a vector's lanes are weight rows and each
// activation row's four bytes are broadcast against it: Q4_0's nibbles are unpacked, Q8_0's signs flipped,
// once per 64 bytes for every activation row, where the file's layout (q4_0_8x16, q8_0_8x16) does it anew
// for each broadcast — one vector instruction a vpdpbusd. Measured, Q4_0, 16 activation rows, K = 768,
// weights from memory, one thread: 0.150 -> 0.097 ns a weight. The arithmetic is the direct kernels' (and
// MatMul.ExactOffsetReference's): Σ (code - offset)·x as an integer, then acc = fma(float(Σ), d·dx, acc)
// block by block — so every output is bit for bit theirs.

// Bytes of one group of 16 rows and one block (type 2 Q4_0, 8 Q8_0: of 32 values; 12 Q4_K, 14 Q6_K: a super-block of 256).
static inline int64_t x16_block_bytes(int type)
{
    switch (type)
    {
        case 2: return 320;
        case 3: return 384;
        case 6: case 7: return 448;
        case 8: return 576;
        case 12: return 2432;
        case 13: return 2944;
        default: return 3392;
    }
}

// Q4_1, Q5_0 and Q5_1 (types 3, 6, 7), whose values are d·code + bias (bias m, or -16·d for Q5_0): per group of
// 16 rows and block of 32, d and the bias as floats (2 x 64 bytes), the packed nibbles as Q4_0's (4 x 64), and
// for Q5_0/Q5_1 the fifth bits, each row's 32 regrouped so that byte k holds the bits of values k, 4 + k, ...,
// 28 + k (value 4s + k at bit s) — one shift then puts step s's four bits at bit 4 of its four bytes (64 bytes).
// 384 bytes (Q4_1, the file 320) or 448 (Q5_0 352, Q5_1 384).
static inline int x16_legacy(int type) { return type == 3 || type == 6 || type == 7; }

// Q6_K interleaved: per group of 16 rows and super-block, d of the 16 rows as floats (64 bytes), the 16
// sub-blocks' scales ([16][16] int8, 256), then ql four bytes at a time — for half h, ql half e (ql[64h+32e..])
// and step s, the rows' ql[64h+32e+4s..+3] side by side (32 x 64 bytes) — then qh the same way (qh[32h+4s..],
// 16 x 64). 3392 bytes where the file holds 3360.

// Q4_K interleaved the same way, per group of 16 rows and super-block: d and dmin of the 16 rows as floats
// (2 x 64 bytes), the 8 sub-blocks' 6-bit scales and mins unpacked to bytes ([8][16] each, 2 x 128), then
// for each chunk c of 64 values (qs[32c..32c+31]: low nibbles sub-block 2c, high nibbles 2c+1) and step s
// the rows' qs[32c+4s..32c+4s+3] side by side (32 x 64 bytes). 2432 bytes where the file holds 2304. Q5_K the
// same, its qs (at 48 in the file's block) likewise, then its fifth bits qh[4s..4s+3] side by side (8 x 64
// bytes; bit j of qh[l] is the fifth bit of value l of sub-block j): 2944 bytes where the file holds 2816.

// Bytes of one block of a row of type in the file (0 for a type without a repacked layout).
static inline int64_t x16_type_bytes(int type)
{
    switch (type)
    {
        case 2: return 18;
        case 3: return 20;
        case 6: return 22;
        case 7: return 24;
        case 8: return 34;
        case 12: return 144;
        case 13: return 176;
        case 14: return 210;
        default: return 0;
    }
}

// Row i (0..15) of a group: its block blk of the file written to its places in the group's block out.
AVX512_VNNI static void x16_pack_row(int type, const uint8_t* blk, uint8_t* out, int i)
{
    if (type == 12 || type == 13)
    {
        float d = load_half(blk), dmin = load_half(blk + 2);
        __builtin_memcpy(out + 4 * i, &d, 4);
        __builtin_memcpy(out + 64 + 4 * i, &dmin, 4);
        uint8_t sm[16];
        k_scale_bytes(blk, sm);
        for (int j = 0; j < 8; j++)
        {
            out[128 + 16 * j + i] = sm[j];
            out[256 + 16 * j + i] = sm[8 + j];
        }
        int qs = type == 12 ? 16 : 48;
        for (int k = 0; k < 32; k++) // chunk k / 8, step k % 8
            __builtin_memcpy(out + 384 + 64 * k + 4 * i, blk + qs + 4 * k, 4);
        if (type == 13)
        {
            for (int k = 0; k < 8; k++)
                __builtin_memcpy(out + 2432 + 64 * k + 4 * i, blk + 16 + 4 * k, 4);
        }
    }
    else if (type == 14)
    {
        float d = load_half(blk + 208);
        __builtin_memcpy(out + 4 * i, &d, 4);
        for (int j = 0; j < 16; j++)
            out[64 + 16 * j + i] = blk[192 + j];
        for (int k = 0; k < 32; k++) // ql: half k / 16, ql half (k / 8) % 2, step k % 8
            __builtin_memcpy(out + 320 + 64 * k + 4 * i, blk + 4 * k, 4);
        for (int k = 0; k < 16; k++) // qh: half k / 8, step k % 8
            __builtin_memcpy(out + 2368 + 64 * k + 4 * i, blk + 128 + 4 * k, 4);
    }
    else if (x16_legacy(type))
    {
        float d = load_half(blk), bias = type == 6 ? -16.0f * d : load_half(blk + 2);
        __builtin_memcpy(out + 4 * i, &d, 4);
        __builtin_memcpy(out + 64 + 4 * i, &bias, 4);
        int qs = type == 3 ? 4 : type == 6 ? 6 : 8;
        for (int k = 0; k < 4; k++)
            __builtin_memcpy(out + 128 + 64 * k + 4 * i, blk + qs + 4 * k, 4);
        if (type != 3)
        {
            uint32_t qh = (uint32_t)load32(blk + (type == 6 ? 2 : 4)), regrouped = 0;
            for (int v = 0; v < 32; v++)
                regrouped |= ((qh >> v) & 1u) << (8 * (v % 4) + v / 4);
            __builtin_memcpy(out + 384 + 4 * i, &regrouped, 4);
        }
    }
    else // Q4_0, Q8_0
    {
        float d = load_half(blk);
        __builtin_memcpy(out + 4 * i, &d, 4);
        for (int k = 0; k < (type == 2 ? 4 : 8); k++)
        {
            uint32_t v = (uint32_t)load32(blk + 2 + 4 * k);
            if (type == 8)
                v ^= 0x80808080u;
            __builtin_memcpy(out + 64 + 64 * k + 4 * i, &v, 4);
        }
    }
}

// rows (a multiple of 16) of type at w, row i at w + i*rowBytes, blocks a row, into dst (rows/16 * blocks *
// x16_block_bytes bytes). Returns -1 (nothing written) for another type.
AVX512_VNNI EXPORT int engine_x16_pack(int32_t type, const uint8_t* w, int64_t rowBytes, int32_t rows, int32_t blocks, uint8_t* dst)
{
    int64_t blockBytes = x16_block_bytes(type), typeBytes = x16_type_bytes(type);
    if (typeBytes == 0)
        return -1;
    for (int32_t g = 0; g < rows / 16; g++)
    {
        for (int32_t b = 0; b < blocks; b++)
        {
            uint8_t* out = dst + ((int64_t)g * blocks + b) * blockBytes;
            for (int i = 0; i < 16; i++)
                x16_pack_row(type, w + ((int64_t)16 * g + i) * rowBytes + (int64_t)b * typeBytes, out, i);
        }
    }
    return 0;
}

// A block's 16 rows of codes, W[s] values 4s..4s+3 (s = 0..7).
AVX512_VNNI static inline __attribute__((always_inline)) void x16_codes(int type, const uint8_t* blk, __m512i W[8])
{
    if (x16_legacy(type))
    {
        const __m512i low = _mm512_set1_epi8(0x0F), bit4 = _mm512_set1_epi8(0x10);
        __m512i h = type == 3 ? _mm512_setzero_si512() : _mm512_loadu_si512(blk + 384);
        for (int s = 0; s < 8; s++)
        {
            __m512i v = _mm512_loadu_si512(blk + 128 + 64 * (s % 4));
            if (s >= 4)
                v = _mm512_srli_epi16(v, 4);
            if (type == 3)
                W[s] = _mm512_and_si512(v, low);
            else
            {
                __m512i hs = s < 4 ? _mm512_slli_epi16(h, 4 - s) : s > 4 ? _mm512_srli_epi16(h, s - 4) : h; // bit s to bit 4
                W[s] = _mm512_ternarylogic_epi32(v, _mm512_and_si512(hs, bit4), low, 0xEC); // (v & 0x0F) | bit
            }
        }
    }
    else if (type == 2)
    {
        const __m512i low = _mm512_set1_epi8(0x0F);
        for (int k = 0; k < 4; k++)
        {
            __m512i v = _mm512_loadu_si512(blk + 64 + 64 * k);
            W[k] = _mm512_and_si512(v, low);
            W[4 + k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
    }
    else
    {
        for (int s = 0; s < 8; s++)
            W[s] = _mm512_loadu_si512(blk + 64 + 64 * s);
    }
}

// Σ code·x over one block of 32 values for the 16 rows (W[s]: values 4s..4s+3), the four activation bytes
// of step s at x + step·s (step 32 in the interleaved groups, 4 in a plain row), the sum starting at start.
// Two chains (values 0..15 and 16..31) joined at the end — the sum is an integer, so exact: eight dependent
// vpdpbusd a row had left the kernels waiting on their latency.
AVX512_VNNI static inline __attribute__((always_inline)) __m512i x16_dot32(const __m512i W[8], const uint8_t* x, int step, __m512i start)
{
    __m512i p = start, h = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int s = 0; s < 4; s++)
    {
        p = _mm512_dpbusd_epi32(p, W[s], _mm512_set1_epi32(load32(x + step * s)));
        h = _mm512_dpbusd_epi32(h, W[4 + s], _mm512_set1_epi32(load32(x + step * (4 + s))));
    }
    return _mm512_add_epi32(p, h);
}

// 16 weight rows (one group, blocks at rp) against the 8 activation rows of one interleaved group (xq: per
// block 256 bytes, step s's 4 values of row r at 32s + 4r; xd, xi: 8 per block): y[r*ldy + i] for weight
// row i. pf: pfBytes to prefetch meanwhile, spread over the blocks.
AVX512_VNNI static inline __attribute__((always_inline)) void x16_group8(int type, const uint8_t* rp, const uint8_t* pf, int64_t pfBytes,
    int32_t blocks, const int8_t* xq, const float* xd, const int32_t* xi, const float* xs, float* y, int64_t ldy)
{
    const int64_t blockBytes = x16_block_bytes(type);
    const int shift = type == 2 ? 3 : 7, lines = (int)(pfBytes / 64 + blocks - 1) / blocks;
    __m512 acc[8];
    for (int r = 0; r < 8; r++)
        acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        const uint8_t* blk = rp + (int64_t)b * blockBytes;
        const uint8_t* x = (const uint8_t*)(xq + (int64_t)b * 256);
        prefetch_lines(pf, pfBytes, lines * (int64_t)b, lines);
        __m512i W[8];
        x16_codes(type, blk, W);
        __m512 d = _mm512_loadu_ps((const float*)blk);
        // the legacy types (d·code + bias): no offset, acc = fma(float(Σ code·x), d·dx, fma(bias, xs, acc)), the
        // decoded rows' arithmetic; Q4_0/Q8_0: the sums start at -offset·Σx and acc = fma(float(Σ), d·dx, acc)
        const int legacy = x16_legacy(type);
        __m512 bias = legacy ? _mm512_loadu_ps((const float*)(blk + 64)) : _mm512_setzero_ps();
        // unrolled so that acc stays in registers
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++)
        {
            __m512i sum = x16_dot32(W, x + 4 * r, 32, legacy ? _mm512_setzero_si512() : _mm512_set1_epi32(-(xi[b * 8 + r] << shift)));
            __m512 start = legacy ? _mm512_fmadd_ps(bias, _mm512_set1_ps(xs[b * 8 + r]), acc[r]) : acc[r];
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, _mm512_set1_ps(xd[b * 8 + r])), start);
        }
    }
    for (int r = 0; r < 8; r++)
        _mm512_storeu_ps(y + r * ldy, acc[r]);
}


// Sub-block j's scales and biases of the 16 rows of a Q4_K super-block: d·sc and (-dmin)·m, as k_scales
// computes them for the direct kernel.
AVX512_VNNI static inline void x16_k_scales(const uint8_t* blk, int j, __m512* scale, __m512* bias)
{
    __m512 d = _mm512_loadu_ps((const float*)blk);
    __m512 negDmin = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_loadu_ps((const float*)(blk + 64))), _mm512_set1_epi32((int)0x80000000)));
    *scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(blk + 128 + 16 * j)))));
    *bias = _mm512_mul_ps(negDmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(blk + 256 + 16 * j)))));
}

// Chunk c's codes of the 16 rows: low nibbles (sub-block 2c) or high (2c+1), W[s] values 4s..4s+3; for Q5_K
// (type 13) with the sub-block's fifth bit from qh put in as 16.
AVX512_VNNI static inline __attribute__((always_inline)) void x16_k_codes(int type, const uint8_t* blk, int c, int high, __m512i W[8])
{
    const __m512i low = _mm512_set1_epi8(0x0F), bit4 = _mm512_set1_epi8(0x10);
    int j = 2 * c + high; // the sub-block: bit j of qh
    for (int s = 0; s < 8; s++)
    {
        __m512i v = _mm512_loadu_si512(blk + 384 + 64 * (8 * c + s));
        if (high)
            v = _mm512_srli_epi16(v, 4);
        if (type == 13)
        {
            __m512i h = _mm512_loadu_si512(blk + 2432 + 64 * s);
            h = j < 4 ? _mm512_slli_epi16(h, 4 - j) : j > 4 ? _mm512_srli_epi16(h, j - 4) : h; // bit j to bit 4
            W[s] = _mm512_ternarylogic_epi32(v, _mm512_and_si512(h, bit4), low, 0xEC); // (v & 0x0F) | bit
        }
        else
            W[s] = _mm512_and_si512(v, low);
    }
}

// x16_group8 for Q4_K: per sub-block j of 32 (activation block b·8 + j) acc = fma(float(Σ code·x), scale·dx,
// fma(bias, xs, acc)) in sub-block order — q4_k_8x16's arithmetic, so bit for bit its outputs.
AVX512_VNNI static inline __attribute__((always_inline)) void x16_k_group8(int type, const uint8_t* rp, const uint8_t* pf, int64_t pfBytes, int32_t blocks, const int8_t* xq,
    const float* xd, const float* xs, float* y, int64_t ldy)
{
    const int lines = (int)(pfBytes / 64 + 8 * blocks - 1) / (8 * blocks);
    __m512 acc[8];
    for (int r = 0; r < 8; r++)
        acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        const uint8_t* blk = rp + (int64_t)b * x16_block_bytes(type);
        for (int j = 0; j < 8; j++)
        {
            int64_t sub = (int64_t)b * 8 + j;
            const uint8_t* x = (const uint8_t*)(xq + sub * 256);
            prefetch_lines(pf, pfBytes, lines * sub, lines);
            __m512i W[8];
            x16_k_codes(type, blk, j / 2, j % 2, W);
            __m512 scale, bias;
            x16_k_scales(blk, j, &scale, &bias);
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++)
            {
                __m512i sum = x16_dot32(W, x + 4 * r, 32, _mm512_setzero_si512());
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(scale, _mm512_set1_ps(xd[sub * 8 + r])),
                    _mm512_fmadd_ps(bias, _mm512_set1_ps(xs[sub * 8 + r]), acc[r]));
            }
        }
    }
    for (int r = 0; r < 8; r++)
        _mm512_storeu_ps(y + r * ldy, acc[r]);
}

// x16_few for Q4_K: plain activation rows with their scaled sums per 32 (xs[j]).
AVX512_VNNI static inline __attribute__((always_inline)) void x16_k_few(int type, const uint8_t* rp, int32_t groups, int32_t blocks, int32_t n, const int8_t* const* q,
    const float* const* d, const float* const* xs, float* const* y)
{
    const int64_t groupBytes = (int64_t)blocks * x16_block_bytes(type);
    for (int32_t g = 0; g < groups; g++)
    {
        const uint8_t* w = rp + g * groupBytes;
        __m512 acc[4];
        for (int j = 0; j < 4; j++)
            acc[j] = _mm512_setzero_ps();
        for (int32_t b = 0; b < blocks; b++)
        {
            const uint8_t* blk = w + (int64_t)b * x16_block_bytes(type);
            for (int k = 0; k < 8; k++)
            {
                int64_t sub = (int64_t)b * 8 + k;
                // the block two ahead, as in x16_q6_few: 6 of its 38 (Q4_K) or 46 (Q5_K) lines a sub-block
                for (int l = 0; l < 6; l++)
                    _mm_prefetch((const char*)(blk + 2 * x16_block_bytes(type) + 64 * (6 * k + l)), _MM_HINT_T0);
                __m512i W[8];
                x16_k_codes(type, blk, k / 2, k % 2, W);
                __m512 scale, bias;
                x16_k_scales(blk, k, &scale, &bias);
                for (int j = 0; j < n; j++)
                {
                    __m512i sum = x16_dot32(W, (const uint8_t*)(q[j] + 32 * sub), 4, _mm512_setzero_si512());
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(scale, _mm512_set1_ps(d[j][sub])),
                        _mm512_fmadd_ps(bias, _mm512_set1_ps(xs[j][sub]), acc[j]));
                }
            }
        }
        for (int j = 0; j < n; j++)
            _mm512_storeu_ps(y[j] + 16 * g, acc[j]);
    }
}


// Q6_K: the 16 rows' 6-bit codes of values 128h + 32·part + 4s..+3 (s = 4·e..4·e+3 for sub-block half e):
// the low 4 bits from ql (half part & 1, nibble part >> 1), bits 4-5 from qh's bits 2·part, 2·part+1.
AVX512_VNNI static inline void x16_q6_codes(const uint8_t* blk, int h, int part, int e, __m512i W[4])
{
    const __m512i low = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
    for (int k = 0; k < 4; k++)
    {
        int s = 4 * e + k;
        __m512i ql = _mm512_loadu_si512(blk + 320 + 64 * (16 * h + 8 * (part & 1) + s));
        __m512i qh = _mm512_loadu_si512(blk + 2368 + 64 * (8 * h + s));
        if (part >> 1)
            ql = _mm512_srli_epi16(ql, 4);
        qh = part == 0 ? _mm512_slli_epi16(qh, 4) : part == 1 ? _mm512_slli_epi16(qh, 2) : part == 3 ? _mm512_srli_epi16(qh, 2) : qh;
        W[k] = _mm512_ternarylogic_epi32(ql, _mm512_and_si512(qh, bits45), low, 0xEC); // (ql & 0x0F) | (qh & 0x30)
    }
}

// Sub-block (8h + 2·part + e)'s scales of the 16 rows: d·sc.
AVX512_VNNI static inline __m512 x16_q6_scale(const uint8_t* blk, int sub)
{
    return _mm512_mul_ps(_mm512_loadu_ps((const float*)blk), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(blk + 64 + 16 * sub)))));
}

// x16_group8 for Q6_K: per sub-block of 16 values in order, Σ (code - 32)·x as an integer (xi: the activations'
// sums per 16, interleaved), then acc = fma(float(Σ), d·sc·dx, acc) — q6_k_8x16's arithmetic (and
// MatMul.ExactOffsetReference's), bit for bit.
AVX512_VNNI static inline void x16_q6_group8(const uint8_t* rp, const uint8_t* pf, int64_t pfBytes, int32_t blocks, const int8_t* xq,
    const float* xd, const int32_t* xi, float* y, int64_t ldy)
{
    const int lines = (int)(pfBytes / 64 + 16 * blocks - 1) / (16 * blocks);
    __m512 acc[8];
    for (int r = 0; r < 8; r++)
        acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++)
    {
        const uint8_t* blk = rp + (int64_t)b * 3392;
        for (int h = 0; h < 2; h++)
        {
            for (int part = 0; part < 4; part++)
            {
                int64_t b32 = (int64_t)b * 8 + 4 * h + part; // the activations' block of 32
                const uint8_t* x = (const uint8_t*)(xq + b32 * 256);
                for (int e = 0; e < 2; e++)
                {
                    int sub = 8 * h + 2 * part + e;
                    prefetch_lines(pf, pfBytes, lines * ((int64_t)b * 16 + sub), lines);
                    __m512i W[4];
                    x16_q6_codes(blk, h, part, e, W);
                    __m512 scale = x16_q6_scale(blk, sub);
#pragma GCC unroll 8
                    for (int r = 0; r < 8; r++)
                    {
                        __m512i p = _mm512_set1_epi32(-(xi[(2 * b32 + e) * 8 + r] << 5)), h = _mm512_setzero_si512();
                        p = _mm512_dpbusd_epi32(p, W[0], _mm512_set1_epi32(load32(x + 32 * (4 * e) + 4 * r)));
                        h = _mm512_dpbusd_epi32(h, W[1], _mm512_set1_epi32(load32(x + 32 * (4 * e + 1) + 4 * r)));
                        p = _mm512_dpbusd_epi32(p, W[2], _mm512_set1_epi32(load32(x + 32 * (4 * e + 2) + 4 * r)));
                        h = _mm512_dpbusd_epi32(h, W[3], _mm512_set1_epi32(load32(x + 32 * (4 * e + 3) + 4 * r)));
                        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(p, h)), _mm512_mul_ps(scale, _mm512_set1_ps(xd[b32 * 8 + r])), acc[r]);
                    }
                }
            }
        }
    }
    for (int r = 0; r < 8; r++)
        _mm512_storeu_ps(y + r * ldy, acc[r]);
}

// x16_few for Q6_K: plain activation rows with their integer sums per 16 (s16[j]).
AVX512_VNNI static void x16_q6_few(const uint8_t* rp, int32_t groups, int32_t blocks, int32_t n, const int8_t* const* q,
    const float* const* d, const int16_t* const* s16, float* const* y)
{
    const int64_t groupBytes = (int64_t)blocks * 3392;
    for (int32_t g = 0; g < groups; g++)
    {
        const uint8_t* w = rp + g * groupBytes;
        __m512 acc[4];
        for (int j = 0; j < 4; j++)
            acc[j] = _mm512_setzero_ps();
        for (int32_t b = 0; b < blocks; b++)
        {
            const uint8_t* blk = w + (int64_t)b * 3392;
            for (int h = 0; h < 2; h++)
            {
                for (int part = 0; part < 4; part++)
                {
                    int64_t b32 = (int64_t)b * 8 + 4 * h + part;
                    for (int e = 0; e < 2; e++)
                    {
                        int sub = 8 * h + 2 * part + e;
                        // the block two ahead (the groups lie one after another), 4 of its 53 lines a sub-block: the
                        // hardware prefetcher does not follow this walk through ql and qh (measured, 110M-shape Q6_K
                        // model, 2 threads: tg32 128-150 -> 381-415 tok/s)
                        for (int l = 0; l < 4; l++)
                            _mm_prefetch((const char*)(blk + 2 * 3392 + 64 * (4 * sub + l)), _MM_HINT_T0);
                        __m512i W[4];
                        x16_q6_codes(blk, h, part, e, W);
                        __m512 scale = x16_q6_scale(blk, sub);
                        for (int j = 0; j < n; j++)
                        {
                            const uint8_t* x = (const uint8_t*)(q[j] + 32 * b32 + 16 * e);
                            __m512i p = _mm512_set1_epi32(-((int32_t)s16[j][2 * b32 + e] << 5)), u = _mm512_setzero_si512();
                            p = _mm512_dpbusd_epi32(p, W[0], _mm512_set1_epi32(load32(x)));
                            u = _mm512_dpbusd_epi32(u, W[1], _mm512_set1_epi32(load32(x + 4)));
                            p = _mm512_dpbusd_epi32(p, W[2], _mm512_set1_epi32(load32(x + 8)));
                            u = _mm512_dpbusd_epi32(u, W[3], _mm512_set1_epi32(load32(x + 12)));
                            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(p, u)), _mm512_mul_ps(scale, _mm512_set1_ps(d[j][b32])), acc[j]);
                        }
                    }
                }
            }
        }
        for (int j = 0; j < n; j++)
            _mm512_storeu_ps(y[j] + 16 * g, acc[j]);
    }
}

// One group of 16 weight rows against one activation group, by type (xi: integer sums per 32, Q6_K's per 16; xs: Q4_K's and Q5_K's scaled sums).
AVX512_VNNI static inline __attribute__((always_inline)) void x16_group8_of(int type, const uint8_t* rp, const uint8_t* pf, int64_t pfBytes, int32_t blocks,
    const int8_t* xq, const float* xd, const int32_t* xi, const float* xs, float* y, int64_t ldy)
{
    if (type == 12 || type == 13)
        x16_k_group8(type, rp, pf, pfBytes, blocks, xq, xd, xs, y, ldy);
    else if (type == 14)
        x16_q6_group8(rp, pf, pfBytes, blocks, xq, xd, xi, y, ldy);
    else
        x16_group8(type, rp, pf, pfBytes, blocks, xq, xd, xi, xs, y, ldy);
}

AVX512_VNNI static inline __attribute__((always_inline)) void x16_rows(int type, const uint8_t* rp, int32_t groups, int32_t blocks,
    const int8_t* xq0, const int8_t* xq1, const float* xd0, const float* xd1, const int32_t* xi0, const int32_t* xi1, const float* xs0, const float* xs1,
    float* y, int64_t ldy)
{
    int64_t groupBytes = (int64_t)blocks * x16_block_bytes(type);
    prefetch_lines(rp, groupBytes, 0, 24);
    for (int32_t g = 0; g < groups; g++)
    {
        const uint8_t* w = rp + g * groupBytes;
        const uint8_t* next = g + 1 < groups ? w + groupBytes : w; // the last group: its own lines, already cached
        int64_t half = groupBytes / 128 * 64; // the next group's first half of lines prefetched in the first pass, the rest in the second
        x16_group8_of(type, w, next, half, blocks, xq0, xd0, xi0, xs0, y + 16 * g, ldy);
        x16_group8_of(type, w, next + half, groupBytes - half, blocks, xq1, xd1, xi1, xs1, y + 8 * ldy + 16 * g, ldy);
    }
}


// Groups [0, groups) of the interleaved layout at rp (weight rows 16g..16g+15) against activation groups g
// and g+1 (as engine_direct_rows takes them): y[r*ldy + 16g + i]. Each group's bytes are read twice, the
// second time from L1; the next group is prefetched meanwhile. Returns -1 (nothing written) for another type.
AVX512_VNNI EXPORT int engine_x16_rows(int32_t type, const uint8_t* rp, int32_t groups, int32_t blocks, const int8_t* xq0, const int8_t* xq1,
    const float* xd0, const float* xd1, const int32_t* xi0, const int32_t* xi1, const float* xs0, const float* xs1, float* y, int64_t ldy)
{
    switch (type)
    {
        case 2: x16_rows(2, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        case 3: x16_rows(3, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        case 6: x16_rows(6, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        case 7: x16_rows(7, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        case 8: x16_rows(8, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        case 12: x16_rows(12, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        case 13: x16_rows(13, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        case 14: x16_rows(14, rp, groups, blocks, xq0, xq1, xd0, xd1, xi0, xi1, xs0, xs1, y, ldy); break;
        default: return -1;
    }
    return 0;
}

// The row kernels' case: n (1..4) activation rows in plain layout (row j: q[j], 32 int8 a block, scales
// d[j]) against groups [0, groups) of the interleaved layout: y[j][16g + i]. Each activation row's result
// is computed on its own, exactly as with n = 1 (and as engine_x16_rows computes it), so a row's output
// does not depend on the rows beside it.
AVX512_VNNI static inline __attribute__((always_inline)) void x16_few(int type, const uint8_t* rp, int32_t groups, int32_t blocks, int32_t n,
    const int8_t* const* q, const float* const* d, const float* const* xs, float* const* y, int32_t sums[4][4096])
{
    const int64_t blockBytes = x16_block_bytes(type), groupBytes = (int64_t)blocks * blockBytes;
    const int shift = type == 2 ? 3 : 7;
    for (int32_t g = 0; g < groups; g++)
    {
        const uint8_t* w = rp + g * groupBytes;
        __m512 acc[4];
        for (int j = 0; j < 4; j++)
            acc[j] = _mm512_setzero_ps();
        for (int32_t b = 0; b < blocks; b++)
        {
            const uint8_t* blk = w + (int64_t)b * blockBytes;
            // the lines about 2.5 KiB ahead (the groups lie one after another), as many as a block has
            for (int l = 0; l < blockBytes / 64; l++)
                _mm_prefetch((const char*)(blk + 2560 + 64 * l), _MM_HINT_T0);
            __m512i W[8];
            x16_codes(type, blk, W);
            __m512 scale = _mm512_loadu_ps((const float*)blk);
            for (int j = 0; j < n; j++)
            {
                __m512i sum = x16_dot32(W, (const uint8_t*)(q[j] + 32 * (int64_t)b),
                    4, x16_legacy(type) ? _mm512_setzero_si512() : _mm512_set1_epi32(-(sums[j][b] << shift)));
                __m512 start = x16_legacy(type) ? _mm512_fmadd_ps(_mm512_loadu_ps((const float*)(blk + 64)), _mm512_set1_ps(xs[j][b]), acc[j]) : acc[j];
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(scale, _mm512_set1_ps(d[j][b])), start);
            }
        }
        for (int j = 0; j < n; j++)
            _mm512_storeu_ps(y[j] + 16 * g, acc[j]);
    }
}

// Returns -1 (nothing written) for another type, more than 4096 blocks a row or n outside 1..4.
AVX512_VNNI EXPORT int engine_x16_few(int32_t type, const uint8_t* rp, int32_t groups, int32_t blocks, int32_t n, const int8_t* const* q,
    const float* const* d, const float* const* xs, const int16_t* const* s16, float* const* y)
{
    if (blocks > 4096 || n < 1 || n > 4 || (type != 2 && type != 8 && !x16_legacy(type) && type != 12 && type != 13 && type != 14))
        return -1;

    if (type == 14)
    {
        x16_q6_few(rp, groups, blocks, n, q, d, s16, y);
        return 0;
    }
    if (type == 12)
    {
        x16_k_few(12, rp, groups, blocks, n, q, d, xs, y);
        return 0;
    }
    if (type == 13)
    {
        x16_k_few(13, rp, groups, blocks, n, q, d, xs, y);
        return 0;
    }
    int32_t sums[4][4096];
    switch (type) // the legacy types' arithmetic takes no integer sums
    {
        case 3: x16_few(3, rp, groups, blocks, n, q, d, xs, y, sums); return 0;
        case 6: x16_few(6, rp, groups, blocks, n, q, d, xs, y, sums); return 0;
        case 7: x16_few(7, rp, groups, blocks, n, q, d, xs, y, sums); return 0;
        default: break;
    }
    for (int j = 0; j < n; j++)
    {
        for (int32_t b = 0; b < blocks; b++)
        {
            __m512i wide = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(q[j] + 32 * (int64_t)b)));
            sums[j][b] = _mm512_reduce_add_epi32(_mm512_madd_epi16(wide, _mm512_set1_epi16(1)));
        }
    }
    if (type == 2)
        x16_few(2, rp, groups, blocks, n, q, d, xs, y, sums);
    else
        x16_few(8, rp, groups, blocks, n, q, d, xs, y, sums);
    return 0;
}

// The exported entry point: rows [0, rows) of w (rows a multiple of 8) of GGML type `type` (2 Q4_0, 8 Q8_0,
// 12 Q4_K, 13 Q5_K, 14 Q6_K; blocks per row: of 32 for Q4_0 and Q8_0, super-blocks of 256 for the rest;
// xs0/xs1 the scaled sums per 32 values; xi0/xi1 the integer sums per 32, which Q4_0 and Q8_0 take
// instead, or per 16 for Q6_K), 8 rows at a time, so that C# makes one call per
// range of rows instead of one per 8 (measured: the per-call dispatch cost ~5% of a 16-row pass).
// Returns 0, or -1 for a type without a kernel here (nothing written).
typedef void (*rows8_kernel)(const uint8_t*, int64_t, int32_t, const int8_t*, const int8_t*, const float*, const float*,
    const float*, const float*, const int32_t*, const int32_t*, float*, int64_t);

AVX512_VNNI EXPORT int engine_direct_rows(int32_t type, const uint8_t* w, int64_t rowBytes, int32_t rows, int32_t blocks, const int8_t* xq0,
    const int8_t* xq1, const float* xd0, const float* xd1, const float* xs0, const float* xs1, const int32_t* xi0, const int32_t* xi1,
    float* y, int64_t ldy)
{
    rows8_kernel kernel;
    switch (type)
    {
        case 2: kernel = q4_0_8x16; break;
        case 8: kernel = q8_0_8x16; break;
        case 12: kernel = q4_k_8x16; break;
        case 13: kernel = q5_k_8x16; break;
        case 14: kernel = q6_k_8x16; break;
        default: return -1;
    }
    prefetch_lines(w, 8 * rowBytes, 0, (int)((8 * rowBytes + 63) / 64));
    for (int32_t o = 0; o + 8 <= rows; o += 8)
        kernel(w + o * rowBytes, rowBytes, blocks, xq0, xq1, xd0, xd1, xs0, xs1, xi0, xi1, y + o, ldy);
    return 0;
}

// The float matrix kernel: F16, BF16 or F32 weights against activations in transposed panels of 16 rows
// (FloatPanels.Transposed: [column][16 rows]), the C# Gemm.F32Outer8x16's arithmetic — per output one chain
// of fused multiply-adds over the columns in order, each weight widened exactly to float — so bit for bit
// its result. Where the C# path widens a block of 32 rows into a buffer (128-256 KiB at K = 768-2048, read
// back from L2) and runs one panel at a time, this widens 8 rows × 64 columns at a time into an L1 tile and
// runs the panels over it (float_outer_one, float_outer_block). Measured, F16, 16 activation rows, one thread,
// weights from memory: 0.30 ns a weight (the same loop in C after a block widening) and 0.43 (the C# kernel)
// -> 0.21; 128 rows 0.26 (C, 8 rows at a time) -> 0.17 a weight and panel of 16.

// 16 values of a row of `type` (0 F32, 1 F16, 30 BF16) from element k, as floats (exact for all three).
AVX512_VNNI static inline __m512 widen16(int type, const uint8_t* row, int64_t k)
{
    if (type == 1)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(row + 2 * k)));
    if (type == 30)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(row + 2 * k))), 16));
    return _mm512_loadu_ps((const float*)row + k);
}

#define OUTER_TK 64
#define OUTER_MAX_PANELS 32
#define OUTER_BLOCK 32

// a[i] += the tile's weight row i (kn columns, OUTER_TK apart) times the panel's columns x ([k][16]): one
// 512-bit activation load and eight FMAs a column, each weight broadcast from the tile.
AVX512_VNNI static inline __attribute__((always_inline)) void outer_tile(const float* tile, int kn, const float* x, __m512 a[8])
{
    for (int k = 0; k < kn; k++, x += 16)
    {
        __m512 xv = _mm512_loadu_ps(x);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            a[i] = _mm512_fmadd_ps(_mm512_set1_ps(tile[i * OUTER_TK + k]), xv, a[i]);
    }
}

// outer_tile for two panels at once: each broadcast weight serves both (measured from L1: 0.176 -> 0.150 ns an
// FMA, the FMA units' peak on this machine; one panel is bound by the broadcasts' loads).
AVX512_VNNI static inline __attribute__((always_inline)) void outer_tile2(const float* tile, int kn, const float* x0, const float* x1, __m512 a[8], __m512 b[8])
{
    for (int k = 0; k < kn; k++, x0 += 16, x1 += 16)
    {
        __m512 u = _mm512_loadu_ps(x0), v = _mm512_loadu_ps(x1);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
        {
            __m512 wk = _mm512_set1_ps(tile[i * OUTER_TK + k]);
            a[i] = _mm512_fmadd_ps(wk, u, a[i]);
            b[i] = _mm512_fmadd_ps(wk, v, b[i]);
        }
    }
}

// One panel (a decoding batch of 16): 8 weight rows at a time, their sums in registers across the tiles; the
// rows two groups on prefetched meanwhile (one group ahead was measured slower from memory).
AVX512_VNNI static void float_outer_one(int type, const uint8_t* w, int64_t rowBytes, int32_t rows, int32_t rowsAfter, int32_t cols,
    const float* xT, float* y, int64_t ldy)
{
    const int elem = type == 0 ? 4 : 2;
    float tile[8 * OUTER_TK] __attribute__((aligned(64)));
    float out[8][16] __attribute__((aligned(64)));
    for (int32_t o = 0; o < rows; o += 8)
    {
        const uint8_t* w0 = w + (int64_t)o * rowBytes;
        __m512 a[8];
        for (int i = 0; i < 8; i++)
            a[i] = _mm512_setzero_ps();
        for (int32_t k0 = 0; k0 < cols; k0 += OUTER_TK)
        {
            int kn = cols - k0 < OUTER_TK ? cols - k0 : OUTER_TK;
            for (int i = 0; i < 8; i++)
            {
                const uint8_t* row = w0 + (int64_t)i * rowBytes;
                if (o + 16 + i < rows + rowsAfter)
                {
                    const uint8_t* ahead = row + 16 * rowBytes + (int64_t)k0 * elem;
                    for (int l = 0; l < kn * elem; l += 64)
                        _mm_prefetch((const char*)(ahead + l), _MM_HINT_T0);
                }
                for (int j = 0; j < kn; j += 16)
                    _mm512_store_ps(tile + i * OUTER_TK + j, widen16(type, row, k0 + j));
            }
            outer_tile(tile, kn, xT + (int64_t)k0 * 16, a);
        }
        for (int i = 0; i < 8; i++)
            _mm512_store_ps(out[i], a[i]);
        for (int r = 0; r < 16; r++)
        {
            for (int i = 0; i < 8; i++)
                y[(int64_t)r * ldy + o + i] = out[i][r];
        }
    }
}

// Two panels or more (prefill): blocks of OUTER_BLOCK weight rows, their tiles widened once per 64 columns, then
// the panels by pairs over every tile of the block, the sums in acc between tiles — so each pair's 64 columns
// of activations are read from L1 once per tile of the block, not once per 8 weight rows from L2. Measured, 8
// panels, one thread, weights from memory: 0.26 ns a weight and panel (8 rows at a time) -> 0.17.
AVX512_VNNI static void float_outer_block(int type, const uint8_t* w, int64_t rowBytes, int32_t rows, int32_t rowsAfter, int32_t cols,
    const float* xT, int32_t panels, float* y, int64_t ldy)
{
    const int elem = type == 0 ? 4 : 2;
    float tile[OUTER_BLOCK / 8][8 * OUTER_TK] __attribute__((aligned(64)));
    float acc[OUTER_MAX_PANELS][OUTER_BLOCK][16] __attribute__((aligned(64)));
    for (int32_t o = 0; o < rows; o += OUTER_BLOCK)
    {
        int tiles = (rows - o) / 8 < OUTER_BLOCK / 8 ? (rows - o) / 8 : OUTER_BLOCK / 8;
        for (int p = 0; p < panels; p++)
        {
            for (int i = 0; i < 8 * tiles; i++)
                _mm512_store_ps(acc[p][i], _mm512_setzero_ps());
        }
        for (int32_t k0 = 0; k0 < cols; k0 += OUTER_TK)
        {
            int kn = cols - k0 < OUTER_TK ? cols - k0 : OUTER_TK;
            for (int i = 0; i < 8 * tiles; i++)
            {
                const uint8_t* row = w + (int64_t)(o + i) * rowBytes;
                if (o + OUTER_BLOCK + i < rows + rowsAfter) // the next block's same columns
                {
                    const uint8_t* ahead = row + OUTER_BLOCK * rowBytes + (int64_t)k0 * elem;
                    for (int l = 0; l < kn * elem; l += 64)
                        _mm_prefetch((const char*)(ahead + l), _MM_HINT_T0);
                }
                for (int j = 0; j < kn; j += 16)
                    _mm512_store_ps(tile[i / 8] + i % 8 * OUTER_TK + j, widen16(type, row, k0 + j));
            }
            for (int p = 0; p < panels; p += 2)
            {
                const float* x0 = xT + (int64_t)p * 16 * cols + (int64_t)k0 * 16;
                for (int t = 0; t < tiles; t++)
                {
                    __m512 b[8], c[8];
                    for (int i = 0; i < 8; i++)
                        b[i] = _mm512_load_ps(acc[p][8 * t + i]);
                    if (p + 1 == panels)
                        outer_tile(tile[t], kn, x0, b);
                    else
                    {
                        for (int i = 0; i < 8; i++)
                            c[i] = _mm512_load_ps(acc[p + 1][8 * t + i]);
                        outer_tile2(tile[t], kn, x0, x0 + 16 * (int64_t)cols, b, c);
                        for (int i = 0; i < 8; i++)
                            _mm512_store_ps(acc[p + 1][8 * t + i], c[i]);
                    }
                    for (int i = 0; i < 8; i++)
                        _mm512_store_ps(acc[p][8 * t + i], b[i]);
                }
            }
        }
        for (int p = 0; p < panels; p++)
        {
            for (int r = 0; r < 16; r++)
            {
                float* out = y + (int64_t)(16 * p + r) * ldy + o;
                for (int i = 0; i < 8 * tiles; i++)
                    out[i] = acc[p][i][r];
            }
        }
    }
}

// Weight rows [0, rows) (rows a multiple of 8, each rowBytes apart, cols a multiple of 16) against `panels`
// (1..32) transposed panels at xT (panel p at xT + 16·cols·p): y[(16p + r)·ldy + o] for activation row 16p + r
// and weight row o. rowsAfter: rows of the matrix that follow (prefetched too: a thread's next chunk is usually
// the next range). Returns -1 (nothing written) for another type or shape.
AVX512_VNNI EXPORT int engine_float_outer(int32_t type, const uint8_t* w, int64_t rowBytes, int32_t rows, int32_t rowsAfter, int32_t cols,
    const float* xT, int32_t panels, float* y, int64_t ldy)
{
    if ((type != 0 && type != 1 && type != 30) || rows % 8 != 0 || rowsAfter < 0 || cols % 16 != 0 || cols <= 0 || panels < 1 || panels > OUTER_MAX_PANELS)
        return -1;
    if (panels == 1)
        float_outer_one(type, w, rowBytes, rows, rowsAfter, cols, xT, y, ldy);
    else
        float_outer_block(type, w, rowBytes, rows, rowsAfter, cols, xT, panels, y, ldy);
    return 0;
}
