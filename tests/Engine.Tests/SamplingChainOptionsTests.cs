using Engine.Api;
using Engine.Backends;
using Engine.Sampling;
using Engine.Serving;
using Engine.Speculative;

namespace Engine.Tests;

/// <summary>
/// The research samplers through <see cref="SamplingOptions"/>: penalties see the whole context (prompt and
/// kept tokens) in a session and in the batch scheduler alike, computed here independently from the plain
/// logits; logit bias bans a token; speculative decoding refuses what it cannot reproduce; impossible
/// settings name their option.
/// </summary>
public class SamplingChainOptionsTests
{
    private static readonly SamplingOptions Penalized = SamplingOptions.Greedy with
    {
        RepeatPenalty = 1.3f, RepeatLastN = 16, FrequencyPenalty = 0.2f, PresencePenalty = 0.1f,
    };

    /// <summary>Greedy decoding with llama.cpp's penalty arithmetic over the last 16 tokens of the context, by hand.</summary>
    private static List<int> ByHand(LanguageModel lm, int[] prompt, int n, SamplingOptions o)
    {
        int vocab = lm.Config.VocabSize;
        var history = prompt.ToList();
        using var cache = lm.Network.CreateKvCache(prompt.Length + n + 1);
        using var seq = cache.CreateSequence();
        var logits = new float[vocab];
        lm.Network.Forward(seq, prompt, Enumerable.Range(0, prompt.Length).ToArray(), AttentionMask.Causal, [prompt.Length - 1], logits);
        var output = new List<int>();
        for (int step = 0; step < n; step++)
        {
            var counts = history.Skip(Math.Max(0, history.Count - o.RepeatLastN)).GroupBy(t => t).ToDictionary(g => g.Key, g => g.Count());
            var l = (float[])logits.Clone();
            foreach (var (token, count) in counts)
            {
                float v = l[token];
                v = v > 0 ? v / o.RepeatPenalty : v * o.RepeatPenalty;
                l[token] = v - count * o.FrequencyPenalty - o.PresencePenalty;
            }
            int next = Array.IndexOf(l, l.Max());
            output.Add(next);
            history.Add(next);
            lm.Network.Forward(seq, [next], [history.Count - 1], AttentionMask.Causal, [0], logits);
        }
        return output;
    }

    private static int[] Prompt(LanguageModel lm) => [.. lm.Tokenizer.Encode("Once upon a time, there was a little dog who liked to play", addSpecial: true)];

    [Test]
    public void A_session_applies_the_penalties_over_the_whole_context()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        int[] prompt = Prompt(lm);
        using var session = lm.CreateSession();
        var got = session.Generate(prompt, new GenerationOptions { MaxTokens = 40, Sampling = Penalized, StopAtEndOfGeneration = false }).ToList();
        Assert.That(got, Is.EqualTo(ByHand(lm, prompt, 40, Penalized)));
        Assert.That(got, Is.Not.EqualTo(SpeculativeTests.Plain(lm, prompt, 40)), "the penalties change this generation");
    }

    [Test]
    public async Task The_batch_scheduler_applies_them_as_a_session_does()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        int[] prompt = Prompt(lm);
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 2, SpeculativeDraft = 4 });
        var penalized = scheduler.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 30, IgnoreEos = true, Sampling = Penalized });
        var plain = scheduler.Submit(new CompletionRequest { Prompt = prompt[..^2], MaxTokens = 30, IgnoreEos = true });
        var results = await Task.WhenAll(ServingTests.Drain(penalized), ServingTests.Drain(plain));
        Assert.That(results[0].Tokens, Is.EqualTo(ByHand(lm, prompt, 30, Penalized)), "drafts verified one row at a time see the rows before");
    }

    [Test]
    public void Logit_bias_bans_a_token_and_bends_the_choice()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        int[] prompt = Prompt(lm);
        var plain = SpeculativeTests.Plain(lm, prompt, 20);
        int banned = plain[0];
        using var session = lm.CreateSession();
        var options = new GenerationOptions
        {
            MaxTokens = 20, StopAtEndOfGeneration = false,
            Sampling = SamplingOptions.Greedy with { LogitBias = new Dictionary<int, float> { [banned] = float.NegativeInfinity } },
        };
        var got = session.Generate(prompt, options).ToList();
        Assert.That(got, Does.Not.Contain(banned));
        Assert.That(got[0], Is.Not.EqualTo(plain[0]));
    }

    /// <summary>
    /// Greedy speculative decoding under penalties, DRY and a logit bias equals plain greedy decoding under
    /// them, token for token: the rules advance the chain's history with each accepted token, so every
    /// verified row sees exactly the history plain decoding gives it.
    /// </summary>
    [TestCase("lookup")]
    [TestCase("recycle")]
    [TestCase("draft")]
    public void Greedy_speculative_decoding_under_stateful_processors_equals_plain_decoding(string method)
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        using var dir = new TempDir();
        using var draft = method == "draft" ? LanguageModel.Load(SpeculativeTests.QuantizedStories(dir, "Q8_0"), new ModelOptions { Threads = 1 }) : null;
        foreach (var sampling in new[]
        {
            Penalized,
            SamplingOptions.Greedy with { DryMultiplier = 0.8f, DryAllowedLength = 2, LogitBias = new Dictionary<int, float> { [13] = -2f } },
        })
        {
            var options = new GenerationOptions { MaxTokens = 120, Sampling = sampling, StopAtEndOfGeneration = false };
            using var session = lm.CreateSession();
            var plain = session.Generate(Prompt(lm), options).ToList();
            using var decoder = new SpeculativeDecoder(lm, DraftSources.Create(method, lm, draft), new SpeculativeOptions { Adaptive = false, MaxDraft = 6 });
            Assert.That(decoder.Generate(Prompt(lm), options).ToList(), Is.EqualTo(plain), method);
            Assert.That(decoder.Stats.AcceptedTokens, Is.GreaterThan(0), "drafts were accepted, so the history advanced inside verification");
        }
    }

    [TestCase("--typical", "1.5")]
    [TestCase("--repeat-penalty", "0")]
    [TestCase("--xtc-threshold", "0.7")]
    [TestCase("--dynatemp-range", "2")]
    [TestCase("--logit-bias", "12x3")]
    [TestCase("--mirostat", "3")]
    [TestCase("--dry-base", "0.5")]
    [TestCase("--samplers", "top_k;beam")]
    [TestCase("--mirostat", "-1")]
    public void Impossible_settings_name_their_option(string option, string value)
    {
        var (code, _, err) = CliTests.Run(["generate", "-m", SharedData.StoriesGguf, "-p", "Once", "-n", "2", option, value]);
        Assert.That(code, Is.Not.Zero);
        Assert.That(err, Does.Contain(option));
    }

    [Test]
    public void The_cli_takes_the_samplers()
    {
        var (code, output, err) = CliTests.Run(["generate", "-m", SharedData.StoriesGguf, "-p", "Once upon a time", "-n", "12", "--seed", "3", "--typical", "0.9",
            "--top-n-sigma", "1.5", "--xtc-probability", "0.5", "--dynatemp-range", "0.3", "--repeat-penalty", "1.2", "--presence-penalty", "0.3",
            "--logit-bias", "13-inf", "--ids"]);
        Assert.That(code, Is.Zero, err);
        (code, output, err) = CliTests.Run(["generate", "-m", SharedData.StoriesGguf, "-p", "Once upon a time", "-n", "12", "--seed", "3", "--mirostat", "2",
            "--mirostat-ent", "3", "--logit-bias", "13-inf", "--dry-multiplier", "0.8", "--dry-sequence-breaker", ".", "--ids"]);
        Assert.That(code, Is.Zero, err);
        var ids = output.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToList();
        Assert.That(ids, Has.Count.EqualTo(12).Or.Count.LessThan(12));
        Assert.That(ids, Does.Not.Contain(13));
    }
}
