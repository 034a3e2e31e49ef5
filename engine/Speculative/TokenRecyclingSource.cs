namespace Engine.Speculative;

/// <summary>
/// Token Recycling (Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language
/// Models with Token Recycling", 2024): the candidate tokens a verification computes and throws away
/// are kept in an adjacency matrix — for each token, the target's top-k next tokens the last time it
/// was verified — and the next draft is that matrix expanded breadth-first along a static tree
/// template, starting from the root token. No model and no training; the matrix is vocab × k ints
/// (1 MiB for a 32K vocabulary at k = 8).
/// </summary>
/// <remarks>
/// The template is the budget's most likely nodes under a fixed guess of how often the target's rank-r
/// token is the one it wants (0.55 for its top token, falling to 0.02): the static counterpart of
/// EAGLE-2's dynamic trees, which rank nodes by cumulative probability in the same way.
/// </remarks>
public sealed class TokenRecyclingSource : IDraftSource, ITopKObserver
{
    private static readonly double[] RankChance = [0.55, 0.15, 0.08, 0.05, 0.04, 0.03, 0.02, 0.02];
    private readonly int[] _next;   // [vocab][K], −1 = unknown
    private readonly Dictionary<int, (int Parent, int Rank)[]> _templates = [];
    private readonly List<int> _nodeOf = [];

    public TokenRecyclingSource(int vocab, int k = 8)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocab, 1);
        if (k < 1 || k > RankChance.Length)
            throw new ArgumentOutOfRangeException(nameof(k), $"k {k} must be 1..{RankChance.Length}");
        Vocab = vocab;
        K = k;
        _next = new int[checked(vocab * k)];
        Array.Fill(_next, -1);
    }

    public string Name => "recycle";

    public int Vocab { get; }

    public int K { get; }

    /// <summary>The recorded top-k successors of <paramref name="token"/> (−1 where unknown).</summary>
    public ReadOnlySpan<int> Successors(int token) => _next.AsSpan(token * K, K);

    /// <summary>The matrix persists across generations (the paper keeps it for the whole session).</summary>
    public void Begin(IReadOnlyList<int> context) { }

    public void Draft(DraftRequest request, DraftTree tree)
    {
        var template = Template(request.Budget);
        int root = request.Context[^1];
        _nodeOf.Clear();
        foreach (var (parent, rank) in template)
        {
            int parentNode = parent < 0 ? -1 : _nodeOf[parent];
            int node = -1;
            if (parent < 0 || parentNode >= 0)
            {
                int from = parentNode < 0 ? root : tree.Token(parentNode);
                int token = _next[from * K + rank];
                if (token >= 0 && !HasChild(tree, parentNode, token))
                    node = tree.Add(parentNode, token);
            }
            _nodeOf.Add(node); // −1: this template node and its subtree are skipped
        }
    }

    private static bool HasChild(DraftTree tree, int parent, int token)
    {
        for (int c = tree.FirstChild(parent); c >= 0; c = tree.NextSibling(c))
        {
            if (tree.Token(c) == token)
                return true;
        }
        return false;
    }

    /// <summary>Recycles the verification: each verified position's top-k becomes its input token's successors.</summary>
    public void Observe(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<float> logits, int vocab, IReadOnlyList<int> context)
    {
        int rows = tree.Count + 1;
        int rootIndex = context.Count - path.Count - 2; // the root sat just before the accepted tokens and the next one
        for (int r = 0; r < rows; r++)
        {
            int input = r == 0 ? context[rootIndex] : tree.Token(r - 1);
            if ((uint)input >= (uint)Vocab)
                continue;
            TopK.Largest(logits.Slice(r * vocab, Math.Min(vocab, Vocab)), _next.AsSpan(input * K, K));
        }
    }

    /// <summary>The same update from ids the device computed (top_k_ids_f32: largest first, the earlier index on ties, as <see cref="TopK.Largest"/>).</summary>
    public void ObserveTopK(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<int> ids, IReadOnlyList<int> context)
    {
        int rows = tree.Count + 1;
        int rootIndex = context.Count - path.Count - 2;
        for (int r = 0; r < rows; r++)
        {
            int input = r == 0 ? context[rootIndex] : tree.Token(r - 1);
            if ((uint)input >= (uint)Vocab)
                continue;
            var row = ids.Slice(r * K, K);
            var successors = _next.AsSpan(input * K, K);
            for (int j = 0; j < K; j++)
                successors[j] = (uint)row[j] < (uint)Vocab ? row[j] : -1; // ids past this matrix's vocabulary are not recorded
        }
    }

    /// <summary>The <paramref name="budget"/> most likely template nodes, parents before children (breadth-first).</summary>
    private (int Parent, int Rank)[] Template(int budget)
    {
        if (_templates.TryGetValue(budget, out var cached))
            return cached;
        // best-first by path probability; candidates are the children of chosen nodes
        var chosen = new List<(int Parent, int Rank, int Depth, double P)>();
        var frontier = new PriorityQueue<(int Parent, int Rank, int Depth, double P), double>();
        for (int r = 0; r < K; r++)
            frontier.Enqueue((-1, r, 1, RankChance[r]), -RankChance[r]);
        while (chosen.Count < budget && frontier.TryDequeue(out var node, out _))
        {
            int index = chosen.Count;
            chosen.Add(node);
            for (int r = 0; r < K; r++)
            {
                double p = node.P * RankChance[r];
                frontier.Enqueue((index, r, node.Depth + 1, p), -p);
            }
        }
        // breadth-first order keeps parents first; remap parent indices
        var order = Enumerable.Range(0, chosen.Count).OrderBy(i => chosen[i].Depth).ThenBy(i => i).ToArray();
        var position = new int[chosen.Count];
        for (int i = 0; i < order.Length; i++)
            position[order[i]] = i;
        var template = order.Select(i => (chosen[i].Parent < 0 ? -1 : position[chosen[i].Parent], chosen[i].Rank)).ToArray();
        _templates[budget] = template;
        return template;
    }

    public void Dispose() { }
}
