using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// The element type of the CPU's KV cache, as the attention kernels read it: every element becomes a
/// float before any arithmetic, so a kernel computes exactly what it computes over a float cache holding
/// the same (rounded) values — F16 changes only what is stored, never the order of the operations.
/// </summary>
internal unsafe interface IKvElement
{
    /// <summary>Bytes an element.</summary>
    static abstract int Bytes { get; }

    /// <summary>The address of element <paramref name="index"/> counted from <paramref name="p"/>.</summary>
    static abstract byte* At(byte* p, long index);

    static abstract float Load(byte* p);

    /// <summary>Eight consecutive elements.</summary>
    static abstract Vector256<float> Load8(byte* p);

    /// <summary>Sixteen consecutive elements.</summary>
    static abstract Vector512<float> Load16(byte* p);
}

/// <summary>A float cache: loads as they are.</summary>
internal readonly unsafe struct KvF32 : IKvElement
{
    public static int Bytes => sizeof(float);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte* At(byte* p, long index) => p + index * sizeof(float);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(byte* p) => *(float*)p;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* p) => Vector256.Load((float*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* p) => Vector512.Load((float*)p);
}

/// <summary>
/// An F16 cache (IEEE half, as llama.cpp's default <c>-ctk f16</c>): half the bytes attention streams,
/// which is what attention is bound by once many sequences decode together. Widened exactly
/// (<see cref="HalfTable.WidenByMultiply(Vector256{ushort})"/>), so the only difference from a float
/// cache is the rounding on store.
/// </summary>
internal readonly unsafe struct KvF16 : IKvElement
{
    public static int Bytes => sizeof(ushort);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte* At(byte* p, long index) => p + index * sizeof(ushort);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(byte* p) => HalfTable.Convert(*(ushort*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* p) => HalfTable.WidenByMultiply(Vector128.Load((ushort*)p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* p) => HalfTable.WidenByMultiply(Vector256.Load((ushort*)p));

    /// <summary>
    /// The half nearest each value (ties to even), as its bits: what <c>(Half)value</c> gives, vectorized
    /// (TensorPrimitives rounds exactly as the cast does; checked over all 2^32 floats).
    /// </summary>
    public static void RoundAll(ReadOnlySpan<float> values, Span<ushort> halves) =>
        System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(values, System.Runtime.InteropServices.MemoryMarshal.Cast<ushort, Half>(halves));
}
