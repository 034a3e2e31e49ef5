using Engine.Sampling;

namespace Engine.Tests;

public class SamplingTests
{
    [TestCase(-0.1f, 40, 0.9f, "temperature")]
    [TestCase(float.NaN, 40, 0.9f, "temperature")]
    [TestCase(float.PositiveInfinity, 40, 0.9f, "temperature")]
    [TestCase(0.8f, -1, 0.9f, "top-k")]
    [TestCase(0.8f, 40, 0f, "top-p")]
    [TestCase(0.8f, 40, 1.5f, "top-p")]
    [TestCase(0.8f, 40, float.NaN, "top-p")]
    public void Impossible_settings_are_rejected_with_their_name(float temperature, int topK, float topP, string name)
    {
        var options = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => SamplerChain.Create(options))!;
        Assert.That(e.Message, Does.Contain(name));
    }

    [Test]
    public void Greedy_picks_the_first_largest_logit()
    {
        var chain = SamplerChain.Create(SamplingOptions.Greedy);
        Assert.That(chain.IsGreedy, Is.True);
        Assert.That(chain.Sample([0.1f, 3f, -1f, 3f]), Is.EqualTo(1));
        Assert.That(chain.Sample([float.NaN, -5f, -4f]), Is.EqualTo(2), "NaN never wins");
    }

    [Test]
    public void A_seed_reproduces_a_sequence()
    {
        float[] logits = [1f, 2f, 0.5f, 1.5f, 0f, -1f];
        int[] Draw(ulong seed)
        {
            var chain = SamplerChain.Create(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, Seed = seed });
            return Enumerable.Range(0, 50).Select(_ => chain.Sample(logits)).ToArray();
        }
        var first = Draw(7);
        var again = Draw(7);
        Assert.That(again, Is.EqualTo(first));
        Assert.That(Draw(8), Is.Not.EqualTo(first));
    }

    private static double[] Softmax(IEnumerable<double> logits)
    {
        var l = logits.ToArray();
        double max = l.Max();
        var e = l.Select(x => Math.Exp(x - max)).ToArray();
        double sum = e.Sum();
        return e.Select(x => x / sum).ToArray();
    }

    /// <summary>
    /// Pearson's chi-square of observed counts against expected probabilities, over the tokens with
    /// non-zero probability; tokens with zero probability must never be drawn.
    /// </summary>
    private static void AssertFollows(int[] counts, double[] probs, int draws, string what)
    {
        double chi2 = 0;
        int df = -1;
        for (int i = 0; i < probs.Length; i++)
        {
            if (probs[i] == 0)
            {
                Assert.That(counts[i], Is.Zero, $"{what}: token {i} is outside the allowed set but was drawn");
                continue;
            }
            double expected = probs[i] * draws;
            chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
            df++;
        }
        // 99.9th percentile of chi-square: a correct sampler exceeds it for 1 seed in 1000 (the seed is
        // fixed, so the test is deterministic); a wrong distribution lands in the hundreds or thousands.
        double critical = df switch { 1 => 10.83, 2 => 13.82, 3 => 16.27, 4 => 18.47, 5 => 20.52, _ => throw new ArgumentException("df") };
        Assert.That(chi2, Is.LessThan(critical), $"{what}: chi-square {chi2:F2} with {df} degrees of freedom");
    }

    private static int[] Sample(SamplingOptions options, float[] logits, int draws)
    {
        var chain = SamplerChain.Create(options);
        var counts = new int[logits.Length];
        for (int i = 0; i < draws; i++)
            counts[chain.Sample(logits)]++;
        return counts;
    }

    private static readonly float[] Logits = [2f, 1f, 0.5f, 0f, -1f, -3f];

    [Test]
    public void Temperature_sampling_follows_the_softmax_of_logits_over_t()
    {
        const int draws = 40_000;
        foreach (float t in new[] { 1f, 0.5f, 2f })
        {
            var counts = Sample(new SamplingOptions { Temperature = t, TopK = 0, TopP = 1, Seed = 11 }, Logits, draws);
            AssertFollows(counts, Softmax(Logits.Select(l => (double)l / t)), draws, $"T={t}");
        }
    }

    [Test]
    public void Top_k_renormalizes_over_the_k_most_likely()
    {
        const int draws = 40_000;
        var counts = Sample(new SamplingOptions { Temperature = 1, TopK = 3, TopP = 1, Seed = 12 }, Logits, draws);
        var p = Softmax(Logits.Take(3).Select(l => (double)l)).Concat([0.0, 0, 0]).ToArray();
        AssertFollows(counts, p, draws, "top-k 3");
    }

    [Test]
    public void Top_p_keeps_the_smallest_set_reaching_p()
    {
        const int draws = 40_000;
        var full = Softmax(Logits.Select(l => (double)l)); // ≈ 0.53, 0.20, 0.12, 0.07, ...
        Assert.That(full[0] + full[1], Is.LessThan(0.8));
        Assert.That(full[0] + full[1] + full[2], Is.GreaterThanOrEqualTo(0.8));
        var counts = Sample(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 0.8f, Seed = 13 }, Logits, draws);
        var p = Softmax(Logits.Take(3).Select(l => (double)l)).Concat([0.0, 0, 0]).ToArray();
        AssertFollows(counts, p, draws, "top-p 0.8");
    }

    [Test]
    public void Candidates_sort_is_deterministic_on_ties()
    {
        var c = new Candidates(5);
        c.Reset([1f, 3f, 1f, 3f, 2f]);
        c.Sort();
        Assert.That(c.Ids[..5], Is.EqualTo(new[] { 1, 3, 4, 0, 2 }));
    }
}

public class PhiloxTests
{
    /// <summary>Known answers of Philox4x32-10 from Random123's kat_vectors (first output word).</summary>
    [TestCase(0u, 0u, 0u, 0u, 0ul, 0x6627e8d5u)]
    [TestCase(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffffffffffUL, 0x408f276du)]
    [TestCase(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0x299f31d0a4093822UL, 0xd16cfe09u)]
    public void Philox_gives_the_reference_vectors(uint c0, uint c1, uint c2, uint c3, ulong key, uint expected) =>
        Assert.That(Philox.U32(key, c0, c1, c2, c3), Is.EqualTo(expected));

    [Test]
    public void Min_p_keeps_tokens_within_the_ratio_of_the_best()
    {
        // softmax of ln(0.5), ln(0.3), ln(0.15), ln(0.05): with min-p 0.2 the floor is 0.1 → 0.05 goes.
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        var probs = new float[4];
        SamplerChain.Create(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0.2f }).Distribution(logits, probs);
        Assert.That(probs[3], Is.Zero);
        Assert.That(probs[0], Is.EqualTo(0.5 / 0.95).Within(1e-6));
        Assert.Throws<ArgumentOutOfRangeException>(() => SamplerChain.Create(new SamplingOptions { MinP = 1.5f }));
    }
}
