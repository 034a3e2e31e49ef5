using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Engine.Tensors;

namespace Engine.Quantization;

/// <summary>
/// Reference dequantization of every GGUF weight type, block by block, exactly as ggml lays the blocks
/// out (ggml-common.h). These are the readable definitions the fast kernels are tested against; each
/// block comment gives the struct. <c>QK_K</c> = 256, legacy blocks hold 32 values.
/// </summary>
public static class Dequantize
{
    /// <summary>Decodes <paramref name="dst"/>.Length values of <paramref name="type"/> from <paramref name="src"/>.</summary>
    public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        long need = GgmlTypeInfo.RowBytes(type, dst.Length);
        if (src.Length < need)
            throw new ArgumentException($"{type}: {dst.Length} values need {need} bytes, got {src.Length}");
        switch (type)
        {
            case GgmlType.F32: MemoryMarshal.Cast<byte, float>(src)[..dst.Length].CopyTo(dst); break;
            case GgmlType.F16: F16(src, dst); break;
            case GgmlType.BF16: BF16(src, dst); break;
            case GgmlType.Q4_0: Q4_0(src, dst); break;
            case GgmlType.Q4_1: Q4_1(src, dst); break;
            case GgmlType.Q5_0: Q5_0(src, dst); break;
            case GgmlType.Q5_1: Q5_1(src, dst); break;
            case GgmlType.Q8_0: Q8_0(src, dst); break;
            case GgmlType.Q2_K: Q2_K(src, dst); break;
            case GgmlType.Q3_K: Q3_K(src, dst); break;
            case GgmlType.Q4_K: Q4_K(src, dst); break;
            case GgmlType.Q5_K: Q5_K(src, dst); break;
            case GgmlType.Q6_K: Q6_K(src, dst); break;
            default: throw new NotSupportedException($"cannot dequantize {type}");
        }
    }

    public static void F16(ReadOnlySpan<byte> src, Span<float> dst) =>
        System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(src)[..dst.Length], dst);

    /// <summary>bfloat16 is the top 16 bits of an IEEE float32.</summary>
    public static void BF16(ReadOnlySpan<byte> src, Span<float> dst)
    {
        var bits = MemoryMarshal.Cast<byte, ushort>(src);
        for (int i = 0; i < dst.Length; i++)
            dst[i] = BitConverter.Int32BitsToSingle(bits[i] << 16);
    }

    private static float H(ReadOnlySpan<byte> b, int offset) => (float)BinaryPrimitives.ReadHalfLittleEndian(b[offset..]);

    /// <summary>block_q4_0 { half d; u8 qs[16]; }: x[j] = (lo(qs[j]) - 8)·d, x[j+16] = (hi(qs[j]) - 8)·d.</summary>
    public static void Q4_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 32; b++)
        {
            var blk = src.Slice(b * 18, 18);
            float d = H(blk, 0);
            var qs = blk[2..];
            var y = dst.Slice(b * 32, 32);
            for (int j = 0; j < 16; j++)
            {
                y[j] = ((qs[j] & 0x0F) - 8) * d;
                y[j + 16] = ((qs[j] >> 4) - 8) * d;
            }
        }
    }

    /// <summary>block_q4_1 { half d; half m; u8 qs[16]; }: x = q·d + m.</summary>
    public static void Q4_1(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 32; b++)
        {
            var blk = src.Slice(b * 20, 20);
            float d = H(blk, 0), m = H(blk, 2);
            var qs = blk[4..];
            var y = dst.Slice(b * 32, 32);
            for (int j = 0; j < 16; j++)
            {
                y[j] = (qs[j] & 0x0F) * d + m;
                y[j + 16] = (qs[j] >> 4) * d + m;
            }
        }
    }

    /// <summary>block_q5_0 { half d; u8 qh[4]; u8 qs[16]; }: 5-bit q (high bit j of qh for x[j]), x = (q - 16)·d.</summary>
    public static void Q5_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 32; b++)
        {
            var blk = src.Slice(b * 22, 22);
            float d = H(blk, 0);
            uint qh = BinaryPrimitives.ReadUInt32LittleEndian(blk[2..]);
            var qs = blk[6..];
            var y = dst.Slice(b * 32, 32);
            for (int j = 0; j < 16; j++)
            {
                int h0 = (int)((qh >> j) << 4) & 0x10;
                int h1 = (int)(qh >> (j + 12)) & 0x10;
                y[j] = (((qs[j] & 0x0F) | h0) - 16) * d;
                y[j + 16] = (((qs[j] >> 4) | h1) - 16) * d;
            }
        }
    }

    /// <summary>block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16]; }: x = q·d + m with 5-bit q.</summary>
    public static void Q5_1(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 32; b++)
        {
            var blk = src.Slice(b * 24, 24);
            float d = H(blk, 0), m = H(blk, 2);
            uint qh = BinaryPrimitives.ReadUInt32LittleEndian(blk[4..]);
            var qs = blk[8..];
            var y = dst.Slice(b * 32, 32);
            for (int j = 0; j < 16; j++)
            {
                int h0 = (int)((qh >> j) << 4) & 0x10;
                int h1 = (int)(qh >> (j + 12)) & 0x10;
                y[j] = ((qs[j] & 0x0F) | h0) * d + m;
                y[j + 16] = ((qs[j] >> 4) | h1) * d + m;
            }
        }
    }

    /// <summary>block_q8_0 { half d; i8 qs[32]; }: x = q·d.</summary>
    public static void Q8_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 32; b++)
        {
            var blk = src.Slice(b * 34, 34);
            float d = H(blk, 0);
            var y = dst.Slice(b * 32, 32);
            for (int j = 0; j < 32; j++)
                y[j] = (sbyte)blk[2 + j] * d;
        }
    }

    /// <summary>
    /// block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin; }: 16 groups of 16 values; each scale
    /// byte holds a 4-bit scale (low) and 4-bit min (high); x = d·sc·q - dmin·m with 2-bit q. Each qs
    /// byte carries four values, 32 apart, in bit pairs 0-1, 2-3, 4-5, 6-7.
    /// </summary>
    public static void Q2_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 256; b++)
        {
            var blk = src.Slice(b * 84, 84);
            var scales = blk[..16];
            var q = blk.Slice(16, 64);
            float d = H(blk, 80), dmin = H(blk, 82);
            var y = dst.Slice(b * 256, 256);
            int yi = 0, si = 0;
            for (int half = 0; half < 2; half++)
            {
                var qh = q.Slice(half * 32, 32);
                for (int shift = 0; shift < 8; shift += 2)
                {
                    for (int sub = 0; sub < 2; sub++)
                    {
                        byte sc = scales[si++];
                        float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                        for (int l = 0; l < 16; l++)
                            y[yi++] = dl * ((qh[sub * 16 + l] >> shift) & 3) - ml;
                    }
                }
            }
        }
    }

    /// <summary>
    /// block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d; }: 3-bit q = 2 low bits from qs
    /// (as in Q2_K) and a high bit from hmask (bit j for the j-th group of 32); a clear high bit means
    /// q - 4. Sixteen 6-bit signed scales (offset 32) are packed into 12 bytes: low 4 bits from bytes
    /// 0-7, high 2 bits from bytes 8-11.
    /// </summary>
    public static void Q3_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        Span<int> sc = stackalloc int[16];
        for (int b = 0; b < dst.Length / 256; b++)
        {
            var blk = src.Slice(b * 110, 110);
            var hmask = blk[..32];
            var q = blk.Slice(32, 64);
            var packed = blk.Slice(96, 12);
            float d = H(blk, 108);
            for (int i = 0; i < 16; i++)
            {
                int low = i < 8 ? packed[i] & 0xF : packed[i - 8] >> 4;
                int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
                sc[i] = (low | (high << 4)) - 32;
            }
            var y = dst.Slice(b * 256, 256);
            int yi = 0, si = 0;
            int m = 1;
            for (int half = 0; half < 2; half++)
            {
                var qh = q.Slice(half * 32, 32);
                for (int shift = 0; shift < 8; shift += 2)
                {
                    for (int sub = 0; sub < 2; sub++)
                    {
                        float dl = d * sc[si++];
                        for (int l = 0; l < 16; l++)
                        {
                            int k = sub * 16 + l;
                            int v = ((qh[k] >> shift) & 3) - ((hmask[k] & m) != 0 ? 0 : 4);
                            y[yi++] = dl * v;
                        }
                    }
                    m <<= 1;
                }
            }
        }
    }

    /// <summary>
    /// The 6-bit (scale, min) pair j of the 12 packed bytes used by Q4_K and Q5_K (ggml's get_scale_min_k4):
    /// pairs 0-3 are the low 6 bits of bytes 0-3 and 4-7; pairs 4-7 take their low 4 bits from bytes 8-11
    /// and their top 2 bits from the spare top bits of bytes 0-7.
    /// </summary>
    public static (int Scale, int Min) ScaleMinK4(int j, ReadOnlySpan<byte> q) => j < 4
        ? (q[j] & 63, q[j + 4] & 63)
        : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));

    /// <summary>
    /// block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; }: 8 groups of 32; x = d·sc·q - dmin·m.
    /// Each 64 values share 32 qs bytes: low nibbles are the first 32, high nibbles the next 32.
    /// </summary>
    public static void Q4_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 256; b++)
        {
            var blk = src.Slice(b * 144, 144);
            float d = H(blk, 0), dmin = H(blk, 2);
            var scales = blk.Slice(4, 12);
            var y = dst.Slice(b * 256, 256);
            for (int chunk = 0; chunk < 4; chunk++)
            {
                var q = blk.Slice(16 + chunk * 32, 32);
                var (s1, m1) = ScaleMinK4(2 * chunk, scales);
                var (s2, m2) = ScaleMinK4(2 * chunk + 1, scales);
                float d1 = d * s1, d2 = d * s2, n1 = dmin * m1, n2 = dmin * m2;
                for (int l = 0; l < 32; l++)
                {
                    y[chunk * 64 + l] = d1 * (q[l] & 0xF) - n1;
                    y[chunk * 64 + 32 + l] = d2 * (q[l] >> 4) - n2;
                }
            }
        }
    }

    /// <summary>
    /// block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }: Q4_K plus a fifth bit:
    /// for the group g of 32, bit g of qh[l] adds 16 to value l of that group.
    /// </summary>
    public static void Q5_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 256; b++)
        {
            var blk = src.Slice(b * 176, 176);
            float d = H(blk, 0), dmin = H(blk, 2);
            var scales = blk.Slice(4, 12);
            var qh = blk.Slice(16, 32);
            var y = dst.Slice(b * 256, 256);
            for (int chunk = 0; chunk < 4; chunk++)
            {
                var ql = blk.Slice(48 + chunk * 32, 32);
                var (s1, m1) = ScaleMinK4(2 * chunk, scales);
                var (s2, m2) = ScaleMinK4(2 * chunk + 1, scales);
                float d1 = d * s1, d2 = d * s2, n1 = dmin * m1, n2 = dmin * m2;
                int u1 = 1 << (2 * chunk), u2 = 2 << (2 * chunk);
                for (int l = 0; l < 32; l++)
                {
                    y[chunk * 64 + l] = d1 * ((ql[l] & 0xF) + ((qh[l] & u1) != 0 ? 16 : 0)) - n1;
                    y[chunk * 64 + 32 + l] = d2 * ((ql[l] >> 4) + ((qh[l] & u2) != 0 ? 16 : 0)) - n2;
                }
            }
        }
    }

    /// <summary>
    /// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }: 6-bit q = 4 low bits from ql and 2
    /// high bits from qh, x = d·scale·(q - 32), one signed scale per 16 values. Per 128 values: ql[0..64)
    /// low nibbles → 0..63, high nibbles → 64..127; qh[l] bit pairs 0,2,4,6 → values l, l+32, l+64, l+96.
    /// </summary>
    public static void Q6_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int b = 0; b < dst.Length / 256; b++)
        {
            var blk = src.Slice(b * 210, 210);
            float d = H(blk, 208);
            var y = dst.Slice(b * 256, 256);
            for (int half = 0; half < 2; half++)
            {
                var ql = blk.Slice(half * 64, 64);
                var qh = blk.Slice(128 + half * 32, 32);
                var sc = blk.Slice(192 + half * 8, 8);
                var yy = y.Slice(half * 128, 128);
                for (int l = 0; l < 32; l++)
                {
                    int g = l / 16;
                    int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    yy[l] = d * (sbyte)sc[g] * q1;
                    yy[l + 32] = d * (sbyte)sc[g + 2] * q2;
                    yy[l + 64] = d * (sbyte)sc[g + 4] * q3;
                    yy[l + 96] = d * (sbyte)sc[g + 6] * q4;
                }
            }
        }
    }
}
