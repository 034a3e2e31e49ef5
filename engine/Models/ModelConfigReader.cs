using System.Text.Json;
using Engine.Formats;
using Engine.Formats.Gguf;

namespace Engine.Models;

/// <summary>Reads <see cref="ModelConfig"/> from GGUF metadata (<c>{arch}.*</c> keys) or an HF <c>config.json</c>.</summary>
public static class ModelConfigReader
{
    /// <summary>GGUF architectures this engine runs.</summary>
    public static readonly IReadOnlyList<string> GgufArchitectures = ["llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "blockffn", "granite", "smollm3", "olmo2", "phi3", "gemma2", "gemma3"];

    /// <summary>
    /// SmolLM3's NoPE period: layer l applies no RoPE when (l + 1) is a multiple of it. GGUF has no key
    /// for it (llama.cpp fixes it at 4 for smollm3); HF configs list the layers (<c>no_rope_layers</c>)
    /// or give the period (<c>no_rope_layer_interval</c>).
    /// </summary>
    public const int SmolLm3NoRopeInterval = 4;

    private static bool[] NoRopeEvery(int layers, int interval) => Enumerable.Range(0, layers).Select(l => (l + 1) % interval == 0).ToArray();

    /// <summary>HF <c>architectures</c> entries this engine runs, with the GGUF name each maps to.</summary>
    public static readonly IReadOnlyDictionary<string, string> HfArchitectures = new Dictionary<string, string>
    {
        ["LlamaForCausalLM"] = "llama",
        ["MistralForCausalLM"] = "llama",
        ["Qwen2ForCausalLM"] = "qwen2",
        ["Qwen3ForCausalLM"] = "qwen3",
        ["MixtralForCausalLM"] = "llama",
        ["Qwen2MoeForCausalLM"] = "qwen2moe",
        ["Qwen3MoeForCausalLM"] = "qwen3moe",
        ["MiniCPMForCausalLM"] = "blockffn", // BlockFFN's checkpoints (ffn_type "block"); other MiniCPM variants are refused by name
        ["GraniteForCausalLM"] = "granite",
        ["SmolLM3ForCausalLM"] = "smollm3",
        ["Olmo2ForCausalLM"] = "olmo2",
        ["Phi3ForCausalLM"] = "phi3",
        ["Gemma2ForCausalLM"] = "gemma2",
        ["Gemma3ForCausalLM"] = "gemma3",
    };

    /// <summary>
    /// Gemma's query scale 1/√query_pre_attn_scalar. GGUF has no key for it: llama.cpp takes the head
    /// width, except for the 27B models (46 layers in Gemma 2, 62 in Gemma 3), whose scalar is dim / heads.
    /// </summary>
    private static float GemmaGgufAttentionScale(string arch, int layers, int dim, int heads, int headDim) =>
        (arch, layers) is ("gemma2", 46) or ("gemma3", 62) ? 1f / MathF.Sqrt(dim / heads) : 1f / MathF.Sqrt(headDim);

    /// <param name="longRope">LongRoPE's tables (<see cref="GgufLongRope"/>), or null.</param>
    public static ModelConfig FromGguf(GgufFile gguf, int vocabSize, float[]? ropeFreqFactors, LongRope? longRope = null)
    {
        var m = gguf.Metadata;
        string arch = m.GetString("general.architecture");
        if (!GgufArchitectures.Contains(arch))
            throw new ModelFormatException(gguf.Path, "general.architecture", $"'{arch}' is not supported (supported: {string.Join(", ", GgufArchitectures)})");
        string k(string suffix) => $"{arch}.{suffix}";
        foreach (string scalar in new[] { "feed_forward_length", "attention.head_count", "attention.head_count_kv" })
        {
            if (m.Find(k(scalar)) is { IsArray: true })
                throw new ModelFormatException(gguf.Path, k(scalar), "per-layer values are not supported");
        }
        int dim = m.GetInt32(k("embedding_length"));
        int heads = m.GetInt32(k("attention.head_count"));
        if (heads <= 0)
            throw new ModelFormatException(gguf.Path, k("attention.head_count"), $"{heads} must be positive");
        int headDim = m.GetInt32(k("attention.key_length"), dim / heads);
        bool mla = m.Contains(k("attention.kv_lora_rank"));
        if (!mla && m.Contains(k("attention.value_length")) && m.GetInt32(k("attention.value_length")) != headDim)
            throw new ModelFormatException(gguf.Path, k("attention.value_length"), "a value length different from the key length is not supported");

        bool gemma = arch is "gemma2" or "gemma3";
        int layers = m.GetInt32(k("block_count"));
        float freqScale = 1f;
        string? scaling = m.GetStringOrNull(k("rope.scaling.type"));
        switch (scaling)
        {
            case null or "none":
                break;
            case "linear":
                float factor = m.GetSingle(k("rope.scaling.factor"), 1f);
                if (!(factor > 0))
                    throw new ModelFormatException(gguf.Path, k("rope.scaling.factor"), $"{factor} must be positive");
                freqScale = 1f / factor;
                break;
            default:
                throw new ModelFormatException(gguf.Path, k("rope.scaling.type"), $"RoPE scaling '{scaling}' is not supported (none, linear, and Llama 3 rope_freqs are)");
        }

        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = vocabSize,
            Dim = dim,
            Layers = layers,
            Heads = heads,
            KvHeads = m.GetInt32(k("attention.head_count_kv"), heads),
            HeadDim = headDim,
            FfnDim = m.GetInt32(k("feed_forward_length")),
            Moe = GgufMoe(gguf, arch),
            BlockFfn = arch == "blockffn" ? GgufBlockFfn(gguf) : null,
            Mla = mla ? new MlaConfig(m.GetInt32(k("attention.q_lora_rank"), 0), m.GetInt32(k("attention.kv_lora_rank")),
                headDim - m.GetInt32(k("rope.dimension_count"), headDim), m.GetInt32(k("rope.dimension_count"), headDim),
                m.GetInt32(k("attention.value_length"), headDim)) : null,
            ContextLength = m.GetInt32(k("context_length"), 2048),
            RmsNormEps = m.GetSingle(k("attention.layer_norm_rms_epsilon"), 1e-5f),
            RopeTheta = m.GetSingle(k("rope.freq_base"), 10000f),
            RopeStyle = arch is "qwen2" or "qwen3" or "qwen2moe" or "qwen3moe" or "blockffn" or "olmo2" or "phi3" or "gemma2" or "gemma3" ? RopeStyle.NeoX : RopeStyle.Normal,
            RopeDims = m.GetInt32(k("rope.dimension_count"), headDim),
            RopeFreqScale = freqScale,
            RopeFreqFactors = ropeFreqFactors,
            LongRope = longRope,
            EmbeddingScale = gemma ? MathF.Sqrt(dim) : m.GetSingle(k("embedding_scale"), 1f), // Gemma scales by √dim
            ResidualScale = m.GetSingle(k("residual_scale"), 1f),
            AttentionScale = gemma ? GemmaGgufAttentionScale(arch, layers, dim, heads, headDim) : m.GetSingle(k("attention.scale"), 0f),
            LogitScale = m.GetSingle(k("logit_scale"), 1f),
            NoRopeLayers = arch == "smollm3" ? NoRopeEvery(layers, SmolLm3NoRopeInterval) : null,
            // as llama.cpp: Gemma 2's window defaults to 4096 and its soft caps to 50 and 30; Gemma 3's
            // local layers rotate with base 10 000
            SlidingWindow = arch switch
            {
                "gemma2" => m.GetInt32(k("attention.sliding_window"), 4096),
                "gemma3" => m.GetInt32(k("attention.sliding_window")),
                _ => m.GetInt32(k("attention.sliding_window"), 0),
            },
            SlidingLayers = arch switch { "gemma2" => ModelConfig.SlidingEvery(layers, 2), "gemma3" => ModelConfig.SlidingEvery(layers, 6), _ => null },
            LocalRopeTheta = arch == "gemma3" ? 10000f : 0f,
            AttentionSoftCap = arch == "gemma2" ? m.GetSingle(k("attn_logit_softcapping"), 50f) : 0f,
            FinalLogitSoftCap = arch == "gemma2" ? m.GetSingle(k("final_logit_softcapping"), 30f) : 0f,
        };
        config.Validate(gguf.Path, property => property switch
        {
            nameof(ModelConfig.SlidingWindow) => k("attention.sliding_window"),
            nameof(ModelConfig.AttentionSoftCap) => k("attn_logit_softcapping"),
            nameof(ModelConfig.FinalLogitSoftCap) => k("final_logit_softcapping"),
            nameof(ModelConfig.EmbeddingScale) => k("embedding_scale"),
            nameof(ModelConfig.ResidualScale) => k("residual_scale"),
            nameof(ModelConfig.AttentionScale) => k("attention.scale"),
            nameof(ModelConfig.LogitScale) => k("logit_scale"),
            nameof(ModelConfig.VocabSize) => "tensor 'token_embd.weight' rows",
            nameof(ModelConfig.Dim) => k("embedding_length"),
            nameof(ModelConfig.Layers) => k("block_count"),
            nameof(ModelConfig.Heads) => k("attention.head_count"),
            nameof(ModelConfig.KvHeads) => k("attention.head_count_kv"),
            nameof(ModelConfig.HeadDim) => k("attention.key_length"),
            nameof(ModelConfig.FfnDim) => k("feed_forward_length"),
            nameof(MoeConfig.Experts) => k("expert_count"),
            nameof(MoeConfig.Used) => k("expert_used_count"),
            nameof(MoeConfig.ExpertFfn) => arch == "llama" ? k("feed_forward_length") : k("expert_feed_forward_length"),
            nameof(MoeConfig.SharedFfn) => k("expert_shared_feed_forward_length"),
            nameof(BlockFfnConfig.BlockSize) => k("expert_feed_forward_length"),
            nameof(MlaConfig.KvLoraRank) => k("attention.kv_lora_rank"),
            nameof(MlaConfig.QLoraRank) => k("attention.q_lora_rank"),
            nameof(MlaConfig.RopeDim) => k("rope.dimension_count"),
            nameof(MlaConfig.VDim) => k("attention.value_length"),
            nameof(BlockFfnConfig.Blocks) => k("expert_count"),
            nameof(ModelConfig.ContextLength) => k("context_length"),
            nameof(ModelConfig.RmsNormEps) => k("attention.layer_norm_rms_epsilon"),
            nameof(ModelConfig.RopeTheta) => k("rope.freq_base"),
            nameof(ModelConfig.RopeDims) => k("rope.dimension_count"),
            nameof(ModelConfig.RopeFreqScale) => k("rope.scaling.factor"),
            nameof(ModelConfig.RopeFreqFactors) => "tensor 'rope_freqs.weight'",
            nameof(ModelConfig.LongRope) => "tensors 'rope_factors_short.weight', 'rope_factors_long.weight'",
            _ => property,
        });
        return config;
    }

    /// <summary>
    /// The experts of a GGUF MoE model as llama.cpp reads them: <c>{arch}.expert_count</c> and
    /// <c>expert_used_count</c>; Mixtral's experts (arch llama) are <c>feed_forward_length</c> wide, Qwen's
    /// <c>expert_feed_forward_length</c> (else feed_forward_length / experts used), Qwen2-MoE's shared
    /// expert <c>expert_shared_feed_forward_length</c> (else feed_forward_length). Top-k weights are
    /// renormalized as llama.cpp's graphs do (llama, qwen3moe: yes; qwen2moe: no) unless
    /// <c>expert_weights_norm</c> says otherwise. Null for a dense model.
    /// </summary>
    private static MoeConfig? GgufMoe(GgufFile gguf, string arch)
    {
        var m = gguf.Metadata;
        string k(string suffix) => $"{arch}.{suffix}";
        if (arch == "blockffn")
            return null; // its expert_count counts blocks (GgufBlockFfn)
        int experts = m.GetInt32(k("expert_count"), 0);
        bool moeArch = arch is "qwen2moe" or "qwen3moe";
        if (experts == 0 && !moeArch)
            return null;
        if (!moeArch && arch != "llama")
            throw new ModelFormatException(gguf.Path, k("expert_count"), $"{experts} experts: mixtures of experts are supported for llama (Mixtral), qwen2moe and qwen3moe, not {arch}");
        if (experts <= 0)
            throw new ModelFormatException(gguf.Path, k("expert_count"), $"{(m.Contains(k("expert_count")) ? experts.ToString() : "a missing count")}: a {arch} model needs a positive number of experts");
        if (!m.Contains(k("expert_used_count")))
            throw new ModelFormatException(gguf.Path, k("expert_used_count"), "required for a mixture-of-experts model (experts per token)");
        int used = m.GetInt32(k("expert_used_count"));
        int ffn = m.GetInt32(k("feed_forward_length"));
        int expertFfn = arch == "llama" ? ffn : m.GetInt32(k("expert_feed_forward_length"), used > 0 ? ffn / used : 0);
        int shared = arch == "qwen2moe" ? m.GetInt32(k("expert_shared_feed_forward_length"), ffn) : 0;
        bool normalize = m.GetBool(k("expert_weights_norm"), arch != "qwen2moe");
        return new MoeConfig(experts, used, expertFfn, shared, normalize);
    }

    /// <summary>
    /// BlockFFN in our GGUF layout (arch <c>blockffn</c>): <c>blockffn.feed_forward_length</c> is all the
    /// blocks' units, <c>expert_feed_forward_length</c> one block's, <c>expert_count</c> (optional) the
    /// blocks — checked against each other by <see cref="ModelConfig.Validate"/>.
    /// </summary>
    private static BlockFfnConfig GgufBlockFfn(GgufFile gguf)
    {
        var m = gguf.Metadata;
        if (!m.Contains("blockffn.expert_feed_forward_length"))
            throw new ModelFormatException(gguf.Path, "blockffn.expert_feed_forward_length", "required: the units of one block");
        int size = m.GetInt32("blockffn.expert_feed_forward_length");
        int ffn = m.GetInt32("blockffn.feed_forward_length");
        return new BlockFfnConfig(m.GetInt32("blockffn.expert_count", size > 0 ? ffn / size : 0), size)
        {
            Normalization = RouterNorm(gguf.Path, "blockffn.router_normalization", m.GetStringOrNull("blockffn.router_normalization") ?? "rms"),
            NormScale = m.GetSingle("blockffn.router_norm_scale", 1f),
        };
    }

    private static RouterNormalization RouterNorm(string path, string key, string value) => value switch
    {
        "rms" => RouterNormalization.Rms,
        "sum" => RouterNormalization.Sum,
        "none" => RouterNormalization.None,
        _ => throw new ModelFormatException(path, key, $"'{value}' is not a router normalization (rms, sum, none)"),
    };

    /// <summary>
    /// BlockFFN's HF checkpoints (MiniCPM with <c>ffn_type</c> "block"): the blocks (<c>num_experts</c> of
    /// <c>expert_size</c>), SiLU and a ReLU router, the router normalization, MiniCPM's multipliers
    /// (<c>scale_emb</c>, <c>scale_depth</c>/√layers, <c>hidden_size</c>/<c>dim_model_base</c>), and MLA when
    /// <c>attention_type</c> is "mla".
    /// </summary>
    private static ModelConfig HfMiniCpm(JsonElement root, string configPath, ModelConfig c, Func<string, int?, int> integer, Func<string, float, float> single)
    {
        string Text(string key, string fallback) => root.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : fallback;
        string ffnType = Text("ffn_type", "vanilla");
        if (ffnType != "block")
            throw new ModelFormatException(configPath, "ffn_type", $"'{ffnType}': of MiniCPM's variants only BlockFFN's block layout (\"block\") is supported"
                + (ffnType == "block_linear" ? " (block_linear interleaves the blocks in down_proj)" : ""));
        if (Text("hidden_act", "silu") != "silu" || Text("router_act", "relu") != "relu")
            throw new ModelFormatException(configPath, "hidden_act", $"BlockFFN with {Text("hidden_act", "silu")} / router {Text("router_act", "relu")}: SiLU with a ReLU router is supported");
        int blocks = integer("num_experts", null), size = integer("expert_size", null);
        int layers = c.Layers;
        var mla = Text("attention_type", "vanilla") switch
        {
            "vanilla" => null,
            "mla" => new MlaConfig(integer("q_lora_rank", 0), integer("kv_lora_rank", null), integer("qk_nope_head_dim", null), integer("qk_rope_head_dim", null),
                integer("v_head_dim", c.Dim / c.Heads)),
            var other => throw new ModelFormatException(configPath, "attention_type", $"'{other}' is not vanilla or mla"),
        };
        return c with
        {
            FfnDim = blocks * size,
            BlockFfn = new BlockFfnConfig(blocks, size)
            {
                Normalization = RouterNorm(configPath, "norm_after_router", Text("norm_after_router", "sum")),
                NormScale = single("norm_scale", 1f),
            },
            EmbeddingScale = single("scale_emb", 1f),
            ResidualScale = single("scale_depth", 1f) / MathF.Sqrt(layers),
            LogitScale = c.Dim / single("dim_model_base", c.Dim),
            Mla = mla,
            HeadDim = mla is null ? c.HeadDim : mla.NopeDim + mla.RopeDim,
            RopeDims = mla is null ? c.RopeDims : mla.RopeDim,
            KvHeads = mla is null ? c.KvHeads : c.Heads,
        };
    }

    /// <summary>
    /// HF's MoE fields: Mixtral's <c>num_local_experts</c>, <c>num_experts_per_tok</c> and
    /// <c>intermediate_size</c> (its experts' width; always renormalized); Qwen-MoE's <c>num_experts</c>,
    /// <c>moe_intermediate_size</c>, <c>shared_expert_intermediate_size</c> (Qwen2-MoE) and
    /// <c>norm_topk_prob</c>. Dense layers between sparse ones (<c>decoder_sparse_step</c> &gt; 1,
    /// <c>mlp_only_layers</c>) are refused by name.
    /// </summary>
    private static MoeConfig? HfMoe(JsonElement root, string configPath, string archName, Func<string, int?, int> integer)
    {
        bool Flag(string key, bool fallback) => !root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null ? fallback
            : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
            : throw new ModelFormatException(configPath, key, $"{v.GetRawText()} is not true or false");
        switch (archName)
        {
            case "MixtralForCausalLM":
                return new MoeConfig(integer("num_local_experts", null), integer("num_experts_per_tok", null), integer("intermediate_size", null), 0, true);
            case "Qwen2MoeForCausalLM" or "Qwen3MoeForCausalLM":
                if (integer("decoder_sparse_step", 1) != 1)
                    throw new ModelFormatException(configPath, "decoder_sparse_step", $"{integer("decoder_sparse_step", 1)}: dense layers between the sparse ones are not supported");
                if (root.TryGetProperty("mlp_only_layers", out var dense) && dense.ValueKind == JsonValueKind.Array && dense.GetArrayLength() > 0)
                    throw new ModelFormatException(configPath, "mlp_only_layers", "dense layers between the sparse ones are not supported");
                bool qwen2 = archName == "Qwen2MoeForCausalLM";
                return new MoeConfig(integer("num_experts", null), integer("num_experts_per_tok", null), integer("moe_intermediate_size", null),
                    qwen2 ? integer("shared_expert_intermediate_size", 0) : 0, Flag("norm_topk_prob", false));
            default:
                return null;
        }
    }

    /// <summary>
    /// LongRoPE as llama.cpp's converter stores it: the tensors <c>rope_factors_short.weight</c> and
    /// <c>rope_factors_long.weight</c>, <c>{arch}.rope.scaling.original_context_length</c> and (optional)
    /// <c>{arch}.rope.scaling.attn_factor</c>. Null when the file has no such tensors.
    /// </summary>
    public static unsafe LongRope? GgufLongRope(GgufFile gguf, WeightSource weights)
    {
        var shortFactors = weights.Find("rope_factors_short.weight");
        var longFactors = weights.Find("rope_factors_long.weight");
        if (shortFactors is null && longFactors is null)
            return null;
        float[] Table(Tensors.TensorView? t, string name)
        {
            if (t is null)
                throw new ModelFormatException(gguf.Path, $"tensor '{name}'", "LongRoPE needs both the short and the long factors");
            if (t.Type != Tensors.GgmlType.F32 || t.Dims.Count != 1 || t.ElementCount > 1 << 16)
                throw new ModelFormatException(gguf.Path, $"tensor '{name}'", $"expected a 1-D F32 tensor, found {t.Type} {t.ShapeText}");
            return new ReadOnlySpan<float>(t.Data, (int)t.ElementCount).ToArray();
        }
        var m = gguf.Metadata;
        string arch = m.GetString("general.architecture");
        string originalKey = $"{arch}.rope.scaling.original_context_length";
        int original = m.GetInt32(originalKey);
        if (original <= 0)
            throw new ModelFormatException(gguf.Path, originalKey, $"{original} must be positive");
        float attention = m.GetSingle($"{arch}.rope.scaling.attn_factor", LongRope.DefaultAttentionFactor(m.GetInt32($"{arch}.context_length", original), original));
        return new LongRope(Table(shortFactors, "rope_factors_short.weight"), Table(longFactors, "rope_factors_long.weight"), original, attention);
    }

    /// <summary>HF SmolLM3's <c>no_rope_layers</c>: one 0/1 per layer, 1 = the layer uses RoPE (the period when absent).</summary>
    private static bool[] HfNoRopeLayers(JsonElement root, string configPath, int layers, int interval)
    {
        if (!root.TryGetProperty("no_rope_layers", out var list) || list.ValueKind == JsonValueKind.Null)
        {
            if (interval <= 0)
                throw new ModelFormatException(configPath, "no_rope_layer_interval", $"{interval} must be positive");
            return NoRopeEvery(layers, interval);
        }
        if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() != layers)
            throw new ModelFormatException(configPath, "no_rope_layers", $"must be a list of {layers} 0/1 values, one per layer");
        return list.EnumerateArray().Select((v, i) => v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int b) && b is 0 or 1 ? b == 0
            : throw new ModelFormatException(configPath, $"no_rope_layers[{i}]", $"{v.GetRawText()} is not 0 or 1")).ToArray();
    }

    /// <summary>
    /// HF's LongRoPE (<c>rope_scaling.type</c> "longrope", or "su" in the first Phi-3 128k configs): the
    /// <c>short_factor</c> and <c>long_factor</c> lists, <c>original_max_position_embeddings</c> (in
    /// rope_scaling or at the top level) and <c>attention_factor</c> when given, else HF's default.
    /// </summary>
    private static LongRope HfLongRope(JsonElement root, JsonElement rs, string configPath)
    {
        float[] Table(string key)
        {
            if (!rs.TryGetProperty(key, out var list) || list.ValueKind != JsonValueKind.Array)
                throw new ModelFormatException(configPath, $"rope_scaling.{key}", "LongRoPE needs a list of factors");
            return list.EnumerateArray().Select((v, i) => v.ValueKind == JsonValueKind.Number ? v.GetSingle()
                : throw new ModelFormatException(configPath, $"rope_scaling.{key}[{i}]", $"{v.GetRawText()} is not a number")).ToArray();
        }
        int Original()
        {
            foreach (var where in new[] { rs, root })
            {
                if (where.TryGetProperty("original_max_position_embeddings", out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int o))
                    return o > 0 ? o : throw new ModelFormatException(configPath, "original_max_position_embeddings", $"{o} must be positive");
            }
            throw new ModelFormatException(configPath, "original_max_position_embeddings", "LongRoPE needs the trained context length");
        }
        int original = Original();
        int maxPositions = root.TryGetProperty("max_position_embeddings", out var mp) && mp.ValueKind == JsonValueKind.Number && mp.TryGetInt32(out int m) ? m : original;
        float attention = rs.TryGetProperty("attention_factor", out var af) && af.ValueKind == JsonValueKind.Number ? af.GetSingle()
            : LongRope.DefaultAttentionFactor(maxPositions, original);
        return new LongRope(Table("short_factor"), Table("long_factor"), original, attention);
    }

    /// <summary>
    /// Gemma's windowed layers: HF <c>layer_types</c> ("sliding_attention" / "full_attention" per layer)
    /// where the config lists them, else the family's pattern (Gemma 2: every other layer; Gemma 3:
    /// <c>sliding_window_pattern</c>, 6 by default, so five windowed to one global).
    /// </summary>
    private static bool[] HfSlidingLayers(JsonElement root, string configPath, string arch, int layers)
    {
        if (root.TryGetProperty("layer_types", out var list) && list.ValueKind != JsonValueKind.Null)
        {
            if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() != layers)
                throw new ModelFormatException(configPath, "layer_types", $"must be a list of {layers} layer types, one per layer");
            return list.EnumerateArray().Select((v, i) => v.ValueKind == JsonValueKind.String ? v.GetString() switch
            {
                "sliding_attention" => true,
                "full_attention" => false,
                var other => throw new ModelFormatException(configPath, $"layer_types[{i}]", $"'{other}' is not sliding_attention or full_attention"),
            } : throw new ModelFormatException(configPath, $"layer_types[{i}]", $"{v.GetRawText()} is not a string")).ToArray();
        }
        int period = 2;
        if (arch == "gemma3")
        {
            period = root.TryGetProperty("sliding_window_pattern", out var p) && p.ValueKind == JsonValueKind.Number && p.TryGetInt32(out int v) ? v
                : root.TryGetProperty("sliding_window_pattern", out p) && p.ValueKind != JsonValueKind.Null
                    ? throw new ModelFormatException(configPath, "sliding_window_pattern", $"{p.GetRawText()} is not an integer") : 6;
            if (period < 1)
                throw new ModelFormatException(configPath, "sliding_window_pattern", $"{period} must be positive");
        }
        return ModelConfig.SlidingEvery(layers, period);
    }

    /// <summary>Reads <c>config.json</c> of an HF folder. HF checkpoints store q/k rows for rotate-half RoPE, hence NeoX.</summary>
    public static ModelConfig FromHf(string configPath)
    {
        using var doc = HfJson.Parse(configPath);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(configPath, "config", "must be a JSON object");
        string archName = root.TryGetProperty("architectures", out var archs) && archs.ValueKind == JsonValueKind.Array && archs.GetArrayLength() > 0
            && archs[0].ValueKind == JsonValueKind.String ? archs[0].GetString()! : "(none)";
        if (!HfArchitectures.TryGetValue(archName, out string? arch))
            throw new ModelFormatException(configPath, "architectures", $"'{archName}' is not supported (supported: {string.Join(", ", HfArchitectures.Keys)})");

        int Int(string key, int? fallback = null)
        {
            if (!root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null)
                return fallback ?? throw new ModelFormatException(configPath, key, "required field is missing");
            return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i
                : throw new ModelFormatException(configPath, key, $"{v.GetRawText()} is not an integer");
        }
        float Float(string key, float fallback)
        {
            if (!root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null)
                return fallback;
            return v.ValueKind == JsonValueKind.Number ? v.GetSingle() : throw new ModelFormatException(configPath, key, $"{v.GetRawText()} is not a number");
        }

        int dim = Int("hidden_size");
        int heads = Int("num_attention_heads");
        if (heads <= 0)
            throw new ModelFormatException(configPath, "num_attention_heads", $"{heads} must be positive");
        int headDim = Int("head_dim", dim / heads);
        float theta = Float("rope_theta", 10000f);
        float freqScale = 1f;
        float[]? factors = null;
        LongRope? longRope = null;
        if (root.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object)
        {
            string type = rs.TryGetProperty("rope_type", out var t) || rs.TryGetProperty("type", out t) ? t.GetString() ?? "" : "";
            float Scaling(string key) => rs.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetSingle()
                : throw new ModelFormatException(configPath, $"rope_scaling.{key}", "missing or not a number");
            switch (type)
            {
                case "default":
                    break;
                case "linear":
                    freqScale = 1f / Scaling("factor");
                    break;
                case "llama3":
                    factors = RopeScaling.Llama3Factors(headDim, theta, Scaling("factor"), Scaling("low_freq_factor"),
                        Scaling("high_freq_factor"), Scaling("original_max_position_embeddings"));
                    break;
                case "longrope" or "su":
                    longRope = HfLongRope(root, rs, configPath);
                    break;
                default:
                    throw new ModelFormatException(configPath, "rope_scaling", $"RoPE scaling '{type}' is not supported (default, linear, llama3, longrope are)");
            }
        }

        bool gemma = arch is "gemma2" or "gemma3";
        int layerCount = Int("num_hidden_layers");
        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = Int("vocab_size"),
            Dim = dim,
            Layers = layerCount,
            Heads = heads,
            KvHeads = Int("num_key_value_heads", heads),
            HeadDim = headDim,
            FfnDim = Int("intermediate_size"),
            Moe = HfMoe(root, configPath, archName, Int),
            ContextLength = Int("max_position_embeddings", 2048),
            RmsNormEps = Float("rms_norm_eps", 1e-6f),
            RopeTheta = theta,
            RopeStyle = RopeStyle.NeoX,
            RopeDims = (int)Math.Round(headDim * Float("partial_rotary_factor", 1f)), // Phi-4-mini rotates 3/4 of each head
            RopeFreqScale = freqScale,
            RopeFreqFactors = factors,
            LongRope = longRope,
            EmbeddingScale = gemma ? MathF.Sqrt(dim) : Float("embedding_multiplier", 1f), // Gemma scales by √hidden_size
            ResidualScale = Float("residual_multiplier", 1f),
            AttentionScale = gemma ? 1f / MathF.Sqrt(Float("query_pre_attn_scalar", headDim)) : Float("attention_multiplier", 0f),
            LogitScale = Float("logits_scaling", 1f),
            NoRopeLayers = arch == "smollm3" ? HfNoRopeLayers(root, configPath, layerCount, Int("no_rope_layer_interval", SmolLm3NoRopeInterval)) : null,
            // Qwen2's configs name a window they do not use (use_sliding_window: false)
            SlidingWindow = root.TryGetProperty("use_sliding_window", out var useWindow) && useWindow.ValueKind == JsonValueKind.False ? 0 : Int("sliding_window", 0),
            SlidingLayers = gemma ? HfSlidingLayers(root, configPath, arch, layerCount) : null,
            LocalRopeTheta = arch == "gemma3" ? Float("rope_local_base_freq", 10000f) : 0f,
            AttentionSoftCap = Float("attn_logit_softcapping", 0f),
            FinalLogitSoftCap = Float("final_logit_softcapping", 0f),
        };
        if (arch == "blockffn")
            config = HfMiniCpm(root, configPath, config, Int, Float);
        config.Validate(configPath, property => property switch
        {
            nameof(ModelConfig.SlidingWindow) => "sliding_window",
            nameof(ModelConfig.SlidingLayers) => "layer_types",
            nameof(ModelConfig.LocalRopeTheta) => "rope_local_base_freq",
            nameof(ModelConfig.AttentionSoftCap) => "attn_logit_softcapping",
            nameof(ModelConfig.FinalLogitSoftCap) => "final_logit_softcapping",
            nameof(ModelConfig.AttentionScale) when gemma => "query_pre_attn_scalar",
            nameof(ModelConfig.RopeDims) => "partial_rotary_factor",
            nameof(ModelConfig.EmbeddingScale) => "embedding_multiplier",
            nameof(ModelConfig.ResidualScale) => "residual_multiplier",
            nameof(ModelConfig.AttentionScale) => "attention_multiplier",
            nameof(ModelConfig.LogitScale) => "logits_scaling",
            nameof(ModelConfig.NoRopeLayers) => "no_rope_layers",
            nameof(ModelConfig.VocabSize) => "vocab_size",
            nameof(ModelConfig.Dim) => "hidden_size",
            nameof(ModelConfig.Layers) => "num_hidden_layers",
            nameof(ModelConfig.Heads) => "num_attention_heads",
            nameof(ModelConfig.KvHeads) => "num_key_value_heads",
            nameof(ModelConfig.HeadDim) => "head_dim",
            nameof(ModelConfig.FfnDim) => "intermediate_size",
            nameof(MoeConfig.Experts) => archName == "MixtralForCausalLM" ? "num_local_experts" : "num_experts",
            nameof(MoeConfig.Used) => "num_experts_per_tok",
            nameof(MoeConfig.ExpertFfn) => archName == "MixtralForCausalLM" ? "intermediate_size" : "moe_intermediate_size",
            nameof(MoeConfig.SharedFfn) => "shared_expert_intermediate_size",
            nameof(BlockFfnConfig.BlockSize) or nameof(BlockFfnConfig.Blocks) => "expert_size",
            nameof(MlaConfig.KvLoraRank) => "kv_lora_rank",
            nameof(MlaConfig.QLoraRank) => "q_lora_rank",
            nameof(MlaConfig.RopeDim) => "qk_rope_head_dim",
            nameof(MlaConfig.VDim) => "v_head_dim",
            nameof(ModelConfig.ContextLength) => "max_position_embeddings",
            nameof(ModelConfig.RmsNormEps) => "rms_norm_eps",
            nameof(ModelConfig.RopeTheta) => "rope_theta",
            nameof(ModelConfig.RopeFreqScale) or nameof(ModelConfig.RopeFreqFactors) or nameof(ModelConfig.LongRope) => "rope_scaling",
            _ => property,
        });
        return config;
    }
}
