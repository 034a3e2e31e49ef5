using System.Runtime.InteropServices;

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

    /// <summary>Rows are interleaved in groups of this many for the matrix-matrix kernels.</summary>
    public const int Group = 8;

    /// <summary>Whole groups of <see cref="Group"/> rows available in interleaved form.</summary>
    public int Groups { get; private set; }

    public int Rows { get; private set; }
    public int Cols { get; private set; }
    public ActivationBlock Kind { get; private set; }
    public int BlockSize => (int)Kind;

    public sbyte* Q(int row) => (sbyte*)Unsafe(_q) + (long)row * Cols;
    public float* D(int row) => (float*)Unsafe(_d) + (long)row * (Cols / BlockSize);

    /// <summary>Q8_0: d·Σq of each block of 32.</summary>
    public float* ScaledSums(int row) => (float*)Unsafe(_scaledSums) + (long)row * (Cols / 32);

    /// <summary>Q8_K: Σq of each 16 values.</summary>
    public short* Sums16(int row) => (short*)Unsafe(_sums16) + (long)row * (Cols / 16);

    private static void* Unsafe<T>(T[] array) where T : unmanaged => System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));

    /// <summary>Quantizes rows × cols floats (row-major) into this buffer.</summary>
    public void Quantize(ReadOnlySpan<float> x, int rows, int cols, ActivationBlock kind)
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
        else
            Grow(ref _sums16, rows * (cols / 16));
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * cols, cols);
            var q = new Span<sbyte>(Q(r), cols);
            var d = new Span<float>(D(r), cols / BlockSize);
            for (int b = 0; b < d.Length; b++)
                d[b] = QuantizeBlock(row.Slice(b * BlockSize, BlockSize), q.Slice(b * BlockSize, BlockSize));
            if (kind == ActivationBlock.Q8_0)
            {
                var sums = new Span<float>(ScaledSums(r), cols / 32);
                for (int b = 0; b < sums.Length; b++)
                    sums[b] = d[b] * Sum(q.Slice(b * 32, 32));
            }
            else
            {
                var sums = new Span<short>(Sums16(r), cols / 16);
                for (int g = 0; g < sums.Length; g++)
                    sums[g] = (short)Sum(q.Slice(g * 16, 16));
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

    /// <summary>
    /// Builds the interleaved copy of every whole group of 8 rows (Q8_0 activations only; the remaining
    /// rows use the row-major form).
    /// </summary>
    public void Interleave()
    {
        if (Kind != ActivationBlock.Q8_0)
            throw new InvalidOperationException("the matrix kernels take Q8_0 activations");
        Groups = Rows / Group;
        if (Groups == 0)
            return;
        int blocks = Cols / 32;
        Grow(ref _iq, Groups * Group * Cols);
        Grow(ref _id, Groups * Group * blocks);
        Grow(ref _iScaledSums, Groups * Group * blocks);
        Grow(ref _iScaledSums16, Groups * Group * (Cols / 16));
        for (int g = 0; g < Groups; g++)
        {
            int* dst = (int*)InterleavedQ(g);
            float* id = InterleavedD(g);
            float* s32 = InterleavedScaledSums32(g);
            float* s16 = InterleavedScaledSums16(g);
            for (int r = 0; r < Group; r++)
            {
                int row = g * Group + r;
                int* src = (int*)Q(row);
                for (int c4 = 0; c4 < Cols / 4; c4++)
                    dst[c4 * Group + r] = src[c4];
                float* d = D(row);
                float* sums = ScaledSums(row);
                sbyte* q = Q(row);
                for (int b = 0; b < blocks; b++)
                {
                    id[b * Group + r] = d[b];
                    s32[b * Group + r] = sums[b];
                    s16[2 * b * Group + r] = d[b] * Sum(new ReadOnlySpan<sbyte>(q + 32 * b, 16));
                    s16[(2 * b + 1) * Group + r] = d[b] * Sum(new ReadOnlySpan<sbyte>(q + 32 * b + 16, 16));
                }
            }
        }
    }

    private static int Sum(ReadOnlySpan<sbyte> values)
    {
        int s = 0;
        foreach (sbyte v in values)
            s += v;
        return s;
    }

    /// <summary>d = max|x| / 127, q = round(x / d) (ties to even, as ggml's SIMD quantizers round).</summary>
    public static float QuantizeBlock(ReadOnlySpan<float> x, Span<sbyte> q)
    {
        float amax = System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(x);
        amax = MathF.Abs(amax);
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        for (int i = 0; i < x.Length; i++)
            q[i] = (sbyte)MathF.Round(x[i] * id);
        return d;
    }

    private static void Grow<T>(ref T[] array, int length)
    {
        if (array.Length < length)
            array = GC.AllocateUninitializedArray<T>(Math.Max(length, array.Length * 2), pinned: true);
    }
}
