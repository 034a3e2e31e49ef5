using System.Diagnostics;
using System.Runtime.CompilerServices;
using Engine.Backends;
using Engine.Cache;
using Engine.Sampling;

namespace Engine.Api;

/// <summary>What to generate.</summary>
public sealed record GenerationOptions
{
    /// <summary>Most tokens to generate.</summary>
    public int MaxTokens { get; init; } = 128;

    public SamplingOptions Sampling { get; init; } = new();

    /// <summary>Stop at EOS (and other end-of-generation tokens); the stop token is not returned.</summary>
    public bool StopAtEndOfGeneration { get; init; } = true;

    /// <summary>
    /// Constrains the generated text to this grammar (<see cref="Engine.Constraints.Gbnf.Parse"/>): tokens that
    /// would leave it are masked before sampling, end tokens are allowed only where the text is complete.
    /// The grammar applies to the generated text alone, not to the prompt.
    /// </summary>
    public Engine.Constraints.Grammar? Grammar { get; init; }

    public void Validate()
    {
        if (MaxTokens < 0)
            throw new ArgumentOutOfRangeException(nameof(MaxTokens), $"the token count {MaxTokens} must not be negative");
        Sampling.Validate();
    }
}

/// <summary>Why a generation ended.</summary>
public enum StopReason
{
    /// <summary>The model produced an end-of-generation token.</summary>
    EndOfGeneration,
    /// <summary><see cref="GenerationOptions.MaxTokens"/> were generated.</summary>
    MaxTokens,
    /// <summary>The session's context is full.</summary>
    ContextFull,
    /// <summary>The grammar allows no token here (the text cannot continue and is not complete).</summary>
    GrammarDeadEnd,
}

/// <summary>Counts and timings of the last generation.</summary>
public sealed record GenerationStats(int PromptTokens, TimeSpan PromptTime, int GeneratedTokens, TimeSpan GenerationTime, StopReason StopReason)
{
    public double PromptTokensPerSecond => PromptTokens / Math.Max(PromptTime.TotalSeconds, 1e-9);

    public double GenerationTokensPerSecond => GeneratedTokens / Math.Max(GenerationTime.TotalSeconds, 1e-9);
}

/// <summary>
/// One conversation with a model: a KV-cache sequence and the tokens in it. Each call to
/// <see cref="Generate"/> or <see cref="GenerateAsync"/> continues from where the last one stopped.
/// Not thread-safe: use one session per concurrent request.
/// </summary>
public sealed class Session : IDisposable
{
    private readonly LanguageModel _model;
    private readonly KvCache _cache;
    private readonly KvSequence _sequence;
    private readonly List<int> _tokens;
    private readonly float[] _logits;
    private readonly int[] _position = new int[1];

    internal Session(LanguageModel model)
    {
        _model = model;
        _cache = model.Network.CreateKvCache(model.ContextLength);
        _sequence = _cache.CreateSequence();
        _tokens = new List<int>(model.ContextLength); // the context never outgrows it: no regrowth while decoding
        _logits = new float[model.Config.VocabSize];
    }

    /// <summary>Every token in the context so far (prompts and generated tokens).</summary>
    public IReadOnlyList<int> Tokens => _tokens;

    /// <summary>Counts and timings of the current or last generation (built on request, so that the token loop allocates nothing).</summary>
    public GenerationStats? LastStats => _statsPromptTokens < 0 ? null
        : new GenerationStats(_statsPromptTokens, _statsPromptTime, _statsGenerated, _statsGenerationTime, _statsReason);

    private int _statsPromptTokens = -1, _statsGenerated;
    private TimeSpan _statsPromptTime, _statsGenerationTime;
    private StopReason _statsReason;

    private void RecordStats(int promptTokens, TimeSpan promptTime, int generated, TimeSpan generationTime, StopReason reason)
    {
        (_statsPromptTokens, _statsPromptTime, _statsGenerated, _statsGenerationTime, _statsReason) =
            (promptTokens, promptTime, generated, generationTime, reason);
    }

    /// <summary>
    /// Keeps only the first <paramref name="length"/> tokens of the context — a conversation whose newly
    /// rendered prompt shares that prefix with what is cached prefills only the rest. The last kept token
    /// is run again by the next generation, so its logits are fresh.
    /// </summary>
    /// <exception cref="InvalidOperationException">A sliding-window cache no longer holds what that rollback needs.</exception>
    public void Rewind(int length)
    {
        if (length < 0 || length > _tokens.Count)
            throw new ArgumentOutOfRangeException(nameof(length), $"cannot rewind a context of {_tokens.Count} tokens to {length}");
        _sequence.Truncate(Math.Min(_sequence.Length, Math.Max(0, length - 1)));
        _tokens.RemoveRange(length, _tokens.Count - length);
    }

    /// <summary>
    /// Rewinds to the longest prefix of <paramref name="prompt"/> the context already holds (keeping at
    /// least its last token to run, whose logits start the answer) and returns that prefix's length: what
    /// follows it is all the next <see cref="Generate"/> must prefill. A sliding window that no longer holds
    /// what the rewind needs empties the context instead (returns 0).
    /// </summary>
    public int RewindToCommonPrefix(IReadOnlyList<int> prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        int common = 0;
        while (common < _tokens.Count && common < prompt.Count - 1 && _tokens[common] == prompt[common])
            common++;
        try
        {
            Rewind(common);
        }
        catch (InvalidOperationException)
        {
            Reset();
            common = 0;
        }
        return common;
    }

    /// <summary>Empties the context.</summary>
    public void Reset()
    {
        _sequence.Truncate(0);
        _tokens.Clear();
    }

    /// <summary>
    /// Appends <paramref name="prompt"/> to the context (exactly these ids: add BOS yourself, or use
    /// <see cref="Tokenizers.TextTokenizer.Encode"/>) and yields generated token ids one by one. The
    /// generated tokens join the context, so the next call continues the conversation.
    /// </summary>
    public IEnumerable<int> Generate(IReadOnlyList<int> prompt, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options.Validate();
        if (prompt.Count == 0 && _tokens.Count == 0)
            throw new ArgumentException("the prompt is empty and the session has no context to continue from (a prompt needs at least one token, e.g. BOS)", nameof(prompt));
        foreach (int id in prompt)
        {
            if ((uint)id >= (uint)_model.Config.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(prompt), $"token id {id} is outside the vocabulary (0..{_model.Config.VocabSize - 1})");
        }
        if (_tokens.Count + prompt.Count > _model.ContextLength)
            throw new ArgumentException($"the prompt ({prompt.Count} tokens, {_tokens.Count} already in context) does not fit in the context of {_model.ContextLength} tokens", nameof(prompt));
        return GenerateIterator(prompt.ToArray(), options, SamplerChain.Create(options.Sampling, _model.Config.VocabSize, _model.Tokenizer), cancellationToken);
    }

    private IEnumerable<int> GenerateIterator(int[] prompt, GenerationOptions options, SamplerChain sampler, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        // a chain the device's fused kernel cannot compute, or a grammar's mask, samples on the host (the logits come down)
        _hostLogits = !options.Sampling.IsFusable || options.Grammar is not null;
        var grammar = options.Grammar is null ? null : new Engine.Constraints.GrammarConstraint(options.Grammar, _model.Tokenizer);
        bool argmaxOnly = sampler.IsGreedy && sampler.Processors.All(p => p.PreservesArgmax); // once, not per token
        _tokens.AddRange(prompt);
        sampler.AcceptContext(_tokens); // the penalties see the whole context
        ProcessPending(); // the prompt, plus the last token of a previous generation
        var promptTime = clock.Elapsed;
        clock.Restart();
        int generated = 0;
        var reason = StopReason.MaxTokens;
        var tokenizer = _model.Tokenizer;
        while (generated < options.MaxTokens)
        {
            ct.ThrowIfCancellationRequested();
            int next;
            if (grammar is not null)
            {
                next = Constrained(grammar, sampler, argmaxOnly);
                if (next < 0)
                {
                    reason = StopReason.GrammarDeadEnd;
                    break;
                }
                grammar.Accept(next);
            }
            else
                next = _onDevice.Rows > 0 ? SampleOnDevice(options.Sampling, sampler) : sampler.Sample(_logits);
            if ((options.StopAtEndOfGeneration || grammar is not null) && tokenizer.IsEndOfGeneration(next))
            {
                reason = StopReason.EndOfGeneration;
                break;
            }
            generated++;
            _tokens.Add(next);
            sampler.Accept(next);
            RecordStats(prompt.Length, promptTime, generated, clock.Elapsed, reason);
            yield return next;
            if (generated == options.MaxTokens)
                break;
            if (_tokens.Count >= _model.ContextLength)
            {
                reason = StopReason.ContextFull;
                break;
            }
            ProcessPending();
        }
        RecordStats(prompt.Length, promptTime, generated, clock.Elapsed, reason);
    }

    /// <summary>
    /// Runs the tokens not yet in the KV cache through the model at the next positions, keeping the last
    /// row's logits. A generated token is processed only when the next one is wanted, so a generation
    /// that stops does no wasted forward pass.
    /// </summary>
    private void ProcessPending()
    {
        int start = _sequence.Length;
        int count = _tokens.Count - start;
        bool onDevice = _model.Network.Backend is IDeviceDecoding && !_hostLogits;
        if (count == 0)
        {
            if (_model.Network.Backend is not IDeviceDecoding)
                return; // the last pass's logits are still in _logits
            // On the device the logits live in the model's scratch, which another session may have used
            // since: run the last token again.
            _sequence.Truncate(--start);
            count = 1;
        }
        var tokens = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_tokens).Slice(start, count);
        int[] positions = count == 1 ? _position : new int[count];
        for (int i = 0; i < count; i++)
            positions[i] = start + i;
        Span<int> last = [count - 1];
        if (onDevice)
            _onDevice = _model.Network.ForwardOnDevice(_sequence, tokens, positions, AttentionMask.Causal, last);
        else
        {
            _onDevice = default;
            _model.Network.Forward(_sequence, tokens, positions, AttentionMask.Causal, last, _logits);
        }
    }

    /// <summary>
    /// The next token where the logits are (a GPU): the argmax for greedy decoding, else the fused
    /// sampling kernel — temperature, top-k, top-p, min-p and the draw in one launch, drawn with Philox
    /// from (seed, the token's position), so a seed reproduces a generation on any device. Only the
    /// token id crosses to the host.
    /// </summary>
    private int SampleOnDevice(SamplingOptions options, SamplerChain sampler)
    {
        var device = (IDeviceDecoding)_model.Network.Backend;
        Span<int> token = _token;
        if (sampler.IsGreedy)
            device.ArgMax(_onDevice, token);
        else
            device.Sample(_onDevice, FusedSamplingParameters.From(options), options.Seed, (ulong)_tokens.Count, token);
        return token[0];
    }

    /// <summary>
    /// The next token under a grammar: greedy, and sampling through a top-k, check the best candidates
    /// first; otherwise (or when too few of them are allowed) the logits are masked. −1 at a dead end.
    /// </summary>
    private int Constrained(Engine.Constraints.GrammarConstraint grammar, SamplerChain sampler, bool argmaxOnly)
    {
        var scratch = _scratch ??= new float[_logits.Length]; // the logits stay as computed: a later call may sample from them again
        return argmaxOnly ? grammar.Greedy(_logits, scratch) : grammar.Sample(sampler, _logits, scratch);
    }

    private float[]? _scratch;
    private Activation _onDevice;
    private bool _hostLogits;
    private readonly int[] _token = new int[1];

    /// <summary>
    /// Tokenizes <paramref name="prompt"/> (adding BOS as the model says when the session is empty),
    /// generates, and streams the text as it completes — a multi-byte character split across tokens is
    /// yielded only once whole. Each token is computed off the caller's thread; cancellation stops
    /// between tokens with <see cref="OperationCanceledException"/>.
    /// </summary>
    public async IAsyncEnumerable<string> GenerateAsync(string prompt, GenerationOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        options ??= new GenerationOptions();
        var ids = _model.Tokenizer.Encode(prompt, addSpecial: _tokens.Count == 0, parseSpecial: true);
        var detokenizer = _model.Tokenizer.CreateStreamingDetokenizer();
        int lastContextToken = ids.Count > 0 ? ids[^1] : _tokens.Count > 0 ? _tokens[^1] : -1;
        if (lastContextToken == _model.Tokenizer.BosId)
            detokenizer.Push(lastContextToken); // a first word right after BOS loses its SentencePiece space
        using var tokens = Generate(ids, options, cancellationToken).GetEnumerator();
        while (await Task.Run(tokens.MoveNext, cancellationToken).ConfigureAwait(false))
        {
            string text = detokenizer.Push(tokens.Current);
            if (text.Length > 0)
                yield return text;
        }
        string rest = detokenizer.Flush();
        if (rest.Length > 0)
            yield return rest;
    }

    public void Dispose()
    {
        _sequence.Dispose();
        _cache.Dispose();
    }
}
