namespace Engine.Sampling;

/// <summary>
/// Picks the next token from logits: processors in order (temperature, then top-k, then top-p, then
/// min-p — the order of HF transformers and vLLM), then either the argmax (greedy) or a draw from the remaining
/// distribution with a seeded random generator, so that a seed reproduces a generation exactly.
/// </summary>
public sealed class SamplerChain
{
    private readonly ILogitsProcessor[] _processors;
    private readonly Random? _random;
    private Candidates? _candidates;

    private SamplerChain(ILogitsProcessor[] processors, Random? random)
    {
        _processors = processors;
        _random = random;
    }

    public IReadOnlyList<ILogitsProcessor> Processors => _processors;

    public bool IsGreedy => _random is null;

    /// <summary>Builds the chain for <paramref name="options"/> (validated first).</summary>
    public static SamplerChain Create(SamplingOptions options)
    {
        options.Validate();
        if (options.Temperature == 0)
            return new SamplerChain([], null);
        var processors = new List<ILogitsProcessor> { new Temperature(options.Temperature) };
        if (options.TopK > 0)
            processors.Add(new TopK(options.TopK));
        if (options.TopP < 1)
            processors.Add(new TopP(options.TopP));
        if (options.MinP > 0)
            processors.Add(new MinP(options.MinP));
        return new SamplerChain([.. processors], new Random(unchecked((int)options.Seed)));
    }

    /// <summary>
    /// A chain of these processors in this order (any of <see cref="Temperature"/>, <see cref="TopK"/>,
    /// <see cref="TopP"/>, <see cref="MinP"/>, <see cref="Typical"/>, <see cref="TopNSigma"/>,
    /// <see cref="EpsilonCutoff"/>, <see cref="EtaCutoff"/>, <see cref="Xtc"/>, <see cref="DynamicTemperature"/>,
    /// <see cref="LogitBias"/>, <see cref="Penalties"/>, or one's own), drawing with a generator seeded by
    /// <paramref name="seed"/>, or greedy (the argmax of what they leave) without one.
    /// </summary>
    public static SamplerChain Create(IEnumerable<ILogitsProcessor> processors, ulong? seed) =>
        new([.. processors], seed is { } s ? new Random(unchecked((int)s)) : null);

    /// <summary>Tells the stateful processors (penalties) the token the generation kept.</summary>
    public void Accept(int token)
    {
        foreach (var p in _processors)
        {
            if (p is IStatefulProcessor stateful)
                stateful.Accept(token);
        }
    }

    public int Sample(ReadOnlySpan<float> logits)
    {
        if (_random is null && _processors.All(p => p.PreservesArgmax))
            return Argmax(logits);
        var c = _candidates is { } existing && existing.Ids.Length == logits.Length ? existing : _candidates = new Candidates(logits.Length);
        c.Reset(logits);
        foreach (var p in _processors)
            p.Apply(c);
        if (_random is null)
        {
            int best = 0;
            for (int i = 1; i < c.Count; i++)
            {
                if (c.Logits[i] > c.Logits[best])
                    best = i;
            }
            return c.Ids[best];
        }
        c.Softmax();
        double u = _random.NextDouble();
        double cumulative = 0;
        for (int i = 0; i < c.Count; i++)
        {
            cumulative += c.Probs[i];
            if (u < cumulative)
                return c.Ids[i];
        }
        return c.Ids[c.Count - 1]; // rounding left u just above the total
    }

    /// <summary>
    /// The distribution <see cref="Sample"/> draws from, over the whole vocabulary: the processors'
    /// probabilities for the tokens they keep and 0 for the rest; for a greedy chain, all mass on the
    /// argmax. Speculative decoding applies this one function to target and draft logits alike, so p
    /// and q are shaped by the same temperature, top-k and top-p.
    /// </summary>
    public void Distribution(ReadOnlySpan<float> logits, Span<float> probs)
    {
        if (probs.Length != logits.Length)
            throw new ArgumentException($"expected {logits.Length} probabilities, got {probs.Length}", nameof(probs));
        probs.Clear();
        if (_random is null)
        {
            probs[Argmax(logits)] = 1;
            return;
        }
        var c = _candidates is { } existing && existing.Ids.Length == logits.Length ? existing : _candidates = new Candidates(logits.Length);
        c.Reset(logits);
        foreach (var p in _processors)
            p.Apply(c);
        if (!c.HasProbs)
            c.Softmax();
        for (int i = 0; i < c.Count; i++)
            probs[c.Ids[i]] = c.Probs[i];
    }

    /// <summary>A token drawn from <paramref name="probs"/> (which need not sum exactly to 1) with this chain's generator.</summary>
    public int Draw(ReadOnlySpan<float> probs) => Draw(probs, _random ?? throw new InvalidOperationException("a greedy chain draws nothing"));

    /// <summary>A token drawn from <paramref name="probs"/> (any non-negative weights with a positive sum).</summary>
    public static int Draw(ReadOnlySpan<float> probs, Random random)
    {
        double total = 0;
        foreach (float p in probs)
            total += p;
        double u = random.NextDouble() * total;
        double cumulative = 0;
        int last = -1;
        for (int i = 0; i < probs.Length; i++)
        {
            if (probs[i] <= 0)
                continue;
            cumulative += probs[i];
            last = i;
            if (u < cumulative)
                return i;
        }
        return last >= 0 ? last : throw new ArgumentException("the distribution has no positive weight", nameof(probs));
    }

    /// <summary>The chain's seeded generator (null for greedy).</summary>
    public Random? Random => _random;

    /// <summary>
    /// Index of the largest logit (the first one on ties). NaN logits are never chosen. The same pick as
    /// the device's argmax_f32, whose CPU reference this is.
    /// </summary>
    public static int Argmax(ReadOnlySpan<float> logits) => Backends.Cpu.Kernels.Activations.ArgMaxF32(logits);
}

/// <summary>Sampling settings. Temperature 0 means greedy decoding.</summary>
public sealed record SamplingOptions
{
    public float Temperature { get; init; } = 0.8f;
    /// <summary>0 disables top-k.</summary>
    public int TopK { get; init; } = 40;
    /// <summary>1 disables top-p.</summary>
    public float TopP { get; init; } = 0.95f;
    /// <summary>0 disables min-p: tokens below MinP times the most likely token's probability are dropped.</summary>
    public float MinP { get; init; }
    public ulong Seed { get; init; }

    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Throws an <see cref="ArgumentOutOfRangeException"/> naming the impossible setting.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || !float.IsFinite(Temperature))
            throw new ArgumentOutOfRangeException(nameof(Temperature), $"temperature {Temperature} must be 0 (greedy) or a positive number");
        FusedSamplingParameters.ValidateFilters(TopK, TopP, MinP);
    }
}
