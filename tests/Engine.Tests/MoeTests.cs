using Engine.Api;
using Engine.Backends;
using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Sampling;
using Engine.Speculative;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): HF folders and GGUF files of the same network give
/// the double-precision reference's logits (the GGUF cases of every spec are in
/// <see cref="ModelParityTests.Specs"/>, and the GPU suite runs those too); routing really routes; a token's
/// result does not depend on its batch (so speculative greedy equals plain greedy); and files whose
/// experts do not add up are refused by name.
/// </summary>
public class MoeTests
{
    private static readonly TinySpec Mixtral = new("moe-mixtral", Heads: 4, KvHeads: 2, Experts: 4, ExpertsUsed: 2, Seed: 80);
    private static readonly TinySpec Qwen2Moe = new("moe-qwen2", Arch: "qwen2moe", Heads: 4, KvHeads: 2, QkvBias: true, Experts: 6, ExpertsUsed: 2,
        SharedFfn: 64, Seed: 81);
    private static readonly TinySpec Qwen3Moe = new("moe-qwen3", Arch: "qwen3moe", Heads: 4, KvHeads: 2, HeadDimOverride: 32, Experts: 8, ExpertsUsed: 3,
        Seed: 82);

    public static IEnumerable<TinySpec> Specs() => [Mixtral, Qwen2Moe, Qwen3Moe];

    /// <summary>HF names (block_sparse_moe.experts.E.w1/w2/w3, mlp.experts.E.*_proj, mlp.shared_expert*) and config fields read as the GGUF's.</summary>
    [TestCaseSource(nameof(Specs))]
    public void Hf_folder_and_gguf_give_the_reference_logits(TinySpec spec)
    {
        using var dir = new TempDir();
        string gguf = ModelParityTests.AssertHfAndGgufMatchTheReference(TinyModel.Random(spec), dir, lm =>
        {
            var moe = lm.Config.Moe!;
            Assert.That((moe.Experts, moe.Used, moe.ExpertFfn, moe.SharedFfn, moe.NormalizeWeights),
                Is.EqualTo((spec.Experts, spec.ExpertsUsed, spec.Ffn, spec.SharedFfn, spec.NormalizeExperts)));
        });
        Assert.That(File.Exists(gguf));
    }

    /// <summary>
    /// The test models must exercise routing: across the prompt's tokens and the layers the engine picks
    /// different experts (read through the trace of the router's logits), and using all experts instead of
    /// the top-k changes the logits well beyond the parity tolerance — so the parity tests check the choice.
    /// </summary>
    [Test]
    public void Tokens_are_routed_to_different_experts_and_the_choice_matters()
    {
        using var dir = new TempDir();
        var model = TinyModel.Random(Mixtral);
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 1 });
        var firstChoices = new HashSet<int>();
        lm.Network.Trace = (name, layer, activation) =>
        {
            if (name != "ffn_moe_logits")
                return;
            var logits = new float[activation.Size];
            lm.Backend.Download(activation, logits);
            for (int t = 0; t < activation.Rows; t++)
            {
                var row = logits.AsSpan(t * activation.Cols, activation.Cols);
                firstChoices.Add(row.IndexOf(TensorPrimitivesMax(row)));
            }
        };
        using var cache = lm.Network.CreateKvCache(32);
        using var seq = cache.CreateSequence();
        int n = ModelParityTests.Prompt.Length;
        lm.Network.Forward(seq, ModelParityTests.Prompt, Enumerable.Range(0, n).ToArray(), AttentionMask.Causal, [n - 1], new float[lm.Config.VocabSize]);
        Assert.That(firstChoices, Has.Count.GreaterThanOrEqualTo(3), "the prompt's tokens prefer different experts");

        var topK = model.ReferenceLogits(ModelParityTests.Prompt);
        var dense = TinyModel.Random(Mixtral with { ExpertsUsed = Mixtral.Experts }).ReferenceLogits(ModelParityTests.Prompt);
        double scale = topK.SelectMany(r => r).Max(Math.Abs);
        double moved = topK.Zip(dense).Max(p => p.First.Zip(p.Second).Max(x => Math.Abs(x.First - x.Second)));
        Assert.That(moved, Is.GreaterThan(1e-2 * scale), "top-2 of 4 and all 4 experts are different networks");
    }

    private static float TensorPrimitivesMax(ReadOnlySpan<float> row) => System.Numerics.Tensors.TensorPrimitives.Max(row);

    /// <summary>
    /// Under batch-invariant arithmetic a prompt's rows, computed in one pass (tokens grouped by expert,
    /// each expert's matrices over its rows), equal the same tokens decoded one at a time, bit for bit.
    /// </summary>
    [TestCaseSource(nameof(Specs))]
    public void A_batched_pass_equals_one_token_at_a_time_bit_for_bit(TinySpec spec)
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        int[] prompt = ModelParityTests.Prompt;
        ModelParityTests.AssertSingleStepsEqual(lm, prompt, ModelParityTests.PromptLogits(lm, prompt, batchInvariant: true));
    }

    /// <summary>Speculative greedy decoding (prompt lookup, draft verified in one batched pass) gives plain greedy output on a MoE model.</summary>
    [Test]
    public void Speculative_greedy_equals_plain_greedy()
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(Qwen2Moe).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        int[] prompt = [256, 10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30];
        var plain = SpeculativeTests.Plain(lm, prompt, 40);
        using var decoder = new SpeculativeDecoder(lm, DraftSources.Create("lookup", lm), new SpeculativeOptions { Adaptive = false });
        var speculative = decoder.Generate(prompt, new GenerationOptions { MaxTokens = 40, Sampling = SamplingOptions.Greedy }).ToList();
        Assert.That(speculative, Is.EqualTo(plain));
        Assert.That(decoder.Stats.DraftedTokens, Is.GreaterThan(0), "the lookup drafted something, so verification ran batched");
    }

    // ---- bad files ----

    private static string Load(string path)
    {
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(path, new ModelOptions { Threads = 1 }).Dispose())!;
        return e.Message;
    }

    [Test]
    public void More_experts_per_token_than_experts_is_refused_by_key()
    {
        using var dir = new TempDir();
        string path = TinyModel.Random(Mixtral with { ExpertsUsed = 5 }).WriteGguf(dir.File("m.gguf"));
        Assert.That(Load(path), Does.Contain("llama.expert_used_count").And.Contain("5"));
        string hf = TinyModel.Random(Qwen3Moe with { ExpertsUsed = 9 }).WriteHfFolder(dir.File("hf"));
        Assert.That(Load(hf), Does.Contain("num_experts_per_tok").And.Contain("9"));
    }

    [Test]
    public void An_expert_count_that_disagrees_with_the_tensors_names_the_tensor()
    {
        using var dir = new TempDir();
        string good = TinyModel.Random(Mixtral).WriteGguf(dir.File("good.gguf"));
        string five = ModelParityTests.WithKeys(good, dir.File("five.gguf"), ("llama.expert_count", GgufValue.From(5u)));
        Assert.That(Load(five), Does.Contain("blk.0.ffn_gate_inp.weight").And.Contain("[64, 4]").And.Contain("[64, 5]"));

        // the router agrees but the stacked experts hold one expert too few
        string separate = TinyModel.Random(Mixtral with { SeparateExperts = true }).WriteGguf(dir.File("separate.gguf"));
        string missing = ModelParityTests.WithoutTensor(separate, "blk.1.ffn_up.3.weight", dir.File("missing.gguf"));
        Assert.That(Load(missing), Does.Contain("blk.1.ffn_up.3.weight").And.Contain("missing"));
    }

    [Test]
    public void A_router_of_the_wrong_width_and_missing_counts_are_named()
    {
        using var dir = new TempDir();
        // a Qwen2-MoE file without its experts-per-token key, and one whose expert width is wrong
        string good = TinyModel.Random(Qwen2Moe).WriteGguf(dir.File("good.gguf"));
        string noUsed = ModelParityTests.WithoutKey(good, "qwen2moe.expert_used_count", dir.File("no-used.gguf"));
        Assert.That(Load(noUsed), Does.Contain("qwen2moe.expert_used_count"));
        string wide = ModelParityTests.WithKeys(good, dir.File("wide.gguf"), ("qwen2moe.expert_feed_forward_length", GgufValue.From(128u)));
        Assert.That(Load(wide), Does.Contain("blk.0.ffn_gate_exps.weight").And.Contain("[64, 96, 6]").And.Contain("[64, 128, 6]"));

        // an HF router of 4 experts where the config says 8
        string hf = TinyModel.Random(Mixtral).WriteHfFolder(dir.File("hf"));
        string config = File.ReadAllText(Path.Combine(hf, "config.json"));
        Assert.That(config, Does.Contain("\"num_local_experts\":4"));
        File.WriteAllText(Path.Combine(hf, "config.json"), config.Replace("\"num_local_experts\":4", "\"num_local_experts\":8"));
        Assert.That(Load(hf), Does.Contain("ffn_gate_inp").And.Contain("[64, 4]").And.Contain("[64, 8]"));
    }

    [Test]
    public void Experts_on_an_architecture_without_them_are_refused()
    {
        using var dir = new TempDir();
        string gemma = TinyModel.Random(new TinySpec("gemma-experts", Arch: "gemma2", Tied: true, Seed: 83, SlidingWindow: 4)).WriteGguf(dir.File("g.gguf"));
        string bad = ModelParityTests.WithKeys(gemma, dir.File("bad.gguf"), ("gemma2.expert_count", GgufValue.From(4u)));
        Assert.That(Load(bad), Does.Contain("gemma2.expert_count").And.Contain("not gemma2"));
    }
}
