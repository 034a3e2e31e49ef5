using System.Diagnostics;
using Engine.Tensors;

namespace Engine.Backends;

/// <summary>
/// Wraps a backend and accumulates the wall time of each operation, for <c>engine bench --profile</c>:
/// where a forward pass spends its time, per operation kind. Backends that run asynchronously must
/// synchronize in their operations for the numbers to mean anything (the CPU backend does).
/// </summary>
public sealed class ProfilingBackend(Backend inner) : Backend
{
    private readonly Dictionary<string, (long Ticks, long Calls)> _totals = [];

    public Backend Inner { get; } = inner;

    public override string Name => Inner.Name;

    /// <summary>Accumulated (operation, seconds, calls), most expensive first.</summary>
    public IReadOnlyList<(string Operation, double Seconds, long Calls)> Totals() =>
        _totals.Select(kv => (kv.Key, kv.Value.Ticks / (double)Stopwatch.Frequency, kv.Value.Calls)).OrderByDescending(t => t.Item2).ToList();

    public void Reset() => _totals.Clear();

    private void Add(string operation, long start)
    {
        long elapsed = Stopwatch.GetTimestamp() - start;
        _totals[operation] = _totals.TryGetValue(operation, out var t) ? (t.Ticks + elapsed, t.Calls + 1) : (elapsed, 1);
    }

    public override DeviceMatrix LoadMatrix(TensorView tensor) => Inner.LoadMatrix(tensor);
    public override DeviceVector LoadVector(TensorView tensor) => Inner.LoadVector(tensor);
    public override DeviceBuffer Allocate(long floats) => Inner.Allocate(floats);
    public override KvStore CreateKvStore(KvLayout layout, int maxBlocks) => Inner.CreateKvStore(layout, maxBlocks);

    public override void Embed(DeviceMatrix table, ReadOnlySpan<int> tokens, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.Embed(table, tokens, dst);
        Add("embed", t);
    }

    public override void RmsNorm(Activation x, DeviceVector weight, float eps, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.RmsNorm(x, weight, eps, dst);
        Add("rms_norm", t);
    }

    public override void MatMul(Activation x, ReadOnlySpan<MatMulTarget> targets, bool batchInvariant = false)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.MatMul(x, targets, batchInvariant);
        Add($"matmul {targets[0].Weights.Type}{(targets.Length > 1 ? " x" + targets.Length : "")}", t);
    }

    public override void RopeStoreKv(Activation q, Activation k, Activation v, int heads, int kvHeads, ReadOnlySpan<int> positions, RopeTable rope,
        KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.RopeStoreKv(q, k, v, heads, kvHeads, positions, rope, store, layer, blockTable, firstSlot);
        Add("rope_store_kv", t);
    }

    public override void MatMulAddNorm(Activation x, DeviceMatrix w, Activation residual, Activation scratch, DeviceVector normWeight, float eps,
        Activation normOut, bool batchInvariant = false, float residualScale = 1f)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.MatMulAddNorm(x, w, residual, scratch, normWeight, eps, normOut, batchInvariant, residualScale);
        Add($"matmul_add_norm {w.Type}", t);
    }

    public override void GatedFfn(Activation h, DeviceMatrix wGate, DeviceMatrix wUp, Activation gate, Activation up, bool batchInvariant = false,
        bool gelu = false)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.GatedFfn(h, wGate, wUp, gate, up, batchInvariant, gelu);
        Add($"gated_ffn {wGate.Type}", t);
    }

    public override long UploadBytes(TensorView tensor) => Inner.UploadBytes(tensor);

    public override int KvElementBytes => Inner.KvElementBytes;

    public override long KvBytesPerTokenLayer(int kvHeads, int headDim) => Inner.KvBytesPerTokenLayer(kvHeads, headDim);

    public override void Reserve(MemoryPlan plan) => Inner.Reserve(plan);

    public override void AddBias(Activation x, DeviceVector bias)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.AddBias(x, bias);
        Add("add_bias", t);
    }

    public override void Rope(Activation x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.Rope(x, heads, positions, rope);
        Add("rope", t);
    }

    public override void StoreKv(KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot, Activation k, Activation v)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.StoreKv(store, layer, blockTable, firstSlot, k, v);
        Add("store_kv", t);
    }

    public override void Attention(Activation q, KvStore store, int layer, ReadOnlySpan<int> blockTable, int prefixLength, AttentionMask mask, int heads, float scale, Activation dst,
        bool batchInvariant = false, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.Attention(q, store, layer, blockTable, prefixLength, mask, heads, scale, dst, batchInvariant, softCap, windowStarts);
        Add("attention", t);
    }

    public override void SwiGlu(Activation gate, Activation up, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.SwiGlu(gate, up, dst);
        Add("swiglu", t);
    }

    public override void GeGlu(Activation gate, Activation up, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.GeGlu(gate, up, dst);
        Add("geglu", t);
    }

    public override void SoftCap(Activation x, float cap)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.SoftCap(x, cap);
        Add("soft_cap", t);
    }

    public override void Scale(Activation x, float s)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.Scale(x, s);
        Add("scale", t);
    }

    public override void Add(Activation dst, Activation src)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.Add(dst, src);
        Add("add", t);
    }

    public override void MlaAssemble(Activation qRaw, Activation keyRope, Activation kvB, int heads, int nope, int rope, int vdim,
        Activation q, Activation k, Activation v)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.MlaAssemble(qRaw, keyRope, kvB, heads, nope, rope, vdim, q, k, v);
        Add("mla_assemble", t);
    }

    public override void MlaCompact(Activation att, int heads, int vdim, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.MlaCompact(att, heads, vdim, dst);
        Add("mla_compact", t);
    }

    public override DeviceMatrix? RowView(DeviceMatrix matrix, long start, int rows, string name) => Inner.RowView(matrix, start, rows, name);

    public override bool RoutedExperts(Activation h, Activation routerLogits, Models.ExpertStacks experts, int k, bool normalize,
        Models.SharedExpert? shared, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        bool done = Inner.RoutedExperts(h, routerLogits, experts, k, normalize, shared, dst);
        if (done)
            Add("routed_experts", t);
        return done;
    }

    public override void MatMulGroups(ReadOnlySpan<Activation> inputs, ReadOnlySpan<MatMulTarget> targets)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.MatMulGroups(inputs, targets);
        Add($"matmul_groups {(targets.IsEmpty ? "" : targets[0].Weights.Type.ToString())} x{targets.Length}", t);
    }

    public override void MoeCombine(Activation src, ReadOnlySpan<int> slots, ReadOnlySpan<float> weights, int k, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.MoeCombine(src, slots, weights, k, dst);
        Add("moe_combine", t);
    }

    public override void ChunkSparseFfn(Activation x, DeviceMatrix up, DeviceMatrix down, int blocks, ReadOnlySpan<int> active,
        ReadOnlySpan<float> scores, Activation dst, bool batchInvariant = false)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.ChunkSparseFfn(x, up, down, blocks, active, scores, dst, batchInvariant);
        Add("chunk_sparse_ffn", t);
    }

    public override void GatherRows(Activation src, ReadOnlySpan<int> rows, Activation dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.GatherRows(src, rows, dst);
        Add("gather_rows", t);
    }

    public override void RopeStoreKvBatch(Activation q, Activation k, Activation v, int heads, int kvHeads, ReadOnlySpan<int> positions, RopeTable rope,
        KvStore store, int layer, SequenceBatch batch)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.RopeStoreKvBatch(q, k, v, heads, kvHeads, positions, rope, store, layer, batch);
        Add("rope_store_kv_batch", t);
    }

    public override void StoreKvBatch(KvStore store, int layer, SequenceBatch batch, Activation k, Activation v)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.StoreKvBatch(store, layer, batch, k, v);
        Add("store_kv_batch", t);
    }

    public override void AttentionBatch(Activation q, KvStore store, int layer, SequenceBatch batch, int heads, float scale, Activation dst,
        bool batchInvariant = false, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.AttentionBatch(q, store, layer, batch, heads, scale, dst, batchInvariant, softCap, windowStarts);
        Add("attention_batch", t);
    }

    public override void CopyRows(Activation src, int srcRow, Activation dst, int dstRow, int count)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.CopyRows(src, srcRow, dst, dstRow, count);
        Add("copy_rows", t);
    }

    public override void Download(Activation src, Span<float> dst)
    {
        long t = Stopwatch.GetTimestamp();
        Inner.Download(src, dst);
        Add("download", t);
    }

    public override void Dispose() => Inner.Dispose();
}
