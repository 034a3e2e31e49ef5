using Engine.Api;
using Engine.Backends;
using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Models;
using Engine.Sampling;
using Engine.Speculative;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// BlockFFN (Song et al., 2025): the model gives the double-precision reference's logits; the chunk-sparse
/// FFN equals the dense computation of the same layer bit for bit (and a row's result does not depend on
/// its chunk, so speculative greedy equals plain greedy); the sparsity counters count what the paper
/// defines; files whose blocks do not add up are refused by name.
/// </summary>
public class BlockFfnTests
{
    // 12 blocks of 32 units (quantized rows need whole 32-value blocks), MiniCPM's multipliers switched on
    private static readonly TinySpec Spec = new("blockffn", Arch: "blockffn", Heads: 4, KvHeads: 2, Experts: 12, Ffn: 32, Seed: 85,
        EmbeddingScale: 12f, ResidualScale: 0.22f, LogitScale: 4f);

    public static IEnumerable<TinySpec> Specs() => [Spec, Spec with { Name = "blockffn-q8_0", WeightType = GgmlType.Q8_0, Seed = 86 }];

    /// <remarks>
    /// Float32 against double: 2e-5 of the logits' scale, as <see cref="ModelParityTests"/>. The int8
    /// activations of quantized weights are not compared with the reference: the router's RMSNorm over
    /// mostly-zero scores amplifies their errors near a block's on/off boundary without bound (see
    /// <see cref="ModelParityTests.Gguf_model_logits_match_the_reference_forward"/>); that path is checked
    /// against the dense computation bit for bit below.
    /// </remarks>
    [TestCaseSource(nameof(Specs))]
    public void Logits_match_the_reference_forward(TinySpec spec)
    {
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        var reference = model.ReferenceLogits(ModelParityTests.Prompt);
        using (var exact = LanguageModel.Load(path, new ModelOptions { Backend = new Backends.Cpu.CpuBackend(2, quantizeActivations: false) }))
        {
            Assert.That(exact.Config.BlockFfn, Is.EqualTo(new BlockFfnConfig(12, 32)));
            ModelParityTests.AssertLogitsMatch(exact, reference);
        }
        if (spec.WeightType != GgmlType.F32)
            return;
        using var fast = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
        ModelParityTests.AssertLogitsMatch(fast, reference);
    }

    /// <summary>
    /// The test model is sparse the way BlockFFN is: most (token, block) scores are 0, yet every token has
    /// blocks on and a chunk of the prompt leaves some blocks off for all its tokens — so the checks above
    /// and below run the sparse path, not a degenerate one.
    /// </summary>
    [Test]
    public void The_test_model_is_token_and_chunk_sparse()
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(Spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 1 });
        Run(lm, ModelParityTests.Prompt, batchInvariant: false);
        var sparsity = lm.Network.BlockSparsity!;
        for (int l = 0; l < sparsity.Layers; l++)
        {
            Assert.That(sparsity.TokenLevel(l), Is.InRange(0.3, 0.95), $"layer {l}: {sparsity.Describe()}");
            Assert.That(sparsity.ChunkLevel(l), Is.InRange(0.05, 0.95), $"layer {l}: {sparsity.Describe()}");
        }
    }

    /// <summary>
    /// The chunk-sparse FFN against the dense computation of the same layer (every block computed, the off
    /// ones weighted by 0): the same logits, bit for bit, for a whole prompt in one pass and token by token,
    /// with the int8 activations of quantized weights too.
    /// </summary>
    [TestCaseSource(nameof(Specs))]
    public void Sparse_equals_dense_bit_for_bit(TinySpec spec)
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        foreach (bool invariant in new[] { true, false })
        {
            lm.Network.DenseBlockFfn = false;
            var sparse = Run(lm, ModelParityTests.Prompt, invariant);
            lm.Network.DenseBlockFfn = true;
            var dense = Run(lm, ModelParityTests.Prompt, invariant);
            Assert.That(sparse, Is.EqualTo(dense), $"batch-invariant: {invariant}");
        }
        lm.Network.DenseBlockFfn = false;
    }

    /// <summary>A prompt in one pass (chunks of 14 rows) equals its tokens decoded one at a time, bit for bit, under batch-invariant arithmetic.</summary>
    [Test]
    public void A_chunk_gives_each_row_what_it_gets_alone()
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(Spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        int[] prompt = ModelParityTests.Prompt;
        ModelParityTests.AssertSingleStepsEqual(lm, prompt, Run(lm, prompt, batchInvariant: true));
    }

    [Test]
    public void Speculative_greedy_equals_plain_greedy()
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(Spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        int[] prompt = [256, 10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30];
        var plain = SpeculativeTests.Plain(lm, prompt, 40);
        using var decoder = new SpeculativeDecoder(lm, DraftSources.Create("lookup", lm), new SpeculativeOptions { Adaptive = false });
        var speculative = decoder.Generate(prompt, new GenerationOptions { MaxTokens = 40, Sampling = SamplingOptions.Greedy }).ToList();
        Assert.That(speculative, Is.EqualTo(plain));
        Assert.That(decoder.Stats.DraftedTokens, Is.GreaterThan(0));
    }

    /// <summary>TLS and CLS by their definitions on scores laid out by hand: 4 blocks, 16 rows in one pass.</summary>
    [Test]
    public void Sparsity_counts_follow_the_definitions()
    {
        var stats = new BlockSparsity(layers: 1, blocks: 4);
        var scores = new float[16 * 4];
        // rows 0-7 use blocks {0} and {1} alternately; rows 8-15 use block 2 each and block 3 in row 15
        for (int t = 0; t < 8; t++)
            scores[t * 4 + t % 2] = 1f;
        for (int t = 8; t < 16; t++)
            scores[t * 4 + 2] = 0.5f;
        scores[15 * 4 + 3] = 2f;
        stats.Record(0, scores, 16, 4);
        Assert.That(stats.TokenLevel(0), Is.EqualTo(1 - 17.0 / 64).Within(1e-12), "17 of 64 (token, block) pairs on");
        Assert.That(stats.ChunkLevel(0), Is.EqualTo(1 - (2 + 2) / 8.0).Within(1e-12), "chunks of 8 use blocks {0, 1} and {2, 3}");
        Assert.That(stats.PassLevel(0), Is.EqualTo(0).Within(1e-12), "the 16-row pass uses all 4 blocks");
        Assert.That(stats.RowsPerPass(0), Is.EqualTo(16));
    }

    /// <summary>
    /// BlockFFN's public checkpoints: MiniCPM with multi-head latent attention (q through a low rank, one
    /// rotated key part shared by the heads, values narrower than keys) and blocks as 3-D parameters, no
    /// router bias. The HF folder (MiniCPMForCausalLM, ffn_type "block", attention_type "mla") and our GGUF
    /// layout of the same network give the reference's logits (float32 against double: 2e-5 of the scale).
    /// </summary>
    [TestCase(32)]
    [TestCase(0)]
    public void Mla_checkpoints_load_from_hf_and_gguf(int qLora)
    {
        var spec = new TinySpec("blockffn-mla", Arch: "blockffn", Heads: 4, KvHeads: 4, HeadDimOverride: 32, QLora: qLora, KvLora: 32, RopeDim: 16,
            VDim: 16, Experts: 12, Ffn: 32, Seed: 89, EmbeddingScale: 12f, ResidualScale: 0.22f, LogitScale: 4f, RouterBias: false);
        using var dir = new TempDir();
        ModelParityTests.AssertHfAndGgufMatchTheReference(TinyModel.Random(spec), dir, lm =>
        {
            Assert.That(lm.Config.Mla, Is.EqualTo(new MlaConfig(qLora, 32, 16, 16, 16)));
            Assert.That((lm.Config.HeadDim, lm.Config.RopeDims, lm.Config.AttentionOutputDim), Is.EqualTo((32, 16, 64)));
        });
    }

    /// <summary>MLA's rearranged rows keep batch invariance: a prompt in one pass equals its tokens one at a time, bit for bit.</summary>
    [Test]
    public void Mla_chunk_rows_equal_single_rows()
    {
        var spec = new TinySpec("blockffn-mla-batch", Arch: "blockffn", Heads: 4, KvHeads: 4, HeadDimOverride: 32, QLora: 32, KvLora: 32, RopeDim: 16,
            VDim: 16, Experts: 12, Ffn: 32, Seed: 90);
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        int[] prompt = ModelParityTests.Prompt;
        ModelParityTests.AssertSingleStepsEqual(lm, prompt, Run(lm, prompt, batchInvariant: true));
    }

    [Test]
    public void Minicpm_variants_other_than_blockffn_are_refused_by_field()
    {
        var spec = new TinySpec("blockffn-hf", Arch: "blockffn", Heads: 4, KvHeads: 4, Experts: 12, Ffn: 32, Seed: 91, RouterBias: false);
        using var dir = new TempDir();
        string hf = TinyModel.Random(spec).WriteHfFolder(dir.File("hf"));
        string config = Path.Combine(hf, "config.json");
        string text = File.ReadAllText(config);
        File.WriteAllText(config, text.Replace("\"ffn_type\":\"block\"", "\"ffn_type\":\"block_linear\""));
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(hf, new ModelOptions { Threads = 1 }).Dispose())!;
        Assert.That(e.Message, Does.Contain("ffn_type").And.Contain("block_linear"));
        File.WriteAllText(config, text.Replace("\"norm_after_router\":\"rms\"", "\"norm_after_router\":\"softmax\""));
        e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(hf, new ModelOptions { Threads = 1 }).Dispose())!;
        Assert.That(e.Message, Does.Contain("norm_after_router").And.Contain("softmax"));
    }

    [Test]
    public void Blocks_that_do_not_divide_the_intermediate_size_are_refused_by_key()
    {
        using var dir = new TempDir();
        string good = TinyModel.Random(Spec).WriteGguf(dir.File("good.gguf"));
        string bad = ModelParityTests.WithKeys(good, dir.File("bad.gguf"), ("blockffn.expert_feed_forward_length", GgufValue.From(40u)));
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(bad, new ModelOptions { Threads = 1 }).Dispose())!;
        Assert.That(e.Message, Does.Contain("blockffn.expert_feed_forward_length").And.Contain("40").And.Contain("384"));

        string count = ModelParityTests.WithKeys(good, dir.File("count.gguf"), ("blockffn.expert_count", GgufValue.From(10u)));
        e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(count, new ModelOptions { Threads = 1 }).Dispose())!;
        Assert.That(e.Message, Does.Contain("blockffn.expert_count").And.Contain("10"));

        string noNorm = ModelParityTests.WithoutTensor(good, "blk.1.ffn_router_norm.weight", dir.File("no-norm.gguf"));
        e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(noNorm, new ModelOptions { Threads = 1 }).Dispose())!;
        Assert.That(e.Message, Does.Contain("blk.1.ffn_router_norm.weight").And.Contain("missing"));
    }

    /// <summary>Logits of every prompt row, from one pass.</summary>
    private static float[] Run(LanguageModel lm, int[] prompt, bool batchInvariant) => ModelParityTests.PromptLogits(lm, prompt, batchInvariant);
}
