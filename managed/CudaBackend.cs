using System.Runtime.InteropServices;
using Engine.Backends;
using Engine.Quantization;
using Engine.Sampling;
using Engine.Tensors;
using Engine.Cuda.Kernels;

namespace Engine.Cuda;

/// <summary>
/// The CUDA backend: the Llama forward pass of <see cref="Models.LlamaModel"/> with every operation a
/// kernel of kernels/*.cu, queued in order on one stream. Weights are uploaded once, still quantized;
/// activations, the KV cache and scratch come from the device's <see cref="DeviceMemoryPool"/> and are
/// reused, so after its first step a decode loop makes no driver allocation. Per-step inputs (tokens,
/// positions, block table, tree mask) go through pinned buffers and are uploaded only when they
/// change. Decoding (up to 8 rows) runs the gemv kernels; larger batches dequantize each weight to F16
/// and multiply with cuBLAS when it is available (<see cref="UsesCuBlas"/>), else loop the gemv kernels.
/// With CUDA graphs on, each one-token pass is captured and replayed as one graph (<see cref="DecodeGraph"/>).
/// </summary>
public sealed unsafe class CudaBackend : Backend, IDeviceDecoding
{
    private readonly bool _ownsDevice;
    private readonly HostInput<int> _tokens, _positions, _table, _table2, _rows, _windowStarts, _moeSlots, _sparseActive;
    private readonly HostInput<float> _moeWeights, _sparseScores;
    private readonly HostInput<ulong> _mask;
    private readonly HostInput<int> _treeParent, _treeToken, _treeQRow, _treeDraw;
    private GpuArray<int>? _decodeIds, _sampled, _acceptOutput;
    private GpuArray<float>? _rowStats, _prob, _draftQ, _residual;
    private int[] _acceptHost = [];
    private readonly Dictionary<RopeTable, GpuArray<double>> _ropeFrequencies = [];
    private readonly List<string> _conversions = [];
    private CuBlas? _blas;
    private bool _blasTried;
    private GpuArray<float>? _attentionScratch;
    private GpuArray<Half>? _weightsF16, _inputF16;
    private PinnedBuffer? _download;
    private readonly DecodeGraph? _graph;
    private bool _warm; // a pass has run with direct launches: everything a graph step needs exists
    private GpuArray<uint>? _normCounter; // the folded RMSNorm's block count (gemv.cu), zero between launches
    private GpuArray<uint>? _mergeCounters; // tree attention's folded merge: splits done per (kv head, item block)

    /// <param name="device">The device to run on.</param>
    /// <param name="ownsDevice">Dispose the device with the backend.</param>
    /// <param name="useCuBlas">Multiply batches of more than 8 rows with cuBLAS when it loads (default); false keeps every product on the gemv kernels.</param>
    /// <param name="cudaGraphs">Record each one-token pass as a CUDA graph and replay it with one launch (<see cref="DecodeGraph"/>).</param>
    /// <param name="kvCacheType">The KV cache's elements: <see cref="GgmlType.F32"/> (default) or <see cref="GgmlType.F16"/>,
    /// which halves what attention reads per step (values rounded to binary16 once, when stored; attention computes in float32).</param>
    public CudaBackend(GpuDevice device, bool ownsDevice = false, bool useCuBlas = true, bool cudaGraphs = false, GgmlType kvCacheType = GgmlType.F32)
    {
        if (kvCacheType is not (GgmlType.F32 or GgmlType.F16))
            throw new ArgumentException($"KV cache type {kvCacheType}: the CUDA backend keeps its cache in F32 or F16", nameof(kvCacheType));
        KvCacheType = kvCacheType;
        Device = device;
        _ownsDevice = ownsDevice;
        UseCuBlas = useCuBlas;
        if (cudaGraphs && device.IsEmulator)
            throw new NotSupportedException("CUDA graphs need a GPU; the kernel emulator runs launches one by one");
        _graph = cudaGraphs ? new DecodeGraph(device) : null;
        Func<long> capturing = () => _graph is { Capturing: true } g ? g.Capture : 0;
        _tokens = new(device, capturing);
        _positions = new(device, capturing);
        _table = new(device, capturing);
        _table2 = new(device, capturing);
        _windowStarts = new(device, capturing);
        _rows = new(device, capturing);
        _moeSlots = new(device, capturing);
        _moeWeights = new(device, capturing);
        _sparseActive = new(device, capturing);
        _sparseScores = new(device, capturing);
        _mask = new(device, capturing);
        _treeParent = new(device, capturing);
        _treeToken = new(device, capturing);
        _treeQRow = new(device, capturing);
        _treeDraw = new(device, capturing);
    }

    /// <summary>The KV cache's element type (F32 or F16).</summary>
    public GgmlType KvCacheType { get; }

    /// <summary>
    /// Run decoding batches (the GEMV path) with the fused kernels: q, k and v in one launch, RoPE with the
    /// cache write, gate/up with SwiGLU, the residual add and the next RMSNorm in the projection's
    /// epilogue, tree attention merging its own splits — 6 launches per layer instead of 17, the same bits. False runs every step on its own
    /// kernel (what the fused kernels are tested against).
    /// </summary>
    public bool FuseSteps { get; set; } = true;

    /// <summary>
    /// Batches over an F16 cache (prefill) take the tensor-core attention kernel (attention_tc.cu), which
    /// rounds queries and probabilities to binary16 for its products; false keeps them on the float32
    /// tiled kernel.
    /// </summary>
    public bool TensorCorePrefill { get; set; } = true;

    /// <summary>Opens cuda:<paramref name="index"/> for a backend that owns it.</summary>
    public static CudaBackend Open(int index = 0, bool useCuBlas = true, bool cudaGraphs = false, GgmlType kvCacheType = GgmlType.F32)
    {
        var device = GpuDevice.Open(index);
        try
        {
            return new(device, ownsDevice: true, useCuBlas, cudaGraphs, kvCacheType);
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    /// <summary>Whether one-token passes are replayed as CUDA graphs.</summary>
    public bool UsesCudaGraphs => _graph is not null;

    /// <summary>One-token passes replayed as graphs so far, and how many needed a new instantiation.</summary>
    public (long Replays, long Instantiations) GraphStats => (_graph?.Replays ?? 0, _graph?.Instantiations ?? 0);

    public GpuDevice Device { get; }

    public bool UseCuBlas { get; }

    /// <summary>Whether batches are multiplied with cuBLAS (it was asked for and it loaded); see <see cref="CuBlas.Status"/>.</summary>
    public bool UsesCuBlas => Blas is not null;

    /// <summary>Weights whose type has no kernel and were converted when uploaded ("name: Q5_K → F16").</summary>
    public IReadOnlyList<string> Conversions => _conversions;

    public override string Name => $"cuda:{Device.Info.Index}";

    private CuBlas? Blas
    {
        get
        {
            if (!_blasTried && UseCuBlas)
            {
                _blasTried = true;
                _blas = CuBlas.TryCreate(Device);
            }
            return _blas;
        }
    }

    public override DeviceMatrix LoadMatrix(TensorView tensor)
    {
        if (tensor.Dims.Count != 2)
            throw new ArgumentException($"{tensor.Name}: a weight matrix needs 2 dimensions, has {tensor.ShapeText}");
        if (!GgmlTypeInfo.IsWeightType(tensor.Type))
            throw new NotSupportedException($"{tensor.Name}: {tensor.Type} weights are not supported");
        int rows = checked((int)tensor.RowCount), cols = checked((int)tensor.RowLength);
        var bytes = new ReadOnlySpan<byte>(tensor.Data, checked((int)tensor.ByteSize));
        if (WeightFormats.IsSupported(tensor.Type) && cols % WeightFormats.ValuesPerBlock(tensor.Type) == 0)
        {
            var data = Device.Upload(bytes);
            return new CudaMatrix(tensor.Name, tensor.Type, rows, cols, data);
        }
        // No kernel reads this type (or an F16 row not a multiple of 8 values): convert once on the host,
        // to F16 where rows allow, else to F32 — the same values the CPU dequantizes, in a format the
        // kernels read. (A conversion to F16 rounds the values of a type finer than F16, e.g. Q8_0 — but
        // every type with kernels is read as it is.)
        var target = cols % WeightFormats.ValuesPerBlock(GgmlType.F16) == 0 ? GgmlType.F16 : GgmlType.F32;
        _conversions.Add($"{tensor.Name}: {tensor.Type} → {target}");
        long rowBytes = GgmlTypeInfo.RowBytes(tensor.Type, cols);
        int targetRowBytes = checked((int)GgmlTypeInfo.RowBytes(target, cols));
        var staged = new byte[checked((long)targetRowBytes * rows)];
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            Quantization.Dequantize.Row(tensor.Type, bytes.Slice(checked((int)(r * rowBytes)), checked((int)rowBytes)), row);
            var destination = staged.AsSpan(r * targetRowBytes, targetRowBytes);
            if (target == GgmlType.F16)
                Backends.Cpu.Kernels.DequantizeF16.ConvertF32F16(row, MemoryMarshal.Cast<byte, Half>(destination));
            else
                MemoryMarshal.AsBytes(row.AsSpan()).CopyTo(destination);
        }
        return new CudaMatrix(tensor.Name, target, rows, cols, Device.Upload<byte>(staged)); // one upload, not one per row
    }

    public override long UploadBytes(TensorView tensor)
    {
        if (tensor.Dims.Count == 1)
            return tensor.ElementCount * sizeof(float); // vectors become float32
        // matrices and stacks of them (a MoE layer's experts, each uploaded as a matrix)
        if (WeightFormats.IsSupported(tensor.Type) && tensor.RowLength % WeightFormats.ValuesPerBlock(tensor.Type) == 0)
            return tensor.ByteSize;
        // converted when uploaded (LoadMatrix): to F16 where rows allow, else to F32
        return tensor.ElementCount * (tensor.RowLength % WeightFormats.ValuesPerBlock(GgmlType.F16) == 0 ? 2 : 4);
    }

    public override int KvElementBytes => KvCacheType == GgmlType.F16 ? 2 : 4;

    /// <summary>
    /// Refuses a model whose plan exceeds the device's free memory (with 64 MiB kept for the driver's
    /// and cuBLAS's workspaces on a GPU); devices that cannot tell their free memory are not checked.
    /// </summary>
    public override void Reserve(MemoryPlan plan)
    {
        var (free, total) = Device.MemoryInfo();
        if (total <= 0)
            return;
        long headroom = Device.IsEmulator ? 0 : 64L << 20;
        long needed = plan.Total + headroom;
        if (needed > free)
            throw new DeviceMemoryException(
                $"{plan.Model} needs {MemoryPlan.Size(needed)} on {Name} ({plan.Describe()}{(headroom > 0 ? $" + workspaces {MemoryPlan.Size(headroom)}" : "")}), " +
                $"{MemoryPlan.Size(free)} of {MemoryPlan.Size(total)} free — a smaller context (-c), an F16 cache (--cache-type f16) or a smaller quantization would fit");
    }

    public override DeviceVector LoadVector(TensorView tensor)
    {
        var data = new float[checked((int)tensor.ElementCount)];
        Quantization.Dequantize.Row(tensor.Type, new ReadOnlySpan<byte>(tensor.Data, checked((int)tensor.ByteSize)), data);
        return new CudaVector(tensor.Name, Device.Upload<float>(data));
    }

    public override DeviceBuffer Allocate(long floats) => new CudaBuffer(Device.Allocate<float>(floats));

    public override KvStore CreateKvStore(KvLayout layout, int maxBlocks) => new CudaKvStore(Device, layout, maxBlocks, KvCacheType == GgmlType.F16);

    private static DeviceSpan<float> Span(Activation a) => ((CudaBuffer)a.Buffer).Data.Span.Slice(0, a.Size);

    private static DeviceSpan<float> Span(DeviceVector v) => ((CudaVector)v).Data.Span;

    public override void Embed(DeviceMatrix table, ReadOnlySpan<int> tokens, Activation dst)
    {
        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)table.Rows)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (0..{table.Rows - 1})");
        }
        // Every pass starts with the embedding and a pass with outputs ends with a download: a one-token
        // pass between the two is recorded as a graph, once a pass has run directly (so every buffer
        // and upload it needs exists and no synchronous call falls inside the capture).
        if (_graph is not null)
        {
            if (_graph.Capturing)
                _graph.EndAndLaunch(); // the previous pass asked for no outputs (so no download ended it): run it now
            if (tokens.Length == 1 && _warm)
                _graph.Begin();
        }
        var m = (CudaMatrix)table;
        GetRows.Rows(Device, m.Type, m.Data, m.Rows, m.Cols, _tokens.Put(tokens), tokens.Length, Span(dst));
    }

    public override void RmsNorm(Activation x, DeviceVector weight, float eps, Activation dst) =>
        Kernels.RmsNorm.RmsNormF32(Device, Span(x), Span(weight), Span(dst), x.Rows, x.Cols, eps);

    public override void MatMul(Activation x, ReadOnlySpan<MatMulTarget> targets, bool batchInvariant = false)
    {
        foreach (var t in targets)
        {
            var (w, dst) = t;
            if (x.Cols != w.Cols || dst.Cols != w.Rows || dst.Rows != x.Rows)
                throw new ArgumentException($"matmul {w.Name}: x {x} · W [{w.Rows} x {w.Cols}]ᵀ → dst {dst}");
            if (t.Bias is not null && t.Bias.Length != w.Rows)
                throw new ArgumentException($"matmul {w.Name}: a bias of {t.Bias.Length} values for {w.Rows} rows");
        }
        int n = x.Rows;
        var blas = BlasFor(n, batchInvariant);
        bool biasInKernel = blas is null && FuseSteps; // the gemv kernels add the bias as the product leaves
        if (blas is null)
        {
            // Decoding and verification: the gemv kernels, 8 rows per launch; a row's result does not
            // depend on the rest of the batch. Consecutive targets of one type share a launch (q, k, v).
            Span<GemvTarget> group = stackalloc GemvTarget[Gemv.MaxTargets];
            for (int r = 0; r < n; r += Gemv.MaxColumns)
            {
                int count = Math.Min(Gemv.MaxColumns, n - r);
                var xs = Span(x).Slice((long)r * x.Cols, (long)count * x.Cols);
                for (int first = 0; first < targets.Length;)
                {
                    var type = targets[first].Weights.Type;
                    int size = 0;
                    while (first + size < targets.Length && size < (FuseSteps ? Gemv.MaxTargets : 1) && targets[first + size].Weights.Type == type)
                    {
                        var t = targets[first + size];
                        group[size++] = new GemvTarget(((CudaMatrix)t.Weights).Data, t.Weights.Rows,
                            Span(t.Output).Slice((long)r * t.Output.Cols, (long)count * t.Output.Cols),
                            biasInKernel && t.Bias is not null ? Span(t.Bias) : default);
                    }
                    Gemv.Run(Device, type, x.Cols, group[..size], xs, count);
                    first += size;
                }
            }
        }
        else
        {
            // Prefill: the input to F16 once, each weight to F16 in turn, cuBLAS multiplies (float32 accumulation).
            var input = Grow(ref _inputF16, x.Size);
            Kernels.Dequantize.ConvertF32F16(Device, Span(x), input, x.Size);
            foreach (var (w, dst) in targets)
            {
                var m = (CudaMatrix)w;
                var weights = Grow(ref _weightsF16, (long)m.Rows * m.Cols);
                Kernels.Dequantize.ToF16(Device, m.Type, m.Data, m.Rows, m.Cols, weights);
                blas.GemmF16(weights, m.Rows, m.Cols, input, n, Span(dst));
            }
        }
        if (!biasInKernel)
        {
            foreach (var t in targets)
            {
                if (t.Bias is not null)
                    AddBias(t.Output, t.Bias);
            }
        }
    }

    private DeviceSpan<T> Grow<T>(ref GpuArray<T>? array, long length) where T : unmanaged
    {
        if (array is null || array.Length < length)
        {
            array?.Dispose();
            array = Device.Allocate<T>(length);
        }
        return array.Span.Slice(0, length);
    }

    /// <summary>cuBLAS for a product of <paramref name="rows"/> activation rows (a batch that need not be batch-invariant), or null: the gemv kernels.</summary>
    private CuBlas? BlasFor(int rows, bool batchInvariant) => rows > Gemv.MaxColumns && !batchInvariant ? Blas : null;

    /// <summary>Whether a product of <paramref name="rows"/> activation rows runs on the gemv kernels (decoding, verification) with the fused kernels.</summary>
    private bool OnGemv(int rows, bool batchInvariant) => FuseSteps && BlasFor(rows, batchInvariant) is null;

    /// <summary>RoPE's θᵢ on the device, uploaded once per table.</summary>
    /// <summary>
    /// The device copy of a store's block table: two inputs, each kept for one store, so that a hybrid
    /// cache's two tables (global and windowed layers, used layer after layer) do not overwrite each other
    /// within a captured graph. A third store takes the input used least recently.
    /// </summary>
    private HostInput<int> TableFor(KvStore store)
    {
        for (int i = 0; i < 2; i++)
        {
            if (ReferenceEquals(_tableStores[i], store))
            {
                _tableUsed[i] = ++_tableClock;
                return i == 0 ? _table : _table2;
            }
        }
        int slot = _tableUsed[0] <= _tableUsed[1] ? 0 : 1;
        _tableStores[slot] = store;
        _tableUsed[slot] = ++_tableClock;
        return slot == 0 ? _table : _table2;
    }

    private readonly KvStore?[] _tableStores = new KvStore?[2];
    private readonly long[] _tableUsed = new long[2];
    private long _tableClock;

    private DeviceSpan<double> Frequencies(RopeTable rope)
    {
        if (!_ropeFrequencies.TryGetValue(rope, out var frequencies))
            _ropeFrequencies[rope] = frequencies = Device.Upload<double>(rope.InvFreq);
        return frequencies.Span;
    }

    public override void RopeStoreKv(Activation q, Activation k, Activation v, int heads, int kvHeads, ReadOnlySpan<int> positions, RopeTable rope,
        KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot)
    {
        if (!FuseSteps)
        {
            base.RopeStoreKv(q, k, v, heads, kvHeads, positions, rope, store, layer, blockTable, firstSlot);
            return;
        }
        var s = (CudaKvStore)store;
        if (kvHeads != s.Layout.KvHeads || rope.HeadDim != s.Layout.HeadDim)
            throw new ArgumentException($"rope_store_kv: {kvHeads} kv heads of {rope.HeadDim} for a cache of {s.Layout.KvHeads} of {s.Layout.HeadDim}");
        if (positions.Length != q.Rows || k.Rows != q.Rows || v.Rows != q.Rows)
            throw new ArgumentException($"rope_store_kv: {positions.Length} positions for q {q}, k {k}, v {v}");
        var frequencies = Frequencies(rope);
        var pos = _positions.Put(positions);
        var table = TableFor(store).Put(blockTable);
        bool neox = rope.Style == Models.RopeStyle.NeoX;
        if (s.IsF16)
            RopeKv.RopeStoreKv(Device, Span(q), Span(k), Span(v), q.Rows, heads, pos, frequencies, rope.InvFreq.Length, neox, table,
                blockTable.Length, firstSlot, s.DataF16, s.MaxBlocks, s.Layout, layer, rope.AttentionFactor);
        else
            RopeKv.RopeStoreKv(Device, Span(q), Span(k), Span(v), q.Rows, heads, pos, frequencies, rope.InvFreq.Length, neox, table,
                blockTable.Length, firstSlot, s.Data, s.MaxBlocks, s.Layout, layer, rope.AttentionFactor);
    }

    public override void MatMulAddNorm(Activation x, DeviceMatrix w, Activation residual, Activation scratch, DeviceVector normWeight, float eps,
        Activation normOut, bool batchInvariant = false, float residualScale = 1f)
    {
        int n = x.Rows;
        if (!OnGemv(n, batchInvariant))
        {
            base.MatMulAddNorm(x, w, residual, scratch, normWeight, eps, normOut, batchInvariant, residualScale);
            return;
        }
        if (x.Cols != w.Cols || residual.Cols != w.Rows || residual.Rows != n || normOut.Rows != n || normOut.Cols != w.Rows || normWeight.Length != w.Rows)
            throw new ArgumentException($"matmul_add_norm {w.Name}: x {x} · W [{w.Rows} x {w.Cols}]ᵀ into {residual}, norm of {normWeight.Length} into {normOut}");
        var m = (CudaMatrix)w;
        var counter = Counters(ref _normCounter, 1);
        for (int r = 0; r < n; r += Gemv.MaxColumns)
        {
            int count = Math.Min(Gemv.MaxColumns, n - r);
            long dim = w.Rows;
            var target = new GemvTarget(m.Data, w.Rows, Span(residual).Slice(r * dim, count * dim));
            Gemv.Run(Device, m.Type, w.Cols, [target], Span(x).Slice((long)r * x.Cols, (long)count * x.Cols), count, accumulate: true,
                norm: new GemvNorm(Span(normWeight), eps, Span(normOut).Slice(r * dim, count * dim), counter), accumulateScale: residualScale);
        }
    }

    /// <summary>
    /// <paramref name="count"/> block counters for a kernel's last-block epilogue (the folded norm, the
    /// folded attention merge): zeroed when allocated, and every launch leaves them zero.
    /// </summary>
    private DeviceSpan<uint> Counters(ref GpuArray<uint>? array, long count)
    {
        if (array is null || array.Length < count)
        {
            array?.Dispose();
            array = Device.Allocate<uint>(Math.Max(count, 64));
            Device.Clear(array.Span.Pointer, array.Span.Bytes);
        }
        return array.Span.Slice(0, count);
    }

    public override void GatedFfn(Activation h, DeviceMatrix wGate, DeviceMatrix wUp, Activation gate, Activation up, bool batchInvariant = false,
        bool gelu = false)
    {
        int n = h.Rows;
        if (gelu || !OnGemv(n, batchInvariant) || wGate.Type != wUp.Type || wGate.Rows != wUp.Rows || wGate.Cols != wUp.Cols)
        {
            base.GatedFfn(h, wGate, wUp, gate, up, batchInvariant, gelu);
            return;
        }
        if (h.Cols != wGate.Cols || gate.Cols != wGate.Rows || gate.Rows != n)
            throw new ArgumentException($"gated_ffn {wGate.Name}: h {h} · W [{wGate.Rows} x {wGate.Cols}]ᵀ → gate {gate}");
        var g = (CudaMatrix)wGate;
        var u = (CudaMatrix)wUp;
        for (int r = 0; r < n; r += Gemv.MaxColumns)
        {
            int count = Math.Min(Gemv.MaxColumns, n - r);
            Gemv.Glu(Device, g.Type, g.Data, u.Data, g.Rows, g.Cols, Span(h).Slice((long)r * h.Cols, (long)count * h.Cols), count,
                Span(gate).Slice((long)r * gate.Cols, (long)count * gate.Cols));
        }
    }

    public override void AddBias(Activation x, DeviceVector bias) => Kernels.Add.AddBiasF32(Device, Span(x), Span(bias), x.Rows, x.Cols);

    public override void Rope(Activation x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        var frequencies = Frequencies(rope);
        Kernels.Rope.RopeF32(Device, Span(x), x.Rows, heads, rope.HeadDim, _positions.Put(positions), frequencies, rope.InvFreq.Length,
            rope.Style == Models.RopeStyle.NeoX, rope.AttentionFactor);
    }

    public override void StoreKv(KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot, Activation k, Activation v) =>
        StoreRows((CudaKvStore)store, layer, TableFor(store).Put(blockTable), blockTable.Length, firstSlot, Span(k), Span(v), k.Rows);

    /// <summary>
    /// Every sequence's rows into its own slots: the step's block tables go up once (one upload, the same
    /// for every layer of the step), and each sequence's launch reads its slice of them and of k and v.
    /// </summary>
    public override void StoreKvBatch(KvStore store, int layer, SequenceBatch batch, Activation k, Activation v)
    {
        var tables = TableFor(store).Put(batch.Tables);
        for (int j = 0; j < batch.Count; j++)
        {
            int row = batch.RowStart(j), n = batch.RowCount(j), length = batch.Table(j).Length;
            StoreRows((CudaKvStore)store, layer, tables.Slice(batch.TableStart(j), Math.Max(length, 1)), length, batch.Prefix(j),
                Span(k).Slice((long)row * k.Cols, (long)n * k.Cols), Span(v).Slice((long)row * v.Cols, (long)n * v.Cols), n);
        }
    }

    private void StoreRows(CudaKvStore s, int layer, DeviceSpan<int> table, int tableLength, int firstSlot, DeviceSpan<float> k, DeviceSpan<float> v, int rows)
    {
        if (s.IsF16)
            Kernels.KvCache.StoreKv(Device, k, v, rows, table, tableLength, firstSlot, s.DataF16, s.MaxBlocks, s.Layout, layer);
        else
            Kernels.KvCache.StoreKv(Device, k, v, rows, table, tableLength, firstSlot, s.Data, s.MaxBlocks, s.Layout, layer);
    }

    public override void Attention(Activation q, KvStore store, int layer, ReadOnlySpan<int> blockTable, int prefixLength,
        AttentionMask mask, int heads, float scale, Activation dst, bool batchInvariant = false, float softCap = 0,
        ReadOnlySpan<int> windowStarts = default)
    {
        CheckAttentionOptions(q.Rows, softCap, windowStarts);
        int n = q.Rows;
        var maskSpan = default(DeviceSpan<ulong>);
        int words = 0;
        if (!mask.IsCausal)
        {
            if (mask.Size != n)
                throw new ArgumentException($"the attention mask is for {mask.Size} tokens, the batch has {n}", nameof(mask));
            words = mask.WordsPerRow;
            maskSpan = _mask.Put(mask.Bits[..(n * words)]);
        }
        // Under a window no row sees more than prefix + n − its start: the splits (and their scratch,
        // sized for the cache's blocks) follow the window, not the sequence.
        int firstStart = windowStarts.IsEmpty ? 0 : int.MaxValue;
        foreach (int start in windowStarts)
            firstStart = Math.Min(firstStart, start);
        AttendRows((CudaKvStore)store, layer, Span(q), n, heads, TableFor(store).Put(blockTable), blockTable.Length, prefixLength, maskSpan, words,
            scale, Span(dst), batchInvariant, softCap, windowStarts.IsEmpty ? default : _windowStarts.Put(windowStarts), firstStart);
    }

    /// <summary>
    /// Every sequence's attention over its own cache, one launch each, without copying rows: the step's
    /// block tables and window starts go up once (the same for every layer of the step) and each launch
    /// reads its sequence's slices of them and of q and the output.
    /// </summary>
    public override void AttentionBatch(Activation q, KvStore store, int layer, SequenceBatch batch, int heads, float scale, Activation dst,
        bool batchInvariant = false, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        CheckAttentionOptions(q.Rows, softCap, windowStarts);
        if (batch.Rows != q.Rows)
            throw new ArgumentException($"the batch's sequences hold {batch.Rows} rows, q has {q.Rows}", nameof(batch));
        var tables = TableFor(store).Put(batch.Tables);
        var starts = windowStarts.IsEmpty ? default : _windowStarts.Put(windowStarts);
        for (int j = 0; j < batch.Count; j++)
        {
            int row = batch.RowStart(j), n = batch.RowCount(j), length = batch.Table(j).Length;
            int firstStart = 0;
            if (!windowStarts.IsEmpty)
            {
                firstStart = int.MaxValue;
                foreach (int start in windowStarts.Slice(row, n))
                    firstStart = Math.Min(firstStart, start);
            }
            AttendRows((CudaKvStore)store, layer, Span(q).Slice((long)row * q.Cols, (long)n * q.Cols), n, heads,
                tables.Slice(batch.TableStart(j), Math.Max(length, 1)), length, batch.Prefix(j), default, 0, scale,
                Span(dst).Slice((long)row * dst.Cols, (long)n * dst.Cols), batchInvariant, softCap,
                windowStarts.IsEmpty ? default : starts.Slice(row, n), firstStart);
        }
    }

    private void AttendRows(CudaKvStore s, int layer, DeviceSpan<float> q, int n, int heads, DeviceSpan<int> table, int tableLength, int prefixLength,
        DeviceSpan<ulong> maskSpan, int words, float scale, DeviceSpan<float> dst, bool batchInvariant, float softCap, DeviceSpan<int> starts, int firstStart)
    {
        int maxRanks = prefixLength + n - Math.Min(firstStart, prefixLength);
        // Sized for the cache's capacity, so a growing context never reallocates it; the tiled prefill
        // kernel writes no partial results.
        var scratch = Backends.Cpu.Kernels.KvCacheKernels.UsesPrefillKernel(n, s.Layout.HeadDim, batchInvariant)
            ? default
            : Grow(ref _attentionScratch, Kernels.Attention.ScratchFloats(heads, n, s.Layout.HeadDim, Math.Max(maxRanks, s.MaxBlocks * s.Layout.BlockSize)));
        // With fused steps the tree kernel merges its own splits (counters zeroed once, left zero by each launch).
        var counters = FuseSteps ? Counters(ref _mergeCounters, Kernels.TreeAttention.Counters(n, heads, s.Layout.KvHeads)) : default;
        if (s.IsF16)
            Kernels.Attention.AttentionF32(Device, q, n, heads, s.DataF16, s.MaxBlocks, s.Layout, layer, table, tableLength,
                prefixLength, maskSpan, words, scale, scratch, dst, batchInvariant, TensorCorePrefill, counters, softCap, starts, maxRanks);
        else
            Kernels.Attention.AttentionF32(Device, q, n, heads, s.Data, s.MaxBlocks, s.Layout, layer, table, tableLength,
                prefixLength, maskSpan, words, scale, scratch, dst, batchInvariant, mergeCounters: counters, softCap: softCap, windowStarts: starts, maxRanks: maxRanks);
    }

    public override void SwiGlu(Activation gate, Activation up, Activation dst) =>
        Kernels.SwiGlu.SwiGluF32(Device, Span(gate), Span(up), Span(dst), gate.Size);

    public override void GeGlu(Activation gate, Activation up, Activation dst) =>
        Kernels.SwiGlu.GeGluF32(Device, Span(gate), Span(up), Span(dst), gate.Size);

    public override void SoftCap(Activation x, float cap) => Kernels.Add.SoftCapF32(Device, Span(x), cap, x.Size);

    public override void Add(Activation dst, Activation src) => Kernels.Add.AddF32(Device, Span(dst), Span(src), dst.Size);

    public override void Scale(Activation x, float s) => Kernels.Add.ScaleF32(Device, Span(x), s, x.Size);

    public override void ChunkSparseFfn(Activation x, DeviceMatrix up, DeviceMatrix down, int blocks, ReadOnlySpan<int> active,
        ReadOnlySpan<float> scores, Activation dst, bool batchInvariant = false)
    {
        CheckChunkSparseFfn(x, up, down, blocks, active, scores, dst);
        int n = x.Rows, size = up.Rows / blocks, dim = dst.Cols;
        var activeSpan = _sparseActive.Put(active);
        var h = Grow(ref _sparseHidden, Math.Max(1L, (long)active.Length * n * size));
        if (!active.IsEmpty)
        {
            Kernels.ChunkSparseFfn.Up(Device, up.Type, ((CudaMatrix)up).Data, blocks, size, x.Cols, Span(x), n, _sparseScores.Put(scores), activeSpan,
                active.Length, h);
        }
        Kernels.ChunkSparseFfn.Down(Device, down.Type, ((CudaMatrix)down).Data, blocks, dim, size, h, n, activeSpan, active.Length, Span(dst));
    }

    private GpuArray<float>? _sparseHidden;

    public override void MlaAssemble(Activation qRaw, Activation keyRope, Activation kvB, int heads, int nope, int rope, int vdim,
        Activation q, Activation k, Activation v)
    {
        CheckMlaAssemble(qRaw, keyRope, kvB, heads, nope, rope, vdim, q, k, v);
        Kernels.Mla.Assemble(Device, Span(qRaw), Span(keyRope), Span(kvB), qRaw.Rows, heads, nope, rope, vdim, Span(q), Span(k), Span(v));
    }

    public override void MlaCompact(Activation att, int heads, int vdim, Activation dst)
    {
        if (att.Cols % heads != 0 || dst.Cols != heads * vdim || vdim > att.Cols / heads || dst.Rows != att.Rows)
            throw new ArgumentException($"mla_compact: att {att} of {heads} heads into dst {dst} of {vdim} per head");
        Kernels.Mla.Compact(Device, Span(att), att.Rows, heads, att.Cols / heads, vdim, Span(dst));
    }

    public override DeviceMatrix? RowView(DeviceMatrix matrix, long start, int rows, string name)
    {
        var m = (CudaMatrix)matrix;
        if (start < 0 || rows <= 0 || start + rows > m.Rows)
            throw new ArgumentOutOfRangeException(nameof(start), $"{m.Name}: rows {start}..{start + rows - 1} of {m.Rows}");
        long rowBytes = GgmlTypeInfo.RowBytes(m.Type, m.Cols);
        return new CudaMatrix(name, m.Type, rows, m.Cols, m.Data.Slice(start * rowBytes, rows * rowBytes));
    }

    /// <summary>
    /// Routing, every chosen expert's gate and up rows, and every down row with the weighted sum, in three
    /// launches (moe.cu) and no host round trip; the shared expert through the usual kernels, added last.
    /// </summary>
    public override bool RoutedExperts(Activation h, Activation routerLogits, Models.ExpertStacks experts, int k, bool normalize,
        Models.SharedExpert? shared, Activation dst)
    {
        var (gate, up, down) = ((CudaMatrix)experts.Gate, (CudaMatrix)experts.Up, (CudaMatrix)experts.Down);
        int n = h.Rows, count = experts.Experts, ffn = gate.Rows / count, dim = dst.Cols;
        if (n > GroupedRows || gate.Type != up.Type || !WeightFormats.IsSupported(gate.Type) || !WeightFormats.IsSupported(down.Type)
            || gate.Cols % WeightFormats.ValuesPerBlock(gate.Type) != 0 || ffn % WeightFormats.ValuesPerBlock(down.Type) != 0)
            return false;
        var chosen = Grow(ref _moeChosen, (long)n * k);
        var weights = Grow(ref _moeRouteWeights, (long)n * k);
        var hidden = Grow(ref _moeHidden, (long)n * k * ffn);
        Kernels.Moe.Route(Device, Span(routerLogits), n, count, k, normalize, chosen, weights);
        Kernels.Moe.Glu(Device, gate.Type, gate.Data, up.Data, count, ffn, h.Cols, Span(h), n, chosen, k, hidden);
        Kernels.Moe.Down(Device, down.Type, down.Data, count, dim, ffn, hidden, n, chosen, weights, k, Span(dst));
        if (shared is { } sh)
        {
            int width = sh.Gate.Rows;
            var g = new Activation(_moeSharedGate ??= Allocate((long)GroupedRows * width), n, width);
            var u = new Activation(_moeSharedUp ??= Allocate((long)GroupedRows * width), n, width);
            var o = new Activation(_moeSharedOut ??= Allocate((long)GroupedRows * dim), n, dim);
            GatedFfn(h, sh.Gate, sh.Up, g, u, batchInvariant: true);
            MatMul(g, sh.Down, o, batchInvariant: true);
            Kernels.Moe.AddGated(Device, Span(dst), Span(o), Span(sh.GateLogits), n, dim);
        }
        return true;
    }

    private GpuArray<int>? _moeChosen;
    private GpuArray<float>? _moeRouteWeights, _moeHidden;
    private DeviceBuffer? _moeSharedGate, _moeSharedUp, _moeSharedOut;

    public override void MoeCombine(Activation src, ReadOnlySpan<int> slots, ReadOnlySpan<float> weights, int k, Activation dst)
    {
        CheckMoeCombine(src, slots, weights, k, dst);
        Kernels.Moe.CombineF32(Device, Span(dst), Span(src), _moeSlots.Put(slots), _moeWeights.Put(weights), k, dst.Rows, dst.Cols);
    }

    public override void GatherRows(Activation src, ReadOnlySpan<int> rows, Activation dst)
    {
        foreach (int r in rows)
        {
            if ((uint)r >= (uint)src.Rows)
                throw new ArgumentOutOfRangeException(nameof(rows), $"row {r} is outside the activation's {src.Rows} rows");
        }
        GetRows.Rows(Device, GgmlType.F32, Span(src).Cast<byte>(), src.Rows, src.Cols, _rows.Put(rows), rows.Length, Span(dst));
    }

    public override void CopyRows(Activation src, int srcRow, Activation dst, int dstRow, int count)
    {
        CheckCopyRows(src, srcRow, dst, dstRow, count);
        if (count == 0)
            return;
        var from = Span(src).Slice((long)srcRow * src.Cols, (long)count * src.Cols);
        var to = Span(dst).Slice((long)dstRow * dst.Cols, (long)count * dst.Cols);
        Device.CopyDeviceToDevice(to.Pointer, from.Pointer, from.Bytes);
    }

    public override void Download(Activation src, Span<float> dst)
    {
        if (_graph is { Capturing: true })
            _graph.EndAndLaunch();
        long bytes = src.Size * sizeof(float);
        if (_download is null || _download.Bytes < bytes)
        {
            _download?.Dispose();
            _download = Device.AllocatePinned(Math.Max(bytes, 1 << 16));
        }
        using (Device.Bind())
        {
            Device.Api.CopyToHost((void*)_download.Pointer, Span(src).Pointer, bytes, Device.Stream);
            Device.Api.SynchronizeStream(Device.Stream);
        }
        _download.AsSpan<float>(checked((int)src.Size)).CopyTo(dst);
        _warm = true;
    }

    /// <summary>Copies host values into an activation (the counterpart of <see cref="Download"/>).</summary>
    public void Upload(ReadOnlySpan<float> source, Activation dst)
    {
        if (source.Length != dst.Size)
            throw new ArgumentException($"uploading {source.Length} floats into an activation {dst}");
        Device.CopyToDevice(source, Span(dst));
    }

    /// <summary>The index of each row's largest value, computed on the device (greedy decoding without downloading logits).</summary>
    public void ArgMax(Activation x, Span<int> result)
    {
        if (result.Length < x.Rows)
            throw new ArgumentException($"argmax of {x.Rows} rows into {result.Length} ints");
        EndPendingGraph();
        var output = ((CudaBuffer)x.Buffer).ArgMaxOutput(Device, x.Rows);
        Kernels.ArgMax.ArgMaxF32(Device, Span(x), x.Rows, x.Cols, output);
        Device.CopyToHost(output, result[..x.Rows]);
    }

    /// <summary>
    /// A one-token pass being captured as a graph ends where its logits are used: the graph is launched
    /// before the kernels that read them. A pass that kept its logits on the device counts as run, so the
    /// next one-token pass may be captured.
    /// </summary>
    private void EndPendingGraph()
    {
        if (_graph is { Capturing: true })
            _graph.EndAndLaunch();
        _warm = true;
    }

    public void Sample(Activation logits, FusedSamplingParameters parameters, ulong seed, ulong offset, Span<int> tokens)
    {
        int rows = logits.Rows;
        if (tokens.Length < rows)
            throw new ArgumentException($"sampling {rows} rows into {tokens.Length} ints");
        EndPendingGraph();
        var ids = Grow(ref _decodeIds, rows);
        var prob = Grow(ref _prob, rows);
        Kernels.Sampling.SampleF32(Device, Span(logits), rows, logits.Cols, parameters, seed, offset, default, ids, prob, default, default);
        Device.CopyToHost(ids, tokens[..rows]);
        for (int r = 0; r < rows; r++)
        {
            if (tokens[r] < 0)
                throw new InvalidOperationException($"sampling row {r}: the model produced no finite logit (all NaN or −∞)");
        }
    }

    public void TopKIds(Activation logits, int k, Span<int> ids)
    {
        int rows = logits.Rows;
        if (ids.Length < rows * k)
            throw new ArgumentException($"top-{k} ids of {rows} rows into {ids.Length} ints");
        EndPendingGraph();
        var output = Grow(ref _decodeIds, (long)rows * k);
        Kernels.Sampling.TopKIdsF32(Device, Span(logits), rows, logits.Cols, k, output);
        Device.CopyToHost(output, ids[..(rows * k)]);
    }

    public int AcceptGreedy(Activation logits, ReadOnlySpan<int> parent, ReadOnlySpan<int> token, List<int> path)
    {
        int n = parent.Length;
        if (token.Length != n || logits.Rows != n + 1)
            throw new ArgumentException($"greedy acceptance of {n} nodes ({token.Length} tokens) over {logits.Rows} rows of logits");
        EndPendingGraph();
        var argmax = ((CudaBuffer)logits.Buffer).ArgMaxOutput(Device, n + 1);
        Kernels.ArgMax.ArgMaxF32(Device, Span(logits), n + 1, logits.Cols, argmax);
        var output = Grow(ref _acceptOutput, Kernels.Acceptance.OutputInts(n));
        Kernels.Acceptance.AcceptGreedy(Device, _treeParent.Put(parent), _treeToken.Put(token), n, argmax, output);
        return ReadAccepted(output, n, path);
    }

    public int AcceptSampled(Activation logits, FusedSamplingParameters parameters, ulong seed, ulong offset, ReadOnlySpan<int> parent,
        ReadOnlySpan<int> token, ReadOnlySpan<int> qrow, ReadOnlySpan<int> draw, ReadOnlySpan<float> q, List<int> path)
    {
        int n = parent.Length, vocab = logits.Cols;
        if (token.Length != n || logits.Rows != n + 1 || qrow.Length != n + 1 || draw.Length != n + 1 || q.Length % vocab != 0)
            throw new ArgumentException($"sampled acceptance of {n} nodes over {logits.Rows} rows: {qrow.Length} q rows, {draw.Length} draws, {q.Length} q values");
        foreach (int r in qrow)
        {
            if (r >= q.Length / vocab)
                throw new ArgumentOutOfRangeException(nameof(qrow), $"q row {r} of {q.Length / vocab}");
        }
        EndPendingGraph();
        // Each row's draw and stats (max, threshold, mass): acceptance recomputes p where it needs it,
        // so no [rows, vocab] distribution is written.
        var stats = Grow(ref _rowStats, 3L * (n + 1));
        var sampled = Grow(ref _sampled, n + 1);
        var prob = Grow(ref _prob, n + 1);
        Kernels.Sampling.SampleF32(Device, Span(logits), n + 1, vocab, parameters, seed, offset, default, sampled, prob, default, default, stats);
        var draft = default(DeviceSpan<float>);
        if (!q.IsEmpty)
        {
            draft = Grow(ref _draftQ, q.Length);
            Device.CopyToDevice(q, draft);
        }
        var output = Grow(ref _acceptOutput, Kernels.Acceptance.OutputInts(n));
        Kernels.Acceptance.AcceptSampled(Device, Span(logits), stats, 1 / parameters.Temperature, sampled, draft, _treeQRow.Put(qrow), _treeDraw.Put(draw), _treeParent.Put(parent),
            _treeToken.Put(token), n, vocab, seed, offset, Grow(ref _residual, vocab), output);
        int next = ReadAccepted(output, n, path);
        if (next < 0)
            throw new InvalidOperationException("sampled acceptance: the model produced no finite logit (all NaN or −∞)");
        return next;
    }

    /// <summary>Reads [L, next, path…] back: the only transfer of an acceptance step.</summary>
    private int ReadAccepted(DeviceSpan<int> output, int n, List<int> path)
    {
        if (_acceptHost.Length < n + 2)
            _acceptHost = new int[Math.Max(64, 2 * (n + 2))];
        var host = _acceptHost.AsSpan(0, n + 2);
        Device.CopyToHost(output.Slice(0, n + 2), host);
        int length = host[0];
        if (length < 0 || length > n)
            throw new InvalidOperationException($"acceptance returned a path of {length} nodes for a tree of {n}");
        path.Clear();
        for (int i = 0; i < length; i++)
            path.Add(host[2 + i]);
        return host[1];
    }

    public override void Dispose()
    {
        DisposeBatchScratch();
        _graph?.Dispose();
        _blas?.Dispose();
        foreach (var f in _ropeFrequencies.Values)
            f.Dispose();
        _attentionScratch?.Dispose();
        _weightsF16?.Dispose();
        _inputF16?.Dispose();
        _tokens.Dispose();
        _positions.Dispose();
        _windowStarts.Dispose();
        _table.Dispose();
        _table2.Dispose();
        _rows.Dispose();
        _moeSlots.Dispose();
        _moeWeights.Dispose();
        _sparseActive.Dispose();
        _sparseScores.Dispose();
        _sparseHidden?.Dispose();
        _moeChosen?.Dispose();
        _moeRouteWeights?.Dispose();
        _moeHidden?.Dispose();
        _moeSharedGate?.Dispose();
        _moeSharedUp?.Dispose();
        _moeSharedOut?.Dispose();
        _mask.Dispose();
        _treeParent.Dispose();
        _treeToken.Dispose();
        _treeQRow.Dispose();
        _treeDraw.Dispose();
        _decodeIds?.Dispose();
        _sampled?.Dispose();
        _acceptOutput?.Dispose();
        _rowStats?.Dispose();
        _prob?.Dispose();
        _draftQ?.Dispose();
        _residual?.Dispose();
        _normCounter?.Dispose();
        _mergeCounters?.Dispose();
        _download?.Dispose();
        if (_ownsDevice)
            Device.Dispose();
        else
            Device.Pool.Trim(); // what this backend held goes back to the driver, not only to the pool
    }

    /// <summary>
    /// One kind of per-step host input (tokens, positions, ...): a pinned buffer, its device copy, and
    /// the last contents uploaded — every layer asks for the same positions and block table, and they
    /// are sent once. Before the pinned buffer is rewritten, the event recorded after its last copy is
    /// waited on, so a queued copy never reads half-new data. While a graph is being captured the copy
    /// becomes a node of the graph (it reads the pinned buffer when the graph runs, before the pass's
    /// download returns) and no event is used: a pass writes each input once, and the previous pass
    /// ended with a synchronizing download. A capture copies each input once even when it did not
    /// change, so that every step's graph has the same nodes and updates in place (DecodeGraph).
    /// </summary>
    /// <param name="capture">The capture under way (DecodeGraph.Capture), or 0 when launches run directly.</param>
    private sealed class HostInput<T>(GpuDevice device, Func<long> capture) : IDisposable where T : unmanaged, IEquatable<T>
    {
        private PinnedBuffer? _pinned;
        private GpuArray<T>? _device;
        private T[] _last = [];
        private int _count = -1;
        private IntPtr _copied;
        private long _copiedInCapture;

        public DeviceSpan<T> Put(ReadOnlySpan<T> data)
        {
            long current = capture();
            bool graph = current != 0;
            bool same = _count == data.Length && data.SequenceEqual(_last.AsSpan(0, _count));
            if (same && (!graph || _copiedInCapture == current))
                return _device!.Span.Slice(0, Math.Max(_count, 1));
            using var _ = device.Bind();
            if (_device is null || _device.Length < data.Length)
            {
                long capacity = Math.Max(64, (long)data.Length * 2);
                if (_copied != IntPtr.Zero && !graph)
                    device.Api.SynchronizeEvent(_copied);
                _pinned?.Dispose();
                _device?.Dispose();
                _pinned = device.AllocatePinned(capacity * sizeof(T));
                _device = device.Allocate<T>(capacity);
                _last = new T[capacity];
            }
            if (!graph)
            {
                if (_copied == IntPtr.Zero)
                    _copied = device.Api.CreateEvent(timing: false);
                else
                    device.Api.SynchronizeEvent(_copied);
            }
            data.CopyTo(_pinned!.AsSpan<T>(data.Length));
            if (data.Length > 0)
            {
                device.Api.CopyToDevice(_device.Span.Pointer, (void*)_pinned.Pointer, (long)data.Length * sizeof(T), device.Stream);
                if (!graph)
                    device.Api.RecordEvent(_copied, device.Stream);
            }
            data.CopyTo(_last);
            _count = data.Length;
            _copiedInCapture = current;
            return _device.Span.Slice(0, Math.Max(data.Length, 1));
        }

        public void Dispose()
        {
            if (_copied != IntPtr.Zero)
            {
                using (device.Bind())
                    device.Api.DestroyEvent(_copied);
                _copied = IntPtr.Zero;
            }
            _pinned?.Dispose();
            _device?.Dispose();
        }
    }
}

internal sealed class CudaBuffer(GpuArray<float> data) : DeviceBuffer
{
    private GpuArray<int>? _argMax;

    public GpuArray<float> Data { get; } = data;

    public override long Length => Data.Length;

    public DeviceSpan<int> ArgMaxOutput(GpuDevice device, int rows)
    {
        if (_argMax is null || _argMax.Length < rows)
        {
            _argMax?.Dispose();
            _argMax = device.Allocate<int>(Math.Max(rows, 16));
        }
        return _argMax.Span.Slice(0, rows);
    }

    public override void Dispose()
    {
        Data.Dispose();
        _argMax?.Dispose();
    }
}

/// <summary>A weight matrix in device memory, in its GGUF block format.</summary>
/// <summary>A weight matrix in device memory: its own allocation, or a view of rows of another (an expert of a stack), which frees nothing.</summary>
internal sealed class CudaMatrix : DeviceMatrix
{
    private readonly GpuArray<byte>? _owned;

    public CudaMatrix(string name, GgmlType type, int rows, int cols, GpuArray<byte> data) : base(name, type, rows, cols)
    {
        _owned = data;
        Data = data.Span;
    }

    public CudaMatrix(string name, GgmlType type, int rows, int cols, DeviceSpan<byte> view) : base(name, type, rows, cols) => Data = view;

    public DeviceSpan<byte> Data { get; }

    public override void Dispose() => _owned?.Dispose();
}

internal sealed class CudaVector(string name, GpuArray<float> data) : DeviceVector(name, checked((int)data.Length))
{
    public GpuArray<float> Data { get; } = data;

    public override void Dispose() => Data.Dispose();
}

/// <summary>
/// Every KV block of a cache in one device allocation, reserved when the cache is created (the layout
/// of kernels/kvcache.cu), zeroed so that unwritten slots hold no stale values; float32 or binary16.
/// </summary>
internal sealed class CudaKvStore : KvStore
{
    private readonly GpuDevice _device;
    private GpuArray<float>? _data;
    private GpuArray<Half>? _half;

    public CudaKvStore(GpuDevice device, KvLayout layout, int maxBlocks, bool f16 = false) : base(layout)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBlocks, 1);
        _device = device;
        MaxBlocks = maxBlocks;
        IsF16 = f16;
        long elements = maxBlocks * Kernels.KvCache.BlockFloats(layout);
        if (f16)
        {
            _half = device.Allocate<Half>(elements);
            device.Clear(_half.Span.Pointer, _half.Span.Bytes);
        }
        else
        {
            _data = device.Allocate<float>(elements);
            device.Clear(_data.Span.Pointer, _data.Span.Bytes);
        }
    }

    public int MaxBlocks { get; }

    /// <summary>Whether the elements are binary16.</summary>
    public bool IsF16 { get; }

    public DeviceSpan<float> Data => (_data ?? throw new ObjectDisposedException(nameof(CudaKvStore), IsF16 ? "an F16 cache has no float32 data" : null)).Span;

    public DeviceSpan<Half> DataF16 => (_half ?? throw new ObjectDisposedException(nameof(CudaKvStore), IsF16 ? null : "an F32 cache has no binary16 data")).Span;

    private long BlockFloats => Kernels.KvCache.BlockFloats(Layout);

    private long ElementBytes => IsF16 ? 2 : 4;

    private IntPtr Base => IsF16 ? DataF16.Pointer : Data.Pointer;

    public override void EnsureBlock(int block)
    {
        if ((uint)block >= (uint)MaxBlocks)
            throw new ArgumentOutOfRangeException(nameof(block), $"KV block {block} is outside the {MaxBlocks} reserved on the device");
    }

    public override void CopyBlock(int source, int destination)
    {
        EnsureBlock(source);
        EnsureBlock(destination);
        long bytes = BlockFloats * ElementBytes;
        _device.CopyDeviceToDevice(Base + (nint)(destination * bytes), Base + (nint)(source * bytes), bytes);
    }

    public override void CopySlot(int sourceBlock, int sourceOffset, int destinationBlock, int destinationOffset)
    {
        if (IsF16)
            Kernels.KvCache.CopySlot(_device, DataF16, MaxBlocks, Layout, sourceBlock, sourceOffset, destinationBlock, destinationOffset);
        else
            Kernels.KvCache.CopySlot(_device, Data, MaxBlocks, Layout, sourceBlock, sourceOffset, destinationBlock, destinationOffset);
    }

    public override void Dispose()
    {
        _data?.Dispose();
        _half?.Dispose();
        _data = null;
        _half = null;
    }
}
