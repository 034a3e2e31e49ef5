using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Matrix-matrix kernels for batches (prompt processing, draft trees): one weight row against a group
/// of 8 activation rows at once. The weights stay where they are in the mapped file; a block of rows is
/// decoded once into plain byte codes with float scales (<see cref="DecodedRows"/>), and it is the
/// activations that are re-laid out (<see cref="QuantizedActivations.Interleave"/>) so that one 4-byte
/// broadcast of weight codes, multiplied by one 32-byte activation vector with vpdpbusd, gives the
/// partial dot products of all 8 rows. Scales are applied to 8 rows with one vector multiply.
/// </summary>
/// <remarks>
/// Requires AVX2+FMA; callers fall back to <see cref="VecDot"/> otherwise. Activations are always Q8_0
/// here (per-32 scales), so for k-quant weights the result differs from <see cref="VecDot"/>'s (which
/// uses Q8_K activations) by activation rounding only — both are within the bound the tests check.
/// </remarks>
public static unsafe class Gemm
{
    private const int G = QuantizedActivations.Group;

    /// <summary>Σ over the 32 columns of one block: 8 broadcasts of 4 weight codes × 8 interleaved activation vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Block32<T>(Vector256<int> acc, byte* codes, sbyte* x) where T : IIsa
    {
        // Unrolled by hand (the JIT keeps the loop otherwise, and its bookkeeping costs as much as the
        // work), in four independent chains so consecutive vpdpbusd do not wait on each other's result.
        var a0 = Dot4<T>(acc, codes, x);
        var a1 = Dot4<T>(Vector256<int>.Zero, codes + 4, x + 32);
        var a2 = Dot4<T>(Vector256<int>.Zero, codes + 8, x + 64);
        var a3 = Dot4<T>(Vector256<int>.Zero, codes + 12, x + 96);
        a0 = Dot4<T>(a0, codes + 16, x + 128);
        a1 = Dot4<T>(a1, codes + 20, x + 160);
        a2 = Dot4<T>(a2, codes + 24, x + 192);
        a3 = Dot4<T>(a3, codes + 28, x + 224);
        return (a0 + a1) + (a2 + a3);
    }

    /// <summary>4 weight codes (broadcast) against 4 columns of 8 interleaved activation rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Dot4<T>(Vector256<int> acc, byte* codes, sbyte* x) where T : IIsa =>
        VecDot.DotUnsigned<T>(acc, Avx2.BroadcastScalarToVector256((uint*)codes).AsByte(), Vector256.Load(x));

    /// <summary>
    /// One decoded weight row (<see cref="DecodedRows"/>, sub-blocks of 32) against the 8 rows of an
    /// activation group: y[r] = Σ_b scale_b·dx_b[r]·Σ code·xq[r] + bias_b·(dx_b·Σxq)[r].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Codes32<T>(byte* codes, float* scales, float* biases, int blocks, QuantizedActivations x, int group, float* y) where T : IIsa
    {
        sbyte* xq = x.InterleavedQ(group);
        float* xd = x.InterleavedD(group);
        float* xs = x.InterleavedScaledSums32(group);
        var acc = Vector256<float>.Zero;
        var bias = Vector256<float>.Zero;
        for (int b = 0; b < blocks; b++)
        {
            var dot = Block32<T>(Vector256<int>.Zero, codes + b * 32, xq + b * 256);
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), Vector256.Create(scales[b]) * Vector256.Load(xd + b * G), acc);
            bias = Fma.MultiplyAdd(Vector256.Create(biases[b]), Vector256.Load(xs + b * G), bias);
        }
        (acc + bias).Store(y);
    }

    /// <summary>
    /// Four decoded weight rows (codes, scales and biases at a stride of one row) against two activation
    /// groups: each activation vector feeds four vpdpbusd and each code broadcast two, the fewest
    /// instructions per multiply-add of these kernels. y: [4 weight rows][16 activation rows].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    public static void Codes32x4x2<T>(byte* codes, long codeStride, float* scales, float* biases, long scaleStride, int blocks,
        QuantizedActivations x, int group, float* y) where T : IIsa
    {
        sbyte* xq0 = x.InterleavedQ(group), xq1 = x.InterleavedQ(group + 1);
        float* xd0 = x.InterleavedD(group), xd1 = x.InterleavedD(group + 1);
        float* xs0 = x.InterleavedScaledSums32(group), xs1 = x.InterleavedScaledSums32(group + 1);
        Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default, a20 = default, a21 = default, a30 = default, a31 = default;
        byte* c0 = codes, c1 = codes + codeStride, c2 = codes + 2 * codeStride, c3 = codes + 3 * codeStride;
        for (int b = 0; b < blocks; b++)
        {
            sbyte* x0 = xq0 + b * 256, x1 = xq1 + b * 256;
            Vector256<int> p00 = default, p01 = default, p10 = default, p11 = default, p20 = default, p21 = default, p30 = default, p31 = default;
            int cb = b * 32;
            for (int k = 0; k < 32; k += 4)
            {
                var v0 = Vector256.Load(x0 + 8 * k);
                var v1 = Vector256.Load(x1 + 8 * k);
                var w0 = Avx2.BroadcastScalarToVector256((uint*)(c0 + cb + k)).AsByte();
                var w1 = Avx2.BroadcastScalarToVector256((uint*)(c1 + cb + k)).AsByte();
                var w2 = Avx2.BroadcastScalarToVector256((uint*)(c2 + cb + k)).AsByte();
                var w3 = Avx2.BroadcastScalarToVector256((uint*)(c3 + cb + k)).AsByte();
                p00 = VecDot.DotUnsigned<T>(p00, w0, v0);
                p01 = VecDot.DotUnsigned<T>(p01, w0, v1);
                p10 = VecDot.DotUnsigned<T>(p10, w1, v0);
                p11 = VecDot.DotUnsigned<T>(p11, w1, v1);
                p20 = VecDot.DotUnsigned<T>(p20, w2, v0);
                p21 = VecDot.DotUnsigned<T>(p21, w2, v1);
                p30 = VecDot.DotUnsigned<T>(p30, w3, v0);
                p31 = VecDot.DotUnsigned<T>(p31, w3, v1);
            }
            var dx0 = Vector256.Load(xd0 + b * G);
            var dx1 = Vector256.Load(xd1 + b * G);
            var s0 = Vector256.Load(xs0 + b * G);
            var s1 = Vector256.Load(xs1 + b * G);
            Step(ref a00, ref a01, p00, p01, scales[b], biases[b], dx0, dx1, s0, s1);
            Step(ref a10, ref a11, p10, p11, scales[scaleStride + b], biases[scaleStride + b], dx0, dx1, s0, s1);
            Step(ref a20, ref a21, p20, p21, scales[2 * scaleStride + b], biases[2 * scaleStride + b], dx0, dx1, s0, s1);
            Step(ref a30, ref a31, p30, p31, scales[3 * scaleStride + b], biases[3 * scaleStride + b], dx0, dx1, s0, s1);
        }
        a00.Store(y); a01.Store(y + 8);
        a10.Store(y + 16); a11.Store(y + 24);
        a20.Store(y + 32); a21.Store(y + 40);
        a30.Store(y + 48); a31.Store(y + 56);
    }

    /// <summary>
    /// <see cref="Codes32x4x2"/> for sub-blocks of 16 (Q6_K, Q3_K, Q2_K): each block of 32 is taken as its
    /// two halves, each with its own scale, bias and activation sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    public static void Codes16x4x2<T>(byte* codes, long codeStride, float* scales, float* biases, long scaleStride, int blocks,
        QuantizedActivations x, int group, float* y) where T : IIsa
    {
        sbyte* xq0 = x.InterleavedQ(group), xq1 = x.InterleavedQ(group + 1);
        float* xd0 = x.InterleavedD(group), xd1 = x.InterleavedD(group + 1);
        float* xs0 = x.InterleavedScaledSums16(group), xs1 = x.InterleavedScaledSums16(group + 1);
        Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default, a20 = default, a21 = default, a30 = default, a31 = default;
        byte* c0 = codes, c1 = codes + codeStride, c2 = codes + 2 * codeStride, c3 = codes + 3 * codeStride;
        for (int h = 0; h < 2 * blocks; h++) // halves of blocks: sub-blocks of 16
        {
            int b = h / 2;
            sbyte* x0 = xq0 + h * 128, x1 = xq1 + h * 128;
            Vector256<int> p00 = default, p01 = default, p10 = default, p11 = default, p20 = default, p21 = default, p30 = default, p31 = default;
            int ch = h * 16;
            for (int k = 0; k < 16; k += 4)
            {
                var v0 = Vector256.Load(x0 + 8 * k);
                var v1 = Vector256.Load(x1 + 8 * k);
                var w0 = Avx2.BroadcastScalarToVector256((uint*)(c0 + ch + k)).AsByte();
                var w1 = Avx2.BroadcastScalarToVector256((uint*)(c1 + ch + k)).AsByte();
                var w2 = Avx2.BroadcastScalarToVector256((uint*)(c2 + ch + k)).AsByte();
                var w3 = Avx2.BroadcastScalarToVector256((uint*)(c3 + ch + k)).AsByte();
                p00 = VecDot.DotUnsigned<T>(p00, w0, v0);
                p01 = VecDot.DotUnsigned<T>(p01, w0, v1);
                p10 = VecDot.DotUnsigned<T>(p10, w1, v0);
                p11 = VecDot.DotUnsigned<T>(p11, w1, v1);
                p20 = VecDot.DotUnsigned<T>(p20, w2, v0);
                p21 = VecDot.DotUnsigned<T>(p21, w2, v1);
                p30 = VecDot.DotUnsigned<T>(p30, w3, v0);
                p31 = VecDot.DotUnsigned<T>(p31, w3, v1);
            }
            var dx0 = Vector256.Load(xd0 + b * G);
            var dx1 = Vector256.Load(xd1 + b * G);
            var s0 = Vector256.Load(xs0 + h * G);
            var s1 = Vector256.Load(xs1 + h * G);
            Step(ref a00, ref a01, p00, p01, scales[h], biases[h], dx0, dx1, s0, s1);
            Step(ref a10, ref a11, p10, p11, scales[scaleStride + h], biases[scaleStride + h], dx0, dx1, s0, s1);
            Step(ref a20, ref a21, p20, p21, scales[2 * scaleStride + h], biases[2 * scaleStride + h], dx0, dx1, s0, s1);
            Step(ref a30, ref a31, p30, p31, scales[3 * scaleStride + h], biases[3 * scaleStride + h], dx0, dx1, s0, s1);
        }
        a00.Store(y); a01.Store(y + 8);
        a10.Store(y + 16); a11.Store(y + 24);
        a20.Store(y + 32); a21.Store(y + 40);
        a30.Store(y + 48); a31.Store(y + 56);
    }

    /// <summary>acc += dot·scale·dx + bias·(dx·Σx), for both groups of one weight row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(ref Vector256<float> acc0, ref Vector256<float> acc1, Vector256<int> dot0, Vector256<int> dot1,
        float scale, float bias, Vector256<float> dx0, Vector256<float> dx1, Vector256<float> sums0, Vector256<float> sums1)
    {
        var sv = Vector256.Create(scale);
        var bv = Vector256.Create(bias);
        acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot0), sv * dx0, Fma.MultiplyAdd(bv, sums0, acc0));
        acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot1), sv * dx1, Fma.MultiplyAdd(bv, sums1, acc1));
    }

    /// <summary>As <see cref="Codes32"/> for sub-blocks of 16 (two per activation block of 32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Codes16<T>(byte* codes, float* scales, float* biases, int blocks, QuantizedActivations x, int group, float* y) where T : IIsa
    {
        sbyte* xq = x.InterleavedQ(group);
        float* xd = x.InterleavedD(group);
        float* xs = x.InterleavedScaledSums16(group);
        var acc = Vector256<float>.Zero;
        var bias = Vector256<float>.Zero;
        for (int b = 0; b < blocks; b++)
        {
            byte* c = codes + b * 32;
            sbyte* xb = xq + b * 256;
            var lo = Dot4<T>(Dot4<T>(Vector256<int>.Zero, c, xb), c + 4, xb + 32);
            var lo2 = Dot4<T>(Dot4<T>(Vector256<int>.Zero, c + 8, xb + 64), c + 12, xb + 96);
            var hi = Dot4<T>(Dot4<T>(Vector256<int>.Zero, c + 16, xb + 128), c + 20, xb + 160);
            var hi2 = Dot4<T>(Dot4<T>(Vector256<int>.Zero, c + 24, xb + 192), c + 28, xb + 224);
            var dx = Vector256.Load(xd + b * G);
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(lo + lo2), Vector256.Create(scales[2 * b]) * dx, acc);
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(hi + hi2), Vector256.Create(scales[2 * b + 1]) * dx, acc);
            bias = Fma.MultiplyAdd(Vector256.Create(biases[2 * b]), Vector256.Load(xs + 2 * b * G), bias);
            bias = Fma.MultiplyAdd(Vector256.Create(biases[2 * b + 1]), Vector256.Load(xs + (2 * b + 1) * G), bias);
        }
        (acc + bias).Store(y);
    }

    /// <summary>
    /// F32 weights (F16 ones are widened to F32 first, once per cache block) against 16 float activation
    /// rows: each weight vector feeds 16 FMAs into 16 accumulators (AVX-512 machines have the 32
    /// registers this needs), so the FMA units set the pace. Covers <paramref name="count"/>
    /// columns (a multiple of 8) of a <see cref="FloatPanels"/> panel at <paramref name="x"/>; y[r] for its 16 rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    public static void F32x16(float* w, int count, float* x, float* y) => Float16Rows<FloatWeights>((byte*)w, count, x, y);

    private interface IFloatWeights
    {
        static abstract Vector256<float> Load(byte* w, int i);
    }

    private readonly struct FloatWeights : IFloatWeights
    {
        public static Vector256<float> Load(byte* w, int i) => Vector256.Load((float*)w + i);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Float16Rows<TW>(byte* w, int count, float* x, float* y) where TW : IFloatWeights
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default, b6 = default, b7 = default;
        // x is a packed panel: for every 8 columns, 16 rows × 8 floats, one after the other.
        for (int i = 0; i < count; i += 8, x += 128)
        {
            var wv = TW.Load(w, i);
            a0 = Fma.MultiplyAdd(wv, Vector256.Load(x), a0);
            a1 = Fma.MultiplyAdd(wv, Vector256.Load(x + 8), a1);
            a2 = Fma.MultiplyAdd(wv, Vector256.Load(x + 16), a2);
            a3 = Fma.MultiplyAdd(wv, Vector256.Load(x + 24), a3);
            a4 = Fma.MultiplyAdd(wv, Vector256.Load(x + 32), a4);
            a5 = Fma.MultiplyAdd(wv, Vector256.Load(x + 40), a5);
            a6 = Fma.MultiplyAdd(wv, Vector256.Load(x + 48), a6);
            a7 = Fma.MultiplyAdd(wv, Vector256.Load(x + 56), a7);
            b0 = Fma.MultiplyAdd(wv, Vector256.Load(x + 64), b0);
            b1 = Fma.MultiplyAdd(wv, Vector256.Load(x + 72), b1);
            b2 = Fma.MultiplyAdd(wv, Vector256.Load(x + 80), b2);
            b3 = Fma.MultiplyAdd(wv, Vector256.Load(x + 88), b3);
            b4 = Fma.MultiplyAdd(wv, Vector256.Load(x + 96), b4);
            b5 = Fma.MultiplyAdd(wv, Vector256.Load(x + 104), b5);
            b6 = Fma.MultiplyAdd(wv, Vector256.Load(x + 112), b6);
            b7 = Fma.MultiplyAdd(wv, Vector256.Load(x + 120), b7);
        }
        Transpose8Sums(a0, a1, a2, a3, a4, a5, a6, a7).Store(y);
        Transpose8Sums(b0, b1, b2, b3, b4, b5, b6, b7).Store(y + 8);
    }

    /// <summary>Float weights against 8 float activation rows (an odd group left after the 16-row kernels).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    public static void F32(float* w, int count, float* x, float* y) => Float8Rows<FloatWeights>((byte*)w, count, x, y);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Float8Rows<TW>(byte* w, int count, float* x, float* y) where TW : IFloatWeights
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        // x is a packed panel of 8 rows: for every 8 columns, 8 rows × 8 floats.
        for (int i = 0; i < count; i += 8, x += 64)
        {
            var wv = TW.Load(w, i);
            a0 = Fma.MultiplyAdd(wv, Vector256.Load(x), a0);
            a1 = Fma.MultiplyAdd(wv, Vector256.Load(x + 8), a1);
            a2 = Fma.MultiplyAdd(wv, Vector256.Load(x + 16), a2);
            a3 = Fma.MultiplyAdd(wv, Vector256.Load(x + 24), a3);
            a4 = Fma.MultiplyAdd(wv, Vector256.Load(x + 32), a4);
            a5 = Fma.MultiplyAdd(wv, Vector256.Load(x + 40), a5);
            a6 = Fma.MultiplyAdd(wv, Vector256.Load(x + 48), a6);
            a7 = Fma.MultiplyAdd(wv, Vector256.Load(x + 56), a7);
        }
        Transpose8Sums(a0, a1, a2, a3, a4, a5, a6, a7).Store(y);
    }

    /// <summary>
    /// Eight F32 weight rows (stride <paramref name="stride"/>) against a transposed 16-row panel
    /// ([column][16 rows], <see cref="FloatPanels.Transposed"/>): an outer product per column — one
    /// 512-bit activation load and eight FMAs, each with the weight broadcast straight from memory — so
    /// the lanes are the 16 activation rows and no horizontal sums are needed. y: [8 weight rows][16].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    public static void F32Outer8x16(float* w, long stride, int cols, float* xT, float* y)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        float* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        float* w4 = w + 4 * stride, w5 = w + 5 * stride, w6 = w + 6 * stride, w7 = w + 7 * stride;
        for (int k = 0; k < cols; k++, xT += 16)
        {
            var x = Vector512.Load(xT);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(w0[k]), x, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(w1[k]), x, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(w2[k]), x, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(w3[k]), x, a3);
            a4 = Vector512.FusedMultiplyAdd(Vector512.Create(w4[k]), x, a4);
            a5 = Vector512.FusedMultiplyAdd(Vector512.Create(w5[k]), x, a5);
            a6 = Vector512.FusedMultiplyAdd(Vector512.Create(w6[k]), x, a6);
            a7 = Vector512.FusedMultiplyAdd(Vector512.Create(w7[k]), x, a7);
        }
        a0.Store(y);
        a1.Store(y + 16);
        a2.Store(y + 32);
        a3.Store(y + 48);
        a4.Store(y + 64);
        a5.Store(y + 80);
        a6.Store(y + 96);
        a7.Store(y + 112);
    }

    /// <summary>The horizontal sums of eight vectors, as one vector (lane i = Σ of vector i).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Transpose8Sums(Vector256<float> a0, Vector256<float> a1, Vector256<float> a2, Vector256<float> a3,
        Vector256<float> a4, Vector256<float> a5, Vector256<float> a6, Vector256<float> a7)
    {
        var s01 = Avx.HorizontalAdd(a0, a1);
        var s23 = Avx.HorizontalAdd(a2, a3);
        var s45 = Avx.HorizontalAdd(a4, a5);
        var s67 = Avx.HorizontalAdd(a6, a7);
        var s0123 = Avx.HorizontalAdd(s01, s23);     // per 128-bit lane: [a0 a1 a2 a3] partials
        var s4567 = Avx.HorizontalAdd(s45, s67);
        var low = Avx.Permute2x128(s0123, s4567, 0x20);
        var high = Avx.Permute2x128(s0123, s4567, 0x31);
        return low + high;
    }
}
