using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Engine.Formats.Gguf;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>Llama 3.1 RoPE scaling parameters (HF <c>rope_scaling</c> with <c>rope_type: llama3</c>).</summary>
public sealed record Llama3Rope(float Factor, float LowFreqFactor, float HighFreqFactor, int OriginalContext);

/// <summary>Shape and options of a random-weight Llama-family model that a test builds.</summary>
public sealed record TinySpec(
    string Name, string Arch = "llama", int Vocab = 320, int Dim = 64, int Layers = 2, int Heads = 4, int KvHeads = 4,
    int Ffn = 96, bool Tied = false, bool QkvBias = false, GgmlType WeightType = GgmlType.F32, int Seed = 1,
    float RopeTheta = 10000f, int Context = 256, Llama3Rope? Llama3 = null, int HeadDimOverride = 0,
    float EmbeddingScale = 1f, float ResidualScale = 1f, float AttentionScale = 0f, float LogitScale = 1f, int SlidingWindow = 0,
    float AttnSoftCap = 0f, float FinalSoftCap = 0f, float LocalRopeTheta = 10000f, int LongRopeOriginal = 0, int LoadContext = 0,
    int Experts = 0, int ExpertsUsed = 0, int SharedFfn = 0, bool SeparateExperts = false,
    int QLora = 0, int KvLora = 0, int RopeDim = 0, int VDim = 0, bool RouterBias = true)
{
    /// <summary>
    /// Multi-head latent attention (MiniCPM/BlockFFN's, DeepSeek-V2's): a latent of <see cref="KvLora"/> dims,
    /// q through a rank of <see cref="QLora"/> (0: directly), keys of <see cref="HeadDim"/> = nope + <see cref="RopeDim"/>
    /// (the spec's <see cref="HeadDimOverride"/>), values of <see cref="VDim"/>.
    /// </summary>
    public bool Mla => KvLora > 0;

    public int Nope => HeadDim - RopeDim;

    /// <summary>
    /// A mixture of experts in place of each FFN: <see cref="Experts"/> experts of width <see cref="Ffn"/>,
    /// <see cref="ExpertsUsed"/> per token; Mixtral when the arch is llama, else qwen2moe (a shared expert
    /// of width <see cref="SharedFfn"/>, weights not renormalized) or qwen3moe. <see cref="SeparateExperts"/>:
    /// GGUF as one tensor per expert (blk.N.ffn_gate.E.weight) instead of the stacked ffn_gate_exps.
    /// </summary>
    public bool Moe => Experts > 0 && !BlockFfn;

    /// <summary>
    /// BlockFFN (arch blockffn): <see cref="Experts"/> blocks of <see cref="Ffn"/> units, a ReLU router with a
    /// bias (negative for most blocks, so that most scores are 0) and an RMSNorm over its scores.
    /// </summary>
    public bool BlockFfn => Arch == "blockffn";

    /// <summary>Whether the chosen experts' weights are renormalized to sum to 1 (Mixtral, Qwen3-MoE).</summary>
    public bool NormalizeExperts => Arch != "qwen2moe";

    /// <summary>
    /// LongRoPE (Phi-3 128k): when <see cref="LongRopeOriginal"/> &gt; 0, short factors up to that context and
    /// long ones beyond; the model is loaded with <see cref="LoadContext"/> tokens (0: the engine's default),
    /// which picks the table.
    /// </summary>
    public bool LongRope => LongRopeOriginal > 0;
    public float[] ShortFactors => Enumerable.Range(0, HeadDim / 2).Select(i => 1f + 0.05f * i).ToArray();
    public float[] LongFactors => Enumerable.Range(0, HeadDim / 2).Select(i => 1f + 0.5f * i).ToArray();
    public float LongRopeAttentionFactor => (float)Math.Sqrt(1 + Math.Log(Context / (double)LongRopeOriginal) / Math.Log(LongRopeOriginal));
    public bool UsesLongFactors => LongRope && (LoadContext > 0 ? LoadContext : Math.Min(Context, 4096)) > LongRopeOriginal;

    /// <summary>Gemma 2/3: pre- and post-norms, GeGLU, embeddings times √dim, norm weights stored as 1 + w in HF files.</summary>
    public bool Gemma => Arch is "gemma2" or "gemma3";

    /// <summary>Whether the layers have norms before attention and the FFN (all but OLMo 2).</summary>
    public bool PreNorms => Arch != "olmo2";

    /// <summary>Whether block outputs are normalized before the residual add (OLMo 2, Gemma).</summary>
    public bool PostNorms => Arch is "olmo2" || Gemma;

    /// <summary>The embedding multiplier the model applies: Gemma's √dim (in float32, as HF and llama.cpp form it), else the spec's.</summary>
    public float EmbeddingMultiplier => Gemma ? MathF.Sqrt(Dim) : EmbeddingScale;

    /// <summary>
    /// Whether layer l attends through the sliding window: Gemma 2 every even layer, Gemma 3 all but every
    /// sixth, every layer for the others (when the spec has a window).
    /// </summary>
    public bool IsSliding(int layer) => SlidingWindow > 0 && Arch switch { "gemma2" => layer % 2 == 0, "gemma3" => (layer + 1) % 6 != 0, _ => true };

    /// <summary>Phi-3: q/k/v in one tensor, gate and up in one (gate first).</summary>
    public bool Fused => Arch == "phi3";

    /// <summary>Dim / Heads, unless the spec sets its own (Qwen3's heads are wider than dim / heads).</summary>
    public int HeadDim => HeadDimOverride > 0 ? HeadDimOverride : Dim / Heads;
    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;
    public bool NeoX => Arch is "qwen2" or "qwen3" or "qwen2moe" or "qwen3moe" or "blockffn" or "olmo2" or "phi3" or "gemma2" or "gemma3";

    /// <summary>OLMo 2: no pre-norms; block outputs normalized before the residual add; q and k normalized whole.</summary>
    public bool PostNorm => Arch == "olmo2";

    /// <summary>Length of the q and k norm weights: a head (Qwen3) or all of q / k (OLMo 2); 0 when none.</summary>
    public (int Q, int K) QkNormLength => Arch is "qwen3" or "qwen3moe" or "gemma3" ? (HeadDim, HeadDim) : PostNorm ? (QDim, KvDim) : (0, 0);

    /// <summary>SmolLM3: layer l applies no RoPE when (l + 1) % 4 == 0.</summary>
    public bool UsesRope(int layer) => Arch != "smollm3" || (layer + 1) % 4 != 0;

    /// <summary>Qwen3: an RMSNorm over each head of q and k before RoPE.</summary>
    public bool QkNorm => Arch is "qwen3" or "qwen3moe" or "olmo2" or "gemma3";
    public override string ToString() => Name;
}

/// <summary>
/// The weights of a tiny model as plain row-major float arrays ([out, in] for matrices, as in the
/// equations), plus writers that store them as GGUF or as an HF safetensors folder, and an
/// obviously-correct reference forward pass in double precision to check the engine against.
/// </summary>
public sealed class TinyModel
{
    public required TinySpec Spec { get; init; }
    public required float[] Embedding { get; init; }      // [vocab, dim]
    public required float[] OutputNorm { get; init; }     // [dim]
    public required float[]? Output { get; init; }        // [vocab, dim], null when tied
    public required Layer[] Layers { get; init; }

    public sealed class Layer
    {
        public required float[] AttnNorm, Wq, Wk, Wv, Wo, FfnNorm, Gate, Up, Down;
        public float[]? Bq, Bk, Bv;
        public float[]? QNorm, KNorm; // [headDim] (Qwen3) or [qDim], [kvDim] (OLMo 2)
        public float[]? AttnPostNorm, FfnPostNorm; // OLMo 2, Gemma
        public float[]? Router;                           // [experts, dim]
        public float[][]? ExpGate, ExpUp, ExpDown;        // per expert: [ffn, dim], [ffn, dim], [dim, ffn]
        public float[]? SharedGate, SharedUp, SharedDown; // Qwen2-MoE's shared expert
        public float[]? SharedRouter;                     // [dim]: its sigmoid gate
        public float[]? RouterBias, RouterNorm;           // BlockFFN: [blocks] each
        public float[]? QA, QANorm, QB, KvA, KvANorm, KvB;  // MLA: [qLora, dim], [qLora], [heads·hd, qLora], [kvLora + rope, dim], [kvLora], [heads·(nope + v), kvLora]
    }

    /// <summary>Seeded random weights, already rounded through the spec's weight type (so the reference sees what the engine sees).</summary>
    public static TinyModel Random(TinySpec s)
    {
        var rng = new Random(s.Seed);
        float[] Matrix(int rows, int cols, float scale)
        {
            var m = new float[rows * cols];
            for (int i = 0; i < m.Length; i++)
                m[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
            return RoundTrip(m, cols, s.WeightType);
        }
        float[] Norm(int n)
        {
            var v = new float[n];
            for (int i = 0; i < n; i++)
                v[i] = (float)(0.8 + 0.4 * rng.NextDouble());
            return v;
        }
        float[] Bias(int n) => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * 0.1)).ToArray();
        float w = 1f / MathF.Sqrt(s.Dim);
        var layers = new Layer[s.Layers];
        for (int l = 0; l < s.Layers; l++)
        {
            layers[l] = new Layer
            {
                AttnNorm = Norm(s.Dim),
                Wq = Matrix(s.QDim, s.Dim, 2 * w),
                Wk = Matrix(s.KvDim, s.Dim, 2 * w),
                Wv = Matrix(s.KvDim, s.Dim, w),
                Wo = Matrix(s.Dim, s.Mla ? s.Heads * s.VDim : s.QDim, w),
                FfnNorm = Norm(s.Dim),
                Gate = Matrix(s.Ffn, s.Dim, w),
                Up = Matrix(s.Ffn, s.Dim, w),
                Down = Matrix(s.Dim, s.Ffn, 1f / MathF.Sqrt(s.Ffn)),
                Bq = s.QkvBias ? Bias(s.QDim) : null,
                Bk = s.QkvBias ? Bias(s.KvDim) : null,
                Bv = s.QkvBias ? Bias(s.KvDim) : null,
                QNorm = s.QkNorm ? Norm(s.QkNormLength.Q) : null,
                KNorm = s.QkNorm ? Norm(s.QkNormLength.K) : null,
                AttnPostNorm = s.PostNorms ? Norm(s.Dim) : null,
                FfnPostNorm = s.PostNorms ? Norm(s.Dim) : null,
            };
            if (s.Mla)
            {
                var L = layers[l];
                if (s.QLora > 0)
                {
                    L.QA = Matrix(s.QLora, s.Dim, 2 * w);
                    L.QANorm = Norm(s.QLora);
                    L.QB = Matrix(s.QDim, s.QLora, 2f / MathF.Sqrt(s.QLora));
                }
                L.KvA = Matrix(s.KvLora + s.RopeDim, s.Dim, 2 * w);
                L.KvANorm = Norm(s.KvLora);
                L.KvB = Matrix(s.Heads * (s.Nope + s.VDim), s.KvLora, 2f / MathF.Sqrt(s.KvLora));
            }
            if (s.BlockFfn)
            {
                var L = layers[l];
                L.Router = Enumerable.Range(0, s.Experts * s.Dim).Select(_ => (float)((rng.NextDouble() * 2 - 1) * 4 * w)).ToArray();
                // biases that switch most blocks off for most tokens: the router's logits are about ±1 here
                L.RouterBias = s.RouterBias ? Enumerable.Range(0, s.Experts).Select(e => (float)(e % 3 == 0 ? -0.2 - 0.3 * rng.NextDouble() : -1.5 - rng.NextDouble())).ToArray() : null;
                L.RouterNorm = Norm(s.Experts);
                L.ExpUp = Enumerable.Range(0, s.Experts).Select(_ => Matrix(s.Ffn, s.Dim, 2 * w)).ToArray();
                L.ExpDown = Enumerable.Range(0, s.Experts).Select(_ => Matrix(s.Dim, s.Ffn, 2f / MathF.Sqrt(s.Ffn))).ToArray();
            }
            if (s.Moe)
            {
                var L = layers[l];
                // a router wide enough apart that the top-k choice is clear of float32 rounding; kept in F32, as llama.cpp keeps it
                L.Router = Enumerable.Range(0, s.Experts * s.Dim).Select(_ => (float)((rng.NextDouble() * 2 - 1) * 4 * w)).ToArray();
                L.ExpGate = Enumerable.Range(0, s.Experts).Select(_ => Matrix(s.Ffn, s.Dim, w)).ToArray();
                L.ExpUp = Enumerable.Range(0, s.Experts).Select(_ => Matrix(s.Ffn, s.Dim, w)).ToArray();
                L.ExpDown = Enumerable.Range(0, s.Experts).Select(_ => Matrix(s.Dim, s.Ffn, 2f / MathF.Sqrt(s.Ffn))).ToArray();
                if (s.SharedFfn > 0)
                {
                    L.SharedGate = Matrix(s.SharedFfn, s.Dim, w);
                    L.SharedUp = Matrix(s.SharedFfn, s.Dim, w);
                    L.SharedDown = Matrix(s.Dim, s.SharedFfn, 1f / MathF.Sqrt(s.SharedFfn));
                    L.SharedRouter = Enumerable.Range(0, s.Dim).Select(_ => (float)((rng.NextDouble() * 2 - 1) * 4 * w)).ToArray();
                }
            }
        }
        return new TinyModel
        {
            Spec = s,
            Embedding = Matrix(s.Vocab, s.Dim, 1f),
            OutputNorm = Norm(s.Dim),
            Output = s.Tied ? null : Matrix(s.Vocab, s.Dim, w),
            Layers = layers,
        };
    }

    private static float[] RoundTrip(float[] m, int cols, GgmlType type)
    {
        if (type == GgmlType.F32)
            return m;
        var result = new float[m.Length];
        var encoded = new List<byte>();
        for (int r = 0; r < m.Length / cols; r++)
        {
            var bytes = Quantize.Row(type, m.AsSpan(r * cols, cols));
            Dequantize.Row(type, bytes, result.AsSpan(r * cols, cols));
            encoded.AddRange(bytes);
        }
        Encoded.Add(result, new EncodedMatrix(type, encoded.ToArray()));
        return result;
    }

    /// <summary>
    /// The bytes each rounded matrix came from: the GGUF writer stores them as they are, since quantizing
    /// already-quantized values again need not give the same blocks (Q6_K's scale search does not).
    /// </summary>
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<float[], EncodedMatrix> Encoded = new();

    private sealed record EncodedMatrix(GgmlType Type, byte[] Bytes);

    // ---- vocabulary: 256 byte-level characters plus filler tokens, enough to load a tokenizer ----

    public string[] Tokens()
    {
        var tokens = new string[Spec.Vocab];
        for (int b = 0; b < 256; b++)
            tokens[b] = ((char)ByteChar(b)).ToString();
        for (int i = 256; i < tokens.Length; i++)
            tokens[i] = $"<extra_{i}>";
        return tokens;
    }

    private static int ByteChar(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF
        ? b
        : 256 + Enumerable.Range(0, b).Count(x => !(x is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF));

    // ---- GGUF ----

    /// <summary>Writes the model as GGUF (ggml shapes [in, out]; q/k rows as given, for the arch's RoPE style).</summary>
    public string WriteGguf(string path, uint eosId = 257)
    {
        var s = Spec;
        var w = new GgufWriter();
        w.Add("general.architecture", s.Arch);
        w.Add("general.name", s.Name);
        string a = s.Arch;
        w.Add($"{a}.context_length", (uint)s.Context);
        w.Add($"{a}.embedding_length", (uint)s.Dim);
        w.Add($"{a}.block_count", (uint)s.Layers);
        w.Add($"{a}.feed_forward_length", (uint)(s.BlockFfn ? s.Experts * s.Ffn : s.Ffn));
        if (s.Mla)
        {
            if (s.QLora > 0)
                w.Add($"{a}.attention.q_lora_rank", (uint)s.QLora);
            w.Add($"{a}.attention.kv_lora_rank", (uint)s.KvLora);
            w.Add($"{a}.attention.value_length", (uint)s.VDim);
            w.Add($"{a}.rope.dimension_count", (uint)s.RopeDim);
        }
        if (s.BlockFfn)
        {
            w.Add($"{a}.expert_count", (uint)s.Experts);
            w.Add($"{a}.expert_feed_forward_length", (uint)s.Ffn);
        }
        w.Add($"{a}.attention.head_count", (uint)s.Heads);
        w.Add($"{a}.attention.head_count_kv", (uint)s.KvHeads);
        if (s.HeadDimOverride > 0)
        {
            w.Add($"{a}.attention.key_length", (uint)s.HeadDim);
            if (!s.Mla)
                w.Add($"{a}.attention.value_length", (uint)s.HeadDim);
        }
        w.Add($"{a}.attention.layer_norm_rms_epsilon", 1e-5f);
        w.Add($"{a}.rope.freq_base", s.RopeTheta);
        if (s.SlidingWindow > 0)
            w.Add($"{a}.attention.sliding_window", (uint)s.SlidingWindow);
        if (s.LongRope)
        {
            w.Add($"{a}.rope.scaling.original_context_length", (uint)s.LongRopeOriginal);
            w.Add($"{a}.rope.scaling.attn_factor", s.LongRopeAttentionFactor);
        }
        if (a == "gemma2")
        {
            w.Add($"{a}.attn_logit_softcapping", s.AttnSoftCap);
            w.Add($"{a}.final_logit_softcapping", s.FinalSoftCap);
        }
        if (s.Moe)
        {
            w.Add($"{a}.expert_count", (uint)s.Experts);
            w.Add($"{a}.expert_used_count", (uint)s.ExpertsUsed);
            if (a != "llama")
                w.Add($"{a}.expert_feed_forward_length", (uint)s.Ffn);
            if (s.SharedFfn > 0)
                w.Add($"{a}.expert_shared_feed_forward_length", (uint)s.SharedFfn);
        }
        if (a is "granite" or "blockffn")
        {
            w.Add($"{a}.embedding_scale", s.EmbeddingScale);
            w.Add($"{a}.residual_scale", s.ResidualScale);
            w.Add($"{a}.attention.scale", s.AttentionScale);
            w.Add($"{a}.logit_scale", s.LogitScale);
        }
        w.Add("tokenizer.ggml.model", "gpt2");
        w.Add("tokenizer.ggml.pre", "default");
        w.Add("tokenizer.ggml.tokens", GgufValue.FromArray(Tokens()));
        w.Add("tokenizer.ggml.merges", GgufValue.FromArray(Array.Empty<string>()));
        w.Add("tokenizer.ggml.bos_token_id", 256u);
        w.Add("tokenizer.ggml.eos_token_id", eosId);

        void Matrix(string name, float[] data, int rows, int cols, GgmlType? type = null)
        {
            var t = type ?? s.WeightType;
            byte[] bytes = t == GgmlType.F32 ? MemoryMarshal.AsBytes(data.AsSpan()).ToArray()
                : Encoded.TryGetValue(data, out var e) && e.Type == t ? e.Bytes : Quantize.Row(t, data);
            w.AddTensor(name, t, [cols, rows], bytes);
        }
        void Vector(string name, float[] data) => w.AddTensor(name, [data.Length], data);
        byte[] Bytes(float[] data, GgmlType t) => t == GgmlType.F32 ? MemoryMarshal.AsBytes(data.AsSpan()).ToArray()
            : Encoded.TryGetValue(data, out var e) && e.Type == t ? e.Bytes : Quantize.Row(t, data);
        void Experts(string prefix, string kind, float[][] data, int rows, int cols)
        {
            if (s.SeparateExperts)
            {
                for (int e = 0; e < data.Length; e++)
                    Matrix($"{prefix}{kind}.{e}.weight", data[e], rows, cols);
            }
            else
                w.AddTensor($"{prefix}{kind}_exps.weight", s.WeightType, [cols, rows, data.Length], data.SelectMany(d => Bytes(d, s.WeightType)).ToArray());
        }

        Matrix("token_embd.weight", Embedding, s.Vocab, s.Dim);
        for (int l = 0; l < s.Layers; l++)
        {
            var L = Layers[l];
            string p = $"blk.{l}.";
            if (s.PreNorms)
                Vector(p + "attn_norm.weight", L.AttnNorm);
            if (s.Mla)
            {
                if (s.QLora > 0)
                {
                    Matrix(p + "attn_q_a.weight", L.QA!, s.QLora, s.Dim);
                    Vector(p + "attn_q_a_norm.weight", L.QANorm!);
                    Matrix(p + "attn_q_b.weight", L.QB!, s.QDim, s.QLora);
                }
                else
                    Matrix(p + "attn_q.weight", L.Wq, s.QDim, s.Dim);
                Matrix(p + "attn_kv_a_mqa.weight", L.KvA!, s.KvLora + s.RopeDim, s.Dim);
                Vector(p + "attn_kv_a_norm.weight", L.KvANorm!);
                Matrix(p + "attn_kv_b.weight", L.KvB!, s.Heads * (s.Nope + s.VDim), s.KvLora);
            }
            else if (s.Fused)
                Matrix(p + "attn_qkv.weight", [.. L.Wq, .. L.Wk, .. L.Wv], s.QDim + 2 * s.KvDim, s.Dim);
            else
            {
                Matrix(p + "attn_q.weight", L.Wq, s.QDim, s.Dim);
                Matrix(p + "attn_k.weight", L.Wk, s.KvDim, s.Dim);
                Matrix(p + "attn_v.weight", L.Wv, s.KvDim, s.Dim);
            }
            if (L.Bq is not null)
            {
                Vector(p + "attn_q.bias", L.Bq);
                Vector(p + "attn_k.bias", L.Bk!);
                Vector(p + "attn_v.bias", L.Bv!);
            }
            if (L.QNorm is not null)
            {
                Vector(p + "attn_q_norm.weight", L.QNorm);
                Vector(p + "attn_k_norm.weight", L.KNorm!);
            }
            Matrix(p + "attn_output.weight", L.Wo, s.Dim, s.Mla ? s.Heads * s.VDim : s.QDim);
            if (s.PostNorms)
            {
                Vector(p + "attn_post_norm.weight", L.AttnPostNorm!);
                Vector(p + "ffn_post_norm.weight", L.FfnPostNorm!);
            }
            if (s.PreNorms)
                Vector(p + "ffn_norm.weight", L.FfnNorm);
            if (s.BlockFfn)
            {
                Matrix(p + "ffn_gate_inp.weight", L.Router!, s.Experts, s.Dim, GgmlType.F32);
                if (L.RouterBias is not null)
                    Vector(p + "ffn_gate_inp.bias", L.RouterBias);
                Vector(p + "ffn_router_norm.weight", L.RouterNorm!);
                Experts(p, "ffn_up", L.ExpUp!, s.Ffn, s.Dim);
                Experts(p, "ffn_down", L.ExpDown!, s.Dim, s.Ffn);
            }
            else if (s.Moe)
            {
                Matrix(p + "ffn_gate_inp.weight", L.Router!, s.Experts, s.Dim, GgmlType.F32);
                Experts(p, "ffn_gate", L.ExpGate!, s.Ffn, s.Dim);
                Experts(p, "ffn_up", L.ExpUp!, s.Ffn, s.Dim);
                Experts(p, "ffn_down", L.ExpDown!, s.Dim, s.Ffn);
                if (L.SharedGate is not null)
                {
                    Vector(p + "ffn_gate_inp_shexp.weight", L.SharedRouter!);
                    Matrix(p + "ffn_gate_shexp.weight", L.SharedGate, s.SharedFfn, s.Dim);
                    Matrix(p + "ffn_up_shexp.weight", L.SharedUp!, s.SharedFfn, s.Dim);
                    Matrix(p + "ffn_down_shexp.weight", L.SharedDown!, s.Dim, s.SharedFfn);
                }
            }
            else if (s.Fused)
                Matrix(p + "ffn_up.weight", [.. L.Gate, .. L.Up], 2 * s.Ffn, s.Dim);
            else
            {
                Matrix(p + "ffn_gate.weight", L.Gate, s.Ffn, s.Dim);
                Matrix(p + "ffn_up.weight", L.Up, s.Ffn, s.Dim);
            }
            if (!s.Moe && !s.BlockFfn)
                Matrix(p + "ffn_down.weight", L.Down, s.Dim, s.Ffn);
        }
        Vector("output_norm.weight", OutputNorm);
        if (Output is not null)
            Matrix("output.weight", Output, s.Vocab, s.Dim);
        if (s.LongRope)
        {
            Vector("rope_factors_short.weight", s.ShortFactors);
            Vector("rope_factors_long.weight", s.LongFactors);
        }
        if (s.Llama3 is not null)
        {
            // llama.cpp stores Llama 3 scaling as per-frequency divisors: base θᵢ / scaled θᵢ.
            var factors = Enumerable.Range(0, s.HeadDim / 2).Select(i => (float)(BaseInvFreq(i) / InvFreq(i))).ToArray();
            Vector("rope_freqs.weight", factors);
        }
        w.Write(path);
        return path;
    }

    // ---- HF folder ----

    /// <summary>
    /// Writes an HF folder (config.json, model.safetensors, tokenizer.json) holding these weights with
    /// q/k rows converted the way HF checkpoints store them for rotate-half RoPE: the inverse of
    /// llama.cpp's convert permutation. The folder therefore describes the same network as <see cref="WriteGguf"/>.
    /// </summary>
    public string WriteHfFolder(string folder, bool shards = false)
    {
        var s = Spec;
        if (s.WeightType != GgmlType.F32)
            throw new InvalidOperationException("HF folders are written in F32");
        Directory.CreateDirectory(folder);
        var config = new Dictionary<string, object?>
        {
            ["architectures"] = new[] { s.Arch switch { "blockffn" => "MiniCPMForCausalLM", "llama" when s.Moe => "MixtralForCausalLM", "qwen2moe" => "Qwen2MoeForCausalLM", "qwen3moe" => "Qwen3MoeForCausalLM", "qwen2" => "Qwen2ForCausalLM", "qwen3" => "Qwen3ForCausalLM", "granite" => "GraniteForCausalLM", "smollm3" => "SmolLM3ForCausalLM", "olmo2" => "Olmo2ForCausalLM", "phi3" => "Phi3ForCausalLM", "gemma2" => "Gemma2ForCausalLM", "gemma3" => "Gemma3ForCausalLM", _ => "LlamaForCausalLM" } },
            ["head_dim"] = s.HeadDim,
            ["hidden_size"] = s.Dim,
            ["intermediate_size"] = s.Ffn,
            ["num_hidden_layers"] = s.Layers,
            ["num_attention_heads"] = s.Heads,
            ["num_key_value_heads"] = s.KvHeads,
            ["vocab_size"] = s.Vocab,
            ["max_position_embeddings"] = s.Context,
            ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = s.RopeTheta,
            ["tie_word_embeddings"] = s.Tied,
            ["bos_token_id"] = 256,
            ["eos_token_id"] = 257,
        };
        if (s.SlidingWindow > 0)
            config["sliding_window"] = s.SlidingWindow;
        if (s.BlockFfn)
        {
            if (s.RouterBias)
                throw new InvalidOperationException("BlockFFN's HF checkpoints have no router bias: write the spec with RouterBias: false");
            config["ffn_type"] = "block";
            config["num_experts"] = s.Experts;
            config["expert_size"] = s.Ffn;
            config["hidden_act"] = "silu";
            config["router_act"] = "relu";
            config["norm_after_router"] = "rms";
            config["scale_emb"] = s.EmbeddingScale;
            config["scale_depth"] = s.ResidualScale * MathF.Sqrt(s.Layers);
            config["dim_model_base"] = s.Dim / s.LogitScale;
            config["attention_type"] = s.Mla ? "mla" : "vanilla";
            if (s.Mla)
            {
                config["q_lora_rank"] = s.QLora;
                config["kv_lora_rank"] = s.KvLora;
                config["qk_nope_head_dim"] = s.Nope;
                config["qk_rope_head_dim"] = s.RopeDim;
                config["v_head_dim"] = s.VDim;
            }
        }
        if (s.Moe && s.Arch == "llama")
        {
            config["num_local_experts"] = s.Experts;
            config["num_experts_per_tok"] = s.ExpertsUsed;
        }
        else if (s.Moe)
        {
            config["num_experts"] = s.Experts;
            config["num_experts_per_tok"] = s.ExpertsUsed;
            config["moe_intermediate_size"] = s.Ffn;
            config["intermediate_size"] = 4 * s.Ffn; // the dense width the MoE layers do not use
            config["norm_topk_prob"] = s.NormalizeExperts;
            config["decoder_sparse_step"] = 1;
            config["mlp_only_layers"] = Array.Empty<int>();
            if (s.SharedFfn > 0)
                config["shared_expert_intermediate_size"] = s.SharedFfn;
        }
        if (s.Gemma)
        {
            config["query_pre_attn_scalar"] = s.HeadDim;
            config["hidden_activation"] = "gelu_pytorch_tanh";
            config["attn_logit_softcapping"] = s.AttnSoftCap > 0 ? s.AttnSoftCap : null;
            config["final_logit_softcapping"] = s.FinalSoftCap > 0 ? s.FinalSoftCap : null;
        }
        if (s.Arch == "gemma3")
        {
            config["rope_local_base_freq"] = s.LocalRopeTheta;
            config["layer_types"] = Enumerable.Range(0, s.Layers).Select(l => s.IsSliding(l) ? "sliding_attention" : "full_attention").ToArray();
        }
        if (s.Arch == "smollm3")
            config["no_rope_layers"] = Enumerable.Range(0, s.Layers).Select(l => s.UsesRope(l) ? 1 : 0).ToArray();
        if (s.Arch == "granite")
        {
            config["embedding_multiplier"] = s.EmbeddingScale;
            config["residual_multiplier"] = s.ResidualScale;
            config["attention_multiplier"] = s.AttentionScale;
            config["logits_scaling"] = s.LogitScale;
        }
        if (s.LongRope) // HF derives the attention factor from the two context lengths
        {
            config["original_max_position_embeddings"] = s.LongRopeOriginal;
            config["rope_scaling"] = new Dictionary<string, object> { ["type"] = "longrope", ["short_factor"] = s.ShortFactors, ["long_factor"] = s.LongFactors };
        }
        if (s.Llama3 is { } r)
        {
            config["rope_scaling"] = new Dictionary<string, object>
            {
                ["rope_type"] = "llama3",
                ["factor"] = r.Factor,
                ["low_freq_factor"] = r.LowFreqFactor,
                ["high_freq_factor"] = r.HighFreqFactor,
                ["original_max_position_embeddings"] = r.OriginalContext,
            };
        }
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config));
        var vocab = Tokens().Select((t, i) => (t, i)).ToDictionary(x => x.t, x => x.i);
        var tokenizer = new Dictionary<string, object?>
        {
            ["model"] = new Dictionary<string, object?> { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = Array.Empty<string>() },
            ["pre_tokenizer"] = new Dictionary<string, object?> { ["type"] = "ByteLevel" },
            ["added_tokens"] = Array.Empty<object>(),
        };
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), JsonSerializer.Serialize(tokenizer));

        bool neox = s.NeoX;
        var tensors = new List<(string Name, float[] Data, long[] Shape)>
        {
            ("model.embed_tokens.weight", Embedding, [s.Vocab, s.Dim]),
        };
        for (int l = 0; l < s.Layers; l++)
        {
            var L = Layers[l];
            string p = $"model.layers.{l}.";
            // Gemma's HF files store w where the norm multiplies by 1 + w (exact: the norms lie in [0.8, 1.2])
            float[] HfNorm(float[] w) => s.Gemma ? w.Select(x => x - 1f).ToArray() : w;
            if (s.PreNorms)
                tensors.Add((p + "input_layernorm.weight", HfNorm(L.AttnNorm), [s.Dim]));
            if (s.Mla)
            {
                if (s.QLora > 0)
                {
                    tensors.Add((p + "self_attn.q_a_proj.weight", L.QA!, [s.QLora, s.Dim]));
                    tensors.Add((p + "self_attn.q_a_layernorm.weight", L.QANorm!, [s.QLora]));
                    tensors.Add((p + "self_attn.q_b_proj.weight", L.QB!, [s.QDim, s.QLora]));
                }
                else
                    tensors.Add((p + "self_attn.q_proj.weight", L.Wq, [s.QDim, s.Dim]));
                tensors.Add((p + "self_attn.kv_a_proj_with_mqa.weight", L.KvA!, [s.KvLora + s.RopeDim, s.Dim]));
                tensors.Add((p + "self_attn.kv_a_layernorm.weight", L.KvANorm!, [s.KvLora]));
                tensors.Add((p + "self_attn.kv_b_proj.weight", L.KvB!, [s.Heads * (s.Nope + s.VDim), s.KvLora]));
            }
            else if (s.Fused)
                tensors.Add((p + "self_attn.qkv_proj.weight", [.. L.Wq, .. L.Wk, .. L.Wv], [s.QDim + 2 * s.KvDim, s.Dim]));
            else
            {
                tensors.Add((p + "self_attn.q_proj.weight", neox ? L.Wq : ToHfRows(L.Wq, s.Heads, s.HeadDim, s.Dim), [s.QDim, s.Dim]));
                tensors.Add((p + "self_attn.k_proj.weight", neox ? L.Wk : ToHfRows(L.Wk, s.KvHeads, s.HeadDim, s.Dim), [s.KvDim, s.Dim]));
                tensors.Add((p + "self_attn.v_proj.weight", L.Wv, [s.KvDim, s.Dim]));
            }
            if (L.Bq is not null)
            {
                tensors.Add((p + "self_attn.q_proj.bias", neox ? L.Bq : ToHfRows(L.Bq, s.Heads, s.HeadDim, 1), [s.QDim]));
                tensors.Add((p + "self_attn.k_proj.bias", neox ? L.Bk! : ToHfRows(L.Bk!, s.KvHeads, s.HeadDim, 1), [s.KvDim]));
                tensors.Add((p + "self_attn.v_proj.bias", L.Bv!, [s.KvDim]));
            }
            if (L.QNorm is not null)
            {
                tensors.Add((p + "self_attn.q_norm.weight", HfNorm(L.QNorm), [L.QNorm.Length]));
                tensors.Add((p + "self_attn.k_norm.weight", HfNorm(L.KNorm!), [L.KNorm!.Length]));
            }
            tensors.Add((p + "self_attn.o_proj.weight", L.Wo, [s.Dim, s.Mla ? s.Heads * s.VDim : s.QDim]));
            if (s.PostNorms)
            {
                tensors.Add((p + "post_attention_layernorm.weight", HfNorm(L.AttnPostNorm!), [s.Dim]));
                tensors.Add((p + "post_feedforward_layernorm.weight", HfNorm(L.FfnPostNorm!), [s.Dim]));
                if (s.Gemma)
                    tensors.Add((p + "pre_feedforward_layernorm.weight", HfNorm(L.FfnNorm), [s.Dim]));
            }
            else
                tensors.Add((p + "post_attention_layernorm.weight", L.FfnNorm, [s.Dim]));
            if (s.BlockFfn)
            {
                tensors.Add((p + "mlp.router_proj.weight", L.Router!, [s.Experts, s.Dim]));
                tensors.Add((p + "mlp.router_norm.weight", L.RouterNorm!, [s.Experts]));
                tensors.Add((p + "mlp.up_proj", L.ExpUp!.SelectMany(e => e).ToArray(), [s.Experts, s.Ffn, s.Dim]));
                tensors.Add((p + "mlp.down_proj", L.ExpDown!.SelectMany(e => e).ToArray(), [s.Experts, s.Dim, s.Ffn]));
            }
            else if (s.Moe)
            {
                bool mixtral = s.Arch == "llama";
                string moe = mixtral ? "block_sparse_moe." : "mlp.";
                tensors.Add((p + moe + "gate.weight", L.Router!, [s.Experts, s.Dim]));
                for (int e = 0; e < s.Experts; e++)
                {
                    string x = $"{p}{moe}experts.{e}.";
                    tensors.Add((x + (mixtral ? "w1" : "gate_proj") + ".weight", L.ExpGate![e], [s.Ffn, s.Dim]));
                    tensors.Add((x + (mixtral ? "w3" : "up_proj") + ".weight", L.ExpUp![e], [s.Ffn, s.Dim]));
                    tensors.Add((x + (mixtral ? "w2" : "down_proj") + ".weight", L.ExpDown![e], [s.Dim, s.Ffn]));
                }
                if (L.SharedGate is not null)
                {
                    tensors.Add((p + "mlp.shared_expert.gate_proj.weight", L.SharedGate, [s.SharedFfn, s.Dim]));
                    tensors.Add((p + "mlp.shared_expert.up_proj.weight", L.SharedUp!, [s.SharedFfn, s.Dim]));
                    tensors.Add((p + "mlp.shared_expert.down_proj.weight", L.SharedDown!, [s.Dim, s.SharedFfn]));
                    tensors.Add((p + "mlp.shared_expert_gate.weight", L.SharedRouter!, [1, s.Dim]));
                }
            }
            else if (s.Fused)
                tensors.Add((p + "mlp.gate_up_proj.weight", [.. L.Gate, .. L.Up], [2 * s.Ffn, s.Dim]));
            else
            {
                tensors.Add((p + "mlp.gate_proj.weight", L.Gate, [s.Ffn, s.Dim]));
                tensors.Add((p + "mlp.up_proj.weight", L.Up, [s.Ffn, s.Dim]));
            }
            if (!s.Moe && !s.BlockFfn)
                tensors.Add((p + "mlp.down_proj.weight", L.Down, [s.Dim, s.Ffn]));
        }
        tensors.Add(("model.norm.weight", s.Gemma ? OutputNorm.Select(x => x - 1f).ToArray() : OutputNorm, [s.Dim]));
        if (Output is not null)
            tensors.Add(("lm_head.weight", Output, [s.Vocab, s.Dim]));

        if (!shards)
        {
            Safetensors.Write(Path.Combine(folder, "model.safetensors"), tensors);
            return folder;
        }
        int half = tensors.Count / 2;
        var parts = new[] { tensors.Take(half).ToList(), tensors.Skip(half).ToList() };
        var map = new Dictionary<string, string>();
        for (int i = 0; i < parts.Length; i++)
        {
            string file = $"model-{i + 1:D5}-of-{parts.Length:D5}.safetensors";
            Safetensors.Write(Path.Combine(folder, file), parts[i]);
            foreach (var t in parts[i])
                map[t.Name] = file;
        }
        File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"),
            JsonSerializer.Serialize(new Dictionary<string, object> { ["metadata"] = new Dictionary<string, object>(), ["weight_map"] = map }));
        return folder;
    }

    /// <summary>
    /// Inverse of llama.cpp's <c>permute</c> (convert_hf_to_gguf.py): within each head, GGUF row 2i+j
    /// (interleaved pairs) holds HF row j·(hd/2)+i (halves).
    /// </summary>
    public static float[] ToHfRows(float[] gguf, int heads, int headDim, int cols)
    {
        var hf = new float[gguf.Length];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < half; i++)
            {
                for (int j = 0; j < 2; j++)
                {
                    int ggufRow = h * headDim + 2 * i + j;
                    int hfRow = h * headDim + j * half + i;
                    Array.Copy(gguf, ggufRow * cols, hf, hfRow * cols, cols);
                }
            }
        }
        return hf;
    }

    // ---- reference forward ----

    /// <summary>
    /// Logits [T, vocab] for every position of <paramref name="tokens"/>, computed causally, one token
    /// at a time, in double precision with straightforward loops: the equations and nothing else.
    /// </summary>
    public double[][] ReferenceLogits(IReadOnlyList<int> tokens) => Reference(tokens).Logits;

    /// <summary>Logits and final hidden states (after the output norm) for every position.</summary>
    public (double[][] Logits, double[][] Hidden) Reference(IReadOnlyList<int> tokens)
    {
        var s = Spec;
        int hd = s.HeadDim, group = s.Heads / s.KvHeads;
        var keys = new List<double[]>[s.Layers];
        var values = new List<double[]>[s.Layers];
        for (int l = 0; l < s.Layers; l++)
        {
            keys[l] = [];
            values[l] = [];
        }
        var result = new double[tokens.Count][];
        var hidden = new double[tokens.Count][];
        for (int t = 0; t < tokens.Count; t++)
        {
            var x = new double[s.Dim];
            for (int i = 0; i < s.Dim; i++)
                x[i] = Embedding[tokens[t] * s.Dim + i] * (double)s.EmbeddingMultiplier;
            double attentionScale = s.AttentionScale > 0 ? s.AttentionScale : 1 / Math.Sqrt(hd); // Gemma: query_pre_attn_scalar = hd
            for (int l = 0; l < s.Layers; l++)
            {
                var L = Layers[l];
                var xn = s.PreNorms ? RmsNorm(x, L.AttnNorm) : x;
                if (s.Mla)
                {
                    var mo = MatVec(L.Wo, MlaAttention(L, xn, t, keys[l], values[l]), null);
                    for (int i = 0; i < s.Dim; i++)
                        x[i] += mo[i] * s.ResidualScale;
                    goto ffn;
                }
                var q = MatVec(L.Wq, xn, L.Bq);
                var k = MatVec(L.Wk, xn, L.Bk);
                var v = MatVec(L.Wv, xn, L.Bv);
                if (L.QNorm is not null && s.PostNorm)
                {
                    q = RmsNorm(q, L.QNorm);
                    k = RmsNorm(k, L.KNorm!);
                }
                else if (L.QNorm is not null)
                {
                    HeadNorm(q, s.Heads, L.QNorm);
                    HeadNorm(k, s.KvHeads, L.KNorm!);
                }
                if (s.UsesRope(l))
                {
                    // Gemma 3's windowed layers rotate with their own base
                    double theta = s.Arch == "gemma3" && s.IsSliding(l) ? s.LocalRopeTheta : s.RopeTheta;
                    Rope(q, s.Heads, t, theta);
                    Rope(k, s.KvHeads, t, theta);
                }
                // sliding-window attention: position t sees positions t - window + 1 .. t
                int first = s.IsSliding(l) ? Math.Max(0, t - s.SlidingWindow + 1) : 0;
                keys[l].Add(k);
                values[l].Add(v);
                var att = new double[s.QDim];
                for (int h = 0; h < s.Heads; h++)
                {
                    int kvh = h / group;
                    var scores = new double[t + 1];
                    double max = double.NegativeInfinity;
                    for (int p = first; p <= t; p++)
                    {
                        double dot = 0;
                        for (int i = 0; i < hd; i++)
                            dot += q[h * hd + i] * keys[l][p][kvh * hd + i];
                        scores[p] = dot * attentionScale;
                        if (s.AttnSoftCap > 0) // Gemma 2
                            scores[p] = s.AttnSoftCap * Math.Tanh(scores[p] / s.AttnSoftCap);
                        max = Math.Max(max, scores[p]);
                    }
                    double sum = 0;
                    for (int p = first; p <= t; p++)
                    {
                        scores[p] = Math.Exp(scores[p] - max);
                        sum += scores[p];
                    }
                    for (int p = first; p <= t; p++)
                    {
                        for (int i = 0; i < hd; i++)
                            att[h * hd + i] += scores[p] / sum * values[l][p][kvh * hd + i];
                    }
                }
                var o = MatVec(L.Wo, att, null);
                if (s.PostNorms)
                    o = RmsNorm(o, L.AttnPostNorm!);
                for (int i = 0; i < s.Dim; i++)
                    x[i] += o[i] * s.ResidualScale;
                ffn:
                var fn = s.PreNorms ? RmsNorm(x, L.FfnNorm) : x;
                if (s.Moe || s.BlockFfn)
                {
                    var moe = s.BlockFfn ? BlockFeedForward(L, fn) : MixtureOfExperts(L, fn);
                    for (int i = 0; i < s.Dim; i++)
                        x[i] += moe[i] * s.ResidualScale;
                    continue;
                }
                var g = MatVec(L.Gate, fn, null);
                var u = MatVec(L.Up, fn, null);
                for (int i = 0; i < g.Length; i++)
                {
                    g[i] = s.Gemma
                        ? 0.5 * g[i] * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (g[i] + 0.044715 * g[i] * g[i] * g[i]))) * u[i] // GeGLU (tanh GELU)
                        : g[i] / (1 + Math.Exp(-g[i])) * u[i];                                                                 // SwiGLU
                }
                var d = MatVec(L.Down, g, null);
                if (s.PostNorms)
                    d = RmsNorm(d, L.FfnPostNorm!);
                for (int i = 0; i < s.Dim; i++)
                    x[i] += d[i] * s.ResidualScale;
            }
            hidden[t] = RmsNorm(x, OutputNorm);
            result[t] = MatVec(Output ?? Embedding, hidden[t], null).Select(v => v / s.LogitScale)
                .Select(v => s.FinalSoftCap > 0 ? s.FinalSoftCap * Math.Tanh(v / s.FinalSoftCap) : v).ToArray();
        }
        return (result, hidden);
    }

    /// <summary>
    /// MLA as MiniCPM's MLAAttention computes it (HF order: each head's q and k are [nope | pe]): q through
    /// the low rank (RMSNorm eps 1e-6), the latent RMS-normed and expanded per head into [k_nope | v], the
    /// one k_pe rotated (rotate-half over the rope dims, frequencies over the rope dims) and shared by all
    /// heads, scores scaled by 1/√(nope + rope), values of v dims. Keys and values of past tokens come from
    /// <paramref name="keys"/>/<paramref name="values"/> ([heads·(nope + rope)] and [heads·v] per token).
    /// </summary>
    private double[] MlaAttention(Layer L, double[] x, int position, List<double[]> keys, List<double[]> values)
    {
        var s = Spec;
        int hd = s.HeadDim, nope = s.Nope, rope = s.RopeDim, vd = s.VDim;
        double[] Norm6(double[] v, float[] w)
        {
            double scale = 1 / Math.Sqrt(v.Sum(a => a * a) / v.Length + 1e-6);
            return v.Select((a, i) => a * scale * w[i]).ToArray();
        }
        void RotateHalf(double[] v, int at)
        {
            int half = rope / 2;
            for (int i = 0; i < half; i++)
            {
                double angle = position * Math.Pow(s.RopeTheta, -2.0 * i / rope);
                double x0 = v[at + i], x1 = v[at + i + half];
                v[at + i] = x0 * Math.Cos(angle) - x1 * Math.Sin(angle);
                v[at + i + half] = x0 * Math.Sin(angle) + x1 * Math.Cos(angle);
            }
        }
        var q = s.QLora > 0 ? MatVec(L.QB!, Norm6(MatVec(L.QA!, x, null), L.QANorm!), null) : MatVec(L.Wq, x, null);
        var kva = MatVec(L.KvA!, x, null);
        var latent = Norm6(kva[..s.KvLora], L.KvANorm!);
        var kpe = kva[s.KvLora..];
        RotateHalf(kpe, 0);
        var kvb = MatVec(L.KvB!, latent, null);
        var k = new double[s.Heads * hd];
        var v = new double[s.Heads * vd];
        for (int h = 0; h < s.Heads; h++)
        {
            RotateHalf(q, h * hd + nope);
            Array.Copy(kvb, h * (nope + vd), k, h * hd, nope);
            Array.Copy(kpe, 0, k, h * hd + nope, rope);
            Array.Copy(kvb, h * (nope + vd) + nope, v, h * vd, vd);
        }
        keys.Add(k);
        values.Add(v);
        var att = new double[s.Heads * vd];
        for (int h = 0; h < s.Heads; h++)
        {
            var scores = new double[keys.Count];
            for (int p = 0; p < keys.Count; p++)
            {
                double dot = 0;
                for (int i = 0; i < hd; i++)
                    dot += q[h * hd + i] * keys[p][h * hd + i];
                scores[p] = dot / Math.Sqrt(hd);
            }
            double max = scores.Max(), sum = scores.Sum(a => Math.Exp(a - max));
            for (int p = 0; p < keys.Count; p++)
            {
                double weight = Math.Exp(scores[p] - max) / sum;
                for (int i = 0; i < vd; i++)
                    att[h * vd + i] += weight * values[p][h * vd + i];
            }
        }
        return att;
    }

    /// <summary>
    /// BlockFFN as the paper writes it: s = RMSNorm(ReLU(W_r·x + b))·w over the blocks, then
    /// Σ_e Down_e · (silu(Up_e · x) · s_e) — every block computed, the off ones multiplied by 0.
    /// </summary>
    private double[] BlockFeedForward(Layer L, double[] x)
    {
        var s = Spec;
        var r = MatVec(L.Router!, x, L.RouterBias).Select(v => Math.Max(v, 0)).ToArray();
        double rms = Math.Sqrt(r.Sum(v => v * v) / r.Length + 1e-5);
        var y = new double[s.Dim];
        for (int e = 0; e < s.Experts; e++)
        {
            double score = r[e] / rms * L.RouterNorm![e];
            var u = MatVec(L.ExpUp![e], x, null).Select(v => v / (1 + Math.Exp(-v)) * score).ToArray();
            var d = MatVec(L.ExpDown![e], u, null);
            for (int i = 0; i < s.Dim; i++)
                y[i] += d[i];
        }
        return y;
    }

    /// <summary>
    /// The MoE FFN as the papers write it: softmax over the router's logits, the top-k experts (ties: the
    /// lower index), their SwiGLU outputs weighted by p (renormalized over the chosen for Mixtral and
    /// Qwen3-MoE), plus Qwen2-MoE's shared expert times sigmoid of its gate.
    /// </summary>
    private double[] MixtureOfExperts(Layer L, double[] x)
    {
        var s = Spec;
        double[] Ffn(float[] gate, float[] up, float[] down)
        {
            var g = MatVec(gate, x, null);
            var u = MatVec(up, x, null);
            for (int i = 0; i < g.Length; i++)
                g[i] = g[i] / (1 + Math.Exp(-g[i])) * u[i];
            return MatVec(down, g, null);
        }
        var logits = MatVec(L.Router!, x, null);
        double max = logits.Max();
        var p = logits.Select(v => Math.Exp(v - max)).ToArray();
        double total = p.Sum();
        var chosen = Enumerable.Range(0, s.Experts).OrderByDescending(e => logits[e]).ThenBy(e => e).Take(s.ExpertsUsed).ToArray();
        double norm = s.NormalizeExperts ? chosen.Sum(e => p[e]) : total;
        var y = new double[s.Dim];
        foreach (int e in chosen)
        {
            var d = Ffn(L.ExpGate![e], L.ExpUp![e], L.ExpDown![e]);
            for (int i = 0; i < s.Dim; i++)
                y[i] += p[e] / norm * d[i];
        }
        if (L.SharedGate is not null)
        {
            double gate = 1 / (1 + Math.Exp(-MatVec(L.SharedRouter!, x, null)[0]));
            var d = Ffn(L.SharedGate, L.SharedUp!, L.SharedDown!);
            for (int i = 0; i < s.Dim; i++)
                y[i] += gate * d[i];
        }
        return y;
    }

    private double BaseInvFreq(int i, double? theta = null) => Math.Pow(theta ?? Spec.RopeTheta, -2.0 * i / Spec.HeadDim);

    /// <summary>RoPE frequency of pair i, with Llama 3 scaling written as HF's <c>_compute_llama3_parameters</c> does.</summary>
    private double InvFreq(int i, double? theta = null)
    {
        double invFreq = BaseInvFreq(i, theta);
        if (Spec.LongRope) // divided by the short or the long factor
            return invFreq / (Spec.UsesLongFactors ? Spec.LongFactors : Spec.ShortFactors)[i];
        if (Spec.Llama3 is not { } r)
            return invFreq;
        double lowFreqWavelen = r.OriginalContext / r.LowFreqFactor;
        double highFreqWavelen = r.OriginalContext / r.HighFreqFactor;
        double wavelen = 2 * Math.PI / invFreq;
        double llama = wavelen > lowFreqWavelen ? invFreq / r.Factor : invFreq;
        bool medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
        if (!medium)
            return llama;
        double smooth = (r.OriginalContext / wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor);
        return (1 - smooth) * llama / r.Factor + smooth * llama;
    }

    /// <summary>Qwen3's q/k norm: RMSNorm over each head's slice, in place.</summary>
    private void HeadNorm(double[] x, int heads, float[] w)
    {
        int hd = Spec.HeadDim;
        for (int h = 0; h < heads; h++)
            RmsNorm(x[(h * hd)..((h + 1) * hd)], w).CopyTo(x, h * hd);
    }

    private double[] RmsNorm(double[] x, float[] w)
    {
        double ss = x.Sum(v => v * v) / x.Length;
        double scale = 1 / Math.Sqrt(ss + 1e-5);
        return x.Select((v, i) => v * scale * w[i]).ToArray();
    }

    private static double[] MatVec(float[] m, double[] x, float[]? bias)
    {
        int rows = m.Length / x.Length;
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double sum = bias?[r] ?? 0;
            for (int c = 0; c < x.Length; c++)
                sum += m[r * x.Length + c] * x[c];
            y[r] = sum;
        }
        return y;
    }

    private void Rope(double[] v, int heads, int pos, double theta)
    {
        int hd = Spec.HeadDim, half = hd / 2;
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < half; i++)
            {
                double angle = pos * InvFreq(i, theta);
                int a = Spec.NeoX ? h * hd + i : h * hd + 2 * i;
                int b = Spec.NeoX ? h * hd + i + half : h * hd + 2 * i + 1;
                double x0 = v[a], x1 = v[b];
                double mscale = Spec.LongRope ? Spec.LongRopeAttentionFactor : 1; // LongRoPE scales cos and sin
                v[a] = mscale * (x0 * Math.Cos(angle) - x1 * Math.Sin(angle));
                v[b] = mscale * (x0 * Math.Sin(angle) + x1 * Math.Cos(angle));
            }
        }
    }
}

/// <summary>A minimal safetensors writer for tests (header JSON padded to 8 bytes, F32 data).</summary>
public static class Safetensors
{
    public static void Write(string path, IEnumerable<(string Name, float[] Data, long[] Shape)> tensors)
    {
        var header = new Dictionary<string, object>();
        long offset = 0;
        var list = tensors.ToList();
        foreach (var (name, data, shape) in list)
        {
            header[name] = new Dictionary<string, object> { ["dtype"] = "F32", ["shape"] = shape, ["data_offsets"] = new[] { offset, offset + data.Length * 4L } };
            offset += data.Length * 4L;
        }
        WriteRaw(path, JsonSerializer.Serialize(header), list.SelectMany(t => MemoryMarshal.AsBytes(t.Data.AsSpan()).ToArray()).ToArray());
    }

    /// <summary>Writes a file from a header text and data bytes (for crafting bad files too).</summary>
    public static void WriteRaw(string path, string headerJson, byte[] data, long? declaredHeaderLength = null)
    {
        var json = Encoding.UTF8.GetBytes(headerJson);
        int padded = (json.Length + 7) / 8 * 8;
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes(declaredHeaderLength ?? padded));
        f.Write(json);
        for (int i = json.Length; i < padded; i++)
            f.WriteByte((byte)' ');
        f.Write(data);
    }
}

/// <summary>A temporary folder deleted at dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "engine-tests-" + Guid.NewGuid().ToString("N")[..12]);

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
