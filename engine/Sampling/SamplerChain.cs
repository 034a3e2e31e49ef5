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

    /// <summary>The chain's candidate buffers, made once per vocabulary size and reused for every token.</summary>
    private Candidates CandidatesFor(int vocabSize) =>
        _candidates is { } existing && existing.Ids.Length == vocabSize ? existing : _candidates = new Candidates(vocabSize);

    private SamplerChain(ILogitsProcessor[] processors, Random? random)
    {
        _processors = processors;
        _random = random;
        _lazyTopK = LazyTopKIndex(processors);
    }

    /// <summary>Where the chain's top-k is, when everything before it acts token by token (<see cref="TrySampleAllowed"/>); −1 otherwise.</summary>
    private readonly int _lazyTopK;

    private static int LazyTopKIndex(ILogitsProcessor[] processors)
    {
        for (int i = 0; i < processors.Length; i++)
        {
            switch (processors[i])
            {
                case TopK:
                    return i;
                case LogitBias or Penalties or Dry or Temperature:
                    continue; // each token's logit from its own value alone: −∞ stays −∞ (a bias is never +∞)
                default:
                    return -1; // a filter that looks at the whole vocabulary (top-n-σ, dynamic temperature, …)
            }
        }
        return -1;
    }

    public IReadOnlyList<ILogitsProcessor> Processors => _processors;

    public bool IsGreedy => _random is null;

    /// <summary>Builds the chain for <paramref name="options"/> (validated first).</summary>
    /// <param name="vocabSize">The vocabulary's size (Mirostat version 1 needs it; 0 when unknown).</param>
    /// <param name="tokenizer">The model's tokenizer: DRY's sequence breakers are tokens whose text holds a breaker (none without it).</param>
    public static SamplerChain Create(SamplingOptions options, int vocabSize = 0, Tokenizers.TextTokenizer? tokenizer = null)
    {
        options.Validate();
        var processors = new List<ILogitsProcessor>();
        if (options.LogitBias is { Count: > 0 } bias)
            processors.Add(new LogitBias(bias)); // always first, as llama.cpp
        bool greedy = options.Temperature == 0;
        if (!greedy && options.Mirostat != 0)
        {
            // as llama.cpp: the penalties, temperature, then Mirostat, which takes the place of the other filters
            AddHistory(processors, options, tokenizer);
            processors.Add(new Temperature(options.Temperature));
            processors.Add(new Mirostat(options.Mirostat, options.MirostatTau, options.MirostatEta, vocabSize));
            return new SamplerChain([.. processors], new Random(unchecked((int)options.Seed)));
        }
        foreach (string name in options.Samplers ?? SamplingOptions.DefaultOrder)
        {
            switch (SamplingOptions.Canonical(name))
            {
                case "penalties" when options.HasPenalties:
                    processors.Add(PenaltiesFor(options));
                    break;
                case "dry" when options.DryMultiplier > 0:
                    processors.Add(DryFor(options, tokenizer));
                    break;
                case var _ when greedy:
                    break; // greedy decoding: what follows cannot change the argmax's meaning, only the draw
                case "top_n_sigma" when options.TopNSigma >= 0:
                    processors.Add(new TopNSigma(options.TopNSigma));
                    break;
                case "temperature":
                    processors.Add(options.DynatempRange > 0
                        ? new DynamicTemperature(options.Temperature, options.DynatempRange, options.DynatempExponent)
                        : new Temperature(options.Temperature));
                    break;
                case "top_k" when options.TopK > 0:
                    processors.Add(new TopK(options.TopK));
                    break;
                case "typ_p" when options.TypicalP < 1:
                    processors.Add(new Typical(options.TypicalP));
                    break;
                case "top_p" when options.TopP < 1:
                    processors.Add(new TopP(options.TopP));
                    break;
                case "min_p" when options.MinP > 0:
                    processors.Add(new MinP(options.MinP));
                    break;
                case "epsilon" when options.Epsilon > 0:
                    processors.Add(new EpsilonCutoff(options.Epsilon));
                    break;
                case "eta" when options.Eta > 0:
                    processors.Add(new EtaCutoff(options.Eta));
                    break;
                case "xtc" when options.XtcProbability > 0:
                    processors.Add(new Xtc(options.XtcProbability, options.XtcThreshold, options.Seed));
                    break;
            }
        }
        return new SamplerChain([.. processors], greedy ? null : new Random(unchecked((int)options.Seed)));
    }

    private static void AddHistory(List<ILogitsProcessor> processors, SamplingOptions options, Tokenizers.TextTokenizer? tokenizer)
    {
        if (options.HasPenalties)
            processors.Add(PenaltiesFor(options));
        if (options.DryMultiplier > 0)
            processors.Add(DryFor(options, tokenizer));
    }

    private static Penalties PenaltiesFor(SamplingOptions o) => new(o.RepeatLastN, o.RepeatPenalty, o.FrequencyPenalty, o.PresencePenalty);

    /// <summary>DRY with the tokenizer's sequence breakers (none without a tokenizer).</summary>
    private static Dry DryFor(SamplingOptions o, Tokenizers.TextTokenizer? tokenizer)
    {
        var breakers = tokenizer is null ? null : SequenceBreakers.For(tokenizer, o.DrySequenceBreakers);
        return new Dry(o.DryMultiplier, o.DryBase, o.DryAllowedLength, o.DryPenaltyLastN, breakers is null ? static _ => false : breakers.IsBreaker);
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

    /// <summary>
    /// Tells the history processors (penalties, DRY) the context a generation continues — the prompt, as
    /// llama.cpp's server feeds them. A chain without them has nothing to take from it (Mirostat moves only
    /// on tokens it drew).
    /// </summary>
    public void AcceptContext(IEnumerable<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (!_processors.Any(p => p is Penalties or Dry))
            return;
        foreach (int token in tokens)
            Accept(token);
    }

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
        var c = CandidatesFor(logits.Length);
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
        return DrawFrom(c, _random);
    }

    /// <summary>The draw of <see cref="Sample"/>: one number from the generator, walked through the candidates' probabilities.</summary>
    private static int DrawFrom(Candidates c, Random random)
    {
        c.Softmax();
        double u = random.NextDouble();
        double cumulative = 0;
        int last = 0;
        for (int i = 0; i < c.Count; i++)
        {
            cumulative += c.Probs[i];
            if (c.Probs[i] > 0)
                last = i;
            if (u < cumulative)
                return c.Ids[i];
        }
        // rounding left u just above the total: the last candidate that can be drawn at all (never one at
        // probability 0 — under a grammar that would be a token its mask refused)
        return c.Ids[last];
    }

    /// <summary>
    /// Draws what <see cref="Sample"/> would from <paramref name="logits"/> with every token that
    /// <paramref name="allowed"/> refuses set to −∞ (a grammar's mask), asking <paramref name="allowed"/> about
    /// the best candidates only. Exact where the chain's first filter over the whole vocabulary is top-k and
    /// what comes before it acts token by token (a bias, penalties, DRY, temperature): masked tokens would
    /// stay at −∞ through those, so the masked top-k is the k best allowed candidates, in the same order (ties
    /// by id), and the rest of the chain and the draw see the same numbers. The same one number is drawn.
    /// </summary>
    /// <returns>
    /// False — nothing drawn, no state moved — where that cannot be told without the mask: no such top-k,
    /// a greedy chain, or fewer than k allowed among the best k + <see cref="LazySlack"/> candidates (then
    /// mask the logits and call <see cref="Sample"/>).
    /// </returns>
    public bool TrySampleAllowed(ReadOnlySpan<float> logits, Func<int, bool> allowed, out int token)
    {
        ArgumentNullException.ThrowIfNull(allowed);
        token = -1;
        if (_random is null || _lazyTopK < 0)
            return false;
        var c = CandidatesFor(logits.Length);
        c.Reset(logits);
        for (int i = 0; i < _lazyTopK; i++)
            _processors[i].Apply(c);
        int k = ((TopK)_processors[_lazyTopK]).K;
        if (k + LazySlack >= c.Count)
            return false; // a vocabulary this small: the mask is as cheap
        c.KeepTop(k + LazySlack);
        int kept = 0;
        for (int i = 0; i < c.Count && kept < k; i++)
        {
            if (!float.IsFinite(c.Logits[i]))
                return false; // a banned token among the best: the masked top-k would keep −∞ entries beside it
            if (allowed(c.Ids[i]))
            {
                c.Ids[kept] = c.Ids[i];
                c.Logits[kept] = c.Logits[i];
                kept++;
            }
        }
        if (kept < k)
            return false;
        c.Count = k;
        c.Sorted = true;
        c.HasProbs = false;
        for (int i = _lazyTopK + 1; i < _processors.Length; i++)
            _processors[i].Apply(c);
        token = DrawFrom(c, _random);
        return true;
    }

    /// <summary>
    /// Candidates beyond k that <see cref="TrySampleAllowed"/> looks among for k allowed ones: a few, as a
    /// heap of k + slack costs more with every entry (4k made the short way slower than masking), and where
    /// the grammar allows most tokens (free text) the best k + 8 hold k allowed ones.
    /// </summary>
    public const int LazySlack = 8;

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
            probs[Sample(logits)] = 1; // the argmax after the processors that can move it (a bias, penalties)
            return;
        }
        var c = CandidatesFor(logits.Length);
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

    /// <summary>Locally typical sampling's mass (1 = off; llama.cpp's <c>--typical</c>).</summary>
    public float TypicalP { get; init; } = 1f;
    /// <summary>Top-nσ's n (negative = off; llama.cpp's <c>--top-n-sigma</c>).</summary>
    public float TopNSigma { get; init; } = -1f;
    /// <summary>Epsilon sampling's cutoff (0 = off).</summary>
    public float Epsilon { get; init; }
    /// <summary>Eta sampling's epsilon (0 = off).</summary>
    public float Eta { get; init; }
    /// <summary>XTC's chance per token (0 = off) and threshold (llama.cpp's defaults: 0 and 0.1).</summary>
    public float XtcProbability { get; init; }
    public float XtcThreshold { get; init; } = 0.1f;
    /// <summary>Dynamic temperature: T ± range by the entropy (0 = a fixed temperature), and its exponent.</summary>
    public float DynatempRange { get; init; }
    public float DynatempExponent { get; init; } = 1f;
    /// <summary>Repetition penalty over the last <see cref="RepeatLastN"/> tokens (1 = off; llama.cpp's defaults 1 and 64).</summary>
    public float RepeatPenalty { get; init; } = 1f;
    public int RepeatLastN { get; init; } = 64;
    /// <summary>Frequency and presence penalties (0 = off).</summary>
    public float FrequencyPenalty { get; init; }
    public float PresencePenalty { get; init; }
    /// <summary>DRY's multiplier (0 = off), base, allowed length, look-back and sequence breakers (llama.cpp's defaults).</summary>
    public float DryMultiplier { get; init; }
    public float DryBase { get; init; } = 1.75f;
    public int DryAllowedLength { get; init; } = 2;
    public int DryPenaltyLastN { get; init; } = 1024;
    public IReadOnlyList<string> DrySequenceBreakers { get; init; } = ["\n", ":", "\"", "*"];

    /// <summary>Whether the chain keeps the context's tokens (penalties, DRY): <see cref="SamplerChain.Accept"/> must see the prompt too.</summary>
    public bool NeedsHistory => HasPenalties || DryMultiplier > 0;

    /// <summary>
    /// Which processors run and in what order (llama.cpp's <c>--samplers</c>: penalties, dry, top_n_sigma, top_k,
    /// typ_p, top_p, min_p, xtc, temperature; and epsilon, eta); null: <see cref="DefaultOrder"/>. A processor
    /// not listed does not run, whatever its setting. The logit bias always comes first; Mirostat ignores the order.
    /// </summary>
    public IReadOnlyList<string>? Samplers { get; init; }

    /// <summary>
    /// The default order: the history's processors, top-nσ on the raw logits, then temperature before the
    /// filters (HF transformers' and vLLM's order, and the GPU's fused kernel's), XTC last. llama.cpp's own
    /// default puts temperature after the filters: <c>penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature</c>.
    /// </summary>
    public static IReadOnlyList<string> DefaultOrder { get; } =
        ["penalties", "dry", "top_n_sigma", "temperature", "top_k", "typ_p", "top_p", "min_p", "epsilon", "eta", "xtc"];

    /// <summary>A sampler's name as <see cref="Samplers"/> takes it (llama.cpp's aliases too), or null for an unknown one.</summary>
    public static string? Canonical(string name) => name.Trim().ToLowerInvariant().Replace('-', '_') switch
    {
        "penalties" or "penalty" or "repetition" => "penalties",
        "dry" => "dry",
        "top_n_sigma" or "nsigma" => "top_n_sigma",
        "temperature" or "temp" => "temperature",
        "top_k" or "k" => "top_k",
        "typ_p" or "typical_p" or "typical" or "typ" => "typ_p",
        "top_p" or "nucleus" or "p" => "top_p",
        "min_p" or "m" => "min_p",
        "epsilon" => "epsilon",
        "eta" => "eta",
        "xtc" => "xtc",
        _ => null,
    };

    /// <summary>Mirostat's version (0 = off, 1, 2), target surprise τ and learning rate η (llama.cpp's defaults 0, 5, 0.1).</summary>
    public int Mirostat { get; init; }
    public float MirostatTau { get; init; } = 5f;
    public float MirostatEta { get; init; } = 0.1f;

    /// <summary>Added to the logits of these token ids (−∞ bans one), or null.</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Whether penalties are on: the chain then keeps the tokens' history (<see cref="SamplerChain.Accept"/>).</summary>
    public bool HasPenalties => RepeatLastN > 0 && (RepeatPenalty != 1f || FrequencyPenalty != 0f || PresencePenalty != 0f);

    /// <summary>
    /// Whether the chain is what the device's fused kernel computes (temperature, top-k, top-p, min-p, the
    /// draw): then decoding on a GPU samples there; any other processor runs on the host.
    /// </summary>
    public bool IsFusable => TypicalP >= 1 && TopNSigma < 0 && Epsilon == 0 && Eta == 0 && XtcProbability == 0 && DynatempRange == 0
        && !NeedsHistory && LogitBias is not { Count: > 0 } && (Mirostat == 0 || Temperature == 0)
        && (Samplers is null || Samplers.Select(Canonical).SequenceEqual(DefaultOrder));

    /// <summary>Whether the chain keeps state or draws coins of its own, which speculative verification cannot reproduce.</summary>
    public bool IsStateful => NeedsHistory || (Temperature > 0 && (XtcProbability > 0 || Mirostat != 0));

    /// <summary>Throws an <see cref="ArgumentOutOfRangeException"/> naming the impossible setting.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || !float.IsFinite(Temperature))
            throw new ArgumentOutOfRangeException(nameof(Temperature), $"temperature {Temperature} must be 0 (greedy) or a positive number");
        FusedSamplingParameters.ValidateFilters(TopK, TopP, MinP);
        if (!(TypicalP > 0 && TypicalP <= 1))
            throw new ArgumentOutOfRangeException(nameof(TypicalP), $"--typical {TypicalP} must be in (0, 1] (1 = off)");
        if (float.IsNaN(TopNSigma) || float.IsInfinity(TopNSigma))
            throw new ArgumentOutOfRangeException(nameof(TopNSigma), $"--top-n-sigma {TopNSigma} must be a number (negative = off)");
        if (!(Epsilon >= 0 && Epsilon < 1))
            throw new ArgumentOutOfRangeException(nameof(Epsilon), $"--epsilon {Epsilon} must be in [0, 1)");
        if (!(Eta >= 0 && Eta < 1))
            throw new ArgumentOutOfRangeException(nameof(Eta), $"--eta {Eta} must be in [0, 1)");
        if (!(XtcProbability >= 0 && XtcProbability <= 1))
            throw new ArgumentOutOfRangeException(nameof(XtcProbability), $"--xtc-probability {XtcProbability} must be in [0, 1]");
        if (!(XtcThreshold > 0 && XtcThreshold <= 0.5f))
            throw new ArgumentOutOfRangeException(nameof(XtcThreshold), $"--xtc-threshold {XtcThreshold} must be in (0, 0.5]");
        if (!(DynatempRange >= 0) || (DynatempRange > 0 && !(DynatempRange < Temperature)))
            throw new ArgumentOutOfRangeException(nameof(DynatempRange), $"--dynatemp-range {DynatempRange} must be in [0, the temperature {Temperature})");
        if (!(DynatempExponent > 0) || !float.IsFinite(DynatempExponent))
            throw new ArgumentOutOfRangeException(nameof(DynatempExponent), $"--dynatemp-exp {DynatempExponent} must be positive");
        if (!(RepeatPenalty > 0) || !float.IsFinite(RepeatPenalty))
            throw new ArgumentOutOfRangeException(nameof(RepeatPenalty), $"--repeat-penalty {RepeatPenalty} must be a positive number (1 = off)");
        if (RepeatLastN < 0 || RepeatLastN > 1 << 20)
            throw new ArgumentOutOfRangeException(nameof(RepeatLastN), $"--repeat-last-n {RepeatLastN} must be in [0, {1 << 20}]");
        if (!float.IsFinite(FrequencyPenalty) || !float.IsFinite(PresencePenalty))
            throw new ArgumentOutOfRangeException(nameof(FrequencyPenalty), $"--frequency-penalty {FrequencyPenalty} and --presence-penalty {PresencePenalty} must be numbers");
        if (LogitBias is not null)
            _ = new LogitBias(LogitBias); // its checks, with the token named
        if (Mirostat != 0)
            _ = new Mirostat(Mirostat, MirostatTau, MirostatEta, 1); // its checks: version 1 or 2, τ and η positive
        if (Samplers is not null)
        {
            var seen = new HashSet<string>();
            foreach (string name in Samplers)
            {
                string canonical = Canonical(name) ?? throw new ArgumentOutOfRangeException(nameof(Samplers),
                    $"--samplers: '{name}' is not a sampler (known: {string.Join(", ", DefaultOrder)})");
                if (!seen.Add(canonical))
                    throw new ArgumentOutOfRangeException(nameof(Samplers), $"--samplers names '{canonical}' twice");
            }
        }
        if (DryMultiplier != 0 || DryBase != 1.75f || DryAllowedLength != 2 || DryPenaltyLastN != 1024)
            _ = new Dry(DryMultiplier, DryBase, DryAllowedLength, DryPenaltyLastN, static _ => false); // its checks, by option name
    }
}
