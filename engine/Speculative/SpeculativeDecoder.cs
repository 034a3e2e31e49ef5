using System.Diagnostics;
using Engine.Api;
using Engine.Backends;
using Engine.Cache;
using Engine.Sampling;

namespace Engine.Speculative;

/// <summary>Settings of speculative decoding.</summary>
public sealed record SpeculativeOptions
{
    /// <summary>Most draft nodes verified per step.</summary>
    public int MaxDraft { get; init; } = 8;

    /// <summary>Choose the per-step budget by measured goodput (<see cref="DraftBudget"/>); otherwise always <see cref="MaxDraft"/>.</summary>
    public bool Adaptive { get; init; } = true;

    /// <summary>
    /// Verify with every row computed as a one-token pass would compute it, so greedy output is
    /// identical to plain greedy decoding token for token. Off, verification takes the faster matrix
    /// kernels: still lossless in distribution, but a near-tie may round the other way.
    /// </summary>
    public bool ExactVerification { get; init; } = true;

    /// <summary>Use Medusa's typical acceptance — LOSSY: the output no longer follows the target distribution.</summary>
    public bool LossyTypicalAcceptance { get; init; }

    public void Validate()
    {
        if (MaxDraft < 1 || MaxDraft > 255)
            throw new ArgumentOutOfRangeException(nameof(MaxDraft), $"draft budget {MaxDraft} must be 1..255");
    }
}

/// <summary>Counts of a speculative generation.</summary>
public sealed record SpeculativeStats(int Steps, int DraftedTokens, int AcceptedTokens, int GeneratedTokens, TimeSpan Elapsed)
{
    /// <summary>Drafted tokens dropped before verification because the grammar rejects them (greedy decoding under a grammar).</summary>
    public int PrunedByGrammar { get; init; }

    /// <summary>Mean tokens produced per verification (accepted + the target's own), τ in the literature.</summary>
    public double Tau => Steps == 0 ? 0 : (double)(AcceptedTokens + Steps) / Steps;

    /// <summary>Accepted share of drafted tokens.</summary>
    public double AcceptanceRate => DraftedTokens == 0 ? 0 : (double)AcceptedTokens / DraftedTokens;

    public double TokensPerSecond => GeneratedTokens / Math.Max(Elapsed.TotalSeconds, 1e-9);
}

/// <summary>
/// Lossless speculative decoding over a target model: each step a <see cref="IDraftSource"/> proposes a
/// token tree, the target verifies the whole tree in one forward pass (tree tokens at depth-based
/// positions, each seeing the committed prefix and its own ancestors: <see cref="AttentionMask.FromParents(ReadOnlySpan{int})"/>),
/// an <see cref="IAcceptanceRule"/> keeps a path, the KV cache keeps exactly that path
/// (<see cref="KvSequence.Compact"/>), and the target's next token is appended. Greedy decoding uses
/// <see cref="GreedyMatch"/>; sampling uses <see cref="RecursiveRejectionSampling"/>; both reproduce the
/// target exactly.
/// </summary>
public sealed class SpeculativeDecoder : IDisposable
{
    private readonly LanguageModel _target;
    private readonly KvCache _cache;
    private readonly KvSequence _sequence;
    private readonly DraftTree _tree = new();
    private readonly List<int> _path = [];
    private readonly List<int> _context = [];
    private float[] _logits = [];
    private AttentionMask? _mask;
    private int _steps, _drafted, _accepted, _generated;
    private readonly Stopwatch _clock = new();

    public SpeculativeDecoder(LanguageModel target, IDraftSource source, SpeculativeOptions? options = null)
    {
        options ??= new SpeculativeOptions();
        options.Validate();
        _target = target;
        Source = source;
        Options = options;
        _cache = target.Network.CreateKvCache(target.ContextLength);
        _sequence = _cache.CreateSequence();
    }

    public IDraftSource Source { get; }

    /// <summary>The tokens of the current or last generation: the prompt, then every token yielded.</summary>
    public IReadOnlyList<int> Context => _context;

    /// <summary>
    /// The target's cache sequence: after each step (and so after a cancellation, which is checked
    /// between steps) it holds exactly the context but its last token, the root of the next draft.
    /// </summary>
    internal KvSequence Sequence => _sequence;

    public SpeculativeOptions Options { get; }

    /// <summary>Counts of the current or last generation (built on request, so the loop allocates nothing for it).</summary>
    public SpeculativeStats Stats => new(_steps, _drafted, _accepted, _generated, _clock.Elapsed) { PrunedByGrammar = _prunedByGrammar };

    /// <summary>
    /// Generates from <paramref name="prompt"/> (exact ids; add BOS yourself) with a fresh context,
    /// yielding token ids as they are accepted.
    /// </summary>
    public IEnumerable<int> Generate(IReadOnlyList<int> prompt, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options.Validate();
        if (prompt.Count == 0)
            throw new ArgumentException("the prompt is empty (it needs at least one token, e.g. BOS)", nameof(prompt));
        int vocab = _target.Config.VocabSize;
        foreach (int id in prompt)
        {
            if ((uint)id >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(prompt), $"token id {id} is outside the vocabulary (0..{vocab - 1})");
        }
        if (prompt.Count >= _target.ContextLength)
            throw new ArgumentException($"the prompt ({prompt.Count} tokens) does not fit in the context of {_target.ContextLength} tokens", nameof(prompt));
        return Run(prompt.ToArray(), options, cancellationToken);
    }

    private IEnumerable<int> Run(int[] prompt, GenerationOptions options, CancellationToken ct)
    {
        _clock.Restart();
        _steps = _drafted = _accepted = _generated = _prunedByGrammar = 0;
        var net = _target.Network;
        int vocab = _target.Config.VocabSize;
        // Stateful processors (penalties, DRY, Mirostat) see what plain decoding shows them: the prompt, then
        // each kept token in order — the rules accept the path's tokens as they descend, this loop the next one.
        var sampler = SamplerChain.Create(options.Sampling, vocab, _target.Tokenizer);
        sampler.AcceptContext(prompt);
        IAcceptanceRule rule = Options.LossyTypicalAcceptance ? new TypicalAcceptance()
            : sampler.IsGreedy ? new GreedyMatch() : new RecursiveRejectionSampling();
        var budget = new DraftBudget(Math.Min(Options.MaxDraft, net.MaxBatch - 1), Options.Adaptive);
        var tokenizer = _target.Tokenizer;

        // Prompt: one causal pass; the first token comes from its last row, as in plain decoding.
        _sequence.Truncate(0);
        _context.Clear();
        _context.AddRange(prompt);
        // On a GPU the logits stay there: argmax, sampling and acceptance run as kernels and the host
        // reads back token ids (the lossy typical rule runs on the host).
        var device = net.Backend as IDeviceDecoding;
        // a grammar masks every verified row on the host: each tree node at the grammar state its branch reached
        var grammar = options.Grammar is null ? null : new Engine.Constraints.GrammarConstraint(options.Grammar, _target.Tokenizer);
        if (rule is TypicalAcceptance || !options.Sampling.IsFusable || grammar is not null)
            device = null; // the chain is not the fused kernel's: its distributions come from the host
        var fused = sampler.IsGreedy ? default : FusedSamplingParameters.From(options.Sampling);
        int next;
        if (device is not null)
        {
            var promptLogits = net.ForwardOnDevice(_sequence, prompt, Positions(0, prompt.Length), AttentionMask.Causal, [prompt.Length - 1]);
            Span<int> first = stackalloc int[1];
            if (sampler.IsGreedy)
                device.ArgMax(promptLogits, first);
            else
                device.Sample(promptLogits, fused, options.Sampling.Seed, (ulong)prompt.Length, first);
            next = first[0];
        }
        else
        {
            EnsureLogits(1, vocab);
            net.Forward(_sequence, prompt, Positions(0, prompt.Length), AttentionMask.Causal, [prompt.Length - 1], _logits.AsSpan(0, vocab));
            if (grammar is not null && !grammar.Apply(_logits.AsSpan(0, vocab)))
            {
                _clock.Stop();
                yield break; // the grammar allows nothing here
            }
            next = sampler.Sample(_logits.AsSpan(0, vocab));
        }
        if (options.MaxTokens == 0 || (options.StopAtEndOfGeneration && tokenizer.IsEndOfGeneration(next)))
        {
            _clock.Stop();
            yield break;
        }
        sampler.Accept(next);
        if (grammar is not null && !tokenizer.IsEndOfGeneration(next))
            grammar.Accept(next);
        _context.Add(next);
        _generated++;
        yield return next;
        Source.Begin(_context);

        var tokens = new List<int>();
        var parents = new List<int>();
        var positions = new List<int>();
        var keep = new List<int>();
        while (_generated < options.MaxTokens)
        {
            ct.ThrowIfCancellationRequested();
            int committed = _sequence.Length; // everything but the root (the last context token)
            int room = _target.ContextLength - committed - 1;
            if (room <= 0)
            {
                _clock.Stop();
                yield break;
            }
            var stepClock = Stopwatch.StartNew();
            int n = Math.Min(budget.Next(), Math.Min(room, options.MaxTokens - _generated));
            _tree.Clear();
            if (n > 0)
                Source.Draft(new DraftRequest { Context = _context, Budget = n, Sampler = sampler }, _tree);
            if (_tree.Count > n)
                throw new InvalidOperationException($"draft source {Source.Name} proposed {_tree.Count} nodes for a budget of {n}");
            for (int i = 0; i < _tree.Count; i++)
            {
                if ((uint)_tree.Token(i) >= (uint)vocab)
                    throw new InvalidOperationException($"draft source {Source.Name} proposed token {_tree.Token(i)}, outside the vocabulary (0..{vocab - 1})");
            }
            // greedy under a grammar: a draft the grammar rejects can never match the masked argmax, so it
            // and its subtree are pruned before they cost verification rows (sampled verification keeps
            // them: removing a proposal because of its value would change the rejection sampler's law)
            int pruned = grammar is not null && rule is GreedyMatch && _tree.Count > 0 ? PruneOutsideGrammar(grammar) : 0;
            _prunedByGrammar += pruned;

            // Verify root + tree in one pass.
            int rows = _tree.Count + 1;
            tokens.Clear();
            parents.Clear();
            positions.Clear();
            tokens.Add(_context[^1]);
            parents.Add(-1);
            positions.Add(committed);
            for (int i = 0; i < _tree.Count; i++)
            {
                tokens.Add(_tree.Token(i));
                parents.Add(_tree.Parent(i) + 1);
                positions.Add(committed + _tree.Depth(i));
            }
            var mask = _tree.IsChain ? AttentionMask.Causal : (_mask = AttentionMask.FromParents(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(parents), _mask));
            var tokenSpan = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(tokens);
            var positionSpan = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(positions);
            ReadOnlySpan<float> logits = default;
            if (device is not null)
            {
                var verified = net.ForwardOnDevice(_sequence, tokenSpan, positionSpan, mask, AllRows(rows), batchInvariant: Options.ExactVerification);
                next = AcceptOnDevice(device, verified, sampler, fused, options.Sampling.Seed, (ulong)_context.Count);
                logits = ObservedLogits(device, verified, rows, vocab);
                foreach (int node in _path)
                    sampler.Accept(_tree.Token(node)); // (the fused kernel's chains keep no state: for symmetry with the host rules)
            }
            else
            {
                EnsureLogits(rows, vocab);
                net.Forward(_sequence, tokenSpan, positionSpan, mask, AllRows(rows), _logits.AsSpan(0, rows * vocab), batchInvariant: Options.ExactVerification);
                if (grammar is not null && !MaskRows(grammar, rows, vocab))
                {
                    _clock.Stop();
                    yield break; // the grammar allows nothing after the committed text
                }
                logits = _logits.AsSpan(0, rows * vocab);
                next = rule.Accept(_tree, logits, vocab, sampler, _path);
            }

            // Keep the root and the accepted path in the cache, in order.
            keep.Clear();
            keep.Add(0);
            foreach (int node in _path)
                keep.Add(node + 1);
            _sequence.Compact(committed, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(keep));

            _steps++;
            _drafted += _tree.Count + pruned;
            _accepted += _path.Count;
            budget.Record(n, _tree.MaxDepth, _path.Count, stepClock.Elapsed.TotalSeconds);
            int before = _context.Count;
            foreach (int node in _path)
                _context.Add(_tree.Token(node));
            _context.Add(next);
            sampler.Accept(next);
            if (grammar is not null)
            {
                foreach (int node in _path)
                    grammar.Accept(_tree.Token(node));
                if (!tokenizer.IsEndOfGeneration(next))
                    grammar.Accept(next);
            }
            if (device is not null && Source is ITopKObserver recycler)
            {
                // Token Recycling records each row's top-k: k ids per row come back, not the logits.
                if (_topIds.Length < rows * recycler.K)
                    _topIds = new int[rows * recycler.K];
                device.TopKIds(_verified, recycler.K, _topIds.AsSpan(0, rows * recycler.K));
                recycler.ObserveTopK(_tree, _path, next, _topIds.AsSpan(0, rows * recycler.K), _context);
            }
            else
            {
                Source.Observe(_tree, _path, next, logits, vocab, _context);
            }

            for (int i = before; i < _context.Count; i++)
            {
                if (i >= _target.ContextLength)
                {
                    _clock.Stop(); // the context is full (plain decoding stops at the same token)
                    yield break;
                }
                int token = _context[i];
                if (options.StopAtEndOfGeneration && tokenizer.IsEndOfGeneration(token))
                {
                    _clock.Stop();
                    yield break;
                }
                _generated++;
                yield return token;
                if (_generated == options.MaxTokens)
                {
                    _clock.Stop();
                    yield break;
                }
            }
        }
    }

    /// <summary>
    /// Masks each verified row to what the grammar allows after that row's path: row 0 at the committed
    /// text's state, row i + 1 at node i's (its parent's state stepped by its token). A node the grammar
    /// rejects is never reached (its parent's row gives it probability 0), so its row is left as it is.
    /// False when row 0 allows nothing (a dead end).
    /// </summary>
    private bool MaskRows(Engine.Constraints.GrammarConstraint grammar, int rows, int vocab)
    {
        if (_nodeStates.Length < rows)
            _nodeStates = new int[Math.Max(rows, 2 * _nodeStates.Length)];
        int root = grammar.Current;
        if (!grammar.Apply(root, _logits.AsSpan(0, vocab)))
            return false;
        for (int node = 0; node < rows - 1; node++)
        {
            int parent = _tree.Parent(node);
            int state = grammar.After(parent < 0 ? root : _nodeStates[parent], _tree.Token(node));
            _nodeStates[node] = state;
            if (state != Engine.Constraints.GrammarMatcher.Dead)
                grammar.Apply(state, _logits.AsSpan((node + 1) * vocab, vocab));
        }
        return true;
    }

    /// <summary>Drops the draft nodes whose token the grammar rejects after their branch's text (and their subtrees).</summary>
    private int PruneOutsideGrammar(Engine.Constraints.GrammarConstraint grammar)
    {
        int n = _tree.Count;
        if (_nodeStates.Length < n + 1)
            _nodeStates = new int[Math.Max(n + 1, 2 * _nodeStates.Length)];
        if (_drop.Length < n)
            _drop = new bool[Math.Max(n, 2 * _drop.Length)];
        int root = grammar.Current;
        bool any = false;
        for (int node = 0; node < n; node++)
        {
            int parent = _tree.Parent(node);
            int from = parent < 0 ? root : _nodeStates[parent];
            int state = from == Engine.Constraints.GrammarMatcher.Dead ? from : grammar.After(from, _tree.Token(node));
            _nodeStates[node] = state;
            _drop[node] = state == Engine.Constraints.GrammarMatcher.Dead;
            any |= _drop[node];
        }
        return any ? _tree.Prune(_drop.AsSpan(0, n)) : 0;
    }

    private bool[] _drop = [];
    private int _prunedByGrammar;
    private int[] _nodeStates = [];
    private Activation _verified;
    private int[] _topIds = [];
    private int[] _treeParent = [], _treeToken = [], _qRow = [], _drawKind = [];
    private float[] _q = [];

    /// <summary>Acceptance where the verified logits are: greedy match or recursive rejection sampling as kernels.</summary>
    private int AcceptOnDevice(IDeviceDecoding device, Activation verified, SamplerChain sampler, FusedSamplingParameters fused, ulong seed, ulong offset)
    {
        _verified = verified;
        int n = _tree.Count, vocab = verified.Cols;
        if (_treeParent.Length < n + 1)
        {
            int size = Math.Max(64, 2 * (n + 1));
            _treeParent = new int[size];
            _treeToken = new int[size];
            _qRow = new int[size];
            _drawKind = new int[size];
        }
        for (int i = 0; i < n; i++)
        {
            _treeParent[i] = _tree.Parent(i);
            _treeToken[i] = _tree.Token(i);
        }
        if (sampler.IsGreedy)
            return device.AcceptGreedy(verified, _treeParent.AsSpan(0, n), _treeToken.AsSpan(0, n), _path);
        // Each expanded node's draft distribution, packed for one upload.
        int qRows = 0;
        for (int r = 0; r <= n; r++)
        {
            var draw = _tree.Draw(r - 1);
            var q = _tree.DraftDistribution(r - 1);
            _drawKind[r] = (int)draw;
            _qRow[r] = -1;
            if (draw != DraftDraw.Deterministic && _tree.FirstChild(r - 1) >= 0)
            {
                if (q is null || q.Length != vocab)
                    throw new InvalidOperationException($"draft source {Source.Name} drew node {r - 1}'s children without a draft distribution over the vocabulary");
                if (_q.Length < (qRows + 1) * vocab)
                    Array.Resize(ref _q, Math.Max((qRows + 1) * vocab, 2 * _q.Length));
                q.CopyTo(_q, qRows * vocab);
                _qRow[r] = qRows++;
            }
        }
        return device.AcceptSampled(verified, fused, seed, offset, _treeParent.AsSpan(0, n), _treeToken.AsSpan(0, n), _qRow.AsSpan(0, n + 1),
            _drawKind.AsSpan(0, n + 1), _q.AsSpan(0, qRows * vocab), _path);
    }

    /// <summary>The verification's logits on the host, downloaded only for a source that reads them.</summary>
    private ReadOnlySpan<float> ObservedLogits(IDeviceDecoding device, Activation verified, int rows, int vocab)
    {
        if (!Source.ObservesLogits || Source is ITopKObserver)
            return default;
        EnsureLogits(rows, vocab);
        _target.Network.Backend.Download(verified, _logits.AsSpan(0, rows * vocab));
        return _logits.AsSpan(0, rows * vocab);
    }

    private void EnsureLogits(int rows, int vocab)
    {
        if (_logits.Length < rows * vocab)
            _logits = new float[Math.Max(rows * vocab, 2 * _logits.Length)];
    }

    private int[] _rows = [];

    private ReadOnlySpan<int> AllRows(int n)
    {
        if (_rows.Length < n)
        {
            _rows = new int[Math.Max(n, 64)];
            for (int i = 0; i < _rows.Length; i++)
                _rows[i] = i;
        }
        return _rows.AsSpan(0, n);
    }

    private static int[] Positions(int start, int count)
    {
        var p = new int[count];
        for (int i = 0; i < count; i++)
            p[i] = start + i;
        return p;
    }

    public void Dispose()
    {
        _sequence.Dispose();
        _cache.Dispose();
        Source.Dispose();
    }
}
