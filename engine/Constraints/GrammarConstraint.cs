using System.Runtime.CompilerServices;
using Engine.Tokenizers;

namespace Engine.Constraints;

/// <summary>
/// The vocabulary as a trie of token byte strings, built once per tokenizer: a mask walks it once, so
/// tokens sharing a prefix share the matcher's steps over that prefix, and a prefix the grammar rejects
/// prunes every token under it.
/// </summary>
public sealed class TokenTrie
{
    private static readonly ConditionalWeakTable<TextTokenizer, TokenTrie> s_cache = new();

    private readonly List<int> _firstChild = [-1], _nextSibling = [-1], _tokenHead = [-1];
    private readonly List<byte> _byte = [0];
    private readonly int[] _tokenNext;

    private TokenTrie(TextTokenizer tokenizer)
        : this(tokenizer.VocabSize, id => tokenizer.Kind(id) is TokenKind.Control or TokenKind.Unknown or TokenKind.Unused ? [] : tokenizer.TokenBytes(id).ToArray())
    {
    }

    /// <summary>A trie over any vocabulary: token id → its bytes (empty: never allowed).</summary>
    internal TokenTrie(int vocabSize, Func<int, byte[]> bytesOf)
    {
        VocabSize = vocabSize;
        _tokenNext = new int[VocabSize];
        for (int id = 0; id < VocabSize; id++)
        {
            var bytes = bytesOf(id);
            if (bytes.Length == 0)
            {
                _tokenNext[id] = -2; // never part of a constrained text (control tokens, empty pieces)
                continue;
            }
            int node = 0;
            foreach (byte b in bytes)
                node = Child(node, b);
            _tokenNext[id] = _tokenHead[node];
            _tokenHead[node] = id;
        }
        Nodes = _byte.Count;
    }

    public static TokenTrie For(TextTokenizer tokenizer) => s_cache.GetValue(tokenizer, t => new TokenTrie(t));

    public int VocabSize { get; }

    public int Nodes { get; }

    private int Child(int node, byte b)
    {
        for (int c = _firstChild[node]; c >= 0; c = _nextSibling[c])
        {
            if (_byte[c] == b)
                return c;
        }
        int n = _byte.Count;
        _byte.Add(b);
        _firstChild.Add(-1);
        _tokenHead.Add(-1);
        _nextSibling.Add(_firstChild[node]);
        _firstChild[node] = n;
        return n;
    }

    /// <summary>Sets the bit of every token whose bytes the matcher accepts from <paramref name="state"/>.</summary>
    public void Allowed(GrammarMatcher matcher, int state, ulong[] mask)
    {
        Array.Clear(mask);
        var stack = new Stack<(int Node, int State)>();
        stack.Push((0, state));
        while (stack.Count > 0)
        {
            var (node, s) = stack.Pop();
            for (int c = _firstChild[node]; c >= 0; c = _nextSibling[c])
            {
                int next = matcher.Step(s, _byte[c]);
                if (next == GrammarMatcher.Dead)
                    continue;
                for (int t = _tokenHead[c]; t >= 0; t = _tokenNext[t])
                    mask[t >> 6] |= 1UL << (t & 63);
                if (_firstChild[c] >= 0)
                    stack.Push((c, next));
            }
        }
    }
}

/// <summary>
/// A grammar applied to one generation: it masks the logits to the tokens that keep the text inside the
/// grammar (end tokens only where the text may end) and advances with each kept token. Masks are cached
/// per matcher state, so a state met again costs nothing; greedy decoding checks the best candidates one
/// by one and builds the full mask only when several are rejected.
/// </summary>
public sealed class GrammarConstraint
{
    private readonly GrammarMatcher _matcher;
    private readonly TextTokenizer _tokenizer;
    private readonly TokenTrie _trie;
    private readonly Dictionary<int, ulong[]> _masks = [];
    private readonly List<byte> _text = []; // the bytes accepted so far: replayed after the matcher drops its caches
    private int _state;

    public GrammarConstraint(Grammar grammar, TextTokenizer tokenizer)
    {
        _matcher = new GrammarMatcher(grammar);
        _tokenizer = tokenizer;
        _trie = TokenTrie.For(tokenizer);
        _state = _matcher.Start;
    }

    /// <summary>Whether the text so far is a complete sentence of the grammar.</summary>
    public bool CanEnd => _matcher.CanEnd(_state);

    /// <summary>Whether the text so far can still grow.</summary>
    public bool CanContinue => _matcher.CanContinue(_state);

    /// <summary>Whether <paramref name="token"/> may come next.</summary>
    public bool Allows(int token)
    {
        if (_tokenizer.IsEndOfGeneration(token))
            return CanEnd;
        if ((uint)token >= (uint)_trie.VocabSize || _tokenizer.Kind(token) is TokenKind.Control or TokenKind.Unknown or TokenKind.Unused)
            return false;
        var bytes = _tokenizer.TokenBytes(token);
        return bytes.Length > 0 && _matcher.Step(_state, bytes) != GrammarMatcher.Dead;
    }

    /// <summary>
    /// Sets every token the grammar does not allow to −∞. Returns false when nothing is allowed (a dead end:
    /// the text cannot continue and may not end).
    /// </summary>
    public bool Apply(Span<float> logits)
    {
        var mask = Mask();
        bool canEnd = CanEnd, any = false;
        // word by word: a word of 64 disallowed tokens is one fill, of 64 allowed ones one check
        for (int w = 0; w * 64 < logits.Length; w++)
        {
            int start = w * 64, count = Math.Min(64, logits.Length - start);
            ulong bits = w < mask.Length ? mask[w] : 0;
            if (bits == 0 && !canEnd)
            {
                logits.Slice(start, count).Fill(float.NegativeInfinity);
                continue;
            }
            for (int j = 0; j < count; j++)
            {
                int i = start + j;
                bool allowed = (bits & (1UL << j)) != 0 || (canEnd && i < _trie.VocabSize && _tokenizer.IsEndOfGeneration(i));
                if (allowed)
                    any |= logits[i] > float.NegativeInfinity;
                else
                    logits[i] = float.NegativeInfinity;
            }
        }
        return any;
    }

    /// <summary>
    /// Greedy decoding's choice: the highest logit the grammar allows, trying the best candidates before
    /// building a mask; −1 at a dead end. <paramref name="scratch"/> (vocabulary-sized) is overwritten.
    /// </summary>
    public int Greedy(ReadOnlySpan<float> logits, Span<float> scratch)
    {
        logits.CopyTo(scratch);
        for (int tries = 0; tries < 8; tries++)
        {
            int best = Sampling.SamplerChain.Argmax(scratch);
            if (float.IsNegativeInfinity(scratch[best]))
                return -1;
            if (Allows(best))
                return best;
            scratch[best] = float.NegativeInfinity;
        }
        if (!Apply(scratch))
            return -1;
        return Sampling.SamplerChain.Argmax(scratch);
    }

    /// <summary>Advances past a kept token (an end token leaves the state as it is).</summary>
    /// <exception cref="InvalidOperationException">The grammar does not allow the token.</exception>
    public void Accept(int token)
    {
        if (_tokenizer.IsEndOfGeneration(token))
            return;
        var bytes = _tokenizer.TokenBytes(token);
        int next = _matcher.Step(_state, bytes);
        if (next == GrammarMatcher.Dead || bytes.Length == 0)
            throw new InvalidOperationException($"token {token} ('{_tokenizer.Piece(token)}') is not allowed by the grammar here");
        _text.AddRange(bytes);
        _state = next;
        if (_matcher.Oversized)
        {
            // the caches passed their bound: rebuild the current state from the text (same state, new id)
            _masks.Clear();
            _state = _matcher.Step(_matcher.Reset(), System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_text));
        }
    }

    private ulong[] Mask()
    {
        if (!_masks.TryGetValue(_state, out var mask))
        {
            mask = new ulong[(_trie.VocabSize + 63) / 64];
            _trie.Allowed(_matcher, _state, mask);
            _masks[_state] = mask;
        }
        return mask;
    }
}
