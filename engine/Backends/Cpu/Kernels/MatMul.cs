using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// y = x·Wᵀ over a range of W's rows, for a weight matrix in its GGUF type. Each weight row is read
/// once per call and dotted with every row of x, so a batch (prefill, a draft tree) costs one pass over
/// the weights. Quantized types with a fast kernel (Q8_0, Q4_0, Q4_K, Q6_K) take activations quantized
/// to int8 beforehand (<see cref="QuantizedActivations"/>); F16/BF16/F32 take float activations; the
/// other quantized types fall back to dequantizing each row into a per-thread buffer.
/// </summary>
public static unsafe class MatMul
{
    [ThreadStatic]
    private static float[]? s_row;

    /// <summary>The int8 activation format a weight type's fast kernel wants, or null for float activations.</summary>
    public static ActivationBlock? ActivationFor(GgmlType type) => type switch
    {
        GgmlType.Q8_0 or GgmlType.Q4_0 => ActivationBlock.Q8_0,
        GgmlType.Q4_K or GgmlType.Q6_K => ActivationBlock.Q8_K,
        _ => null,
    };

    /// <summary>
    /// y[r, o] = x[r, :] · W[o, :] for o in [<paramref name="rowStart"/>, <paramref name="rowEnd"/>), r &lt; n.
    /// </summary>
    /// <param name="x">[n, cols] float activations.</param>
    /// <param name="qx">The same activations quantized to <see cref="ActivationFor"/>(W.Type), or null if it needs none.</param>
    /// <param name="y">[n, rows] output; with groups padded past n (<see cref="QuantizedActivations.Interleave"/>), room for their rows too.</param>
    /// <param name="panels">The same activations packed for the float matrix kernels (F16/F32 weights), or null.</param>
    /// <param name="packed">W repacked for the native kernels (<see cref="Repacked16"/>), or null: then every quantized row, of the matrix
    /// kernels' groups and of the row kernels alike, goes through it.</param>
    public static void Rows(TensorView w, Repacked16? packed, ReadOnlySpan<float> x, QuantizedActivations? qx, QuantizedActivations? groups8, FloatPanels? panels,
        int n, Span<float> y, int rowStart, int rowEnd)
    {
        int cols = checked((int)w.RowLength);
        int rows = checked((int)w.RowCount);
        long rowBytes = w.RowBytes;
        // Whole groups of 8 activation rows go through the matrix-matrix kernels; the rest row by row.
        bool isFloat = w.Type is GgmlType.F16 or GgmlType.BF16 or GgmlType.F32;
        int groups = !HasGemm(w.Type, cols) ? 0
            : isFloat ? (panels is null ? 0 : n / QuantizedActivations.Group)
            : groups8?.Groups ?? 0;
        if (!isFloat && (long)Math.Max(n, groups * QuantizedActivations.Group) * rows > y.Length)
            throw new ArgumentException($"matmul {w.Name}: {groups} activation groups write {groups * QuantizedActivations.Group} rows of {rows}; the output holds {y.Length} values", nameof(y));
        float* four4 = stackalloc float[4];
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            if (packed is not null && (groups > 0 || qx is not null))
            {
                // A repacked matrix in blocks of PackedRowBlock rows, each block's groups of 16 in one kernel call
                // that prefetches group g + 1 while it computes group g (in blocks of RowBlock, every other group
                // started cold; measured on the 16-sequence step, medians of 6 interleaved runs: products 12.4 ->
                // 12.0 ms, the Q6_K output 2.9 -> 2.6). The rows past the groups, and decoding's one row, through
                // the row kernel over the same range.
                int first = Math.Min(n, groups * QuantizedActivations.Group);
                for (int o0 = rowStart; o0 < rowEnd; o0 += PackedRowBlock)
                {
                    int o1 = Math.Min(rowEnd, o0 + PackedRowBlock);
                    if (groups > 0)
                        PackedBlock(w, packed, groups8!, groups, yp, rows, o0, o1);
                    if (qx is not null)
                        PackedRows(packed, qx, first, n, yp, rows, o0, o1);
                }
                return;
            }
            // Float weights under the native kernels: every whole panel of 16 activation rows over the range's
            // whole groups of 8 weight rows in one call; FloatBlock does what is left (a last panel of 8, rows past them).
            int nativeEnd = isFloat && groups >= 2 ? NativeFloatPanels(w, panels!, groups / 2, yp, rows, rowStart, rowEnd) : rowStart;
            // Cache blocking: a block of weight rows (small enough to stay in L2) is run against one
            // activation group at a time, so the group stays in L1 while the block's rows stream past it.
            for (int o0 = rowStart; o0 < rowEnd; o0 += RowBlock)
            {
                int o1 = Math.Min(rowEnd, o0 + RowBlock);
                if (groups > 0)
                {
                    if (isFloat)
                        FloatBlock(w, panels!, groups, yp, rows, o0, o1, nativeEnd);
                    else
                        QuantizedBlock(w, groups8!, groups, yp, rows, o0, o1);
                }
                // Rows left to the row kernels: four at a time where a 4-row kernel exists (each row's
                // result bit for bit the one-row kernel's), then one at a time.
                int first = Math.Min(n, groups * QuantizedActivations.Group); // padded groups cover every row
                if (n - first == 1 && OneRow(w, cols, rowBytes, qx, first, yp + (long)first * rows, o0, o1))
                    continue;
                if (first < n && qx is null && ActivationFor(w.Type) is null && !isFloat && DecodedRows.Supports(w.Type) && CpuFeatures.Avx2Fma)
                {
                    DecodedRowDots(w, xp, first, n, yp, rows, o0, o1);
                    continue;
                }
                bool four = n - first >= 4 && VecDot.HasRows4(w.Type) && (w.Type == GgmlType.F16 || qx is not null);
                for (int o = o0; o < o1; o++)
                {
                    byte* wr = w.Data + o * rowBytes;
                    int r = first;
                    for (; four && r + 4 <= n; r += 4)
                    {
                        Rows4(w.Type, wr, cols, xp, qx, r, four4);
                        for (int i = 0; i < 4; i++)
                            yp[(long)(r + i) * rows + o] = four4[i];
                    }
                    for (; r < n; r++)
                        yp[(long)r * rows + o] = Dot(w.Type, wr, cols, xp + (long)r * cols, qx, r);
                }
            }
        }
    }

    /// <summary>Weight rows per cache block (the matrix kernels run a whole block against one activation group).</summary>
    private const int RowBlock = 32;

    /// <summary>
    /// Weight rows per block of a repacked matrix: each pair of activation groups streams the block once, so it should
    /// stay in L2 for the next pair (256 rows of Q4_0 at K = 4096: 0.6 MiB).
    /// </summary>
    private const int PackedRowBlock = 256;

    /// <summary>
    /// What the native Q4_0, Q8_0 and Q6_K matrix kernels compute for one weight row and one activation row
    /// (Q8_0 activations), written plainly: per block (Q4_0, Q8_0: 32 values) or sub-block (Q6_K: 16), the
    /// integer Σ (code − offset)·q — Q4_0's nibbles less 8, Q8_0's signed bytes, Q6_K's 6-bit codes less 32
    /// — then acc = fma(float(Σ), scale·dx, acc) in order, with scale the block's d (Q6_K: d·sc). No float
    /// bias term: one rounding fewer than the decoded rows' scale-and-bias form the C# matrix kernels keep.
    /// The tests check the kernels against it bit for bit.
    /// </summary>
    public static float ExactOffsetReference(GgmlType type, byte* row, QuantizedActivations qx, int activationRow, int cols)
    {
        if (type is not (GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q6_K) || cols % (type == GgmlType.Q6_K ? 256 : 32) != 0)
            throw new ArgumentException($"{type} with {cols} columns has no exact-offset kernel");
        sbyte* q = qx.Q(activationRow);
        float* dx = qx.D(activationRow);
        float acc = 0;
        if (type == GgmlType.Q6_K)
        {
            for (int v0 = 0; v0 < cols; v0 += 16)
            {
                byte* blk = row + v0 / 256 * 210;
                float d = (float)BitConverter.UInt16BitsToHalf(*(ushort*)(blk + 208));
                float scale = d * (sbyte)blk[192 + v0 % 256 / 16];
                int sum = 0;
                for (int v = v0; v < v0 + 16; v++)
                {
                    int h = v % 256 / 128, part = v % 128 / 32, l = v % 32;
                    int low = blk[64 * h + 32 * (part & 1) + l] >> (4 * (part >> 1)) & 0xF, high = blk[128 + 32 * h + l] >> (2 * part) & 3;
                    sum += ((low | high << 4) - 32) * q[v];
                }
                acc = MathF.FusedMultiplyAdd(sum, scale * dx[v0 / 32], acc);
            }
            return acc;
        }
        for (int b = 0; b < cols / 32; b++)
        {
            byte* blk = row + b * (type == GgmlType.Q4_0 ? 18 : 34);
            float d = (float)BitConverter.UInt16BitsToHalf(*(ushort*)blk);
            int sum = 0;
            for (int j = 0; j < 32; j++)
            {
                int value = type == GgmlType.Q4_0 ? (j < 16 ? blk[2 + j] & 0xF : blk[2 + j - 16] >> 4) - 8 : (sbyte)blk[2 + j];
                sum += value * q[32 * b + j];
            }
            acc = MathF.FusedMultiplyAdd(sum, d * dx[b], acc);
        }
        return acc;
    }

    /// <summary>
    /// Target floats of each activation row per pass of the float kernels: a 16-row panel block of
    /// 16 × 384 × 4 = 24 KiB stays in a 32 KiB L1 beside the weight rows streaming past it (measured:
    /// 384 beats 256 and 512). Rows are split into equal blocks near this size.
    /// </summary>
    private const int FloatColumnBlock = 384;

    [ThreadStatic]
    private static DecodedRows? s_decoded;

    /// <summary>
    /// Quantized weights against the activation groups, two groups at a time. Under the native kernels,
    /// Q4_0, Q8_0, Q4_K, Q5_K and Q6_K are read as the file holds them, eight weight rows at a time; the other types,
    /// and the rows and the odd last group those kernels leave, go through <see cref="DecodedBlock"/>.
    /// </summary>
    private static void QuantizedBlock(TensorView w, QuantizedActivations qx, int groups, float* y, int rows, int o0, int o1)
    {
        const int G = QuantizedActivations.Group;
        if (!NativeKernels.Available || !NativeKernels.HasDirect(w.Type))
        {
            DecodedBlock(w, qx, 0, groups, y, rows, o0, o1);
            return;
        }
        int pairs = groups / 2 * 2, direct = o0 + (o1 - o0) / 8 * 8, cols = checked((int)w.RowLength);
        for (int group = 0; group < pairs && direct > o0; group += 2)
            NativeKernels.Direct(w.Type, w.Data + o0 * w.RowBytes, w.RowBytes, direct - o0, cols, qx, group, y + (long)group * G * rows + o0, rows);
        if (direct < o1 && pairs > 0)
            DecodedBlock(w, qx, 0, pairs, y, rows, direct, o1);
        if (pairs < groups)
            DecodedBlock(w, qx, pairs, groups, y, rows, o0, o1);
    }

    /// <summary>
    /// <see cref="QuantizedBlock"/> for a matrix repacked sixteen rows at a time: pairs of activation
    /// groups through <c>engine_x16_rows</c>, a group of 16 weight rows the range cuts (never, where the chunks are
    /// in sixteens) computed whole into a tile and the range's rows copied out; an odd last activation group
    /// through <see cref="DecodedBlock"/>.
    /// </summary>
    private static void PackedBlock(TensorView w, Repacked16 packed, QuantizedActivations qx, int groups, float* y, int rows, int o0, int o1)
    {
        const int G = QuantizedActivations.Group;
        int pairs = groups / 2 * 2, a = (o0 + 15) / 16 * 16, b = o1 / 16 * 16;
        float* tile = stackalloc float[2 * G * 16];
        for (int group = 0; group < pairs; group += 2)
        {
            sbyte* q0 = qx.InterleavedQ(group), q1 = qx.InterleavedQ(group + 1);
            float* d0 = qx.InterleavedD(group), d1 = qx.InterleavedD(group + 1);
            bool sixteen = packed.Type == GgmlType.Q6_K; // its offset comes out of sums per 16
            int* i0 = sixteen ? qx.InterleavedSums16(group) : qx.InterleavedSums32(group);
            int* i1 = sixteen ? qx.InterleavedSums16(group + 1) : qx.InterleavedSums32(group + 1);
            float* s0 = qx.InterleavedScaledSums32(group), s1 = qx.InterleavedScaledSums32(group + 1);
            float* yg = y + (long)group * G * rows;
            if (a < b)
                NativeKernels.engine_x16_rows((int)packed.Type, packed.Group(a / 16), (b - a) / 16, packed.Blocks, q0, q1, d0, d1, i0, i1, s0, s1, yg + a, rows);
            for (int g0 = o0 / 16 * 16; g0 < o1; g0 += 16)
            {
                if (g0 >= a && g0 < b)
                    continue; // a whole group, done above
                NativeKernels.engine_x16_rows((int)packed.Type, packed.Group(g0 / 16), 1, packed.Blocks, q0, q1, d0, d1, i0, i1, s0, s1, tile, 16);
                for (int o = Math.Max(o0, g0); o < Math.Min(o1, g0 + 16); o++)
                {
                    for (int r = 0; r < 2 * G; r++)
                        yg[(long)r * rows + o] = tile[r * 16 + o - g0];
                }
            }
        }
        if (pairs < groups)
            DecodedBlock(w, qx, pairs, groups, y, rows, o0, o1);
    }

    /// <summary>
    /// The row kernels' case on a repacked matrix: activation rows [first, n) four at a time through
    /// <c>engine_x16_few</c>, each row's result its own (the same alone, beside others, or in a group of the
    /// matrix kernel). Groups the range cuts are computed whole into a tile, as in <see cref="PackedBlock"/>.
    /// </summary>
    private static void PackedRows(Repacked16 packed, QuantizedActivations qx, int first, int n, float* y, int rows, int o0, int o1)
    {
        int a = (o0 + 15) / 16 * 16, b = o1 / 16 * 16;
        sbyte** q = stackalloc sbyte*[4];
        float** d = stackalloc float*[4];
        float** xs = stackalloc float*[4];
        short** s16 = stackalloc short*[4];
        float** yr = stackalloc float*[4];
        float* tile = stackalloc float[4 * 16];
        for (int r = first; r < n; r += 4)
        {
            int count = Math.Min(4, n - r);
            for (int j = 0; j < count; j++)
            {
                q[j] = qx.Q(r + j);
                d[j] = qx.D(r + j);
                xs[j] = qx.ScaledSums(r + j);
                s16[j] = qx.Sums16(r + j);
                yr[j] = y + (long)(r + j) * rows + a;
            }
            if (a < b && NativeKernels.engine_x16_few((int)packed.Type, packed.Group(a / 16), (b - a) / 16, packed.Blocks, count, q, d, xs, s16, yr) != 0)
                throw new InvalidOperationException("engine_x16_few refused its arguments");
            for (int g0 = o0 / 16 * 16; g0 < o1; g0 += 16)
            {
                if (g0 >= a && g0 < b)
                    continue;
                for (int j = 0; j < count; j++)
                    yr[j] = tile + j * 16;
                if (NativeKernels.engine_x16_few((int)packed.Type, packed.Group(g0 / 16), 1, packed.Blocks, count, q, d, xs, s16, yr) != 0)
                    throw new InvalidOperationException("engine_x16_few refused its arguments");
                for (int j = 0; j < count; j++)
                {
                    for (int o = Math.Max(o0, g0); o < Math.Min(o1, g0 + 16); o++)
                        y[(long)(r + j) * rows + o] = tile[j * 16 + o - g0];
                }
            }
        }
    }

    /// <summary>
    /// Activation groups [<paramref name="firstGroup"/>, <paramref name="groups"/>) against weight rows
    /// [<paramref name="o0"/>, <paramref name="o1"/>): the rows decoded once, then run two groups at a
    /// time, eight or four weight rows at a time (the remaining rows and an odd last group one at a time).
    /// </summary>
    private static void DecodedBlock(TensorView w, QuantizedActivations qx, int firstGroup, int groups, float* y, int rows, int o0, int o1)
    {
        const int G = QuantizedActivations.Group;
        var decoded = s_decoded ??= new DecodedRows();
        decoded.Decode(w, o0, o1 - o0);
        bool sixteen = decoded.SubBlock == 16, vnni = CpuFeatures.Vnni;
        int blocks = decoded.Cols / 32;
        long codeStride = decoded.Cols, scaleStride = decoded.SubBlocksPerRow;
        float* out8 = stackalloc float[G];
        float* tile = stackalloc float[4 * 2 * G];

        void Single(int o, int g)
        {
            byte* codes = decoded.Codes(o - o0);
            float* scales = decoded.Scales(o - o0), biases = decoded.Biases(o - o0);
            if (sixteen)
            {
                if (vnni) Gemm.Codes16<VnniIsa>(codes, scales, biases, blocks, qx, g, out8);
                else Gemm.Codes16<Avx2Isa>(codes, scales, biases, blocks, qx, g, out8);
            }
            else if (vnni) Gemm.Codes32<VnniIsa>(codes, scales, biases, blocks, qx, g, out8);
            else Gemm.Codes32<Avx2Isa>(codes, scales, biases, blocks, qx, g, out8);
            for (int r = 0; r < G; r++)
                y[(long)(g * G + r) * rows + o] = out8[r];
        }

        bool native = NativeKernels.Available;
        int group = firstGroup;
        for (; group + 1 < groups; group += 2)
        {
            int o = o0;
            for (; native && o + 8 <= o1; o += 8)
            {
                if (sixteen)
                {
                    NativeKernels.engine_codes16_8x16(decoded.Codes(o - o0), codeStride, decoded.Scales(o - o0), decoded.Biases(o - o0), scaleStride, blocks,
                        qx.InterleavedQ(group), qx.InterleavedQ(group + 1), qx.InterleavedD(group), qx.InterleavedD(group + 1),
                        qx.InterleavedScaledSums16(group), qx.InterleavedScaledSums16(group + 1), y + (long)group * G * rows + o, rows);
                }
                else
                {
                    NativeKernels.engine_codes32_8x16(decoded.Codes(o - o0), codeStride, decoded.Scales(o - o0), decoded.Biases(o - o0), scaleStride, blocks,
                        qx.InterleavedQ(group), qx.InterleavedQ(group + 1), qx.InterleavedD(group), qx.InterleavedD(group + 1),
                        qx.InterleavedScaledSums32(group), qx.InterleavedScaledSums32(group + 1), y + (long)group * G * rows + o, rows);
                }
            }
            for (; o + 4 <= o1; o += 4)
            {
                byte* codes = decoded.Codes(o - o0);
                float* scales = decoded.Scales(o - o0), biases = decoded.Biases(o - o0);
                if (sixteen)
                {
                    if (vnni) Gemm.Codes16x4x2<VnniIsa>(codes, codeStride, scales, biases, scaleStride, blocks, qx, group, tile);
                    else Gemm.Codes16x4x2<Avx2Isa>(codes, codeStride, scales, biases, scaleStride, blocks, qx, group, tile);
                }
                else if (vnni) Gemm.Codes32x4x2<VnniIsa>(codes, codeStride, scales, biases, scaleStride, blocks, qx, group, tile);
                else Gemm.Codes32x4x2<Avx2Isa>(codes, codeStride, scales, biases, scaleStride, blocks, qx, group, tile);
                for (int i = 0; i < 4; i++)
                {
                    for (int r = 0; r < 2 * G; r++)
                        y[(long)(group * G + r) * rows + o + i] = tile[i * 2 * G + r];
                }
            }
            for (; o < o1; o++)
            {
                Single(o, group);
                Single(o, group + 1);
            }
        }
        if (group < groups)
        {
            for (int o = o0; o < o1; o++)
                Single(o, group);
        }
    }

    /// <summary>
    /// The whole panels [0, <paramref name="full"/>) of 16 activation rows against weight rows [rowStart, end) through
    /// <c>engine_float_outer</c>, end the last whole group of 8 weight rows; returns end (rowStart where the native
    /// kernel does not apply: no library, no transposed panels, columns not in sixteens). Bit for bit what
    /// <see cref="Gemm.F32Outer8x16"/> computes in <see cref="FloatBlock"/>, at about twice its speed from memory.
    /// </summary>
    private static int NativeFloatPanels(TensorView w, FloatPanels panels, int full, float* y, int rows, int rowStart, int rowEnd)
    {
        int cols = checked((int)w.RowLength), end = rowStart + (rowEnd - rowStart) / 8 * 8;
        if (!NativeKernels.Available || !FloatPanels.HasTransposed || cols % 16 != 0 || end == rowStart)
            return rowStart;
        for (int p0 = 0; p0 < full; p0 += NativeKernels.MaxFloatPanels)
        {
            int count = Math.Min(NativeKernels.MaxFloatPanels, full - p0);
            if (NativeKernels.engine_float_outer((int)w.Type, w.Data + rowStart * w.RowBytes, w.RowBytes, end - rowStart, rows - end, cols, panels.Transposed(p0), count,
                y + (long)p0 * FloatPanels.Rows16 * rows + rowStart, rows) != 0)
            {
                if (p0 == 0)
                    return rowStart;
                throw new InvalidOperationException($"engine_float_outer refused {w.Name} ({w.Type}) after taking its first panels");
            }
        }
        return end;
    }

    [ThreadStatic]
    private static float* s_widened;

    [ThreadStatic]
    private static long s_widenedCapacity;

    /// <summary>
    /// F16/F32 weights: 16-row panels (and a last 8-row one) through the float kernels, column block by
    /// column block. F16 rows of the block are widened to float once, into a per-thread buffer, and then
    /// serve every panel: the conversion is paid once per weight instead of once per 16 activation rows,
    /// and the FMA loop keeps all 16 accumulators in registers.
    /// </summary>
    /// <param name="nativeEnd">Rows below it have their whole panels done already (<see cref="NativeFloatPanels"/>).</param>
    private static void FloatBlock(TensorView w, FloatPanels panels, int groups, float* y, int rows, int o0, int o1, int nativeEnd)
    {
        int cols = checked((int)w.RowLength);
        if (o1 <= nativeEnd && groups % 2 == 0)
            return; // nothing left: no last panel of 8, every row's whole panels done
        float* weights;
        long stride;
        if (w.Type is GgmlType.F16 or GgmlType.BF16)
        {
            long need = (long)(o1 - o0) * cols;
            if (s_widenedCapacity < need)
            {
                System.Runtime.InteropServices.NativeMemory.AlignedFree(s_widened);
                s_widenedCapacity = Math.Max(need, (long)RowBlock * cols);
                s_widened = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(s_widenedCapacity * sizeof(float)), 64);
            }
            for (int o = o0; o < o1; o++)
            {
                var src = (ushort*)(w.Data + o * w.RowBytes);
                if (w.Type == GgmlType.F16)
                    VecDot.WidenHalves(src, s_widened + (long)(o - o0) * cols, cols);
                else
                    VecDot.WidenBFloat16(src, s_widened + (long)(o - o0) * cols, cols);
            }
            weights = s_widened - (long)o0 * cols;
            stride = cols;
        }
        else
        {
            weights = (float*)w.Data;
            stride = cols;
        }

        float* partial = stackalloc float[FloatPanels.Rows16];
        float* tile = stackalloc float[8 * FloatPanels.Rows16];
        int panelCount = (groups + 1) / 2;
        for (int p = 0; p < panelCount; p++)
        {
            int height = Math.Min(FloatPanels.Rows16, groups * QuantizedActivations.Group - p * FloatPanels.Rows16);
            int first = o0;
            if (height == FloatPanels.Rows16)
                first = Math.Clamp(nativeEnd, o0, o1);
            if (first == o1)
                continue;
            if (height == FloatPanels.Rows16 && FloatPanels.HasTransposed)
            {
                // 512-bit outer products, eight weight rows at a time; the rows left over take the path below.
                float* xT = panels.Transposed(p);
                for (; first + 8 <= o1; first += 8)
                {
                    Gemm.F32Outer8x16(weights + first * stride, stride, cols, xT, tile);
                    for (int i = 0; i < 8; i++)
                    {
                        for (int r = 0; r < FloatPanels.Rows16; r++)
                            y[(long)(p * FloatPanels.Rows16 + r) * rows + first + i] = tile[i * FloatPanels.Rows16 + r];
                    }
                }
                if (first == o1)
                    continue;
            }
            float* panel = panels.Panel(p);
            for (int o = first; o < o1; o++)
            {
                for (int r = 0; r < height; r++)
                    y[(long)(p * FloatPanels.Rows16 + r) * rows + o] = 0;
            }
            int blocks = (cols + FloatColumnBlock - 1) / FloatColumnBlock;
            int block = (cols / blocks + 7) / 8 * 8;
            for (int c0 = 0; c0 < cols; c0 += block)
            {
                int count = Math.Min(block, cols - c0);
                float* xp = panel + (long)c0 * height;
                for (int o = first; o < o1; o++)
                {
                    float* wr = weights + o * stride + c0;
                    if (height == FloatPanels.Rows16)
                        Gemm.F32x16(wr, count, xp, partial);
                    else
                        Gemm.F32(wr, count, xp, partial);
                    for (int r = 0; r < height; r++)
                        y[(long)(p * FloatPanels.Rows16 + r) * rows + o] += partial[r];
                }
            }
        }
    }

    /// <summary>Whether a type has a matrix-matrix kernel on this CPU.</summary>
    public static bool HasGemm(GgmlType type, int cols) => CpuFeatures.Avx2Fma && type switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 => cols % 8 == 0,
        _ => DecodedRows.Supports(type),
    };

    /// <summary>One weight row with activation rows r..r+3 (a type <see cref="VecDot.HasRows4"/> allows).</summary>
    private static void Rows4(GgmlType type, byte* w, int cols, float* x, QuantizedActivations? qx, int r, float* y)
    {
        if (type == GgmlType.F16)
            VecDot.F16Rows4((ushort*)w, x + (long)r * cols, x + (long)(r + 1) * cols, x + (long)(r + 2) * cols, x + (long)(r + 3) * cols, cols, y);
        else if (type == GgmlType.Q4_0)
        {
            sbyte** q = stackalloc sbyte*[4];
            float** d = stackalloc float*[4];
            float** s = stackalloc float*[4];
            for (int i = 0; i < 4; i++)
            {
                q[i] = qx!.Q(r + i);
                d[i] = qx.D(r + i);
                s[i] = qx.ScaledSums(r + i);
            }
            VecDot.Q4_0Rows4(w, q, d, s, cols / 32, y);
        }
        else
            VecDot.Q8_0Rows4(w, qx!.Q(r), qx.Q(r + 1), qx.Q(r + 2), qx.Q(r + 3), qx.D(r), qx.D(r + 1), qx.D(r + 2), qx.D(r + 3), cols / 32, y);
    }

    /// <summary>
    /// Decoding's case, one activation row against weight rows [o0, o1): the type's kernel called in a
    /// loop with the activation's pointers taken once, instead of <see cref="Dot"/>'s dispatch per
    /// weight row (measured: the dispatch was ~10% of a decode step's samples). The same kernels, so the
    /// same results. False for the types left to <see cref="Dot"/>.
    /// </summary>
    private static bool OneRow(TensorView w, int cols, long rowBytes, QuantizedActivations? qx, int r, float* y, int o0, int o1)
    {
        if (qx is null)
            return false;
        byte* wr = w.Data + o0 * rowBytes;
        sbyte* q = qx.Q(r);
        float* d = qx.D(r);
        switch (w.Type)
        {
            case GgmlType.Q4_0:
            {
                float* s = qx.ScaledSums(r);
                for (int o = o0; o < o1; o++, wr += rowBytes)
                    y[o] = VecDot.Q4_0(wr, q, d, s, cols / 32);
                return true;
            }
            case GgmlType.Q8_0:
                for (int o = o0; o < o1; o++, wr += rowBytes)
                    y[o] = VecDot.Q8_0(wr, q, d, cols / 32);
                return true;
            case GgmlType.Q4_K:
            {
                short* s = qx.Sums16(r);
                for (int o = o0; o < o1; o++, wr += rowBytes)
                    y[o] = VecDot.Q4_K(wr, q, d, s, cols / 256);
                return true;
            }
            case GgmlType.Q6_K:
            {
                short* s = qx.Sums16(r);
                for (int o = o0; o < o1; o++, wr += rowBytes)
                    y[o] = VecDot.Q6_K(wr, q, d, s, cols / 256);
                return true;
            }
            default:
                return false;
        }
    }

    [ThreadStatic]
    private static float[]? s_subSums;

    /// <summary>
    /// The row kernels' case for the quantized types without one (Q2_K and Q3_K, and Q4_1, Q5_0, Q5_1 and Q5_K where
    /// the native kernels do not run): the weight rows decoded once into codes, scales and biases (<see cref="DecodedRows"/>'
    /// vector decoders), then each activation row in float: per sub-block, scale·Σ code·x + bias·Σ x. Every row
    /// goes this way, one alone or several, so a row's result does not depend on the rows beside it. Before it each
    /// weight row was dequantized to floats by the scalar reference for every activation row: the 110M-shape Q5_K_M
    /// model decoded 3.3-3.6 tokens/s.
    /// </summary>
    private static void DecodedRowDots(TensorView w, float* x, int first, int n, float* y, int rows, int o0, int o1)
    {
        var decoded = s_decoded ??= new DecodedRows();
        decoded.Decode(w, o0, o1 - o0);
        int cols = decoded.Cols, sub = decoded.SubBlock, subs = decoded.SubBlocksPerRow;
        var sums = s_subSums is { } a && a.Length >= subs ? a : s_subSums = new float[Math.Max(subs, 256)];
        fixed (float* xs = sums)
        {
            for (int r = first; r < n; r++)
            {
                float* xr = x + (long)r * cols;
                for (int b = 0; b < subs; b++)
                {
                    var v = Vector256.Load(xr + b * sub);
                    for (int j = 8; j < sub; j += 8)
                        v += Vector256.Load(xr + b * sub + j);
                    xs[b] = Vector256.Sum(v);
                }
                for (int o = o0; o < o1; o++)
                {
                    byte* codes = decoded.Codes(o - o0);
                    float* scales = decoded.Scales(o - o0), biases = decoded.Biases(o - o0);
                    float acc = 0;
                    for (int b = 0; b < subs; b++)
                    {
                        var dot = Vector256<float>.Zero;
                        for (int j = 0; j < sub; j += 8)
                        {
                            var c = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(codes + b * sub + j));
                            dot = Fma.MultiplyAdd(c, Vector256.Load(xr + b * sub + j), dot);
                        }
                        acc = MathF.FusedMultiplyAdd(scales[b], Vector256.Sum(dot), MathF.FusedMultiplyAdd(biases[b], xs[b], acc));
                    }
                    y[(long)r * rows + o] = acc;
                }
            }
        }
    }

    /// <summary>One weight row (at <paramref name="w"/>) with activation row <paramref name="r"/>.</summary>
    public static float Dot(GgmlType type, byte* w, int cols, float* x, QuantizedActivations? qx, int r)
    {
        if (qx is null && ActivationFor(type) is not null)
            return DequantizedDot(type, w, cols, x); // float activations were asked for
        switch (type)
        {
            case GgmlType.F32: return VecDot.F32((float*)w, x, cols);
            case GgmlType.F16: return VecDot.F16((ushort*)w, x, cols);
            case GgmlType.BF16: return VecDot.BF16((ushort*)w, x, cols);
            case GgmlType.Q8_0: return VecDot.Q8_0(w, qx!.Q(r), qx.D(r), cols / 32);
            case GgmlType.Q4_0: return VecDot.Q4_0(w, qx!.Q(r), qx.D(r), qx.ScaledSums(r), cols / 32);
            case GgmlType.Q4_K: return VecDot.Q4_K(w, qx!.Q(r), qx.D(r), qx.Sums16(r), cols / 256);
            case GgmlType.Q6_K: return VecDot.Q6_K(w, qx!.Q(r), qx.D(r), qx.Sums16(r), cols / 256);
            default:
                return DequantizedDot(type, w, cols, x);
        }
    }

    /// <summary>Dequantize the weight row into a per-thread buffer and dot in float.</summary>
    private static float DequantizedDot(GgmlType type, byte* w, int cols, float* x)
    {
        var buffer = s_row is { } b && b.Length >= cols ? b : s_row = new float[cols];
        Dequantize.Row(type, new ReadOnlySpan<byte>(w, checked((int)GgmlTypeInfo.RowBytes(type, cols))), buffer.AsSpan(0, cols));
        fixed (float* bp = buffer)
            return VecDot.F32(bp, x, cols);
    }

}
