using Engine.Tensors;

namespace Engine.Backends;

/// <summary>One product of a shared-input <see cref="Backend.MatMul(Activation, ReadOnlySpan{MatMulTarget}, bool)"/>: Output = x·Weightsᵀ (+ Bias).</summary>
public readonly record struct MatMulTarget(DeviceMatrix Weights, Activation Output)
{
    /// <summary>Added to every row of the product (Qwen2's q/k/v biases), or null; a backend may add it as the product leaves.</summary>
    public DeviceVector? Bias { get; init; }
}

/// <summary>
/// What a device must do to run a Llama-family forward pass. The model code (<see cref="Models.LlamaModel"/>)
/// is written once against these operations; the CPU backend implements them in C#, the CUDA backend
/// with kernels from <c>kernels/*.cu</c>. Shapes are given per operation; every activation is row-major
/// with one row per token of the batch. Operations may run asynchronously: results are visible to the
/// host after <see cref="Download"/>.
/// </summary>
public abstract class Backend : IDisposable
{
    /// <summary>"cpu", "cuda:0", ...</summary>
    public abstract string Name { get; }

    /// <summary>Makes a weight matrix [rows = dims[1], cols = dims[0]] usable (CPU: in place; GPU: uploaded once, still quantized).</summary>
    public abstract DeviceMatrix LoadMatrix(TensorView tensor);

    /// <summary>Makes a 1-D weight usable as float32 (converted from F16/BF16 if needed).</summary>
    public abstract DeviceVector LoadVector(TensorView tensor);

    /// <summary>Bytes <see cref="LoadMatrix"/> or <see cref="LoadVector"/> will hold for this tensor (0 where it stays in the mapped file).</summary>
    public virtual long UploadBytes(TensorView tensor) => 0;

    /// <summary>Bytes of one KV cache element (4: float32).</summary>
    public virtual int KvElementBytes => 4;

    /// <summary>
    /// Bytes the KV cache takes for one token of one layer (its keys and values, <paramref name="kvHeads"/>
    /// heads of <paramref name="headDim"/>): the elements, and what a quantized cache keeps beside them.
    /// </summary>
    public virtual long KvBytesPerTokenLayer(int kvHeads, int headDim) => 2L * kvHeads * headDim * KvElementBytes;

    /// <summary>
    /// Checks, before a model loads, that what it will hold fits; throws <see cref="DeviceMemoryException"/>
    /// naming what was needed and what was free. The CPU backend maps weights and grows its cache as it
    /// goes: nothing to check.
    /// </summary>
    public virtual void Reserve(MemoryPlan plan) { }

    /// <summary>Scratch memory for activations, reused across steps.</summary>
    public abstract DeviceBuffer Allocate(long floats);

    /// <summary>Storage for up to <paramref name="maxBlocks"/> KV blocks (the CPU allocates them as they are first used; a GPU reserves them at once, so that decoding never allocates device memory).</summary>
    public abstract KvStore CreateKvStore(KvLayout layout, int maxBlocks);

    /// <summary>dst[i, :] = table[tokens[i], :]. table: [vocab, dim]; dst: [n, dim].</summary>
    public abstract void Embed(DeviceMatrix table, ReadOnlySpan<int> tokens, Activation dst);

    /// <summary>dst[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) · weight. x, dst: [n, dim] (may alias).</summary>
    public abstract void RmsNorm(Activation x, DeviceVector weight, float eps, Activation dst);

    /// <summary>dst = x·Wᵀ. x: [n, W.Cols]; dst: [n, W.Rows].</summary>
    public void MatMul(Activation x, DeviceMatrix w, Activation dst, bool batchInvariant = false) =>
        MatMul(x, [new MatMulTarget(w, dst)], batchInvariant);

    /// <summary>
    /// Several products of the same input (q/k/v, gate/up): each target's Output = x·Weightsᵀ (+ its Bias). Sharing
    /// the input lets a backend prepare it once (quantize, upload) and run all rows in one parallel pass.
    /// With <paramref name="batchInvariant"/>, every row is computed exactly as it would be alone (same
    /// kernel, same rounding), so a row's result does not depend on the rest of the batch — what exact
    /// speculative verification needs; otherwise a batch may take faster matrix kernels.
    /// </summary>
    public abstract void MatMul(Activation x, ReadOnlySpan<MatMulTarget> targets, bool batchInvariant = false);

    /// <summary>x[i, :] += bias. x: [n, bias.Length].</summary>
    public abstract void AddBias(Activation x, DeviceVector bias);

    /// <summary>Rotates each head of x in place by its row's position. x: [n, heads·headDim].</summary>
    public abstract void Rope(Activation x, int heads, ReadOnlySpan<int> positions, RopeTable rope);

    /// <summary>
    /// Writes the batch's K and V (each [n, kvHeads·headDim]) for one layer into the cache slots
    /// <paramref name="firstSlot"/>.. of a sequence whose blocks are <paramref name="blockTable"/>.
    /// </summary>
    public abstract void StoreKv(KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot, Activation k, Activation v);

    /// <summary>
    /// Scaled dot-product attention with grouped-query heads. Row i of q ([n, heads·headDim]) attends to
    /// the <paramref name="prefixLength"/> committed slots of the sequence and to batch rows j (stored at
    /// slot prefixLength + j) where <paramref name="mask"/> allows (i, j). dst: [n, heads·headDim].
    /// With <paramref name="batchInvariant"/>, each row is computed exactly as it would be alone (what
    /// exact speculative verification needs); the CPU's attention always is. Two options a layer may add:
    /// <paramref name="softCap"/> &gt; 0 soft-caps the scores (Gemma 2: s → cap·tanh(s / cap)), and
    /// <paramref name="windowStarts"/>, one per row, is the first slot the row sees — sliding-window
    /// attention (<see cref="SlidingWindow"/>; the mask must already exclude the batch slots outside it).
    /// </summary>
    public abstract void Attention(Activation q, KvStore store, int layer, ReadOnlySpan<int> blockTable, int prefixLength,
        AttentionMask mask, int heads, float scale, Activation dst, bool batchInvariant = false, float softCap = 0,
        ReadOnlySpan<int> windowStarts = default);

    /// <summary>The checks of <see cref="Attention"/>'s two options every backend makes: a finite cap ≥ 0, one window start per row.</summary>
    protected static void CheckAttentionOptions(int rows, float softCap, ReadOnlySpan<int> windowStarts)
    {
        if (!(softCap >= 0) || !float.IsFinite(softCap))
            throw new ArgumentOutOfRangeException(nameof(softCap), $"an attention soft cap of {softCap} must be 0 (none) or a positive number");
        if (!windowStarts.IsEmpty && windowStarts.Length != rows)
            throw new ArgumentException($"{windowStarts.Length} window starts for {rows} rows", nameof(windowStarts));
        foreach (int start in windowStarts)
        {
            if (start < 0)
                throw new ArgumentOutOfRangeException(nameof(windowStarts), $"window start {start} is negative");
        }
    }

    /// <summary>dst = silu(gate) ⊙ up (SwiGLU, Shazeer 2020). All [n, ffn]; dst may alias gate.</summary>
    public abstract void SwiGlu(Activation gate, Activation up, Activation dst);

    /// <summary>dst = gelu_tanh(gate) ⊙ up (GeGLU, Gemma's feed-forward). All [n, ffn]; dst may alias gate.</summary>
    public abstract void GeGlu(Activation gate, Activation up, Activation dst);

    /// <summary>x = cap · tanh(x / cap), elementwise (Gemma 2's final-logit soft-capping); cap &gt; 0.</summary>
    public abstract void SoftCap(Activation x, float cap);

    /// <summary>x *= s, elementwise (Granite's embedding, residual and logit multipliers).</summary>
    public abstract void Scale(Activation x, float s);

    /// <summary>dst += src, elementwise. Both [n, dim].</summary>
    public abstract void Add(Activation dst, Activation src);

    /// <summary>
    /// The attention block's RoPE and cache write in one step: rotates q ([n, heads·headDim]) and k
    /// ([n, kvHeads·headDim]) in place by <paramref name="positions"/>, then writes k and v into the cache
    /// (<see cref="StoreKv"/>). A backend may fuse the three (the CUDA backend's rope_store_kv does, with
    /// the same arithmetic).
    /// </summary>
    public virtual void RopeStoreKv(Activation q, Activation k, Activation v, int heads, int kvHeads, ReadOnlySpan<int> positions, RopeTable rope,
        KvStore store, int layer, ReadOnlySpan<int> blockTable, int firstSlot)
    {
        Rope(q, heads, positions, rope);
        Rope(k, kvHeads, positions, rope);
        StoreKv(store, layer, blockTable, firstSlot, k, v);
    }

    /// <summary>
    /// <see cref="RopeStoreKv"/> for a continuous batch: q and k rotated by each row's position, then
    /// <see cref="StoreKvBatch"/>. A backend may do the three in one pass over the rows (the CPU does: one
    /// dispatch to its threads instead of three).
    /// </summary>
    public virtual void RopeStoreKvBatch(Activation q, Activation k, Activation v, int heads, int kvHeads, ReadOnlySpan<int> positions, RopeTable rope,
        KvStore store, int layer, SequenceBatch batch)
    {
        Rope(q, heads, positions, rope);
        Rope(k, kvHeads, positions, rope);
        StoreKvBatch(store, layer, batch, k, v);
    }

    /// <summary>
    /// <see cref="StoreKv"/> for a continuous batch: each sequence's rows of k and v into its own slots
    /// (after its prefix, through its block table). The default copies each sequence's rows out and
    /// stores them with <see cref="StoreKv"/>; a backend may index the rows in place (the CPU does).
    /// </summary>
    public virtual void StoreKvBatch(KvStore store, int layer, SequenceBatch batch, Activation k, Activation v)
    {
        for (int j = 0; j < batch.Count; j++)
        {
            int n = batch.RowCount(j);
            var kj = BatchScratch(0, n, k.Cols);
            var vj = BatchScratch(1, n, v.Cols);
            CopyRows(k, batch.RowStart(j), kj, 0, n);
            CopyRows(v, batch.RowStart(j), vj, 0, n);
            StoreKv(store, layer, batch.Table(j), batch.Prefix(j), kj, vj);
        }
    }

    /// <summary>
    /// <see cref="Attention"/> for a continuous batch: each sequence's rows of q attend, causally, to that
    /// sequence's cached prefix and its own rows (their K/V already stored), and nothing else;
    /// <paramref name="windowStarts"/> (empty, or one per row of the pass) as in <see cref="Attention"/>.
    /// The default runs <see cref="Attention"/> per sequence on copied rows; a backend may run every
    /// sequence in one call (the CPU does, spread over its threads).
    /// </summary>
    public virtual void AttentionBatch(Activation q, KvStore store, int layer, SequenceBatch batch, int heads, float scale, Activation dst,
        bool batchInvariant = false, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        for (int j = 0; j < batch.Count; j++)
        {
            int n = batch.RowCount(j), row = batch.RowStart(j);
            var qj = BatchScratch(0, n, q.Cols);
            var yj = BatchScratch(1, n, dst.Cols);
            CopyRows(q, row, qj, 0, n);
            Attention(qj, store, layer, batch.Table(j), batch.Prefix(j), AttentionMask.Causal, heads, scale, yj, batchInvariant, softCap,
                windowStarts.IsEmpty ? default : windowStarts.Slice(row, n));
            CopyRows(yj, 0, dst, row, n);
        }
    }

    private readonly DeviceBuffer?[] _batchScratch = new DeviceBuffer?[2];

    /// <summary>Scratch rows for the default batched operations (grown as needed, freed with the backend by <see cref="DisposeBatchScratch"/>).</summary>
    private Activation BatchScratch(int which, int rows, int cols)
    {
        long size = (long)rows * cols;
        if (_batchScratch[which] is not { } buffer || buffer.Length < size)
        {
            _batchScratch[which]?.Dispose();
            _batchScratch[which] = buffer = Allocate(Math.Max(size, 2 * (_batchScratch[which]?.Length ?? 0)));
        }
        return new Activation(buffer, rows, cols);
    }

    /// <summary>Frees the default batched operations' scratch; a backend's Dispose calls it.</summary>
    protected void DisposeBatchScratch()
    {
        for (int i = 0; i < _batchScratch.Length; i++)
        {
            _batchScratch[i]?.Dispose();
            _batchScratch[i] = null;
        }
    }

    /// <summary>
    /// A block's way out: residual += x·Wᵀ (times <paramref name="residualScale"/>, Granite's multiplier),
    /// then normOut = RMSNorm(residual)·normWeight — the projection, the residual add and the next block's norm. <paramref name="scratch"/> ([n, W.Rows]) may receive the
    /// product. A backend may fold the add and the norm into the product's epilogue (the CUDA GEMV does
    /// for decoding batches, with the same arithmetic as the separate kernels).
    /// </summary>
    public virtual void MatMulAddNorm(Activation x, DeviceMatrix w, Activation residual, Activation scratch, DeviceVector normWeight, float eps,
        Activation normOut, bool batchInvariant = false, float residualScale = 1f)
    {
        MatMul(x, w, scratch, batchInvariant);
        if (residualScale != 1f)
            Scale(scratch, residualScale);
        Add(residual, scratch);
        RmsNorm(residual, normWeight, eps, normOut);
    }

    /// <summary>
    /// The gated feed-forward's first half: gate = act(h·W_gateᵀ) ⊙ h·W_upᵀ, act = silu (SwiGLU) or the
    /// tanh GELU (GeGLU, <paramref name="gelu"/>). <paramref name="up"/> ([n, ffn]) may receive the up
    /// projection. A backend may compute both products and the gating in one pass (the CUDA GEMV does
    /// for SwiGLU decoding batches).
    /// </summary>
    public virtual void GatedFfn(Activation h, DeviceMatrix wGate, DeviceMatrix wUp, Activation gate, Activation up, bool batchInvariant = false,
        bool gelu = false)
    {
        MatMul(h, [new MatMulTarget(wGate, gate), new MatMulTarget(wUp, up)], batchInvariant);
        if (gelu)
            GeGlu(gate, up, gate);
        else
            SwiGlu(gate, up, gate);
    }

    /// <summary>
    /// The weighted sum of a mixture of experts: dst[t, :] = Σ_{j &lt; k} weights[t·k + j] · src[slots[t·k + j], :]
    /// for every row t of <paramref name="dst"/>, with src holding each expert's output rows. Summed in j
    /// order from zero, in float32 with separately rounded products (no fused multiply-add), so that every
    /// backend gives the same bits and a token's sum does not depend on the batch around it.
    /// </summary>
    public abstract void MoeCombine(Activation src, ReadOnlySpan<int> slots, ReadOnlySpan<float> weights, int k, Activation dst);

    /// <summary>
    /// Multi-head latent attention's per-head rows (<see cref="Models.MlaConfig"/>), laid out so that RoPE
    /// rotates each head's leading <paramref name="rope"/> dims: q[t, h] = [q_pe | q_nope] from qRaw's
    /// [q_nope | q_pe]; k[t, h] = [k_pe (the same for every head) | k_nope]; v[t, h] = [v | 0] (padded to the
    /// key width, which the cache holds), from kvB's [k_nope | v] per head.
    /// </summary>
    public abstract void MlaAssemble(Activation qRaw, Activation keyRope, Activation kvB, int heads, int nope, int rope, int vdim,
        Activation q, Activation k, Activation v);

    /// <summary>MLA's attention output per head [heads, nope + rope] cut to its value dims: dst[t, h·vdim + i] = att[t, h·width + i].</summary>
    public abstract void MlaCompact(Activation att, int heads, int vdim, Activation dst);

    /// <summary>Checks an <see cref="MlaAssemble"/> request.</summary>
    protected static void CheckMlaAssemble(Activation qRaw, Activation keyRope, Activation kvB, int heads, int nope, int rope, int vdim,
        Activation q, Activation k, Activation v)
    {
        int width = nope + rope, n = qRaw.Rows;
        if (heads <= 0 || nope < 0 || rope <= 0 || vdim <= 0 || vdim > width || qRaw.Cols != heads * width || keyRope.Cols != rope
            || kvB.Cols != heads * (nope + vdim) || q.Cols != heads * width || k.Cols != heads * width || v.Cols != heads * width
            || keyRope.Rows != n || kvB.Rows != n || q.Rows != n || k.Rows != n || v.Rows != n)
            throw new ArgumentException($"mla_assemble: {heads} heads of {nope} + {rope} (v {vdim}); q raw {qRaw}, k pe {keyRope}, kv b {kvB}, q {q}, k {k}, v {v}");
    }

    /// <summary>
    /// Rows [<paramref name="start"/>, +<paramref name="rows"/>) of a matrix as a matrix of its own that shares
    /// its memory (an expert of a stacked tensor), or null when this backend makes no views (the caller then
    /// loads the part on its own). A view owns nothing: disposing the whole frees it.
    /// </summary>
    public virtual DeviceMatrix? RowView(DeviceMatrix matrix, long start, int rows, string name) => null;

    /// <summary>
    /// The routed experts of a MoE layer without host routing (<see cref="Models.MoeConfig"/>): each row's top-k
    /// experts from <paramref name="routerLogits"/> [rows, experts], their SwiGLU outputs, the weighted sum into
    /// <paramref name="dst"/>, and Qwen2-MoE's shared expert when given. Returns false when this backend has no
    /// such path; the model then routes on the host. For decoding and verification batches
    /// (<see cref="GroupedRows"/> rows at most); a row's result does not depend on the batch.
    /// </summary>
    public virtual bool RoutedExperts(Activation h, Activation routerLogits, Models.ExpertStacks experts, int k, bool normalize,
        Models.SharedExpert? shared, Activation dst) => false;

    /// <summary>
    /// Several products with inputs of their own in one go: targets[i].Output = inputs[i]·targets[i].Weightsᵀ
    /// (+ bias) — the experts of a MoE layer, each over its own few rows. Each product gives the bits
    /// <see cref="MatMul(Activation, ReadOnlySpan{MatMulTarget}, bool)"/> gives it under batch-invariant
    /// arithmetic; a backend may run them all in one parallel pass (the CPU does, for up to
    /// <see cref="GroupedRows"/> rows per input), where one call per product would pay its start-up each.
    /// </summary>
    public virtual void MatMulGroups(ReadOnlySpan<Activation> inputs, ReadOnlySpan<MatMulTarget> targets)
    {
        if (inputs.Length != targets.Length)
            throw new ArgumentException($"matmul groups: {inputs.Length} inputs for {targets.Length} products");
        for (int i = 0; i < targets.Length;)
        {
            int j = i + 1; // consecutive products of the same input share a call
            while (j < targets.Length && inputs[j] == inputs[i])
                j++;
            MatMul(inputs[i], targets[i..j], batchInvariant: true);
            i = j;
        }
    }

    /// <summary>Most rows per input <see cref="MatMulGroups"/> takes (decoding and verification batches).</summary>
    public const int GroupedRows = 16;

    /// <summary>
    /// BlockFFN's chunk-sparse feed-forward (Song et al., 2025; <see cref="Models.BlockFfnConfig"/>) for the
    /// rows of <paramref name="x"/> (a chunk: one decoding token, a verified draft, a prefill tile):
    /// dst[t] = Σ_{e ∈ active} down_e · (silu(up_e · x[t]) · scores[t, e]), blocks in ascending order,
    /// reading only the blocks of <paramref name="active"/> — the union of the blocks some row activates —
    /// once for the whole chunk. Inactive blocks cost nothing. A row's result is the same whatever else is
    /// in the chunk (a block in the union that the row does not activate adds an exact zero), and the
    /// same as with every block listed: the sparse and the dense computation agree bit for bit.
    /// </summary>
    /// <param name="up">The blocks' up matrices stacked: [blocks·blockSize, dim].</param>
    /// <param name="down">The blocks' down matrices stacked: [blocks·dim, blockSize].</param>
    /// <param name="scores">[x.Rows, blocks] router scores on the host, 0 where a block is off.</param>
    /// <param name="active">Ascending block indices, each with a non-zero score in some row.</param>
    public virtual void ChunkSparseFfn(Activation x, DeviceMatrix up, DeviceMatrix down, int blocks, ReadOnlySpan<int> active,
        ReadOnlySpan<float> scores, Activation dst, bool batchInvariant = false) =>
        throw new NotSupportedException($"the {Name} backend has no chunk-sparse FFN kernel: BlockFFN models run on the CPU or CUDA");

    /// <summary>Checks a <see cref="ChunkSparseFfn"/> request.</summary>
    protected static void CheckChunkSparseFfn(Activation x, DeviceMatrix up, DeviceMatrix down, int blocks, ReadOnlySpan<int> active,
        ReadOnlySpan<float> scores, Activation dst)
    {
        if (blocks < 1 || up.Rows % blocks != 0 || down.Rows % blocks != 0 || up.Rows / blocks != down.Cols)
            throw new ArgumentException($"chunk_sparse_ffn: up [{up.Rows} x {up.Cols}] and down [{down.Rows} x {down.Cols}] are not {blocks} stacked blocks");
        if (scores.Length != (long)x.Rows * blocks || dst.Rows != x.Rows || dst.Cols != down.Rows / blocks || up.Cols != x.Cols)
            throw new ArgumentException($"chunk_sparse_ffn: x {x}, {blocks} blocks of [{up.Rows / blocks} x {up.Cols}], scores {scores.Length}, dst {dst}");
        int previous = -1;
        foreach (int e in active)
        {
            if (e <= previous || e >= blocks)
                throw new ArgumentOutOfRangeException(nameof(active), $"chunk_sparse_ffn: active blocks must ascend within 0..{blocks - 1}, got {e} after {previous}");
            previous = e;
        }
    }

    /// <summary>Checks a <see cref="MoeCombine"/> request.</summary>
    protected static void CheckMoeCombine(Activation src, ReadOnlySpan<int> slots, ReadOnlySpan<float> weights, int k, Activation dst)
    {
        if (src.Cols != dst.Cols)
            throw new ArgumentException($"moe_combine: source rows of {src.Cols} columns, destination rows of {dst.Cols}");
        if (k < 1 || slots.Length != (long)dst.Rows * k || weights.Length != slots.Length)
            throw new ArgumentException($"moe_combine: {dst.Rows} rows × {k} experts need {(long)dst.Rows * k} slots and weights, got {slots.Length} and {weights.Length}");
        foreach (int slot in slots)
        {
            if ((uint)slot >= (uint)src.Rows)
                throw new ArgumentOutOfRangeException(nameof(slots), $"moe_combine: slot {slot} is outside the {src.Rows} expert output rows");
        }
    }

    /// <summary>dst[k, :] = src[rows[k], :].</summary>
    public abstract void GatherRows(Activation src, ReadOnlySpan<int> rows, Activation dst);

    /// <summary>
    /// dst[dstRow + k, :] = src[srcRow + k, :] for k &lt; count (both of the same width): how a pass over
    /// several sequences hands each sequence's rows to attention and takes the result back.
    /// </summary>
    public abstract void CopyRows(Activation src, int srcRow, Activation dst, int dstRow, int count);

    /// <summary>Checks a <see cref="CopyRows"/> request against both activations.</summary>
    protected static void CheckCopyRows(Activation src, int srcRow, Activation dst, int dstRow, int count)
    {
        if (src.Cols != dst.Cols)
            throw new ArgumentException($"cannot copy rows of {src.Cols} columns into rows of {dst.Cols}");
        if (count < 0 || srcRow < 0 || dstRow < 0 || srcRow + count > src.Rows || dstRow + count > dst.Rows)
            throw new ArgumentOutOfRangeException(nameof(count), $"rows {srcRow}..{srcRow + count} of {src} into rows {dstRow}..{dstRow + count} of {dst}");
    }

    /// <summary>Copies an activation to host memory, waiting for pending work. dst: Rows·Cols floats.</summary>
    public abstract void Download(Activation src, Span<float> dst);

    public abstract void Dispose();
}
