using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>Block size of the activations a weight type is dotted with (llama.cpp's vec_dot_type).</summary>
public enum ActivationBlock
{
    /// <summary>Q8_0: 32 int8 values per float scale (for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights).</summary>
    Q8_0 = 32,
    /// <summary>Q8_K: 256 int8 values per float scale, with sums of each 16 (for the k-quants).</summary>
    Q8_K = 256,
}

/// <summary>
/// Activations quantized to int8 once per matrix product, so every weight row is dotted with them in
/// integer arithmetic (what llama.cpp does with vec_dot_type). Row r holds <c>Cols</c> int8 values, one
/// float scale per block, and block sums for the kernels' offset corrections: Q8_0 keeps, per 32, the
/// scale times the sum of the values (Q4_0's -8 offset); Q8_K keeps the sum of each 16 values as int16
/// (the k-quants' mins and Q6_K's -32 offset). Buffers are pinned and reused, so quantizing allocates
/// nothing in the decode loop.
/// </summary>
public sealed unsafe class QuantizedActivations
{
    private sbyte[] _q = [];
    private float[] _d = [];
    private float[] _scaledSums = [];
    private short[] _sums16 = [];
    private sbyte[] _iq = [];
    private float[] _id = [];
    private float[] _iScaledSums = [];
    private float[] _iScaledSums16 = [];
    private int[] _iSums = [];
    private int[] _iSums16 = [];

    /// <summary>Rows are interleaved in groups of this many for the matrix-matrix kernels.</summary>
    public const int Group = 8;

    /// <summary>Whole groups of <see cref="Group"/> rows available in interleaved form.</summary>
    public int Groups { get; private set; }

    public int Rows { get; private set; }
    public int Cols { get; private set; }
    public ActivationBlock Kind { get; private set; }
    public int BlockSize => (int)Kind;

    // The row accessors run once per weight row in decoding (MatMul.Dot), so they are a multiply and an
    // add on fields set by Quantize (the arrays are pinned): no division, small enough to inline.
    private sbyte* _qp;
    private float* _dp, _scaledSumsP;
    private short* _sums16P;
    private int _blocksPerRow;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public sbyte* Q(int row) => _qp + (long)row * Cols;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float* D(int row) => _dp + (long)row * _blocksPerRow;

    /// <summary>Q8_0: d·Σq of each block of 32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float* ScaledSums(int row) => _scaledSumsP + (long)row * (Cols / 32);

    /// <summary>Σq of each 16 values (Q8_K's offset and min corrections; for Q8_0, Interleave's 16-value sums).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public short* Sums16(int row) => _sums16P + (long)row * (Cols / 16);

    /// <summary>
    /// The array's first 64-byte-aligned element (Grow leaves room for it): the kernels load activations
    /// 32 bytes at a time at multiples of 32, so a base off a 32-byte boundary would split every other load
    /// across cache lines.
    /// </summary>
    private static void* Unsafe<T>(T[] array) where T : unmanaged =>
        (void*)(((nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array)) + 63) & ~(nint)63);

    /// <summary>Quantizes rows × cols floats (row-major) into this buffer.</summary>
    public void Quantize(ReadOnlySpan<float> x, int rows, int cols, ActivationBlock kind)
    {
        Prepare(rows, cols, kind);
        fixed (float* xp = x)
            QuantizeRows(xp, 0, rows);
    }

    /// <summary>
    /// Sizes the buffer for rows × cols values of <paramref name="kind"/>, for <see cref="QuantizeRows"/> to
    /// fill (in parts, from several threads: each row's values depend on that row alone).
    /// </summary>
    public void Prepare(int rows, int cols, ActivationBlock kind)
    {
        if (cols % (int)kind != 0)
            throw new ArgumentException($"{cols} columns are not a whole number of {kind} blocks");
        Rows = rows;
        Cols = cols;
        Kind = kind;
        Grow(ref _q, rows * cols);
        Grow(ref _d, rows * (cols / BlockSize));
        if (kind == ActivationBlock.Q8_0)
            Grow(ref _scaledSums, rows * (cols / 32));
        Grow(ref _sums16, rows * (cols / 16)); // Q8_0 too: Interleave's sums of each 16
        _qp = (sbyte*)Unsafe(_q);
        _dp = (float*)Unsafe(_d);
        _scaledSumsP = (float*)Unsafe(_scaledSums);
        _sums16P = (short*)Unsafe(_sums16);
        _blocksPerRow = cols / (int)kind;
    }

    /// <summary>Rows [first, end) of x (row-major, <see cref="Cols"/> wide) into the buffer <see cref="Prepare"/> sized.</summary>
    public void QuantizeRows(float* xp, int first, int end)
    {
        int cols = Cols;
        for (int r = first; r < end; r++)
        {
            float* row = xp + (long)r * cols;
            sbyte* q = Q(r);
            float* d = D(r);
            short* sums16 = Sums16(r);
            for (int b = 0; b < cols / BlockSize; b++)
                d[b] = QuantizeBlock(row + b * BlockSize, q + b * BlockSize, BlockSize, sums16 + b * BlockSize / 16);
            if (Kind == ActivationBlock.Q8_0)
            {
                float* sums = ScaledSums(r);
                for (int b = 0; b < cols / 32; b++)
                    sums[b] = d[b] * (sums16[2 * b] + sums16[2 * b + 1]);
            }
        }
    }

    /// <summary>
    /// Group g's values, interleaved for vpdpbusd: for every 4 columns, 4 bytes of row 0, then of row 1,
    /// … row 7 — one 32-byte vector per 4 columns, lane r holding row r. A broadcast of 4 weight bytes
    /// against it yields the 8 rows' partial dot products in the 8 lanes.
    /// </summary>
    public sbyte* InterleavedQ(int group) => (sbyte*)Unsafe(_iq) + (long)group * Group * Cols;

    /// <summary>Group g's block scales: for each block of 32, 8 floats (one per row).</summary>
    public float* InterleavedD(int group) => (float*)Unsafe(_id) + (long)group * Group * (Cols / 32);

    /// <summary>For each block of 32, the 8 rows' d·Σq (the offset and bias terms of the matrix kernels).</summary>
    public float* InterleavedScaledSums32(int group) => (float*)Unsafe(_iScaledSums) + (long)group * Group * (Cols / 32);

    /// <summary>For each 16 values, the 8 rows' d·Σq (for weight types with 16-value sub-blocks).</summary>
    public float* InterleavedScaledSums16(int group) => (float*)Unsafe(_iScaledSums16) + (long)group * Group * (Cols / 16);

    /// <summary>For each block of 32, the 8 rows' Σq as integers (the Q4_0/Q8_0 kernels' exact offset term).</summary>
    public int* InterleavedSums32(int group) => (int*)Unsafe(_iSums) + (long)group * Group * (Cols / 32);

    /// <summary>For each 16 values, the 8 rows' Σq as integers (Q6_K's exact offset term).</summary>
    public int* InterleavedSums16(int group) => (int*)Unsafe(_iSums16) + (long)group * Group * (Cols / 16);

    /// <summary>
    /// Builds the interleaved copy of every whole group of 8 rows (Q8_0 activations only; the remaining
    /// rows use the row-major form).
    /// </summary>
    /// <param name="padToPairs">
    /// Also interleave a last partial group, and a group of zeros where the count is odd, so that every
    /// row goes through the two-group kernels (their outputs for the rows past <see cref="Rows"/> are
    /// zero and land past the batch's rows of the output, up to <see cref="Groups"/> × 8 rows).
    /// </param>
    public void Interleave(bool padToPairs = false)
    {
        PrepareInterleave(padToPairs);
        for (int g = 0; g < Groups; g++)
            InterleaveGroup(g);
    }

    /// <summary>Sets <see cref="Groups"/> and sizes the interleaved buffers, for <see cref="InterleaveGroup"/> to fill.</summary>
    /// <param name="padToPairs">As <see cref="Interleave"/>'s.</param>
    public void PrepareInterleave(bool padToPairs)
    {
        if (Kind != ActivationBlock.Q8_0)
            throw new InvalidOperationException("the matrix kernels take Q8_0 activations");
        Groups = padToPairs ? (Rows + 2 * Group - 1) / (2 * Group) * 2 : Rows / Group;
        if (Groups == 0)
            return;
        int blocks = Cols / 32;
        Grow(ref _iq, Groups * Group * Cols);
        Grow(ref _id, Groups * Group * blocks);
        Grow(ref _iScaledSums, Groups * Group * blocks);
        Grow(ref _iScaledSums16, Groups * Group * (Cols / 16));
        Grow(ref _iSums, Groups * Group * blocks);
        Grow(ref _iSums16, Groups * Group * (Cols / 16));
    }

    /// <summary>The interleaved copy of group g (it reads the group's own rows only, once they are quantized).</summary>
    public void InterleaveGroup(int g)
    {
        int blocks = Cols / 32;
        int* dst = (int*)InterleavedQ(g);
        float* id = InterleavedD(g);
        float* s32 = InterleavedScaledSums32(g);
        float* s16 = InterleavedScaledSums16(g);
        int* sums32 = InterleavedSums32(g), isums16 = InterleavedSums16(g);
        int valid = Math.Clamp(Rows - g * Group, 0, Group);
        TransposeCodes(g, valid, dst);
        for (int r = 0; r < Group; r++)
        {
            int row = g * Group + r;
            if (r >= valid)
            {
                // a padding row: zero codes, scales and sums, so its products are exactly zero
                for (int b = 0; b < blocks; b++)
                {
                    id[b * Group + r] = 0;
                    s32[b * Group + r] = 0;
                    s16[2 * b * Group + r] = 0;
                    s16[(2 * b + 1) * Group + r] = 0;
                    sums32[b * Group + r] = 0;
                    isums16[2 * b * Group + r] = 0;
                    isums16[(2 * b + 1) * Group + r] = 0;
                }
                continue;
            }
            float* d = D(row);
            float* sums = ScaledSums(row);
            short* sums16 = Sums16(row);
            for (int b = 0; b < blocks; b++)
            {
                id[b * Group + r] = d[b];
                s32[b * Group + r] = sums[b];
                s16[2 * b * Group + r] = d[b] * sums16[2 * b];
                s16[(2 * b + 1) * Group + r] = d[b] * sums16[2 * b + 1];
                sums32[b * Group + r] = sums16[2 * b] + sums16[2 * b + 1];
                isums16[2 * b * Group + r] = sums16[2 * b];
                isums16[(2 * b + 1) * Group + r] = sums16[2 * b + 1];
            }
        }
    }

    /// <summary>
    /// dst[c·8 + r] = the c-th 4 codes of row r of group g (the kernels' layout), zero for the rows from
    /// <paramref name="valid"/> on (a padded last group): 8×8 transposes of 32-bit words with AVX2 for
    /// a whole group (a scalar copy of each word cost ~3 µs for 16 rows of 768 per product).
    /// </summary>
    private void TransposeCodes(int g, int valid, int* dst)
    {
        int words = Cols / 4, c = 0;
        int* r0 = (int*)Q(g * Group);
        long stride = Cols / 4; // words between rows
        if (valid == Group && System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            for (; c + 8 <= words; c += 8)
            {
                var a0 = Vector256.Load(r0 + c);
                var a1 = Vector256.Load(r0 + stride + c);
                var a2 = Vector256.Load(r0 + 2 * stride + c);
                var a3 = Vector256.Load(r0 + 3 * stride + c);
                var a4 = Vector256.Load(r0 + 4 * stride + c);
                var a5 = Vector256.Load(r0 + 5 * stride + c);
                var a6 = Vector256.Load(r0 + 6 * stride + c);
                var a7 = Vector256.Load(r0 + 7 * stride + c);
                Transpose8x8(ref a0, ref a1, ref a2, ref a3, ref a4, ref a5, ref a6, ref a7);
                int* o = dst + (long)c * Group;
                a0.Store(o);
                a1.Store(o + 8);
                a2.Store(o + 16);
                a3.Store(o + 24);
                a4.Store(o + 32);
                a5.Store(o + 40);
                a6.Store(o + 48);
                a7.Store(o + 56);
            }
        }
        for (; c < words; c++)
        {
            for (int r = 0; r < Group; r++)
                dst[c * Group + r] = r < valid ? r0[r * stride + c] : 0;
        }
    }

    /// <summary>Rows a0..a7 of an 8×8 matrix of words become its columns.</summary>
    private static void Transpose8x8(ref Vector256<int> a0, ref Vector256<int> a1, ref Vector256<int> a2, ref Vector256<int> a3,
        ref Vector256<int> a4, ref Vector256<int> a5, ref Vector256<int> a6, ref Vector256<int> a7)
    {
        // pairs of words, then pairs of pairs within each 128-bit lane, then the lanes
        var t0 = Avx2.UnpackLow(a0, a1); var t1 = Avx2.UnpackHigh(a0, a1);
        var t2 = Avx2.UnpackLow(a2, a3); var t3 = Avx2.UnpackHigh(a2, a3);
        var t4 = Avx2.UnpackLow(a4, a5); var t5 = Avx2.UnpackHigh(a4, a5);
        var t6 = Avx2.UnpackLow(a6, a7); var t7 = Avx2.UnpackHigh(a6, a7);
        var u0 = Avx2.UnpackLow(t0.AsInt64(), t2.AsInt64()).AsInt32(); var u1 = Avx2.UnpackHigh(t0.AsInt64(), t2.AsInt64()).AsInt32();
        var u2 = Avx2.UnpackLow(t1.AsInt64(), t3.AsInt64()).AsInt32(); var u3 = Avx2.UnpackHigh(t1.AsInt64(), t3.AsInt64()).AsInt32();
        var u4 = Avx2.UnpackLow(t4.AsInt64(), t6.AsInt64()).AsInt32(); var u5 = Avx2.UnpackHigh(t4.AsInt64(), t6.AsInt64()).AsInt32();
        var u6 = Avx2.UnpackLow(t5.AsInt64(), t7.AsInt64()).AsInt32(); var u7 = Avx2.UnpackHigh(t5.AsInt64(), t7.AsInt64()).AsInt32();
        a0 = Avx2.Permute2x128(u0, u4, 0x20); a4 = Avx2.Permute2x128(u0, u4, 0x31);
        a1 = Avx2.Permute2x128(u1, u5, 0x20); a5 = Avx2.Permute2x128(u1, u5, 0x31);
        a2 = Avx2.Permute2x128(u2, u6, 0x20); a6 = Avx2.Permute2x128(u2, u6, 0x31);
        a3 = Avx2.Permute2x128(u3, u7, 0x20); a7 = Avx2.Permute2x128(u3, u7, 0x31);
    }

    /// <summary>
    /// One block of <paramref name="n"/> values (a multiple of 16): d = max|x| / 127, q = round(x / d)
    /// (ties to even, as ggml's SIMD quantizers round), and the sum of each 16 quantized values. With
    /// AVX-512: the same products x·(1/d), rounded to nearest even by the conversion as
    /// <c>MathF.Round</c> rounds, so the same bytes as the scalar loop; a block holding a NaN takes the
    /// scalar loop, whose NaN handling it keeps.
    /// </summary>
    private static float QuantizeBlock(float* x, sbyte* q, int n, short* sums16)
    {
        if (n == 32 && Avx512F.IsSupported)
        {
            float d32 = QuantizeBlock32(x, q, sums16);
            return float.IsNaN(d32) ? QuantizeScalar(x, q, n, sums16) : d32;
        }
        if (Vector512.IsHardwareAccelerated)
        {
            var magnitude = Vector512<float>.Zero;
            var nan = Vector512<float>.Zero;
            for (int i = 0; i < n; i += 16)
            {
                var v = Vector512.Load(x + i);
                magnitude = Vector512.Max(magnitude, Vector512.Abs(v));
                nan |= ~Vector512.Equals(v, v);
            }
            if (nan == Vector512<float>.Zero)
            {
                var m = Vector256.Max(magnitude.GetLower(), magnitude.GetUpper());
                var m4 = Vector128.Max(m.GetLower(), m.GetUpper());
                float amax = MathF.Max(MathF.Max(m4[0], m4[1]), MathF.Max(m4[2], m4[3]));
                float d = amax / 127f;
                var id = Vector512.Create(d != 0 ? 1f / d : 0f);
                for (int i = 0; i < n; i += 16)
                {
                    var values = Avx512F.ConvertToVector512Int32(Vector512.Load(x + i) * id);
                    Avx512F.ConvertToVector128SByteWithSaturation(values).Store(q + i);
                    sums16[i / 16] = (short)Vector512.Sum(values);
                }
                return d;
            }
        }
        return QuantizeScalar(x, q, n, sums16);
    }

    /// <summary>
    /// <see cref="QuantizeBlock"/> for a block of 32 with AVX-512, in registers: the largest magnitude by a
    /// tree of lane swaps (vmaxps on magnitudes, so the same value as the scalar maximum), the same products
    /// and conversion, both sums of 16 in one reduction. NaN when the block holds a NaN (the caller then takes
    /// the scalar loop). Measured, 16 rows of 768 (a continuous batch's input, quantized before each of its
    /// products): 4.8 → 3.3 µs.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float QuantizeBlock32(float* x, sbyte* q, short* sums16)
    {
        var v0 = Vector512.Load(x);
        var v1 = Vector512.Load(x + 16);
        if ((~Vector512.Equals(v0, v0) | ~Vector512.Equals(v1, v1)) != Vector512<float>.Zero)
            return float.NaN;
        var m = Avx512F.Max(Vector512.Abs(v0), Vector512.Abs(v1));
        m = Avx512F.Max(m, Avx512F.Shuffle4x128(m, m, 0b01_00_11_10)); // 256-bit halves
        m = Avx512F.Max(m, Avx512F.Shuffle4x128(m, m, 0b10_11_00_01)); // 128-bit lanes
        m = Avx512F.Max(m, Avx512F.Permute4x32(m, 0b01_00_11_10));
        m = Avx512F.Max(m, Avx512F.Permute4x32(m, 0b10_11_00_01));
        float d = m.ToScalar() / 127f;
        var id = Vector512.Create(d != 0 ? 1f / d : 0f);
        var i0 = Avx512F.ConvertToVector512Int32(v0 * id);
        var i1 = Avx512F.ConvertToVector512Int32(v1 * id);
        Avx512F.ConvertToVector128SByteWithSaturation(i0).Store(q);
        Avx512F.ConvertToVector128SByteWithSaturation(i1).Store(q + 16);
        // both sums of 16 at once: halves folded (i0's into the low 256 bits, i1's into the high), then within each
        var t = Avx512F.Add(Avx512F.Shuffle4x128(i0, i1, 0b01_00_01_00), Avx512F.Shuffle4x128(i0, i1, 0b11_10_11_10));
        t = Avx512F.Add(t, Avx512F.Shuffle4x128(t, t, 0b10_11_00_01));
        t = Avx512F.Add(t, Avx512F.Shuffle(t, 0b01_00_11_10));
        t = Avx512F.Add(t, Avx512F.Shuffle(t, 0b10_11_00_01));
        sums16[0] = (short)t.ToScalar();
        sums16[1] = (short)t.GetElement(8);
        return d;
    }

    private static float QuantizeScalar(float* x, sbyte* q, int n, short* sums16)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(new ReadOnlySpan<float>(x, n));
        float scale = MathF.Abs(max) / 127f;
        float inverse = scale != 0 ? 1f / scale : 0f;
        for (int i = 0; i < n; i++)
            q[i] = (sbyte)MathF.Round(x[i] * inverse);
        for (int g = 0; g < n / 16; g++)
        {
            int sum = 0;
            for (int i = 0; i < 16; i++)
                sum += q[16 * g + i];
            sums16[g] = (short)sum;
        }
        return scale;
    }

    private static void Grow<T>(ref T[] array, int length) where T : unmanaged
    {
        int slack = 64 / sizeof(T);
        if (array.Length < length + slack)
            array = GC.AllocateUninitializedArray<T>(Math.Max(length + slack, array.Length * 2), pinned: true);
    }
}
