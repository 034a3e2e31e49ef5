using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Matrix-matrix kernels for batches (prompt processing, draft trees): one weight row against a group
/// of 8 activation rows at once. The weights stay where they are in the mapped file; it is the
/// activations that are re-laid out (<see cref="QuantizedActivations.Interleave"/>) so that one 4-byte
/// broadcast of unpacked weight codes, multiplied by one 32-byte activation vector with vpdpbusd, gives
/// the partial dot products of all 8 rows. Each weight block is unpacked once per 8 rows instead of once
/// per row, and block scales are applied to 8 rows with one vector multiply.
/// </summary>
/// <remarks>
/// Results equal the row-by-row <see cref="VecDot"/> kernels up to float summation order (the integer
/// dot products are identical). Requires AVX2+FMA; callers fall back to <see cref="VecDot"/> otherwise.
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

    /// <summary>Q8_0 weights: codes made unsigned by +128 (xor 0x80), corrected by -128·d·Σx.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Q8_0<T>(byte* w, int blocks, QuantizedActivations x, int group, float* y) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        sbyte* xq = x.InterleavedQ(group);
        float* xd = x.InterleavedD(group);
        float* xs = x.InterleavedScaledSums(group);
        byte* codes = stackalloc byte[32];
        var acc = Vector256<float>.Zero;
        var offset = Vector256<float>.Zero;
        var flip = Vector256.Create((byte)0x80);
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 34;
            (Vector256.Load(blk + 2) ^ flip).Store(codes);
            var dot = Block32<T>(Vector256<int>.Zero, codes, xq + b * 256);
            var dw = Vector256.Create(half[*(ushort*)blk]);
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), dw * Vector256.Load(xd + b * G), acc);
            offset = Fma.MultiplyAdd(dw, Vector256.Load(xs + b * G), offset);
        }
        (acc - offset * 128f).Store(y);
    }

    /// <summary>Q4_0 weights: nibbles are unsigned codes 0..15, corrected by -8·d·Σx.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Q4_0<T>(byte* w, int blocks, QuantizedActivations x, int group, float* y) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        sbyte* xq = x.InterleavedQ(group);
        float* xd = x.InterleavedD(group);
        float* xs = x.InterleavedScaledSums(group);
        byte* codes = stackalloc byte[32];
        var acc = Vector256<float>.Zero;
        var offset = Vector256<float>.Zero;
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 18;
            VecDot.Nibbles(blk + 2).Store(codes);
            var dot = Block32<T>(Vector256<int>.Zero, codes, xq + b * 256);
            var dw = Vector256.Create(half[*(ushort*)blk]);
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), dw * Vector256.Load(xd + b * G), acc);
            offset = Fma.MultiplyAdd(dw, Vector256.Load(xs + b * G), offset);
        }
        (acc - offset * 8f).Store(y);
    }

    /// <summary>Q4_K weights: per sub-block of 32 an integer scale (applied with vpmulld) and a min (via the 16-sums).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Q4_K<T>(byte* w, int blocks, QuantizedActivations x, int group, float* y) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        sbyte* xq = x.InterleavedQ(group);
        float* xd = x.InterleavedD(group);
        int* xs = x.InterleavedSums16(group);
        byte* codes = stackalloc byte[64];
        byte* sm = stackalloc byte[16];
        var acc = Vector256<float>.Zero;
        var mask = Vector256.Create((byte)0x0F);
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 144;
            VecDot.ScalesAndMins(blk + 4).Store(sm); // sm[0..7] scales, sm[8..15] mins
            sbyte* xb = xq + b * 256 * G;
            int* sb = xs + b * 16 * G;
            var sumi = Vector256<int>.Zero;
            var mins = Vector256<int>.Zero;
            for (int c = 0; c < 4; c++)
            {
                var q = Vector256.Load(blk + 16 + c * 32);
                (q & mask).Store(codes);
                (Vector256.ShiftRightLogical(q.AsUInt16(), 4).AsByte() & mask).Store(codes + 32);
                var lo = Block32<T>(Vector256<int>.Zero, codes, xb + c * 64 * G);
                var hi = Block32<T>(Vector256<int>.Zero, codes + 32, xb + (c * 64 + 32) * G);
                sumi += lo * Vector256.Create((int)sm[2 * c]) + hi * Vector256.Create((int)sm[2 * c + 1]);
                var sum32Lo = Vector256.Load(sb + (4 * c) * G) + Vector256.Load(sb + (4 * c + 1) * G);
                var sum32Hi = Vector256.Load(sb + (4 * c + 2) * G) + Vector256.Load(sb + (4 * c + 3) * G);
                mins += sum32Lo * Vector256.Create((int)sm[8 + 2 * c]) + sum32Hi * Vector256.Create((int)sm[8 + 2 * c + 1]);
            }
            var dx = Vector256.Load(xd + b * G);
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi), dx * half[*(ushort*)blk], acc);
            acc = Fma.MultiplyAddNegated(Avx.ConvertToVector256Single(mins), dx * half[*(ushort*)(blk + 2)], acc);
        }
        acc.Store(y);
    }

    /// <summary>Q6_K weights: 6-bit codes 0..63 with a signed scale per 16, corrected by -32·sc·Σx.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Q6_K<T>(byte* w, int blocks, QuantizedActivations x, int group, float* y) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        sbyte* xq = x.InterleavedQ(group);
        float* xd = x.InterleavedD(group);
        int* xs = x.InterleavedSums16(group);
        byte* codes = stackalloc byte[128];
        var acc = Vector256<float>.Zero;
        var low4 = Vector256.Create((byte)0x0F);
        var low2 = Vector256.Create((byte)0x03);
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 210;
            sbyte* sc = (sbyte*)(blk + 192);
            sbyte* xb = xq + b * 256 * G;
            int* sb = xs + b * 16 * G;
            var sumi = Vector256<int>.Zero;
            var offset = Vector256<int>.Zero;
            for (int h = 0; h < 2; h++)
            {
                var ql0 = Vector256.Load(blk + h * 64);
                var ql1 = Vector256.Load(blk + h * 64 + 32);
                var qh = Vector256.Load(blk + 128 + h * 32);
                ((ql0 & low4) | Vector256.ShiftLeft((qh & low2).AsUInt16(), 4).AsByte()).Store(codes);
                ((ql1 & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qh.AsUInt16(), 2).AsByte() & low2).AsUInt16(), 4).AsByte()).Store(codes + 32);
                ((Vector256.ShiftRightLogical(ql0.AsUInt16(), 4).AsByte() & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qh.AsUInt16(), 4).AsByte() & low2).AsUInt16(), 4).AsByte()).Store(codes + 64);
                ((Vector256.ShiftRightLogical(ql1.AsUInt16(), 4).AsByte() & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qh.AsUInt16(), 6).AsByte() & low2).AsUInt16(), 4).AsByte()).Store(codes + 96);
                for (int g = 0; g < 8; g++) // 8 groups of 16 values in this half
                {
                    byte* c16 = codes + 16 * g;
                    sbyte* x16 = xb + (h * 128 + 16 * g) * G;
                    var dot = Dot4<T>(Vector256<int>.Zero, c16, x16);
                    dot = Dot4<T>(dot, c16 + 4, x16 + 32);
                    dot = Dot4<T>(dot, c16 + 8, x16 + 64);
                    dot = Dot4<T>(dot, c16 + 12, x16 + 96);
                    var scale = Vector256.Create((int)sc[h * 8 + g]);
                    sumi += dot * scale;
                    offset += Vector256.Load(sb + (h * 8 + g) * G) * scale;
                }
            }
            var dx = Vector256.Load(xd + b * G) * half[*(ushort*)(blk + 208)];
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi - offset * 32), dx, acc);
        }
        acc.Store(y);
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
