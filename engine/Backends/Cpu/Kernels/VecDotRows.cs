using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// One weight row against four activation rows at once, each row's result bit for bit what the
/// one-row kernel gives it: the weights are loaded and unpacked once, and every row then runs the
/// one-row kernel's exact sequence of operations (same accumulators, same order, same final sums).
/// This is what makes exact (batch-invariant) speculative verification cheap for the memory-bound
/// types: the extra rows ride along one pass over the weights instead of each paying for its own.
/// </summary>
public static unsafe partial class VecDot
{
    /// <summary>Whether a 4-row kernel exists for <paramref name="type"/> on this CPU.</summary>
    public static bool HasRows4(Tensors.GgmlType type) => type switch
    {
        Tensors.GgmlType.F16 => Vector512.IsHardwareAccelerated && Avx512F.IsSupported,
        Tensors.GgmlType.Q8_0 => CpuFeatures.Vnni,
        Tensors.GgmlType.Q4_0 => CpuFeatures.Avx512Gfni && CpuFeatures.Vnni,
        _ => false,
    };

    /// <summary><see cref="F16"/> for four activation rows (the 512-bit kernel's arithmetic per row).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void F16Rows4(ushort* w, float* x0, float* x1, float* x2, float* x3, int n, float* y)
    {
        Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        int i = 0;
        for (; i + 32 <= n; i += 32)
        {
            var (lo, hi) = HalfTable.Widen32(Vector512.Load(w + i));
            a0 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x0 + i), a0);
            b0 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x0 + i + 16), b0);
            a1 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x1 + i), a1);
            b1 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x1 + i + 16), b1);
            a2 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x2 + i), a2);
            b2 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x2 + i + 16), b2);
            a3 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x3 + i), a3);
            b3 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x3 + i + 16), b3);
        }
        float s0 = Vector512.Sum(a0 + b0), s1 = Vector512.Sum(a1 + b1), s2 = Vector512.Sum(a2 + b2), s3 = Vector512.Sum(a3 + b3);
        for (; i < n; i++)
        {
            float v = HalfTable.Convert(w[i]);
            s0 += v * x0[i];
            s1 += v * x1[i];
            s2 += v * x2[i];
            s3 += v * x3[i];
        }
        y[0] = s0;
        y[1] = s1;
        y[2] = s2;
        y[3] = s3;
    }

    /// <summary><see cref="Q8_0"/> (the AVX-VNNI kernel) for four activation rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Q8_0Rows4(byte* w, sbyte* q0, sbyte* q1, sbyte* q2, sbyte* q3, float* d0, float* d1, float* d2, float* d3, int blocks, float* y)
    {
        float* half = HalfTable.Pointer;
        Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        int b = 0;
        for (; b + 1 < blocks; b += 2)
        {
            byte* p = w + b * 34;
            var wa = Vector256.Load((sbyte*)(p + 2));
            var wb = Vector256.Load((sbyte*)(p + 36));
            var ua = Avx2.Abs(wa);
            var ub = Avx2.Abs(wb);
            float da = half[*(ushort*)p], db = half[*(ushort*)(p + 34)];
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q0 + b * 32)), Vector256.Create(da * d0[b]), a0);
            b0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ub, wb, q0 + b * 32 + 32)), Vector256.Create(db * d0[b + 1]), b0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q1 + b * 32)), Vector256.Create(da * d1[b]), a1);
            b1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ub, wb, q1 + b * 32 + 32)), Vector256.Create(db * d1[b + 1]), b1);
            a2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q2 + b * 32)), Vector256.Create(da * d2[b]), a2);
            b2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ub, wb, q2 + b * 32 + 32)), Vector256.Create(db * d2[b + 1]), b2);
            a3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q3 + b * 32)), Vector256.Create(da * d3[b]), a3);
            b3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ub, wb, q3 + b * 32 + 32)), Vector256.Create(db * d3[b + 1]), b3);
        }
        if (b < blocks)
        {
            byte* p = w + b * 34;
            var wa = Vector256.Load((sbyte*)(p + 2));
            var ua = Avx2.Abs(wa);
            float da = half[*(ushort*)p];
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q0 + b * 32)), Vector256.Create(da * d0[b]), a0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q1 + b * 32)), Vector256.Create(da * d1[b]), a1);
            a2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q2 + b * 32)), Vector256.Create(da * d2[b]), a2);
            a3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Dot(ua, wa, q3 + b * 32)), Vector256.Create(da * d3[b]), a3);
        }
        y[0] = Vector256.Sum(a0 + b0);
        y[1] = Vector256.Sum(a1 + b1);
        y[2] = Vector256.Sum(a2 + b2);
        y[3] = Vector256.Sum(a3 + b3);

        static Vector256<int> Dot(Vector256<byte> unsigned, Vector256<sbyte> signs, sbyte* x) =>
            AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, unsigned, Avx2.Sign(Vector256.Load(x), signs));
    }

    /// <summary><see cref="Q4_0"/> (the 512-bit kernel, then the AVX-VNNI one for the last 1..3 blocks) for four activation rows.</summary>
    public static void Q4_0Rows4(byte* w, sbyte** q, float** d, float** sums, int blocks, float* y)
    {
        int main = blocks & ~3;
        Q4_0Avx512Rows4(w, q, d, sums, main, y);
        if (main == blocks)
            return;
        for (int r = 0; r < 4; r++)
            y[r] += Q4_0<VnniIsa>(w + main * 18, q[r] + main * 32, d[r] + main, sums[r] + main, blocks - main);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q4_0Avx512Rows4(byte* w, sbyte** q, float** d, float** sums, int blocks, float* y)
    {
        float* half = HalfTable.Pointer;
        var permutation = Q4_0PairPermutation;
        var nibbles = Vector512.Create(LowNibble, LowNibble, HighNibble, HighNibble, LowNibble, LowNibble, HighNibble, HighNibble).AsByte();
        var ones = Vector512.Create((short)1);
        var first = Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        var second = Vector512.Create(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        sbyte* q0 = q[0], q1 = q[1], q2 = q[2], q3 = q[3];
        float* d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
        float* s0 = sums[0], s1 = sums[1], s2 = sums[2], s3 = sums[3];
        Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        Vector128<float> o0 = default, o1 = default, o2 = default, o3 = default;
        for (int b = 0; b + 3 < blocks; b += 4)
        {
            var (codes0, codes1, dw) = Q4_0Unpack(w + b * 18, half, permutation, nibbles);
            Q4_0Accumulate(codes0, codes1, dw, q0 + b * 32, d0 + b, s0 + b, ones, first, second, ref a0, ref b0, ref o0);
            Q4_0Accumulate(codes0, codes1, dw, q1 + b * 32, d1 + b, s1 + b, ones, first, second, ref a1, ref b1, ref o1);
            Q4_0Accumulate(codes0, codes1, dw, q2 + b * 32, d2 + b, s2 + b, ones, first, second, ref a2, ref b2, ref o2);
            Q4_0Accumulate(codes0, codes1, dw, q3 + b * 32, d3 + b, s3 + b, ones, first, second, ref a3, ref b3, ref o3);
        }
        y[0] = Vector512.Sum(a0 + b0) - 8 * Vector128.Sum(o0);
        y[1] = Vector512.Sum(a1 + b1) - 8 * Vector128.Sum(o1);
        y[2] = Vector512.Sum(a2 + b2) - 8 * Vector128.Sum(o2);
        y[3] = Vector512.Sum(a3 + b3) - 8 * Vector128.Sum(o3);
    }
}
