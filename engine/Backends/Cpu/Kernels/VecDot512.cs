using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// 512-bit versions of the 4-bit dot kernels, for CPUs with AVX-512 BW, VBMI and GFNI (Zen 4/5, Ice
/// Lake and later). Decoding is compute bound for 4-bit weights with 256-bit code (measured: 20 GB/s
/// of Q4_0 per core, against 45 GB/s for Q8_0), because each block pays for unpacking nibbles, a scale
/// and an int→float conversion. At 512 bits each of those covers twice the values, and GFNI's affine
/// byte transform (<c>vgf2p8affineqb</c>) picks the low or high nibble of every byte in one instruction,
/// with a different choice per 64-bit lane.
/// </summary>
/// <remarks>
/// .NET exposes no 512-bit VNNI, so u8·s8 products go through <c>vpmaddubsw</c> (pairs into int16;
/// 4-bit codes times int8 activations cannot saturate: 2·15·127 &lt; 32767) and <c>vpmaddwd</c>.
/// The loops stop before the last partial group and return; the caller finishes the row with the
/// 256-bit kernel. (A call after the loop inside the same method makes the JIT keep the accumulators
/// on the stack for the whole loop.)
/// </remarks>
public static unsafe partial class VecDot
{
    /// <summary>Whether the 512-bit kernels run here (<see cref="CpuFeatures.Avx512Gfni"/>).</summary>
    public static bool Avx512Gfni => CpuFeatures.Avx512Gfni;

    // Affine matrices for vgf2p8affineqb: output bit i takes input bit i (low nibble) or i + 4 (high
    // nibble); output bits 4..7 are zero. Row for output bit i is byte 7 - i of the 64-bit matrix.
    private const ulong LowNibble = 0x0102040800000000, HighNibble = 0x1020408000000000;

    /// <summary>
    /// Two Q4_0 blocks (bytes 0..35 of the pair) as [qs0, qs0, qs1, qs1] in the four 128-bit lanes;
    /// loaded as bytes 0..31 and 4..35 so nothing is read past the pair.
    /// </summary>
    private static readonly Vector512<byte> Q4_0PairPermutation = Vector512.Create(
        (byte)2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
        2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
        48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
        48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63);

    /// <summary>Q4_0 · Q8_0 over the first blocks/4·4 blocks (see <see cref="Q4_0"/> for the arguments).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Q4_0Avx512(byte* w, sbyte* xq, float* xd, float* xsd, int blocks)
    {
        float* half = HalfTable.Pointer;
        var permutation = Q4_0PairPermutation;
        // lanes 0 and 2 hold the low nibbles (values 0..15 of a block), lanes 1 and 3 the high (16..31)
        var nibbles = Vector512.Create(LowNibble, LowNibble, HighNibble, HighNibble, LowNibble, LowNibble, HighNibble, HighNibble).AsByte();
        var ones = Vector512.Create((short)1);
        var first = Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        var second = Vector512.Create(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        var acc0 = Vector512<float>.Zero;
        var acc1 = Vector512<float>.Zero;
        var offset = Vector128<float>.Zero;
        for (int b = 0; b + 3 < blocks; b += 4)
        {
            var (codes0, codes1, d) = Q4_0Unpack(w + b * 18, half, permutation, nibbles);
            Q4_0Accumulate(codes0, codes1, d, xq + b * 32, xd + b, xsd + b, ones, first, second, ref acc0, ref acc1, ref offset);
        }
        return Vector512.Sum(acc0 + acc1) - 8 * Vector128.Sum(offset);
    }

    /// <summary>Four Q4_0 blocks at <paramref name="p"/>: their codes as two pairs (see <see cref="Q4_0PairPermutation"/>) and their four scales.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<byte> Codes0, Vector512<byte> Codes1, Vector128<float> D) Q4_0Unpack(byte* p, float* half,
        Vector512<byte> permutation, Vector512<byte> nibbles)
    {
        var pair0 = Avx512F.InsertVector256(Vector256.Load(p).ToVector512Unsafe(), Vector256.Load(p + 4), 1);
        var pair1 = Avx512F.InsertVector256(Vector256.Load(p + 36).ToVector512Unsafe(), Vector256.Load(p + 40), 1);
        var codes0 = Gfni.V512.GaloisFieldAffineTransform(Avx512Vbmi.PermuteVar64x8(pair0, permutation), nibbles, 0);
        var codes1 = Gfni.V512.GaloisFieldAffineTransform(Avx512Vbmi.PermuteVar64x8(pair1, permutation), nibbles, 0);
        var d = Vector128.Create(half[*(ushort*)p], half[*(ushort*)(p + 18)], half[*(ushort*)(p + 36)], half[*(ushort*)(p + 54)]);
        return (codes0, codes1, d);
    }

    /// <summary>
    /// One activation row's share of four unpacked Q4_0 blocks — the whole per-row arithmetic of the
    /// kernel, so the one-row and four-row kernels compute every row identically.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q4_0Accumulate(Vector512<byte> codes0, Vector512<byte> codes1, Vector128<float> d, sbyte* x, float* xd, float* xsd,
        Vector512<short> ones, Vector512<int> first, Vector512<int> second, ref Vector512<float> acc0, ref Vector512<float> acc1, ref Vector128<float> offset)
    {
        var dot0 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(codes0, Vector512.Load(x)), ones);
        var dot1 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(codes1, Vector512.Load(x + 64)), ones);
        var scale = (d * Vector128.Load(xd)).ToVector256Unsafe().ToVector512Unsafe();
        offset = Fma.MultiplyAdd(d, Vector128.Load(xsd), offset);
        acc0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(dot0), Avx512F.PermuteVar16x32(scale, first), acc0);
        acc1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(dot1), Avx512F.PermuteVar16x32(scale, second), acc1);
    }

    /// <summary>
    /// For half h of a Q4_K block, vpermw controls that spread the 16-bit scales of the sub-blocks
    /// under the low nibbles (2·2h and 2·2h+2: bytes 0..31 and 32..63 of the half's 64 code bytes) and
    /// under the high nibbles (2·2h+1 and 2·2h+3) over the 16 int16 lanes each 32 products occupy.
    /// </summary>
    private static readonly Vector512<short>[] K4Spread512 =
    [
        Spread(0, 2), Spread(1, 3), Spread(4, 6), Spread(5, 7),
    ];

    private static Vector512<short> Spread(int first, int second)
    {
        var lanes = new short[32];
        for (int i = 0; i < 32; i++)
            lanes[i] = (short)(i < 16 ? first : second);
        return Vector512.Create(lanes);
    }

    /// <summary>Q4_K · Q8_K over all blocks (see <see cref="Q4_K"/> for the arguments).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Q4_KAvx512(byte* w, sbyte* xq, float* xd, short* bsums, int blocks)
    {
        float* half = HalfTable.Pointer;
        var low = Vector512.Create(LowNibble).AsByte();
        var high = Vector512.Create(HighNibble).AsByte();
        var spread = K4Spread512;
        Vector512<short> spreadA0 = spread[0], spreadB0 = spread[1], spreadA1 = spread[2], spreadB1 = spread[3];
        var acc = Vector512<float>.Zero;
        var accMin = Vector128<float>.Zero;
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 144;
            sbyte* x = xq + b * 256;
            var sm = Avx2.ConvertToVector256Int16(ScalesAndMins(blk + 4)); // [sc0..sc7 | m0..m7]
            var bs = Vector256.Load(bsums + b * 16);
            var minDot = Sse2.MultiplyAddAdjacent(sm.GetUpper(), Ssse3.HorizontalAdd(bs.GetLower(), bs.GetUpper()));
            var scales = sm.ToVector512Unsafe();

            // values 0..127: code bytes 0..63; low nibbles are values 0..31 and 64..95, high 32..63 and 96..127
            var q = Vector512.Load(blk + 16);
            var xa = Avx512F.InsertVector256(Vector256.Load(x).ToVector512Unsafe(), Vector256.Load(x + 64), 1);
            var xb = Avx512F.InsertVector256(Vector256.Load(x + 32).ToVector512Unsafe(), Vector256.Load(x + 96), 1);
            var sumi = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(Gfni.V512.GaloisFieldAffineTransform(q, low, 0), xa.AsSByte()),
                Avx512BW.PermuteVar32x16(scales, spreadA0));
            sumi += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(Gfni.V512.GaloisFieldAffineTransform(q, high, 0), xb.AsSByte()),
                Avx512BW.PermuteVar32x16(scales, spreadB0));
            // values 128..255
            q = Vector512.Load(blk + 80);
            xa = Avx512F.InsertVector256(Vector256.Load(x + 128).ToVector512Unsafe(), Vector256.Load(x + 192), 1);
            xb = Avx512F.InsertVector256(Vector256.Load(x + 160).ToVector512Unsafe(), Vector256.Load(x + 224), 1);
            sumi += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(Gfni.V512.GaloisFieldAffineTransform(q, low, 0), xa.AsSByte()),
                Avx512BW.PermuteVar32x16(scales, spreadA1));
            sumi += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(Gfni.V512.GaloisFieldAffineTransform(q, high, 0), xb.AsSByte()),
                Avx512BW.PermuteVar32x16(scales, spreadB1));

            float dx = xd[b];
            acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sumi), Vector512.Create(half[*(ushort*)blk] * dx), acc);
            accMin = Fma.MultiplyAdd(Sse2.ConvertToVector128Single(minDot), Vector128.Create(half[*(ushort*)(blk + 2)] * dx), accMin);
        }
        return Vector512.Sum(acc) - Vector128.Sum(accMin);
    }

    /// <summary>
    /// vpermw controls for Q6_K: the 32 int16 products of 64 values cover four 16-value sub-blocks, so
    /// lanes 8k..8k+7 take scale <c>first + k</c>.
    /// </summary>
    private static readonly Vector512<short>[] K6Spread512 = [Quarters(0), Quarters(4), Quarters(8), Quarters(12)];

    private static Vector512<short> Quarters(int first)
    {
        var lanes = new short[32];
        for (int i = 0; i < 32; i++)
            lanes[i] = (short)(first + i / 8);
        return Vector512.Create(lanes);
    }

    /// <summary>
    /// [v, v]. Not vbroadcasti64x4: the .NET 10 JIT miscompiles <c>Avx512F.BroadcastVector256ToVector512</c>
    /// feeding <c>vgf2p8affineqb</c> (the transform then reads zeros; found by the kernel tests).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<byte> Twice(Vector256<byte> v) => Avx512F.InsertVector256(v.ToVector512Unsafe(), v, 1);

    /// <summary>Q6_K · Q8_K over all blocks (see <see cref="Q6_K"/> for the arguments).</summary>
    /// <remarks>
    /// Per half of 128 values, the 64 ql bytes give codes for values 0..63 in their low nibbles and
    /// 64..127 in their high nibbles; the 32 qh bytes (broadcast to both 256-bit halves) supply bits 4
    /// and 5 from bit pairs (0,1), (2,3), (4,5), (6,7) for the four quarters. GFNI moves each bit pair
    /// into place with a per-lane matrix, so a code is two affine transforms and an OR.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Q6_KAvx512(byte* w, sbyte* xq, float* xd, short* bsums, int blocks)
    {
        float* half = HalfTable.Pointer;
        var low = Vector512.Create(LowNibble).AsByte();
        var high = Vector512.Create(HighNibble).AsByte();
        // out bit 4 <- in bit j, out bit 5 <- in bit j + 1, for j = 0 | 2 (values 0..63) and 4 | 6 (64..127)
        const ulong bits01 = 0x01020000, bits23 = 0x04080000, bits45 = 0x10200000, bits67 = 0x40800000;
        var upperLow = Vector512.Create(bits01, bits01, bits01, bits01, bits23, bits23, bits23, bits23).AsByte();
        var upperHigh = Vector512.Create(bits45, bits45, bits45, bits45, bits67, bits67, bits67, bits67).AsByte();
        var spread = K6Spread512;
        Vector512<short> spread0 = spread[0], spread1 = spread[1], spread2 = spread[2], spread3 = spread[3];
        var acc = Vector512<float>.Zero;
        var accOffset = Vector128<float>.Zero;
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = w + b * 210;
            sbyte* x = xq + b * 256;
            var sc16 = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(blk + 192)));
            var offsetDot = Avx2.MultiplyAddAdjacent(sc16, Vector256.Load(bsums + b * 16));
            var scales = sc16.ToVector512Unsafe();

            var ql = Vector512.Load(blk);
            var qh = Twice(Vector256.Load(blk + 128));
            var codesLow = Gfni.V512.GaloisFieldAffineTransform(ql, low, 0) | Gfni.V512.GaloisFieldAffineTransform(qh, upperLow, 0);
            var codesHigh = Gfni.V512.GaloisFieldAffineTransform(ql, high, 0) | Gfni.V512.GaloisFieldAffineTransform(qh, upperHigh, 0);
            var sumi = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(codesLow, Vector512.Load(x)), Avx512BW.PermuteVar32x16(scales, spread0));
            sumi += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(codesHigh, Vector512.Load(x + 64)), Avx512BW.PermuteVar32x16(scales, spread1));

            ql = Vector512.Load(blk + 64);
            qh = Twice(Vector256.Load(blk + 160));
            codesLow = Gfni.V512.GaloisFieldAffineTransform(ql, low, 0) | Gfni.V512.GaloisFieldAffineTransform(qh, upperLow, 0);
            codesHigh = Gfni.V512.GaloisFieldAffineTransform(ql, high, 0) | Gfni.V512.GaloisFieldAffineTransform(qh, upperHigh, 0);
            sumi += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(codesLow, Vector512.Load(x + 128)), Avx512BW.PermuteVar32x16(scales, spread2));
            sumi += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(codesHigh, Vector512.Load(x + 192)), Avx512BW.PermuteVar32x16(scales, spread3));

            float d = half[*(ushort*)(blk + 208)] * xd[b];
            acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sumi), Vector512.Create(d), acc);
            accOffset = Fma.MultiplyAdd(Sse2.ConvertToVector128Single(offsetDot.GetLower() + offsetDot.GetUpper()), Vector128.Create(32 * d), accOffset);
        }
        return Vector512.Sum(acc) - Vector128.Sum(accOffset);
    }
}
