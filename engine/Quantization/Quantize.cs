using System.Buffers.Binary;
using Engine.Tensors;

namespace Engine.Quantization;

/// <summary>
/// Reference quantizers (float → block format) that write what ggml's <c>quantize_row_*_ref</c> writes,
/// so that files we produce load in llama.cpp and round-trip through <see cref="Dequantize"/>.
/// The k-quants (with their error-minimizing scale search) are in <see cref="KQuantize"/>.
/// </summary>
public static class Quantize
{
    /// <summary>Types this class can produce.</summary>
    public static bool CanQuantize(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
        or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    /// <summary>Encodes <paramref name="src"/> (a whole number of blocks) as <paramref name="type"/>.</summary>
    public static byte[] Row(GgmlType type, ReadOnlySpan<float> src)
    {
        var dst = new byte[GgmlTypeInfo.RowBytes(type, src.Length)];
        Row(type, src, dst);
        return dst;
    }

    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        long need = GgmlTypeInfo.RowBytes(type, src.Length);
        if (dst.Length < need)
            throw new ArgumentException($"{type}: {src.Length} values need {need} bytes, got {dst.Length}");
        switch (type)
        {
            case GgmlType.F32: System.Runtime.InteropServices.MemoryMarshal.AsBytes(src).CopyTo(dst); break;
            case GgmlType.F16:
                for (int i = 0; i < src.Length; i++)
                    BinaryPrimitives.WriteHalfLittleEndian(dst[(2 * i)..], (Half)src[i]);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < src.Length; i++)
                    BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], ToBF16(src[i]));
                break;
            case GgmlType.Q8_0: Q8_0(src, dst); break;
            case GgmlType.Q4_0: Q4_0(src, dst); break;
            case GgmlType.Q4_1: Q4_1(src, dst); break;
            case GgmlType.Q5_0: Q5_0(src, dst); break;
            case GgmlType.Q5_1: Q5_1(src, dst); break;
            case GgmlType.Q4_K: KQuantize.Q4_K(src, dst); break;
            case GgmlType.Q5_K: KQuantize.Q5_K(src, dst); break;
            case GgmlType.Q6_K: KQuantize.Q6_K(src, dst); break;
            default: throw new NotSupportedException($"quantizing to {type} is not implemented yet");
        }
    }

    /// <summary>float32 → bfloat16 with round-to-nearest-even; NaN stays a (quiet) NaN.</summary>
    public static ushort ToBF16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7fffffff) > 0x7f800000)
            return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    private static void WriteHalf(Span<byte> dst, float value) => BinaryPrimitives.WriteHalfLittleEndian(dst, (Half)value);

    /// <summary>d = max|x| / 127, q = round(x / d).</summary>
    public static void Q8_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int b = 0; b < src.Length / 32; b++)
        {
            var x = src.Slice(b * 32, 32);
            var blk = dst.Slice(b * 34, 34);
            float amax = 0;
            foreach (float v in x)
                amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127f;
            float id = d != 0 ? 1f / d : 0f;
            WriteHalf(blk, d);
            for (int j = 0; j < 32; j++)
                blk[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
        }
    }

    /// <summary>d = (value of largest magnitude) / -8, q = min(15, trunc(x/d + 8.5)).</summary>
    public static void Q4_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int b = 0; b < src.Length / 32; b++)
        {
            var x = src.Slice(b * 32, 32);
            var blk = dst.Slice(b * 18, 18);
            float d = SignedMax(x) / -8f;
            float id = d != 0 ? 1f / d : 0f;
            WriteHalf(blk, d);
            for (int j = 0; j < 16; j++)
            {
                int q0 = Math.Min(15, (int)(sbyte)(x[j] * id + 8.5f));
                int q1 = Math.Min(15, (int)(sbyte)(x[j + 16] * id + 8.5f));
                blk[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    /// <summary>d = (max - min) / 15, m = min, q = min(15, trunc((x - min)/d + 0.5)).</summary>
    public static void Q4_1(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int b = 0; b < src.Length / 32; b++)
        {
            var x = src.Slice(b * 32, 32);
            var blk = dst.Slice(b * 20, 20);
            var (min, max) = MinMax(x);
            float d = (max - min) / 15f;
            float id = d != 0 ? 1f / d : 0f;
            WriteHalf(blk, d);
            WriteHalf(blk[2..], min);
            for (int j = 0; j < 16; j++)
            {
                int q0 = Math.Min(15, (int)(sbyte)((x[j] - min) * id + 0.5f));
                int q1 = Math.Min(15, (int)(sbyte)((x[j + 16] - min) * id + 0.5f));
                blk[4 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    /// <summary>d = (value of largest magnitude) / -16, 5-bit q = min(31, trunc(x/d + 16.5)).</summary>
    public static void Q5_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int b = 0; b < src.Length / 32; b++)
        {
            var x = src.Slice(b * 32, 32);
            var blk = dst.Slice(b * 22, 22);
            float d = SignedMax(x) / -16f;
            float id = d != 0 ? 1f / d : 0f;
            WriteHalf(blk, d);
            uint qh = 0;
            for (int j = 0; j < 16; j++)
            {
                int q0 = Math.Min(31, (int)(sbyte)(x[j] * id + 16.5f));
                int q1 = Math.Min(31, (int)(sbyte)(x[j + 16] * id + 16.5f));
                blk[6 + j] = (byte)((q0 & 0xF) | ((q1 & 0xF) << 4));
                qh |= (uint)((q0 & 0x10) >> 4) << j;
                qh |= (uint)((q1 & 0x10) >> 4) << (j + 16);
            }
            BinaryPrimitives.WriteUInt32LittleEndian(blk[2..], qh);
        }
    }

    /// <summary>d = (max - min) / 31, m = min, 5-bit q = trunc((x - min)/d + 0.5).</summary>
    public static void Q5_1(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int b = 0; b < src.Length / 32; b++)
        {
            var x = src.Slice(b * 32, 32);
            var blk = dst.Slice(b * 24, 24);
            var (min, max) = MinMax(x);
            float d = (max - min) / 31f;
            float id = d != 0 ? 1f / d : 0f;
            WriteHalf(blk, d);
            WriteHalf(blk[2..], min);
            uint qh = 0;
            for (int j = 0; j < 16; j++)
            {
                int q0 = (byte)((x[j] - min) * id + 0.5f);
                int q1 = (byte)((x[j + 16] - min) * id + 0.5f);
                blk[8 + j] = (byte)((q0 & 0xF) | ((q1 & 0xF) << 4));
                qh |= (uint)((q0 & 0x10) >> 4) << j;
                qh |= (uint)((q1 & 0x10) >> 4) << (j + 16);
            }
            BinaryPrimitives.WriteUInt32LittleEndian(blk[4..], qh);
        }
    }

    /// <summary>The value with the largest magnitude, sign kept (first one wins on ties).</summary>
    private static float SignedMax(ReadOnlySpan<float> x)
    {
        float amax = 0, max = 0;
        foreach (float v in x)
        {
            if (amax < MathF.Abs(v))
            {
                amax = MathF.Abs(v);
                max = v;
            }
        }
        return max;
    }

    private static (float Min, float Max) MinMax(ReadOnlySpan<float> x)
    {
        float min = float.MaxValue, max = float.MinValue;
        foreach (float v in x)
        {
            min = MathF.Min(min, v);
            max = MathF.Max(max, v);
        }
        return (min, max);
    }
}
