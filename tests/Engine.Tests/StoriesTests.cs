using Engine.Api;
using Engine.Sampling;

namespace Engine.Tests;

/// <summary>
/// The real trained model in ../shared/models/stories260K must reproduce the reference outputs of
/// expected.md exactly (llama2.c fp32, confirmed by llama.cpp), from the GGUF file and from the HF folder.
/// </summary>
public class StoriesTests
{
    private static readonly GenerationOptions Greedy256 = new() { MaxTokens = 256, Sampling = SamplingOptions.Greedy };

    public static IEnumerable<string> Sources() => ["gguf", "hf"];

    private static string PathOf(string source) => source == "gguf" ? SharedData.StoriesGguf : SharedData.StoriesHf;

    [TestCaseSource(nameof(Sources))]
    public void Greedy_from_bos_gives_the_256_reference_ids(string source)
    {
        var expected = SharedData.StoriesExpected();
        using var lm = LanguageModel.Load(PathOf(source), new ModelOptions { Threads = 2 });
        using var session = lm.CreateSession();
        var ids = session.Generate([1], Greedy256).ToList();
        Assert.That(ids, Is.EqualTo(expected.FromBos));
        Assert.That(lm.Tokenizer.Decode(ids.Prepend(1)), Is.EqualTo(expected.TextFromBos));
    }

    [TestCaseSource(nameof(Sources))]
    public void Greedy_after_the_prompt_gives_the_48_reference_ids(string source)
    {
        var expected = SharedData.StoriesExpected();
        using var lm = LanguageModel.Load(PathOf(source), new ModelOptions { Threads = 2 });
        var prompt = lm.Tokenizer.Encode("Once upon a time, there was a little dog");
        Assert.That(prompt, Is.EqualTo(new[] { 1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 400, 428 }));
        using var session = lm.CreateSession();
        var ids = session.Generate(prompt, Greedy256 with { MaxTokens = 48 }).ToList();
        Assert.That(ids, Is.EqualTo(expected.AfterPrompt));
        Assert.That(lm.Tokenizer.Decode(prompt.Concat(ids)), Is.EqualTo(expected.TextAfterPrompt));
    }

    [Test]
    public void Gguf_and_hf_give_the_same_logits()
    {
        using var gguf = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        using var hf = LanguageModel.Load(SharedData.StoriesHf, new ModelOptions { Threads = 1 });
        Assert.That(gguf.Config with { RopeStyle = hf.Config.RopeStyle }, Is.EqualTo(hf.Config), "same hyper-parameters apart from the RoPE layout");
        int[] tokens = [1, 403, 407, 261, 378, 432];
        var a = Logits(gguf, tokens);
        var b = Logits(hf, tokens);
        // Same float32 computation on permuted rows: only summation order inside RoPE'd heads differs.
        double scale = a.Max(Math.Abs);
        for (int i = 0; i < a.Length; i++)
            Assert.That(Math.Abs(a[i] - b[i]), Is.LessThanOrEqualTo(1e-5 * scale), $"logit {i}");
    }

    private static float[] Logits(LanguageModel lm, int[] tokens)
    {
        using var cache = lm.Network.CreateKvCache(64);
        using var seq = cache.CreateSequence();
        var logits = new float[lm.Config.VocabSize];
        lm.Network.Forward(seq, tokens, Enumerable.Range(0, tokens.Length).ToArray(), Backends.AttentionMask.Causal, [tokens.Length - 1], logits);
        return logits;
    }

    [Test]
    public void Thread_count_does_not_change_greedy_output()
    {
        var expected = SharedData.StoriesExpected();
        foreach (int threads in new[] { 1, 3 })
        {
            using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = threads });
            using var session = lm.CreateSession();
            Assert.That(session.Generate([1], Greedy256).ToList(), Is.EqualTo(expected.FromBos), $"{threads} threads");
        }
    }
}
