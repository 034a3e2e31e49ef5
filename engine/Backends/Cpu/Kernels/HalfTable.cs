using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// float16 → float32. .NET exposes no F16C instruction, so block scales are looked up in a 256 KiB table
/// (one load, L2-resident) and vectors of halves are widened with integer bit arithmetic.
/// </summary>
internal static unsafe class HalfTable
{
    private static readonly float* Table = Build();
    private static readonly float Pow2To112 = BitConverter.Int32BitsToSingle((127 + 112) << 23);

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
    /// Eight halves to eight floats: the magnitude bits shifted into float position and rescaled by 2^112
    /// (which also handles subnormals exactly), infinities/NaNs patched, the sign put back.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen(Vector128<ushort> h)
    {
        var w = Vector256.WidenLower(h.ToVector256Unsafe()).AsUInt32();
        var magnitude = w & Vector256.Create(0x7FFFu);
        var sign = (w & Vector256.Create(0x8000u)) << 16;
        var f = Vector256.AsSingle(magnitude << 13) * Vector256.Create(Pow2To112);
        var infNan = Vector256.GreaterThanOrEqual(magnitude, Vector256.Create(0x7C00u));
        var bits = f.AsUInt32() | (infNan & Vector256.Create(0x7F800000u));
        return (bits | sign).AsSingle();
    }
}
