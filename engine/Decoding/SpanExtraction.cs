using Engine.Api;
using Engine.Sampling;

namespace Engine.Decoding;

/// <summary>
/// Exact-extract span decoding: the output is constrained to be a contiguous span of a source text (the
/// document an extractive answer must quote), so what comes out can always be found verbatim in the
/// source. At each step the allowed tokens are those that continue at least one occurrence of the span
/// so far (before the first token: any source token), plus the end token once the span is not empty;
/// the sampler chain (greedy by default) picks among them from the model's logits, so the model decides
/// where the span starts and where it ends. The span ends at the end token, or where no occurrence can
/// continue (the source runs out).
/// </summary>
public sealed class SpanExtraction : DecodingStrategy
{
    private readonly int[] _source;
    private readonly SamplingOptions _sampling;

    /// <param name="source">The text's token ids (tokenized without BOS, as it appears in the prompt).</param>
    public SpanExtraction(LanguageModel model, IReadOnlyList<int> source, SamplingOptions sampling) : base(model)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(sampling);
        sampling.Validate();
        if (source.Count == 0)
            throw new ArgumentException("the source to extract from is empty (--context)", nameof(source));
        foreach (int id in source)
        {
            if ((uint)id >= (uint)model.Config.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(source), $"source token id {id} is outside the vocabulary (0..{model.Config.VocabSize - 1})");
        }
        _source = source.ToArray();
        _sampling = sampling;
    }

    public override string Name => "extract";

    /// <summary>Where the last generation's span starts in the source (its first occurrence), or -1 if it was empty.</summary>
    public int LastSpanStart { get; private set; } = -1;

    protected override IEnumerable<int> Run(int[] prompt, int maxTokens, CancellationToken ct)
    {
        var network = Model.Network;
        int vocab = Model.Config.VocabSize;
        maxTokens = Math.Min(maxTokens, Model.ContextLength - prompt.Length);
        var chain = CreateChain(_sampling, prompt);
        LastSpanStart = -1;
        BeginStats();
        using var cache = CreateCache(1, prompt.Length, maxTokens);
        using var sequence = cache.CreateSequence();
        var logits = new float[vocab];
        var masked = new float[vocab];
        Prefill(network, sequence, prompt, logits);
        PromptDone();
        // next[i]: the source position a span occurrence would continue at; all of them before the first token
        var next = new List<int>(Enumerable.Range(0, _source.Length));
        var one = new int[1];
        int length = 0;
        float[]? Masked()
        {
            bool any = false;
            Array.Fill(masked, float.NegativeInfinity);
            foreach (int j in next)
            {
                if (j < _source.Length)
                {
                    masked[_source[j]] = logits[_source[j]];
                    any = true;
                }
            }
            if (!any)
                return null; // every occurrence reached the end of the source
            if (length > 0 && Model.Tokenizer.EosId is int eos && StopAtEndOfGeneration)
                masked[eos] = logits[eos];
            return masked;
        }
        void Kept(int token)
        {
            int kept = 0;
            for (int i = 0; i < next.Count; i++)
            {
                int j = next[i];
                if (j < _source.Length && _source[j] == token)
                    next[kept++] = j + 1;
            }
            next.RemoveRange(kept, next.Count - kept);
            length++;
            LastSpanStart = next[0] - length; // the first occurrence of the span so far
        }
        void Advance(int token)
        {
            one[0] = token;
            Prefill(network, sequence, one, logits);
            CountPass(1);
        }
        foreach (int token in DrawEach(prompt.Length, maxTokens, chain, Masked, Advance, ct, Kept))
            yield return token;
    }
}
