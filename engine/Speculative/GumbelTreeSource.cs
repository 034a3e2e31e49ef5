using Engine.Backends;
using Engine.Models;
using Engine.Sampling;

namespace Engine.Speculative;

/// <summary>
/// Draft trees from a draft model with siblings drawn without replacement, as in Recursive Speculative
/// Decoding (Jeong et al., "Recursive Speculative Decoding: Accelerating LLM Inference via Sampling
/// Without Replacement", 2024): each expanded node gets <c>branching</c> distinct children by the
/// Gumbel-top-k trick (the k largest of log q + Gumbel noise are k draws without replacement), and
/// recursive rejection sampling verifies them with the target distribution intact. The tree grows
/// dynamically as in EAGLE-2 (Li et al., "EAGLE-2: Faster Inference of Language Models with Dynamic
/// Draft Trees", 2024): each round expands the <c>width</c> newest nodes with the highest cumulative
/// draft probability. With greedy decoding the children are the draft's top-k tokens.
/// </summary>
/// <remarks>
/// Each round runs the draft once over the whole tree so far (tree attention mask from the committed
/// context), then rolls the draft cache back: cheap for a small draft, and it keeps every node's draft
/// distribution exact for its own path.
/// </remarks>
public sealed class GumbelTreeSource : IDraftSource
{
    private readonly DraftModelState _model;
    private readonly int _branching, _width;
    private readonly List<(int Node, double LogP)> _frontier = [], _next = [];
    private readonly List<int> _tokens = [], _parents = [], _positions = [], _rows = [];
    private float[] _logits = [];
    private double[] _keys = [];
    private AttentionMask? _mask;

    public GumbelTreeSource(LlamaModel network, int maxTokens, int layers = 0, int branching = 3, int width = 4, string name = "rsd")
    {
        if (branching < 1 || branching > 16)
            throw new ArgumentOutOfRangeException(nameof(branching), $"branching {branching} must be 1..16");
        if (width < 1 || width > 64)
            throw new ArgumentOutOfRangeException(nameof(width), $"width {width} must be 1..64");
        _model = new DraftModelState(network, maxTokens, layers);
        _branching = branching;
        _width = width;
        Name = name;
    }

    public string Name { get; }

    public void Begin(IReadOnlyList<int> context) => _model.Reset();

    public void Draft(DraftRequest request, DraftTree tree)
    {
        var ctx = request.Context;
        if (!_model.HasRoom(ctx.Count + request.Budget))
            return;
        var sampler = request.Sampler;
        int vocab = _model.Vocab;
        var rootLogits = _model.Sync(ctx);
        int committed = _model.Length; // the draft cache holds the context, root included
        int used = 0;
        Expand(tree, -1, 0, rootLogits, sampler, request.Budget, ref used);
        _frontier.Clear();
        for (int c = tree.FirstChild(-1); c >= 0; c = tree.NextSibling(c))
            _frontier.Add((c, LogP(tree, -1, c)));

        while (tree.Count < request.Budget && _frontier.Count > 0)
        {
            // the most probable newest nodes, by cumulative draft probability
            _frontier.Sort((a, b) => b.LogP.CompareTo(a.LogP));
            if (_frontier.Count > _width)
                _frontier.RemoveRange(_width, _frontier.Count - _width);

            // one draft pass over the tree so far, asking for the frontier rows
            _tokens.Clear();
            _parents.Clear();
            _positions.Clear();
            _rows.Clear();
            for (int i = 0; i < tree.Count; i++)
            {
                _tokens.Add(tree.Token(i));
                _parents.Add(tree.Parent(i));
                _positions.Add(committed - 1 + tree.Depth(i));
            }
            foreach (var (node, _) in _frontier)
                _rows.Add(node);
            if (_logits.Length < _rows.Count * vocab)
                _logits = new float[_rows.Count * vocab];
            var mask = _mask = AttentionMask.FromParents(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_parents), _mask);
            _model.Network.Forward(_model.Sequence, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_tokens),
                System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_positions), mask,
                System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_rows), _logits.AsSpan(0, _rows.Count * vocab), layers: _model.Layers);
            _model.Sequence.Truncate(committed);

            _next.Clear();
            for (int k = 0; k < _frontier.Count && tree.Count < request.Budget; k++)
            {
                var (node, logP) = _frontier[k];
                int first = tree.Count;
                Expand(tree, node, logP, _logits.AsSpan(k * vocab, vocab), sampler, request.Budget, ref used);
                for (int c = first; c < tree.Count; c++)
                    _next.Add((c, logP + LogP(tree, node, c)));
            }
            _frontier.Clear();
            _frontier.AddRange(_next);
        }
    }

    /// <summary>Adds up to <c>branching</c> children of <paramref name="node"/> drawn from its draft logits.</summary>
    private void Expand(DraftTree tree, int node, double logP, ReadOnlySpan<float> logits, SamplerChain sampler, int budget, ref int used)
    {
        int k = Math.Min(_branching, budget - tree.Count);
        if (k <= 0)
            return;
        Span<int> chosen = stackalloc int[k];
        var q = _model.Distribution(used++);
        if (sampler.IsGreedy)
        {
            // the draft's top-k tokens (as probabilities, so cumulative scores mean the same as when sampling)
            Backends.Cpu.Kernels.Activations.SoftmaxF32(logits, q);
            k = TopK.Largest<float>(q, chosen);
            tree.SetDraftDistribution(node, q, DraftDraw.Deterministic); // kept for the cumulative scores only
            for (int i = 0; i < k; i++)
                tree.Add(node, chosen[i]);
            return;
        }
        sampler.Distribution(logits, q);
        k = GumbelTopK(q, chosen, sampler.Random!);
        tree.SetDraftDistribution(node, q, DraftDraw.WithoutReplacement);
        for (int i = 0; i < k; i++)
            tree.Add(node, chosen[i]);
    }

    private static double LogP(DraftTree tree, int parent, int child)
    {
        var q = tree.DraftDistribution(parent);
        return q is null ? 0 : Math.Log(Math.Max(q[tree.Token(child)], 1e-30f));
    }

    /// <summary>k draws without replacement from q: the k largest log qᵢ + Gᵢ, Gᵢ standard Gumbel.</summary>
    private int GumbelTopK(ReadOnlySpan<float> q, Span<int> chosen, Random random)
    {
        if (_keys.Length != q.Length)
            _keys = new double[q.Length];
        for (int i = 0; i < q.Length; i++)
        {
            // a token the draft cannot produce gets −∞ and is never drawn (no random number spent on it)
            _keys[i] = q[i] <= 0 ? double.NegativeInfinity
                : Math.Log(q[i]) - Math.Log(-Math.Log(Math.Max(random.NextDouble(), double.Epsilon)));
        }
        return TopK.Largest<double>(_keys, chosen);
    }

    /// <summary>The verification's logits are not read, so on a GPU they are never downloaded.</summary>
    public bool ObservesLogits => false;

    public void Observe(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<float> logits, int vocab, IReadOnlyList<int> context) { }

    public void Dispose() => _model.Dispose();
}
