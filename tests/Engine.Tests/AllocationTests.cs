using Engine.Api;
using Engine.Sampling;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// The decode loop allocates nothing on the managed heap per token: every buffer (activations, logits,
/// sampler candidates, KV blocks, worker-pool work items) is made once and reused. Measured with
/// <see cref="GC.GetTotalAllocatedBytes(bool)"/> (precise), which counts every thread, so the worker
/// pool is covered too. NUnit runs these tests alone (no parallel fixtures in this assembly).
/// </summary>
[NonParallelizable]
public class AllocationTests
{
    // Tokens generated before measuring: the first tokens allocate the lazily made buffers (sampler
    // candidates, scratch) and KV blocks; the measured stretch then covers many more tokens.
    private const int Warmup = 24, Measured = 200;

    // A per-token allocation of even one object (24 bytes) over 200 tokens would be ≥ 4800 bytes; the
    // allowance only absorbs one-off runtime bookkeeping (e.g. a timer or thread-pool object that the
    // runtime itself creates while the test runs), so it cannot hide a per-token allocation.
    private const long Allowance = 1024;

    [TestCase(1)]
    [TestCase(2)]
    public void Generating_with_the_sampler_chain_allocates_nothing_per_token(int threads)
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = threads });
        AssertNoAllocationPerToken(lm, new SamplingOptions { Temperature = 0.9f, TopK = 40, TopP = 0.95f, Seed = 7 });
    }

    /// <summary>The research samplers keep their state in buffers made once: penalties, DRY, typical, top-nσ, XTC, Mirostat.</summary>
    [TestCase(false)]
    [TestCase(true)]
    public void Generating_with_the_research_samplers_allocates_nothing_per_token(bool mirostat)
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        var sampling = new SamplingOptions
        {
            Temperature = 0.9f, Seed = 11, RepeatPenalty = 1.1f, FrequencyPenalty = 0.1f, PresencePenalty = 0.1f, DryMultiplier = 0.8f,
            LogitBias = new Dictionary<int, float> { [13] = -1f },
        };
        sampling = mirostat ? sampling with { Mirostat = 2 } : sampling with { TypicalP = 0.95f, TopNSigma = 2f, XtcProbability = 0.3f };
        AssertNoAllocationPerToken(lm, sampling);
    }

    [TestCase(GgmlType.Q8_0)]
    [TestCase(GgmlType.Q4_K)]
    [TestCase(GgmlType.F16)]
    public void Generating_from_a_quantized_model_allocates_nothing_per_token(GgmlType type)
    {
        // A shape wide enough for the blocked matrix kernels (dim and ffn multiples of 256 for Q4_K).
        var model = TinyModel.Random(new TinySpec($"alloc-{type}", Vocab: 512, Dim: 256, Layers: 2, Heads: 4, KvHeads: 2,
            Ffn: 512, WeightType: type, Context: 512));
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        AssertNoAllocationPerToken(lm, SamplingOptions.Greedy);
    }

    /// <summary>
    /// Mixtures of experts (routing tables, grouped products, the combine) and BlockFFN (router scores, the
    /// active-block list, per-block buffers; MLA's scratch) reuse their buffers too.
    /// </summary>
    [TestCase("mixtral")]
    [TestCase("qwen2moe")]
    [TestCase("blockffn-mla")]
    [TestCase("blockffn")]
    public void Generating_from_sparse_models_allocates_nothing_per_token(string kind)
    {
        var spec = kind switch
        {
            "mixtral" => new TinySpec("alloc-mixtral", Vocab: 512, Heads: 4, KvHeads: 2, Experts: 4, ExpertsUsed: 2, WeightType: GgmlType.Q8_0, Context: 512),
            "qwen2moe" => new TinySpec("alloc-qwen2moe", Arch: "qwen2moe", Vocab: 512, Heads: 4, KvHeads: 2, QkvBias: true, Experts: 6, ExpertsUsed: 2,
                SharedFfn: 64, Context: 512),
            "blockffn" => new TinySpec("alloc-blockffn-plain", Arch: "blockffn", Vocab: 512, Heads: 4, KvHeads: 2, Experts: 12, Ffn: 32,
                WeightType: GgmlType.Q8_0, Context: 512),
            _ => new TinySpec("alloc-blockffn", Arch: "blockffn", Vocab: 512, Heads: 4, KvHeads: 4, HeadDimOverride: 32, QLora: 32, KvLora: 32, RopeDim: 16,
                VDim: 16, Experts: 12, Ffn: 32, WeightType: GgmlType.Q8_0, Context: 512),
        };
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 2 });
        AssertNoAllocationPerToken(lm, SamplingOptions.Greedy);
    }

    private static void AssertNoAllocationPerToken(LanguageModel lm, SamplingOptions sampling)
    {
        // A first generation gets every method of the loop called often enough for the runtime's tiered
        // compilation to recompile it; the pause lets that background work (which allocates a little, once)
        // finish before the measured stretch.
        using (var primer = lm.CreateSession())
            primer.Generate([1], new GenerationOptions { MaxTokens = 96, Sampling = sampling, StopAtEndOfGeneration = false }).ToList();
        Thread.Sleep(300);
        using var session = lm.CreateSession();
        var options = new GenerationOptions { MaxTokens = Warmup + Measured, Sampling = sampling, StopAtEndOfGeneration = false };
        using var tokens = session.Generate([1], options).GetEnumerator();
        for (int i = 0; i < Warmup; i++)
            Assert.That(tokens.MoveNext(), Is.True);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        int generated = 0;
        while (tokens.MoveNext())
            generated++;
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        Assert.That(generated, Is.EqualTo(Measured), "the whole stretch was generated");
        Assert.That(allocated, Is.LessThanOrEqualTo(Allowance),
            $"{allocated} bytes allocated over {Measured} tokens ({allocated / (double)Measured:F1} per token)");
    }
}
