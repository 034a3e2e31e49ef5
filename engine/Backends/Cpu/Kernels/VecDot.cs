using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Dot products of one weight row in its GGUF block format with one activation row — ggml's
/// <c>ggml_vec_dot_*</c>. Quantized weights meet int8-quantized activations (<see cref="QuantizedActivations"/>)
/// and multiply in integers: AVX-VNNI <c>vpdpbusd</c> (u8·s8 → i32) where the CPU has it, AVX2
/// <c>vpmaddubsw</c>/<c>vpmaddwd</c> otherwise, and a scalar path everywhere else. The scalar path is the
/// reference the SIMD paths are tested against: all compute the same integer sums and differ only in
/// the order float scale products are added.
/// </summary>
/// <remarks>
/// Unsigned weight codes (Q4_0's nibbles, Q4_K's, Q6_K's 6-bit values) go straight into the u8 side of
/// the instruction; their offsets (8 for Q4_0, 32 for Q6_K) and Q4_K's mins are applied afterwards from
/// the activation block sums, once per block instead of once per value. Signed Q8_0 weights use the
/// abs/sign trick (|w| · sign(x, w)).
/// </remarks>
public static unsafe partial class VecDot
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q8_0(byte* w, sbyte* xq, float* xd, int blocks) =>
        CpuFeatures.Vnni ? Q8_0<VnniIsa>(w, xq, xd, blocks) : CpuFeatures.Avx2Fma ? Q8_0<Avx2Isa>(w, xq, xd, blocks) : Q8_0Scalar(w, xq, xd, blocks);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q4_0(byte* w, sbyte* xq, float* xd, float* xsd, int blocks)
    {
        if (!Avx512Gfni)
            return Q4_0Avx2(w, xq, xd, xsd, blocks);
        int main = blocks & ~3;
        float sum = Q4_0Avx512(w, xq, xd, xsd, main);
        return main == blocks ? sum : sum + Q4_0Avx2(w + main * 18, xq + main * 32, xd + main, xsd + main, blocks - main);
    }

    private static float Q4_0Avx2(byte* w, sbyte* xq, float* xd, float* xsd, int blocks) =>
        CpuFeatures.Vnni ? Q4_0<VnniIsa>(w, xq, xd, xsd, blocks) : CpuFeatures.Avx2Fma ? Q4_0<Avx2Isa>(w, xq, xd, xsd, blocks) : Q4_0Scalar(w, xq, xd, xsd, blocks);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q4_K(byte* w, sbyte* xq, float* xd, short* bsums, int blocks) =>
        Avx512Gfni ? Q4_KAvx512(w, xq, xd, bsums, blocks) : CpuFeatures.Vnni ? Q4_K<VnniIsa>(w, xq, xd, bsums, blocks) : CpuFeatures.Avx2Fma ? Q4_K<Avx2Isa>(w, xq, xd, bsums, blocks) : Q4_KScalar(w, xq, xd, bsums, blocks);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q6_K(byte* w, sbyte* xq, float* xd, short* bsums, int blocks) =>
        Avx512Gfni ? Q6_KAvx512(w, xq, xd, bsums, blocks) : CpuFeatures.Vnni ? Q6_K<VnniIsa>(w, xq, xd, bsums, blocks) : CpuFeatures.Avx2Fma ? Q6_K<Avx2Isa>(w, xq, xd, bsums, blocks) : Q6_KScalar(w, xq, xd, bsums, blocks);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float F16(ushort* w, float* x, int n) => CpuFeatures.Avx2Fma ? F16Simd(w, x, n) : F16Scalar(w, x, n);

    public static float BF16(ushort* w, float* x, int n) => CpuFeatures.Avx2Fma ? BF16Simd(w, x, n) : BF16Scalar(w, x, n);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float F32(float* w, float* x, int n) =>
        TensorPrimitives.Dot(new ReadOnlySpan<float>(w, n), new ReadOnlySpan<float>(x, n));

    // ---- shared pieces ------------------------------------------------------------------------

    /// <summary>Eight partial sums of 32 u8·s8 products (added to <paramref name="acc"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> DotUnsigned<T>(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) where T : IIsa =>
        T.Vnni ? AvxVnni.MultiplyWideningAndAdd(acc, u, s) : acc + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1));

    /// <summary>acc += Σ pairs(p · scale) — one vpdpwssd with VNNI.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> ScaledAdd<T>(Vector256<int> acc, Vector256<short> p, Vector256<short> scale) where T : IIsa =>
        T.Vnni ? AvxVnni.MultiplyWideningAndAdd(acc, p, scale) : acc + Avx2.MultiplyAddAdjacent(p, scale);

    /// <summary>The 32 nibbles of a Q4_0 block (16 bytes) as bytes 0..15: low nibbles first, then high nibbles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> Nibbles(byte* qs)
    {
        var both = Avx2.BroadcastVector128ToVector256(qs);
        var shifted = Avx2.ShiftRightLogical(both.AsUInt16(), 4).AsByte();
        return Avx2.Blend(both.AsInt32(), shifted.AsInt32(), 0b1111_0000).AsByte() & Vector256.Create((byte)0x0F);
    }

    // ---- Q8_0: block { half d; i8 qs[32] } ---------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q8_0<T>(byte* w, sbyte* xq, float* xd, int blocks) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        int b = 0;
        for (; b + 1 < blocks; b += 2)
        {
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotSigned<T>(w + b * 34 + 2, xq + b * 32)), Vector256.Create(half[*(ushort*)(w + b * 34)] * xd[b]), acc0);
            acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotSigned<T>(w + b * 34 + 36, xq + b * 32 + 32)), Vector256.Create(half[*(ushort*)(w + b * 34 + 34)] * xd[b + 1]), acc1);
        }
        if (b < blocks)
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotSigned<T>(w + b * 34 + 2, xq + b * 32)), Vector256.Create(half[*(ushort*)(w + b * 34)] * xd[b]), acc0);
        return Vector256.Sum(acc0 + acc1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> DotSigned<T>(byte* w, sbyte* x) where T : IIsa
    {
        var wv = Vector256.Load((sbyte*)w);
        return DotUnsigned<T>(Vector256<int>.Zero, Avx2.Abs(wv), Avx2.Sign(Vector256.Load(x), wv));
    }

    public static float Q8_0Scalar(byte* w, sbyte* xq, float* xd, int blocks)
    {
        float sum = 0;
        for (int b = 0; b < blocks; b++)
        {
            sbyte* q = (sbyte*)(w + b * 34 + 2);
            int dot = 0;
            for (int i = 0; i < 32; i++)
                dot += q[i] * xq[b * 32 + i];
            sum += dot * (HalfTable.Load(w + b * 34) * xd[b]);
        }
        return sum;
    }

    // ---- Q4_0: block { half d; u8 qs[16] }, value = (nibble - 8)·d -------------------------------

    /// <param name="xsd">Per activation block, its scale times the sum of its values (for the -8 offset).</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q4_0<T>(byte* w, sbyte* xq, float* xd, float* xsd, int blocks) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        float offset = 0;
        int b = 0;
        for (; b + 1 < blocks; b += 2)
        {
            byte* b0 = w + b * 18;
            float d0 = half[*(ushort*)b0], d1 = half[*(ushort*)(b0 + 18)];
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotUnsigned<T>(Vector256<int>.Zero, Nibbles(b0 + 2), Vector256.Load(xq + b * 32))), Vector256.Create(d0 * xd[b]), acc0);
            acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotUnsigned<T>(Vector256<int>.Zero, Nibbles(b0 + 20), Vector256.Load(xq + b * 32 + 32))), Vector256.Create(d1 * xd[b + 1]), acc1);
            offset += d0 * xsd[b] + d1 * xsd[b + 1];
        }
        if (b < blocks)
        {
            byte* b0 = w + b * 18;
            float d0 = half[*(ushort*)b0];
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotUnsigned<T>(Vector256<int>.Zero, Nibbles(b0 + 2), Vector256.Load(xq + b * 32))), Vector256.Create(d0 * xd[b]), acc0);
            offset += d0 * xsd[b];
        }
        return Vector256.Sum(acc0 + acc1) - 8 * offset;
    }

    public static float Q4_0Scalar(byte* w, sbyte* xq, float* xd, float* xsd, int blocks)
    {
        float sum = 0;
        for (int b = 0; b < blocks; b++)
        {
            byte* qs = w + b * 18 + 2;
            sbyte* x = xq + b * 32;
            int dot = 0;
            for (int j = 0; j < 16; j++)
                dot += (qs[j] & 0xF) * x[j] + (qs[j] >> 4) * x[j + 16];
            float d = HalfTable.Load(w + b * 18);
            sum += dot * (d * xd[b]) - 8 * d * xsd[b];
        }
        return sum;
    }

    // ---- Q4_K: block { half d, dmin; u8 scales[12]; u8 qs[128] } against Q8_K activations ------------

    /// <summary>
    /// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K block as 16 bytes (scales, then mins):
    /// the same bits as <see cref="Quantization.Dequantize.ScaleMinK4"/>, unpacked four at a time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<byte> ScalesAndMins(byte* packed)
    {
        uint a = *(uint*)packed, b = *(uint*)(packed + 4), c = *(uint*)(packed + 8);
        const uint six = 0x3F3F3F3F, four = 0x0F0F0F0F, two = 0x03030303;
        uint scalesLow = a & six;                                     // scales 0..3
        uint scalesHigh = (c & four) | (((a >> 6) & two) << 4);      // scales 4..7
        uint minsLow = b & six;                                       // mins 0..3
        uint minsHigh = ((c >> 4) & four) | (((b >> 6) & two) << 4); // mins 4..7
        return Vector128.Create(scalesLow, scalesHigh, minsLow, minsHigh).AsByte();
    }

    private static readonly Vector256<sbyte>[] K4ScaleShuffle = BuildK4Shuffles();

    /// <summary>
    /// For chunk c (values 64c..64c+63), a vpshufb control that spreads the 16-bit scales of sub-blocks
    /// 2c and 2c+1 over the 16 lanes vpmaddubsw produces (both 128-bit halves get the same pair).
    /// </summary>
    private static Vector256<sbyte>[] BuildK4Shuffles()
    {
        var result = new Vector256<sbyte>[8];
        for (int j = 0; j < 8; j++)
        {
            var bytes = new sbyte[32];
            for (int i = 0; i < 32; i += 2)
            {
                bytes[i] = (sbyte)(2 * j);
                bytes[i + 1] = (sbyte)(2 * j + 1);
            }
            result[j] = Vector256.Create(bytes);
        }
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q4_K<T>(byte* w, sbyte* xq, float* xd, short* bsums, int blocks) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        var shuffles = K4ScaleShuffle;
        var acc = Vector256<float>.Zero;
        var accMin = Vector128<float>.Zero;
        var mask = Vector256.Create((byte)0x0F);
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 144;
            sbyte* x = xq + b * 256;
            // scales and mins widened to 16 bits: [sc0..sc7 | m0..m7]
            var sm = Avx2.ConvertToVector256Int16(ScalesAndMins(blk + 4));
            // mins · (sums of each 32 activations) — the min correction, 8 products in one vpmaddwd
            var bs = Vector256.Load(bsums + b * 16);
            var pairSums = Ssse3.HorizontalAdd(bs.GetLower(), bs.GetUpper());
            var minDot = Sse2.MultiplyAddAdjacent(sm.GetUpper(), pairSums);
            var scales = Vector256.Create(sm.GetLower(), sm.GetLower()).AsSByte();
            var sumi = Vector256<int>.Zero;
            for (int c = 0; c < 4; c++)
            {
                var q = Vector256.Load(blk + 16 + c * 32);
                var lo = q & mask;
                var hi = Vector256.ShiftRightLogical(q.AsUInt16(), 4).AsByte() & mask;
                var scaleLo = Avx2.Shuffle(scales, shuffles[2 * c]).AsInt16();
                var scaleHi = Avx2.Shuffle(scales, shuffles[2 * c + 1]).AsInt16();
                sumi = ScaledAdd<T>(sumi, Avx2.MultiplyAddAdjacent(lo, Vector256.Load(x + c * 64)), scaleLo);
                sumi = ScaledAdd<T>(sumi, Avx2.MultiplyAddAdjacent(hi, Vector256.Load(x + c * 64 + 32)), scaleHi);
            }
            float dx = xd[b];
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi), Vector256.Create(half[*(ushort*)blk] * dx), acc);
            accMin = Fma.MultiplyAdd(Sse2.ConvertToVector128Single(minDot), Vector128.Create(half[*(ushort*)(blk + 2)] * dx), accMin);
        }
        return Vector256.Sum(acc) - Vector128.Sum(accMin);
    }

    public static float Q4_KScalar(byte* w, sbyte* xq, float* xd, short* bsums, int blocks)
    {
        float sum = 0;
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 144;
            sbyte* x = xq + b * 256;
            int dots = 0, minDot = 0;
            for (int j = 0; j < 8; j++)
            {
                var (sc, m) = Quantization.Dequantize.ScaleMinK4(j, new ReadOnlySpan<byte>(blk + 4, 12));
                byte* q = blk + 16 + j / 2 * 32;
                int dot = 0;
                for (int l = 0; l < 32; l++)
                    dot += (j % 2 == 0 ? q[l] & 0xF : q[l] >> 4) * x[j * 32 + l];
                dots += sc * dot;
                minDot += m * (bsums[b * 16 + 2 * j] + bsums[b * 16 + 2 * j + 1]);
            }
            sum += HalfTable.Load(blk) * xd[b] * dots - HalfTable.Load(blk + 2) * xd[b] * minDot;
        }
        return sum;
    }

    // ---- Q6_K: block { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d }, value = d·sc·(q - 32) --------

    private static readonly Vector256<sbyte>[] K6ScaleShuffle = BuildK6Shuffles();

    /// <summary>For chunk k of a 128-value half, spread 16-bit scale 2k over the low 128 bits and 2k+1 over the high.</summary>
    private static Vector256<sbyte>[] BuildK6Shuffles()
    {
        var result = new Vector256<sbyte>[4];
        for (int k = 0; k < 4; k++)
        {
            var bytes = new sbyte[32];
            for (int i = 0; i < 32; i += 2)
            {
                int element = i < 16 ? 2 * k : 2 * k + 1;
                bytes[i] = (sbyte)(2 * element);
                bytes[i + 1] = (sbyte)(2 * element + 1);
            }
            result[k] = Vector256.Create(bytes);
        }
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Q6_K<T>(byte* w, sbyte* xq, float* xd, short* bsums, int blocks) where T : IIsa
    {
        float* half = HalfTable.Pointer;
        var shuffles = K6ScaleShuffle;
        var acc = Vector256<float>.Zero;
        var accOffset = Vector128<float>.Zero;
        var low4 = Vector256.Create((byte)0x0F);
        var low2 = Vector256.Create((byte)0x03);
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 210;
            sbyte* x = xq + b * 256;
            var sc16 = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(blk + 192))); // 16 scales as int16
            // 32 · Σ scale·(sum of its 16 activations): the offset of the unsigned 6-bit codes
            var offsetDot = Avx2.MultiplyAddAdjacent(sc16, Vector256.Load(bsums + b * 16));
            var sumi = Vector256<int>.Zero;
            for (int h = 0; h < 2; h++)
            {
                var scales = Vector256.Create(h == 0 ? sc16.GetLower() : sc16.GetUpper()).AsSByte(); // 8 scales of this half, twice
                var ql0 = Vector256.Load(blk + h * 64);
                var ql1 = Vector256.Load(blk + h * 64 + 32);
                var qh = Vector256.Load(blk + 128 + h * 32);
                var q1 = (ql0 & low4) | Vector256.ShiftLeft((qh & low2).AsUInt16(), 4).AsByte();
                var q2 = (ql1 & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qh.AsUInt16(), 2).AsByte() & low2).AsUInt16(), 4).AsByte();
                var q3 = (Vector256.ShiftRightLogical(ql0.AsUInt16(), 4).AsByte() & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qh.AsUInt16(), 4).AsByte() & low2).AsUInt16(), 4).AsByte();
                var q4 = (Vector256.ShiftRightLogical(ql1.AsUInt16(), 4).AsByte() & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qh.AsUInt16(), 6).AsByte() & low2).AsUInt16(), 4).AsByte();
                sbyte* xh = x + h * 128;
                sumi = ScaledAdd<T>(sumi, Avx2.MultiplyAddAdjacent(q1, Vector256.Load(xh)), Avx2.Shuffle(scales, shuffles[0]).AsInt16());
                sumi = ScaledAdd<T>(sumi, Avx2.MultiplyAddAdjacent(q2, Vector256.Load(xh + 32)), Avx2.Shuffle(scales, shuffles[1]).AsInt16());
                sumi = ScaledAdd<T>(sumi, Avx2.MultiplyAddAdjacent(q3, Vector256.Load(xh + 64)), Avx2.Shuffle(scales, shuffles[2]).AsInt16());
                sumi = ScaledAdd<T>(sumi, Avx2.MultiplyAddAdjacent(q4, Vector256.Load(xh + 96)), Avx2.Shuffle(scales, shuffles[3]).AsInt16());
            }
            float d = half[*(ushort*)(blk + 208)] * xd[b];
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi), Vector256.Create(d), acc);
            accOffset = Fma.MultiplyAdd(Sse2.ConvertToVector128Single(offsetDot.GetLower() + offsetDot.GetUpper()), Vector128.Create(32 * d), accOffset);
        }
        return Vector256.Sum(acc) - Vector128.Sum(accOffset);
    }

    public static float Q6_KScalar(byte* w, sbyte* xq, float* xd, short* bsums, int blocks)
    {
        float sum = 0;
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 210;
            sbyte* sc = (sbyte*)(blk + 192);
            sbyte* x = xq + b * 256;
            int dots = 0;
            for (int half = 0; half < 2; half++)
            {
                byte* ql = blk + half * 64;
                byte* qh = blk + 128 + half * 32;
                for (int l = 0; l < 32; l++)
                {
                    int g = half * 8 + l / 16;
                    int q1 = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    int q2 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    sbyte* xh = x + half * 128;
                    dots += sc[g] * (q1 - 32) * xh[l] + sc[g + 2] * (q2 - 32) * xh[l + 32]
                          + sc[g + 4] * (q3 - 32) * xh[l + 64] + sc[g + 6] * (q4 - 32) * xh[l + 96];
                }
            }
            sum += HalfTable.Load(blk + 208) * xd[b] * dots;
        }
        return sum;
    }

    // ---- float weights against float activations ----------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float F16Simd(ushort* w, float* x, int n)
    {
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
            return F16Simd512(w, x, n);
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            acc0 = Fma.MultiplyAdd(HalfTable.Widen(Vector128.Load(w + i)), Vector256.Load(x + i), acc0);
            acc1 = Fma.MultiplyAdd(HalfTable.Widen(Vector128.Load(w + i + 8)), Vector256.Load(x + i + 8), acc1);
        }
        float sum = Vector256.Sum(acc0 + acc1);
        for (; i < n; i++)
            sum += HalfTable.Convert(w[i]) * x[i];
        return sum;
    }

    /// <summary>dst[i] = (float)w[i] for n bfloat16 values: each is the top half of a float32.</summary>
    public static void WidenBFloat16(ushort* w, float* dst, int n)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= n; i += 16)
            {
                var (lower, upper) = Vector256.Widen(Vector256.Load(w + i));
                (lower << 16).AsSingle().Store(dst + i);
                (upper << 16).AsSingle().Store(dst + i + 8);
            }
        }
        for (; i < n; i++)
            dst[i] = BitConverter.Int32BitsToSingle(w[i] << 16);
    }

    /// <summary>dst[i] = (float)w[i] for n halves.</summary>
    public static void WidenHalves(ushort* w, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
        {
            for (; i + 32 <= n; i += 32)
            {
                var (lower, upper) = HalfTable.Widen32(Vector512.Load(w + i));
                lower.Store(dst + i);
                upper.Store(dst + i + 16);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= n; i += 8)
                HalfTable.Widen(Vector128.Load(w + i)).Store(dst + i);
        }
        for (; i < n; i++)
            dst[i] = HalfTable.Convert(w[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float F16Simd512(ushort* w, float* x, int n)
    {
        var acc0 = Vector512<float>.Zero;
        var acc1 = Vector512<float>.Zero;
        int i = 0;
        for (; i + 32 <= n; i += 32)
        {
            var (lower, upper) = HalfTable.Widen32(Vector512.Load(w + i));
            acc0 = Vector512.FusedMultiplyAdd(lower, Vector512.Load(x + i), acc0);
            acc1 = Vector512.FusedMultiplyAdd(upper, Vector512.Load(x + i + 16), acc1);
        }
        float sum = Vector512.Sum(acc0 + acc1);
        for (; i < n; i++)
            sum += HalfTable.Convert(w[i]) * x[i];
        return sum;
    }

    public static float F16Scalar(ushort* w, float* x, int n)
    {
        float sum = 0;
        for (int i = 0; i < n; i++)
            sum += HalfTable.Convert(w[i]) * x[i];
        return sum;
    }

    /// <summary>bfloat16 is the top half of a float32: widen and shift.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float BF16Simd(ushort* w, float* x, int n)
    {
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            var v = Vector256.Load(w + i);
            acc0 = Fma.MultiplyAdd(Vector256.ShiftLeft(Vector256.WidenLower(v), 16).AsSingle(), Vector256.Load(x + i), acc0);
            acc1 = Fma.MultiplyAdd(Vector256.ShiftLeft(Vector256.WidenUpper(v), 16).AsSingle(), Vector256.Load(x + i + 8), acc1);
        }
        float sum = Vector256.Sum(acc0 + acc1);
        for (; i < n; i++)
            sum += BitConverter.Int32BitsToSingle(w[i] << 16) * x[i];
        return sum;
    }

    public static float BF16Scalar(ushort* w, float* x, int n)
    {
        float sum = 0;
        for (int i = 0; i < n; i++)
            sum += BitConverter.Int32BitsToSingle(w[i] << 16) * x[i];
        return sum;
    }
}
