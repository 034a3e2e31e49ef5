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
    /// <see cref="Codes32"/> for two activation groups at once (16 rows): each broadcast of 4 weight codes
    /// feeds two vpdpbusd, one per group, which saves a quarter of the instructions per multiply-add.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Codes32x2<T>(byte* codes, float* scales, float* biases, int blocks, QuantizedActivations x, int group, float* y) where T : IIsa
    {
        sbyte* xq0 = x.InterleavedQ(group), xq1 = x.InterleavedQ(group + 1);
        float* xd0 = x.InterleavedD(group), xd1 = x.InterleavedD(group + 1);
        float* xs0 = x.InterleavedScaledSums32(group), xs1 = x.InterleavedScaledSums32(group + 1);
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        var bias0 = Vector256<float>.Zero;
        var bias1 = Vector256<float>.Zero;
        for (int b = 0; b < blocks; b++)
        {
            byte* c = codes + b * 32;
            sbyte* x0 = xq0 + b * 256, x1 = xq1 + b * 256;
            Vector256<int> p0 = default, p1 = default, q0 = default, q1 = default;
            for (int k = 0; k < 8; k += 2)
            {
                var ca = Avx2.BroadcastScalarToVector256((uint*)(c + 4 * k)).AsByte();
                var cb = Avx2.BroadcastScalarToVector256((uint*)(c + 4 * k + 4)).AsByte();
                p0 = VecDot.DotUnsigned<T>(p0, ca, Vector256.Load(x0 + 32 * k));
                q0 = VecDot.DotUnsigned<T>(q0, ca, Vector256.Load(x1 + 32 * k));
                p1 = VecDot.DotUnsigned<T>(p1, cb, Vector256.Load(x0 + 32 * k + 32));
                q1 = VecDot.DotUnsigned<T>(q1, cb, Vector256.Load(x1 + 32 * k + 32));
            }
            var scale = Vector256.Create(scales[b]);
            var bias = Vector256.Create(biases[b]);
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p0 + p1), scale * Vector256.Load(xd0 + b * G), acc0);
            acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(q0 + q1), scale * Vector256.Load(xd1 + b * G), acc1);
            bias0 = Fma.MultiplyAdd(bias, Vector256.Load(xs0 + b * G), bias0);
            bias1 = Fma.MultiplyAdd(bias, Vector256.Load(xs1 + b * G), bias1);
        }
        (acc0 + bias0).Store(y);
        (acc1 + bias1).Store(y + G);
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
