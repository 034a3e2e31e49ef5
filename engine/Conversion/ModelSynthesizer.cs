using Engine.Formats.Gguf;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Conversion;

/// <summary>Shape of a random-weight model (<c>engine synth</c>).</summary>
public sealed record SynthSpec(
    string Arch, int Dim, int Layers, int Heads, int KvHeads, int Ffn, LlamaFileType FileType,
    ulong Seed = 1, int ContextLength = 2048, float RopeTheta = 10000f, int HeadDimOverride = 0,
    int Experts = 0, int ExpertsUsed = 0, int SharedFfn = 0)
{
    /// <summary>The GGUF architecture written: Mixtral is llama with experts.</summary>
    public string GgufArch => Arch == "mixtral" ? "llama" : Arch;

    /// <summary>Whether each FFN is a mixture of <see cref="Experts"/> experts of width <see cref="Ffn"/>.</summary>
    public bool Moe => Arch is "mixtral" or "qwen2moe" or "qwen3moe";

    /// <summary>Dim / Heads, or the spec's own (Qwen3's heads are wider than dim / heads).</summary>
    public int HeadDim => HeadDimOverride > 0 ? HeadDimOverride : Dim / Heads;

    public void Validate()
    {
        if (Arch is not ("llama" or "qwen2" or "qwen3" or "granite" or "smollm3" or "olmo2" or "phi3" or "gemma2" or "gemma3" or "mixtral" or "qwen2moe" or "qwen3moe"))
            throw new ArgumentException($"--arch {Arch} is not supported (llama, qwen2, qwen3, granite, smollm3, olmo2, phi3, gemma2, gemma3, mixtral, qwen2moe, qwen3moe)");
        if (Moe && (Experts < 1 || ExpertsUsed < 1 || ExpertsUsed > Experts || Experts > 1024))
            throw new ArgumentException($"--arch {Arch} needs --experts (1..1024) and --experts-used between 1 and the experts; got {Experts} and {ExpertsUsed}");
        if (!Moe && (Experts != 0 || ExpertsUsed != 0))
            throw new ArgumentException($"--experts is for mixtral, qwen2moe and qwen3moe, not {Arch}");
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
    public static void Write(SynthSpec spec, GgufMetadata vocabulary, string path, int threads = 0)
    {
        spec.Validate();
        if (!vocabulary.Contains("tokenizer.ggml.tokens"))
            throw new Formats.ModelFormatException(vocabulary.File, "tokenizer.ggml.tokens", "the --like file has no vocabulary");
        int vocab = vocabulary["tokenizer.ggml.tokens"].ArrayLength;
        string a = spec.GgufArch;
        var w = new GgufWriter();
        w.Add("general.architecture", a);
        w.Add("general.name", $"synth-{spec.Arch}-{spec.Dim}x{spec.Layers}{(spec.Moe ? $"-{spec.Experts}x{spec.ExpertsUsed}" : "")}-{spec.FileType}");
        w.Add("general.file_type", (uint)spec.FileType);
        w.Add($"{a}.vocab_size", (uint)vocab);
        w.Add($"{a}.context_length", (uint)spec.ContextLength);
        w.Add($"{a}.embedding_length", (uint)spec.Dim);
        w.Add($"{a}.block_count", (uint)spec.Layers);
        w.Add($"{a}.feed_forward_length", (uint)spec.Ffn);
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
