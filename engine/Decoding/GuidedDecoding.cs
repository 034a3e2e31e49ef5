using Engine.Api;
using Engine.Cache;
using Engine.Sampling;

namespace Engine.Decoding;

/// <summary>How <see cref="GuidedDecoding"/> combines the two sequences' next-token logits.</summary>
public enum Guidance
{
    /// <summary>
    /// Context-aware decoding (Shi et al., "Trusting Your Evidence: Hallucinate Less with Context-aware
    /// Decoding", NAACL 2024): (1 + α)·logit(y | c, x) − α·logit(y | x).
    /// </summary>
    ContextAware,

    /// <summary>
    /// AdaCAD (Wang et al., "AdaCAD: Adaptively Decoding to Balance Conflicts between Contextual and
    /// Parametric Knowledge", NAACL 2025): CAD with α per token = the Jensen–Shannon divergence (bits)
    /// between p(· | c, x) and p(· | x) — no adjustment where context and memory agree.
    /// </summary>
    AdaptiveContextAware,

    /// <summary>
    /// Classifier-free guidance (Sanchez et al., "Stay on topic with Classifier-Free Guidance", 2023):
    /// log p(y | neg) + γ·(log p(y | x) − log p(y | neg)), the negative prompt's log-softmax pushed away from.
    /// </summary>
    ClassifierFree,
}

/// <summary>
/// Guidance from a second sequence of the same model: the main prompt (for CAD: context + query; for CFG:
/// the prompt) and a contrast prompt (for CAD: the query alone; for CFG: the negative prompt) grow by the
/// same generated tokens, both computed by one batched forward pass per token, and the sampler chain
/// draws from their combined logits (see <see cref="Guidance"/> for each rule).
/// </summary>
public sealed class GuidedDecoding : DecodingStrategy
{
    private readonly int[] _contrast;
    private readonly SamplingOptions _sampling;

    /// <param name="contrast">The second sequence's prompt: the query without the context (CAD), or the negative prompt (CFG).</param>
    /// <param name="weight">CAD's α ≥ 0 (<c>--alpha</c>), or CFG's γ (<c>--guidance-scale</c>, 1 = no guidance); unused by AdaCAD.</param>
    public GuidedDecoding(LanguageModel model, Guidance guidance, IReadOnlyList<int> contrast, float weight, SamplingOptions sampling) : base(model)
    {
        ArgumentNullException.ThrowIfNull(sampling);
        sampling.Validate();
        CheckPrompt(contrast, guidance == Guidance.ClassifierFree ? "negative prompt" : "context-free prompt");
        if (!float.IsFinite(weight))
            throw new ArgumentOutOfRangeException(nameof(weight), $"guidance weight {weight} must be a number");
        if (guidance == Guidance.ContextAware && !(weight >= 0))
            throw new ArgumentOutOfRangeException(nameof(weight), $"--alpha {weight}: CAD's α must be ≥ 0 (0 = plain decoding)");
        if (guidance == Guidance.ClassifierFree && !(weight >= 0))
            throw new ArgumentOutOfRangeException(nameof(weight), $"--guidance-scale {weight} must be ≥ 0 (1 = no guidance)");
        Kind = guidance;
        Weight = weight;
        _contrast = contrast.ToArray();
        _sampling = sampling;
    }

    public override string Name => Kind switch
    {
        Guidance.ContextAware => "cad",
        Guidance.AdaptiveContextAware => "adacad",
        _ => "cfg",
    };

    public Guidance Kind { get; }

    public float Weight { get; }

    /// <summary>The weight each token of the last generation used (AdaCAD's α per token; the fixed weight otherwise).</summary>
    public IReadOnlyList<double> LastWeights => _weights;

    private readonly List<double> _weights = [];

    protected override IEnumerable<int> Run(int[] prompt, int maxTokens, CancellationToken ct)
    {
        var network = Model.Network;
        int vocab = Model.Config.VocabSize;
        maxTokens = Math.Min(maxTokens, Model.ContextLength - Math.Max(prompt.Length, _contrast.Length));
        var chain = CreateChain(_sampling, prompt);
        _weights.Clear();
        BeginStats();
        using var cache = CreateCache(2, prompt.Length + _contrast.Length, maxTokens);
        using var main = cache.CreateSequence();
        using var contrast = cache.CreateSequence();
        var logits = new float[2 * vocab];
        var combined = new float[vocab];
        var logP = new float[vocab];
        var logQ = new float[vocab];
        Prefill(network, main, prompt, logits.AsSpan(0, vocab));
        Prefill(network, contrast, _contrast, logits.AsSpan(vocab, vocab));
        PromptDone();
        KvSequence[] both = [main, contrast];
        var pair = new int[2];
        float[] Score()
        {
            Combine(logits.AsSpan(0, vocab), logits.AsSpan(vocab, vocab), combined, logP, logQ);
            return combined;
        }
        void Advance(int token)
        {
            pair[0] = pair[1] = token;
            Step(network, both, pair, logits);
        }
        foreach (int token in DrawEach(prompt.Length, maxTokens, chain, Score, Advance, ct))
            yield return token;
    }

    /// <summary>The rule of <see cref="Kind"/> on one token's two logit rows (the scratch spans receive log-softmaxes).</summary>
    internal void Combine(ReadOnlySpan<float> withMain, ReadOnlySpan<float> withContrast, Span<float> combined, Span<float> logP, Span<float> logQ)
    {
        double weight = Weight;
        switch (Kind)
        {
            case Guidance.ContextAware:
                Mix(withMain, withContrast, 1 + weight, -weight, combined);
                break;
            case Guidance.AdaptiveContextAware:
                Distributions.LogSoftmax(withMain, logP);
                Distributions.LogSoftmax(withContrast, logQ);
                weight = Distributions.JensenShannon(logP, logQ);
                Mix(withMain, withContrast, 1 + weight, -weight, combined);
                break;
            default:
                Distributions.LogSoftmax(withMain, logP);
                Distributions.LogSoftmax(withContrast, logQ);
                Mix(logP, logQ, weight, 1 - weight, combined);
                break;
        }
        _weights.Add(weight);
    }

    /// <summary>a·x + b·y, where a 0 weight ignores its side entirely (−∞·0 is no NaN).</summary>
    private static void Mix(ReadOnlySpan<float> x, ReadOnlySpan<float> y, double a, double b, Span<float> into)
    {
        for (int i = 0; i < into.Length; i++)
        {
            double v = (a == 0 ? 0 : a * x[i]) + (b == 0 ? 0 : b * y[i]);
            into[i] = double.IsNaN(v) ? float.NegativeInfinity : (float)v;
        }
    }
}
