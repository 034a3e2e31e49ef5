using Engine.Sampling;

namespace Engine.Tests;

/// <summary>
/// The research samplers on distributions small enough to compute by hand (the expected sets and values are
/// derived in the tests from the definitions, in double): which tokens each keeps, ties broken by position,
/// a single candidate, an all −∞ row and NaN logits (errors that name the problem).
/// </summary>
public class SamplerProcessorTests
{
    private static Candidates From(params double[] logits)
    {
        var c = new Candidates(logits.Length);
        c.Reset(logits.Select(l => (float)l).ToArray());
        return c;
    }

    private static Candidates FromProbs(params double[] probs) => From(probs.Select(p => Math.Log(p)).ToArray());

    private static int[] Kept(Candidates c) => c.Ids[..c.Count];

    /// <summary>Top-k's partial selection keeps exactly what a full sort would put first, in that order, ties by id.</summary>
    [TestCase(1)]
    [TestCase(7)]
    [TestCase(40)]
    [TestCase(999)]
    [TestCase(1000)]
    public void Top_k_partial_selection_equals_a_full_sort_with_ties_broken_by_id(int k)
    {
        var random = new Random(k);
        for (int trial = 0; trial < 20; trial++)
        {
            // few distinct values, so ties are everywhere, and some -inf
            var logits = Enumerable.Range(0, 1000).Select(_ => random.Next(8) == 0 ? float.NegativeInfinity : random.Next(30) / 4f).ToArray();
            var full = new Candidates(logits.Length);
            full.Reset(logits);
            full.Sort();
            var partial = new Candidates(logits.Length);
            partial.Reset(logits);
            partial.KeepTop(k);
            Assert.That(partial.Count, Is.EqualTo(Math.Min(k, logits.Length)));
            Assert.That(partial.Sorted, Is.True);
            Assert.That(partial.Ids.Take(partial.Count), Is.EqualTo(full.Ids.Take(partial.Count)), $"k {k}, trial {trial}");
            Assert.That(partial.Logits.Take(partial.Count), Is.EqualTo(full.Logits.Take(partial.Count)));
        }
    }

    [Test]
    public void Typical_keeps_the_tokens_nearest_the_entropy_until_p()
    {
        double[] p = [0.5, 0.3, 0.2];
        double h = -p.Sum(x => x * Math.Log(x));
        var order = Enumerable.Range(0, 3).OrderBy(i => Math.Abs(-Math.Log(p[i]) - h)).ToArray();
        Assert.That(order, Is.EqualTo(new[] { 1, 0, 2 }), "the hand computation: 0.3 is the most typical, then 0.5");
        var c = FromProbs(p);
        new Typical(0.5f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 1, 0 }), "0.3 < 0.5, 0.3 + 0.5 ≥ 0.5");
        c = FromProbs(p);
        new Typical(0.25f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 1 }));
        // ties: every token equally typical, taken in position order
        c = FromProbs(0.25, 0.25, 0.25, 0.25);
        new Typical(0.5f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0, 1 }));
        c = From(1.5);
        new Typical(0.1f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0 }), "a single candidate stays");
    }

    [Test]
    public void Top_n_sigma_keeps_logits_within_n_deviations_of_the_largest()
    {
        double[] logits = [3, 2, 1, 0];
        double mean = logits.Average(), sigma = Math.Sqrt(logits.Average(l => (l - mean) * (l - mean)));
        var c = From([.. logits, double.NegativeInfinity]); // -inf takes no part in σ
        new TopNSigma(1f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(Enumerable.Range(0, 4).Where(i => logits[i] >= 3 - sigma).ToArray()));
        Assert.That(Kept(c), Is.EqualTo(new[] { 0, 1 }));
        c = From(2, 2, 1);
        new TopNSigma(0f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0, 1 }), "n = 0 keeps the tied maxima");
    }

    [Test]
    public void Epsilon_and_eta_cut_below_their_thresholds_and_keep_the_best()
    {
        var c = FromProbs(0.6, 0.3, 0.05, 0.05);
        new EpsilonCutoff(0.1f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0, 1 }));
        c = FromProbs(0.25, 0.25, 0.25, 0.25);
        new EpsilonCutoff(0.5f).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0 }), "nothing reaches ε: the most likely (the first of equals) stays");

        double[] p = [0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02];
        double eps = 0.1, eta = Math.Min(eps, Math.Sqrt(eps) * Math.Exp(p.Sum(x => x * Math.Log(x))));
        Assert.That(eta, Is.LessThan(0.08).And.GreaterThan(0.05), "this distribution's entropy (1.63 nats) lowers η to 0.062");
        c = FromProbs(p);
        new EtaCutoff((float)eps).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0, 1, 2, 3, 4 }), "0.08 stays (ε alone would drop it), 0.05 and 0.02 go");
    }

    [Test]
    public void Logit_bias_adds_and_bans()
    {
        var c = From(1, 2, 3);
        new LogitBias(new Dictionary<int, float> { [0] = 5f, [2] = float.NegativeInfinity }).Apply(c);
        Assert.That(c.Logits[..3], Is.EqualTo(new[] { 6f, 2f, float.NegativeInfinity }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LogitBias(new Dictionary<int, float> { [1] = float.PositiveInfinity }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LogitBias(new Dictionary<int, float> { [-1] = 1f }));
    }

    [Test]
    public void Dynamic_temperature_follows_the_normalized_entropy()
    {
        var t = new DynamicTemperature(1f, 0.5f);
        var c = From(0, 0, 0, 0);
        t.Apply(c);
        Assert.That(t.Last, Is.EqualTo(1.5f).Within(1e-6), "uniform: entropy ln N, the top of the range");
        c = From(20, 0, 0, 0);
        t.Apply(c);
        double[] p = [1, Math.Exp(-20), Math.Exp(-20), Math.Exp(-20)];
        double z = p.Sum(), h = -p.Sum(x => x / z * Math.Log(x / z));
        Assert.That(t.Last, Is.EqualTo(0.5 + 1.0 * h / Math.Log(4)).Within(1e-6));
        Assert.That(c.Logits[0], Is.EqualTo(20 / t.Last).Within(1e-4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DynamicTemperature(1f, 1f));
    }

    [Test]
    public void Xtc_removes_the_top_choices_but_the_least_likely_of_them()
    {
        var c = FromProbs(0.5, 0.3, 0.15, 0.05);
        new Xtc(1f, 0.2f, seed: 1).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 1, 2, 3 }), "0.5 and 0.3 reach 0.2: 0.5 goes");
        c = FromProbs(0.7, 0.15, 0.15);
        new Xtc(1f, 0.2f, seed: 1).Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0, 1, 2 }), "one token above the threshold: nothing changes");
        c = FromProbs(0.5, 0.3, 0.15, 0.05);
        new Xtc(0f, 0.2f, seed: 1).Apply(c);
        Assert.That(Kept(c).Order(), Is.EqualTo(new[] { 0, 1, 2, 3 }), "probability 0: never");
        Assert.Throws<ArgumentOutOfRangeException>(() => new Xtc(0.5f, 0.6f, seed: 1));
    }

    [Test]
    public void Penalties_see_the_last_n_kept_tokens()
    {
        var penalties = new Penalties(lastN: 3, repeat: 2f, frequency: 0.5f, presence: 1f);
        foreach (int token in new[] { 2, 2, 3 })
            penalties.Accept(token);
        var c = From(1, 1, 4, -2);
        penalties.Apply(c);
        Assert.That(c.Logits[..4], Is.EqualTo(new[] { 1f, 1f, 4f / 2 - 2 * 0.5f - 1, -2f * 2 - 0.5f - 1 }));
        penalties.Accept(0); // the first 2 leaves the window of 3: [2, 3, 0]
        c = From(1, 1, 4, -2);
        penalties.Apply(c);
        Assert.That(c.Logits[..4], Is.EqualTo(new[] { 1f / 2 - 0.5f - 1, 1f, 4f / 2 - 0.5f - 1, -2f * 2 - 0.5f - 1 }));
        penalties.Reset();
        c = From(1, 1, 4, -2);
        penalties.Apply(c);
        Assert.That(c.Logits[..4], Is.EqualTo(new[] { 1f, 1f, 4f, -2f }));
    }

    /// <summary>Mirostat 2 on surprises of 1, 2, 3, 4, 4 bits: μ = 2τ = 2.5 keeps the first two; a drawn token moves μ by η·(surprise − τ).</summary>
    [Test]
    public void Mirostat_v2_truncates_at_mu_and_follows_the_surprise()
    {
        var m = new Mirostat(2, tau: 1.25f, eta: 0.1f, vocabSize: 5);
        var c = FromProbs(0.5, 0.25, 0.125, 0.0625, 0.0625);
        m.Accept(3); // a prompt token: nothing was drawn, μ stays
        Assert.That(m.Mu, Is.EqualTo(2.5f));
        m.Apply(c);
        Assert.That(Kept(c), Is.EqualTo(new[] { 0, 1 }));
        Assert.That(c.Probs[..2], Is.EqualTo(new[] { 2f / 3, 1f / 3 }).Within(1e-6));
        m.Accept(1);
        Assert.That(m.Mu, Is.EqualTo(2.5 - 0.1 * (-Math.Log2(1.0 / 3) - 1.25)).Within(1e-5));
        float mu = m.Mu;
        m.Accept(0); // no second draw happened: ignored
        Assert.That(m.Mu, Is.EqualTo(mu));
    }

    /// <summary>
    /// Mirostat 1 on a Zipf distribution p_i ∝ i^−1.2 over 1000 tokens: the estimated exponent is 1.2, so k =
    /// (0.2·2^μ / (1 − 1000^−0.2))^(1/1.2) with μ = 2τ = 10 — about 107.
    /// </summary>
    [Test]
    public void Mirostat_v1_picks_k_from_the_estimated_zipf_exponent()
    {
        const int n = 1000;
        const double s = 1.2;
        var weights = Enumerable.Range(1, n).Select(i => Math.Pow(i, -s)).ToArray();
        double z = weights.Sum();
        var m = new Mirostat(1, tau: 5f, eta: 0.1f, vocabSize: n);
        var c = FromProbs(weights.Select(w => w / z).ToArray());
        m.Apply(c);
        double k = Math.Pow((s - 1) * Math.Pow(2, 10) / (1 - Math.Pow(n, -(s - 1))), 1 / s);
        Assert.That(m.LastK, Is.EqualTo((int)k).Within(1), $"k = {k:F2}");
        Assert.That(c.Count, Is.EqualTo(m.LastK));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Mirostat(3, 5f, 0.1f, n));
    }

    /// <summary>
    /// DRY on the context 1 2 3 4 1 2 3: the suffix 1 2 3 occurred before, followed by 4, so 4 would extend a
    /// repeat of length 3: its logit drops by multiplier · base^(3 − allowed) = 1 · 2^1. A breaker inside the
    /// suffix cuts the match short; an allowed length above the match, or a breaker at the end, leaves all.
    /// </summary>
    [Test]
    public void Dry_penalizes_the_token_that_would_extend_a_repeat()
    {
        float[] Apply(Func<int, bool> breaker, int allowed = 2)
        {
            var dry = new Dry(1f, 2f, allowed, 64, breaker);
            foreach (int t in new[] { 1, 2, 3, 4, 1, 2, 3 })
                dry.Accept(t);
            var c = From(0, 0, 0, 0, 0, 0);
            dry.Apply(c);
            return c.Logits[..6];
        }
        Assert.That(Apply(_ => false), Is.EqualTo(new[] { 0f, 0f, 0f, 0f, -2f, 0f }));
        Assert.That(Apply(t => t == 2), Is.EqualTo(new float[6]), "2 breaks: the match is 3 alone, below the allowed 2");
        Assert.That(Apply(_ => false, allowed: 4), Is.EqualTo(new float[6]));
        Assert.That(Apply(t => t == 3), Is.EqualTo(new float[6]), "the context ends with a breaker");
        var longer = new Dry(1f, 2f, 2, 64, _ => false);
        foreach (int t in new[] { 5, 1, 2, 3, 4, 5, 1, 2, 3 })
            longer.Accept(t);
        var c2 = From(0, 0, 0, 0, 0, 0);
        longer.Apply(c2);
        Assert.That(c2.Logits[4], Is.EqualTo(-4f), "5 1 2 3 repeats: length 4, 2^(4 − 2)");
        Assert.Throws<ArgumentOutOfRangeException>(() => new Dry(1f, 0.5f, 2, 64, _ => false));
    }

    [Test]
    public void Nan_and_all_minus_infinity_are_errors_that_say_so()
    {
        var c = From(1, double.NaN, 0);
        var e = Assert.Throws<ArgumentException>(() => new TopNSigma(1f).Apply(c))!;
        Assert.That(e.Message, Does.Contain("token 1").And.Contain("NaN"));
        c = From(double.NegativeInfinity, double.NegativeInfinity);
        e = Assert.Throws<ArgumentException>(() => new EpsilonCutoff(0.1f).Apply(c))!;
        Assert.That(e.Message, Does.Contain("-inf"));
        c = From(double.NegativeInfinity, double.NegativeInfinity);
        Assert.Throws<ArgumentException>(() => new Typical(0.5f).Apply(c));
    }

    /// <summary>
    /// <c>--samplers</c> order: top-p 0.5 before temperature 2 keeps only the likeliest of [2, 1, 0, −1] (its
    /// probability 0.64 ≥ 0.5); after it, the flattened distribution needs two tokens (0.455 + 0.276). A
    /// sampler left out does not run; unknown and repeated names are errors naming the option.
    /// </summary>
    [Test]
    public void The_samplers_order_decides_what_survives()
    {
        float[] logits = [2f, 1f, 0f, -1f];
        var probs = new float[4];
        var options = new SamplingOptions { Temperature = 2f, TopK = 0, TopP = 0.5f, Seed = 1 };
        SamplerChain.Create(options with { Samplers = ["top_p", "temperature"] }).Distribution(logits, probs);
        Assert.That(probs, Is.EqualTo(new[] { 1f, 0f, 0f, 0f }));
        SamplerChain.Create(options with { Samplers = ["temperature", "top-p"] }).Distribution(logits, probs);
        double a = Math.Exp(1), b = Math.Exp(0.5);
        Assert.That(probs, Is.EqualTo(new[] { (float)(a / (a + b)), (float)(b / (a + b)), 0f, 0f }).Within(1e-6));
        SamplerChain.Create(options with { TopK = 1, Samplers = ["temperature"] }).Distribution(logits, probs);
        Assert.That(probs.Count(p => p > 0), Is.EqualTo(4), "top-k is set but not listed: it does not run");
        Assert.That((options with { Samplers = ["top_p", "temperature"] }).IsFusable, Is.False);
        Assert.That((options with { Samplers = [.. SamplingOptions.DefaultOrder] }).IsFusable, Is.True);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => SamplerChain.Create(options with { Samplers = ["temperature", "beam"] }))!;
        Assert.That(e.Message, Does.Contain("--samplers").And.Contain("beam"));
        e = Assert.Throws<ArgumentOutOfRangeException>(() => SamplerChain.Create(options with { Samplers = ["temp", "temperature"] }))!;
        Assert.That(e.Message, Does.Contain("twice"));
    }

    /// <summary>A chain of one's own processors draws from what they leave, seeded; greedy without a seed; penalties advance with Accept.</summary>
    [Test]
    public void A_chain_of_custom_processors_draws_from_their_distribution()
    {
        float[] logits = [2f, 1.5f, 0.1f, -1f, -3f];
        var chain = SamplerChain.Create([new TopNSigma(1f), new Temperature(0.7f)], seed: 5);
        var probs = new float[logits.Length];
        chain.Distribution(logits, probs);
        Assert.That(probs.Sum(), Is.EqualTo(1f).Within(1e-6));
        Assert.That(probs.Select((p, i) => p > 0 ? i : -1).Where(i => i >= 0), Is.EqualTo(new[] { 0, 1 }));
        var again = SamplerChain.Create([new TopNSigma(1f), new Temperature(0.7f)], seed: 5);
        Assert.That(Enumerable.Range(0, 20).Select(_ => chain.Sample(logits)), Is.EqualTo(Enumerable.Range(0, 20).Select(_ => again.Sample(logits))));

        var penalties = new Penalties(8, repeat: 10f);
        var greedy = SamplerChain.Create([penalties], seed: null);
        Assert.That(greedy.Sample(logits), Is.EqualTo(0));
        greedy.Accept(0);
        Assert.That(greedy.Sample(logits), Is.EqualTo(1), "token 0's logit 2 → 0.2 after it was kept");
    }
}
