using System.Diagnostics;
using Engine.Api;
using Engine.Backends;
using Engine.Cache;
using Engine.Models;
using Engine.Sampling;

namespace Engine.Decoding;

/// <summary>Counts and timings of a strategy's last generation.</summary>
/// <param name="Passes">Forward passes after the prompt (one per batched step, whatever its rows).</param>
/// <param name="Rows">Rows those passes computed: beams, candidates, guidance sequences, trials.</param>
public sealed record DecodingStats(int PromptTokens, int GeneratedTokens, int Passes, int Rows, TimeSpan PromptTime, TimeSpan GenerationTime)
{
    public double GenerationTokensPerSecond => GeneratedTokens / Math.Max(GenerationTime.TotalSeconds, 1e-9);
}

/// <summary>
/// A decoding method that is more than "sample one token from one distribution per step": search over
/// several continuations (beams, candidates, trials) or guidance from a second sequence or model. Each
/// runs on whatever backend the model has (the CPU or CUDA: the logits of each step come to the host,
/// where the method's arithmetic is a few vocabulary-sized loops) and builds on the KV cache's
/// fork, compaction and multi-sequence batched passes. One generation at a time per instance.
/// </summary>
public abstract class DecodingStrategy
{
    protected DecodingStrategy(LanguageModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
    }

    public LanguageModel Model { get; }

    /// <summary>The strategy's name as the CLI's <c>--strategy</c> takes it.</summary>
    public abstract string Name { get; }

    /// <summary>Stop at EOS (and the other end-of-generation tokens), which is not returned.</summary>
    public bool StopAtEndOfGeneration { get; set; } = true;

    /// <summary>
    /// Constrains the output to this grammar (null: none): beams, candidates and draws see only the tokens it
    /// allows at their own text, end tokens only where that text is complete; a dead end stops the output.
    /// </summary>
    public Engine.Constraints.Grammar? Grammar { get; set; }

    /// <summary>Whether the method applies <see cref="Grammar"/> (one that cannot is refused rather than ignored).</summary>
    protected virtual bool SupportsGrammar => true;

    /// <summary>A constraint of <see cref="Grammar"/> for one generation, or null.</summary>
    protected Engine.Constraints.GrammarConstraint? CreateConstraint() =>
        Grammar is null ? null : new Engine.Constraints.GrammarConstraint(Grammar, Model.Tokenizer);

    /// <summary>The last generation's counts (null before the first).</summary>
    public DecodingStats? LastStats { get; protected set; }

    /// <summary>
    /// Generates up to <paramref name="maxTokens"/> tokens after <paramref name="prompt"/> (exactly these ids:
    /// add BOS yourself). Step-wise methods yield each token as it is decided; search yields its best
    /// hypothesis once the search ends.
    /// </summary>
    public IEnumerable<int> Generate(IReadOnlyList<int> prompt, int maxTokens, CancellationToken cancellationToken = default)
    {
        CheckPrompt(prompt, "prompt");
        if (maxTokens < 0)
            throw new ArgumentOutOfRangeException(nameof(maxTokens), $"the token count {maxTokens} must not be negative");
        if (Grammar is not null && !SupportsGrammar)
            throw new NotSupportedException($"--strategy {Name} does not take a grammar yet");
        return Run(prompt.ToArray(), maxTokens, cancellationToken);
    }

    protected abstract IEnumerable<int> Run(int[] prompt, int maxTokens, CancellationToken ct);

    /// <summary>A prompt must be non-empty, in the vocabulary and fit the context: the error names <paramref name="what"/>.</summary>
    protected void CheckPrompt(IReadOnlyList<int> prompt, string what)
    {
        ArgumentNullException.ThrowIfNull(prompt, what);
        if (prompt.Count == 0)
            throw new ArgumentException($"the {what} is empty (it needs at least one token, e.g. BOS)", what);
        foreach (int id in prompt)
        {
            if ((uint)id >= (uint)Model.Config.VocabSize)
                throw new ArgumentOutOfRangeException(what, $"{what}: token id {id} is outside the vocabulary (0..{Model.Config.VocabSize - 1})");
        }
        if (prompt.Count >= Model.ContextLength)
            throw new ArgumentException($"the {what} ({prompt.Count} tokens) leaves no room in the context of {Model.ContextLength} tokens", what);
    }

    protected bool IsEnd(int token) => StopAtEndOfGeneration && Model.Tokenizer.IsEndOfGeneration(token);

    /// <summary>A sampler chain for <paramref name="sampling"/>; history-dependent processors see the prompt first, as a session's do.</summary>
    protected SamplerChain CreateChain(SamplingOptions sampling, int[] prompt)
    {
        var chain = SamplerChain.Create(sampling, Model.Config.VocabSize, Model.Tokenizer);
        chain.AcceptContext(prompt);
        return chain;
    }

    /// <summary>
    /// The loop of the methods that draw one token per step from logits of their own making (guidance,
    /// contrastive decoding, span extraction): <paramref name="score"/> gives the step's logits (null:
    /// nothing may follow), the chain draws, an end token stops, <paramref name="kept"/> hears each kept
    /// token, and <paramref name="advance"/> runs the pass that gives the next step's logits (not after
    /// the last token, so a generation that stops wastes no pass).
    /// </summary>
    protected IEnumerable<int> DrawEach(int promptTokens, int maxTokens, SamplerChain chain, Func<float[]?> score, Action<int> advance,
        CancellationToken ct, Action<int>? kept = null)
    {
        int generated = 0;
        var constraint = CreateConstraint();
        try
        {
            while (generated < maxTokens)
            {
                ct.ThrowIfCancellationRequested();
                var logits = score();
                if (logits is null)
                    break;
                if (constraint is not null && !constraint.Apply(logits))
                    break; // the grammar's dead end: nothing may follow
                int token = chain.Sample(logits);
                if (IsEnd(token))
                    break;
                constraint?.Accept(token);
                chain.Accept(token);
                kept?.Invoke(token);
                generated++;
                yield return token;
                if (generated == maxTokens)
                    break;
                advance(token);
            }
        }
        finally
        {
            EndStats(promptTokens, generated);
        }
    }

    /// <summary>A cache for <paramref name="sequences"/> sequences that fork from one prompt: the pool holds the prompt once plus each sequence's own tokens.</summary>
    protected KvCache CreateCache(int sequences, int promptTokens, int maxTokens)
    {
        const int blockSize = 32;
        long own = (long)sequences * (maxTokens + 2 * blockSize + Model.Network.MaxBatch);
        int pool = (int)Math.Min(int.MaxValue / 2, promptTokens + own + blockSize);
        return Model.Network.CreateKvCache(Model.ContextLength, blockSize, sequences: sequences, poolTokens: pool);
    }

    /// <summary>Runs <paramref name="tokens"/> through <paramref name="sequence"/> (split into passes as the model's batch allows), keeping the last row's logits.</summary>
    protected void Prefill(LlamaModel network, KvSequence sequence, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        var positions = new int[tokens.Length];
        for (int i = 0; i < positions.Length; i++)
            positions[i] = sequence.Length + i;
        Span<int> last = [tokens.Length - 1];
        network.Forward(sequence, tokens, positions, AttentionMask.Causal, last, logits);
    }

    /// <summary>One batched pass: token <paramref name="tokens"/>[i] appended to <paramref name="sequences"/>[i]; row i of <paramref name="logits"/> is its next-token logits.</summary>
    protected void Step(LlamaModel network, IReadOnlyList<KvSequence> sequences, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        int n = sequences.Count;
        if (_segments.Length < n)
            _segments = new BatchSegment[Math.Max(n, 2 * _segments.Length)];
        for (int i = 0; i < n; i++)
            _segments[i] = new BatchSegment(sequences[i], 1, true);
        network.ForwardBatch(_segments.AsSpan(0, n), tokens, logits[..(n * network.Config.VocabSize)]);
        _passes++;
        _rows += n;
    }

    private BatchSegment[] _segments = [];
    private int _passes, _rows;
    private readonly Stopwatch _clock = new();
    private TimeSpan _promptTime;

    /// <summary>Starts the counters of a generation (call before the prompt's pass).</summary>
    protected void BeginStats()
    {
        _passes = _rows = 0;
        _clock.Restart();
    }

    /// <summary>The prompt is in: later passes count as generation.</summary>
    protected void PromptDone()
    {
        _promptTime = _clock.Elapsed;
        _passes = _rows = 0;
        _clock.Restart();
    }

    /// <summary>Counts a pass the strategy ran itself (not through <see cref="Step"/>).</summary>
    protected void CountPass(int rows)
    {
        _passes++;
        _rows += rows;
    }

    protected void EndStats(int promptTokens, int generated) =>
        LastStats = new DecodingStats(promptTokens, generated, _passes, _rows, _promptTime, _clock.Elapsed);
}
