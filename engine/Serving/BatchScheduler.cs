using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Channels;
using Engine.Api;
using Engine.Cache;
using Engine.Models;
using Engine.Sampling;
using Engine.Speculative;
using Engine.Tokenizers;

namespace Engine.Serving;

/// <summary>One completion to compute: a prompt of token ids and how to continue it.</summary>
public sealed record CompletionRequest
{
    /// <summary>The prompt, exactly these ids (BOS and the chat template's tokens included).</summary>
    public required IReadOnlyList<int> Prompt { get; init; }

    /// <summary>Most tokens to generate (0: as many as the context leaves).</summary>
    public int MaxTokens { get; init; }

    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;

    /// <summary>Strings that end the generation where they appear (not included in the text).</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];

    /// <summary>-1: no log probabilities; otherwise each token's, with the <c>TopLogprobs</c> likeliest alternatives (0..20).</summary>
    public int TopLogprobs { get; init; } = -1;

    /// <summary>Keep generating past end-of-generation tokens.</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>Constrain the output to this grammar (JSON mode, a JSON schema, GBNF); the text ends where the grammar lets it.</summary>
    public Engine.Constraints.Grammar? Grammar { get; init; }
}

/// <summary>Why a completion ended, as OpenAI names it.</summary>
public enum FinishReason
{
    /// <summary>An end-of-generation token or a stop string.</summary>
    Stop,
    /// <summary>max_tokens, or the context is full.</summary>
    Length,
    /// <summary>The caller went away.</summary>
    Cancelled,
}

/// <summary>A token's log probability (natural log, of the model's distribution before sampling processors).</summary>
public readonly record struct TokenLogprob(int Token, float Logprob);

/// <summary>What a running completion reports: one <see cref="TokenEvent"/> per generated token, then one <see cref="EndEvent"/>.</summary>
public abstract record CompletionEvent;

/// <summary>A generated token and the text it releases (empty while a character or a possible stop string is incomplete).</summary>
public sealed record TokenEvent(int Token, string Text, float Logprob, TokenLogprob[]? Top) : CompletionEvent;

/// <summary>The end: why, and the counts (<paramref name="CachedTokens"/> of the prompt came from the prefix cache).</summary>
public sealed record EndEvent(FinishReason Reason, int PromptTokens, int CachedTokens, int CompletionTokens, string Text) : CompletionEvent;

/// <summary>The request queue is full (HTTP 429).</summary>
public sealed class SchedulerBusyException(string message) : InvalidOperationException(message);

/// <summary>A snapshot of what the scheduler is doing (Prometheus <c>/metrics</c>).</summary>
public sealed record SchedulerMetrics(int Active, int Queued, long Requests, long PromptTokens, long CachedPromptTokens, long GeneratedTokens,
    long Steps, int KvUsedBlocks, int KvTotalBlocks, int PrefixCachedBlocks, double GeneratedTokensPerSecond, long Cancelled,
    long DraftedTokens = 0, long AcceptedTokens = 0, long Preemptions = 0, double StepSeconds = 0, double ForwardSeconds = 0);

/// <summary>How the scheduler runs.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Sequences decoded together at most; more requests wait in the queue.</summary>
    public int Parallel { get; init; } = 4;

    /// <summary>Requests that may wait; beyond that <see cref="BatchScheduler.Submit"/> refuses (429).</summary>
    public int MaxQueue { get; init; } = 64;

    /// <summary>Most prompt tokens one sequence prefills per step, so that decoding sequences are not stalled behind a long prompt.</summary>
    public int PrefillChunk { get; init; } = 128;

    /// <summary>Keep computed prompt blocks for later requests (off for sliding-window models, whose caches drop blocks).</summary>
    public bool PrefixCaching { get; init; } = true;

    /// <summary>
    /// Tokens the shared KV pool holds across all requests and the prefix cache (0: <see cref="Parallel"/>
    /// whole contexts, on the CPU capped at half the memory the process may use). Never less than one
    /// context; with less than <see cref="Parallel"/> contexts, requests wait for room instead of failing.
    /// </summary>
    public int KvPoolTokens { get; init; }

    /// <summary>
    /// Make and commit the whole KV pool when the scheduler starts (<see cref="Cache.KvCache.Reserve"/>), as
    /// llama.cpp's server does: its memory is taken, or refused with an error, at start, and no step pays
    /// for writing a block the first time. Off: blocks are made as requests first need them.
    /// </summary>
    public bool ReserveKvPool { get; init; }

    /// <summary>The largest <see cref="KvPoolTokens"/> (2^28: far past any machine's memory, and block counts stay in range).</summary>
    public const int MaxKvPoolTokens = 1 << 28;

    /// <summary>
    /// Draft tokens a greedy request may have verified per step (0: off): prompt lookup
    /// (<see cref="PromptLookupSource"/>) proposes what followed the context's last n-gram earlier, and
    /// the draft rides in the request's rows of the batched step. Pays where a step's cost does not grow
    /// with its rows (a GPU); on a small CPU verifying costs about what decoding does.
    /// </summary>
    public int SpeculativeDraft { get; init; }

    public void Validate()
    {
        if (Parallel < 1 || Parallel > 1024)
            throw new ArgumentOutOfRangeException(nameof(Parallel), $"parallel sequences {Parallel} must be 1..1024");
        if (MaxQueue < 0)
            throw new ArgumentOutOfRangeException(nameof(MaxQueue), $"queue length {MaxQueue} must not be negative");
        if (PrefillChunk < 1)
            throw new ArgumentOutOfRangeException(nameof(PrefillChunk), $"prefill chunk {PrefillChunk} must be positive");
        if (KvPoolTokens < 0 || KvPoolTokens > MaxKvPoolTokens)
            throw new ArgumentOutOfRangeException(nameof(KvPoolTokens), $"KV pool of {KvPoolTokens} tokens must be 0 (automatic) to {MaxKvPoolTokens}");
        if (SpeculativeDraft < 0 || SpeculativeDraft > 32)
            throw new ArgumentOutOfRangeException(nameof(SpeculativeDraft), $"draft tokens {SpeculativeDraft} must be 0..32");
    }
}

/// <summary>
/// Serves many completions on one model at once by continuous batching (Yu et al., "Orca", OSDI 2022):
/// one thread runs steps; each step puts every active sequence's pending tokens — one for a decoding
/// sequence, a chunk of prompt for a prefilling one (Agrawal et al., "Sarathi-Serve", OSDI 2024: chunked
/// prefill so decoders are not stalled) — through one <see cref="LlamaModel.ForwardBatch"/>, then samples
/// each sequence's next token with its own sampler chain. A request joins at the next step and leaves the
/// moment it finishes or its caller cancels, freeing its KV blocks; prompt blocks stay in the
/// <see cref="PrefixCache"/> for the requests that share them.
/// </summary>
public sealed class BatchScheduler : IDisposable
{
    private readonly LanguageModel _model;
    private readonly SchedulerOptions _options;
    private readonly KvCache _cache;
    private readonly PrefixCache? _prefix;
    private readonly ConcurrentQueue<Slot> _queue = new();
    private readonly List<Slot> _active = [];
    private readonly List<Slot> _preempted = [];
    private readonly Thread _thread;
    private readonly ManualResetEventSlim _wake = new(false);
    private readonly CancellationTokenSource _stop = new();
    private readonly float[] _logits;
    private readonly List<BatchSegment> _segments = [];
    private readonly List<Slot> _batch = [];
    private readonly List<int> _tokens = [];
    private readonly List<int> _matched = [];
    private int _queued;
    private long _requests, _promptTokens, _cachedTokens, _generated, _steps, _cancelled, _drafted, _accepted, _preemptions;

    // Stopwatch ticks in Step and in its forward passes: the rest of a step (sampling, detokenizing, stop
    // checks, handing chunks to the streams) is their difference.
    private long _stepTicks, _forwardTicks;
    private readonly PromptLookupSource _lookup = new(maxNgram: 3, minNgram: 1, maxBranches: 1);
    private readonly DraftTree _tree = new();
    private long _rateStart = Stopwatch.GetTimestamp(), _rateTokens;
    private double _rate;

    public BatchScheduler(LanguageModel model, SchedulerOptions? options = null)
    {
        _model = model;
        _options = options ?? new SchedulerOptions();
        _options.Validate();
        var net = model.Network;
        int poolTokens = PoolTokens(model, _options);
        const string Fewer = "ask for fewer tokens (--kv-tokens), fewer --parallel requests or a shorter context";
        if (_options.ReserveKvPool && model.Backend is Backends.Cpu.CpuBackend)
        {
            long bytes = PoolBytes(model, poolTokens), available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            if (bytes > available)
                throw new InsufficientMemoryException($"the KV pool of {poolTokens} tokens needs {bytes >> 20} MiB, more than the "
                    + $"{available >> 20} MiB this process may use; {Fewer}");
        }
        _cache = net.CreateKvCache(model.ContextLength, sequences: _options.Parallel, poolTokens: poolTokens);
        if (_options.ReserveKvPool)
        {
            try
            {
                _cache.Reserve();
            }
            catch (OutOfMemoryException e)
            {
                _cache.Dispose();
                throw new InsufficientMemoryException($"the KV pool of {KvPoolTokens} tokens ({PoolBytes(model, KvPoolTokens) >> 20} MiB) "
                    + $"could not be reserved ({e.Message}); {Fewer}", e);
            }
        }
        if (_options.PrefixCaching && _cache.Window == 0 && _cache.Local is null)
            _prefix = new PrefixCache(_cache);
        _logits = new float[(long)Math.Min(_options.Parallel * (1 + _options.SpeculativeDraft), net.MaxBatch) * model.Config.VocabSize];
        _thread = new Thread(Loop) { IsBackground = true, Name = "engine-scheduler" };
        _thread.Start();
    }

    public LanguageModel Model => _model;

    /// <summary>Tokens the KV pool holds (all requests and the prefix cache together).</summary>
    public int KvPoolTokens => _cache.MaxBlocks * _cache.BlockSize;

    /// <summary>
    /// The pool's size: as asked, else <see cref="SchedulerOptions.Parallel"/> whole contexts — on the CPU
    /// no more than half the memory the process may use, so that sixteen requests on a 7B model (1 MiB of
    /// KV per token) do not ask for 64 GiB that the prefix cache would fill over time.
    /// </summary>
    private static int PoolTokens(LanguageModel model, SchedulerOptions options)
    {
        if (options.KvPoolTokens > 0)
            return options.KvPoolTokens;
        if (model.Backend is not Backends.Cpu.CpuBackend)
            return 0;
        long perToken = PoolBytes(model, 1);
        long budget = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2;
        return (int)Math.Clamp(budget / Math.Max(1, perToken), model.ContextLength, (long)model.ContextLength * options.Parallel);
    }

    /// <summary>Bytes of KV cache <paramref name="tokens"/> tokens hold on this model's backend.</summary>
    private static long PoolBytes(LanguageModel model, int tokens) =>
        (long)tokens * model.Config.Layers * model.Backend.KvBytesPerTokenLayer(model.Config.KvHeads, model.Config.HeadDim);

    /// <summary>Whether the whole KV pool was made and committed at start (<see cref="SchedulerOptions.ReserveKvPool"/>).</summary>
    public bool KvPoolReserved => _options.ReserveKvPool;

    public SchedulerOptions Options => _options;

    /// <summary>Whether prompt blocks are cached across requests.</summary>
    public bool PrefixCaching => _prefix is not null;

    /// <summary>
    /// Queues a completion and returns its events: tokens as they are generated, then the end. Cancelling
    /// <paramref name="cancellationToken"/> ends it (with <see cref="FinishReason.Cancelled"/>) at the next
    /// step and frees its sequence.
    /// </summary>
    /// <exception cref="ArgumentException">The prompt is empty, holds an id outside the vocabulary, or leaves no room in the context.</exception>
    /// <exception cref="SchedulerBusyException">The queue is full.</exception>
    public ChannelReader<CompletionEvent> Submit(CompletionRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_stop.IsCancellationRequested, this);
        int context = _model.ContextLength;
        if (request.Prompt.Count == 0)
            throw new ArgumentException("the prompt is empty (it needs at least one token)", nameof(request));
        foreach (int id in request.Prompt)
        {
            if ((uint)id >= (uint)_model.Config.VocabSize)
                throw new ArgumentException($"token id {id} is outside the vocabulary (0..{_model.Config.VocabSize - 1})", nameof(request));
        }
        if (request.Prompt.Count >= context)
            throw new ArgumentException($"the prompt has {request.Prompt.Count} tokens; the context holds {context}, and at least one must be left to generate", nameof(request));
        if (request.MaxTokens < 0 || request.Prompt.Count + request.MaxTokens > context)
            throw new ArgumentException($"max_tokens {request.MaxTokens} with a prompt of {request.Prompt.Count} tokens exceeds the context of {context} tokens", nameof(request));
        if (request.TopLogprobs < -1 || request.TopLogprobs > 20)
            throw new ArgumentException($"top_logprobs {request.TopLogprobs} must be 0..20", nameof(request));
        request.Sampling.Validate();
        var stops = new StopSequences(request.Stop);
        if (Interlocked.Increment(ref _queued) > _options.MaxQueue + Math.Max(0, _options.Parallel - _activeCount))
        {
            Interlocked.Decrement(ref _queued);
            throw new SchedulerBusyException($"the server is busy: {_options.Parallel} requests running and {_options.MaxQueue} waiting");
        }
        var channel = Channel.CreateUnbounded<CompletionEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var slot = new Slot(request, channel.Writer, cancellationToken, stops, _model.Tokenizer);
        slot.Registration = cancellationToken.Register(() => _wake.Set());
        _queue.Enqueue(slot);
        _wake.Set();
        return channel.Reader;
    }

    private volatile int _activeCount;

    public SchedulerMetrics Metrics()
    {
        double seconds = Stopwatch.GetElapsedTime(Interlocked.Read(ref _rateStart)).TotalSeconds;
        double rate = seconds > 2 ? 0 : _rate; // nothing generated lately
        return new SchedulerMetrics(_activeCount, Volatile.Read(ref _queued) + _preempted.Count, Interlocked.Read(ref _requests), Interlocked.Read(ref _promptTokens),
            Interlocked.Read(ref _cachedTokens), Interlocked.Read(ref _generated), Interlocked.Read(ref _steps), _cache.UsedBlocks, _cache.MaxBlocks,
            _prefix?.Blocks ?? 0, rate, Interlocked.Read(ref _cancelled), Interlocked.Read(ref _drafted), Interlocked.Read(ref _accepted),
            Interlocked.Read(ref _preemptions), Interlocked.Read(ref _stepTicks) / (double)Stopwatch.Frequency,
            Interlocked.Read(ref _forwardTicks) / (double)Stopwatch.Frequency);
    }

    private void Loop()
    {
        while (!_stop.IsCancellationRequested)
        {
            _wake.Reset();
            Admit();
            if (_active.Count == 0)
            {
                _wake.Wait(TimeSpan.FromSeconds(1));
                continue;
            }
            long stepStart = Stopwatch.GetTimestamp();
            try
            {
                Step();
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Something no request caused alone (a backend failure): every active request learns of it.
                foreach (var slot in _active)
                    Fail(slot, e);
                _active.Clear();
                _activeCount = 0;
            }
            Interlocked.Add(ref _stepTicks, Stopwatch.GetTimestamp() - stepStart);
        }
        foreach (var slot in _active)
            Finish(slot, FinishReason.Cancelled);
        _active.Clear();
        foreach (var slot in _preempted)
            Finish(slot, FinishReason.Cancelled);
        _preempted.Clear();
        while (_queue.TryDequeue(out var waiting))
            Finish(waiting, FinishReason.Cancelled);
    }

    /// <summary>
    /// Moves waiting requests into free places — first those preempted for room, then the queue in order —
    /// each starting from the longest cached prefix of what it has to compute.
    /// </summary>
    private void Admit()
    {
        while (_active.Count < _options.Parallel)
        {
            bool preempted = _preempted.Count > 0;
            Slot? next = preempted ? _preempted[0] : _queue.TryPeek(out var queued) ? queued : null;
            if (next is null)
                break;
            // Room for what it must compute (plus a block to grow into), cached prefixes giving way; when
            // the pool is smaller than every request's whole context, a request waits for others to finish.
            int needed = (next.Tokens.Count + _cache.BlockSize - 1) / _cache.BlockSize + 1;
            while (_cache.FreeBlocks < needed && _prefix is not null && _prefix.EvictOne())
            {
            }
            if (_cache.FreeBlocks < needed && _active.Count > 0 && !next.Cancellation.IsCancellationRequested)
                break;
            // The same prompt being prefilled right now (n completions of one request, a retried request):
            // wait a few steps and start from its cached blocks instead of computing it again beside it.
            if (!preempted && _prefix is not null && next.PromptLength > _cache.BlockSize && SamePromptPrefilling(next))
                break;
            Slot slot;
            if (preempted)
            {
                slot = next;
                _preempted.RemoveAt(0);
            }
            else
            {
                if (!_queue.TryDequeue(out slot!))
                    break;
                Interlocked.Decrement(ref _queued);
                Interlocked.Increment(ref _requests);
                Interlocked.Add(ref _promptTokens, slot.PromptLength);
            }
            if (slot.Cancellation.IsCancellationRequested)
            {
                Finish(slot, FinishReason.Cancelled);
                continue;
            }
            int cached = 0;
            if (_prefix is not null)
            {
                _matched.Clear();
                // at least the last token is computed: its logits give the next generated token
                cached = _prefix.Match(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(slot.Tokens)[..(slot.Tokens.Count - 1)], _matched);
                slot.Sequence = _cache.CreateSequence(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_matched), cached);
            }
            else
                slot.Sequence = _cache.CreateSequence();
            if (!preempted)
            {
                slot.Cached = Math.Min(cached, slot.PromptLength);
                Interlocked.Add(ref _cachedTokens, slot.Cached);
            }
            _active.Add(slot);
        }
        _activeCount = _active.Count;
    }

    private bool SamePromptPrefilling(Slot next)
    {
        foreach (var slot in _active)
        {
            if (!slot.PromptCached && slot.PromptLength == next.PromptLength
                && System.Runtime.InteropServices.CollectionsMarshal.AsSpan(slot.Tokens)[..slot.PromptLength]
                    .SequenceEqual(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(next.Tokens)[..next.PromptLength]))
                return true;
        }
        return false;
    }

    /// <summary>
    /// Frees the newest request's KV blocks so that the others can go on (preemption by recomputation, as
    /// vLLM does): it waits at the head of the line and, readmitted, computes its context again — from
    /// the prefix cache where its blocks are still there. Its sampler, text and stop state carry on.
    /// </summary>
    private void Preempt(Slot slot)
    {
        _active.Remove(slot);
        if (_prefix is not null && slot.Sequence is { } seq)
            _prefix.Insert(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(slot.Tokens)[..Math.Min(seq.Length, slot.Tokens.Count)], seq);
        slot.Sequence?.Dispose();
        slot.Sequence = null;
        slot.Draft.Clear();
        _preempted.Add(slot);
        Interlocked.Increment(ref _preemptions);
    }

    private void Step()
    {
        // Leaving first: a cancelled request frees its blocks before this step needs them.
        for (int i = _active.Count - 1; i >= 0; i--)
        {
            if (_active[i].Cancellation.IsCancellationRequested)
            {
                Finish(_active[i], FinishReason.Cancelled);
                _active.RemoveAt(i);
            }
        }
        _activeCount = _active.Count;
        if (_active.Count == 0)
            return;

        // The batch: every decoding sequence's next token, then prompt chunks in arrival order.
        var net = _model.Network;
        int budget = net.MaxBatch, bs = _cache.BlockSize, blocksNeeded = 0;
        _segments.Clear();
        _batch.Clear();
        _tokens.Clear();
        foreach (bool decoders in new[] { true, false })
        {
            foreach (var slot in _active)
            {
                int pending = slot.Tokens.Count - slot.Sequence!.Length;
                if ((pending == 1) != decoders || budget == 0)
                    continue;
                int count = Math.Min(Math.Min(pending, budget), decoders ? 1 : _options.PrefillChunk);
                _batch.Add(slot);
                _tokens.AddRange(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(slot.Tokens).Slice(slot.Sequence.Length, count));
                slot.Draft.Clear();
                if (decoders)
                    DraftFor(slot, budget - 1);
                _tokens.AddRange(slot.Draft);
                count += slot.Draft.Count;
                _segments.Add(new BatchSegment(slot.Sequence, count, Logits: count == pending + slot.Draft.Count) { LogitRows = 1 + slot.Draft.Count });
                budget -= count;
                blocksNeeded += (count + bs - 1) / bs + 1;
            }
        }
        // Room for the step: cached prefixes nobody uses give way, least recently used first.
        while (_cache.FreeBlocks < blocksNeeded && _prefix is not null && _prefix.EvictOne())
        {
        }

        int outputs = _segments.Sum(s => s.Logits ? s.LogitRows : 0);
        var logits = _logits.AsSpan(0, outputs * _model.Config.VocabSize);
        long forwardStart = Stopwatch.GetTimestamp();
        try
        {
            net.ForwardBatch(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_segments), System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_tokens), logits);
        }
        catch (KvCacheFullException)
        {
            // The pool is full even with the prefix cache emptied as far as it could be (a pool smaller than
            // every request's whole context): the newest request steps back for the others. Alone, a
            // request that cannot fit ends.
            var newest = _active[^1];
            if (_active.Count > 1)
                Preempt(newest);
            else
            {
                Finish(newest, FinishReason.Length);
                _active.RemoveAt(_active.Count - 1);
            }
            _activeCount = _active.Count;
            return;
        }
        finally
        {
            Interlocked.Add(ref _forwardTicks, Stopwatch.GetTimestamp() - forwardStart);
        }
        Interlocked.Increment(ref _steps);

        int o = 0, vocab = _model.Config.VocabSize;
        for (int j = 0; j < _batch.Count; j++)
        {
            var slot = _batch[j];
            if (!_segments[j].Logits)
                continue;
            if (!slot.PromptCached && _prefix is not null)
            {
                _prefix.Insert(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(slot.Tokens)[..slot.PromptLength], slot.Sequence!);
                slot.PromptCached = true;
            }
            // Row i follows the pending token and the first i draft tokens: accept drafts while the model's
            // own choice agrees (greedy verification: the output is what plain decoding gives), then keep in
            // the cache only the entries of accepted tokens.
            int rows = _segments[j].LogitRows, cached = slot.Sequence!.Length - _segments[j].Count + 1;
            FinishReason? reason = null;
            int accepted = 0;
            for (int i = 0; i < rows && reason is null; i++)
            {
                int before = slot.Tokens.Count;
                reason = Advance(slot, logits.Slice((o + i) * vocab, vocab));
                bool agrees = i < slot.Draft.Count && slot.Tokens.Count > before && slot.Tokens[^1] == slot.Draft[i];
                if (!agrees)
                    break; // the model chose otherwise, stopped, or this was the row after the whole draft
                accepted++;
            }
            o += rows;
            if (slot.Draft.Count > 0)
            {
                // the cache keeps the pending token and the accepted drafts; the rejected drafts' entries go
                Interlocked.Add(ref _drafted, slot.Draft.Count);
                Interlocked.Add(ref _accepted, accepted);
                slot.Sequence.Truncate(cached + accepted);
            }
            if (reason is { } r)
            {
                Finish(slot, r);
                _active.Remove(slot);
            }
        }
        _activeCount = _active.Count;
        long now = Stopwatch.GetTimestamp();
        double seconds = Stopwatch.GetElapsedTime(_rateStart, now).TotalSeconds;
        if (seconds >= 1)
        {
            long total = Interlocked.Read(ref _generated);
            _rate = (total - _rateTokens) / seconds;
            _rateTokens = total;
            Interlocked.Exchange(ref _rateStart, now);
        }
    }

    /// <summary>
    /// Proposes draft tokens for a decoding slot (prompt lookup over its context) when speculation is on
    /// and the request decodes greedily without log probabilities; never more than the room left in the
    /// step, the context, or the request's token budget.
    /// </summary>
    private void DraftFor(Slot slot, int room)
    {
        var request = slot.Request;
        if (_options.SpeculativeDraft == 0 || !slot.Sampler.IsGreedy || request.TopLogprobs >= 0 || slot.Constraint is not null)
            return;
        int max = request.MaxTokens > 0 ? request.MaxTokens : _model.ContextLength - slot.PromptLength;
        int limit = Math.Min(Math.Min(_options.SpeculativeDraft, room), Math.Min(max - slot.Generated - 1, _model.ContextLength - slot.Tokens.Count - 1));
        if (limit <= 0)
            return;
        _tree.Clear();
        _lookup.Draft(new DraftRequest { Context = slot.Tokens, Budget = limit, Sampler = slot.Sampler }, _tree);
        for (int node = _tree.FirstChild(-1); node >= 0 && slot.Draft.Count < limit; node = _tree.FirstChild(node))
            slot.Draft.Add(_tree.Token(node));
    }

    /// <summary>Samples the slot's next token from its logits and reports it; returns why it ends, if it does.</summary>
    private FinishReason? Advance(Slot slot, ReadOnlySpan<float> logits)
    {
        var request = slot.Request;
        int next;
        if (slot.Constraint is { } constraint)
        {
            // masked on a copy where it masks (the logprobs below report the model's own distribution)
            next = constraint.Sample(slot.Sampler, logits, slot.Masked ??= new float[logits.Length]);
            if (next < 0)
                return FinishReason.Stop; // a dead end: nothing may follow and the text may not end
            if (_model.Tokenizer.IsEndOfGeneration(next))
                return FinishReason.Stop; // the grammar allows an end token only where the text is complete
            constraint.Accept(next);
        }
        else
            next = slot.Sampler.Sample(logits);
        if (!request.IgnoreEos && _model.Tokenizer.IsEndOfGeneration(next))
            return FinishReason.Stop;
        float logprob = 0;
        TokenLogprob[]? top = null;
        if (request.TopLogprobs >= 0)
            (logprob, top) = Logprobs(logits, next, request.TopLogprobs);
        slot.Tokens.Add(next);
        slot.Sampler.Accept(next); // verified drafts arrive here one by one, so each row saw the tokens before it
        slot.Generated++;
        Interlocked.Increment(ref _generated);
        string text = slot.Stops.Push(slot.Detokenizer.Push(next));
        slot.Text.Append(text);
        slot.Writer.TryWrite(new TokenEvent(next, text, logprob, top));
        if (slot.Stops.Stopped)
            return FinishReason.Stop;
        int max = request.MaxTokens > 0 ? request.MaxTokens : _model.ContextLength - slot.PromptLength;
        if (slot.Generated >= max || slot.Tokens.Count >= _model.ContextLength)
            return FinishReason.Length;
        return null;
    }

    /// <summary>log softmax(logits) at <paramref name="token"/>, and the <paramref name="k"/> likeliest tokens'.</summary>
    internal static (float Logprob, TokenLogprob[] Top) Logprobs(ReadOnlySpan<float> logits, int token, int k)
    {
        float max = float.NegativeInfinity;
        foreach (float l in logits)
            max = Math.Max(max, l);
        double sum = 0;
        foreach (float l in logits)
            sum += Math.Exp(l - max);
        float logZ = max + (float)Math.Log(sum);
        var top = new TokenLogprob[k];
        int filled = 0;
        for (int i = 0; i < logits.Length && k > 0; i++)
        {
            if (filled == k && logits[i] <= top[k - 1].Logprob)
                continue;
            int at = Math.Min(filled, k - 1);
            while (at > 0 && top[at - 1].Logprob < logits[i])
            {
                top[at] = top[at - 1];
                at--;
            }
            top[at] = new TokenLogprob(i, logits[i]);
            filled = Math.Min(filled + 1, k);
        }
        for (int i = 0; i < filled; i++)
            top[i] = top[i] with { Logprob = top[i].Logprob - logZ };
        return (logits[token] - logZ, top[..filled]);
    }

    private void Finish(Slot slot, FinishReason reason)
    {
        slot.Registration.Dispose();
        if (reason == FinishReason.Cancelled)
            Interlocked.Increment(ref _cancelled);
        if (reason != FinishReason.Cancelled)
        {
            string rest = slot.Stops.Push(slot.Detokenizer.Flush()) + slot.Stops.Flush();
            if (rest.Length > 0)
            {
                slot.Text.Append(rest);
                slot.Writer.TryWrite(new TokenEvent(-1, rest, 0, null));
            }
        }
        if (slot.Sequence is { } seq)
        {
            // the whole exchange stays cached: the next turn of the conversation starts with it
            if (_prefix is not null && reason != FinishReason.Cancelled)
                _prefix.Insert(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(slot.Tokens)[..seq.Length], seq);
            seq.Dispose();
            slot.Sequence = null;
        }
        slot.Writer.TryWrite(new EndEvent(reason, slot.PromptLength, slot.Cached, slot.Generated, slot.Text.ToString()));
        slot.Writer.TryComplete();
    }

    private static void Fail(Slot slot, Exception e)
    {
        slot.Registration.Dispose();
        slot.Sequence?.Dispose();
        slot.Sequence = null;
        slot.Writer.TryComplete(e);
    }

    public void Dispose()
    {
        if (_stop.IsCancellationRequested)
            return;
        _stop.Cancel();
        _wake.Set();
        _thread.Join();
        _cache.Dispose();
        _wake.Dispose();
        _stop.Dispose();
    }

    /// <summary>A request and its sequence while it is queued or running.</summary>
    private sealed class Slot
    {
        public Slot(CompletionRequest request, ChannelWriter<CompletionEvent> writer, CancellationToken cancellation, StopSequences stops, TextTokenizer tokenizer)
        {
            Request = request;
            Writer = writer;
            Cancellation = cancellation;
            Stops = stops;
            Tokens = new List<int>(request.Prompt.Count + Math.Max(16, request.MaxTokens));
            Tokens.AddRange(request.Prompt);
            PromptLength = request.Prompt.Count;
            Sampler = SamplerChain.Create(request.Sampling, tokenizer.VocabSize, tokenizer);
            if (request.Grammar is not null)
                Constraint = new Engine.Constraints.GrammarConstraint(request.Grammar, tokenizer);
            Sampler.AcceptContext(request.Prompt); // the penalties see the whole context
            Detokenizer = tokenizer.CreateStreamingDetokenizer();
            if (tokenizer.BosId is int bos && request.Prompt[^1] == bos)
                Detokenizer.Push(bos); // a first word right after BOS loses its SentencePiece space
        }

        public CompletionRequest Request { get; }
        public ChannelWriter<CompletionEvent> Writer { get; }
        public CancellationToken Cancellation { get; }
        public CancellationTokenRegistration Registration { get; set; }
        public StopSequences Stops { get; }
        public List<int> Tokens { get; }
        public int PromptLength { get; }
        public SamplerChain Sampler { get; }
        public Engine.Constraints.GrammarConstraint? Constraint { get; }
        public float[]? Masked { get; set; }
        public StreamingDetokenizer Detokenizer { get; }
        public KvSequence? Sequence { get; set; }
        public int Cached { get; set; }
        public int Generated { get; set; }
        public bool PromptCached { get; set; }
        /// <summary>This step's draft tokens (speculative decoding), after the pending token.</summary>
        public List<int> Draft { get; } = [];
        public System.Text.StringBuilder Text { get; } = new();
    }
}
