using System.Buffers;
using System.Runtime.CompilerServices;
using Engine.Tokenizers;

namespace Engine.Constraints;

/// <summary>
/// The vocabulary as a trie of token byte strings, built once per tokenizer: a mask walks it once, so
/// tokens sharing a prefix share the matcher's steps over that prefix, and a prefix the grammar rejects
/// prunes every token under it. Nodes are numbered breadth-first with each node's children contiguous,
/// so a walk reads arrays front to back.
/// </summary>
/// <remarks>
/// A state in a run of one character class (inside a JSON string every ordinary character leads on the
/// same way, for ever or for the string's remaining length) accepts every token made only of that class's
/// characters, up to the run's length: those tokens come from a precomputed set per class and vocabulary
/// (LLGuidance's "slices", Moskal et al., 2025), and only the rest of the vocabulary — a small trie of its
/// own — is walked.
/// </remarks>
public sealed class TokenTrie
{
    private static readonly ConditionalWeakTable<TextTokenizer, TokenTrie> s_cache = new();

    private readonly TrieNode[] _nodes; // and a last one past the end, so that node n's ranges end where node n + 1's begin
    private readonly int[] _tokens;
    private readonly byte[][] _tokenBytes;
    private readonly Dictionary<(int Lo, int Hi)[], Slice?> _slices = new(CodePointRanges.Comparer.Instance);
    private readonly Lock _sliceGate = new();

    /// <summary>
    /// A node: its children are nodes <c>ChildStart</c> .. the next node's <c>ChildStart</c> − 1, its tokens
    /// <c>_tokens[TokenStart ..</c> the next node's <c>TokenStart]</c>. One array of these rather than one array
    /// per field: a walk reads a node and its successor together, from one cache line instead of three.
    /// </summary>
    private struct TrieNode
    {
        public int ChildStart;
        public int TokenStart;
        public byte Byte; // the byte that enters the node
    }

    private TokenTrie(TextTokenizer tokenizer)
        : this(tokenizer.VocabSize, id => tokenizer.Kind(id) is TokenKind.Control or TokenKind.Unknown or TokenKind.Unused ? [] : tokenizer.TokenBytes(id).ToArray())
    {
    }

    /// <summary>A trie over any vocabulary: token id → its bytes (empty: never allowed).</summary>
    internal TokenTrie(int vocabSize, Func<int, byte[]> bytesOf)
    {
        VocabSize = vocabSize;
        _tokenBytes = new byte[vocabSize][];
        // first as linked lists, then renumbered breadth-first into flat arrays
        var firstChild = new List<int> { -1 };
        var nextSibling = new List<int> { -1 };
        var entry = new List<byte> { 0 };
        var tokenHead = new List<int> { -1 };
        var tokenNext = new int[vocabSize];
        for (int id = 0; id < vocabSize; id++)
        {
            var bytes = bytesOf(id);
            _tokenBytes[id] = bytes;
            if (bytes.Length == 0)
                continue; // never part of a constrained text (control tokens, empty pieces)
            int node = 0;
            foreach (byte b in bytes)
            {
                int c = firstChild[node];
                while (c >= 0 && entry[c] != b)
                    c = nextSibling[c];
                if (c < 0)
                {
                    c = entry.Count;
                    entry.Add(b);
                    firstChild.Add(-1);
                    tokenHead.Add(-1);
                    nextSibling.Add(firstChild[node]);
                    firstChild[node] = c;
                }
                node = c;
            }
            tokenNext[id] = tokenHead[node];
            tokenHead[node] = id;
        }
        int count = entry.Count;
        Nodes = count;
        _nodes = new TrieNode[count + 1];
        var tokens = new List<int>();
        var order = new int[count]; // new number → old node
        order[0] = 0;
        int next = 1;
        for (int n = 0; n < count; n++)
        {
            int old = order[n];
            _nodes[n].TokenStart = tokens.Count;
            for (int t = tokenHead[old]; t >= 0; t = tokenNext[t])
                tokens.Add(t);
            _nodes[n].ChildStart = next;
            for (int c = firstChild[old]; c >= 0; c = nextSibling[c])
            {
                _nodes[next].Byte = entry[c];
                order[next++] = c;
            }
        }
        _nodes[count].ChildStart = next;
        _nodes[count].TokenStart = tokens.Count;
        _tokens = [.. tokens];
    }

    public static TokenTrie For(TextTokenizer tokenizer) => s_cache.GetValue(tokenizer, t => new TokenTrie(t));

    public int VocabSize { get; }

    public int Nodes { get; }

    /// <summary>Slices computed so far (one per character class a looping state was met with).</summary>
    public int SliceCount
    {
        get
        {
            lock (_sliceGate)
                return _slices.Count;
        }
    }

    /// <summary>
    /// From a local state (<see cref="GrammarMatcher.Local"/>): the bits of the tokens accepted whatever the
    /// context, and the list of those whose fate depends on the frames below the top.
    /// </summary>
    public void Classify(GrammarMatcher matcher, int local, ulong[] accepted, List<int> open)
    {
        if (ClassifySplit(matcher, local, accepted, open) is { } slice)
        {
            for (int w = 0; w < accepted.Length; w++)
                accepted[w] |= slice[w];
        }
    }

    /// <summary>
    /// <see cref="Classify"/> with the slice kept apart: returns the bits of the run's class tokens (a set
    /// shared by every grammar on this vocabulary, read-only; null where the state is in no run) and sets
    /// in <paramref name="accepted"/> only what the walk of the rest accepted — so a cached mask can point
    /// at the shared set instead of copying it.
    /// </summary>
    internal ulong[]? ClassifySplit(GrammarMatcher matcher, int local, ulong[] accepted, List<int> open)
    {
        Array.Clear(accepted);
        open.Clear();
        if (matcher.Run(local, MaxRunChars) is { } run && SliceOf(run.Class) is { } slice)
        {
            // the class's tokens (up to the run's length) stay in the run: accepted; only the others are walked
            slice.Rest.Walk(matcher, local, accepted, open);
            return slice.UpTo(run.Limit);
        }
        Walk(matcher, local, accepted, open);
        return null;
    }

    /// <summary>Sets the bit of every token whose bytes the matcher accepts from <paramref name="state"/>.</summary>
    /// <remarks>
    /// The walk of <see cref="Classify"/>: from a full state (not a local one) no path leaves its frames, so
    /// every token that survives the walk is accepted and none is left open.
    /// </remarks>
    public void Allowed(GrammarMatcher matcher, int state, ulong[] mask)
    {
        var open = new List<int>();
        Classify(matcher, state, mask, open);
        System.Diagnostics.Debug.Assert(open.Count == 0, "a full state leaves no token open");
    }

    /// <summary>Depth-first over the trie from <paramref name="state"/>, pruning at rejected prefixes.</summary>
    private void Walk(GrammarMatcher matcher, int state, ulong[] accepted, List<int> open)
    {
        var nodes = ArrayPool<int>.Shared.Rent(256);
        var states = ArrayPool<int>.Shared.Rent(256);
        try
        {
            int sp = 0;
            nodes[sp] = 0;
            states[sp++] = state;
            while (sp > 0)
            {
                int node = nodes[--sp], s = states[sp];
                var row = matcher.Row(s, out var map);
                var trie = _nodes;
                int end = trie[node + 1].ChildStart;
                for (int c = trie[node].ChildStart; c < end; c++)
                {
                    ref readonly var child = ref trie[c];
                    int next = row[map[child.Byte]];
                    if (next == GrammarMatcher.Unknown)
                        next = matcher.Step(s, child.Byte);
                    if (next < 0)
                        continue;
                    ref readonly var after = ref trie[c + 1];
                    if (child.TokenStart < after.TokenStart)
                    {
                        bool accept = matcher.Accepts(next);
                        for (int i = child.TokenStart; i < after.TokenStart; i++)
                        {
                            int t = _tokens[i];
                            if (accept)
                                accepted[t >> 6] |= 1UL << (t & 63);
                            else
                                open.Add(t);
                        }
                    }
                    if (child.ChildStart < after.ChildStart)
                    {
                        if (sp == nodes.Length)
                        {
                            Grow(ref nodes, sp);
                            Grow(ref states, sp);
                        }
                        nodes[sp] = c;
                        states[sp++] = next;
                    }
                }
            }
        }
        finally
        {
            ArrayPool<int>.Shared.Return(nodes);
            ArrayPool<int>.Shared.Return(states);
        }
    }

    private static void Grow(ref int[] array, int used)
    {
        var bigger = ArrayPool<int>.Shared.Rent(array.Length * 2);
        Array.Copy(array, bigger, used);
        ArrayPool<int>.Shared.Return(array);
        array = bigger;
    }

    /// <summary>Slices kept per vocabulary (each a bit set and a trie of the rest, a few MB on 128k tokens); past it they are computed again.</summary>
    private const int MaxSlices = 64;

    /// <summary>Tokens longer than this (in characters) are never taken from a slice, but walked.</summary>
    private const int MaxRunChars = 64;

    /// <summary>
    /// The tokens made only of characters in one class (at most <see cref="MaxRunChars"/> of them), by
    /// length, and a trie of all the others.
    /// </summary>
    private sealed class Slice(int[] pureByLength, int[] lengthStart, TokenTrie rest, int words)
    {
        private readonly ulong[]?[] _upTo = new ulong[]?[MaxRunChars + 1];

        public TokenTrie Rest { get; } = rest;

        /// <summary>The bits of the tokens of at most <paramref name="limit"/> characters (built once per limit, then shared: do not write).</summary>
        public ulong[] UpTo(int limit)
        {
            limit = Math.Min(limit, MaxRunChars);
            var mask = Volatile.Read(ref _upTo[limit]);
            if (mask is null)
            {
                mask = GrammarConstraint.NewMask(words * 64);
                for (int i = 0; i < lengthStart[limit + 1]; i++)
                    mask[pureByLength[i] >> 6] |= 1UL << (pureByLength[i] & 63);
                Volatile.Write(ref _upTo[limit], mask); // a race builds it twice, alike
            }
            return mask;
        }
    }

    /// <summary>
    /// The slice of a class, or null where most of the vocabulary lies outside it (<c>[a-z]</c>): there the
    /// walk prunes quickly by itself, and a trie of the rest would be nearly the whole one again.
    /// </summary>
    private Slice? SliceOf((int Lo, int Hi)[] ranges)
    {
        lock (_sliceGate)
        {
            if (_slices.TryGetValue(ranges, out var cached))
                return cached;
        }
        var slice = BuildSlice(ranges);
        lock (_sliceGate)
        {
            if (_slices.Count >= MaxSlices)
                _slices.Clear();
            _slices[ranges] = slice;
        }
        return slice;
    }

    /// <summary>
    /// A slice pays where at least this share of the vocabulary is in it (measured on the schema suite: 0.5
    /// left email-like classes such as <c>[a-zA-Z0-9._%+-]</c> to full walks on byte-level vocabularies,
    /// where most tokens begin with a space; 0.2 halved the cold p99; 0.1 took identifier classes such as
    /// <c>[a-z_]</c>, ~18% of a byte-level vocabulary, off 0.5 ms walks: p99 −25% on DeepSeek's 102k, −6%
    /// on 128k, peak memory +1–5%). A slice costs one scan and a trie of the rest the first time its class
    /// is met per vocabulary (35–70 ms on 100k–128k tokens, a few MB).
    /// </summary>
    private const double MinSliceShare = 0.1;

    private Slice? BuildSlice((int Lo, int Hi)[] ranges)
    {
        // a sample first: most classes met in patterns are narrow, and a scan of a 128k vocabulary costs milliseconds
        int sampled = 0, pureSampled = 0;
        for (int t = 0; t < VocabSize; t += Math.Max(1, VocabSize / 512))
        {
            if (_tokenBytes[t].Length == 0)
                continue;
            sampled++;
            pureSampled += PureLength(_tokenBytes[t], ranges) > 0 ? 1 : 0;
        }
        if (pureSampled < sampled * MinSliceShare * 0.8)
            return null;
        var length = new int[VocabSize]; // characters of a pure token, 0 for the others
        var count = new int[MaxRunChars + 2];
        for (int t = 0; t < VocabSize; t++)
        {
            length[t] = _tokenBytes[t].Length > 0 ? PureLength(_tokenBytes[t], ranges) : 0;
            count[length[t] + 1]++;
        }
        var start = new int[MaxRunChars + 2]; // tokens of length ≤ L: pureByLength[0 .. start[L + 1]]
        for (int l = 1; l <= MaxRunChars + 1; l++)
            start[l] = start[l - 1] + (l >= 2 ? count[l] : 0);
        var byLength = new int[start[MaxRunChars + 1]];
        var fill = (int[])start.Clone();
        for (int t = 0; t < VocabSize; t++)
        {
            if (length[t] > 0)
                byLength[fill[length[t]]++] = t;
        }
        if (byLength.Length < VocabSize * MinSliceShare)
            return null;
        var rest = new TokenTrie(VocabSize, t => length[t] > 0 ? [] : _tokenBytes[t]);
        return new Slice(byLength, start, rest, (VocabSize + 63) / 64);
    }

    /// <summary>
    /// How many characters <paramref name="bytes"/> hold when they are whole, well-formed UTF-8 characters,
    /// each inside <paramref name="ranges"/>, and at most <see cref="MaxRunChars"/>; else 0.
    /// </summary>
    private static int PureLength(byte[] bytes, (int Lo, int Hi)[] ranges)
    {
        int chars = 0;
        for (int i = 0; i < bytes.Length; chars++)
        {
            if (chars == MaxRunChars)
                return 0;
            if (System.Text.Rune.DecodeFromUtf8(bytes.AsSpan(i), out var rune, out int used) != OperationStatus.Done)
                return 0; // a partial or invalid character: its fate depends on the bytes around it
            if (!CodePointRanges.Contains(ranges, rune.Value))
                return 0;
            i += used;
        }
        return chars;
    }
}
