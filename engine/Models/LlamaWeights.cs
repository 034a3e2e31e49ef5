using Engine.Backends;
using Engine.Formats;
using Engine.Tensors;

namespace Engine.Models;

/// <summary>
/// The backend-resident weights of one Llama block. Optional parts are null when the family has none:
/// the pre-norms (absent in OLMo 2's post-norm layout, which has <see cref="AttnPostNorm"/> and
/// <see cref="FfnPostNorm"/> instead; Gemma has both), q/k/v biases (Qwen2), and the RMSNorm weights of q and k —
/// per head in Qwen3 ([headDim]), whole in OLMo 2 ([qDim], [kvDim]).
/// </summary>
public sealed record LlamaLayer(
    DeviceVector? AttnNorm,
    DeviceMatrix? Wq, DeviceMatrix? Wk, DeviceMatrix? Wv, DeviceMatrix Wo,
    DeviceVector? Bq, DeviceVector? Bk, DeviceVector? Bv,
    DeviceVector? FfnNorm,
    DeviceMatrix? WGate, DeviceMatrix? WUp, DeviceMatrix? WDown)
{
    /// <summary>The mixture of experts in place of the dense FFN (whose matrices are then null), or null.</summary>
    public MoeWeights? Moe { get; init; }

    /// <summary>Multi-head latent attention's projections in place of q, k and v (then null), or null.</summary>
    public MlaWeights? Mla { get; init; }

    /// <summary>BlockFFN's router and blocks in place of the dense FFN, or null.</summary>
    public BlockFfnWeights? BlockFfn { get; init; }

    public DeviceVector? QNorm { get; init; }
    public DeviceVector? KNorm { get; init; }
    public DeviceVector? AttnPostNorm { get; init; }
    public DeviceVector? FfnPostNorm { get; init; }
}

/// <summary>
/// A layer's mixture of experts (<see cref="MoeConfig"/>): the router [experts, dim] and each expert's
/// SwiGLU matrices — views into the file's stacked 3-D tensors, never copies on the CPU — plus Qwen2-MoE's
/// shared expert and its gate [1, dim].
/// </summary>
public sealed record MoeWeights(DeviceMatrix Router, DeviceMatrix[] Gate, DeviceMatrix[] Up, DeviceMatrix[] Down)
{
    /// <summary>The experts' matrices as stacks (each expert a view into them), when the file stacks them; null otherwise.</summary>
    public ExpertStacks? Stacks { get; init; }

    public DeviceMatrix? SharedGate { get; init; }
    public DeviceMatrix? SharedUp { get; init; }
    public DeviceMatrix? SharedDown { get; init; }
    public DeviceMatrix? SharedRouter { get; init; }
}

/// <summary>
/// A layer's multi-head latent attention (<see cref="MlaConfig"/>): q's low-rank path (<see cref="QA"/>, its norm,
/// then <see cref="Q"/>; or <see cref="Q"/> alone), and the two row ranges of <c>attn_kv_a_mqa</c> as views — the
/// latent [kvLora, dim] and the shared rotated key [rope, dim] — the latent's norm, and <see cref="KvB"/>
/// [heads·(nope + v), kvLora] expanding the latent into each head's key and value parts.
/// </summary>
public sealed record MlaWeights(DeviceMatrix? QA, DeviceVector? QANorm, DeviceMatrix Q, DeviceMatrix Latent, DeviceMatrix KeyRope, DeviceVector LatentNorm,
    DeviceMatrix KvB);

/// <summary>A MoE layer's experts stacked: gate and up [experts·ffn, dim], down [experts·dim, ffn].</summary>
public sealed record ExpertStacks(DeviceMatrix Gate, DeviceMatrix Up, DeviceMatrix Down, int Experts);

/// <summary>Qwen2-MoE's shared expert for a device-routed layer: its SwiGLU matrices and its gate logits [rows, 1].</summary>
public readonly record struct SharedExpert(DeviceMatrix Gate, DeviceMatrix Up, DeviceMatrix Down, Activation GateLogits);

/// <summary>
/// A BlockFFN layer (<see cref="BlockFfnConfig"/>): the router [blocks, dim] with its optional bias and the
/// RMSNorm weight over its scores [blocks]; the blocks' up matrices stacked [blocks·blockSize, dim] (block
/// e: rows e·blockSize..) and their down matrices stacked [blocks·dim, blockSize] (block e: rows e·dim..) —
/// the file's <c>ffn_up_exps</c> / <c>ffn_down_exps</c> as they lie, each block contiguous.
/// </summary>
/// <remarks>The router norm's weight stays on the host, where the scores are formed.</remarks>
public sealed record BlockFfnWeights(DeviceMatrix Router, DeviceVector? RouterBias, float[]? RouterNorm, DeviceMatrix Up, DeviceMatrix Down);

/// <summary>
/// Finds every tensor a Llama-family decoder needs by its GGUF name, checks its shape against the
/// config (an error names the tensor, the expected and the actual shape), and loads it on the backend.
/// </summary>
public sealed class LlamaWeights : IDisposable
{
    private readonly List<IDisposable> _owned = [];

    public required DeviceMatrix TokenEmbedding { get; init; }
    public required DeviceVector OutputNorm { get; init; }
    /// <summary>The LM head; the same object as <see cref="TokenEmbedding"/> when tied.</summary>
    public required DeviceMatrix Output { get; init; }
    public required bool TiedOutput { get; init; }
    public required LlamaLayer[] Layers { get; init; }

    /// <param name="progress">Told the tensors loaded so far and in the file, after each (a long load's progress bar).</param>
    public static unsafe LlamaWeights Load(WeightSource source, ModelConfig c, Backend backend, IProgress<(long Done, long Total)>? progress = null)
    {
        var owned = new List<IDisposable>();
        long total = source.Tensors.Count;
        progress?.Report((0, total));
        try
        {
            T Track<T>(T item) where T : IDisposable
            {
                owned.Add(item);
                progress?.Report((Math.Min(owned.Count, total), total));
                return item;
            }
            TensorView? Find(string name, long[] dims, bool optional = false)
            {
                var t = source.Find(name);
                if (t is null)
                    return optional ? null : throw new ModelFormatException(source.Path, $"tensor '{name}'", $"required tensor is missing (expected shape [{string.Join(", ", dims)}])");
                if (!t.Dims.SequenceEqual(dims))
                    throw new ModelFormatException(source.Path, $"tensor '{name}'", $"shape {t.ShapeText} does not match the config's [{string.Join(", ", dims)}]");
                if (!GgmlTypeInfo.IsWeightType(t.Type))
                    throw new ModelFormatException(source.Path, $"tensor '{name}'", $"type {t.Type} is not supported for weights");
                return t;
            }
            DeviceMatrix Matrix(string name, int rows, int cols) => Track(backend.LoadMatrix(Find(name, [cols, rows])!));
            // A fused tensor (Phi-3's attn_qkv, ffn_up holding gate then up) split into its parts' rows, in place.
            DeviceMatrix[] Parts(string name, int cols, params (string Name, int Rows)[] parts)
            {
                var fused = Find(name, [cols, parts.Sum(p => (long)p.Rows)])!;
                var result = new DeviceMatrix[parts.Length];
                long start = 0;
                for (int i = 0; i < parts.Length; i++)
                {
                    result[i] = Track(backend.LoadMatrix(fused.RowSlice(parts[i].Name, start, parts[i].Rows)));
                    start += parts[i].Rows;
                }
                return result;
            }
            DeviceVector Vector(string name, int length) => Track(backend.LoadVector(Find(name, [length])!));
            // An expert's matrices: views into the stacked tensor blk.N.ffn_gate_exps (llama.cpp's layout since
            // 2024), loaded once as [experts·rows, cols]; or blk.N.ffn_gate.E.weight one per expert (the first
            // Mixtral GGUFs, and HF's names), when there is no stack. Returns the stack too (null without one).
            (DeviceMatrix[] Experts, DeviceMatrix? Stack) Experts(string prefix, string kind, int experts, int rows, int cols)
            {
                string stackedName = $"{prefix}{kind}_exps.weight";
                if (source.Find(stackedName) is null && source.Find($"{prefix}{kind}.0.weight") is not null)
                    return (Enumerable.Range(0, experts).Select(e => Matrix($"{prefix}{kind}.{e}.weight", rows, cols)).ToArray(), null);
                var stacked = Find(stackedName, [cols, rows, experts])!;
                var stack = backend.LoadMatrix(stacked.Reshape([cols, (long)rows * experts]));
                var first = backend.RowView(stack, 0, rows, $"{prefix}{kind}.0.weight");
                if (first is null) // no views here: each expert on its own
                {
                    stack.Dispose();
                    return (Enumerable.Range(0, experts).Select(e => Track(backend.LoadMatrix(stacked.Matrix($"{prefix}{kind}.{e}.weight", e)))).ToArray(), null);
                }
                Track(stack);
                return (Enumerable.Range(0, experts).Select(e => e == 0 ? first : backend.RowView(stack, (long)e * rows, rows, $"{prefix}{kind}.{e}.weight")!).ToArray(),
                    stack);
            }
            // a stack of matrices [cols, rows, count] as one matrix [count·rows, cols] (the same bytes)
            DeviceMatrix Stacked(string name, int count, int rows, int cols) =>
                Track(backend.LoadMatrix(Find(name, [cols, rows, count])!.Reshape([cols, (long)rows * count])));
            MoeWeights Moe(string prefix, MoeConfig moe)
            {
                var router = Matrix(prefix + "ffn_gate_inp.weight", moe.Experts, c.Dim);
                var gate = Experts(prefix, "ffn_gate", moe.Experts, moe.ExpertFfn, c.Dim);
                var up = Experts(prefix, "ffn_up", moe.Experts, moe.ExpertFfn, c.Dim);
                var down = Experts(prefix, "ffn_down", moe.Experts, c.Dim, moe.ExpertFfn);
                var weights = new MoeWeights(router, gate.Experts, up.Experts, down.Experts)
                {
                    Stacks = gate.Stack is not null && up.Stack is not null && down.Stack is not null
                        ? new ExpertStacks(gate.Stack, up.Stack, down.Stack, moe.Experts) : null,
                };
                if (moe.SharedFfn == 0)
                    return weights;
                // the shared expert's gate is a vector [dim] in GGUF, a [1, dim] matrix in HF files
                string gateName = prefix + "ffn_gate_inp_shexp.weight";
                var sharedGate = source.Find(gateName) is { Dims.Count: 1 }
                    ? Find(gateName, [c.Dim])!.Reshape([c.Dim, 1])
                    : Find(gateName, [c.Dim, 1])!;
                return weights with
                {
                    SharedGate = Matrix(prefix + "ffn_gate_shexp.weight", moe.SharedFfn, c.Dim),
                    SharedUp = Matrix(prefix + "ffn_up_shexp.weight", moe.SharedFfn, c.Dim),
                    SharedDown = Matrix(prefix + "ffn_down_shexp.weight", c.Dim, moe.SharedFfn),
                    SharedRouter = Track(backend.LoadMatrix(sharedGate)),
                };
            }
            float[] HostVector(string name, int length)
            {
                var t = Find(name, [length])!;
                var values = new float[length];
                Quantization.Dequantize.Row(t.Type, new ReadOnlySpan<byte>(t.Data, checked((int)t.ByteSize)), values);
                return values;
            }
            DeviceVector? OptionalVector(string name, int length) => Find(name, [length], optional: true) is { } t ? Track(backend.LoadVector(t)) : null;

            var embedding = Matrix("token_embd.weight", c.VocabSize, c.Dim);
            var outputView = Find("output.weight", [c.Dim, c.VocabSize], optional: true);
            var layers = new LlamaLayer[c.Layers];
            for (int i = 0; i < c.Layers; i++)
            {
                string p = $"blk.{i}.";
                bool pre = c.Layout != BlockLayout.PostNorm, post = c.Layout != BlockLayout.PreNorm;
                var attnNorm = pre ? Vector(p + "attn_norm.weight", c.Dim) : null; // looked up first: a file that lacks a layer names its first tensor
                // Phi-3 stores q, k and v as one tensor, and gate and up as one (gate first)
                var qkv = c.Mla is not null ? new DeviceMatrix?[3]
                    : source.Find(p + "attn_qkv.weight") is null
                    ? [Matrix(p + "attn_q.weight", c.QDim, c.Dim), Matrix(p + "attn_k.weight", c.KvDim, c.Dim), Matrix(p + "attn_v.weight", c.KvDim, c.Dim)]
                    : Parts(p + "attn_qkv.weight", c.Dim, (p + "attn_q.weight", c.QDim), (p + "attn_k.weight", c.KvDim), (p + "attn_v.weight", c.KvDim));
                MlaWeights? latent = null;
                if (c.Mla is { } mla)
                {
                    var qa = mla.QLoraRank > 0 ? Matrix(p + "attn_q_a.weight", mla.QLoraRank, c.Dim) : null;
                    var qaNorm = mla.QLoraRank > 0 ? Vector(p + "attn_q_a_norm.weight", mla.QLoraRank) : null;
                    var q = mla.QLoraRank > 0 ? Matrix(p + "attn_q_b.weight", c.QDim, mla.QLoraRank) : Matrix(p + "attn_q.weight", c.QDim, c.Dim);
                    var kva = Parts(p + "attn_kv_a_mqa.weight", c.Dim, (p + "attn_kv_a_mqa.latent", mla.KvLoraRank), (p + "attn_kv_a_mqa.rope", mla.RopeDim));
                    latent = new MlaWeights(qa, qaNorm, q, kva[0], kva[1], Vector(p + "attn_kv_a_norm.weight", mla.KvLoraRank),
                        Matrix(p + "attn_kv_b.weight", c.Heads * (mla.NopeDim + mla.VDim), mla.KvLoraRank));
                }
                bool sparseFfn = c.Moe is not null || c.BlockFfn is not null;
                DeviceMatrix?[] gateUp = sparseFfn ? new DeviceMatrix?[2]
                    : c.Architecture == "phi3" && source.Find(p + "ffn_gate.weight") is null
                    ? Parts(p + "ffn_up.weight", c.Dim, (p + "ffn_gate.weight", c.FfnDim), (p + "ffn_up.weight", c.FfnDim))
                    : [Matrix(p + "ffn_gate.weight", c.FfnDim, c.Dim), Matrix(p + "ffn_up.weight", c.FfnDim, c.Dim)];
                layers[i] = new LlamaLayer(
                    attnNorm,
                    qkv[0], qkv[1], qkv[2],
                    Matrix(p + "attn_output.weight", c.Dim, c.AttentionOutputDim),
                    OptionalVector(p + "attn_q.bias", c.QDim),
                    OptionalVector(p + "attn_k.bias", c.KvDim),
                    OptionalVector(p + "attn_v.bias", c.KvDim),
                    pre ? Vector(p + "ffn_norm.weight", c.Dim) : null,
                    gateUp[0], gateUp[1],
                    sparseFfn ? null : Matrix(p + "ffn_down.weight", c.Dim, c.FfnDim))
                {
                    Moe = c.Moe is { } moe ? Moe(p, moe) : null,
                    Mla = latent,
                    BlockFfn = c.BlockFfn is { } blocks ? new BlockFfnWeights(
                        Matrix(p + "ffn_gate_inp.weight", blocks.Blocks, c.Dim),
                        OptionalVector(p + "ffn_gate_inp.bias", blocks.Blocks),
                        blocks.Normalization == RouterNormalization.Rms ? HostVector(p + "ffn_router_norm.weight", blocks.Blocks) : null,
                        Stacked(p + "ffn_up_exps.weight", blocks.Blocks, blocks.BlockSize, c.Dim),
                        Stacked(p + "ffn_down_exps.weight", blocks.Blocks, c.Dim, blocks.BlockSize)) : null,
                    // required where the family normalizes q and k (ModelConfig.QkNorm), absent elsewhere
                    QNorm = c.QkNorm is { } qk ? Vector(p + "attn_q_norm.weight", qk.Q) : null,
                    KNorm = c.QkNorm is { } kk ? Vector(p + "attn_k_norm.weight", kk.K) : null,
                    AttnPostNorm = post ? Vector(p + "attn_post_norm.weight", c.Dim) : null,
                    FfnPostNorm = post ? Vector(p + "ffn_post_norm.weight", c.Dim) : null,
                };
            }
            var weights = new LlamaWeights
            {
                TokenEmbedding = embedding,
                OutputNorm = Vector("output_norm.weight", c.Dim),
                Output = outputView is null ? embedding : Track(backend.LoadMatrix(outputView)),
                TiedOutput = outputView is null,
                Layers = layers,
            };
            weights._owned.AddRange(owned);
            return weights;
        }
        catch
        {
            foreach (var o in owned)
                o.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (var o in _owned)
            o.Dispose();
        _owned.Clear();
    }
}
