using CommunityToolkit.HighPerformance;
using Engine.Backends.Cpu.Kernels;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Backends.Cpu;

/// <summary>
/// The CPU backend: weights used in place from the mapped model file, activations in managed arrays,
/// every operation split across a <see cref="WorkerPool"/> of exactly <see cref="Threads"/> threads —
/// matrix products by weight rows, attention by (row, head), elementwise operations by rows once a
/// batch is large enough to pay for it. The kernels it calls are the C# references of the CUDA kernels.
/// </summary>
public sealed unsafe class CpuBackend : Backend
{
    /// <summary>Below this many rows an elementwise operation runs on the calling thread.</summary>
    private const int ParallelRows = 4;

    private readonly WorkerPool _pool;
    private readonly MatMulWork _matMul = new();
    private readonly AttentionWork _attention = new();
    private readonly BatchAttentionWork _batchAttention = new();
    private readonly RowsWork _rows = new();
    private readonly StoreWork _storeKv = new();
    private readonly QuantizedActivations _q80 = new();
    private readonly QuantizedActivations _q8k = new();
    private readonly FloatPanels _panels = new();

    /// <summary>Whether the native CPU kernels (libengine_cpu) run on this machine, and if not, why.</summary>
    public static string NativeKernelStatus => NativeKernels.Available ? "native kernels: " + NativeKernels.Status : "C# kernels: " + NativeKernels.Status;

    /// <param name="threads">Threads that compute, the caller's included (0 = one per core).</param>
    /// <param name="quantizeActivations">
    /// Quantize activations to int8 for the integer kernels of Q8_0/Q4_0/Q4_K/Q6_K weights (as llama.cpp
    /// does; default). False dequantizes weights instead and multiplies in float: slower, exact up to
    /// float rounding — the reference path accuracy tests compare against.
    /// </param>
    /// <param name="kvCacheType">
    /// The KV cache's elements: <see cref="GgmlType.F32"/> (default, exact), <see cref="GgmlType.F16"/>
    /// (half the memory, and half the bytes attention reads — what bounds it when many sequences decode
    /// together; values rounded to half on store, as llama.cpp's default cache does) or
    /// <see cref="GgmlType.Q8_0"/> (8-bit, a scale per head vector: <see cref="Kernels.KvI8"/>).
    /// </param>
    public CpuBackend(int threads = 0, bool quantizeActivations = true, GgmlType kvCacheType = GgmlType.F32)
    {
        if (threads < 0)
            throw new ArgumentOutOfRangeException(nameof(threads), $"thread count {threads} must be positive (0 = one per core)");
        if (kvCacheType is not (GgmlType.F32 or GgmlType.F16 or GgmlType.Q8_0))
            throw new ArgumentException($"KV cache type {kvCacheType}: the CPU keeps its cache in F32, F16 or Q8_0", nameof(kvCacheType));
        KvCacheType = kvCacheType;
        // never more computing threads than cores: the process-wide pool has one per core
        Threads = threads == 0 ? Environment.ProcessorCount : Math.Min(threads, Environment.ProcessorCount);
        QuantizeActivations = quantizeActivations;
        _pool = WorkerPool.Shared;
        _matMul.Stride = Threads;
    }

    public bool QuantizeActivations { get; }

    /// <summary>The KV cache's element type: F32, F16 or Q8_0 (<see cref="Kernels.KvI8"/>).</summary>
    public GgmlType KvCacheType { get; }

    /// <summary>Bytes an element (Q8_0: one, and a float scale per head vector of each token besides).</summary>
    public override int KvElementBytes => KvElement.Bytes();

    public override long KvBytesPerTokenLayer(int kvHeads, int headDim) =>
        2L * kvHeads * (headDim * KvElementBytes + (KvElement == KvElementType.I8 ? sizeof(float) : 0));

    /// <summary>The cache's elements as the CPU's store and kernels name them.</summary>
    private KvElementType KvElement => KvCacheType switch { GgmlType.F16 => KvElementType.F16, GgmlType.Q8_0 => KvElementType.I8, _ => KvElementType.F32 };

    public override string Name => "cpu";

    public int Threads { get; }

    public override DeviceMatrix LoadMatrix(TensorView tensor)
    {
        if (!GgmlTypeInfo.IsWeightType(tensor.Type))
            throw new NotSupportedException($"{tensor.Name}: {tensor.Type} weights are not supported");
        if (tensor.Dims.Count != 2)
            throw new ArgumentException($"{tensor.Name}: a weight matrix needs 2 dimensions, has {tensor.ShapeText}");
        return new CpuMatrix(tensor);
    }

    public override DeviceVector LoadVector(TensorView tensor)
    {
        var data = new float[checked((int)tensor.ElementCount)];
        Dequantize.Row(tensor.Type, new ReadOnlySpan<byte>(tensor.Data, checked((int)tensor.ByteSize)), data);
        return new CpuVector(tensor.Name, data);
    }

    public override DeviceBuffer Allocate(long floats) => new CpuBuffer(floats);

    public override KvStore CreateKvStore(KvLayout layout, int maxBlocks) => new CpuKvStore(layout, KvElement);

    private static Span<float> Data(Activation a) => ((CpuBuffer)a.Buffer).Data.AsSpan(0, checked((int)a.Size));

    private static float[] Array(Activation a) => ((CpuBuffer)a.Buffer).Data;

    /// <summary>The activation as a [rows, cols] matrix view.</summary>
    private static Span2D<float> Rows(Activation a) => new(((CpuBuffer)a.Buffer).Data, a.Rows, a.Cols);

    /// <summary>Runs a row operation over all rows, in parallel when there are enough of them.</summary>
    private void ForRows(int rows, RowOp op)
    {
        _rows.Op = op;
        if (rows < ParallelRows || Threads == 1)
            _rows.Run(0, rows);
        else
        {
            _rows.Rows = rows;
            _pool.Run(_rows, Math.Min(rows, Threads * 4), Threads);
        }
    }

    public override void Embed(DeviceMatrix table, ReadOnlySpan<int> tokens, Activation dst)
    {
        var view = ((CpuMatrix)table).View;
        var y = Rows(dst);
        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)table.Rows)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (0..{table.Rows - 1})");
            Dequantize.Row(view.Type, view.Row(tokens[i]), y.GetRowSpan(i));
        }
    }

    public override void RmsNorm(Activation x, DeviceVector weight, float eps, Activation dst)
    {
        SetRows(Array(x), Array(dst), ((CpuVector)weight).Data, x.Cols, eps);
        ForRows(x.Rows, RowOp.RmsNorm);
    }

    private void SetRows(float[] x, float[] y, float[] w, int cols, float eps) =>
        (_rows.X, _rows.Y, _rows.W, _rows.Cols, _rows.Eps) = (x, y, w, cols, eps);

    public override void MatMul(Activation x, ReadOnlySpan<MatMulTarget> targets, bool batchInvariant = false)
    {
        int totalRows = 0;
        foreach (var (w, dst) in targets)
        {
            if (x.Cols != w.Cols || dst.Cols != w.Rows || dst.Rows != x.Rows)
                throw new ArgumentException($"matmul {w.Name}: x {x} · W [{w.Rows} x {w.Cols}]ᵀ → dst {dst}");
            totalRows += w.Rows;
        }
        // Quantize the shared input once for each int8 format the targets' kernels need.
        var xData = Data(x);
        // Batches of 8+ rows use the matrix kernels: Q8_0 activations interleaved for quantized weights,
        // packed float panels for F16/F32; rows beyond the last whole group (and single-token decoding)
        // use the row kernels with each type's own activation format.
        // Small batches (a verified draft) stay on the row kernels while 4-row kernels cover every
        // target: below two groups they beat the matrix kernels (measured: 8 rows of F16 or Q8_0 cost
        // 3.5-3.7 decode steps that way, 4.0-4.1 through one group of the matrix kernels).
        bool rows4 = true;
        foreach (var t in targets)
            rows4 &= Kernels.VecDot.HasRows4(t.Weights.Type);
        // Under the native kernels, 8 rows or more of quantized weights go through the matrix kernels in
        // whole pairs of groups, the last padded with zero rows: a pass over the weights for 16 rows costs
        // about what the row kernels pay for 8 (measured, 110M-shape Q8_0 continuous batch at context 48:
        // 9-15 sequences took 15-25 ms a step against 12.3 for 16, 586 tokens/s).
        // Fewer than 8 rows past the last pair stay on the row kernels: a 4-row pass costs less than a pair's.
        bool pad = !batchInvariant && x.Rows % (2 * QuantizedActivations.Group) >= QuantizedActivations.Group
            && QuantizeActivations && PaddedOutputsFit(x.Rows, targets);
        bool batch = (x.Rows >= (rows4 ? 2 : 1) * QuantizedActivations.Group || pad) && !batchInvariant;
        bool q80 = false, q8k = false, groups = false, panels = false;
        foreach (var t in targets)
        {
            var type = t.Weights.Type;
            var kind = QuantizeActivations ? ((CpuMatrix)t.Weights).ActivationKind() : null;
            bool gemm = batch && Kernels.MatMul.HasGemm(type, x.Cols);
            bool isFloat = type is GgmlType.F16 or GgmlType.BF16 or GgmlType.F32;
            bool remainder = !gemm || (x.Rows % QuantizedActivations.Group != 0 && !pad);
            q80 |= kind == ActivationBlock.Q8_0 && remainder;
            q8k |= kind == ActivationBlock.Q8_K && remainder;
            groups |= gemm && !isFloat && QuantizeActivations;
            panels |= gemm && isFloat;
        }
        if (panels)
            _panels.Pack(xData, x.Rows, x.Cols);
        // The matrix kernels' input is quantized and interleaved by the run itself, a group of 8 rows per
        // chunk ahead of the products, instead of on this thread while the others wait (a 16-sequence step
        // of the 110M shape: 49 products, 0.43 ms on one thread).
        int prologue = 0;
        if (q80 || groups)
        {
            if (groups)
            {
                _q80.Prepare(x.Rows, x.Cols, ActivationBlock.Q8_0);
                _q80.PrepareInterleave(padToPairs: pad);
                prologue = Math.Max((x.Rows + QuantizedActivations.Group - 1) / QuantizedActivations.Group, _q80.Groups);
            }
            else
                _q80.Quantize(xData, x.Rows, x.Cols, ActivationBlock.Q8_0);
        }
        if (q8k)
            _q8k.Quantize(xData, x.Rows, x.Cols, ActivationBlock.Q8_K);
        _matMul.Set(Array(x), x.Rows, targets, q80 || groups ? _q80 : null, q8k ? _q8k : null, groups ? _q80 : null, panels ? _panels : null);
        _matMul.SetPrologue(prologue);
        // A decoding product under 2 MiB of weights in two chunks per thread, not eight: each chunk pays a
        // start-up (claim, stream restart) that such a product cannot hide. Measured (2 threads, tg64): the
        // 110M-shape Q4_0 model 276 → 334 tokens/s, the 8-expert MoE 222 → 230; no change on the 1.1B shape,
        // whose 2.4-6.5 MiB products at two chunks per thread were 5-10% slower (hence the threshold).
        // A continuous batch's step (2-32 rows) likewise: its products are bound by arithmetic, so fewer
        // start-ups pay and the balance holds (110M shape, 16 sequences: Q4_0 7.2-7.3 → 6.8-7.0 ms a step,
        // Q8_0 7.9-8.2 → 7.6-7.8, F16 unchanged; prefill's bigger batches keep eight, unchanged there).
        int perThread = (x.Rows == 1 && WeightBytes(targets) < SmallProductBytes) || (x.Rows > 1 && x.Rows <= 32) ? 2 : 8;
        _pool.Run(_matMul, Math.Min(totalRows, Threads * perThread) + prologue, Threads);
        foreach (var t in targets)
        {
            if (t.Bias is not null)
                AddBias(t.Output, t.Bias);
        }
    }

    /// <summary>
    /// Whether every target is quantized with a matrix kernel, the native kernels run (the direct ones, or
    /// the decoded rows' for the other types), and its output buffer has room for the rows of the padded
    /// groups (activation buffers are sized for the largest batch, usually more).
    /// </summary>
    private static bool PaddedOutputsFit(int rows, ReadOnlySpan<MatMulTarget> targets)
    {
        const int pair = 2 * QuantizedActivations.Group;
        long padded = (rows + pair - 1) / pair * pair;
        if (!NativeKernels.Available)
            return false;
        foreach (var t in targets)
        {
            var w = ((CpuMatrix)t.Weights).View;
            if (w.Type is GgmlType.F16 or GgmlType.BF16 or GgmlType.F32 || !Kernels.MatMul.HasGemm(w.Type, checked((int)w.RowLength))
                || ((CpuBuffer)t.Output.Buffer).Data.Length < padded * w.RowCount)
                return false;
        }
        return true;
    }

    public override void AddBias(Activation x, DeviceVector bias)
    {
        var rows = Rows(x);
        var b = ((CpuVector)bias).Data;
        for (int r = 0; r < x.Rows; r++)
            Activations.AddF32(rows.GetRowSpan(r), b);
    }

    public override void Rope(Activation x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        _rows.Rotation.Set(rope, positions);
        _rows.X = Array(x);
        _rows.Cols = x.Cols;
        _rows.Heads = heads;
        ForRows(x.Rows, RowOp.Rope);
    }

    /// <summary>
    /// RoPE of q and k and the cache write in one dispatch, each chunk rotating and storing its own rows
    /// (three dispatches per layer before: 36 of a 16-sequence step's 158 for the 110M shape).
    /// </summary>
    public override void RopeStoreKvBatch(Activation q, Activation k, Activation v, int heads, int kvHeads, ReadOnlySpan<int> positions, RopeTable rope,
        KvStore store, int layer, SequenceBatch batch)
    {
        if (batch.Rows < ParallelRows || Threads == 1 || positions.Length != q.Rows || k.Rows != q.Rows)
        {
            base.RopeStoreKvBatch(q, k, v, heads, kvHeads, positions, rope, store, layer, batch);
            return;
        }
        _rows.Rotation.Set(rope, positions);
        _storeKv.Set(store, layer, batch, k, v);
        _storeKv.SetRope(_rows.Rotation, Array(q), q.Cols, heads, Array(k), k.Cols, kvHeads);
        _pool.Run(_storeKv, Math.Min(batch.Rows, Threads * 4), Threads);
    }

    public override void StoreKv(KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot, Activation k, Activation v) =>
        StoreRows(store, layer, blockTable, firstSlot, k, v, 0, k.Rows);

    /// <summary>
    /// Every sequence's rows into its blocks, split by rows across the pool (16 sequences' new keys and
    /// values land in as many blocks, rarely cached).
    /// </summary>
    public override void StoreKvBatch(KvStore store, int layer, SequenceBatch batch, Activation k, Activation v)
    {
        if (batch.Rows < ParallelRows || Threads == 1)
        {
            for (int j = 0; j < batch.Count; j++)
                StoreRows(store, layer, batch.Table(j), batch.Prefix(j), k, v, batch.RowStart(j), batch.RowCount(j));
            return;
        }
        _storeKv.Set(store, layer, batch, k, v);
        _pool.Run(_storeKv, Math.Min(batch.Rows, Threads * 4), Threads);
    }

    /// <summary>Rows [row, row + count) of k and v into slots firstSlot.. of the table.</summary>
    private static void StoreRows(KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot, Activation k, Activation v, int row, int count)
    {
        if (((CpuKvStore)store).Int8)
        {
            StoreRowsInt8((CpuKvStore)store, layer, blockTable, firstSlot, k, v, row, count);
            return;
        }
        var layout = store.Layout;
        var blocks = ((CpuKvStore)store).Pointers;
        bool half = ((CpuKvStore)store).Half;
        int hd = layout.HeadDim, bs = layout.BlockSize, width = layout.KvHeads * hd, whole = hd & ~3; // whole: the dimensions in fours
        // A row's K and V rounded in one call each: per head (64 values) the call's dispatch cost more
        // than the rounding (a 16-sequence step of the 110M shape: 4,608 calls).
        var rounded = half ? RoundedRow(2 * width) : default;
        fixed (float* kd = Array(k))
        fixed (float* vd = Array(v))
        fixed (ushort* kh = rounded)
        {
            ushort* vh = kh + width;
            for (int r = 0; r < count; r++)
            {
                int slot = firstSlot + r;
                int offset = slot % bs;
                float* kRow = kd + (long)(row + r) * k.Cols, vRow = vd + (long)(row + r) * v.Cols;
                if (half)
                {
                    // vectorized rounding: the same bits as the scalar cast (all 2^32 floats checked), several times faster
                    Kernels.KvF16.RoundAll(new ReadOnlySpan<float>(kRow, width), new Span<ushort>(kh, width));
                    Kernels.KvF16.RoundAll(new ReadOnlySpan<float>(vRow, width), new Span<ushort>(vh, width));
                }
                for (int h = 0; h < layout.KvHeads; h++)
                {
                    // K four dimensions at a time ([hd/4][bs][4], Attention.KeyIndex), V row-major ([bs][hd])
                    long kt = Kernels.Attention.KeyOffset(layout, layer, h);
                    long vt = Kernels.Attention.ValueOffset(layout, layer, h) + (long)offset * hd;
                    if (half)
                    {
                        var block = (ushort*)blocks[blockTable[slot / bs]];
                        ushort* ks = kh + h * hd, tile = block + kt;
                        for (int d = 0; d < whole; d += 4)
                            *(ulong*)(tile + ((long)(d >> 2) * bs + offset) * 4) = *(ulong*)(ks + d);
                        for (int d = whole; d < hd; d++)
                            tile[Kernels.Attention.KeyIndex(d, offset, bs, hd)] = ks[d];
                        Buffer.MemoryCopy(vh + h * hd, block + vt, hd * sizeof(ushort), hd * sizeof(ushort));
                    }
                    else
                    {
                        var block = (float*)blocks[blockTable[slot / bs]];
                        float* ks = kRow + h * hd, tile = block + kt;
                        for (int d = 0; d < whole; d += 4)
                            System.Runtime.Intrinsics.Vector128.Store(System.Runtime.Intrinsics.Vector128.Load(ks + d), tile + ((long)(d >> 2) * bs + offset) * 4);
                        for (int d = whole; d < hd; d++)
                            tile[Kernels.Attention.KeyIndex(d, offset, bs, hd)] = ks[d];
                        Buffer.MemoryCopy(vRow + h * hd, block + vt, hd * sizeof(float), hd * sizeof(float));
                    }
                }
            }
        }
    }

    /// <summary>
    /// <see cref="StoreRows"/> into an 8-bit cache: each head's key and value vector quantized on its own
    /// (<see cref="Kernels.KvI8.Quantize"/>), its bytes laid out as the float cache's elements and its scale
    /// into the block's scales (<see cref="Kernels.Attention.ScaleOffset"/>).
    /// </summary>
    private static void StoreRowsInt8(CpuKvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot, Activation k, Activation v, int row, int count)
    {
        var layout = store.Layout;
        var blocks = store.Pointers;
        int hd = layout.HeadDim, bs = layout.BlockSize, whole = hd & ~3;
        Span<sbyte> codes = stackalloc sbyte[hd];
        var kd = Array(k).AsSpan();
        var vd = Array(v).AsSpan();
        fixed (sbyte* kc = codes)
        {
            for (int r = 0; r < count; r++)
            {
                int slot = firstSlot + r, offset = slot % bs;
                byte* block = blocks[blockTable[slot / bs]];
                for (int h = 0; h < layout.KvHeads; h++)
                {
                    // K four dimensions at a time ([hd/4][bs][4], Attention.KeyIndex), V row-major ([bs][hd])
                    float kScale = Kernels.KvI8.Quantize(kd.Slice((row + r) * k.Cols + h * hd, hd), codes);
                    byte* tile = block + Kernels.Attention.KeyOffset(layout, layer, h);
                    for (int d = 0; d < whole; d += 4)
                        *(uint*)(tile + ((long)(d >> 2) * bs + offset) * 4) = *(uint*)(kc + d);
                    for (int d = whole; d < hd; d++)
                        tile[Kernels.Attention.KeyIndex(d, offset, bs, hd)] = (byte)kc[d];
                    ((float*)(block + Kernels.Attention.ScaleOffset(layout, layer, h, false)))[offset] = kScale;
                    float vScale = Kernels.KvI8.Quantize(vd.Slice((row + r) * v.Cols + h * hd, hd),
                        new Span<sbyte>(block + Kernels.Attention.ValueOffset(layout, layer, h) + (long)offset * hd, hd));
                    ((float*)(block + Kernels.Attention.ScaleOffset(layout, layer, h, true)))[offset] = vScale;
                }
            }
        }
    }

    [ThreadStatic] private static ushort[]? s_roundedRow;

    /// <summary>This thread's buffer of at least <paramref name="length"/> halves (grown, never shrunk: no allocation per step).</summary>
    private static Span<ushort> RoundedRow(int length)
    {
        if (s_roundedRow is null || s_roundedRow.Length < length)
            s_roundedRow = new ushort[length];
        return s_roundedRow.AsSpan(0, length);
    }

    public override void Attention(Activation q, KvStore store, int layer, ReadOnlySpan<int> blockTable, int prefixLength,
        AttentionMask mask, int heads, float scale, Activation dst, bool batchInvariant = false, float softCap = 0,
        ReadOnlySpan<int> windowStarts = default)
    {
        CheckAttentionOptions(q.Rows, softCap, windowStarts);
        // Batch-invariant always (Attention.Head's canonical arithmetic), so the flag changes nothing here.
        // Chunks are (head, every G-th row): few enough that dispatch costs nothing next to the work,
        // and striding the rows gives every chunk the same mix of short and long causal windows.
        int rowGroups = Math.Clamp((Threads * 8 + heads - 1) / heads, 1, q.Rows);
        _attention.Set(Array(q), q.Rows, (CpuKvStore)store, layer, blockTable, prefixLength, mask, heads, rowGroups, scale, Array(dst), softCap, windowStarts);
        _pool.Run(_attention, heads * rowGroups, Threads);
    }

    public override void AttentionBatch(Activation q, KvStore store, int layer, SequenceBatch batch, int heads, float scale, Activation dst,
        bool batchInvariant = false, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        CheckAttentionOptions(q.Rows, softCap, windowStarts);
        if (batch.Rows != q.Rows)
            throw new ArgumentException($"the batch's sequences hold {batch.Rows} rows, q has {q.Rows}", nameof(batch));
        // Every sequence of the step in one dispatch: chunks are (sequence, head, row group), so sixteen
        // one-row decoders spread over the threads instead of running one after another.
        // Items go to the pool a run of them per chunk: a claim per item (192 per layer for sixteen decoders
        // of twelve heads) cost two contended atomics each, ~10% of the step's attention.
        int items = _batchAttention.Set(Array(q), (CpuKvStore)store, layer, batch, heads, Threads, scale, Array(dst), softCap, windowStarts);
        _pool.Run(_batchAttention, Math.Min(items, Threads * 8), Threads);
    }

    public override void SwiGlu(Activation gate, Activation up, Activation dst)
    {
        _rows.X = Array(gate);
        _rows.W = Array(up);
        _rows.Y = Array(dst);
        _rows.Cols = gate.Cols;
        ForRows(gate.Rows, RowOp.SwiGlu);
    }

    public override void GeGlu(Activation gate, Activation up, Activation dst)
    {
        _rows.X = Array(gate);
        _rows.W = Array(up);
        _rows.Y = Array(dst);
        _rows.Cols = gate.Cols;
        ForRows(gate.Rows, RowOp.GeGlu);
    }

    public override void SoftCap(Activation x, float cap)
    {
        if (!(cap > 0) || !float.IsFinite(cap))
            throw new ArgumentOutOfRangeException(nameof(cap), $"a soft cap of {cap} must be a positive number");
        Activations.SoftCapF32(Array(x).AsSpan(0, checked((int)x.Size)), cap);
    }

    public override void Scale(Activation x, float s) => Activations.ScaleF32(Array(x).AsSpan(0, checked((int)x.Size)), s);

    /// <summary>The product, then the residual add and the next norm in one dispatch (two before).</summary>
    public override void MatMulAddNorm(Activation x, DeviceMatrix w, Activation residual, Activation scratch, DeviceVector normWeight, float eps,
        Activation normOut, bool batchInvariant = false, float residualScale = 1f)
    {
        if (residualScale != 1f)
        {
            base.MatMulAddNorm(x, w, residual, scratch, normWeight, eps, normOut, batchInvariant, residualScale);
            return;
        }
        MatMul(x, w, scratch, batchInvariant);
        if (residual.Rows != scratch.Rows || residual.Cols != scratch.Cols || normOut.Rows != residual.Rows || normOut.Cols != residual.Cols)
            throw new ArgumentException($"matmul_add_norm: residual {residual}, product {scratch}, norm output {normOut}");
        SetRows(Array(scratch), Array(residual), ((CpuVector)normWeight).Data, residual.Cols, eps);
        _rows.Z = Array(normOut);
        ForRows(residual.Rows, RowOp.AddNorm);
    }

    public override void Add(Activation dst, Activation src)
    {
        _rows.X = Array(src);
        _rows.Y = Array(dst);
        _rows.Cols = dst.Cols;
        ForRows(dst.Rows, RowOp.Add);
    }

    public override void MlaAssemble(Activation qRaw, Activation keyRope, Activation kvB, int heads, int nope, int rope, int vdim,
        Activation q, Activation k, Activation v)
    {
        CheckMlaAssemble(qRaw, keyRope, kvB, heads, nope, rope, vdim, q, k, v);
        Kernels.Mla.AssembleF32(Array(qRaw), Array(keyRope), Array(kvB), qRaw.Rows, heads, nope, rope, vdim, Array(q), Array(k), Array(v));
    }

    public override void MlaCompact(Activation att, int heads, int vdim, Activation dst)
    {
        if (att.Cols % heads != 0 || dst.Cols != heads * vdim || vdim > att.Cols / heads || dst.Rows != att.Rows)
            throw new ArgumentException($"mla_compact: att {att} of {heads} heads into dst {dst} of {vdim} per head");
        Kernels.Mla.CompactF32(Array(att), att.Rows, heads, att.Cols / heads, vdim, Array(dst));
    }

    public override DeviceMatrix? RowView(DeviceMatrix matrix, long start, int rows, string name) =>
        new CpuMatrix(((CpuMatrix)matrix).View.RowSlice(name, start, rows));

    public override void MatMulGroups(ReadOnlySpan<Activation> inputs, ReadOnlySpan<MatMulTarget> targets)
    {
        if (inputs.Length != targets.Length)
            throw new ArgumentException($"matmul groups: {inputs.Length} inputs for {targets.Length} products");
        int totalRows = 0;
        for (int i = 0; i < targets.Length; i++)
        {
            var (w, dst) = targets[i];
            var x = inputs[i];
            if (x.Cols != w.Cols || dst.Cols != w.Rows || dst.Rows != x.Rows)
                throw new ArgumentException($"matmul {w.Name}: x {x} · W [{w.Rows} x {w.Cols}]ᵀ → dst {dst}");
            if (x.Rows > GroupedRows)
            {
                base.MatMulGroups(inputs, targets); // big batches: the matrix kernels, product by product
                return;
            }
            totalRows += w.Rows;
        }
        if (targets.IsEmpty)
            return;
        // each distinct input quantized once, for each int8 format its products need
        var work = _matMul;
        work.Begin(targets.Length);
        int quantized = 0;
        for (int i = 0; i < targets.Length; i++)
        {
            var x = inputs[i];
            var kind = QuantizeActivations ? ((CpuMatrix)targets[i].Weights).ActivationKind() : null;
            QuantizedActivations? q = null;
            if (kind is { } k)
            {
                for (int j = 0; j < i && q is null; j++)
                {
                    if (inputs[j] == x && work.Input(j) is { } earlier && earlier.Kind == k)
                        q = earlier;
                }
                if (q is null)
                {
                    if (_groupInputs.Count == quantized)
                        _groupInputs.Add(new QuantizedActivations());
                    q = _groupInputs[quantized++];
                    q.Quantize(Data(x), x.Rows, x.Cols, k);
                }
            }
            work.Add((CpuMatrix)targets[i].Weights, Array(x), x.Rows, Array(targets[i].Output), q);
        }
        // Two chunks per thread: these products are small (a few MiB), and each chunk costs a start-up
        // (measured on the 8-expert Q4_0 model: 4 chunks on 2 threads decode 4-6% faster than 16, 2 slower)
        _pool.Run(work, Math.Min(totalRows, Threads * 2), Threads);
        foreach (var t in targets)
        {
            if (t.Bias is not null)
                AddBias(t.Output, t.Bias);
        }
    }

    /// <summary>The int8 forms of <see cref="MatMulGroups"/>'s distinct inputs, reused from call to call.</summary>
    private readonly List<QuantizedActivations> _groupInputs = [];

    /// <summary>Below this many bytes of weights a one-row product is split into two chunks per thread.</summary>
    private const long SmallProductBytes = 2 << 20;

    private static long WeightBytes(ReadOnlySpan<MatMulTarget> targets)
    {
        long bytes = 0;
        foreach (var t in targets)
            bytes += ((CpuMatrix)t.Weights).View.ByteSize;
        return bytes;
    }

    public override void ChunkSparseFfn(Activation x, DeviceMatrix up, DeviceMatrix down, int blocks, ReadOnlySpan<int> active,
        ReadOnlySpan<float> scores, Activation dst, bool batchInvariant = false)
    {
        CheckChunkSparseFfn(x, up, down, blocks, active, scores, dst);
        int n = x.Rows, size = up.Rows / blocks, dim = dst.Cols;
        var y = Data(dst);
        if (active.IsEmpty)
        {
            y.Clear(); // no block is on anywhere in the chunk
            return;
        }
        var s = _sparse ??= new SparseFfnScratch(blocks);
        if (s.Hidden.Length != blocks)
            s = _sparse = new SparseFfnScratch(blocks);
        var upBlocks = BlockViews(up, blocks);
        var downBlocks = BlockViews(down, blocks);
        s.Prepare(n, size, QuantizeActivations ? Kernels.MatMul.ActivationFor(down.Type) : null);
        _matMul.Reserve(blocks); // every block may turn on: room for all of them as targets of the up product
        // the active blocks' up rows: one product over one target per block, the input quantized once
        var targets = s.Targets(active.Length);
        for (int i = 0; i < active.Length; i++)
        {
            int e = active[i];
            var buffer = s.Buffer(e, (long)n * size);
            targets[i] = new MatMulTarget(upBlocks[e], new Activation(buffer, n, size));
        }
        MatMul(x, targets.AsSpan(0, active.Length), batchInvariant);
        for (int i = 0; i < active.Length; i++)
        {
            int e = active[i];
            var hidden = s.Hidden[e]!.Data;
            Kernels.ChunkSparseFfn.Activate(hidden.AsSpan(0, n * size), n, size, scores, blocks, e, s.Sigmoid(size));
            s.DownViews[e] = downBlocks[e].View;
            s.HiddenArrays[e] = hidden;
            var kind = QuantizeActivations ? Kernels.MatMul.ActivationFor(down.Type) : null;
            if (kind is { } k)
            {
                var q = s.Quantized[e] ??= new QuantizedActivations();
                q.Quantize(hidden.AsSpan(0, n * size), n, size, k);
                s.QuantizedRefs[e] = q;
            }
            else
                s.QuantizedRefs[e] = null;
        }
        s.Down.Set(s.DownViews, s.HiddenArrays, s.QuantizedRefs, active, n, dim, ((CpuBuffer)dst.Buffer).Data, s.Part((long)n * dim));
        _pool.Run(s.Down, Math.Min(dim / 8, Threads * 4), Threads);
    }

    private SparseFfnScratch? _sparse;

    /// <summary>A stacked matrix's blocks as matrices of their own (views, made once per matrix).</summary>
    private CpuMatrix[] BlockViews(DeviceMatrix stacked, int blocks)
    {
        if (_blockViews.TryGetValue(stacked, out var views) && views.Length == blocks)
            return views;
        views = MakeBlockViews(stacked, blocks);
        _blockViews.AddOrUpdate(stacked, views);
        return views;
    }

    // (its own method: a lambda's captures would otherwise be allocated on every call, the fast path's too)
    private static CpuMatrix[] MakeBlockViews(DeviceMatrix stacked, int blocks)
    {
        var view = ((CpuMatrix)stacked).View;
        int rows = stacked.Rows / blocks;
        return Enumerable.Range(0, blocks).Select(e => new CpuMatrix(view.RowSlice($"{stacked.Name}[{e}]", (long)e * rows, rows))).ToArray();
    }

    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<DeviceMatrix, CpuMatrix[]> _blockViews = new();

    /// <summary>Per block: its hidden values [rows, blockSize] and their int8 form; reused from pass to pass.</summary>
    private sealed class SparseFfnScratch(int blocks)
    {
        public readonly CpuBuffer?[] Hidden = new CpuBuffer?[blocks];
        public readonly float[][] HiddenArrays = new float[blocks][];
        public readonly QuantizedActivations?[] Quantized = new QuantizedActivations?[blocks];
        public readonly QuantizedActivations?[] QuantizedRefs = new QuantizedActivations?[blocks];
        public readonly TensorView[] DownViews = new TensorView[blocks];
        public readonly Kernels.ChunkSparseFfn.DownWork Down = new(blocks);
        private MatMulTarget[] _targets = [];
        private float[] _part = [], _sigmoid = [];

        public CpuBuffer Buffer(int block, long floats) => Hidden[block] is { } b && b.Length >= floats ? b : Hidden[block] = new CpuBuffer(Math.Max(floats, 2 * (Hidden[block]?.Length ?? 0)));

        private int _rows;

        /// <summary>
        /// Every block's buffers for passes of up to <paramref name="rows"/> rows, made at once: a block that
        /// turns on for the first time many tokens later then allocates nothing mid-generation.
        /// </summary>
        public void Prepare(int rows, int size, ActivationBlock? kind)
        {
            if (rows <= _rows)
                return;
            _rows = Math.Max(rows, 2 * _rows);
            var zeros = new float[(long)_rows * size];
            for (int e = 0; e < Hidden.Length; e++)
            {
                Buffer(e, (long)_rows * size);
                if (kind is { } k)
                    (Quantized[e] ??= new QuantizedActivations()).Quantize(zeros, _rows, size, k);
            }
        }

        public MatMulTarget[] Targets(int count) => _targets.Length >= count ? _targets : _targets = new MatMulTarget[Math.Max(count, Hidden.Length)];

        public float[] Part(long floats) => _part.Length >= floats ? _part : _part = new float[floats];

        public Span<float> Sigmoid(int size) => (_sigmoid.Length >= size ? _sigmoid : _sigmoid = new float[size]).AsSpan(0, size);
    }

    public override void MoeCombine(Activation src, ReadOnlySpan<int> slots, ReadOnlySpan<float> weights, int k, Activation dst)
    {
        CheckMoeCombine(src, slots, weights, k, dst);
        Kernels.Activations.MoeCombineF32(Array(src), slots, weights, k, Array(dst), dst.Rows, dst.Cols);
    }

    public override void GatherRows(Activation src, ReadOnlySpan<int> rows, Activation dst)
    {
        var s = Rows(src);
        var d = Rows(dst);
        for (int k = 0; k < rows.Length; k++)
            s.GetRowSpan(rows[k]).CopyTo(d.GetRowSpan(k));
    }

    public override void CopyRows(Activation src, int srcRow, Activation dst, int dstRow, int count)
    {
        CheckCopyRows(src, srcRow, dst, dstRow, count);
        System.Array.Copy(Array(src), (long)srcRow * src.Cols, Array(dst), (long)dstRow * dst.Cols, (long)count * src.Cols);
    }

    public override void Download(Activation src, Span<float> dst) => Data(src).CopyTo(dst);

    public override void Dispose()
    {
        // the pool is the process's (WorkerPool.Shared): it outlives every backend
    }

    private enum RowOp { RmsNorm, Rope, SwiGlu, GeGlu, Add, AddNorm }

    /// <summary>StoreKvBatch's rows, a contiguous range of the batch's rows per chunk.</summary>
    private sealed class StoreWork : IParallelWork
    {
        private KvStore? _store;
        private SequenceBatch? _batch;
        private Activation _k, _v;
        private int _layer;

        // RoPE of q and k before the store (RopeStoreKvBatch), when set
        private RopeRows? _rotation;
        private float[] _q = [], _kRows = [];
        private int _qCols, _kCols, _heads, _kvHeads;

        public void Set(KvStore store, int layer, SequenceBatch batch, Activation k, Activation v)
        {
            (_store, _layer, _batch, _k, _v) = (store, layer, batch, k, v);
            _rotation = null;
        }

        public void SetRope(RopeRows rotation, float[] q, int qCols, int heads, float[] k, int kCols, int kvHeads) =>
            (_rotation, _q, _qCols, _heads, _kRows, _kCols, _kvHeads) = (rotation, q, qCols, heads, k, kCols, kvHeads);

        public void Execute(int chunk, int chunks)
        {
            var batch = _batch!;
            var (start, end) = WorkerPool.Range(batch.Rows, chunk, chunks);
            for (int r = start; _rotation is not null && r < end; r++)
            {
                _rotation.Rotate(_q, _qCols, _heads, r);
                _rotation.Rotate(_kRows, _kCols, _kvHeads, r);
            }
            for (int j = 0; j < batch.Count && start < end; j++)
            {
                int first = Math.Max(start, batch.RowStart(j)), last = Math.Min(end, batch.RowStart(j) + batch.RowCount(j));
                if (first < last)
                    StoreRows(_store!, _layer, batch.Table(j), batch.Prefix(j) + first - batch.RowStart(j), _k, _v, first, last - first);
            }
        }
    }

    /// <summary>A pass's RoPE tables and row positions, and the rotation of one row by its position.</summary>
    private sealed class RopeRows
    {
        private float[] _cos = [], _sin = [];
        private int _pairs, _headDim;
        private bool _neoX;
        private int[] _positions = new int[256];

        public void Set(RopeTable rope, ReadOnlySpan<int> positions)
        {
            int maxPosition = 0;
            foreach (int p in positions)
                maxPosition = Math.Max(maxPosition, p);
            (_cos, _sin) = rope.Tables(maxPosition + 1);
            (_pairs, _headDim, _neoX) = (rope.InvFreq.Length, rope.HeadDim, rope.Style == Models.RopeStyle.NeoX);
            if (_positions.Length < positions.Length)
                _positions = new int[Math.Max(positions.Length, _positions.Length * 2)];
            positions.CopyTo(_positions);
        }

        /// <summary>Row r of x ([rows, cols], heads of the table's head size) rotated in place by position r's angles.</summary>
        public void Rotate(float[] x, int cols, int heads, int r)
        {
            int p = _positions[r];
            Kernels.Rope.RopeF32(x.AsSpan(r * cols, cols), heads, _headDim, _neoX, _cos.AsSpan(p * _pairs, _pairs), _sin.AsSpan(p * _pairs, _pairs));
        }
    }

    /// <summary>The row-wise operations, with their arguments in fields so a run allocates nothing.</summary>
    private sealed class RowsWork : IParallelWork
    {
        public RowOp Op;
        public float[] X = [], Y = [], Z = [], W = [];
        public int Rows, Cols, Heads;
        public float Eps;

        /// <summary>The Rope op's tables and positions (RopeStoreKvBatch's too).</summary>
        public readonly RopeRows Rotation = new();

        public void Execute(int chunk, int chunks)
        {
            var (start, end) = WorkerPool.Range(Rows, chunk, chunks);
            Run(start, end);
        }

        public void Run(int start, int end)
        {
            for (int r = start; r < end; r++)
            {
                var row = X.AsSpan(r * Cols, Cols);
                switch (Op)
                {
                    case RowOp.RmsNorm:
                        Kernels.RmsNorm.RmsNormF32(row, W, Eps, Y.AsSpan(r * Cols, Cols));
                        break;
                    case RowOp.Rope:
                        Rotation.Rotate(X, Cols, Heads, r);
                        break;
                    case RowOp.SwiGlu:
                        Activations.SwiGluF32(row, W.AsSpan(r * Cols, Cols), Y.AsSpan(r * Cols, Cols));
                        break;
                    case RowOp.GeGlu:
                        Activations.GeGluF32(row, W.AsSpan(r * Cols, Cols), Y.AsSpan(r * Cols, Cols));
                        break;
                    case RowOp.Add:
                        Activations.AddF32(Y.AsSpan(r * Cols, Cols), row);
                        break;
                    case RowOp.AddNorm: // Add, then RmsNorm of the sum, as the two separate passes do
                        Activations.AddF32(Y.AsSpan(r * Cols, Cols), row);
                        Kernels.RmsNorm.RmsNormF32(Y.AsSpan(r * Cols, Cols), W, Eps, Z.AsSpan(r * Cols, Cols));
                        break;
                }
            }
        }
    }

    /// <summary>
    /// Splits one or more matrix products (sharing their input) by output rows: the rows of all targets
    /// are numbered one after another and each chunk takes a contiguous range, so each weight row is
    /// read by exactly one thread.
    /// </summary>
    private sealed class MatMulWork : IParallelWork
    {
        private int _count, _totalRows;
        private TensorView[] _weights = new TensorView[4];
        private Repacked16?[] _packed = new Repacked16?[4];
        private bool _sixteens;
        private float[][] _x = new float[4][], _outputs = new float[4][];
        private int[] _n = new int[4];
        private QuantizedActivations?[] _inputs = new QuantizedActivations?[4];
        private QuantizedActivations? _groups;
        private FloatPanels? _panels;

        /// <summary>Room for <paramref name="count"/> targets, so that a later run with that many allocates nothing.</summary>
        public void Reserve(int count)
        {
            if (_weights.Length >= count)
                return;
            System.Array.Resize(ref _weights, count);
            System.Array.Resize(ref _packed, count);
            System.Array.Resize(ref _x, count);
            System.Array.Resize(ref _outputs, count);
            System.Array.Resize(ref _n, count);
            System.Array.Resize(ref _inputs, count);
        }

        /// <summary>Products that share the input <paramref name="x"/> ([n, cols]) and its int8 forms.</summary>
        public void Set(float[] x, int n, ReadOnlySpan<MatMulTarget> targets, QuantizedActivations? q80, QuantizedActivations? q8k,
            QuantizedActivations? groups, FloatPanels? panels)
        {
            Begin(targets.Length);
            _groups = groups;
            _panels = panels;
            foreach (var t in targets)
            {
                var q = ((CpuMatrix)t.Weights).ActivationKind() switch
                {
                    ActivationBlock.Q8_0 => q80,
                    ActivationBlock.Q8_K => q8k,
                    _ => null,
                };
                Add((CpuMatrix)t.Weights, x, n, ((CpuBuffer)t.Output.Buffer).Data, q);
            }
        }

        /// <summary>Starts a run of products with inputs of their own (<see cref="Add"/>), on the row kernels.</summary>
        public void Begin(int count)
        {
            Reserve(count);
            _count = _totalRows = 0;
            _sixteens = true;
            _groups = null;
            _panels = null;
            _prologue = 0;
        }

        private int _prologue, _prologueDone;
        private volatile bool _prologueFailed;

        /// <summary>
        /// The run's first <paramref name="chunks"/> chunks quantize and interleave the shared input (group g
        /// of 8 rows by chunk g, <see cref="Set"/>'s groups buffer, prepared) and the products' chunks wait
        /// for them. No chunk waits on one claimed after it (the pool claims in order), so this cannot deadlock.
        /// </summary>
        public void SetPrologue(int chunks)
        {
            _prologue = chunks;
            _prologueDone = 0;
            _prologueFailed = false;
        }

        private void Prologue(int g)
        {
            var q = _groups!;
            try
            {
                int first = g * QuantizedActivations.Group, end = Math.Min(q.Rows, first + QuantizedActivations.Group);
                if (first < end)
                {
                    fixed (float* x = _x[0]) // every target's input is the run's one x
                        q.QuantizeRows(x, first, end);
                }
                if (g < q.Groups)
                    q.InterleaveGroup(g);
            }
            catch
            {
                _prologueFailed = true;
                throw;
            }
            finally
            {
                Interlocked.Increment(ref _prologueDone);
            }
        }

        /// <summary>y [n, rows] = x [n, cols] · Wᵀ, x's int8 form <paramref name="q"/> where W's kernel takes one.</summary>
        public void Add(CpuMatrix m, float[] x, int n, float[] y, QuantizedActivations? q)
        {
            var w = m.View;
            (_weights[_count], _x[_count], _n[_count], _outputs[_count], _inputs[_count]) = (w, x, n, y, q);
            _packed[_count] = m.Packed(); // made here, on the calling thread, the first time
            _totalRows += checked((int)w.RowCount);
            _sixteens &= w.RowCount % 16 == 0;
            _count++;
        }

        /// <summary>The int8 input of product <paramref name="i"/> of the run, if it has one.</summary>
        public QuantizedActivations? Input(int i) => _inputs[i];

        /// <summary>
        /// The threads of every run (the backend's). Claims alternate between them, so the k-th claim takes range (k mod T)·(chunks/T)
        /// + k/T: each thread then walks contiguous rows, its kernels' prefetch running on into its next
        /// chunk instead of restarting at every one (the same ranges, so the same results; measured, a
        /// 16-sequence step of the 110M shape: Q8_0 +10%, Q4_0 +6%; pp512 +2%).
        /// </summary>
        public int Stride = 1;

        public void Execute(int chunk, int chunks)
        {
            if (_prologue > 0)
            {
                if (chunk < _prologue)
                {
                    Prologue(chunk);
                    return;
                }
                chunk -= _prologue;
                chunks -= _prologue;
                for (int spins = 0; Volatile.Read(ref _prologueDone) < _prologue; spins++)
                {
                    if (spins % 1024 == 1023)
                        Thread.Yield(); // a descheduled thread holds a prologue chunk
                    else if (System.Runtime.Intrinsics.X86.X86Base.IsSupported)
                        System.Runtime.Intrinsics.X86.X86Base.Pause();
                }
                if (_prologueFailed)
                    return; // the pool reports the prologue's exception
            }
            if (Stride > 1 && chunks % Stride == 0)
                chunk = chunk % Stride * (chunks / Stride) + chunk / Stride;
            // Where every product's rows come in sixteens, so do the chunks' ranges: a Repacked16 group is never split.
            int unit = _sixteens ? 16 : 1;
            var (start, end) = WorkerPool.Range(_totalRows / unit, chunk, chunks);
            (start, end) = (start * unit, end * unit);
            int first = 0;
            for (int i = 0; i < _count && start < end; i++)
            {
                int rows = (int)_weights[i].RowCount;
                if (start < first + rows)
                {
                    int localEnd = Math.Min(end, first + rows) - first;
                    Kernels.MatMul.Rows(_weights[i], _packed[i], _x[i], _inputs[i], _groups, _panels, _n[i], _outputs[i], start - first, localEnd);
                    start = first + localEnd;
                }
                first += rows;
            }
        }
    }

    /// <summary>
    /// Rows first, first + stride, … below <paramref name="n"/> of one head of one sequence (rows
    /// rowStart + r of q and y): causal rows two at a time through <see cref="Kernels.Attention.HeadPair"/>
    /// where it applies (keys and values loaded once for both; no window), the rest one at a time.
    /// </summary>
    private static void AttendRows(float* q, float* y, int cols, int head, CpuKvStore store, int* table, int layer, int kvHead,
        int prefix, int n, int rowStart, int first, int stride, AttentionMask mask, float scale, float softCap, int[]? windowStarts)
    {
        var layout = store.Layout;
        int hd = layout.HeadDim, r = first;
        if (mask.IsCausal && windowStarts is null && Kernels.Attention.HasPair(hd))
        {
            for (; r + stride < n; r += 2 * stride)
            {
                long a = (long)(rowStart + r) * cols + head * hd, b = (long)(rowStart + r + stride) * cols + head * hd;
                Kernels.Attention.HeadPair(q + a, q + b, store.Pointers, store.Element, table, layout, layer, kvHead, prefix, r, r + stride, scale,
                    y + a, y + b, softCap);
            }
        }
        for (; r < n; r += stride)
        {
            long a = (long)(rowStart + r) * cols + head * hd;
            Kernels.Attention.Head(q + a, store.Pointers, store.Element, table, layout, layer, kvHead, prefix, n, r, mask, scale, y + a,
                windowStarts is null ? 0 : windowStarts[rowStart + r], softCap);
        }
    }

    /// <summary>
    /// A continuous batch's attention: chunks (sequence j, head, row group) numbered sequence by sequence;
    /// a chunk runs rows group, group + groups_j, … of sequence j, each over j's own table and prefix.
    /// </summary>
    private sealed class BatchAttentionWork : IParallelWork
    {
        private float[] _q = [];
        private float[] _y = [];
        private CpuKvStore? _store;
        private int[] _tables = [];
        private int[] _firstChunk = [];
        private int[] _groups = [];
        private int[] _rowStart = [];
        private int[] _rows = [];
        private int[] _prefix = [];
        private int[] _tableStart = [];
        private int[] _windowStarts = [];
        private bool _windowed;
        private int _sequences, _layer, _heads;
        private float _scale, _softCap;

        private int _items;

        /// <summary>Takes the pass's arguments; returns the item count (items are (sequence, head, row group)).</summary>
        public int Set(float[] q, CpuKvStore store, int layer, SequenceBatch batch, int heads, int threads, float scale, float[] y, float softCap,
            ReadOnlySpan<int> windowStarts)
        {
            (_q, _store, _layer, _heads, _scale, _y, _softCap, _sequences) = (q, store, layer, heads, scale, y, softCap, batch.Count);
            int m = batch.Count;
            Grow(ref _firstChunk, m + 1);
            Grow(ref _groups, m);
            Grow(ref _rowStart, m);
            Grow(ref _rows, m);
            Grow(ref _prefix, m);
            Grow(ref _tableStart, m);
            Grow(ref _tables, batch.Tables.Length);
            batch.Tables.CopyTo(_tables);
            int chunks = 0;
            for (int j = 0; j < m; j++)
            {
                _rowStart[j] = batch.RowStart(j);
                _rows[j] = batch.RowCount(j);
                _prefix[j] = batch.Prefix(j);
                _tableStart[j] = batch.TableStart(j);
                _groups[j] = Math.Clamp((threads * 8 + heads - 1) / heads, 1, _rows[j]);
                _firstChunk[j] = chunks;
                chunks += _groups[j] * heads;
            }
            _firstChunk[m] = chunks;
            _items = chunks;
            _windowed = !windowStarts.IsEmpty;
            if (_windowed)
            {
                Grow(ref _windowStarts, windowStarts.Length);
                windowStarts.CopyTo(_windowStarts);
            }
            return chunks;
        }

        private static void Grow(ref int[] array, int length)
        {
            if (array.Length < length)
                array = new int[Math.Max(length, 2 * array.Length)];
        }

        public void Execute(int chunk, int chunks)
        {
            var (start, end) = WorkerPool.Range(_items, chunk, chunks);
            Prefetch(start);
            for (int item = start; item < end; item++)
            {
                if (item + 1 < end)
                    Prefetch(item + 1); // its first keys and values arrive while this item computes
                Attend(item);
            }
        }

        /// <summary>
        /// Item <paramref name="chunk"/>'s sequence j (binary search over the first item of each), its head and kv
        /// head, and its row group.
        /// </summary>
        private (int J, int Head, int KvHead, int Group) Item(int chunk)
        {
            int lo = 0, hi = _sequences - 1;
            while (lo < hi)
            {
                int mid = (lo + hi + 1) / 2;
                if (_firstChunk[mid] <= chunk)
                    lo = mid;
                else
                    hi = mid - 1;
            }
            int local = chunk - _firstChunk[lo], head = local % _heads;
            return (lo, head, head / (_heads / _store!.Layout.KvHeads), local / _heads);
        }

        private void Prefetch(int chunk)
        {
            var (j, _, kvHead, group) = Item(chunk);
            // the row group's first row sees the fewest slots; its window's start where there is one
            int run = _prefix[j] + group + 1, from = _windowed ? Math.Min(_windowStarts[_rowStart[j] + group], run) : 0;
            fixed (int* tables = _tables)
                Kernels.Attention.PrefetchFirstBlock(_store!.Pointers, _store.Element, tables + _tableStart[j], _store.Layout, _layer, kvHead, from, run);
        }

        private void Attend(int chunk)
        {
            var (j, head, kvHead, group) = Item(chunk);
            int cols = _heads * _store!.Layout.HeadDim;
            fixed (float* q = _q)
            fixed (float* y = _y)
            fixed (int* tables = _tables)
            {
                AttendRows(q, y, cols, head, _store, tables + _tableStart[j], _layer, kvHead, _prefix[j], _rows[j], _rowStart[j], group, _groups[j],
                    AttentionMask.Causal, _scale, _softCap, _windowed ? _windowStarts : null);
            }
        }
    }

    /// <summary>One chunk per (head, row group): rows chunk/heads, + rowGroups, ….</summary>
    private sealed class AttentionWork : IParallelWork
    {
        private float[] _q = [];
        private float[] _y = [];
        private CpuKvStore? _store;
        private int[] _table = [];
        private AttentionMask _mask = AttentionMask.Causal;
        private int[] _windowStarts = [];
        private bool _windowed;
        private int _n, _layer, _prefix, _heads, _rowGroups;
        private float _scale, _softCap;

        public void Set(float[] q, int n, CpuKvStore store, int layer, ReadOnlySpan<int> table, int prefix, AttentionMask mask, int heads,
            int rowGroups, float scale, float[] y, float softCap, ReadOnlySpan<int> windowStarts)
        {
            (_q, _n, _store, _layer, _prefix, _mask, _heads, _rowGroups, _scale, _y) = (q, n, store, layer, prefix, mask, heads, rowGroups, scale, y);
            if (_table.Length < table.Length)
                _table = new int[Math.Max(table.Length, 2 * _table.Length)];
            table.CopyTo(_table);
            _softCap = softCap;
            _windowed = !windowStarts.IsEmpty;
            if (_windowed)
            {
                if (_windowStarts.Length < n)
                    _windowStarts = new int[Math.Max(n, 2 * _windowStarts.Length)];
                windowStarts[..n].CopyTo(_windowStarts);
            }
        }

        public void Execute(int chunk, int chunks)
        {
            int head = chunk % _heads;
            var layout = _store!.Layout;
            int hd = layout.HeadDim;
            int cols = _heads * hd;
            int kvHead = head / (_heads / layout.KvHeads);
            fixed (float* q = _q)
            fixed (float* y = _y)
            fixed (int* table = _table)
            {
                AttendRows(q, y, cols, head, _store, table, _layer, kvHead, _prefix, _n, 0, chunk / _heads, _rowGroups, _mask, _scale, _softCap,
                    _windowed ? _windowStarts : null);
            }
        }
    }
}
