using Engine.Api;
using Engine.Backends;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// Random-weight models built here go through the whole engine (file writer, loader, tokenizer,
/// backend, KV cache) and must give the logits of <see cref="TinyModel.ReferenceLogits"/>.
/// </summary>
/// <remarks>
/// Tolerance: the engine computes in float32, the reference in double. With dot products of at most
/// 96 terms, float32 rounding (2^-24 ≈ 6e-8 relative per operation) accumulates to about 1e-6 of the
/// logits' scale through the 2-3 layers of these models; we allow 2e-5 of the largest |logit| (≈20×
/// that). Any real mistake — a wrong RoPE pairing, a missed bias, a GQA head mapped to the wrong KV head,
/// a mask off by one — moves logits by a sizeable fraction of their scale and fails by orders of magnitude.
/// </remarks>
public class ModelParityTests
{
    private const double Tolerance = 2e-5;

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
    }

    private static readonly int[] Prompt = [256, 10, 200, 33, 7, 7, 301, 5, 90, 120, 64, 3, 250, 17];

    [TestCaseSource(nameof(Specs))]
    public void Gguf_model_logits_match_the_reference_forward(TinySpec spec)
    {
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        Assert.That(lm.Network.TiedOutput, Is.EqualTo(spec.Tied));
        AssertLogitsMatch(lm, model.ReferenceLogits(Prompt));
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

    /// <summary>Runs the prompt as one batch (all rows out) and token by token; both must match the reference.</summary>
    internal static void AssertLogitsMatch(LanguageModel lm, double[][] reference)
    {
        int n = Prompt.Length, vocab = lm.Config.VocabSize;
        double scale = reference.SelectMany(r => r).Max(Math.Abs);
        Assert.That(scale, Is.GreaterThan(0.1), "reference logits are degenerate; the test would prove nothing");

        using var cache = lm.Network.CreateKvCache(64);
        using var batch = cache.CreateSequence();
        var logits = new float[n * vocab];
        lm.Network.Forward(batch, Prompt, Enumerable.Range(0, n).ToArray(), AttentionMask.Causal, Enumerable.Range(0, n).ToArray(), logits);
        for (int t = 0; t < n; t++)
            AssertRow(logits.AsSpan(t * vocab, vocab), reference[t], scale, $"batched row {t}");

        using var single = cache.CreateSequence();
        var one = new float[vocab];
        for (int t = 0; t < n; t++)
        {
            lm.Network.Forward(single, [Prompt[t]], [t], AttentionMask.Causal, [0], one);
            AssertRow(one, reference[t], scale, $"step {t}");
        }
    }

    internal static void AssertRow(ReadOnlySpan<float> actual, double[] expected, double scale, string what)
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
        Assert.That(worst / scale, Is.LessThanOrEqualTo(Tolerance),
            $"{what}: logit {at} is {actual[at]}, reference {expected[at]} (scale {scale:G3})");
    }
}
