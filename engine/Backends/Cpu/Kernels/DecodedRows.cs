using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// A block of quantized weight rows decoded once for the matrix kernels into one common form, whatever
/// the GGUF type: an unsigned byte code per weight, and per sub-block a float scale and a float bias
/// coefficient, such that
/// <code>  w·x over a sub-block = scale · Σ code·x + bias · Σ x</code>
/// (Q4_0: scale d, bias -8d; Q8_0: codes w+128, bias -128d; Q4_K: scale d·sc, bias -dmin·m; Q6_K: scale
/// d·sc, bias -32·d·sc; …). The matrix kernels then need only two variants (sub-blocks of 32 and of 16)
/// and the decoding cost is paid once per weight row and matrix product, not once per activation group.
/// Buffers are per thread and reused.
/// </summary>
public sealed unsafe class DecodedRows : IDisposable
{
    private byte* _codes;
    private float* _scales;
    private float* _biases;
    private long _codeCapacity, _scaleCapacity;

    public int Cols { get; private set; }

    /// <summary>Values per sub-block: 32, or 16 for the types whose scales cover 16 values (Q6_K, Q3_K, Q2_K).</summary>
    public int SubBlock { get; private set; }

    public int SubBlocksPerRow => Cols / SubBlock;

    public byte* Codes(int row) => _codes + (long)row * Cols;

    public float* Scales(int row) => _scales + (long)row * SubBlocksPerRow;

    public float* Biases(int row) => _biases + (long)row * SubBlocksPerRow;

    /// <summary>Whether a type can be decoded into this form.</summary>
    public static bool Supports(GgmlType type) => type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    public static int SubBlockOf(GgmlType type) => type is GgmlType.Q6_K or GgmlType.Q3_K or GgmlType.Q2_K ? 16 : 32;

    /// <summary>Decodes rows [<paramref name="first"/>, first + <paramref name="count"/>) of <paramref name="w"/>.</summary>
    public void Decode(TensorView w, int first, int count)
    {
        Cols = checked((int)w.RowLength);
        SubBlock = SubBlockOf(w.Type);
        Reserve((long)count * Cols, (long)count * SubBlocksPerRow);
        long rowBytes = w.RowBytes;
        for (int r = 0; r < count; r++)
        {
            byte* src = w.Data + (first + r) * rowBytes;
            byte* codes = Codes(r);
            float* scales = Scales(r);
            float* biases = Biases(r);
            switch (w.Type)
            {
                case GgmlType.Q8_0: DecodeQ8_0(src, codes, scales, biases); break;
                case GgmlType.Q4_0 when CpuFeatures.Avx2Fma: DecodeQ4_0(src, codes, scales, biases); break;
                case GgmlType.Q4_0: DecodeLegacy(src, codes, scales, biases, 18, hasMin: false, fiveBits: false); break;
                case GgmlType.Q4_1: DecodeLegacy(src, codes, scales, biases, 20, hasMin: true, fiveBits: false); break;
                case GgmlType.Q5_0: DecodeLegacy(src, codes, scales, biases, 22, hasMin: false, fiveBits: true); break;
                case GgmlType.Q5_1: DecodeLegacy(src, codes, scales, biases, 24, hasMin: true, fiveBits: true); break;
                case GgmlType.Q4_K: DecodeQ4_K(src, codes, scales, biases, fiveBits: false); break;
                case GgmlType.Q5_K: DecodeQ4_K(src, codes, scales, biases, fiveBits: true); break;
                case GgmlType.Q6_K: DecodeQ6_K(src, codes, scales, biases); break;
                case GgmlType.Q3_K: DecodeQ3_K(src, codes, scales, biases); break;
                case GgmlType.Q2_K: DecodeQ2_K(src, codes, scales, biases); break;
                default: throw new NotSupportedException(w.Type.ToString());
            }
        }
    }

    private void DecodeQ8_0(byte* src, byte* codes, float* scales, float* biases)
    {
        var flip = Vector256.Create((byte)0x80);
        for (int b = 0; b < Cols / 32; b++)
        {
            byte* blk = src + b * 34;
            (Vector256.Load(blk + 2) ^ flip).Store(codes + b * 32);
            float d = HalfTable.Load(blk);
            scales[b] = d;
            biases[b] = -128 * d;
        }
    }

    /// <summary>
    /// Q4_0 alone (AVX2), the common case of batched passes: without the other legacy types' branches in
    /// the block loop, and the half table in a local — 0.039 ns a weight against 0.093 through
    /// <see cref="DecodeLegacy"/>, the same bytes. At 16 activation rows decoding took as long as the matrix
    /// kernel itself (a block of weight rows is decoded once per pass and used by one pair of 8-row groups).
    /// </summary>
    private void DecodeQ4_0(byte* src, byte* codes, float* scales, float* biases)
    {
        float* half = HalfTable.Pointer;
        int blocks = Cols / 32;
        for (int b = 0; b < blocks; b++)
        {
            byte* blk = src + b * 18;
            float d = half[*(ushort*)blk];
            scales[b] = d;
            biases[b] = -8 * d;
            VecDot.Nibbles(blk + 2).Store(codes + b * 32);
        }
    }

    /// <summary>Q4_0/Q4_1/Q5_0/Q5_1: nibbles (plus a fifth bit) laid out low half first, as the values are.</summary>
    private void DecodeLegacy(byte* src, byte* codes, float* scales, float* biases, int blockBytes, bool hasMin, bool fiveBits)
    {
        for (int b = 0; b < Cols / 32; b++)
        {
            byte* blk = src + b * blockBytes;
            float d = HalfTable.Load(blk);
            int offset = hasMin ? 4 : 2;
            uint qh = 0;
            if (fiveBits)
            {
                qh = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(blk + offset, 4));
                offset += 4;
            }
            byte* qs = blk + offset;
            byte* c = codes + b * 32;
            scales[b] = d;
            biases[b] = hasMin ? HalfTable.Load(blk + 2) : (fiveBits ? -16 : -8) * d;
            if (!fiveBits && CpuFeatures.Avx2Fma)
            {
                VecDot.Nibbles(qs).Store(c);
                continue;
            }
            if (fiveBits && CpuFeatures.Avx2Fma)
            {
                (VecDot.Nibbles(qs) | FifthBits(qh)).Store(c);
                continue;
            }
            for (int j = 0; j < 16; j++)
            {
                int high0 = fiveBits ? (int)((qh >> j) & 1) << 4 : 0;
                int high1 = fiveBits ? (int)((qh >> (j + 16)) & 1) << 4 : 0;
                c[j] = (byte)((qs[j] & 0xF) | high0);
                c[j + 16] = (byte)((qs[j] >> 4) | high1);
            }
        }
    }

    /// <summary>
    /// Q5_0/Q5_1's fifth bits as bytes: bit j of <paramref name="qh"/> → 0x10 in byte j (value j's code), by
    /// spreading each of its four bytes over eight lanes and testing one bit per lane.
    /// </summary>
    private static Vector256<byte> FifthBits(uint qh)
    {
        var spread = Avx2.Shuffle(Vector256.Create(qh).AsByte(),
            Vector256.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
        var bit = Vector256.Create((byte)1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
        return Vector256.Equals(spread & bit, bit) & Vector256.Create((byte)0x10);
    }

    private void DecodeQ4_K(byte* src, byte* codes, float* scales, float* biases, bool fiveBits)
    {
        int blockBytes = fiveBits ? 176 : 144;
        byte* sm = stackalloc byte[16];
        for (int b = 0; b < Cols / 256; b++)
        {
            byte* blk = src + b * blockBytes;
            float d = HalfTable.Load(blk), dmin = HalfTable.Load(blk + 2);
            VecDot.ScalesAndMins(blk + 4).Store(sm);
            byte* qh = blk + 16;
            byte* ql = blk + (fiveBits ? 48 : 16);
            byte* c = codes + b * 256;
            if (Vector256.IsHardwareAccelerated)
            {
                var mask = Vector256.Create((byte)0x0F);
                var h = fiveBits ? Vector256.Load(qh) : Vector256<byte>.Zero;
                var sixteen = Vector256.Create((byte)0x10);
                for (int chunk = 0; chunk < 4; chunk++)
                {
                    var q = Vector256.Load(ql + chunk * 32);
                    var low = q & mask;
                    var high = Vector256.ShiftRightLogical(q.AsUInt16(), 4).AsByte() & mask;
                    if (fiveBits)
                    {
                        // Q5_K: bit 2·chunk of qh[l] is value l's fifth bit, bit 2·chunk + 1 value 32 + l's
                        var bit0 = Vector256.Create((byte)(1 << (2 * chunk)));
                        var bit1 = Vector256.Create((byte)(2 << (2 * chunk)));
                        low |= Vector256.Equals(h & bit0, bit0) & sixteen;
                        high |= Vector256.Equals(h & bit1, bit1) & sixteen;
                    }
                    low.Store(c + chunk * 64);
                    high.Store(c + chunk * 64 + 32);
                }
            }
            else
            for (int chunk = 0; chunk < 4; chunk++)
            {
                for (int l = 0; l < 32; l++)
                {
                    byte q = ql[chunk * 32 + l];
                    int high0 = fiveBits ? ((qh[l] >> (2 * chunk)) & 1) << 4 : 0;
                    int high1 = fiveBits ? ((qh[l] >> (2 * chunk + 1)) & 1) << 4 : 0;
                    c[chunk * 64 + l] = (byte)((q & 0xF) | high0);
                    c[chunk * 64 + 32 + l] = (byte)((q >> 4) | high1);
                }
            }
            for (int j = 0; j < 8; j++)
            {
                scales[b * 8 + j] = d * sm[j];
                biases[b * 8 + j] = -dmin * sm[8 + j];
            }
        }
    }

    private void DecodeQ6_K(byte* src, byte* codes, float* scales, float* biases)
    {
        for (int b = 0; b < Cols / 256; b++)
        {
            byte* blk = src + b * 210;
            float d = HalfTable.Load(blk + 208);
            sbyte* sc = (sbyte*)(blk + 192);
            byte* c = codes + b * 256;
            for (int h = 0; h < 2; h++)
            {
                byte* ql = blk + h * 64;
                byte* qh = blk + 128 + h * 32;
                byte* ch = c + h * 128;
                if (Vector256.IsHardwareAccelerated)
                {
                    var low4 = Vector256.Create((byte)0x0F);
                    var low2 = Vector256.Create((byte)0x03);
                    var ql0 = Vector256.Load(ql);
                    var ql1 = Vector256.Load(ql + 32);
                    var qhv = Vector256.Load(qh);
                    ((ql0 & low4) | Vector256.ShiftLeft((qhv & low2).AsUInt16(), 4).AsByte()).Store(ch);
                    ((ql1 & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qhv.AsUInt16(), 2).AsByte() & low2).AsUInt16(), 4).AsByte()).Store(ch + 32);
                    ((Vector256.ShiftRightLogical(ql0.AsUInt16(), 4).AsByte() & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qhv.AsUInt16(), 4).AsByte() & low2).AsUInt16(), 4).AsByte()).Store(ch + 64);
                    ((Vector256.ShiftRightLogical(ql1.AsUInt16(), 4).AsByte() & low4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qhv.AsUInt16(), 6).AsByte() & low2).AsUInt16(), 4).AsByte()).Store(ch + 96);
                    continue;
                }
                for (int l = 0; l < 32; l++)
                {
                    ch[l] = (byte)((ql[l] & 0xF) | ((qh[l] & 3) << 4));
                    ch[l + 32] = (byte)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                    ch[l + 64] = (byte)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                    ch[l + 96] = (byte)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
                }
            }
            for (int g = 0; g < 16; g++)
            {
                scales[b * 16 + g] = d * sc[g];
                biases[b * 16 + g] = -32 * d * sc[g];
            }
        }
    }

    /// <summary>Q3_K: code = 2 low bits + 4·(high bit), value = d·sc·(code - 4).</summary>
    private void DecodeQ3_K(byte* src, byte* codes, float* scales, float* biases)
    {
        for (int b = 0; b < Cols / 256; b++)
        {
            byte* blk = src + b * 110;
            byte* hmask = blk;
            byte* q = blk + 32;
            byte* packed = blk + 96;
            float d = HalfTable.Load(blk + 108);
            byte* c = codes + b * 256;
            if (Vector256.IsHardwareAccelerated)
            {
                // value half·128 + pair·32 + l: bits 2·pair of q[half·32 + l], and bit half·4 + pair of hmask[l] as 4
                var three = Vector256.Create((byte)3);
                var four = Vector256.Create((byte)4);
                var hm = Vector256.Load(hmask);
                for (int half = 0; half < 2; half++)
                {
                    var v = Vector256.Load(q + half * 32);
                    for (int pair = 0; pair < 4; pair++)
                    {
                        var bit = Vector256.Create((byte)(1 << (half * 4 + pair)));
                        var low = Vector256.ShiftRightLogical(v.AsUInt16(), 2 * pair).AsByte() & three;
                        (low | (Vector256.Equals(hm & bit, bit) & four)).Store(c + half * 128 + pair * 32);
                    }
                }
            }
            else
            for (int j = 0; j < 256; j++)
            {
                int half = j / 128, pair = j % 128 / 32, l = j % 32;
                int low = (q[half * 32 + l] >> (2 * pair)) & 3;
                int high = (hmask[l] >> (half * 4 + pair)) & 1;
                c[j] = (byte)(low | (high << 2));
            }
            for (int g = 0; g < 16; g++)
            {
                int low = g < 8 ? packed[g] & 0xF : packed[g - 8] >> 4;
                int high = (packed[8 + g % 4] >> (2 * (g / 4))) & 3;
                float s = d * ((low | (high << 4)) - 32);
                scales[b * 16 + g] = s;
                biases[b * 16 + g] = -4 * s;
            }
        }
    }

    /// <summary>Q2_K: 2-bit codes, value = d·(sc &amp; 15)·code - dmin·(sc &gt;&gt; 4).</summary>
    private void DecodeQ2_K(byte* src, byte* codes, float* scales, float* biases)
    {
        for (int b = 0; b < Cols / 256; b++)
        {
            byte* blk = src + b * 84;
            byte* sc = blk;
            byte* q = blk + 16;
            float d = HalfTable.Load(blk + 80), dmin = HalfTable.Load(blk + 82);
            byte* c = codes + b * 256;
            if (Vector256.IsHardwareAccelerated)
            {
                // value half·128 + pair·32 + l: bits 2·pair of q[half·32 + l] (a 16-bit shift, then each byte's low two bits)
                var three = Vector256.Create((byte)3);
                for (int half = 0; half < 2; half++)
                {
                    var v = Vector256.Load(q + half * 32);
                    for (int pair = 0; pair < 4; pair++)
                        (Vector256.ShiftRightLogical(v.AsUInt16(), 2 * pair).AsByte() & three).Store(c + half * 128 + pair * 32);
                }
            }
            else
            for (int j = 0; j < 256; j++)
            {
                int half = j / 128, pair = j % 128 / 32, l = j % 32;
                c[j] = (byte)((q[half * 32 + l] >> (2 * pair)) & 3);
            }
            for (int g = 0; g < 16; g++)
            {
                scales[b * 16 + g] = d * (sc[g] & 0xF);
                biases[b * 16 + g] = -dmin * (sc[g] >> 4);
            }
        }
    }

    private void Reserve(long codes, long scales)
    {
        if (_codeCapacity < codes)
        {
            NativeMemory.AlignedFree(_codes);
            _codeCapacity = Math.Max(codes, _codeCapacity * 2);
            _codes = (byte*)NativeMemory.AlignedAlloc((nuint)_codeCapacity, 64);
        }
        if (_scaleCapacity < scales)
        {
            NativeMemory.AlignedFree(_scales);
            NativeMemory.AlignedFree(_biases);
            _scaleCapacity = Math.Max(scales, _scaleCapacity * 2);
            _scales = (float*)NativeMemory.AlignedAlloc((nuint)(_scaleCapacity * sizeof(float)), 64);
            _biases = (float*)NativeMemory.AlignedAlloc((nuint)(_scaleCapacity * sizeof(float)), 64);
        }
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree(_codes);
        NativeMemory.AlignedFree(_scales);
        NativeMemory.AlignedFree(_biases);
        _codes = null;
        _scales = _biases = null;
        _codeCapacity = _scaleCapacity = 0;
    }
}
