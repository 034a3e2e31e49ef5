using Engine.Backends;
using Engine.Cache;
using Engine.Models;
using Engine.Sampling;

namespace Engine.Speculative;

/// <summary>
/// Drafts a chain with a language model that shares the target's vocabulary: either a separate, cheaper
/// model with its own KV cache (a quantized copy of the target, a smaller sibling — Leviathan et al.,
/// 2023), or the target's own first <c>layers</c> layers followed by its final norm and head, a draft
/// with no second model (layer-skip self-drafting: Zhang et al., "Draft &amp; Verify: Lossless Large
/// Language Model Acceleration via Self-Speculative Decoding", 2024; SkipDecode, Del Corro et al., 2023).
/// </summary>
/// <remarks>
/// Drafting stops early once the draft's own confidence (the top probability of its softmax) falls
/// below <see cref="StopBelow"/>: the draft's confidence stands in for the acceptance predictor of
/// SpecDec++ (Huang et al., "SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths",
/// 2024), which stops when the predicted chance of rejection gets too high. The draft keeps its cache
/// across steps and rolls it back to the longest prefix it shares with the accepted context. The
/// network belongs to the caller (for layer-skip it is the target itself); the source owns only its cache.
/// </remarks>
public sealed class ModelDraftSource : IDraftSource
{
    private readonly DraftModelState _model;
    private readonly float[] _confidence;

    /// <param name="network">The draft network (for layer-skip: the target's own).</param>
    /// <param name="maxTokens">Context the draft cache must hold (the target's context length).</param>
    /// <param name="layers">0 for the whole network; otherwise the number of leading layers to run.</param>
    public ModelDraftSource(LlamaModel network, int maxTokens, int layers = 0, string name = "draft", float stopBelow = 0.3f)
    {
        if (!(stopBelow >= 0 && stopBelow < 1))
            throw new ArgumentOutOfRangeException(nameof(stopBelow), $"confidence threshold {stopBelow} must be in [0, 1)");
        _model = new DraftModelState(network, maxTokens, layers);
        _confidence = new float[network.Config.VocabSize];
        Name = name;
        StopBelow = stopBelow;
    }

    public string Name { get; }

    /// <summary>Stop drafting when the draft's top probability drops below this (0 = always draft the full budget).</summary>
    public float StopBelow { get; }

    public void Begin(IReadOnlyList<int> context) => _model.Reset();

    public void Draft(DraftRequest request, DraftTree tree)
    {
        var ctx = request.Context;
        if (!_model.HasRoom(ctx.Count + request.Budget))
            return; // the draft's cache is full; verify without a draft
        var logits = _model.Sync(ctx);
        var sampler = request.Sampler;
        int parent = -1;
        for (int depth = 0; depth < request.Budget; depth++)
        {
            int token;
            if (sampler.IsGreedy)
            {
                token = SamplerChain.Argmax(logits);
                parent = tree.Add(parent, token);
            }
            else
            {
                var q = _model.Distribution(depth);
                sampler.Distribution(logits, q);
                token = SamplerChain.Draw(q, sampler.Random!);
                tree.SetDraftDistribution(parent, q, DraftDraw.Independent);
                parent = tree.Add(parent, token);
            }
            if (depth + 1 == request.Budget || Confidence(logits) < StopBelow)
                break;
            logits = _model.Feed(token);
        }
    }

    /// <summary>Top probability of the draft's plain softmax over <paramref name="logits"/>.</summary>
    private float Confidence(ReadOnlySpan<float> logits)
    {
        if (StopBelow <= 0)
            return 1;
        Backends.Cpu.Kernels.Activations.SoftmaxF32(logits, _confidence);
        float top = 0;
        foreach (float p in _confidence)
            top = MathF.Max(top, p);
        return top;
    }

    /// <summary>The verification's logits are not read, so on a GPU they are never downloaded.</summary>
    public bool ObservesLogits => false;

    public void Observe(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<float> logits, int vocab, IReadOnlyList<int> context) { }

    public void Dispose() => _model.Dispose();
}

/// <summary>
/// A draft network's own KV sequence, kept in step with the context: <see cref="Sync"/> rolls it back to
/// the longest prefix it shares with the context and feeds the rest (the root included), leaving the
/// root's logits; <see cref="Feed"/> appends one drafted token.
/// </summary>
internal sealed class DraftModelState : IDisposable
{
    private readonly LlamaModel _net;
    private readonly int _layers;
    private readonly KvCache _cache;
    private readonly List<int> _cached = [];
    private readonly float[] _logits;
    private readonly List<float[]> _distributions = [];
    private int[] _tokens = [], _positions = [];

    public DraftModelState(LlamaModel network, int maxTokens, int layers)
    {
        _net = network;
        _layers = layers;
        _cache = network.CreateKvCache(maxTokens, layers: layers);
        Sequence = _cache.CreateSequence();
        _logits = new float[network.Config.VocabSize];
    }

    public LlamaModel Network => _net;

    public int Layers => _layers;

    public KvSequence Sequence { get; }

    public int Vocab => _logits.Length;

    public bool HasRoom(int tokens) => tokens < _cache.MaxSequenceBlocks * _cache.BlockSize;

    public void Reset()
    {
        Sequence.Truncate(0);
        _cached.Clear();
    }

    public float[] Sync(IReadOnlyList<int> ctx)
    {
        int common = 0;
        int limit = Math.Min(_cached.Count, ctx.Count - 1); // the root is always fed, to get its logits
        while (common < limit && _cached[common] == ctx[common])
            common++;
        Sequence.Truncate(common);
        _cached.RemoveRange(common, _cached.Count - common);
        int n = ctx.Count - common;
        if (_tokens.Length < n)
        {
            _tokens = new int[Math.Max(n, 2 * _tokens.Length)];
            _positions = new int[_tokens.Length];
        }
        for (int i = 0; i < n; i++)
        {
            _tokens[i] = ctx[common + i];
            _positions[i] = common + i;
            _cached.Add(_tokens[i]);
        }
        _net.Forward(Sequence, _tokens.AsSpan(0, n), _positions.AsSpan(0, n), AttentionMask.Causal, [n - 1], _logits, layers: _layers);
        return _logits;
    }

    public float[] Feed(int token)
    {
        int position = _cached.Count;
        _net.Forward(Sequence, [token], [position], AttentionMask.Causal, [0], _logits, layers: _layers);
        _cached.Add(token);
        return _logits;
    }

    /// <summary>
    /// Vocabulary-sized buffer <paramref name="i"/> for a draft distribution q, kept across steps: a
    /// draft tree references its q arrays until the verification that follows, and the next draft reuses them.
    /// </summary>
    public float[] Distribution(int i)
    {
        while (_distributions.Count <= i)
            _distributions.Add(new float[Vocab]);
        return _distributions[i];
    }

    /// <summary>Tokens in the draft cache, in order (after <see cref="Sync"/>: the whole context).</summary>
    public int Length => _cached.Count;

    public void Dispose()
    {
        Sequence.Dispose();
        _cache.Dispose();
    }
}
