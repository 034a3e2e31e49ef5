using CommunityToolkit.HighPerformance;
using Engine.Backends.Cpu.Kernels;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Backends.Cpu;

/// <summary>
/// The CPU backend: weights used in place from the mapped model file, activations in managed arrays,
/// matrix products and attention split across a <see cref="WorkerPool"/> of exactly
/// <see cref="Threads"/> threads. The kernels it calls are the C# references of the CUDA kernels.
/// </summary>
public sealed class CpuBackend : Backend
{
    private readonly WorkerPool _pool;
    private readonly MatMulWork _matMul = new();
    private readonly AttentionWork _attention = new();

    public CpuBackend(int threads = 0)
    {
        if (threads < 0)
            throw new ArgumentOutOfRangeException(nameof(threads), $"thread count {threads} must be positive (0 = one per core)");
        Threads = threads == 0 ? Environment.ProcessorCount : threads;
        _pool = new WorkerPool(Threads);
    }

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
        unsafe
        {
            Dequantize.Row(tensor.Type, new ReadOnlySpan<byte>(tensor.Data, checked((int)tensor.ByteSize)), data);
        }
        return new CpuVector(tensor.Name, data);
    }

    public override DeviceBuffer Allocate(long floats) => new CpuBuffer(floats);

    public override KvStore CreateKvStore(KvLayout layout) => new CpuKvStore(layout);

    private static Span<float> Data(Activation a) => ((CpuBuffer)a.Buffer).Data.AsSpan(0, checked((int)a.Size));

    /// <summary>The activation as a [rows, cols] matrix view.</summary>
    private static Span2D<float> Rows(Activation a) => new(((CpuBuffer)a.Buffer).Data, a.Rows, a.Cols);

    private static float[] Array(Activation a) => ((CpuBuffer)a.Buffer).Data;

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

    public override void RmsNorm(Activation x, DeviceVector weight, float eps, Activation dst) =>
        Kernels.RmsNorm.RmsNormF32(Data(x), ((CpuVector)weight).Data, eps, Data(dst), x.Rows);

    public override void MatMul(Activation x, DeviceMatrix w, Activation dst)
    {
        if (x.Cols != w.Cols || dst.Cols != w.Rows || dst.Rows != x.Rows)
            throw new ArgumentException($"matmul {w.Name}: x {x} · W [{w.Rows} x {w.Cols}]ᵀ → dst {dst}");
        _matMul.Set(Array(x), x.Rows, ((CpuMatrix)w).View, Array(dst));
        _pool.Run(_matMul, Math.Min(w.Rows, Threads * 4));
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
        Span<float> cos = stackalloc float[rope.InvFreq.Length];
        Span<float> sin = stackalloc float[rope.InvFreq.Length];
        var rows = Rows(x);
        for (int r = 0; r < x.Rows; r++)
        {
            Kernels.Rope.Angles(positions[r], rope, cos, sin);
            Kernels.Rope.RopeF32(rows.GetRowSpan(r), heads, rope.HeadDim, rope.Style == Models.RopeStyle.NeoX, cos, sin);
        }
    }

    public override void StoreKv(KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot, Activation k, Activation v)
    {
        var layout = store.Layout;
        var blocks = ((CpuKvStore)store).Blocks;
        int hd = layout.HeadDim, bs = layout.BlockSize;
        var kRows = Rows(k);
        var vRows = Rows(v);
        for (int r = 0; r < k.Rows; r++)
        {
            int slot = firstSlot + r;
            var block = blocks[blockTable[slot / bs]];
            for (int h = 0; h < layout.KvHeads; h++)
            {
                int kOffset = ((layer * 2 * layout.KvHeads + h) * bs + slot % bs) * hd;
                int vOffset = kOffset + layout.KvHeads * bs * hd;
                kRows.GetRowSpan(r).Slice(h * hd, hd).CopyTo(block.AsSpan(kOffset, hd));
                vRows.GetRowSpan(r).Slice(h * hd, hd).CopyTo(block.AsSpan(vOffset, hd));
            }
        }
    }

    public override void Attention(Activation q, KvStore store, int layer, ReadOnlySpan<int> blockTable, int prefixLength,
        AttentionMask mask, int heads, float scale, Activation dst)
    {
        _attention.Set(Array(q), q.Rows, (CpuKvStore)store, layer, blockTable, prefixLength, mask, heads, scale, Array(dst));
        _pool.Run(_attention, q.Rows * heads);
    }

    public override void SwiGlu(Activation gate, Activation up, Activation dst) => Activations.SwiGluF32(Data(gate), Data(up), Data(dst));

    public override void Add(Activation dst, Activation src) => Activations.AddF32(Data(dst), Data(src));

    public override void GatherRows(Activation src, ReadOnlySpan<int> rows, Activation dst)
    {
        var s = Rows(src);
        var d = Rows(dst);
        for (int k = 0; k < rows.Length; k++)
            s.GetRowSpan(rows[k]).CopyTo(d.GetRowSpan(k));
    }

    public override void Download(Activation src, Span<float> dst) => Data(src).CopyTo(dst);

    public override void Dispose() => _pool.Dispose();

    /// <summary>Splits a matrix product by output rows (weight rows), so each weight row is read by one thread.</summary>
    private sealed class MatMulWork : IParallelWork
    {
        private float[] _x = [];
        private float[] _y = [];
        private int _n;
        private TensorView? _w;

        public void Set(float[] x, int n, TensorView w, float[] y) => (_x, _n, _w, _y) = (x, n, w, y);

        public void Execute(int chunk, int chunks)
        {
            var (start, end) = WorkerPool.Range((int)_w!.RowCount, chunk, chunks);
            Kernels.MatMul.Rows(_x, _n, _w, _y, start, end);
        }
    }

    /// <summary>One chunk per (query row, head).</summary>
    private sealed class AttentionWork : IParallelWork
    {
        [ThreadStatic]
        private static int[]? s_visible;
        private float[] _q = [];
        private float[] _y = [];
        private CpuKvStore? _store;
        private int[] _table = [];
        private AttentionMask _mask = AttentionMask.Causal;
        private int _n, _layer, _prefix, _heads;
        private float _scale;

        public void Set(float[] q, int n, CpuKvStore store, int layer, ReadOnlySpan<int> table, int prefix, AttentionMask mask, int heads, float scale, float[] y)
        {
            (_q, _n, _store, _layer, _prefix, _mask, _heads, _scale, _y) = (q, n, store, layer, prefix, mask, heads, scale, y);
            if (_table.Length < table.Length)
                _table = new int[Math.Max(table.Length, 2 * _table.Length)];
            table.CopyTo(_table);
        }

        public void Execute(int chunk, int chunks)
        {
            int row = chunk / _heads, head = chunk % _heads;
            var layout = _store!.Layout;
            int hd = layout.HeadDim;
            int total = _prefix + _n;
            var visible = s_visible is { } v && v.Length >= total ? v : s_visible = new int[Math.Max(total, 256)];
            int count = 0;
            for (int s = 0; s < _prefix; s++)
                visible[count++] = s;
            for (int j = 0; j < _n; j++)
            {
                if (_mask.Allows(row, j))
                    visible[count++] = _prefix + j;
            }
            int cols = _heads * hd;
            int kvHead = head / (_heads / layout.KvHeads);
            Kernels.Attention.Head(_q.AsSpan(row * cols + head * hd, hd), _store.Blocks, _table, layout, _layer, kvHead,
                visible.AsSpan(0, count), _scale, _y.AsSpan(row * cols + head * hd, hd));
        }
    }
}
