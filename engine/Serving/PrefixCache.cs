using Engine.Cache;

namespace Engine.Serving;

/// <summary>
/// Automatic prefix caching (as vLLM's, and SGLang's RadixAttention: Zheng et al., "SGLang: Efficient
/// Execution of Structured Language Model Programs", 2024): the KV blocks of prompts already computed —
/// a system prompt, a conversation's history — kept after their requests end and handed to the next
/// request whose prompt starts with the same tokens, so it prefills only the rest. Blocks are keyed by
/// their tokens and their whole prefix (a trie of full blocks), held by a reference of their own, and
/// evicted least-recently-used, leaves first, when the pool runs short. A sequence that adopts cached
/// blocks shares them copy-on-write (<see cref="KvCache.CreateSequence(ReadOnlySpan{int}, int)"/>), so
/// a cached block is never written again.
/// </summary>
public sealed class PrefixCache
{
    private readonly KvCache _cache;
    private readonly Node _root = new(null, [], -1);
    private readonly List<Node> _nodes = [];
    private long _clock;

    public PrefixCache(KvCache cache)
    {
        if (cache.Window > 0 || cache.Local is not null)
            throw new ArgumentException("prefix caching needs a cache whose sequences keep every block (no sliding window)", nameof(cache));
        _cache = cache;
    }

    /// <summary>Blocks the prefix cache holds.</summary>
    public int Blocks => _nodes.Count;

    /// <summary>
    /// The longest run of cached full blocks that <paramref name="tokens"/> starts with: their ids are
    /// appended to <paramref name="blocks"/>, and the tokens they hold are returned.
    /// </summary>
    public int Match(ReadOnlySpan<int> tokens, List<int> blocks)
    {
        int bs = _cache.BlockSize;
        var node = _root;
        int matched = 0;
        long now = ++_clock;
        while (matched + bs <= tokens.Length && node.Find(tokens.Slice(matched, bs)) is { } child)
        {
            child.LastUsed = now;
            blocks.Add(child.Block);
            matched += bs;
            node = child;
        }
        return matched;
    }

    /// <summary>
    /// Keeps the full blocks of a sequence whose first <paramref name="tokens"/>.Length tokens are
    /// <paramref name="tokens"/>: each block not cached yet gains a reference held here.
    /// </summary>
    public void Insert(ReadOnlySpan<int> tokens, KvSequence sequence)
    {
        if (sequence.Cache != _cache)
            throw new ArgumentException("the sequence belongs to another cache", nameof(sequence));
        int bs = _cache.BlockSize;
        int full = Math.Min(tokens.Length, sequence.Length) / bs;
        var node = _root;
        long now = ++_clock;
        for (int i = 0; i < full; i++)
        {
            var key = tokens.Slice(i * bs, bs);
            var child = node.Find(key);
            if (child is null)
            {
                int block = sequence.Blocks[i];
                if (block == KvSequence.DroppedBlock)
                    return;
                child = new Node(node, key.ToArray(), block);
                if (!node.Add(child))
                    return; // another prefix hashes alike: leave this one uncached
                _cache.Retain(block);
                _nodes.Add(child);
            }
            child.LastUsed = now;
            node = child;
        }
    }

    /// <summary>
    /// Frees the least recently used cached block that no sequence uses and that no longer block extends;
    /// false when there is none.
    /// </summary>
    public bool EvictOne()
    {
        Node? victim = null;
        foreach (var n in _nodes)
        {
            if (n.ChildCount == 0 && _cache.RefCount(n.Block) == 1 && (victim is null || n.LastUsed < victim.LastUsed))
                victim = n;
        }
        if (victim is null)
            return false;
        victim.Parent!.Remove(victim);
        _nodes.Remove(victim);
        _cache.Release(victim.Block);
        return true;
    }

    /// <summary>Frees every cached block no sequence uses.</summary>
    public void Clear()
    {
        while (EvictOne())
        {
        }
    }

    private sealed class Node(Node? parent, int[] tokens, int block)
    {
        private Dictionary<ulong, Node>? _children;

        public Node? Parent { get; } = parent;
        public int[] Tokens { get; } = tokens;
        public int Block { get; } = block;
        public long LastUsed { get; set; }
        public int ChildCount => _children?.Count ?? 0;

        public Node? Find(ReadOnlySpan<int> tokens) =>
            _children is not null && _children.TryGetValue(Hash(tokens), out var n) && tokens.SequenceEqual(n.Tokens) ? n : null;

        public bool Add(Node child) => (_children ??= []).TryAdd(Hash(child.Tokens), child);

        public void Remove(Node child) => _children!.Remove(Hash(child.Tokens));

        /// <summary>FNV-1a over the token ids (collisions are checked against the tokens themselves).</summary>
        private static ulong Hash(ReadOnlySpan<int> tokens)
        {
            ulong h = 14695981039346656037;
            foreach (int t in tokens)
                h = (h ^ (uint)t) * 1099511628211;
            return h;
        }
    }
}
