namespace Engine.Speculative;

/// <summary>How the children of one tree node were drawn — what the acceptance rule must assume.</summary>
public enum DraftDraw
{
    /// <summary>Chosen deterministically (n-gram lookup, recycled tokens, a greedy draft): q is one-hot per child.</summary>
    Deterministic,

    /// <summary>Each child an independent draw from the node's draft distribution q (SpecInfer's multi-candidate trees).</summary>
    Independent,

    /// <summary>Drawn without replacement from q (Gumbel-top-k, as in Recursive Speculative Decoding).</summary>
    WithoutReplacement,
}

/// <summary>
/// A draft: a tree of proposed tokens hanging off the last token of the context (the root, which the
/// target has not processed yet). A chain is the special case of one child per node. Node i has a
/// token, a parent (−1 for the root) and a depth (1 for the root's children); parents come before their
/// children. For each expanded node (the root included) the tree can carry the draft distribution q
/// its children were drawn from, and how they were drawn; sampled acceptance needs both.
/// </summary>
/// <remarks>
/// Trees as in SpecInfer (Miao et al., "SpecInfer: Accelerating Generative LLM Serving with Tree-based
/// Speculative Inference and Verification", 2023). The object is reused from step to step:
/// <see cref="Clear"/> keeps its buffers.
/// </remarks>
public sealed class DraftTree
{
    private readonly List<int> _tokens = [];
    private readonly List<int> _parents = [];
    private readonly List<int> _depths = [];
    private readonly List<int> _firstChild = [];   // per node + 1 (slot 0 = root): first child, −1 if none
    private readonly List<int> _nextSibling = [];  // per node: next sibling, −1 if none
    private readonly List<int> _lastChild = [];
    private readonly List<float[]?> _q = [];          // per node + 1: distribution of its children, or null
    private readonly List<DraftDraw> _draw = [];

    public DraftTree() => Clear();

    /// <summary>Nodes in the tree (the root not counted).</summary>
    public int Count => _tokens.Count;

    public int Token(int node) => _tokens[node];

    /// <summary>Parent node, −1 for a child of the root.</summary>
    public int Parent(int node) => _parents[node];

    /// <summary>1 for a child of the root.</summary>
    public int Depth(int node) => _depths[node];

    public int MaxDepth { get; private set; }

    /// <summary>Removes every node; buffers are kept.</summary>
    public void Clear()
    {
        _tokens.Clear();
        _parents.Clear();
        _depths.Clear();
        _nextSibling.Clear();
        _firstChild.Clear();
        _lastChild.Clear();
        _q.Clear();
        _draw.Clear();
        _firstChild.Add(-1);
        _lastChild.Add(-1);
        _q.Add(null);
        _draw.Add(DraftDraw.Deterministic);
        MaxDepth = 0;
    }

    /// <summary>Adds a child of <paramref name="parent"/> (−1 = the root) and returns its index.</summary>
    public int Add(int parent, int token)
    {
        if (parent < -1 || parent >= Count)
            throw new ArgumentOutOfRangeException(nameof(parent), $"parent {parent} is not a node of the tree (−1 or 0..{Count - 1})");
        ArgumentOutOfRangeException.ThrowIfNegative(token);
        for (int c = FirstChild(parent); c >= 0; c = NextSibling(c))
        {
            if (_tokens[c] == token && _draw[parent + 1] == DraftDraw.Deterministic)
                throw new ArgumentException($"token {token} is already a child of node {parent}; deterministic siblings must differ");
        }
        return Append(parent, token, null, DraftDraw.Deterministic);
    }

    /// <summary>A node as the last child of <paramref name="parent"/>, its children drawn from <paramref name="q"/> as <paramref name="draw"/> says.</summary>
    private int Append(int parent, int token, float[]? q, DraftDraw draw)
    {
        int node = Count;
        _tokens.Add(token);
        _parents.Add(parent);
        int depth = parent < 0 ? 1 : _depths[parent] + 1;
        _depths.Add(depth);
        MaxDepth = Math.Max(MaxDepth, depth);
        _nextSibling.Add(-1);
        _firstChild.Add(-1);
        _lastChild.Add(-1);
        _q.Add(q);
        _draw.Add(draw);
        int slot = parent + 1;
        if (_lastChild[slot] < 0)
            _firstChild[slot] = node;
        else
            _nextSibling[_lastChild[slot]] = node;
        _lastChild[slot] = node;
        return node;
    }

    /// <summary>First child of <paramref name="node"/> (−1 = the root), or −1.</summary>
    public int FirstChild(int node) => _firstChild[node + 1];

    /// <summary>The next child of the same parent, or −1.</summary>
    public int NextSibling(int node) => _nextSibling[node];

    public int ChildCount(int node)
    {
        int count = 0;
        for (int c = FirstChild(node); c >= 0; c = NextSibling(c))
            count++;
        return count;
    }

    /// <summary>
    /// Records that the children of <paramref name="node"/> (−1 = root) were drawn from <paramref name="q"/>
    /// (a full-vocabulary distribution; the tree keeps the reference) in the manner <paramref name="draw"/>.
    /// </summary>
    public void SetDraftDistribution(int node, float[]? q, DraftDraw draw)
    {
        if (draw != DraftDraw.Deterministic && q is null)
            throw new ArgumentNullException(nameof(q), "sampled children need the distribution they were drawn from");
        _q[node + 1] = q;
        _draw[node + 1] = draw;
    }

    public float[]? DraftDistribution(int node) => _q[node + 1];

    public DraftDraw Draw(int node) => _draw[node + 1];

    /// <summary>Whether every node has at most one child.</summary>
    public bool IsChain
    {
        get
        {
            for (int n = -1; n < Count; n++)
            {
                int c = FirstChild(n);
                if (c >= 0 && NextSibling(c) >= 0)
                    return false;
            }
            return true;
        }
    }

    /// <summary>
    /// Removes the nodes <paramref name="drop"/> marks, and every descendant of one, keeping the others in
    /// their order (parents before children) with their draft distributions; returns how many went.
    /// </summary>
    public int Prune(ReadOnlySpan<bool> drop)
    {
        if (drop.Length < Count)
            throw new ArgumentException($"{drop.Length} marks for {Count} nodes", nameof(drop));
        var tokens = _tokens.ToArray();
        var parents = _parents.ToArray();
        var q = _q.ToArray();
        var draw = _draw.ToArray();
        var map = new int[tokens.Length];
        Clear();
        _q[0] = q[0];
        _draw[0] = draw[0];
        for (int n = 0; n < tokens.Length; n++)
        {
            int parent = parents[n];
            if (drop[n] || (parent >= 0 && map[parent] < 0))
            {
                map[n] = -1;
                continue;
            }
            // not Add: siblings sampled with replacement may repeat a token
            map[n] = Append(parent < 0 ? -1 : map[parent], tokens[n], q[n + 1], draw[n + 1]);
        }
        return tokens.Length - Count;
    }

    /// <summary>The tokens from the root down to <paramref name="node"/> (inclusive), root excluded.</summary>
    public void PathTo(int node, List<int> tokens)
    {
        tokens.Clear();
        for (int n = node; n >= 0; n = Parent(n))
            tokens.Add(Token(n));
        tokens.Reverse();
    }
}
