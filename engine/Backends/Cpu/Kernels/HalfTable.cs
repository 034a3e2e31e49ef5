using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// float16 → float32. .NET exposes no F16C instruction, so block scales are looked up in a 256 KiB table
/// (one load, L2-resident) and vectors of halves are widened with integer bit arithmetic.
/// </summary>
internal static unsafe class HalfTable
{
    private static readonly float* Table = Build();

    private static float* Build()
    {
        var table = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(65536 * sizeof(float), 64);
        for (int i = 0; i < 65536; i++)
            table[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        return table;
    }

    /// <summary>The table itself: hot loops copy it into a local so no static access sits inside them.</summary>
    public static float* Pointer => Table;

    /// <summary>The float value of the half at <paramref name="p"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(byte* p) => Table[*(ushort*)p];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Convert(ushort bits) => Table[bits];

    /// <summary>
    /// Eight halves to eight floats, exactly, without ever giving the FPU a subnormal operand (which
    /// costs a microcode assist, measured at 2.3× slower on real F16 weights, a few of which are always
    /// tiny): normal halves are re-biased in integer arithmetic, subnormals and zero (magnitude &lt; 0x400,
    /// value = m·2^-24) go through an exact int→float conversion, infinities and NaNs keep an all-ones
    /// exponent, and the sign is put back last.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen(Vector128<ushort> h)
    {
        var w = Vector256.WidenLower(h.ToVector256Unsafe()).AsInt32();
        var magnitude = w & Vector256.Create(0x7FFF);
        var shifted = magnitude << 13;
        var normal = shifted + Vector256.Create((127 - 15) << 23);
        var special = shifted | Vector256.Create(0x7F800000);
        var small = Vector256.ConvertToSingle(magnitude) * Vector256.Create(1f / (1 << 24));
        var isSmall = Vector256.LessThan(magnitude, Vector256.Create(0x400));
        var isSpecial = Vector256.GreaterThan(magnitude, Vector256.Create(0x7BFF));
        var bits = Vector256.ConditionalSelect(isSpecial, special, normal);
        bits = Vector256.ConditionalSelect(isSmall, small.AsInt32(), bits);
        return (bits | ((w & Vector256.Create(0x8000)) << 16)).AsSingle();
    }

    /// <summary>Sixteen halves to sixteen floats: <see cref="Widen(Vector128{ushort})"/> at 512 bits (half the instructions per value).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen(Vector256<ushort> h)
    {
        var w = Vector512.WidenLower(h.ToVector512Unsafe()).AsInt32();
        var magnitude = w & Vector512.Create(0x7FFF);
        var shifted = magnitude << 13;
        var normal = shifted + Vector512.Create((127 - 15) << 23);
        var special = shifted | Vector512.Create(0x7F800000);
        var small = Vector512.ConvertToSingle(magnitude) * Vector512.Create(1f / (1 << 24));
        var isSmall = Vector512.LessThan(magnitude, Vector512.Create(0x400));
        var isSpecial = Vector512.GreaterThan(magnitude, Vector512.Create(0x7BFF));
        var bits = Vector512.ConditionalSelect(isSpecial, special, normal);
        bits = Vector512.ConditionalSelect(isSmall, small.AsInt32(), bits);
        return (bits | ((w & Vector512.Create(0x8000)) << 16)).AsSingle();
    }

    /// <summary>2^112: moves a half's exponent bias (15) to a float's (127).</summary>
    private const float TwoTo112 = 5192296858534827628530496329220096f;

    /// <summary>
    /// Sixteen halves to floats, exactly, in seven instructions (<see cref="Widen(Vector256{ushort})"/>
    /// takes twelve), for data read once per use such as the F16 KV cache: sign-extend and shift left by
    /// 13 (mantissa and exponent in place, as in <see cref="WidenNormal"/>), keep the sign bit, and
    /// multiply by 2^112 — which re-biases the exponent of a normal half and, for a subnormal one, scales
    /// the float subnormal it became into its value (exact: a power of two). Infinities and NaNs get an
    /// all-ones exponent. The multiply sees a subnormal operand only for subnormal halves (rare in
    /// activations; measured on this CPU at twice the cost of a normal multiply, no microcode assist).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> WidenByMultiply(Vector256<ushort> halves)
    {
        var wide = Avx512F.ConvertToVector512Int32(halves.AsInt16());
        var bits = (wide << 13) & Vector512.Create(unchecked((int)0x8FFFE000));
        var value = bits.AsSingle() * Vector512.Create(TwoTo112);
        var special = Vector512.Equals(wide & Vector512.Create(0x7C00), Vector512.Create(0x7C00));
        return Vector512.ConditionalSelect(special.AsSingle(), (bits | Vector512.Create(0x7F800000)).AsSingle(), value);
    }

    /// <summary><see cref="WidenByMultiply(Vector256{ushort})"/> for eight halves (256 bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> WidenByMultiply(Vector128<ushort> halves)
    {
        var wide = Avx2.ConvertToVector256Int32(halves.AsInt16());
        var bits = (wide << 13) & Vector256.Create(unchecked((int)0x8FFFE000));
        var value = bits.AsSingle() * Vector256.Create(TwoTo112);
        var special = Vector256.Equals(wide & Vector256.Create(0x7C00), Vector256.Create(0x7C00));
        return Vector256.ConditionalSelect(special.AsSingle(), (bits | Vector256.Create(0x7F800000)).AsSingle(), value);
    }

    /// <summary>
    /// Whether all 32 halves are normal numbers (not zero, subnormal, infinite or NaN) — nearly every
    /// vector of real weights (measured on N(0, 0.02) weights: 0.23% of halves are zero or subnormal) —
    /// so that <see cref="WidenNormal"/> may be used: one unsigned range test, |h| − 0x400 ≤ 0x77FF.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool AllNormal(Vector512<ushort> halves) =>
        !Vector512.GreaterThanAny((halves & Vector512.Create((ushort)0x7FFF)) - Vector512.Create((ushort)0x0400), Vector512.Create((ushort)(0x7BFF - 0x0400)));

    /// <summary>
    /// Sixteen normal halves to floats in four instructions: sign-extending to 32 bits and shifting left
    /// by 13 puts the mantissa and exponent in place with copies of the sign above them; the mask keeps
    /// the sign bit, and adding 112 re-biases the exponent (15 → 127). Exact for normal halves only
    /// (see <see cref="AllNormal"/>); <see cref="Widen(Vector256{ushort})"/> handles the rest.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> WidenNormal(Vector256<ushort> halves)
    {
        var bits = Avx512F.ConvertToVector512Int32(halves.AsInt16()) << 13;
        return ((bits & Vector512.Create(unchecked((int)0x8FFFE000))) + Vector512.Create((127 - 15) << 23)).AsSingle();
    }

    /// <summary>
    /// Thirty-two halves to floats, exactly: the four-instruction <see cref="WidenNormal"/> when every
    /// half is normal (nearly always for weights), <see cref="Widen(Vector256{ushort})"/> otherwise.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector512<float> Lower, Vector512<float> Upper) Widen32(Vector512<ushort> halves) =>
        AllNormal(halves)
            ? (WidenNormal(halves.GetLower()), WidenNormal(halves.GetUpper()))
            : (Widen(halves.GetLower()), Widen(halves.GetUpper()));
}
