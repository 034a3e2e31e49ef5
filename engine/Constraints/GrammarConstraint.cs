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

    /// <summary>
    /// From a local state (<see cref="GrammarMatcher.Local"/>): the bits of the tokens accepted whatever the
    /// context, and the list of those whose fate depends on the frames below the top.
    /// </summary>
    public void Classify(GrammarMatcher matcher, int local, ulong[] accepted, List<int> open)
    {
        Array.Clear(accepted);
        open.Clear();
        var stack = new Stack<(int Node, int State)>();
        stack.Push((0, local));
        while (stack.Count > 0)
        {
            var (node, s) = stack.Pop();
            for (int c = _firstChild[node]; c >= 0; c = _nextSibling[c])
            {
                int next = matcher.Step(s, _byte[c]);
                if (next == GrammarMatcher.Dead)
                    continue;
                var verdict = matcher.Verdict(next);
                for (int t = _tokenHead[c]; t >= 0; t = _tokenNext[t])
                {
                    if (verdict == GrammarMatcher.TokenVerdict.Accepted)
                        accepted[t >> 6] |= 1UL << (t & 63);
                    else
                        open.Add(t);
                }
                if (_firstChild[c] >= 0)
                    stack.Push((c, next));
            }
        }
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
}

/// <summary>
/// What every generation under one grammar and one vocabulary shares: the matcher with its interned
/// states and transitions, the masks per state and the classification per local state. A grammar is
/// compiled once and its caches grow with use (a schema served again costs cache lookups); generations
/// in parallel take the lock for each step. Past the matcher's bound the caches are dropped, and each
/// constraint replays its text into the new ones (<see cref="Epoch"/> tells them).
/// </summary>
internal sealed class SharedGrammar
{
    private static readonly ConditionalWeakTable<Grammar, ConditionalWeakTable<TextTokenizer, SharedGrammar>> s_cache = new();

    private SharedGrammar(Grammar grammar, TextTokenizer tokenizer)
    {
        Matcher = new GrammarMatcher(grammar);
        Tokenizer = tokenizer;
        Trie = TokenTrie.For(tokenizer);
    }

    public static SharedGrammar For(Grammar grammar, TextTokenizer tokenizer) =>
        s_cache.GetValue(grammar, _ => new()).GetValue(tokenizer, t => new SharedGrammar(grammar, t));

    public GrammarMatcher Matcher { get; }
    public TextTokenizer Tokenizer { get; }
    public TokenTrie Trie { get; }
    public Lock Gate { get; } = new();
    public Dictionary<int, ulong[]> Masks { get; } = [];
    public Dictionary<int, (ulong[] Accepted, int[]? Open)> Local { get; } = [];

    /// <summary>Counts the times the caches were dropped: a state id from an older epoch means nothing now.</summary>
    public int Epoch { get; private set; }

    public void Drop()
    {
        Masks.Clear();
        Local.Clear();
        Matcher.Reset();
        Epoch++;
    }
}

/// <summary>
/// A grammar applied to one generation: it masks the logits to the tokens that keep the text inside the
/// grammar (end tokens only where the text may end) and advances with each kept token. Masks are cached
/// per matcher state in the grammar's shared caches, so a state met again — in this generation or an
/// earlier one — costs nothing; a fresh state reuses the classification of its top frames and checks
/// only the tokens that leave them. Greedy decoding checks the best candidates one by one and builds
/// the full mask only when several are rejected.
/// </summary>
public sealed class GrammarConstraint
{
    private readonly SharedGrammar _shared;
    private readonly GrammarMatcher _matcher;
    private readonly TextTokenizer _tokenizer;
    private readonly TokenTrie _trie;
    private readonly List<byte> _text = []; // the bytes accepted so far: replayed after the caches are dropped
    private int _state, _epoch;

    public GrammarConstraint(Grammar grammar, TextTokenizer tokenizer)
    {
        _shared = SharedGrammar.For(grammar, tokenizer);
        _matcher = _shared.Matcher;
        _tokenizer = tokenizer;
        _trie = _shared.Trie;
        lock (_shared.Gate)
        {
            _state = _matcher.Start;
            _epoch = _shared.Epoch;
        }
    }

    /// <summary>The current state, replayed from the text if the shared caches were dropped since (call under the lock).</summary>
    private int State
    {
        get
        {
            if (_epoch != _shared.Epoch)
            {
                _state = _matcher.Step(_matcher.Start, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_text));
                _epoch = _shared.Epoch;
            }
            return _state;
        }
    }

    /// <summary>Whether the text so far is a complete sentence of the grammar.</summary>
    public bool CanEnd
    {
        get
        {
            lock (_shared.Gate)
                return _matcher.CanEnd(State);
        }
    }

    /// <summary>Whether the text so far can still grow.</summary>
    public bool CanContinue
    {
        get
        {
            lock (_shared.Gate)
                return _matcher.CanContinue(State);
        }
    }

    /// <summary>Whether <paramref name="token"/> may come next.</summary>
    public bool Allows(int token)
    {
        if (_tokenizer.IsEndOfGeneration(token))
            return CanEnd;
        if ((uint)token >= (uint)_trie.VocabSize || _tokenizer.Kind(token) is TokenKind.Control or TokenKind.Unknown or TokenKind.Unused)
            return false;
        var bytes = _tokenizer.TokenBytes(token);
        lock (_shared.Gate)
            return bytes.Length > 0 && _matcher.Step(State, bytes) != GrammarMatcher.Dead;
    }

    /// <summary>
    /// Sets every token the grammar does not allow to −∞. Returns false when nothing is allowed (a dead end:
    /// the text cannot continue and may not end).
    /// </summary>
    public bool Apply(Span<float> logits)
    {
        int state;
        lock (_shared.Gate)
            state = State;
        return Apply(state, logits);
    }

    /// <summary>The matcher state of the text so far (valid until the shared caches are dropped: use it within one step).</summary>
    public int Current
    {
        get
        {
            lock (_shared.Gate)
                return State;
        }
    }

    /// <summary>The state after <paramref name="token"/> from <paramref name="state"/> (<see cref="GrammarMatcher.Dead"/> if not allowed) — a draft tree's branches each follow their own.</summary>
    public int After(int state, int token)
    {
        if (state < 0 || _tokenizer.IsEndOfGeneration(token) || _tokenizer.Kind(token) is TokenKind.Control or TokenKind.Unknown or TokenKind.Unused)
            return GrammarMatcher.Dead;
        var bytes = _tokenizer.TokenBytes(token);
        if (bytes.Length == 0)
            return GrammarMatcher.Dead;
        lock (_shared.Gate)
            return _matcher.Step(state, bytes);
    }

    /// <summary><see cref="Apply(Span{float})"/> as at <paramref name="state"/> (from <see cref="Current"/> or <see cref="After"/>).</summary>
    public bool Apply(int state, Span<float> logits)
    {
        ulong[] mask;
        bool canEnd;
        lock (_shared.Gate)
        {
            mask = Mask(state);
            canEnd = _matcher.CanEnd(state);
        }
        bool any = false;
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
        lock (_shared.Gate)
        {
            int next = _matcher.Step(State, bytes);
            if (next == GrammarMatcher.Dead || bytes.Length == 0)
                throw new InvalidOperationException($"token {token} ('{_tokenizer.Piece(token)}') is not allowed by the grammar here");
            _text.AddRange(bytes);
            _state = next;
            if (_matcher.Oversized)
                _shared.Drop(); // this constraint and every other replays its text on its next step
        }
    }

    /// <summary>
    /// The allowed tokens in the current state (call under the lock): from the cached classification of
    /// its local state (shared by every state with the same top frames) plus a full check of the few
    /// tokens that leave those frames; a state whose local walk leaves too much open is walked in full.
    /// </summary>
    private ulong[] Mask(int state)
    {
        if (_shared.Masks.TryGetValue(state, out var mask))
            return mask;
        mask = new ulong[(_trie.VocabSize + 63) / 64];
        int local = _matcher.Local(state);
        if (local == state)
            _trie.Allowed(_matcher, state, mask);
        else
        {
            if (!_shared.Local.TryGetValue(local, out var split))
            {
                var accepted = new ulong[mask.Length];
                var open = new List<int>();
                _trie.Classify(_matcher, local, accepted, open);
                split = (accepted, open.Count > OpenLimit ? null : open.ToArray());
                _shared.Local[local] = split;
            }
            if (split.Open is null)
                _trie.Allowed(_matcher, state, mask);
            else
            {
                split.Accepted.CopyTo(mask, 0);
                foreach (int t in split.Open)
                {
                    if (_matcher.Step(state, _tokenizer.TokenBytes(t)) != GrammarMatcher.Dead)
                        mask[t >> 6] |= 1UL << (t & 63);
                }
            }
        }
        _shared.Masks[state] = mask;
        return mask;
    }

    /// <summary>Open tokens beyond which checking them one by one costs more than a full walk.</summary>
    private const int OpenLimit = 4096;
}
