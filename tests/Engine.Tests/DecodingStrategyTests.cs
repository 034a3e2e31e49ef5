using Engine.Api;
using Engine.Backends;
using Engine.Decoding;
using Engine.Sampling;

namespace Engine.Tests;

/// <summary>
/// Each decoding strategy pinned to its paper's definition on stories260K, against a reference computed
/// here from plain one-pass logits: beam width 1 = greedy, beam scores = summed log-probs, CAD α = 0 and
/// CFG γ = 1 = plain decoding, contrastive search α = 0 = greedy, and each rule's tokens equal the rule
/// applied step by step to independently computed logits.
/// </summary>
public class DecodingStrategyTests
{
    private static LanguageModel Stories() => LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2 });

    private static int[] Prompt(LanguageModel lm, string text = "Once upon a time, there was a little dog") =>
        lm.Tokenizer.Encode(text, addSpecial: true).ToArray();

    private static List<int> Greedy(LanguageModel lm, int[] prompt, int n)
    {
        using var session = lm.CreateSession();
        return session.Generate(prompt, new GenerationOptions { MaxTokens = n, Sampling = SamplingOptions.Greedy }).ToList();
    }

    /// <summary>The next-token logits after <paramref name="tokens"/>, from one causal pass over all of them in a fresh cache.</summary>
    private static float[] LastLogits(LanguageModel lm, IReadOnlyList<int> tokens) => Rows(lm, tokens, [tokens.Count - 1]).Logits;

    /// <summary>Logits (and hidden states) of the given rows of one causal pass over <paramref name="tokens"/>.</summary>
    private static (float[] Logits, float[] Hidden) Rows(LanguageModel lm, IReadOnlyList<int> tokens, int[] rows)
    {
        using var cache = lm.Network.CreateKvCache(lm.ContextLength);
        using var sequence = cache.CreateSequence();
        var logits = new float[rows.Length * lm.Config.VocabSize];
        var hidden = new float[rows.Length * lm.Config.Dim];
        lm.Network.Forward(sequence, tokens.ToArray(), Enumerable.Range(0, tokens.Count).ToArray(), AttentionMask.Causal, rows, logits, hidden);
        return (logits, hidden);
    }

    private static float[] LogSoftmax(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (float l in logits)
            max = Math.Max(max, l);
        double sum = 0;
        foreach (float l in logits)
            sum += Math.Exp(l - max);
        var result = new float[logits.Length];
        for (int i = 0; i < logits.Length; i++)
            result[i] = (float)(logits[i] - max - Math.Log(sum));
        return result;
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++)
        {
            if (v[i] > v[best])
                best = i;
        }
        return best;
    }

    [Test]
    public void Beam_search_of_width_1_is_greedy_decoding()
    {
        using var lm = Stories();
        var prompt = Prompt(lm);
        var beam = new BeamSearch(lm, new BeamSearchOptions { Beams = 1 });
        Assert.That(beam.Generate(prompt, 60).ToList(), Is.EqualTo(Greedy(lm, prompt, 60)));
    }

    [Test]
    public void Beam_hypotheses_score_the_sum_of_their_log_probabilities()
    {
        using var lm = Stories();
        var prompt = Prompt(lm);
        var search = new BeamSearch(lm, new BeamSearchOptions { Beams = 4, NBest = 4, LengthPenalty = 0.7f, EarlyStopping = false });
        var hypotheses = search.Search(prompt, 24);
        Assert.That(hypotheses, Has.Count.EqualTo(4));
        Assert.That(hypotheses.Select(h => h.Score), Is.Ordered.Descending);
        Assert.That(hypotheses.Select(h => string.Join(' ', h.Tokens)).Distinct().Count(), Is.EqualTo(4), "four different hypotheses");
        foreach (var h in hypotheses)
        {
            // the reference: one causal pass over prompt + hypothesis (+ the end token that finished it)
            var tokens = prompt.Concat(h.Tokens).ToList();
            int scored = h.Tokens.Count + (h.Finished ? 1 : 0);
            if (h.Finished)
                tokens.Add(lm.Tokenizer.EosId!.Value);
            var rows = Enumerable.Range(prompt.Length - 1, scored).ToArray();
            var logits = Rows(lm, tokens, rows).Logits;
            double sum = 0;
            for (int i = 0; i < scored; i++)
                sum += LogSoftmax(logits.AsSpan(i * lm.Config.VocabSize, lm.Config.VocabSize))[tokens[prompt.Length + i]];
            // batched passes and one long pass add the same products in other orders: float rounding,
            // about 1e-6 relative per logit, summed over ≤ 25 tokens
            Assert.That(h.LogProb, Is.EqualTo(sum).Within(1e-3), string.Join(' ', h.Tokens));
            Assert.That(h.Score, Is.EqualTo(h.LogProb / Math.Pow(scored, (double)0.7f)).Within(1e-12));
        }
        Assert.That(search.LastStats!.Rows, Is.GreaterThan(search.LastStats.Passes), "the beams shared each pass");
    }

    [Test]
    public void Diverse_beam_search_groups_differ_with_a_diversity_penalty_and_agree_without()
    {
        using var lm = Stories();
        var prompt = Prompt(lm);
        var same = new BeamSearch(lm, new BeamSearchOptions { Beams = 4, Groups = 2, NBest = 4 }).Search(prompt, 16);
        var plain = new BeamSearch(lm, new BeamSearchOptions { Beams = 2, NBest = 2 }).Search(prompt, 16);
        // λ = 0: each group is a plain beam search of width Beams / Groups
        foreach (int g in new[] { 0, 1 })
        {
            Assert.That(same.Where(h => h.Group == g).Select(h => string.Join(' ', h.Tokens)),
                Is.EquivalentTo(plain.Select(h => string.Join(' ', h.Tokens))), $"group {g}");
        }
        var search = new BeamSearch(lm, new BeamSearchOptions { Beams = 4, Groups = 2, DiversityPenalty = 100f, NBest = 4 });
        var diverse = search.Search(prompt, 16);
        Assert.That(search.Name, Is.EqualTo("diverse-beam"));
        var firstTokens = diverse.GroupBy(h => h.Group).Select(g => g.Select(h => h.Tokens[0]).ToHashSet()).ToArray();
        Assert.That(firstTokens, Has.Length.EqualTo(2));
        // a penalty of 100 nats per shared choice: group 1 never opens with a token group 0 chose
        Assert.That(firstTokens[0].Overlaps(firstTokens[1]), Is.False);
    }

    [Test]
    public void Contrastive_search_with_alpha_0_is_greedy_and_otherwise_follows_its_score()
    {
        using var lm = Stories();
        var prompt = Prompt(lm);
        Assert.That(new ContrastiveSearch(lm, alpha: 0f, topK: 4).Generate(prompt, 40).ToList(), Is.EqualTo(Greedy(lm, prompt, 40)));

        const float alpha = 0.6f;
        const int k = 4;
        var tokens = new ContrastiveSearch(lm, alpha, k).Generate(prompt, 6).ToList();
        var context = prompt.ToList();
        for (int step = 0; step < tokens.Count; step++)
        {
            // reference: the candidates' hidden states and the context's from one pass each
            var all = Rows(lm, context, Enumerable.Range(0, context.Count).ToArray());
            int vocab = lm.Config.VocabSize, dim = lm.Config.Dim;
            var probs = LogSoftmax(all.Logits.AsSpan((context.Count - 1) * vocab, vocab)).Select(MathF.Exp).ToArray();
            var candidates = probs.Select((p, i) => (p, i)).OrderByDescending(x => x.p).Take(k).ToArray();
            double bestScore = double.NegativeInfinity;
            int best = -1;
            foreach (var (p, v) in candidates)
            {
                var h = Rows(lm, context.Append(v).ToList(), [context.Count]).Hidden;
                double maxCos = double.NegativeInfinity;
                for (int j = 0; j < context.Count; j++)
                    maxCos = Math.Max(maxCos, Cosine(h, all.Hidden.AsSpan(j * dim, dim)));
                double score = (1 - alpha) * p - alpha * maxCos;
                if (score > bestScore)
                    (bestScore, best) = (score, v);
            }
            Assert.That(tokens[step], Is.EqualTo(best), $"step {step}");
            context.Add(best);
        }
    }

    private static double Cosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++)
            (dot, na, nb) = (dot + a[i] * (double)b[i], na + a[i] * (double)a[i], nb + b[i] * (double)b[i]);
        return dot / Math.Sqrt(na * nb);
    }

    /// <summary>The guidance rules applied step by step to logits of independent passes, greedy.</summary>
    private static List<int> GuidedReference(LanguageModel lm, int[] main, int[] contrast, int n, Func<float[], float[], float[]> rule)
    {
        var generated = new List<int>();
        for (int i = 0; i < n; i++)
        {
            var a = LastLogits(lm, main.Concat(generated).ToList());
            var b = LastLogits(lm, contrast.Concat(generated).ToList());
            generated.Add(ArgMax(rule(a, b)));
        }
        return generated;
    }

    [Test]
    public void Context_aware_decoding_with_alpha_0_is_plain_decoding_and_otherwise_its_formula()
    {
        using var lm = Stories();
        var query = Prompt(lm, "The little dog was");
        var withContext = Prompt(lm, "Lily had a red ball. She loved it very much. The little dog was");
        var cad0 = new GuidedDecoding(lm, Guidance.ContextAware, query, 0f, SamplingOptions.Greedy);
        Assert.That(cad0.Generate(withContext, 30).ToList(), Is.EqualTo(Greedy(lm, withContext, 30)));

        const float alpha = 0.5f;
        var cad = new GuidedDecoding(lm, Guidance.ContextAware, query, alpha, SamplingOptions.Greedy);
        var expected = GuidedReference(lm, withContext, query, 8, (a, b) => a.Select((x, i) => (1 + alpha) * x - alpha * b[i]).ToArray());
        Assert.That(cad.Generate(withContext, 8).ToList(), Is.EqualTo(expected));
        Assert.That(cad.LastStats!.Rows, Is.EqualTo(2 * cad.LastStats.Passes), "both sequences in each pass");
    }

    [Test]
    public void AdaCad_weights_each_token_by_the_Jensen_Shannon_divergence()
    {
        using var lm = Stories();
        var query = Prompt(lm, "The little dog was");
        var withContext = Prompt(lm, "Lily had a red ball. She loved it very much. The little dog was");
        // the same prompt on both sides: the divergence is 0, so is every adjustment
        var same = new GuidedDecoding(lm, Guidance.AdaptiveContextAware, withContext, 0f, SamplingOptions.Greedy);
        Assert.That(same.Generate(withContext, 20).ToList(), Is.EqualTo(Greedy(lm, withContext, 20)));
        Assert.That(same.LastWeights, Has.All.LessThan(1e-6));

        var ada = new GuidedDecoding(lm, Guidance.AdaptiveContextAware, query, 0f, SamplingOptions.Greedy);
        var weights = new List<double>();
        var expected = GuidedReference(lm, withContext, query, 8, (a, b) =>
        {
            var p = LogSoftmax(a).Select(x => Math.Exp(x)).ToArray();
            var q = LogSoftmax(b).Select(x => Math.Exp(x)).ToArray();
            double js = 0;
            for (int i = 0; i < p.Length; i++)
            {
                double m = (p[i] + q[i]) / 2;
                js += 0.5 * (p[i] > 0 ? p[i] * Math.Log2(p[i] / m) : 0) + 0.5 * (q[i] > 0 ? q[i] * Math.Log2(q[i] / m) : 0);
            }
            weights.Add(js);
            return a.Select((x, i) => (float)((1 + js) * x - js * b[i])).ToArray();
        });
        Assert.That(ada.Generate(withContext, 8).ToList(), Is.EqualTo(expected));
        // the divergence of two 512-token distributions from passes that round differently: 1e-4 of a bit
        Assert.That(ada.LastWeights.Take(expected.Count), Is.EqualTo(weights).Within(1e-4));
        Assert.That(weights.Max(), Is.GreaterThan(0.01), "the context changed the distribution somewhere");
    }

    [Test]
    public void Classifier_free_guidance_with_scale_1_is_plain_decoding_and_otherwise_its_formula()
    {
        using var lm = Stories();
        var prompt = Prompt(lm, "Tom went to the park");
        var negative = Prompt(lm, "Tom was sad");
        var cfg1 = new GuidedDecoding(lm, Guidance.ClassifierFree, negative, 1f, SamplingOptions.Greedy);
        Assert.That(cfg1.Generate(prompt, 30).ToList(), Is.EqualTo(Greedy(lm, prompt, 30)));

        const float gamma = 3f;
        var cfg = new GuidedDecoding(lm, Guidance.ClassifierFree, negative, gamma, SamplingOptions.Greedy);
        var expected = GuidedReference(lm, prompt, negative, 8, (a, b) =>
        {
            var la = LogSoftmax(a);
            var lb = LogSoftmax(b);
            return la.Select((x, i) => lb[i] + gamma * (x - lb[i])).ToArray();
        });
        Assert.That(cfg.Generate(prompt, 8).ToList(), Is.EqualTo(expected));

        // sampled with a seed, scale 1 draws exactly what a session draws
        var sampling = new SamplingOptions { Temperature = 0.9f, TopK = 0, TopP = 1f, Seed = 11 };
        using var session = lm.CreateSession();
        var plain = session.Generate(prompt, new GenerationOptions { MaxTokens = 30, Sampling = sampling }).ToList();
        Assert.That(new GuidedDecoding(lm, Guidance.ClassifierFree, negative, 1f, sampling).Generate(prompt, 30).ToList(), Is.EqualTo(plain));
    }

    [Test]
    public void Contrastive_decoding_maximizes_expert_minus_amateur_over_the_plausible_set()
    {
        using var lm = Stories();
        using var dir = new TempDir();
        using var amateur = LanguageModel.Load(SpeculativeTests.QuantizedStories(dir, "Q4_0"), new ModelOptions { Threads = 2 });
        var prompt = Prompt(lm);
        const float alpha = 0.1f, tau = 0.5f;
        var cd = new ContrastiveDecoding(lm, amateur, alpha, tau, SamplingOptions.Greedy);
        var tokens = cd.Generate(prompt, 10).ToList();
        var context = prompt.ToList();
        int differs = 0;
        foreach (int token in tokens)
        {
            var e = LogSoftmax(LastLogits(lm, context));
            var a = LogSoftmax(LastLogits(amateur, context).Select(x => x / tau).ToArray());
            double cut = e.Max() + Math.Log(alpha);
            var score = e.Select((x, i) => x >= cut ? x - a[i] : float.NegativeInfinity).ToArray();
            Assert.That(token, Is.EqualTo(ArgMax(score)), $"after {context.Count} tokens");
            differs += token != ArgMax(e) ? 1 : 0;
            context.Add(token);
        }
        Assert.That(differs, Is.GreaterThan(0), "the amateur changed at least one choice");
    }

    [Test]
    public void Contrastive_decoding_refuses_an_amateur_with_another_vocabulary()
    {
        using var lm = Stories();
        using var dir = new TempDir();
        var other = TinyModel.Random(new TinySpec("other-vocab", Vocab: 320));
        using var amateur = LanguageModel.Load(other.WriteGguf(dir.File("a.gguf")), new ModelOptions { Threads = 1 });
        var e = Assert.Throws<ArgumentException>(() => _ = new ContrastiveDecoding(lm, amateur, 0.1f, 1f, SamplingOptions.Greedy));
        Assert.That(e!.Message, Does.Contain("--amateur-model").And.Contain("vocabulary"));
    }

    [Test]
    public void Cautious_decoding_keeps_the_trial_of_lowest_perplexity_and_is_plain_sampling_when_confident()
    {
        using var lm = Stories();
        var prompt = Prompt(lm);
        var sampling = new SamplingOptions { Temperature = 1f, TopK = 0, TopP = 1f, Seed = 5 };
        // a threshold no distribution over 512 tokens exceeds (ln 512 ≈ 6.24 nats): never cautious
        var never = new CautiousDecoding(lm, new CautiousOptions { EntropyThreshold = 7f, Sampling = sampling });
        using (var session = lm.CreateSession())
        {
            var plain = session.Generate(prompt, new GenerationOptions { MaxTokens = 40, Sampling = sampling }).ToList();
            Assert.That(never.Generate(prompt, 40).ToList(), Is.EqualTo(plain));
            Assert.That(never.LastSteps, Is.Empty);
        }

        var cautious = new CautiousDecoding(lm, new CautiousOptions { EntropyThreshold = 0.5f, MaxTrials = 4, MaxTrialTokens = 8, Sampling = sampling });
        var tokens = cautious.Generate(prompt, 40).ToList();
        Assert.That(cautious.LastSteps, Is.Not.Empty);
        var context = prompt.ToList();
        int cursor = 0;
        foreach (var step in cautious.LastSteps.Take(4))
        {
            int at = step.Position - prompt.Length;
            Assert.That(at, Is.GreaterThanOrEqualTo(cursor));
            context.AddRange(tokens.Skip(cursor).Take(at - cursor));
            Assert.That(step.Entropy, Is.GreaterThan(0.5));
            Assert.That(step.Trials, Has.Count.EqualTo(cautious.TrialCount(step.Entropy)));
            foreach (var trial in step.Trials)
            {
                // each trial ends at punctuation, an end token or its length cap
                string last = lm.Tokenizer.Piece(trial.Tokens[^1]);
                Assert.That(trial.Tokens.Count == 8 || lm.Tokenizer.IsEndOfGeneration(trial.Tokens[^1]) || last.IndexOfAny(['.', ',', '!', '?', ':', ';', '\n']) >= 0,
                    Is.True, $"trial ends with '{last}' after {trial.Tokens.Count} tokens");
                var all = context.Concat(trial.Tokens).ToList();
                var logits = Rows(lm, all, Enumerable.Range(context.Count - 1, trial.Tokens.Count).ToArray()).Logits;
                double sum = 0;
                for (int i = 0; i < trial.Tokens.Count; i++)
                    sum += LogSoftmax(logits.AsSpan(i * lm.Config.VocabSize, lm.Config.VocabSize))[trial.Tokens[i]];
                // log-probs from batched passes vs one pass: float rounding over ≤ 8 tokens
                Assert.That(trial.Perplexity, Is.EqualTo(Math.Exp(-sum / trial.Tokens.Count)).Within(1e-4 * trial.Perplexity));
            }
            Assert.That(step.Trials[step.Chosen].Perplexity, Is.EqualTo(step.Trials.Min(t => t.Perplexity)));
            var kept = step.Trials[step.Chosen].Tokens.Where(t => !lm.Tokenizer.IsEndOfGeneration(t)).ToList();
            Assert.That(tokens.Skip(at).Take(kept.Count), Is.EqualTo(kept), "the kept trial is the output");
            context.AddRange(kept);
            cursor = at + kept.Count;
        }
    }

    [Test]
    public void Span_extraction_quotes_the_source_choosing_the_likeliest_continuation_of_an_occurrence()
    {
        using var lm = Stories();
        const string context = "Lily had a big red ball. She liked to play with her dog Max in the park. Max liked the ball too.";
        var source = lm.Tokenizer.Encode(context, addSpecial: false).ToArray();
        var prompt = Prompt(lm, context + " Lily liked to");
        var extract = new SpanExtraction(lm, source, SamplingOptions.Greedy);
        var span = extract.Generate(prompt, 30).ToList();
        Assert.That(span, Is.Not.Empty);
        Assert.That(source.Skip(extract.LastSpanStart).Take(span.Count), Is.EqualTo(span), "the output is a span of the source");
        // reference: at each step the argmax of the plain logits over the tokens that continue some occurrence
        int eos = lm.Tokenizer.EosId!.Value;
        var generated = new List<int>();
        while (generated.Count < 30)
        {
            var allowed = new HashSet<int>();
            for (int j = generated.Count; j < source.Length; j++)
            {
                if (source.Skip(j - generated.Count).Take(generated.Count).SequenceEqual(generated))
                    allowed.Add(source[j]);
            }
            if (allowed.Count == 0)
                break;
            if (generated.Count > 0)
                allowed.Add(eos);
            var logits = LastLogits(lm, prompt.Concat(generated).ToList());
            int best = allowed.OrderByDescending(t => logits[t]).ThenBy(t => t).First();
            if (best == eos)
                break;
            generated.Add(best);
        }
        Assert.That(span, Is.EqualTo(generated));
        Assert.That(Assert.Throws<ArgumentException>(() => new SpanExtraction(lm, [], SamplingOptions.Greedy))!.Message, Does.Contain("--context"));
    }

    /// <summary>
    /// Strategies under a grammar: at their neutral settings (beam width 1, contrastive α = 0, CAD α = 0,
    /// CFG γ = 1) they equal constrained greedy decoding; a wider beam search's every hypothesis is in the
    /// grammar's language, each beam following its own state; a method that cannot take a grammar says so.
    /// </summary>
    [Test]
    public void Strategies_under_a_grammar_keep_to_it_and_equal_constrained_greedy_at_their_neutral_settings()
    {
        using var lm = Stories();
        // words the model would not write unasked, and a fixed shape: "<Name> (is|was) <word>."
        var grammar = Engine.Constraints.Gbnf.Parse(Engine.Constraints.RegexGrammar.ToGbnf(" [A-Z][a-z]+ (is|was|had) [a-z]+( [a-z]+)?\\."));
        var prompt = Prompt(lm, "Once upon a time");
        List<int> ConstrainedGreedy(int[] ids, int n)
        {
            using var session = lm.CreateSession();
            return session.Generate(ids, new GenerationOptions { MaxTokens = n, Sampling = SamplingOptions.Greedy, Grammar = grammar }).ToList();
        }
        var expected = ConstrainedGreedy(prompt, 40);
        string text = lm.Tokenizer.Decode(expected);
        Assert.That(text, Does.Match("^ [A-Z][a-z]+ (is|was|had) [a-z]+( [a-z]+)?\\.$"), "the reference keeps to the grammar");
        Assert.That(expected, Is.Not.EqualTo(Greedy(lm, prompt, expected.Count)), "and differs from unconstrained greedy");

        Assert.That(new BeamSearch(lm, new BeamSearchOptions { Beams = 1 }) { Grammar = grammar }.Generate(prompt, 40).ToList(), Is.EqualTo(expected), "beam width 1");
        Assert.That(new ContrastiveSearch(lm, alpha: 0f, topK: 4) { Grammar = grammar }.Generate(prompt, 40).ToList(), Is.EqualTo(expected), "contrastive α = 0");
        var query = Prompt(lm, "Lily");
        Assert.That(new GuidedDecoding(lm, Guidance.ContextAware, query, 0f, SamplingOptions.Greedy) { Grammar = grammar }.Generate(prompt, 40).ToList(),
            Is.EqualTo(expected), "CAD α = 0");
        Assert.That(new GuidedDecoding(lm, Guidance.ClassifierFree, query, 1f, SamplingOptions.Greedy) { Grammar = grammar }.Generate(prompt, 40).ToList(),
            Is.EqualTo(expected), "CFG γ = 1");

        var wide = new BeamSearch(lm, new BeamSearchOptions { Beams = 4, NBest = 4 }) { Grammar = grammar };
        var hypotheses = wide.Search(prompt, 40);
        Assert.That(hypotheses, Has.Count.GreaterThan(1));
        foreach (var h in hypotheses)
            Assert.That(lm.Tokenizer.Decode(h.Tokens), Does.Match("^ [A-Z][a-z]+ (is|was|had) [a-z]+( [a-z]+)?\\.$"), "every hypothesis is in the language");
        Assert.That(hypotheses.Select(h => string.Join(' ', h.Tokens)).Distinct().Count(), Is.EqualTo(hypotheses.Count), "beams followed states of their own");

        var cautious = new CautiousDecoding(lm, new CautiousOptions()) { Grammar = grammar };
        Assert.That(Assert.Throws<NotSupportedException>(() => cautious.Generate(prompt, 10).ToList())!.Message, Does.Contain("cautious"));
    }

    [Test]
    public void Impossible_strategy_options_are_errors_naming_the_option()
    {
        using var lm = Stories();
        var prompt = Prompt(lm);
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new BeamSearch(lm, new BeamSearchOptions { Beams = 0 }))!.Message, Does.Contain("--beams 0"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new BeamSearch(lm, new BeamSearchOptions { Beams = 4, Groups = 3 }))!.Message, Does.Contain("--beam-groups 3"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new BeamSearch(lm, new BeamSearchOptions { Beams = 4, DiversityPenalty = 1 }))!.Message, Does.Contain("--diversity"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new BeamSearch(lm, new BeamSearchOptions { Beams = 2, NBest = 3 }))!.Message, Does.Contain("--n-best 3"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new ContrastiveSearch(lm, alpha: 1.5f))!.Message, Does.Contain("--penalty-alpha 1.5"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new ContrastiveSearch(lm, topK: 0))!.Message, Does.Contain("--top-k 0"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new GuidedDecoding(lm, Guidance.ContextAware, prompt, -1f, SamplingOptions.Greedy))!.Message, Does.Contain("--alpha -1"));
        Assert.That(Assert.Throws<ArgumentException>(() => new GuidedDecoding(lm, Guidance.ClassifierFree, [], 2f, SamplingOptions.Greedy))!.Message, Does.Contain("negative prompt"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new CautiousDecoding(lm, new CautiousOptions { MaxTrials = 1 }))!.Message, Does.Contain("--trials 1"));
        Assert.That(Assert.Throws<ArgumentException>(() => new CautiousDecoding(lm, new CautiousOptions { Sampling = new SamplingOptions { RepeatPenalty = 1.2f } }))!.Message, Does.Contain("penalties"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new GuidedDecoding(lm, Guidance.ContextAware, prompt, 0.5f, new SamplingOptions { MinP = 1.5f })), Is.Not.Null);
    }
}
