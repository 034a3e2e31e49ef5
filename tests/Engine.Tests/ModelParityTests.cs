using Engine.Api;
using Engine.Backends;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// Random-weight models built here go through the whole engine (file writer, loader, tokenizer,
/// backend, KV cache) and must give the logits of <see cref="TinyModel.ReferenceLogits"/>.
/// </summary>
/// <remarks>
/// Tolerance, exact path: the engine computes in float32, the reference in double. With dot products of
/// at most 96 terms, float32 rounding (2^-24 ≈ 6e-8 relative per operation) accumulates to about 1e-6
/// of the logits' scale through the 2-3 layers of these models; we allow 2e-5 of the largest |logit|
/// (≈20× that). Any real mistake — a wrong RoPE pairing, a missed bias, a GQA head mapped to the wrong
/// KV head, a mask off by one — moves logits by a sizeable fraction of their scale and fails by orders
/// of magnitude.
///
/// Tolerance, int8 activations (the default for quantized weights, as in llama.cpp): each
/// activation is rounded to a 1/127 step of its block's largest magnitude, an error of at most 0.4% of
/// that magnitude per value. In a dot product the errors are independent and partly cancel; across the
/// layers of these models they move logits by about 0.5% of their scale. We allow 3e-2 — still two
/// orders of magnitude below what a wrong kernel does (a swapped nibble or scale changes logits by
/// their whole scale), which the kernel tests also check bit-for-bit against the scalar reference.
/// </remarks>
public class ModelParityTests
{
    private const double Tolerance = 2e-5;
    private const double Int8ActivationTolerance = 3e-2;

    public static IEnumerable<TinySpec> Specs()
    {
        yield return new TinySpec("mha-tied", Tied: true);
        yield return new TinySpec("gqa", Heads: 8, KvHeads: 2, Layers: 3, Seed: 2);
        yield return new TinySpec("qwen2-neox-bias-gqa", Arch: "qwen2", Heads: 4, KvHeads: 2, QkvBias: true, Seed: 3, RopeTheta: 1e6f);
        yield return new TinySpec("mqa-tied-neox", Arch: "qwen2", Heads: 4, KvHeads: 1, Tied: true, Seed: 4);
        yield return new TinySpec("q8_0", WeightType: GgmlType.Q8_0, Heads: 4, KvHeads: 2, Seed: 5);
        yield return new TinySpec("q4_0", WeightType: GgmlType.Q4_0, Seed: 6);
        yield return new TinySpec("q5_1-tied", WeightType: GgmlType.Q5_1, Tied: true, Seed: 7);
        yield return new TinySpec("f16", WeightType: GgmlType.F16, Heads: 2, KvHeads: 1, Seed: 8);
        yield return new TinySpec("bf16", WeightType: GgmlType.BF16, Heads: 4, KvHeads: 2, Seed: 53);
        // Qwen3: per-head q/k RMSNorm before RoPE, heads wider than dim / heads (4 × 32 over dim 64)
        yield return new TinySpec("qwen3-qknorm-wide-heads", Arch: "qwen3", Heads: 4, KvHeads: 2, HeadDimOverride: 32, Seed: 31);
        // Phi-3: fused q/k/v and gate/up tensors, split in place when loaded (F32 and quantized rows)
        yield return new TinySpec("phi3-fused", Arch: "phi3", Heads: 4, KvHeads: 2, Seed: 40);
        yield return new TinySpec("phi3-fused-q8_0", Arch: "phi3", WeightType: GgmlType.Q8_0, Heads: 4, KvHeads: 4, Seed: 41);
        // OLMo 2: norms on the block outputs, no pre-norms, q and k normalized whole
        yield return new TinySpec("olmo2-post-norm", Arch: "olmo2", Heads: 4, KvHeads: 2, Seed: 38);
        // Gemma 2: a windowed layer then a global one, soft caps small enough to bend these scores and logits
        yield return new TinySpec("gemma2-window-softcaps", Arch: "gemma2", Heads: 4, KvHeads: 2, Tied: true, Seed: 60, SlidingWindow: 5,
            AttnSoftCap: 1.5f, FinalSoftCap: 3f);
        // Gemma 3: five windowed layers (their own RoPE base) and a global one, per-head q/k norms, wide heads
        yield return new TinySpec("gemma3-local-global", Arch: "gemma3", Layers: 6, Heads: 4, KvHeads: 2, HeadDimOverride: 32, Tied: true, Seed: 61,
            SlidingWindow: 4, RopeTheta: 1e6f);
        yield return new TinySpec("phi3-window", Arch: "phi3", Heads: 4, KvHeads: 2, Seed: 43, SlidingWindow: 6);
        // LongRoPE: the long factors (the default context of 256 exceeds the trained 64) and the attention factor
        yield return new TinySpec("phi3-longrope", Arch: "phi3", Heads: 4, KvHeads: 2, Seed: 47, LongRopeOriginal: 64);
        // SmolLM3: the fourth of its four layers applies no RoPE
        yield return new TinySpec("smollm3-nope", Arch: "smollm3", Layers: 4, Heads: 4, KvHeads: 2, Seed: 36);
        // Granite 3: embedding, residual, attention and logit multipliers (values of granite-3.x's size)
        yield return new TinySpec("granite-multipliers", Arch: "granite", Heads: 4, KvHeads: 2, Seed: 34, EmbeddingScale: 12f, ResidualScale: 0.22f,
            AttentionScale: 0.0625f, LogitScale: 8f);
        // K-quants need rows of 256 values.
        yield return new TinySpec("q4_k-gqa", WeightType: GgmlType.Q4_K, Dim: 256, Ffn: 512, Heads: 4, KvHeads: 2, Seed: 51);
        yield return new TinySpec("q6_k-neox", Arch: "qwen2", WeightType: GgmlType.Q6_K, Dim: 256, Ffn: 256, Heads: 8, KvHeads: 2, Seed: 52);
        // Mixtures of experts: Mixtral (llama with experts, stacked or one tensor per expert), Qwen2-MoE
        // (shared expert with its sigmoid gate, q/k/v biases, weights not renormalized), Qwen3-MoE (q/k norms)
        yield return new TinySpec("mixtral-4x2", Heads: 4, KvHeads: 2, Experts: 4, ExpertsUsed: 2, Seed: 70);
        yield return new TinySpec("mixtral-separate-q8_0", WeightType: GgmlType.Q8_0, Heads: 4, KvHeads: 2, Experts: 4, ExpertsUsed: 2,
            SeparateExperts: true, Seed: 71);
        yield return new TinySpec("qwen2moe-shared", Arch: "qwen2moe", Heads: 4, KvHeads: 2, QkvBias: true, Experts: 6, ExpertsUsed: 2,
            SharedFfn: 128, Seed: 72);
        // BlockFFN: a ReLU router with biases and an RMSNorm over its scores, blocks stacked; MiniCPM's multipliers
        yield return new TinySpec("blockffn-12x32", Arch: "blockffn", Heads: 4, KvHeads: 2, Experts: 12, Ffn: 32, Seed: 74,
            EmbeddingScale: 12f, ResidualScale: 0.22f, LogitScale: 4f);
        // BlockFFN's public checkpoints' attention: MLA (q through a low rank, one shared rotated key part, narrower values)
        yield return new TinySpec("blockffn-mla", Arch: "blockffn", Heads: 4, KvHeads: 4, HeadDimOverride: 32, QLora: 32, KvLora: 32, RopeDim: 16,
            VDim: 16, Experts: 12, Ffn: 32, Seed: 76, EmbeddingScale: 12f, ResidualScale: 0.22f, LogitScale: 4f);
        yield return new TinySpec("blockffn-q8_0", Arch: "blockffn", WeightType: GgmlType.Q8_0, Heads: 4, KvHeads: 2, Experts: 12, Ffn: 32, Seed: 75);
        yield return new TinySpec("qwen3moe-q4_0", Arch: "qwen3moe", WeightType: GgmlType.Q4_0, Heads: 4, KvHeads: 2, HeadDimOverride: 32,
            Experts: 8, ExpertsUsed: 3, Seed: 73);
    }

    internal static readonly int[] Prompt = [256, 10, 200, 33, 7, 7, 301, 5, 90, 120, 64, 3, 250, 17];

    [TestCaseSource(nameof(Specs))]
    public void Gguf_model_logits_match_the_reference_forward(TinySpec spec)
    {
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        var reference = model.ReferenceLogits(Prompt);
        using (var exact = LanguageModel.Load(path, new ModelOptions { Backend = new Backends.Cpu.CpuBackend(2, quantizeActivations: false) }))
        {
            Assert.That(exact.Network.TiedOutput, Is.EqualTo(spec.Tied));
            AssertLogitsMatch(exact, reference);
        }
        // Quantized types use int8 activations in their row kernels (Q8_0, Q4_0, Q4_K, Q6_K) and, for a
        // batch, in the matrix kernels (every quantized type).
        bool int8 = Backends.Cpu.Kernels.MatMul.ActivationFor(spec.WeightType) is not null || Backends.Cpu.Kernels.DecodedRows.Supports(spec.WeightType);
        // BlockFFN's router normalizes mostly-zero ReLU outputs with RMSNorm: for a token with one block
        // barely on, its score is r/√(r²/blocks + eps), a gain of up to 1/√eps ≈ 316 on r, so the int8 errors
        // of the layers before (0.4% of the router's logits' scale) can move such a score by its whole size.
        // No tolerance of that kind bounds it; the exact path above is checked, and BlockFfnTests checks the
        // int8 path against the dense computation bit for bit.
        if (spec.BlockFfn && int8)
            return;
        using var fast = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
        AssertLogitsMatch(fast, reference, int8 ? Int8ActivationTolerance : Tolerance);
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Hf_folder_matches_the_reference_and_the_gguf_of_the_same_network(bool shards)
    {
        var spec = new TinySpec("hf-gqa", Heads: 4, KvHeads: 2, Seed: 11);
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        using var hf = LanguageModel.Load(model.WriteHfFolder(dir.File("hf"), shards), new ModelOptions { Threads = 2 });
        var reference = model.ReferenceLogits(Prompt);
        // HF rows are stored for rotate-half RoPE; reading them as NeoX must give the GGUF network's logits.
        AssertLogitsMatch(hf, reference);
    }

    /// <summary>
    /// Writes <paramref name="model"/> as an HF folder and as GGUF; each loads, passes <paramref name="check"/>
    /// and gives the reference's logits — the two layouts are one network. Returns the GGUF's path.
    /// </summary>
    internal static string AssertHfAndGgufMatchTheReference(TinyModel model, TempDir dir, Action<LanguageModel>? check = null)
    {
        var reference = model.ReferenceLogits(Prompt);
        string gguf = model.WriteGguf(dir.File("m.gguf"));
        foreach (string path in new[] { model.WriteHfFolder(dir.File("hf")), gguf })
        {
            using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 1, ContextLength = model.Spec.LoadContext });
            check?.Invoke(lm);
            AssertLogitsMatch(lm, reference);
        }
        return gguf;
    }

    /// <summary>Qwen3's HF folder (q_norm/k_norm, explicit head_dim) and its GGUF: the same network, the reference's logits.</summary>
    [Test]
    public void Qwen3_hf_folder_matches_the_reference_and_the_gguf()
    {
        using var dir = new TempDir();
        AssertHfAndGgufMatchTheReference(TinyModel.Random(new TinySpec("hf-qwen3", Arch: "qwen3", Heads: 4, KvHeads: 2, HeadDimOverride: 32, Tied: true, Seed: 32)),
            dir, lm => Assert.That((lm.Config.Architecture, lm.Config.HeadDim, lm.Config.QDim), Is.EqualTo(("qwen3", 32, 128))));
    }

    /// <summary>Granite's HF folder (the four multipliers in config.json) and its GGUF (granite.* keys): the reference's logits.</summary>
    [Test]
    public void Granite_hf_folder_matches_the_reference_and_the_gguf()
    {
        using var dir = new TempDir();
        AssertHfAndGgufMatchTheReference(TinyModel.Random(new TinySpec("hf-granite", Arch: "granite", Heads: 4, KvHeads: 2, Tied: true, Seed: 35,
            EmbeddingScale: 12f, ResidualScale: 0.22f, AttentionScale: 0.0625f, LogitScale: 8f)), dir,
            lm => Assert.That((lm.Config.EmbeddingScale, lm.Config.ResidualScale, lm.Config.AttentionScale, lm.Config.LogitScale), Is.EqualTo((12f, 0.22f, 0.0625f, 8f))));
    }

    /// <summary>SmolLM3's HF folder (its no_rope_layers list) and its GGUF (the fixed period of 4): the same network.</summary>
    [Test]
    public void Smollm3_hf_folder_matches_the_reference_and_the_gguf()
    {
        var model = TinyModel.Random(new TinySpec("hf-smollm3", Arch: "smollm3", Layers: 4, Heads: 4, KvHeads: 2, Seed: 37));
        using var dir = new TempDir();
        AssertHfAndGgufMatchTheReference(model, dir, lm => Assert.That(Enumerable.Range(0, 4).Select(lm.Config.UsesRope), Is.EqualTo(new[] { true, true, true, false })));
        // Rotating every layer would be a different network: the NoPE layer matters to the logits.
        var roped = TinyModel.Random(new TinySpec("hf-smollm3", Layers: 4, Heads: 4, KvHeads: 2, Seed: 37)).ReferenceLogits(Prompt);
        Assert.That(roped.Zip(model.ReferenceLogits(Prompt)).Max(p => p.First.Zip(p.Second).Max(x => Math.Abs(x.First - x.Second))), Is.GreaterThan(1e-3));
    }

    /// <summary>
    /// OLMo 2's HF folder — where <c>post_attention_layernorm</c> follows attention instead of preceding the
    /// FFN — and its GGUF (attn_post_norm, ffn_post_norm): the same network, the reference's logits.
    /// </summary>
    [Test]
    public void Olmo2_hf_folder_matches_the_reference_and_the_gguf()
    {
        using var dir = new TempDir();
        AssertHfAndGgufMatchTheReference(TinyModel.Random(new TinySpec("hf-olmo2", Arch: "olmo2", Heads: 4, KvHeads: 2, Seed: 39)), dir);
    }

    /// <summary>
    /// Phi-3's HF folder (qkv_proj, gate_up_proj) and its GGUF (attn_qkv, a double-width ffn_up): the
    /// reference's logits, with a sliding window of 7 over the 14-token prompt — and the context is not
    /// capped by the window (the window is attention's, not the cache's).
    /// </summary>
    [Test]
    public void Phi3_fused_tensors_and_its_window()
    {
        using var dir = new TempDir();
        AssertHfAndGgufMatchTheReference(TinyModel.Random(new TinySpec("hf-phi3", Arch: "phi3", Heads: 4, KvHeads: 2, Seed: 42, SlidingWindow: 7)),
            dir, lm => Assert.That((lm.Config.SlidingWindow, lm.ContextLength), Is.EqualTo((7, 256))));
    }

    /// <summary>
    /// LongRoPE (Phi-3 128k, Phi-3.5): GGUF (rope_factors_short/long tensors, original context and
    /// attention factor keys) and HF (rope_scaling longrope, original_max_position_embeddings, the
    /// attention factor derived) give the reference's logits — with the short factors for a context
    /// within the trained 64 tokens, the long ones beyond; the two tables give different logits.
    /// </summary>
    [TestCase(48)]
    [TestCase(200)]
    public void LongRope_picks_its_factors_by_context(int context)
    {
        using var dir = new TempDir();
        var spec = new TinySpec("hf-phi3-longrope", Arch: "phi3", Heads: 4, KvHeads: 2, Seed: 46, LongRopeOriginal: 64, LoadContext: context);
        AssertHfAndGgufMatchTheReference(TinyModel.Random(spec), dir, lm =>
        {
            Assert.That(lm.Config.RopeFreqFactors, Is.EqualTo(context > 64 ? spec.LongFactors : spec.ShortFactors));
            Assert.That(lm.Config.RopeAttentionFactor, Is.EqualTo(spec.LongRopeAttentionFactor).Within(1e-6f));
        });
        var other = TinyModel.Random(spec with { LoadContext = context > 64 ? 48 : 200 }).ReferenceLogits(Prompt);
        var these = TinyModel.Random(spec).ReferenceLogits(Prompt);
        Assert.That(other.Zip(these).Max(p => p.First.Zip(p.Second).Max(x => Math.Abs(x.First - x.Second))), Is.GreaterThan(1e-3), "the table matters");
    }

    /// <summary>
    /// Gemma 2 and 3 HF folders — norm weights stored as w where the norm multiplies by 1 + w, a
    /// pre_feedforward_layernorm, query_pre_attn_scalar, soft caps, Gemma 3's layer_types and
    /// rope_local_base_freq — and their GGUF files (1 + w stored, the family's defaults): one network,
    /// the reference's logits.
    /// </summary>
    [TestCase("gemma2")]
    [TestCase("gemma3")]
    public void Gemma_hf_folder_matches_the_reference_and_the_gguf(string arch)
    {
        using var dir = new TempDir();
        var spec = arch == "gemma2"
            ? new TinySpec("hf-gemma2", Arch: "gemma2", Heads: 4, KvHeads: 2, Tied: true, Seed: 62, SlidingWindow: 5, AttnSoftCap: 1.5f, FinalSoftCap: 3f)
            : new TinySpec("hf-gemma3", Arch: "gemma3", Layers: 6, Heads: 4, KvHeads: 1, HeadDimOverride: 32, Tied: true, Seed: 63, SlidingWindow: 4, RopeTheta: 1e6f);
        AssertHfAndGgufMatchTheReference(TinyModel.Random(spec), dir, lm =>
        {
            Assert.That(lm.Config.Layout, Is.EqualTo(Models.BlockLayout.Sandwich));
            Assert.That(Enumerable.Range(0, spec.Layers).Select(lm.Config.IsSliding), Is.EqualTo(Enumerable.Range(0, spec.Layers).Select(spec.IsSliding)));
            Assert.That((lm.Config.AttentionSoftCap, lm.Config.FinalLogitSoftCap), Is.EqualTo((spec.AttnSoftCap, spec.FinalSoftCap)));
        });
    }

    /// <summary>
    /// What each Gemma feature does to the logits, so that the parity tests above could not pass with it
    /// missing: without the window, the soft caps, the (1 + w) norms or GeGLU (SwiGLU in its place) the
    /// reference itself moves by far more than the tolerance.
    /// </summary>
    [Test]
    public void Each_gemma_feature_changes_the_reference_logits()
    {
        var spec = new TinySpec("gemma2-features", Arch: "gemma2", Heads: 4, KvHeads: 2, Tied: true, Seed: 60, SlidingWindow: 5, AttnSoftCap: 1.5f, FinalSoftCap: 3f);
        var full = TinyModel.Random(spec).ReferenceLogits(Prompt);
        double Distance(TinySpec other) => TinyModel.Random(other).ReferenceLogits(Prompt).Zip(full).Max(p => p.First.Zip(p.Second).Max(x => Math.Abs(x.First - x.Second)));
        double scale = full.SelectMany(r => r).Max(Math.Abs);
        Assert.That(Distance(spec with { SlidingWindow = 0 }) / scale, Is.GreaterThan(1e-3), "window");
        Assert.That(Distance(spec with { AttnSoftCap = 0 }) / scale, Is.GreaterThan(1e-3), "attention soft cap");
        Assert.That(Distance(spec with { FinalSoftCap = 0 }) / scale, Is.GreaterThan(1e-3), "final soft cap");
        Assert.That(Distance(spec with { Arch = "olmo2" }) / scale, Is.GreaterThan(1e-3), "sandwich norms and GeGLU");
    }

    /// <summary>A Qwen3 file without its q/k norm weights is refused, naming the missing tensor.</summary>
    [Test]
    public void Qwen3_without_its_head_norms_names_the_missing_tensor()
    {
        var model = TinyModel.Random(new TinySpec("qwen3-no-norms", Arch: "qwen3", Seed: 33));
        foreach (var layer in model.Layers)
            layer.QNorm = layer.KNorm = null;
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        var e = Assert.Throws<Engine.Formats.ModelFormatException>(() => LanguageModel.Load(path, new ModelOptions { Threads = 1 }))!;
        Assert.That(e.Message, Does.Contain("blk.0.attn_q_norm.weight").And.Contain("missing"));
    }

    /// <summary>
    /// Gemma files that lack what the family needs are refused by name: a GGUF without a layer's
    /// post-FFN norm, an HF config whose layer_types has a value that is no layer type, a Gemma 3 GGUF
    /// without its window, a LongRoPE file with only one of its two tables.
    /// </summary>
    [Test]
    public void Gemma_and_longrope_files_missing_a_part_name_it()
    {
        using var dir = new TempDir();
        var model = TinyModel.Random(new TinySpec("gemma2-no-post-norm", Arch: "gemma2", Tied: true, Seed: 64, SlidingWindow: 4));
        string path = WithoutTensor(model.WriteGguf(dir.File("good.gguf")), "blk.1.ffn_post_norm.weight", dir.File("g.gguf"));
        var e = Assert.Throws<Engine.Formats.ModelFormatException>(() => LanguageModel.Load(path, new ModelOptions { Threads = 1 }))!;
        Assert.That(e.Message, Does.Contain("blk.1.ffn_post_norm.weight").And.Contain("missing"));

        var gemma3 = TinyModel.Random(new TinySpec("gemma3-bad", Arch: "gemma3", Tied: true, Seed: 65, SlidingWindow: 4, Layers: 2, HeadDimOverride: 16));
        string hf = gemma3.WriteHfFolder(dir.File("hf3"));
        string config = File.ReadAllText(Path.Combine(hf, "config.json")).Replace("\"sliding_attention\"", "\"chunked_attention\"");
        File.WriteAllText(Path.Combine(hf, "config.json"), config);
        e = Assert.Throws<Engine.Formats.ModelFormatException>(() => LanguageModel.Load(hf, new ModelOptions { Threads = 1 }))!;
        Assert.That(e.Message, Does.Contain("layer_types[").And.Contain("chunked_attention"));

        string noWindow = WithoutKey(gemma3.WriteGguf(dir.File("g3.gguf")), "gemma3.attention.sliding_window", dir.File("g3-no-window.gguf"));
        e = Assert.Throws<Engine.Formats.ModelFormatException>(() => LanguageModel.Load(noWindow, new ModelOptions { Threads = 1 }))!;
        Assert.That(e.Message, Does.Contain("gemma3.attention.sliding_window"));

        var longRope = TinyModel.Random(new TinySpec("phi3-half-longrope", Arch: "phi3", Seed: 66, LongRopeOriginal: 64));
        string half = WithoutTensor(longRope.WriteGguf(dir.File("lr.gguf")), "rope_factors_long.weight", dir.File("lr-half.gguf"));
        e = Assert.Throws<Engine.Formats.ModelFormatException>(() => LanguageModel.Load(half, new ModelOptions { Threads = 1 }))!;
        Assert.That(e.Message, Does.Contain("rope_factors_long.weight").And.Contain("both"));
    }

    /// <summary>A copy of a GGUF file without one tensor (metadata and the other tensors as they were).</summary>
    internal static string WithoutTensor(string path, string tensor, string output) => Rewrite(path, output, dropTensor: tensor);

    /// <summary>A copy of a GGUF file without one metadata key.</summary>
    internal static string WithoutKey(string path, string key, string output) => Rewrite(path, output, dropKey: key);

    /// <summary>A copy of a GGUF file with metadata keys added (or replaced).</summary>
    internal static string WithKeys(string path, string output, params (string Key, Engine.Formats.Gguf.GgufValue Value)[] keys) =>
        Rewrite(path, output, addKeys: keys);

    private static unsafe string Rewrite(string path, string output, string? dropTensor = null, string? dropKey = null,
        (string Key, Engine.Formats.Gguf.GgufValue Value)[]? addKeys = null)
    {
        using var file = Engine.Formats.Gguf.GgufFile.Open(path);
        var w = new Engine.Formats.Gguf.GgufWriter();
        var added = addKeys ?? [];
        foreach (string key in file.Metadata.Keys.Where(k => k != dropKey && !added.Any(a => a.Key == k)))
            w.Add(key, file.Metadata[key]);
        foreach (var (key, value) in added)
            w.Add(key, value);
        foreach (var t in file.Tensors.Where(t => t.Name != dropTensor))
            w.AddTensor(t.Name, t.Type, [.. t.Dims], new ReadOnlySpan<byte>(file.TensorData(t), checked((int)t.ByteSize)).ToArray());
        w.Write(output);
        return output;
    }

    [Test]
    public void Qwen2_hf_folder_with_biases_matches_the_reference()
    {
        var model = TinyModel.Random(new TinySpec("hf-qwen2", Arch: "qwen2", QkvBias: true, Heads: 4, KvHeads: 2, Tied: true, Seed: 12));
        using var dir = new TempDir();
        using var hf = LanguageModel.Load(model.WriteHfFolder(dir.File("hf")), new ModelOptions { Threads = 1 });
        AssertLogitsMatch(hf, model.ReferenceLogits(Prompt));
    }

    [Test]
    public void Batched_prefill_split_into_passes_equals_one_token_at_a_time()
    {
        var model = TinyModel.Random(new TinySpec("split", Heads: 4, KvHeads: 2, Seed: 13));
        using var dir = new TempDir();
        // MaxBatch 3 forces the 14-token prompt through five passes.
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2, MaxBatch = 3 });
        AssertLogitsMatch(lm, model.ReferenceLogits(Prompt));
    }

    [Test]
    public void Llama3_rope_scaling_from_gguf_rope_freqs_and_from_hf_rope_scaling()
    {
        // head dim 16 → wavelengths from 6 to 2·10⁴ positions; with an original context of 64 and
        // factors (1, 4) some pairs are kept, some blended and some divided by the factor.
        var spec = new TinySpec("llama3-rope", Seed: 14, Llama3: new Llama3Rope(4f, 1f, 4f, 64));
        var model = TinyModel.Random(spec);
        int[] prompt = Enumerable.Range(0, 60).Select(i => (i * 37 + 11) % 300).ToArray();
        var reference = model.Reference(prompt).Logits;
        var unscaled = TinyModel.Random(spec with { Llama3 = null }).Reference(prompt).Logits;
        double scale = reference.SelectMany(r => r).Max(Math.Abs);
        Assert.That(Enumerable.Range(0, reference[^1].Length).Max(i => Math.Abs(reference[^1][i] - unscaled[^1][i])) / scale,
            Is.GreaterThan(100 * Tolerance), "the scaling must matter at these positions, or this test proves nothing");

        using var dir = new TempDir();
        using var gguf = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        using var hf = LanguageModel.Load(model.WriteHfFolder(dir.File("hf")), new ModelOptions { Threads = 2 });
        foreach (var lm in new[] { gguf, hf })
        {
            using var cache = lm.Network.CreateKvCache(128);
            using var seq = cache.CreateSequence();
            var logits = new float[lm.Config.VocabSize];
            lm.Network.Forward(seq, prompt, Enumerable.Range(0, prompt.Length).ToArray(), AttentionMask.Causal, [prompt.Length - 1], logits);
            AssertRow(logits, reference[^1], scale, lm.Path);
        }
    }

    /// <summary>
    /// Attention over many KV blocks, for head sizes that take each path of the kernel (16 and 80: the
    /// 16-wide value sums, 64: the 64-wide ones, 8: the scalar fallback) and block sizes that do (16)
    /// and do not (48) split into whole groups of 32 slots; batched and one token at a time.
    /// </summary>
    [TestCase(16, 16)]
    [TestCase(64, 32)]
    [TestCase(64, 16)]
    [TestCase(80, 48)]
    [TestCase(8, 32)]
    public void Attention_over_many_blocks_matches_the_reference(int headDim, int blockSize)
    {
        var model = TinyModel.Random(new TinySpec($"attention-{headDim}", Dim: 2 * headDim, Heads: 2, KvHeads: 1, Layers: 1, Ffn: 64, Seed: 21));
        int[] prompt = Enumerable.Range(0, 75).Select(i => (i * 53 + 7) % 320).ToArray();
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        AssertLogitsMatch(lm, model.Reference(prompt).Logits, prompt: prompt, blockSize: blockSize);
    }

    [Test]
    public void Hidden_states_are_the_normed_final_residual_that_the_head_reads()
    {
        var model = TinyModel.Random(new TinySpec("hidden", Tied: true, Seed: 15));
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        var (referenceLogits, referenceHidden) = model.Reference(Prompt);
        int dim = lm.Config.Dim, vocab = lm.Config.VocabSize;
        int[] rows = [13, 2, 7];
        var logits = new float[rows.Length * vocab];
        var hidden = new float[rows.Length * dim];
        using var cache = lm.Network.CreateKvCache(64);
        using var seq = cache.CreateSequence();
        lm.Network.Forward(seq, Prompt, Enumerable.Range(0, Prompt.Length).ToArray(), AttentionMask.Causal, rows, logits, hidden);
        for (int k = 0; k < rows.Length; k++)
        {
            AssertRow(hidden.AsSpan(k * dim, dim), referenceHidden[rows[k]], referenceHidden[rows[k]].Max(Math.Abs), $"hidden of row {rows[k]}");
            AssertRow(logits.AsSpan(k * vocab, vocab), referenceLogits[rows[k]], referenceLogits.SelectMany(r => r).Max(Math.Abs), $"logits of row {rows[k]} (rows asked out of order)");
        }
    }

    /// <summary>Runs the prompt as one batch (all rows out) and token by token; both must match the reference.</summary>
    internal static void AssertLogitsMatch(LanguageModel lm, double[][] reference, double tolerance = Tolerance, int[]? prompt = null, int blockSize = 32)
    {
        prompt ??= Prompt;
        int n = prompt.Length, vocab = lm.Config.VocabSize;
        double scale = reference.SelectMany(r => r).Max(Math.Abs);
        Assert.That(scale, Is.GreaterThan(0.1), "reference logits are degenerate; the test would prove nothing");

        using var cache = lm.Network.CreateKvCache(2 * n + 2 * blockSize, blockSize); // room for both sequences
        using var batch = cache.CreateSequence();
        var logits = new float[n * vocab];
        lm.Network.Forward(batch, prompt, Enumerable.Range(0, n).ToArray(), AttentionMask.Causal, Enumerable.Range(0, n).ToArray(), logits);
        for (int t = 0; t < n; t++)
            AssertRow(logits.AsSpan(t * vocab, vocab), reference[t], scale, $"batched row {t}", tolerance);

        using var single = cache.CreateSequence();
        var one = new float[vocab];
        for (int t = 0; t < n; t++)
        {
            lm.Network.Forward(single, [prompt[t]], [t], AttentionMask.Causal, [0], one);
            AssertRow(one, reference[t], scale, $"step {t}", tolerance);
        }
    }

    /// <summary>Logits of every row of <paramref name="prompt"/>, from one pass over a fresh sequence.</summary>
    internal static float[] PromptLogits(LanguageModel lm, int[] prompt, bool batchInvariant)
    {
        int n = prompt.Length;
        using var cache = lm.Network.CreateKvCache(n + 32);
        using var seq = cache.CreateSequence();
        var logits = new float[n * lm.Config.VocabSize];
        lm.Network.Forward(seq, prompt, Enumerable.Range(0, n).ToArray(), AttentionMask.Causal, Enumerable.Range(0, n).ToArray(), logits, batchInvariant: batchInvariant);
        return logits;
    }

    /// <summary>
    /// Each token of <paramref name="prompt"/> decoded alone, in order, under batch-invariant arithmetic gives
    /// the row <paramref name="batched"/> (a one-pass, batch-invariant run of the same prompt) holds, bit for bit.
    /// </summary>
    internal static void AssertSingleStepsEqual(LanguageModel lm, int[] prompt, float[] batched)
    {
        int vocab = lm.Config.VocabSize;
        using var cache = lm.Network.CreateKvCache(prompt.Length + 32);
        using var single = cache.CreateSequence();
        var one = new float[vocab];
        for (int t = 0; t < prompt.Length; t++)
        {
            lm.Network.Forward(single, [prompt[t]], [t], AttentionMask.Causal, [0], one, batchInvariant: true);
            Assert.That(one, Is.EqualTo(batched.AsSpan(t * vocab, vocab).ToArray()), $"row {t}");
        }
    }

    internal static void AssertRow(ReadOnlySpan<float> actual, double[] expected, double scale, string what, double tolerance = Tolerance)
    {
        double worst = 0;
        int at = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs(actual[i] - expected[i]);
            if (d > worst)
            {
                worst = d;
                at = i;
            }
        }
        Assert.That(worst / scale, Is.LessThanOrEqualTo(tolerance),
            $"{what}: logit {at} is {actual[at]}, reference {expected[at]} (scale {scale:G3})");
    }
}
