namespace Engine.Models;

/// <summary>How RoPE pairs up the dimensions of a head.</summary>
public enum RopeStyle
{
    /// <summary>Adjacent pairs (x[2i], x[2i+1]): GGUF llama weights (llama.cpp's LLAMA_ROPE_TYPE_NORM).</summary>
    Normal,
    /// <summary>Halves (x[i], x[i + d/2]) — "rotate_half": HF weights, GGUF qwen2 (LLAMA_ROPE_TYPE_NEOX).</summary>
    NeoX,
}

/// <summary>Where a layer's RMSNorms sit around its attention and feed-forward blocks.</summary>
public enum BlockLayout
{
    /// <summary>x += f(norm(x)) (Llama and most families).</summary>
    PreNorm,
    /// <summary>x += norm(f(x)) (OLMo 2).</summary>
    PostNorm,
    /// <summary>x += norm(f(norm(x))) (Gemma 2 and 3).</summary>
    Sandwich,
}

/// <summary>
/// A sparse mixture-of-experts feed-forward layer (Shazeer et al., "Outrageously Large Neural Networks: The
/// Sparsely-Gated Mixture-of-Experts Layer", 2017; as Mixtral runs it: Jiang et al., "Mixtral of Experts",
/// 2024): a router scores <see cref="Experts"/> SwiGLU experts per token, the <see cref="Used"/> best run,
/// and their outputs are summed, weighted by the router's softmax — renormalized over the chosen ones when
/// <see cref="NormalizeWeights"/> (Mixtral, Qwen3-MoE), as they are otherwise (Qwen1.5/Qwen2-MoE). Qwen2-MoE
/// adds a shared expert that every token runs, gated by sigmoid(w·x) (<see cref="SharedFfn"/> &gt; 0).
/// </summary>
/// <param name="ExpertFfn">Hidden width of each routed expert.</param>
/// <param name="SharedFfn">Hidden width of the shared expert; 0 when there is none.</param>
public sealed record MoeConfig(int Experts, int Used, int ExpertFfn, int SharedFfn, bool NormalizeWeights)
{
    /// <summary>Expert outputs summed per token: the routed ones and the shared one.</summary>
    public int Slots => Used + (SharedFfn > 0 ? 1 : 0);
}

/// <summary>
/// BlockFFN's feed-forward layer (Song et al., "BlockFFN: Towards End-Side Acceleration-Friendly
/// Mixture-of-Experts with Chunk-Level Activation Sparsity", 2025, arXiv 2507.08771): <see cref="Blocks"/>
/// blocks of <see cref="BlockSize"/> hidden units, a ReLU router normalized by RMSNorm instead of top-k:
/// <code>
/// s = RMSNorm(ReLU(W_r · x + b_r))                 one score per block, most of them exactly 0
/// y = W_down · (silu(W_up · x) ⊙ s expanded to each block's units)
/// </code>
/// No gate projection. A block whose score is 0 contributes nothing, so a chunk of tokens needs only the
/// blocks some token of it activates (<see cref="Backends.Backend.ChunkSparseFfn"/>).
/// </summary>
public sealed record BlockFfnConfig(int Blocks, int BlockSize)
{
    /// <summary>How the ReLU scores are normalized: RMSNorm with a weight (the public checkpoints), a sum, or not at all.</summary>
    public RouterNormalization Normalization { get; init; } = RouterNormalization.Rms;

    /// <summary>The sum normalization's scale: s = r / (Σr·scale + 1e-5) (MiniCPM's <c>norm_scale</c>).</summary>
    public float NormScale { get; init; } = 1f;
}

/// <summary>BlockFFN's normalization after the router's ReLU (HF <c>norm_after_router</c>).</summary>
public enum RouterNormalization { Rms, Sum, None }

/// <summary>
/// Multi-head latent attention (DeepSeek-AI, "DeepSeek-V2: A Strong, Economical, and Efficient
/// Mixture-of-Experts Language Model", 2024), as MiniCPM and BlockFFN's models use it: q from a low-rank
/// path (x → <see cref="QLoraRank"/> → RMSNorm → heads·(nope + rope); or directly when the rank is 0), k and v
/// from a shared latent c = RMSNorm(W_kv_a·x)[..kvLora] expanded per head by W_kv_b into [nope | v], and
/// one rotated key part k_pe = W_kv_a·x[kvLora..] shared by every head. Scores use q·k over nope + rope
/// dimensions. The engine caches each head's full key and value (the expanded form).
/// </summary>
public sealed record MlaConfig(int QLoraRank, int KvLoraRank, int NopeDim, int RopeDim, int VDim)
{
    /// <summary>The epsilon of the q and latent RMSNorms: HF's default for them (MiniCPM, DeepSeek-V2), not the layers'.</summary>
    public const float NormEps = 1e-6f;
}

/// <summary>
/// Hyper-parameters of a Llama-family decoder (Llama 2/3, Mistral, Qwen2): what the forward pass needs
/// to know about shapes and positional encoding. Read from GGUF metadata or an HF <c>config.json</c>
/// by <see cref="ModelConfigReader"/>; biases and tied heads are decided from the tensors present.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>Architecture name as GGUF spells it ("llama", "qwen2").</summary>
    public required string Architecture { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>Model width (embedding length).</summary>
    public required int Dim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    /// <summary>Key/value heads; fewer than <see cref="Heads"/> means grouped-query attention.</summary>
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    /// <summary>Hidden width of the SwiGLU feed-forward network.</summary>
    public required int FfnDim { get; init; }

    /// <summary>The mixture of experts that replaces every layer's FFN (Mixtral, Qwen-MoE), or null for a dense model.</summary>
    public MoeConfig? Moe { get; init; }

    /// <summary>Multi-head latent attention in every layer (then <see cref="HeadDim"/> = nope + rope and <see cref="RopeDims"/> = rope), or null.</summary>
    public MlaConfig? Mla { get; init; }

    /// <summary>The width of the attention output the output projection reads: heads · v dims (MLA) or <see cref="QDim"/>.</summary>
    public int AttentionOutputDim => Mla is { } m ? Heads * m.VDim : QDim;

    /// <summary>BlockFFN's block-sparse FFN in every layer, or null.</summary>
    public BlockFfnConfig? BlockFfn { get; init; }

    /// <summary>The widest FFN hidden layer a pass computes: the dense FFN's, or an expert's.</summary>
    public int MaxFfnDim => Moe is { } m ? Math.Max(m.ExpertFfn, m.SharedFfn) : FfnDim;
    public required int ContextLength { get; init; }
    public required float RmsNormEps { get; init; }
    public required float RopeTheta { get; init; }
    public required RopeStyle RopeStyle { get; init; }
    /// <summary>Number of leading dimensions of each head that RoPE rotates (usually all of them).</summary>
    public required int RopeDims { get; init; }
    /// <summary>Positions are multiplied by this before rotation (linear RoPE scaling: 1/factor).</summary>
    public float RopeFreqScale { get; init; } = 1f;
    /// <summary>Per-frequency divisors (Llama 3 RoPE scaling, LongRoPE's short or long factors), <see cref="RopeDims"/>/2 of them, or null.</summary>
    public float[]? RopeFreqFactors { get; init; }

    /// <summary>
    /// LongRoPE's attention factor (Ding et al., "LongRoPE: Extending LLM Context Window Beyond 2 Million
    /// Tokens", 2024; Phi-3 128k, Phi-3.5, Phi-4-mini): cos and sin are multiplied by it. 1 elsewhere.
    /// </summary>
    public float RopeAttentionFactor { get; init; } = 1f;

    /// <summary>LongRoPE's two factor tables and attention factor, or null; <see cref="ForContext"/> applies them.</summary>
    public LongRope? LongRope { get; init; }

    /// <summary>
    /// The config a model loaded for a context of <paramref name="context"/> tokens runs: with LongRoPE, its
    /// short factors up to the trained context and its long ones beyond, and its attention factor.
    /// </summary>
    public ModelConfig ForContext(int context) => LongRope is { } r
        ? this with { RopeFreqFactors = context > r.OriginalContext ? r.LongFactors : r.ShortFactors, RopeAttentionFactor = r.AttentionFactor }
        : this;

    // Granite 3's multipliers (IBM, "Granite 3.0 Language Models", 2024); 1 (and the usual attention
    // scale) for every other family.

    /// <summary>The token embedding is multiplied by this (Granite: <c>embedding_multiplier</c>).</summary>
    public float EmbeddingScale { get; init; } = 1f;

    /// <summary>Each block's output is multiplied by this before the residual add (<c>residual_multiplier</c>).</summary>
    public float ResidualScale { get; init; } = 1f;

    /// <summary>Scores are q·k times this; 0 means 1/√headDim (Granite: <c>attention_multiplier</c>).</summary>
    public float AttentionScale { get; init; }

    /// <summary>Logits are divided by this (Granite: <c>logits_scaling</c>).</summary>
    public float LogitScale { get; init; } = 1f;

    /// <summary>
    /// Layers that apply no RoPE (SmolLM3's NoPE layers: every fourth), true at their index; null when
    /// every layer rotates.
    /// </summary>
    public bool[]? NoRopeLayers { get; init; }

    /// <summary>
    /// OLMo 2's block layout (OLMo Team, "2 OLMo 2 Furious", 2024): no norm before attention or the FFN;
    /// each block's output is RMS-normalized before the residual add, and q and k are normalized whole.
    /// </summary>
    public bool PostNorm => Architecture == "olmo2";

    /// <summary>
    /// Gemma 2 and 3 (Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024;
    /// "Gemma 3 Technical Report", 2025): RMSNorm before and after attention and the FFN, GeGLU, and
    /// their norm weights stored as 1 + w (llama.cpp's converter adds the one; the HF loader does too).
    /// </summary>
    public bool Gemma => Architecture is "gemma2" or "gemma3";

    /// <summary>How a layer is laid out around its attention and feed-forward blocks.</summary>
    public BlockLayout Layout => PostNorm ? BlockLayout.PostNorm : Gemma ? BlockLayout.Sandwich : BlockLayout.PreNorm;

    /// <summary>
    /// Keys per sliding attention window (Mistral 7B v0.1: 4096, Phi-3: 2047, Gemma 2: 4096, Gemma 3:
    /// 512–1024), 0 for none: a token at position p sees positions p − window + 1 .. p in the layers
    /// <see cref="IsSliding"/> names.
    /// </summary>
    public int SlidingWindow { get; init; }

    /// <summary>
    /// Which layers attend through the window (true at their index): Gemma 2 alternates starting with a
    /// windowed layer, Gemma 3 has five windowed to one global. Null: every layer, when there is a window.
    /// </summary>
    public bool[]? SlidingLayers { get; init; }

    /// <summary>
    /// RoPE base of the windowed layers (Gemma 3's local layers: 10 000, without the global layers'
    /// position scaling); 0: they rotate as every other layer.
    /// </summary>
    public float LocalRopeTheta { get; init; }

    /// <summary>Gemma 2's attention soft-capping: scores become cap·tanh(score / cap); 0 for none.</summary>
    public float AttentionSoftCap { get; init; }

    /// <summary>Gemma 2's final-logit soft-capping: logits become cap·tanh(logit / cap); 0 for none.</summary>
    public float FinalLogitSoftCap { get; init; }

    /// <summary>Whether layer <paramref name="layer"/> attends through the sliding window.</summary>
    public bool IsSliding(int layer) => SlidingWindow > 0 && (SlidingLayers is not { } s || s[layer]);

    /// <summary>The sliding-window pattern of Gemma 2 (period 2) and Gemma 3 (period 6): layer l is windowed unless (l + 1) % period == 0.</summary>
    public static bool[] SlidingEvery(int layers, int period) => Enumerable.Range(0, layers).Select(l => (l + 1) % period != 0).ToArray();

    /// <summary>
    /// Lengths of the RMSNorm weights applied to q and k before RoPE, or null when the family has none:
    /// a head (Qwen3 normalizes each head) or all of q and k (OLMo 2 normalizes them whole).
    /// </summary>
    public (int Q, int K)? QkNorm => Architecture switch
    {
        "qwen3" or "qwen3moe" or "gemma3" => (HeadDim, HeadDim),
        "olmo2" => (QDim, KvDim),
        _ => null,
    };

    /// <summary>Whether layer <paramref name="layer"/> rotates its queries and keys.</summary>
    public bool UsesRope(int layer) => NoRopeLayers is not { } skip || !skip[layer];

    public int QDim => Heads * HeadDim;

    public int KvDim => KvHeads * HeadDim;

    /// <summary>
    /// Checks the numbers against each other. <paramref name="source"/> names the file and
    /// <paramref name="field"/> maps a property name (e.g. "KvHeads") to the file's own key
    /// (e.g. "num_key_value_heads"), so an error points at what the user can see.
    /// </summary>
    public void Validate(string source, Func<string, string> field)
    {
        Formats.ModelFormatException Error(string property, string problem) => new(source, field(property), problem);
        void Positive(string property, long value, long max = 1 << 22)
        {
            if (value <= 0)
                throw Error(property, $"{value} must be positive");
            if (value > max)
                throw Error(property, $"{value} is implausibly large (more than {max})");
        }
        Positive(nameof(VocabSize), VocabSize, 1 << 24);
        Positive(nameof(Dim), Dim);
        Positive(nameof(Layers), Layers, 1 << 12);
        Positive(nameof(Heads), Heads, 1 << 12);
        Positive(nameof(KvHeads), KvHeads, 1 << 12);
        Positive(nameof(HeadDim), HeadDim, 1 << 14);
        Positive(nameof(FfnDim), FfnDim);
        Positive(nameof(ContextLength), ContextLength, int.MaxValue);
        if (Mla is { } mla)
        {
            Positive(nameof(MlaConfig.KvLoraRank), mla.KvLoraRank);
            Positive(nameof(MlaConfig.VDim), mla.VDim);
            if (mla.QLoraRank < 0)
                throw Error(nameof(MlaConfig.QLoraRank), $"{mla.QLoraRank} must be 0 (no low-rank q) or positive");
            if (mla.NopeDim < 0 || mla.RopeDim <= 0 || mla.NopeDim + mla.RopeDim != HeadDim || mla.RopeDim != RopeDims)
                throw Error(nameof(MlaConfig.RopeDim), $"nope {mla.NopeDim} + rope {mla.RopeDim} dims must make the key width {HeadDim}, rope = the rotated dims {RopeDims}");
            if (mla.VDim > HeadDim)
                throw Error(nameof(MlaConfig.VDim), $"a value width of {mla.VDim} wider than the key width {HeadDim} is not supported");
            if (KvHeads != Heads)
                throw Error(nameof(KvHeads), $"MLA expands keys and values per head: {KvHeads} kv heads for {Heads} heads");
        }
        if (BlockFfn is { } blocks)
        {
            Positive(nameof(BlockFfnConfig.BlockSize), blocks.BlockSize);
            if (FfnDim % blocks.BlockSize != 0)
                throw Error(nameof(BlockFfnConfig.BlockSize), $"a block size of {blocks.BlockSize} does not divide the intermediate size {FfnDim}");
            if (blocks.Blocks != FfnDim / blocks.BlockSize)
                throw Error(nameof(BlockFfnConfig.Blocks), $"{blocks.Blocks} blocks of {blocks.BlockSize} do not make the intermediate size {FfnDim}");
        }
        if (Moe is { } moe)
        {
            Positive(nameof(MoeConfig.Experts), moe.Experts, 1 << 12);
            Positive(nameof(MoeConfig.Used), moe.Used, 1 << 12);
            Positive(nameof(MoeConfig.ExpertFfn), moe.ExpertFfn);
            if (moe.Used > moe.Experts)
                throw Error(nameof(MoeConfig.Used), $"{moe.Used} experts per token is more than the {moe.Experts} experts there are");
            if (moe.SharedFfn < 0 || moe.SharedFfn > 1 << 22)
                throw Error(nameof(MoeConfig.SharedFfn), $"{moe.SharedFfn} must be 0 (no shared expert) or a plausible width");
        }
        if (Heads % KvHeads != 0)
            throw Error(nameof(KvHeads), $"{Heads} heads are not a multiple of {KvHeads} kv heads");
        if (RopeDims <= 0 || RopeDims > HeadDim || RopeDims % 2 != 0)
            throw Error(nameof(RopeDims), $"{RopeDims} must be even and between 2 and the head dim {HeadDim}");
        if (!(RmsNormEps > 0) || !float.IsFinite(RmsNormEps))
            throw Error(nameof(RmsNormEps), $"{RmsNormEps} must be a positive number");
        if (!(RopeTheta > 0) || !float.IsFinite(RopeTheta))
            throw Error(nameof(RopeTheta), $"{RopeTheta} must be a positive number");
        if (!(RopeAttentionFactor > 0) || !float.IsFinite(RopeAttentionFactor))
            throw Error(nameof(RopeAttentionFactor), $"{RopeAttentionFactor} must be a positive number");
        if (!(RopeFreqScale > 0) || !float.IsFinite(RopeFreqScale))
            throw Error(nameof(RopeFreqScale), $"a position scale of {RopeFreqScale} must be a positive number");
        foreach (var (name, value) in new[] { (nameof(EmbeddingScale), EmbeddingScale), (nameof(ResidualScale), ResidualScale), (nameof(LogitScale), LogitScale) })
        {
            if (!(value > 0) || !float.IsFinite(value))
                throw Error(name, $"{value} must be a positive number");
        }
        if (!(AttentionScale >= 0) || !float.IsFinite(AttentionScale))
            throw Error(nameof(AttentionScale), $"{AttentionScale} must be a positive number (or absent)");
        if (SlidingWindow < 0)
            throw Error(nameof(SlidingWindow), $"{SlidingWindow} must not be negative");
        if (SlidingLayers is { } sliding && sliding.Length != Layers)
            throw Error(nameof(SlidingLayers), $"{sliding.Length} entries for {Layers} layers");
        foreach (var (name, value) in new[] { (nameof(LocalRopeTheta), LocalRopeTheta), (nameof(AttentionSoftCap), AttentionSoftCap), (nameof(FinalLogitSoftCap), FinalLogitSoftCap) })
        {
            if (!(value >= 0) || !float.IsFinite(value))
                throw Error(name, $"{value} must be a positive number (or absent)");
        }
        if (NoRopeLayers is { } nope && nope.Length != Layers)
            throw Error(nameof(NoRopeLayers), $"{nope.Length} entries for {Layers} layers");
        if (RopeFreqFactors is { } f && (f.Length != RopeDims / 2 || f.Any(x => !(x > 0) || !float.IsFinite(x))))
            throw Error(nameof(RopeFreqFactors), $"need {RopeDims / 2} positive values, got {f.Length}");
        if (LongRope is { } r)
        {
            foreach (var (table, which) in new[] { (r.ShortFactors, "short"), (r.LongFactors, "long") })
            {
                if (table.Length != RopeDims / 2 || table.Any(x => !(x > 0) || !float.IsFinite(x)))
                    throw Error(nameof(LongRope), $"the {which} factors need {RopeDims / 2} positive values (one per rotated pair), got {table.Length}");
            }
            if (r.OriginalContext <= 0)
                throw Error(nameof(LongRope), $"an original context of {r.OriginalContext} must be positive");
            if (!(r.AttentionFactor > 0) || !float.IsFinite(r.AttentionFactor))
                throw Error(nameof(LongRope), $"an attention factor of {r.AttentionFactor} must be a positive number");
        }
    }
}
