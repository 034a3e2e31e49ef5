using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

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

/// <summary>
/// An 8-bit cache (<c>--cache-type q8_0</c>): the key (or value) vector of one head at one slot is stored
/// as signed bytes q with one float scale s = max|x| / 127, x ≈ s·q — a quarter of F32's bytes and half
/// of F16's for the bytes attention streams, plus 4 bytes of scale per head-dim elements. Unlike GGUF's
/// Q8_0 (a scale per 32 elements) the scale covers the whole head vector, so that it can be applied to a
/// slot's score and a slot's weight rather than to each element: an element loads as its integer,
/// exactly, and <see cref="Attention"/> multiplies each score by the key's scale before the softmax and
/// each weight by the value's scale after it. Every row's arithmetic is then still a fixed function of
/// the slots it sees (batch invariance holds), and the result is attention over the dequantized values
/// up to float rounding.
/// </summary>
internal readonly unsafe struct KvI8 : IKvElement
{
    public static int Bytes => 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte* At(byte* p, long index) => p + index;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(byte* p) => *(sbyte*)p;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* p)
    {
        if (Avx2.IsSupported)
            return Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)p));
        var s = (sbyte*)p;
        return Vector256.Create(s[0], s[1], s[2], s[3], s[4], s[5], s[6], (float)s[7]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* p)
    {
        if (Avx512F.IsSupported)
            return Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)p)));
        return Vector512.Create(Load8(p), Load8(p + 8));
    }

    /// <summary>
    /// <paramref name="x"/> as bytes q and the scale s = max|x| / 127 with x ≈ s·q: q = x·(127 / max|x|)
    /// rounded to the nearest (ties to even); all zeros, scale 0, for a zero (or subnormal) vector; zeros and a
    /// NaN or infinite scale where x holds a NaN or an infinity. The vector path gives the scalar path's bytes
    /// (the same product, the same rounding).
    /// </summary>
    public static float Quantize(ReadOnlySpan<float> x, Span<sbyte> q)
    {
        if (q.Length < x.Length)
            throw new ArgumentException($"{q.Length} bytes for {x.Length} values", nameof(q));
        // the largest magnitude, vectorized (a NaN anywhere gives NaN, as MathF.Max would)
        float amax = x.IsEmpty ? 0f : MathF.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(x));
        float inv = 127f / amax;
        if (!(amax > 0) || !float.IsFinite(amax) || !float.IsFinite(inv))
        {
            // zeros; subnormals only: scale 0; an infinity or NaN: a non-finite scale, so attention over
            // this slot gives NaN as it would over a float cache holding the value
            q[..x.Length].Clear();
            return float.IsFinite(amax) ? 0f : amax / 127f;
        }
        int i = 0;
        if (Avx512F.IsSupported)
        {
            fixed (float* px = x)
            fixed (sbyte* pq = q)
            {
                var scale = Vector512.Create(inv);
                for (; i + 16 <= x.Length; i += 16)
                {
                    var r = Vector512.Round(Vector512.Load(px + i) * scale);
                    Avx512F.ConvertToVector128SByteWithSaturation(Avx512F.ConvertToVector512Int32(r)).Store(pq + i);
                }
            }
        }
        for (; i < x.Length; i++)
            q[i] = (sbyte)(int)MathF.Round(x[i] * inv);
        return amax / 127f;
    }
}
