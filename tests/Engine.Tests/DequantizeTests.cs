using System.Buffers.Binary;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// Every block format is checked against an independent decoder written here element by element:
/// value j is computed straight from the byte layout of ggml-common.h for that j, not with the engine's
/// loop structure. Blocks are random bytes (with finite scales), so every bit of every field is used.
/// </summary>
/// <remarks>
/// Tolerance: both sides compute in float32 but may associate products differently (d·sc·q vs
/// (d·sc)·q), which differs by at most a couple of roundings: 4 ulp of the block's largest magnitude.
/// </remarks>
public class DequantizeTests
{
    private static float H(ReadOnlySpan<byte> b, int at) => (float)BinaryPrimitives.ReadHalfLittleEndian(b[at..]);

    private static int Nibble(byte b, bool high) => high ? b >> 4 : b & 0xF;

    private static int Bit(ReadOnlySpan<byte> bytes, int bit) => (bytes[bit / 8] >> (bit % 8)) & 1;

    /// <summary>The 6-bit scale and min number i of the 12 packed bytes of Q4_K/Q5_K, spelled out bit by bit.</summary>
    private static (int Scale, int Min) KScale(ReadOnlySpan<byte> packed, int i)
    {
        if (i < 4)
            return (packed[i] & 0b111111, packed[i + 4] & 0b111111);
        int scale = (packed[i + 4] & 0xF) + 16 * (packed[i - 4] >> 6);
        int min = (packed[i + 4] >> 4) + 16 * (packed[i] >> 6);
        return (scale, min);
    }

    /// <summary>Reference value j of one block, from the ggml-common.h structs.</summary>
    private static float Reference(GgmlType type, ReadOnlySpan<byte> b, int j)
    {
        switch (type)
        {
            case GgmlType.Q4_0: // half d; u8 qs[16]
                return H(b, 0) * (Nibble(b[2 + j % 16], j >= 16) - 8);
            case GgmlType.Q4_1: // half d, m; u8 qs[16]
                return H(b, 0) * Nibble(b[4 + j % 16], j >= 16) + H(b, 2);
            case GgmlType.Q5_0: // half d; u32 qh; u8 qs[16]
                return H(b, 0) * ((Nibble(b[6 + j % 16], j >= 16) | (Bit(b[2..6], j) << 4)) - 16);
            case GgmlType.Q5_1: // half d, m; u32 qh; u8 qs[16]
                return H(b, 0) * (Nibble(b[8 + j % 16], j >= 16) | (Bit(b[4..8], j) << 4)) + H(b, 2);
            case GgmlType.Q8_0: // half d; i8 qs[32]
                return H(b, 0) * (sbyte)b[2 + j];
            case GgmlType.Q2_K: // u8 scales[16]; u8 qs[64]; half d, dmin
            {
                int half = j / 128, within = j % 128, pair = within / 32, l = within % 32;
                int q = (b[16 + half * 32 + l] >> (2 * pair)) & 3;
                byte sc = b[j / 16];
                return H(b, 80) * (sc & 0xF) * q - H(b, 82) * (sc >> 4);
            }
            case GgmlType.Q3_K: // u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d
            {
                int half = j / 128, within = j % 128, pair = within / 32, l = within % 32;
                int low = (b[32 + half * 32 + l] >> (2 * pair)) & 3;
                int high = (b[l] >> (half * 4 + pair)) & 1;
                int g = j / 16;
                int scaleLow = g < 8 ? b[96 + g] & 0xF : b[96 + g - 8] >> 4;
                int scaleHigh = (b[96 + 8 + g % 4] >> (2 * (g / 4))) & 3;
                return H(b, 108) * ((scaleLow | (scaleHigh << 4)) - 32) * (low - (high == 1 ? 0 : 4));
            }
            case GgmlType.Q4_K: // half d, dmin; u8 scales[12]; u8 qs[128]
            {
                int chunk = j / 64, upper = j % 64 / 32, l = j % 32;
                int q = Nibble(b[16 + chunk * 32 + l], upper == 1);
                var (sc, m) = KScale(b.Slice(4, 12), chunk * 2 + upper);
                return H(b, 0) * sc * q - H(b, 2) * m;
            }
            case GgmlType.Q5_K: // half d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
            {
                int chunk = j / 64, upper = j % 64 / 32, l = j % 32;
                int q = Nibble(b[48 + chunk * 32 + l], upper == 1) + 16 * ((b[16 + l] >> (chunk * 2 + upper)) & 1);
                var (sc, m) = KScale(b.Slice(4, 12), chunk * 2 + upper);
                return H(b, 0) * sc * q - H(b, 2) * m;
            }
            case GgmlType.Q6_K: // u8 ql[128]; u8 qh[64]; i8 scales[16]; half d
            {
                int half = j / 128, quarter = j % 128 / 32, l = j % 32;
                int low = Nibble(b[half * 64 + l + (quarter % 2) * 32], quarter >= 2);
                int high = (b[128 + half * 32 + l] >> (2 * quarter)) & 3;
                int scale = (sbyte)b[192 + half * 8 + quarter * 2 + l / 16];
                return H(b, 208) * scale * ((low | (high << 4)) - 32);
            }
            default:
                throw new ArgumentException(type.ToString());
        }
    }

    /// <summary>Where each format keeps its float16 scales (so random blocks get finite ones).</summary>
    private static int[] HalfOffsets(GgmlType type) => type switch
    {
        GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 => [0],
        GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],
        GgmlType.Q2_K => [80, 82],
        GgmlType.Q3_K => [108],
        GgmlType.Q6_K => [208],
        _ => [],
    };

    public static IEnumerable<GgmlType> BlockTypes() =>
        [GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K];

    [TestCaseSource(nameof(BlockTypes))]
    public void Random_blocks_decode_as_the_format_defines(GgmlType type)
    {
        var (blockSize, typeSize) = GgmlTypeInfo.Layout(type)!.Value;
        var rng = new Random((int)type);
        const int blocks = 64;
        var bytes = new byte[blocks * typeSize];
        rng.NextBytes(bytes);
        for (int b = 0; b < blocks; b++)
        {
            foreach (int offset in HalfOffsets(type))
                BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(b * typeSize + offset), (Half)((rng.NextDouble() * 2 - 1) * 0.1));
        }
        var values = new float[blocks * blockSize];
        Dequantize.Row(type, bytes, values);
        for (int b = 0; b < blocks; b++)
        {
            var block = bytes.AsSpan(b * typeSize, typeSize);
            var expected = new float[blockSize];
            for (int j = 0; j < blockSize; j++)
                expected[j] = Reference(type, block, j);
            float scale = expected.Max(MathF.Abs);
            for (int j = 0; j < blockSize; j++)
                Assert.That(values[b * blockSize + j], Is.EqualTo(expected[j]).Within(4 * float.Epsilon + 4.8e-7f * scale), $"{type} block {b} value {j}");
        }
    }

    [Test]
    public void Hand_made_blocks_decode_to_known_values()
    {
        // Q4_0 with d = 0.5: nibbles 0x9 (low) and 0x7 (high) → (9-8)·0.5 = 0.5 and (7-8)·0.5 = -0.5.
        var q40 = new byte[18];
        BinaryPrimitives.WriteHalfLittleEndian(q40, (Half)0.5f);
        q40.AsSpan(2).Fill(0x79);
        var v = new float[32];
        Dequantize.Row(GgmlType.Q4_0, q40, v);
        Assert.That(v[..16], Is.All.EqualTo(0.5f));
        Assert.That(v[16..], Is.All.EqualTo(-0.5f));

        // Q8_0 with d = 2 and q = -3 → -6.
        var q80 = new byte[34];
        BinaryPrimitives.WriteHalfLittleEndian(q80, (Half)2f);
        q80.AsSpan(2).Fill(unchecked((byte)-3));
        Dequantize.Row(GgmlType.Q8_0, q80, v);
        Assert.That(v, Is.All.EqualTo(-6f));

        // Q6_K with d = 1, all scales 2, all quants 32+5 → 2·5 = 10 everywhere:
        // low nibble 5 in every ql nibble, high bits of 37 are 0b10 in every qh pair.
        var q6 = new byte[210];
        q6.AsSpan(0, 128).Fill(0x55);
        q6.AsSpan(128, 64).Fill(0b10101010);
        q6.AsSpan(192, 16).Fill(2);
        BinaryPrimitives.WriteHalfLittleEndian(q6.AsSpan(208), (Half)1f);
        var v256 = new float[256];
        Dequantize.Row(GgmlType.Q6_K, q6, v256);
        Assert.That(v256, Is.All.EqualTo(10f));
    }

    public static IEnumerable<TestCaseData> Quantizers()
    {
        // (type, worst error in units of the block's |d|): rounding is half a step; Q4_0/Q5_0 clamp the
        // largest value one step down; the float16 scale adds at most 2^-11 relative per step counted.
        yield return new TestCaseData(GgmlType.Q8_0, 0.5 + 127.0 / 2048);
        yield return new TestCaseData(GgmlType.Q4_0, 1.0 + 8.0 / 2048);
        yield return new TestCaseData(GgmlType.Q5_0, 1.0 + 16.0 / 2048);
        yield return new TestCaseData(GgmlType.Q4_1, 0.5 + 16.0 / 2048);
        yield return new TestCaseData(GgmlType.Q5_1, 0.5 + 32.0 / 2048);
    }

    [TestCaseSource(nameof(Quantizers))]
    public void Quantize_then_dequantize_is_within_one_step(GgmlType type, double steps)
    {
        var rng = new Random(42);
        var x = Enumerable.Range(0, 32 * 50).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
        x[5] = 0; // exact zeros stay representable
        var bytes = Quantize.Row(type, x);
        var y = new float[x.Length];
        Dequantize.Row(type, bytes, y);
        var (_, typeSize) = GgmlTypeInfo.Layout(type)!.Value;
        for (int b = 0; b < x.Length / 32; b++)
        {
            float d = MathF.Abs(H(bytes.AsSpan(b * typeSize), 0));
            for (int j = b * 32; j < b * 32 + 32; j++)
                Assert.That(Math.Abs(y[j] - x[j]), Is.LessThanOrEqualTo(steps * d + 1e-6), $"{type} value {j}");
        }
    }

    [Test]
    public void Float_conversions_are_exact_where_the_format_can_be()
    {
        float[] exact = [0f, -0f, 1f, -2.5f, 65504f, 6.1035156e-05f, float.PositiveInfinity];
        var back = new float[exact.Length];
        Dequantize.Row(GgmlType.F16, Quantize.Row(GgmlType.F16, exact), back);
        Assert.That(back, Is.EqualTo(exact));
        Dequantize.Row(GgmlType.BF16, Quantize.Row(GgmlType.BF16, [1f, -3.5f, 1e30f, 0f, 0f, 0f, 0f]), back);
        Assert.That(back[..2], Is.EqualTo(new[] { 1f, -3.5f }));
        Assert.That(back[2], Is.EqualTo(1e30f).Within(1e30f / 128), "bfloat16 keeps 8 bits of mantissa");
        // Round to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 → 1 (even mantissa).
        Assert.That(Quantize.ToBF16(1f + 1f / 256), Is.EqualTo(Quantize.ToBF16(1f)));
        Assert.That(float.IsNaN(BitConverter.Int32BitsToSingle(Quantize.ToBF16(float.NaN) << 16)), Is.True);
    }
}
