namespace Engine.Sampling;

/// <summary>
/// Helpers the research samplers share: probabilities of the current candidates (NaN logits refused by
/// token, an all -inf row refused as empty) and their entropy in nats.
/// </summary>
internal static class CandidateMath
{
    /// <summary>Softmax of the candidates after checking them: NaN is an error naming the token; so is a row with no finite logit.</summary>
    /// <remarks>The processor's name is read only for an error: a name is a string built on demand.</remarks>
    public static void Probabilities(Candidates c, ILogitsProcessor sampler)
    {
        Check(c, sampler);
        if (!c.HasProbs)
            c.Softmax();
    }

    /// <summary>The checks of <see cref="Probabilities"/> alone, for a sampler that reads only logits.</summary>
    public static void Check(Candidates c, ILogitsProcessor sampler)
    {
        bool finite = false;
        for (int i = 0; i < c.Count; i++)
        {
            if (float.IsNaN(c.Logits[i]))
                throw new ArgumentException($"{sampler.Name}: the logit of token {c.Ids[i]} is NaN");
            finite |= c.Logits[i] > float.NegativeInfinity;
        }
        if (!finite)
            throw new ArgumentException($"{sampler.Name}: every candidate's logit is -inf: there is nothing to sample");
    }

    /// <summary>H = −Σ p·ln p over the candidates (their probabilities computed).</summary>
    public static double Entropy(Candidates c)
    {
        double h = 0;
        for (int i = 0; i < c.Count; i++)
        {
            double p = c.Probs[i];
            if (p > 0)
                h -= p * Math.Log(p);
        }
        return h;
    }

    /// <summary>Keeps, in their order, the candidates whose logit is at least <paramref name="floor"/>.</summary>
    public static void KeepLogitsFrom(Candidates c, double floor)
    {
        int kept = 0;
        for (int i = 0; i < c.Count; i++)
        {
            if (c.Logits[i] >= floor)
            {
                c.Ids[kept] = c.Ids[i];
                c.Logits[kept++] = c.Logits[i];
            }
        }
        c.Count = kept;
        c.HasProbs = false;
    }

    /// <summary>Keeps, in their order, the candidates whose probability is at least <paramref name="cutoff"/>, and candidate <paramref name="always"/>.</summary>
    public static void KeepProbsFrom(Candidates c, double cutoff, int always)
    {
        int kept = 0;
        for (int i = 0; i < c.Count; i++)
        {
            if (i == always || c.Probs[i] >= cutoff)
            {
                c.Ids[kept] = c.Ids[i];
                c.Logits[kept++] = c.Logits[i];
            }
        }
        c.Count = kept;
        c.HasProbs = false;
    }
}

/// <summary>
/// Locally typical sampling (Meister et al., "Locally Typical Sampling", TACL 2023): keeps the tokens whose
/// surprise −ln p is closest to the distribution's entropy, fewest first, until their probabilities add up
/// to at least P — llama.cpp's <c>typical</c> sampler.
/// </summary>
public sealed class Typical : ILogitsProcessor
{
    private int[] _order = [], _ids = [];
    private double[] _distance = [];
    private float[] _logits = [];

    public Typical(float p)
    {
        if (!(p > 0 && p <= 1))
            throw new ArgumentOutOfRangeException(nameof(p), $"typical-p {p} must be in (0, 1]");
        P = p;
    }

    public float P { get; }

    public string Name => $"typical={P}";

    public bool PreservesArgmax => false;

    public void Apply(Candidates c)
    {
        if (P >= 1 || c.Count <= 1)
            return;
        CandidateMath.Probabilities(c, this);
        double entropy = CandidateMath.Entropy(c);
        if (_order.Length < c.Ids.Length)
        {
            _order = new int[c.Ids.Length];
            _ids = new int[c.Ids.Length];
            _distance = new double[c.Ids.Length];
            _logits = new float[c.Ids.Length];
        }
        int n = c.Count;
        for (int i = 0; i < n; i++)
        {
            _order[i] = i;
            _distance[i] = c.Probs[i] > 0 ? Math.Abs(-Math.Log(c.Probs[i]) - entropy) : double.PositiveInfinity;
        }
        // nearest to the entropy first; equal distances by position (Array.Sort is unstable), so ties are deterministic
        Array.Sort(_distance, _order, 0, n);
        for (int i = 0, j; i < n; i = j)
        {
            for (j = i + 1; j < n && _distance[j] == _distance[i]; j++) { }
            if (j - i > 1)
                Array.Sort(_order, i, j - i);
        }
        double cumulative = 0;
        int keep = n;
        for (int i = 0; i < n; i++)
        {
            cumulative += c.Probs[_order[i]];
            if (cumulative >= P)
            {
                keep = i + 1;
                break;
            }
        }
        for (int i = 0; i < keep; i++)
        {
            _ids[i] = c.Ids[_order[i]];
            _logits[i] = c.Logits[_order[i]];
        }
        Array.Copy(_ids, c.Ids, keep);
        Array.Copy(_logits, c.Logits, keep);
        c.Count = keep;
        c.Sorted = false;
        c.HasProbs = false;
    }
}

/// <summary>
/// Top-nσ (Tang et al., "Top-nσ: Not All Logits Are You Need", 2024): keeps the tokens whose logit is within
/// n standard deviations of the largest, σ over the finite logits — a threshold that does not move with
/// temperature.
/// </summary>
public sealed class TopNSigma : ILogitsProcessor
{
    public TopNSigma(float n)
    {
        if (!(n >= 0) || !float.IsFinite(n))
            throw new ArgumentOutOfRangeException(nameof(n), $"top-n-sigma {n} must be a non-negative number");
        N = n;
    }

    public float N { get; }

    public string Name => $"top-n-sigma={N}";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c)
    {
        CandidateMath.Check(c, this); // σ is of the logits: no softmax needed
        double sum = 0, squares = 0, max = double.NegativeInfinity;
        int finite = 0;
        for (int i = 0; i < c.Count; i++)
        {
            double l = c.Logits[i];
            if (double.IsNegativeInfinity(l))
                continue;
            sum += l;
            squares += l * l;
            max = Math.Max(max, l);
            finite++;
        }
        double mean = sum / finite, sigma = Math.Sqrt(Math.Max(0, squares / finite - mean * mean));
        double floor = max - N * sigma;
        CandidateMath.KeepLogitsFrom(c, floor);
    }
}

/// <summary>
/// Epsilon sampling (Hewitt et al., "Truncation Sampling as Language Model Desmoothing", EMNLP 2022): drops
/// the tokens whose probability is below ε, always keeping the most likely one.
/// </summary>
public sealed class EpsilonCutoff : ILogitsProcessor
{
    public EpsilonCutoff(float epsilon)
    {
        if (!(epsilon >= 0 && epsilon < 1))
            throw new ArgumentOutOfRangeException(nameof(epsilon), $"epsilon {epsilon} must be in [0, 1)");
        Epsilon = epsilon;
    }

    public float Epsilon { get; }

    public string Name => $"epsilon={Epsilon}";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c) => EtaCutoff.Cut(c, Epsilon, this);
}

/// <summary>
/// Eta sampling (Hewitt et al., 2022): drops the tokens below η = min(ε, √ε·e^−H), H the distribution's
/// entropy — a cutoff that loosens when the model is unsure; the most likely token always stays.
/// </summary>
public sealed class EtaCutoff : ILogitsProcessor
{
    public EtaCutoff(float epsilon)
    {
        if (!(epsilon >= 0 && epsilon < 1))
            throw new ArgumentOutOfRangeException(nameof(epsilon), $"eta's epsilon {epsilon} must be in [0, 1)");
        Epsilon = epsilon;
    }

    public float Epsilon { get; }

    public string Name => $"eta={Epsilon}";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c)
    {
        CandidateMath.Probabilities(c, this);
        double eta = Math.Min(Epsilon, Math.Sqrt(Epsilon) * Math.Exp(-CandidateMath.Entropy(c)));
        Cut(c, eta, this);
    }

    internal static void Cut(Candidates c, double cutoff, ILogitsProcessor owner)
    {
        CandidateMath.Probabilities(c, owner);
        int best = 0;
        for (int i = 1; i < c.Count; i++)
        {
            if (c.Probs[i] > c.Probs[best])
                best = i;
        }
        CandidateMath.KeepProbsFrom(c, cutoff, best);
    }
}

/// <summary>
/// Logit bias (OpenAI's <c>logit_bias</c>, llama.cpp's <c>--logit-bias</c>): adds a fixed amount to chosen
/// tokens' logits; −∞ bans a token.
/// </summary>
public sealed class LogitBias : ILogitsProcessor
{
    private readonly Dictionary<int, float> _bias;

    public LogitBias(IReadOnlyDictionary<int, float> bias)
    {
        foreach (var (id, value) in bias)
        {
            if (id < 0)
                throw new ArgumentOutOfRangeException(nameof(bias), $"logit bias for token {id}: ids are not negative");
            if (float.IsNaN(value) || float.IsPositiveInfinity(value))
                throw new ArgumentOutOfRangeException(nameof(bias), $"logit bias {value} for token {id} must be a number or -inf");
        }
        _bias = new Dictionary<int, float>(bias);
    }

    public string Name => $"logit-bias({_bias.Count} tokens)";

    public bool PreservesArgmax => _bias.Count == 0;

    public void Apply(Candidates c)
    {
        if (_bias.Count == 0)
            return;
        for (int i = 0; i < c.Count; i++)
        {
            if (_bias.TryGetValue(c.Ids[i], out float b))
                c.Logits[i] += b;
        }
        c.Sorted = false;
        c.HasProbs = false;
    }
}

/// <summary>
/// Dynamic temperature (kalomaze's entropy-based "DynaTemp", llama.cpp's <c>--dynatemp-range</c>):
/// T = T_min + (T_max − T_min)·(H / ln N)^exponent with [T_min, T_max] = T ± range, N the candidates — a
/// confident distribution is sharpened, an unsure one flattened.
/// </summary>
public sealed class DynamicTemperature : ILogitsProcessor
{
    public DynamicTemperature(float temperature, float range, float exponent = 1f)
    {
        if (!(temperature > 0) || !float.IsFinite(temperature))
            throw new ArgumentOutOfRangeException(nameof(temperature), $"temperature {temperature} must be a positive number");
        if (!(range >= 0) || !(range < temperature))
            throw new ArgumentOutOfRangeException(nameof(range), $"dynamic temperature range {range} must be in [0, {temperature})");
        if (!(exponent > 0) || !float.IsFinite(exponent))
            throw new ArgumentOutOfRangeException(nameof(exponent), $"dynamic temperature exponent {exponent} must be positive");
        (Base, Range, Exponent) = (temperature, range, exponent);
    }

    public float Base { get; }
    public float Range { get; }
    public float Exponent { get; }

    public string Name => $"dynatemp={Base}±{Range}^{Exponent}";

    public bool PreservesArgmax => true;

    /// <summary>The temperature last applied.</summary>
    public float Last { get; private set; }

    public void Apply(Candidates c)
    {
        CandidateMath.Probabilities(c, this);
        double maxEntropy = c.Count > 1 ? Math.Log(c.Count) : 1;
        double normalized = c.Count > 1 ? CandidateMath.Entropy(c) / maxEntropy : 0;
        double t = (Base - Range) + 2 * Range * Math.Pow(normalized, Exponent);
        Last = (float)t;
        float inv = (float)(1 / t);
        for (int i = 0; i < c.Count; i++)
            c.Logits[i] *= inv;
        c.HasProbs = false;
    }
}

/// <summary>
/// Exclude Top Choices (XTC, p-e-w, 2024; llama.cpp's <c>--xtc-probability</c>/<c>--xtc-threshold</c>): with
/// probability <see cref="Probability"/>, removes every token at or above <see cref="Threshold"/> but the
/// least likely of them — when at least two reach it — steering away from the most predictable choice.
/// Draws its coin from its own seeded generator.
/// </summary>
public sealed class Xtc : ILogitsProcessor
{
    private readonly Random _random;

    public Xtc(float probability, float threshold, ulong seed)
    {
        if (!(probability >= 0 && probability <= 1))
            throw new ArgumentOutOfRangeException(nameof(probability), $"xtc probability {probability} must be in [0, 1]");
        if (!(threshold > 0 && threshold <= 0.5f))
            throw new ArgumentOutOfRangeException(nameof(threshold), $"xtc threshold {threshold} must be in (0, 0.5]: above, no two tokens can reach it");
        (Probability, Threshold) = (probability, threshold);
        _random = new Random(SplitMix(seed ^ 0x5854));
    }

    /// <summary>
    /// SplitMix64's finalizer: the coin's generator must not be seeded with a value close to the chain's own
    /// seed — System.Random streams from nearby seeds are correlated, which couples the coin to the token's
    /// draw (and to speculative acceptance) and biases the mixture XTC defines.
    /// </summary>
    private static int SplitMix(ulong seed)
    {
        ulong z = unchecked(seed + 0x9E3779B97F4A7C15UL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return unchecked((int)(z ^ (z >> 31)));
    }

    public float Probability { get; }
    public float Threshold { get; }

    public string Name => $"xtc={Probability}@{Threshold}";

    public bool PreservesArgmax => false;

    public void Apply(Candidates c)
    {
        if (Probability <= 0 || c.Count < 2 || _random.NextDouble() >= Probability)
            return;
        c.Sort();
        CandidateMath.Probabilities(c, this);
        int above = 0;
        while (above < c.Count && c.Probs[above] >= Threshold)
            above++;
        if (above < 2)
            return;
        int drop = above - 1; // keep the least likely of those at or above the threshold
        for (int i = drop; i < c.Count; i++)
        {
            c.Ids[i - drop] = c.Ids[i];
            c.Logits[i - drop] = c.Logits[i];
        }
        c.Count -= drop;
        c.HasProbs = false;
    }
}

/// <summary>A processor with state that advances with each token the generation keeps (<see cref="SamplerChain.Accept"/>).</summary>
public interface IStatefulProcessor
{
    /// <summary>The token the generation kept (a sampled one, or an accepted draft token).</summary>
    void Accept(int token);

    /// <summary>Forgets the history (a new generation).</summary>
    void Reset();
}

/// <summary>
/// Repetition, frequency and presence penalties over the last <see cref="LastN"/> kept tokens, as llama.cpp
/// applies them (repetition: Keskar et al., "CTRL", 2019 — a positive logit divided by the penalty, a
/// negative one multiplied; frequency and presence: OpenAI's — minus count·frequency, minus presence if seen).
/// </summary>
public sealed class Penalties : ILogitsProcessor, IStatefulProcessor
{
    private readonly int[] _ring;
    private readonly Dictionary<int, int> _counts;
    private int _next, _filled;

    public Penalties(int lastN, float repeat = 1f, float frequency = 0f, float presence = 0f)
    {
        if (lastN < 0 || lastN > 1 << 20)
            throw new ArgumentOutOfRangeException(nameof(lastN), $"repeat-last-n {lastN} must be in [0, {1 << 20}]");
        if (!(repeat > 0) || !float.IsFinite(repeat))
            throw new ArgumentOutOfRangeException(nameof(repeat), $"repeat penalty {repeat} must be a positive number (1 = off)");
        if (!float.IsFinite(frequency) || !float.IsFinite(presence))
            throw new ArgumentOutOfRangeException(nameof(frequency), $"frequency {frequency} and presence {presence} penalties must be numbers");
        (LastN, Repeat, Frequency, Presence) = (lastN, repeat, frequency, presence);
        _ring = new int[lastN];
        _counts = new Dictionary<int, int>(Math.Min(lastN, 4096)); // at most one entry per token of the window: no growth mid-generation
    }

    public int LastN { get; }
    public float Repeat { get; }
    public float Frequency { get; }
    public float Presence { get; }

    public string Name => $"penalties(last {LastN}: repeat {Repeat}, frequency {Frequency}, presence {Presence})";

    public bool PreservesArgmax => false;

    public void Accept(int token)
    {
        if (LastN == 0)
            return;
        if (_filled == LastN)
        {
            int old = _ring[_next];
            if (--_counts[old] == 0)
                _counts.Remove(old);
        }
        else
            _filled++;
        _ring[_next] = token;
        _next = (_next + 1) % LastN;
        _counts[token] = _counts.GetValueOrDefault(token) + 1;
    }

    public void Reset()
    {
        _counts.Clear();
        _next = _filled = 0;
    }

    public void Apply(Candidates c)
    {
        if (_counts.Count == 0)
            return;
        // Usually the chain's first stage: candidate i is still token i, so each of the ≤ N penalized
        // tokens is found directly instead of looking every candidate up in the counts.
        bool direct = true;
        foreach (int id in _counts.Keys)
            direct &= id < c.Count && c.Ids[id] == id;
        if (direct)
        {
            foreach (var (id, count) in _counts)
                c.Logits[id] = Penalize(c.Logits[id], count);
        }
        else
        {
            for (int i = 0; i < c.Count; i++)
            {
                if (_counts.TryGetValue(c.Ids[i], out int count))
                    c.Logits[i] = Penalize(c.Logits[i], count);
            }
        }
        c.Sorted = false;
        c.HasProbs = false;
    }

    private float Penalize(float l, int count)
    {
        l = l > 0 ? l / Repeat : l * Repeat;
        return l - count * Frequency - Presence;
    }
}

/// <summary>
/// Mirostat (Basu et al., "Mirostat: A Neural Text Decoding Algorithm that Directly Controls Perplexity",
/// ICLR 2021), as llama.cpp runs it: it keeps the surprise (−log₂ p of the kept token) near a target τ by a
/// running threshold μ (starting at 2τ) that each kept token moves by η·(surprise − τ). Version 2 keeps the
/// tokens whose surprise is at most μ; version 1 estimates the distribution's Zipf exponent ŝ from its top
/// 100 tokens and keeps the top k = (ε̂·2^μ / (1 − N^−ε̂))^(1/ŝ), ε̂ = ŝ − 1. It is the last processor of its
/// chain: the draw follows it, and <see cref="Accept"/> reads the drawn token's probability from it.
/// </summary>
public sealed class Mirostat : ILogitsProcessor, IStatefulProcessor
{
    private const int M = 100;
    private readonly int _vocab;
    private float[] _probs = [];
    private int[] _ids = [];
    private int _count;
    private bool _pending;

    public Mirostat(int version, float tau, float eta, int vocabSize)
    {
        if (version is not (1 or 2))
            throw new ArgumentOutOfRangeException(nameof(version), $"--mirostat {version} must be 0 (off), 1 or 2");
        if (!(tau > 0) || !float.IsFinite(tau))
            throw new ArgumentOutOfRangeException(nameof(tau), $"--mirostat-ent {tau} must be a positive number");
        if (!(eta > 0) || !float.IsFinite(eta))
            throw new ArgumentOutOfRangeException(nameof(eta), $"--mirostat-lr {eta} must be a positive number");
        (Version, Tau, Eta, _vocab) = (version, tau, eta, vocabSize);
        Mu = 2 * tau;
    }

    public int Version { get; }
    public float Tau { get; }
    public float Eta { get; }

    /// <summary>The running surprise threshold μ.</summary>
    public float Mu { get; private set; }

    /// <summary>The k version 1 chose last (for tests and traces).</summary>
    public int LastK { get; private set; }

    public string Name => $"mirostat-v{Version}(tau {Tau}, eta {Eta})";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c)
    {
        int keep;
        if (Version == 2)
        {
            // the tokens of surprise ≤ μ are those of probability ≥ 2^−μ: a filter, then a sort of the few kept
            // (the same set, in the same order, as sorting everything and cutting the sorted prefix)
            CandidateMath.Probabilities(c, this);
            int best = 0;
            keep = 0;
            for (int i = 0; i < c.Count; i++)
            {
                if (c.Logits[i] > c.Logits[best] || (c.Logits[i] == c.Logits[best] && c.Ids[i] < c.Ids[best]))
                    best = i;
            }
            int bestId = c.Ids[best];
            float bestLogit = c.Logits[best];
            float least = MathF.Pow(2, -Mu); // surprise −log2 p ≤ μ  ⇔  p ≥ 2^−μ: one compare per token, no logarithm
            for (int i = 0; i < c.Count; i++)
            {
                if (c.Probs[i] >= least)
                    (c.Ids[keep], c.Logits[keep], keep) = (c.Ids[i], c.Logits[i], keep + 1);
            }
            if (keep == 0)
                (c.Ids[0], c.Logits[0], keep) = (bestId, bestLogit, 1); // nothing that unsurprising: the most likely token
            c.Count = keep;
            c.Sorted = false;
            c.Sort();
        }
        else
        {
            c.Sort();
            CandidateMath.Probabilities(c, this);
            double sumTiBi = 0, sumTiSq = 0;
            for (int i = 0; i < Math.Min(M - 1, c.Count - 1); i++)
            {
                double ti = Math.Log((i + 2) / (double)(i + 1));
                double bi = Math.Log(c.Probs[i] / (double)c.Probs[i + 1]);
                sumTiBi += ti * bi;
                sumTiSq += ti * ti;
            }
            double sHat = sumTiSq > 0 ? sumTiBi / sumTiSq : 1;
            double epsilonHat = sHat - 1;
            double k = Math.Pow(epsilonHat * Math.Pow(2, Mu) / (1 - Math.Pow(_vocab, -epsilonHat)), 1 / sHat);
            keep = double.IsFinite(k) ? (int)Math.Min(c.Count, Math.Max(k, 1)) : c.Count;
            LastK = keep;
        }
        c.Count = Math.Max(keep, 1);
        c.Softmax(); // renormalized over what is left: the draw's distribution, and Accept's
        if (_probs.Length < c.Count)
        {
            _probs = new float[c.Ids.Length];
            _ids = new int[c.Ids.Length];
        }
        Array.Copy(c.Probs, _probs, c.Count);
        Array.Copy(c.Ids, _ids, c.Count);
        _count = c.Count;
        _pending = true;
    }

    /// <summary>μ −= η·(surprise of the drawn token − τ). Tokens kept without a draw (the prompt) change nothing.</summary>
    public void Accept(int token)
    {
        if (!_pending)
            return;
        _pending = false;
        int at = Array.IndexOf(_ids, token, 0, _count);
        if (at < 0)
            return; // not drawn from this distribution (a token forced from outside)
        float surprise = -MathF.Log2(_probs[at]);
        Mu -= Eta * (surprise - Tau);
    }

    public void Reset()
    {
        Mu = 2 * Tau;
        _pending = false;
    }
}

/// <summary>
/// DRY, "Don't Repeat Yourself" (p-e-w, 2024; llama.cpp's <c>--dry-*</c>): penalizes the tokens that would
/// extend a repetition of an earlier stretch of the context. When the context ends with a sequence of L ≥
/// <see cref="AllowedLength"/> tokens that also occurred earlier followed by token t, t's logit drops by
/// multiplier · base^(L − allowed length), L the longest such match. Matches never span a sequence breaker
/// (a token whose text holds one of the breakers: newline, colon, quote, asterisk by default), and look back
/// at most <see cref="LastN"/> tokens.
/// </summary>
public sealed class Dry : ILogitsProcessor, IStatefulProcessor
{
    private readonly List<int> _history;
    private readonly Func<int, bool> _isBreaker;
    private readonly Dictionary<int, int> _longest;

    public Dry(float multiplier, float @base, int allowedLength, int lastN, Func<int, bool> isBreaker)
    {
        if (!(multiplier >= 0) || !float.IsFinite(multiplier))
            throw new ArgumentOutOfRangeException(nameof(multiplier), $"--dry-multiplier {multiplier} must be a non-negative number (0 = off)");
        if (!(@base >= 1) || !float.IsFinite(@base))
            throw new ArgumentOutOfRangeException(nameof(@base), $"--dry-base {@base} must be at least 1");
        if (allowedLength < 1)
            throw new ArgumentOutOfRangeException(nameof(allowedLength), $"--dry-allowed-length {allowedLength} must be at least 1");
        if (lastN < 1 || lastN > 1 << 16)
            throw new ArgumentOutOfRangeException(nameof(lastN), $"--dry-penalty-last-n {lastN} must be in [1, {1 << 16}]");
        (Multiplier, Base, AllowedLength, LastN, _isBreaker) = (multiplier, @base, allowedLength, lastN, isBreaker);
        _history = new List<int>(2 * lastN + 1); // the window with its slack: no growth mid-generation
        _longest = new Dictionary<int, int>(Math.Min(lastN, 4096));
    }

    public float Multiplier { get; }
    public float Base { get; }
    public int AllowedLength { get; }
    public int LastN { get; }

    public string Name => $"dry(x{Multiplier}, base {Base}, allowed {AllowedLength}, last {LastN})";

    public bool PreservesArgmax => false;

    public void Accept(int token)
    {
        _history.Add(token);
        if (_history.Count > 2 * LastN)
            _history.RemoveRange(0, _history.Count - LastN); // amortized: the window, with room to grow
    }

    public void Reset() => _history.Clear();

    /// <summary>For each token that would extend a repeat, the longest repeated suffix it would extend.</summary>
    internal IReadOnlyDictionary<int, int> Matches()
    {
        _longest.Clear();
        int end = _history.Count, start = Math.Max(0, end - LastN);
        if (end == 0 || _isBreaker(_history[end - 1]))
            return _longest;
        // position i (< end − 1) followed by history[i + 1]: the match is the common suffix of history[..i] and history[..end − 1]
        for (int i = end - 2; i >= start; i--)
        {
            int length = 0;
            while (i - length >= start && _history[i - length] == _history[end - 1 - length] && !_isBreaker(_history[i - length])
                && end - 1 - length > i)
                length++;
            if (length == 0)
                continue;
            int next = _history[i + 1];
            if (!_longest.TryGetValue(next, out int best) || length > best)
                _longest[next] = length;
        }
        return _longest;
    }

    public void Apply(Candidates c)
    {
        if (Multiplier == 0)
            return;
        var matches = Matches();
        if (matches.Count == 0)
            return;
        // as the penalties: while candidate i is token i, reach the few matched tokens directly
        bool direct = true;
        foreach (int id in _longest.Keys)
            direct &= id < c.Count && c.Ids[id] == id;
        if (direct)
        {
            foreach (var (id, length) in _longest)
            {
                if (length >= AllowedLength)
                    c.Logits[id] -= Multiplier * MathF.Pow(Base, length - AllowedLength);
            }
        }
        else
        {
            for (int i = 0; i < c.Count; i++)
            {
                if (matches.TryGetValue(c.Ids[i], out int length) && length >= AllowedLength)
                    c.Logits[i] -= Multiplier * MathF.Pow(Base, length - AllowedLength);
            }
        }
        c.Sorted = false;
        c.HasProbs = false;
    }
}

/// <summary>
/// DRY's sequence breakers over a vocabulary: a token breaks a match when its text (UTF-8 bytes) holds one of
/// the breaker strings. Answers are cached per token; one instance per (tokenizer, breakers), shared.
/// </summary>
public sealed class SequenceBreakers
{
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Tokenizers.TextTokenizer, List<SequenceBreakers>> s_cache = new();
    private readonly Tokenizers.TextTokenizer _tokenizer;
    private readonly byte[][] _breakers;
    private readonly sbyte[] _known; // 0 unknown, 1 breaker, -1 not

    private SequenceBreakers(Tokenizers.TextTokenizer tokenizer, IReadOnlyList<string> breakers)
    {
        _tokenizer = tokenizer;
        Breakers = [.. breakers];
        _breakers = breakers.Select(System.Text.Encoding.UTF8.GetBytes).Where(b => b.Length > 0).ToArray();
        _known = new sbyte[tokenizer.VocabSize];
    }

    public IReadOnlyList<string> Breakers { get; }

    public static SequenceBreakers For(Tokenizers.TextTokenizer tokenizer, IReadOnlyList<string> breakers)
    {
        var list = s_cache.GetOrCreateValue(tokenizer);
        lock (list)
        {
            foreach (var existing in list)
            {
                if (existing.Breakers.SequenceEqual(breakers))
                    return existing;
            }
            var made = new SequenceBreakers(tokenizer, breakers);
            list.Add(made);
            return made;
        }
    }

    public bool IsBreaker(int token)
    {
        if ((uint)token >= (uint)_known.Length)
            return false;
        if (_known[token] != 0)
            return _known[token] > 0;
        var bytes = _tokenizer.TokenBytes(token);
        bool breaks = false;
        foreach (var b in _breakers)
            breaks |= bytes.IndexOf(b) >= 0;
        _known[token] = breaks ? (sbyte)1 : (sbyte)-1;
        return breaks;
    }
}
