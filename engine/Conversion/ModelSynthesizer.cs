using Engine.Formats.Gguf;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Conversion;

/// <summary>Shape of a random-weight model (<c>engine synth</c>).</summary>
public sealed record SynthSpec(
    string Arch, int Dim, int Layers, int Heads, int KvHeads, int Ffn, LlamaFileType FileType,
    ulong Seed = 1, int ContextLength = 2048, float RopeTheta = 10000f, int HeadDimOverride = 0,
    int Experts = 0, int ExpertsUsed = 0, int SharedFfn = 0, double Sparsity = 0.8, double ChunkLocality = 0.7)
{
    /// <summary>BlockFFN: <see cref="Experts"/> blocks of <see cref="Ffn"/> units.</summary>
    public bool BlockFfn => Arch == "blockffn";

    /// <summary>The GGUF architecture written: Mixtral is llama with experts.</summary>
    public string GgufArch => Arch == "mixtral" ? "llama" : Arch;

    /// <summary>Whether each FFN is a mixture of <see cref="Experts"/> experts of width <see cref="Ffn"/>.</summary>
    public bool Moe => Arch is "mixtral" or "qwen2moe" or "qwen3moe";

    /// <summary>Whether the layers' FFNs are made of experts or blocks (both need --experts).</summary>
    private bool Sparse => Moe || BlockFfn;

    /// <summary>Dim / Heads, or the spec's own (Qwen3's heads are wider than dim / heads).</summary>
    public int HeadDim => HeadDimOverride > 0 ? HeadDimOverride : Dim / Heads;

    public void Validate()
    {
        if (Arch is not ("llama" or "qwen2" or "qwen3" or "granite" or "smollm3" or "olmo2" or "phi3" or "gemma2" or "gemma3" or "mixtral" or "qwen2moe" or "qwen3moe" or "blockffn"))
            throw new ArgumentException($"--arch {Arch} is not supported (llama, qwen2, qwen3, granite, smollm3, olmo2, phi3, gemma2, gemma3, mixtral, qwen2moe, qwen3moe, blockffn)");
        if (BlockFfn)
        {
            if (Experts < 1 || Experts > 1 << 14)
                throw new ArgumentException($"--arch blockffn needs --experts (the blocks, 1..16384); got {Experts}");
            if (!(Sparsity is >= 0 and < 1) || !(ChunkLocality >= 0 && ChunkLocality <= Sparsity))
                throw new ArgumentException($"--sparsity {Sparsity} must be in [0, 1) and --chunk-locality {ChunkLocality} in [0, --sparsity]: a chunk cannot leave off more blocks than its tokens do");
        }
        if (Moe && (Experts < 1 || ExpertsUsed < 1 || ExpertsUsed > Experts || Experts > 1024))
            throw new ArgumentException($"--arch {Arch} needs --experts (1..1024) and --experts-used between 1 and the experts; got {Experts} and {ExpertsUsed}");
        if (!Sparse && (Experts != 0 || ExpertsUsed != 0))
            throw new ArgumentException($"--experts is for mixtral, qwen2moe, qwen3moe and blockffn, not {Arch}");
        if (SharedFfn < 0 || (SharedFfn > 0 && Arch != "qwen2moe"))
            throw new ArgumentException($"--shared-ffn {SharedFfn}: a shared expert is Qwen2-MoE's (--arch qwen2moe)");
        if (Dim <= 0 || Layers <= 0 || Heads <= 0 || KvHeads <= 0 || Ffn <= 0 || ContextLength <= 0)
            throw new ArgumentException("dim, layers, heads, kv-heads, ffn and ctx must all be positive");
        if (HeadDimOverride != 0 && (HeadDimOverride < 0 || HeadDimOverride % 2 != 0))
            throw new ArgumentException($"--head-dim {HeadDimOverride} must be positive and even");
        if (HeadDimOverride == 0 && (Dim % Heads != 0 || HeadDim % 2 != 0))
            throw new ArgumentException($"--dim {Dim} must split into {Heads} heads of an even size (or give --head-dim, even)");
        if (Heads % KvHeads != 0)
            throw new ArgumentException($"--heads {Heads} must be a multiple of --kv-heads {KvHeads}");
    }
}

/// <summary>
/// Writes a model of any Llama-family shape with seeded random weights and the tokenizer of an
/// existing GGUF file, in any file type — for benchmarking shapes we have no trained weights for.
/// Weights are uniform with the standard deviation of a freshly initialised model (0.02); values do
/// not change the speed of a forward pass, only the shapes and types do. Every row is generated from
/// its own seed, so the file does not depend on the thread count.
/// </summary>
public static class ModelSynthesizer
{
    /// <param name="progress">Told the tensor bytes written so far and in all, after each tensor.</param>
    public static void Write(SynthSpec spec, GgufMetadata vocabulary, string path, int threads = 0, IProgress<(long Done, long Total)>? progress = null)
    {
        spec.Validate();
        if (!vocabulary.Contains("tokenizer.ggml.tokens"))
            throw new Formats.ModelFormatException(vocabulary.File, "tokenizer.ggml.tokens", "the --like file has no vocabulary");
        int vocab = vocabulary["tokenizer.ggml.tokens"].ArrayLength;
        string a = spec.GgufArch;
        var w = new GgufWriter { Progress = progress };
        w.Add("general.architecture", a);
        w.Add("general.name", $"synth-{spec.Arch}-{spec.Dim}x{spec.Layers}{(spec.Moe ? $"-{spec.Experts}x{spec.ExpertsUsed}" : "")}-{spec.FileType}");
        w.Add("general.file_type", (uint)spec.FileType);
        w.Add($"{a}.vocab_size", (uint)vocab);
        w.Add($"{a}.context_length", (uint)spec.ContextLength);
        w.Add($"{a}.embedding_length", (uint)spec.Dim);
        w.Add($"{a}.block_count", (uint)spec.Layers);
        w.Add($"{a}.feed_forward_length", (uint)(spec.BlockFfn ? spec.Experts * spec.Ffn : spec.Ffn));
        w.Add($"{a}.attention.head_count", (uint)spec.Heads);
        w.Add($"{a}.attention.head_count_kv", (uint)spec.KvHeads);
        w.Add($"{a}.rope.dimension_count", (uint)spec.HeadDim);
        if (spec.HeadDimOverride > 0)
        {
            w.Add($"{a}.attention.key_length", (uint)spec.HeadDim);
            w.Add($"{a}.attention.value_length", (uint)spec.HeadDim);
        }
        w.Add($"{a}.rope.freq_base", spec.RopeTheta);
        w.Add($"{a}.attention.layer_norm_rms_epsilon", 1e-5f);
        // Qwen2-MoE's shared expert: four experts wide unless told (Qwen1.5-MoE-A2.7B: 5632 = 4 × 1408)
        int shared = spec.Arch == "qwen2moe" ? (spec.SharedFfn > 0 ? spec.SharedFfn : 4 * spec.Ffn) : 0;
        if (spec.Moe)
        {
            w.Add($"{a}.expert_count", (uint)spec.Experts);
            w.Add($"{a}.expert_used_count", (uint)spec.ExpertsUsed);
            if (a != "llama")
                w.Add($"{a}.expert_feed_forward_length", (uint)spec.Ffn);
            if (shared > 0)
                w.Add($"{a}.expert_shared_feed_forward_length", (uint)shared);
        }
        if (spec.BlockFfn)
        {
            // MiniCPM's scaling, which BlockFFN's models keep: embeddings × scale_emb (12), block outputs ×
            // scale_depth / √layers (1.4), logits ÷ hidden / dim_model_base (256)
            w.Add($"{a}.expert_count", (uint)spec.Experts);
            w.Add($"{a}.expert_feed_forward_length", (uint)spec.Ffn);
            w.Add($"{a}.embedding_scale", 12f);
            w.Add($"{a}.residual_scale", 1.4f / MathF.Sqrt(spec.Layers));
            w.Add($"{a}.logit_scale", spec.Dim / 256f);
        }
        if (a == "granite")
        {
            // Granite 3.x 2B's multipliers: every one of them switched on
            w.Add($"{a}.embedding_scale", 12f);
            w.Add($"{a}.residual_scale", 0.22f);
            w.Add($"{a}.attention.scale", 0.015625f);
            w.Add($"{a}.logit_scale", 8f);
        }
        bool gemma = a is "gemma2" or "gemma3";
        if (a == "gemma2")
        {
            // Gemma 2's own values: a window of 4096 on every other layer, scores capped at 50, logits at 30
            w.Add($"{a}.attention.sliding_window", 4096u);
            w.Add($"{a}.attn_logit_softcapping", 50f);
            w.Add($"{a}.final_logit_softcapping", 30f);
        }
        if (a == "gemma3")
            w.Add($"{a}.attention.sliding_window", 512u); // Gemma 3 1B's window on five layers of six
        foreach (string key in vocabulary.Keys.Where(k => k.StartsWith("tokenizer.", StringComparison.Ordinal)))
            w.Add(key, vocabulary[key]);

        int tensorIndex = 0;
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads > 0 ? threads : Environment.ProcessorCount };
        void Matrix(string name, int rows, int cols, float std = 0.02f, int stack = 0)
        {
            long[] dims = stack > 0 ? [cols, rows, stack] : [cols, rows];
            var type = QuantizationPlan.TypeFor(name, dims, spec.FileType, spec.Layers, hasOutput: !gemma);
            AddRandom(w, name, type, dims, Seed(spec.Seed, tensorIndex++), -std * MathF.Sqrt(3), std * MathF.Sqrt(3), options);
        }
        void Vector(string name, int length, float center, float spread) =>
            AddRandom(w, name, GgmlType.F32, [length], Seed(spec.Seed, tensorIndex++), center - spread, center + spread, options);

        int qDim = spec.Heads * spec.HeadDim, kvDim = spec.KvHeads * spec.HeadDim;
        Matrix("token_embd.weight", vocab, spec.Dim);
        Vector("output_norm.weight", spec.Dim, 1f, 0.1f);
        if (!gemma) // Gemma's head is its embedding
            Matrix("output.weight", vocab, spec.Dim);
        for (int l = 0; l < spec.Layers; l++)
        {
            string p = $"blk.{l}.";
            // OLMo 2: norms on the block outputs only, q and k normalized whole; Gemma: norms before and after
            bool pre = a != "olmo2", post = a == "olmo2" || gemma;
            if (pre)
                Vector(p + "attn_norm.weight", spec.Dim, 1f, 0.1f);
            bool fused = a == "phi3"; // Phi-3: q/k/v in one tensor, gate and up in one (gate first)
            if (fused)
                Matrix(p + "attn_qkv.weight", qDim + 2 * kvDim, spec.Dim);
            else
            {
                Matrix(p + "attn_q.weight", qDim, spec.Dim);
                Matrix(p + "attn_k.weight", kvDim, spec.Dim);
                Matrix(p + "attn_v.weight", kvDim, spec.Dim);
            }
            if (a is "qwen2" or "qwen2moe")
            {
                Vector(p + "attn_q.bias", qDim, 0f, 0.02f);
                Vector(p + "attn_k.bias", kvDim, 0f, 0.02f);
                Vector(p + "attn_v.bias", kvDim, 0f, 0.02f);
            }
            if (a == "olmo2")
            {
                Vector(p + "attn_q_norm.weight", qDim, 1f, 0.1f);
                Vector(p + "attn_k_norm.weight", kvDim, 1f, 0.1f);
            }
            if (post)
            {
                Vector(p + "attn_post_norm.weight", spec.Dim, 1f, 0.1f);
                Vector(p + "ffn_post_norm.weight", spec.Dim, 1f, 0.1f);
            }
            if (a is "qwen3" or "qwen3moe" or "gemma3")
            {
                Vector(p + "attn_q_norm.weight", spec.HeadDim, 1f, 0.1f);
                Vector(p + "attn_k_norm.weight", spec.HeadDim, 1f, 0.1f);
            }
            Matrix(p + "attn_output.weight", spec.Dim, qDim);
            if (pre)
                Vector(p + "ffn_norm.weight", spec.Dim, 1f, 0.1f);
            if (spec.BlockFfn)
            {
                Matrix(p + "ffn_gate_inp.weight", spec.Experts, spec.Dim);
                w.AddTensor(p + "ffn_gate_inp.bias", [spec.Experts], RouterBiases(spec, l));
                Vector(p + "ffn_router_norm.weight", spec.Experts, 1f, 0.1f);
                Matrix(p + "ffn_up_exps.weight", spec.Ffn, spec.Dim, stack: spec.Experts);
                Matrix(p + "ffn_down_exps.weight", spec.Dim, spec.Ffn, stack: spec.Experts);
                tensorIndex++; // the bias's seed slot
                continue;
            }
            if (spec.Moe)
            {
                // the router (F32, as llama.cpp keeps it), then every expert's matrices stacked in 3-D tensors
                Matrix(p + "ffn_gate_inp.weight", spec.Experts, spec.Dim);
                Matrix(p + "ffn_gate_exps.weight", spec.Ffn, spec.Dim, stack: spec.Experts);
                Matrix(p + "ffn_down_exps.weight", spec.Dim, spec.Ffn, stack: spec.Experts);
                Matrix(p + "ffn_up_exps.weight", spec.Ffn, spec.Dim, stack: spec.Experts);
                if (shared > 0)
                {
                    Vector(p + "ffn_gate_inp_shexp.weight", spec.Dim, 0f, 0.02f * MathF.Sqrt(3));
                    Matrix(p + "ffn_gate_shexp.weight", shared, spec.Dim);
                    Matrix(p + "ffn_down_shexp.weight", spec.Dim, shared);
                    Matrix(p + "ffn_up_shexp.weight", shared, spec.Dim);
                }
                continue;
            }
            if (!fused)
                Matrix(p + "ffn_gate.weight", spec.Ffn, spec.Dim);
            Matrix(p + "ffn_down.weight", spec.Dim, spec.Ffn);
            Matrix(p + "ffn_up.weight", fused ? 2 * spec.Ffn : spec.Ffn, spec.Dim);
        }
        w.Write(path);
    }

    /// <summary>
    /// Router biases that give a synthesized BlockFFN layer the asked token-level sparsity s (TLS) and
    /// chunk-level sparsity c (CLS over chunks of 8 tokens). A block is on for a token when w·x + b &gt; 0.
    /// With the router's uniform weights (standard deviation 0.02) and the FFN input x at an RMS of about
    /// 1 (RMSNorm times norm weights near 1), w·x is close to normal with σ = 0.02·√dim across tokens.
    /// A share 1 − f of the blocks gets b = −8σ (never on: they carry the chunk-level sparsity); the rest
    /// are on with probability p = (1 − s) / f, b = σ·Φ⁻¹(p), so TLS = 1 − f·p = s. For tokens that pick
    /// independently, CLS(8) = (1 − f) + f·(1 − p)⁸; f is solved for it by bisection. Real models also
    /// have locality in time (neighbouring tokens pick alike); this gives the same CLS through a skew in
    /// which blocks are popular instead — the kernel's cost depends only on the union it reads.
    /// </summary>
    public static float[] RouterBiases(SynthSpec spec, int layer)
    {
        int blocks = spec.Experts;
        double s = spec.Sparsity, c = spec.ChunkLocality, sigma = 0.02 * Math.Sqrt(spec.Dim);
        double Cls(double f) => (1 - f) + f * Math.Pow(1 - (1 - s) / f, BlockSparsityChunk);
        double lo = 1 - s, hi = 1; // CLS(f) falls from s (f = 1 − s, candidates always on) to s⁸ (f = 1)
        for (int i = 0; i < 60; i++)
        {
            double mid = (lo + hi) / 2;
            if (Cls(mid) > c)
                lo = mid;
            else
                hi = mid;
        }
        double candidates = Math.Max(1 - s, (lo + hi) / 2);
        double p = Math.Min(1, (1 - s) / candidates);
        double bias = sigma * InverseNormal(Math.Clamp(p, 1e-6, 1 - 1e-6));
        // which blocks are candidates: a seeded shuffle per layer, so no block index is special
        var order = Enumerable.Range(0, blocks).OrderBy(e => SplitMix(spec.Seed ^ ((ulong)layer << 32) ^ (ulong)e)).ToArray();
        int on = (int)Math.Round(candidates * blocks);
        var result = new float[blocks];
        for (int i = 0; i < blocks; i++)
            result[order[i]] = (float)(i < on ? bias : -8 * sigma);
        return result;
    }

    private const int BlockSparsityChunk = 8;

    /// <summary>Φ⁻¹(p) by bisection on the normal CDF (erf from Abramowitz–Stegun 7.1.26, |error| &lt; 1.5e-7).</summary>
    private static double InverseNormal(double p)
    {
        static double Cdf(double x)
        {
            double z = Math.Abs(x) / Math.Sqrt(2), t = 1 / (1 + 0.3275911 * z);
            double erf = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.Exp(-z * z);
            return 0.5 * (1 + Math.Sign(x) * erf);
        }
        double lo = -10, hi = 10;
        for (int i = 0; i < 80; i++)
        {
            double mid = (lo + hi) / 2;
            if (Cdf(mid) < p)
                lo = mid;
            else
                hi = mid;
        }
        return (lo + hi) / 2;
    }

    private static ulong Seed(ulong seed, int tensor) => SplitMix(seed ^ (0x9E3779B97F4A7C15UL * (ulong)(tensor + 1)));

    private static ulong SplitMix(ulong x)
    {
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        return x ^ (x >> 31);
    }

    /// <summary>Adds a tensor whose rows are generated (and quantized) in parallel when the writer reaches it.</summary>
    private static void AddRandom(GgufWriter w, string name, GgmlType type, long[] dims, ulong seed, float low, float high, ParallelOptions options)
    {
        int cols = checked((int)dims[0]);
        int rows = checked((int)dims.Skip(1).Aggregate(1L, (a, b) => a * b)); // a stack of matrices is one run of rows
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        long total = rowBytes * rows;
        w.AddTensor(name, type, dims, total, stream =>
        {
            const int rowsPerChunk = 64;
            int chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
            var buffer = new byte[Math.Min(total, rowBytes * rowsPerChunk * Math.Max(1, options.MaxDegreeOfParallelism) * 4)];
            int chunksPerWrite = (int)(buffer.Length / (rowBytes * rowsPerChunk));
            for (int first = 0; first < chunks; first += Math.Max(1, chunksPerWrite))
            {
                int last = Math.Min(chunks, first + Math.Max(1, chunksPerWrite));
                Parallel.For(first, last, options, () => new float[cols], (chunk, _, values) =>
                {
                    for (int r = chunk * rowsPerChunk; r < Math.Min(rows, (chunk + 1) * rowsPerChunk); r++)
                    {
                        ulong state = SplitMix(seed + (ulong)r);
                        for (int c = 0; c < cols; c++)
                        {
                            state = SplitMix(state);
                            values[c] = low + (high - low) * ((state >> 40) * (1f / (1 << 24)));
                        }
                        long offset = (r - (long)first * rowsPerChunk) * rowBytes;
                        Quantize.Row(type, values, buffer.AsSpan(checked((int)offset), (int)rowBytes));
                    }
                    return values;
                }, _ => { });
                long written = Math.Min(total - (long)first * rowsPerChunk * rowBytes, (long)(last - first) * rowsPerChunk * rowBytes);
                stream.Write(buffer, 0, checked((int)written));
            }
        });
    }
}
