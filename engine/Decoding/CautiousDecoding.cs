using System.Text;
using Engine.Api;
using Engine.Cache;
using Engine.Sampling;

namespace Engine.Decoding;

/// <summary>Options of <see cref="CautiousDecoding"/>.</summary>
public sealed record CautiousOptions
{
    /// <summary>Entropy (nats) of the next-token distribution above which the step is "uncertain" (<c>--entropy-threshold</c>).</summary>
    public float EntropyThreshold { get; init; } = 1.5f;

    /// <summary>Most trials at the least confident step (<c>--trials</c>, 2..32).</summary>
    public int MaxTrials { get; init; } = 4;

    /// <summary>Most tokens a trial runs before it stops without reaching punctuation (<c>--trial-length</c>).</summary>
    public int MaxTrialTokens { get; init; } = 16;

    /// <summary>How each token (of a trial, or of a confident step) is drawn.</summary>
    public SamplingOptions Sampling { get; init; } = new();

    public void Validate()
    {
        if (!(EntropyThreshold >= 0) || float.IsNaN(EntropyThreshold))
            throw new ArgumentOutOfRangeException(nameof(EntropyThreshold), $"--entropy-threshold {EntropyThreshold} must be ≥ 0 nats");
        if (MaxTrials < 2 || MaxTrials > 32)
            throw new ArgumentOutOfRangeException(nameof(MaxTrials), $"--trials {MaxTrials} must be 2..32");
        if (MaxTrialTokens < 1 || MaxTrialTokens > 256)
            throw new ArgumentOutOfRangeException(nameof(MaxTrialTokens), $"--trial-length {MaxTrialTokens} must be 1..256");
        Sampling.Validate();
        if (Sampling.NeedsHistory || Sampling.IsStateful)
            throw new ArgumentException("cautious decoding draws its trials side by side: penalties, DRY and Mirostat (history-dependent samplers) cannot be used with it");
    }
}

/// <summary>One trial continuation of an uncertain step.</summary>
/// <param name="Perplexity">exp(−mean log p) of its tokens under the model's (unfiltered) distribution.</param>
public sealed record CautiousTrial(IReadOnlyList<int> Tokens, double Perplexity);

/// <summary>An uncertain step: where it was, its entropy, the trials sampled and the one kept.</summary>
public sealed record CautiousStep(int Position, double Entropy, IReadOnlyList<CautiousTrial> Trials, int Chosen);

/// <summary>
/// Cautious next-token prediction (Wang et al., "Cautious Next Token Prediction", Findings of ACL 2025):
/// where the model is confident (entropy of the next-token distribution at most the threshold) a token is
/// sampled as usual; where it is not, several trials are sampled independently from that point, each
/// until it emits punctuation (or its length cap), and the trial with the lowest perplexity is kept.
/// The trial count grows as confidence falls, as the paper prescribes; we scale it linearly from 2 at
/// the threshold to <see cref="CautiousOptions.MaxTrials"/> at the uniform distribution's entropy ln V.
/// Trials are forks of the context's KV sequence, stepped together in one batched pass per token.
/// </summary>
public sealed class CautiousDecoding : DecodingStrategy
{
    private readonly CautiousOptions _options;
    private readonly bool[] _stops;

    public CautiousDecoding(LanguageModel model, CautiousOptions options) : base(model)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.MaxTrials > model.Network.MaxBatch)
            throw new ArgumentOutOfRangeException(nameof(options), $"--trials {options.MaxTrials} exceeds the model's batch of {model.Network.MaxBatch} rows");
        _options = options;
        _stops = PunctuationTokens(model);
    }

    public override string Name => "cautious";

    public CautiousOptions Options => _options;

    /// <summary>The uncertain steps of the last generation and their trials.</summary>
    public IReadOnlyList<CautiousStep> LastSteps => _steps;

    private readonly List<CautiousStep> _steps = [];

    /// <summary>Tokens whose text holds sentence or clause punctuation (ASCII or CJK) or a newline: where a trial ends.</summary>
    private static bool[] PunctuationTokens(LanguageModel model)
    {
        var stops = new bool[model.Config.VocabSize];
        var tokenizer = model.Tokenizer;
        for (int id = 0; id < tokenizer.VocabSize; id++)
        {
            string text = Encoding.UTF8.GetString(tokenizer.TokenBytes(id));
            stops[id] = text.AsSpan().IndexOfAny(".,;:!?\n。，；：！？") >= 0;
        }
        return stops;
    }

    /// <summary>Trials for a step of entropy <paramref name="entropy"/> nats above the threshold.</summary>
    public int TrialCount(double entropy)
    {
        double top = Math.Log(Model.Config.VocabSize), low = _options.EntropyThreshold;
        double share = top > low ? Math.Clamp((entropy - low) / (top - low), 0, 1) : 1;
        return Math.Min(_options.MaxTrials, 2 + (int)Math.Ceiling((_options.MaxTrials - 2) * share));
    }

    /// <summary>Its trials run as forks sampled on their own until punctuation; a grammar per trial is not built yet.</summary>
    protected override bool SupportsGrammar => false;

    protected override IEnumerable<int> Run(int[] prompt, int maxTokens, CancellationToken ct)
    {
        var network = Model.Network;
        int vocab = Model.Config.VocabSize, width = _options.MaxTrials;
        maxTokens = Math.Min(maxTokens, Model.ContextLength - prompt.Length);
        var chain = SamplerChain.Create(_options.Sampling, vocab, Model.Tokenizer);
        _steps.Clear();
        BeginStats();
        using var cache = CreateCache(2 * width + 1, prompt.Length, maxTokens + _options.MaxTrialTokens);
        var context = cache.CreateSequence();
        var logits = new float[vocab];
        var logProbs = new float[vocab];
        var trialLogits = new float[width * vocab];
        var one = new int[1];
        var trials = new Trial[width];
        var active = new List<KvSequence>(width);
        var activeTokens = new int[width];
        var activeIndex = new int[width];
        int generated = 0;
        try
        {
            Prefill(network, context, prompt, logits);
            PromptDone();
            while (generated < maxTokens)
            {
                ct.ThrowIfCancellationRequested();
                Distributions.LogSoftmax(logits, logProbs);
                double entropy = Distributions.Entropy(logProbs);
                if (entropy <= _options.EntropyThreshold)
                {
                    int token = chain.Sample(logits);
                    if (IsEnd(token))
                        yield break;
                    generated++;
                    yield return token;
                    if (generated == maxTokens)
                        yield break;
                    one[0] = token;
                    Prefill(network, context, one, logits);
                    CountPass(1);
                    continue;
                }

                // an uncertain step: N trials from here, stepped together until each reaches punctuation
                int n = TrialCount(entropy), budget = Math.Min(_options.MaxTrialTokens, maxTokens - generated);
                for (int i = 0; i < n; i++)
                {
                    int first = chain.Sample(logits);
                    trials[i] = new Trial(context.Fork(), [first], logProbs[first]);
                }
                while (true)
                {
                    active.Clear();
                    for (int i = 0; i < n; i++)
                    {
                        var t = trials[i];
                        if (t.Tokens.Count < budget && !IsEnd(t.Tokens[^1]) && !_stops[t.Tokens[^1]])
                        {
                            activeIndex[active.Count] = i;
                            activeTokens[active.Count] = t.Tokens[^1];
                            active.Add(t.Sequence);
                        }
                    }
                    if (active.Count == 0)
                        break;
                    Step(network, active, activeTokens.AsSpan(0, active.Count), trialLogits);
                    for (int a = 0; a < active.Count; a++)
                    {
                        var row = trialLogits.AsSpan(a * vocab, vocab);
                        var t = trials[activeIndex[a]];
                        int token = chain.Sample(row);
                        Distributions.LogSoftmax(row, row);
                        t.Tokens.Add(token);
                        t.LogProb += row[token];
                    }
                }
                int chosen = 0;
                var record = new CautiousTrial[n];
                for (int i = 0; i < n; i++)
                {
                    record[i] = new CautiousTrial(trials[i].Tokens.ToArray(), Math.Exp(-trials[i].LogProb / trials[i].Tokens.Count));
                    if (record[i].Perplexity < record[chosen].Perplexity)
                        chosen = i;
                }
                _steps.Add(new CautiousStep(prompt.Length + generated, entropy, record, chosen));
                context.Dispose();
                context = trials[chosen].Sequence;
                for (int i = 0; i < n; i++)
                {
                    if (i != chosen)
                        trials[i].Sequence.Dispose();
                    trials[i] = null!;
                }
                var kept = record[chosen].Tokens;
                foreach (int token in kept)
                {
                    if (IsEnd(token))
                        yield break;
                    generated++;
                    yield return token;
                }
                if (generated >= maxTokens)
                    yield break;
                one[0] = kept[^1];
                Prefill(network, context, one, logits); // the kept trial's last token was drawn, not yet run
                CountPass(1);
            }
        }
        finally
        {
            foreach (var t in trials)
                t?.Sequence.Dispose();
            context.Dispose();
            EndStats(prompt.Length, generated);
        }
    }

    /// <summary>A trial's sequence (the context plus all its tokens but the last), its tokens and their summed log-probability.</summary>
    private sealed class Trial(KvSequence sequence, List<int> tokens, double logProb)
    {
        public KvSequence Sequence { get; } = sequence;
        public List<int> Tokens { get; } = tokens;
        public double LogProb { get; set; } = logProb;
    }
}
