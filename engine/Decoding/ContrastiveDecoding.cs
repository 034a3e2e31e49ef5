using Engine.Api;
using Engine.Sampling;

namespace Engine.Decoding;

/// <summary>
/// Contrastive decoding (Li et al., "Contrastive Decoding: Open-ended Text Generation as Optimization",
/// ACL 2023): a large expert and a small amateur model read the same tokens; the next token maximizes
/// log p_expert(y) − log p_amateur(y) over the plausible set V_head = { y : p_expert(y) ≥ α·max p_expert },
/// every other token scoring −∞ — what the expert knows beyond the amateur, without the amateur's
/// failure modes (repetition, blandness) and without rewarding implausible tokens. The amateur's
/// distribution may be sharpened by its own temperature τ (the paper's τ). The sampler chain then
/// picks from these scores (greedy by default, as in the paper's search).
/// </summary>
public sealed class ContrastiveDecoding : DecodingStrategy
{
    private readonly SamplingOptions _sampling;

    /// <param name="amateur">The amateur: same vocabulary, usually a smaller model of the same family. The caller keeps ownership.</param>
    /// <param name="alpha">The plausibility threshold α in (0, 1] (<c>--alpha</c>).</param>
    /// <param name="amateurTemperature">τ &gt; 0 applied to the amateur's logits (<c>--amateur-temp</c>).</param>
    public ContrastiveDecoding(LanguageModel expert, LanguageModel amateur, float alpha, float amateurTemperature, SamplingOptions sampling) : base(expert)
    {
        ArgumentNullException.ThrowIfNull(amateur);
        ArgumentNullException.ThrowIfNull(sampling);
        sampling.Validate();
        if (!(alpha > 0 && alpha <= 1))
            throw new ArgumentOutOfRangeException(nameof(alpha), $"--alpha {alpha}: the plausibility threshold must be in (0, 1]");
        if (!(amateurTemperature > 0) || !float.IsFinite(amateurTemperature))
            throw new ArgumentOutOfRangeException(nameof(amateurTemperature), $"--amateur-temp {amateurTemperature} must be a positive number");
        CheckSameVocabulary(expert, amateur);
        Amateur = amateur;
        Alpha = alpha;
        AmateurTemperature = amateurTemperature;
        _sampling = sampling;
    }

    public override string Name => "contrastive-decoding";

    public LanguageModel Amateur { get; }

    public float Alpha { get; }

    public float AmateurTemperature { get; }

    /// <summary>Both models must map ids to the same token text, or their log-probabilities compare different things.</summary>
    private static void CheckSameVocabulary(LanguageModel expert, LanguageModel amateur)
    {
        int e = expert.Tokenizer.VocabSize, a = amateur.Tokenizer.VocabSize;
        if (e != a || expert.Config.VocabSize != amateur.Config.VocabSize)
            throw new ArgumentException($"--amateur-model {amateur.Path}: its vocabulary has {a} tokens ({amateur.Config.VocabSize} logits), the expert's {e} ({expert.Config.VocabSize}); contrastive decoding needs the same vocabulary", nameof(amateur));
        for (int id = 0; id < e; id++)
        {
            if (!expert.Tokenizer.TokenBytes(id).SequenceEqual(amateur.Tokenizer.TokenBytes(id)))
                throw new ArgumentException($"--amateur-model {amateur.Path}: token {id} is '{amateur.Tokenizer.Piece(id)}' there but '{expert.Tokenizer.Piece(id)}' in the expert; contrastive decoding needs the same vocabulary", nameof(amateur));
        }
    }

    protected override IEnumerable<int> Run(int[] prompt, int maxTokens, CancellationToken ct)
    {
        int vocab = Model.Config.VocabSize;
        maxTokens = Math.Min(maxTokens, Math.Min(Model.ContextLength, Amateur.ContextLength) - prompt.Length);
        if (maxTokens < 0)
            throw new ArgumentException($"the prompt ({prompt.Length} tokens) does not fit the amateur's context of {Amateur.ContextLength} tokens", nameof(prompt));
        var chain = CreateChain(_sampling, prompt);
        BeginStats();
        using var expertCache = CreateCache(1, prompt.Length, maxTokens);
        using var amateurCache = Amateur.Network.CreateKvCache(Amateur.ContextLength);
        using var expert = expertCache.CreateSequence();
        using var amateur = amateurCache.CreateSequence();
        var expertLogits = new float[vocab];
        var amateurLogits = new float[vocab];
        var scores = new float[vocab];
        Prefill(Model.Network, expert, prompt, expertLogits);
        Prefill(Amateur.Network, amateur, prompt, amateurLogits);
        PromptDone();
        var one = new int[1];
        float[] Scores()
        {
            Score(expertLogits, amateurLogits, scores);
            return scores;
        }
        void Advance(int token)
        {
            one[0] = token;
            Prefill(Model.Network, expert, one, expertLogits);
            Prefill(Amateur.Network, amateur, one, amateurLogits);
            CountPass(1); // the expert's pass
            CountPass(1); // the amateur's
        }
        foreach (int token in DrawEach(prompt.Length, maxTokens, chain, Scores, Advance, ct))
            yield return token;
    }

    /// <summary>
    /// The contrastive objective on one step's logits: log p_e − log p_a(τ) on V_head, −∞ elsewhere. The
    /// amateur's logits are overwritten with its log-softmax; <paramref name="scores"/> receives the result.
    /// </summary>
    internal void Score(Span<float> expertLogits, Span<float> amateurLogits, Span<float> scores)
    {
        Distributions.LogSoftmax(expertLogits, scores);
        if (AmateurTemperature != 1f)
            System.Numerics.Tensors.TensorPrimitives.Divide(amateurLogits, AmateurTemperature, amateurLogits);
        Distributions.LogSoftmax(amateurLogits, amateurLogits);
        float maxLog = System.Numerics.Tensors.TensorPrimitives.Max(scores);
        float cut = maxLog + MathF.Log(Alpha); // p ≥ α·max p, in log space
        for (int i = 0; i < scores.Length; i++)
            scores[i] = scores[i] >= cut ? scores[i] - amateurLogits[i] : float.NegativeInfinity;
    }
}
