using System.Runtime.CompilerServices;
using Engine.Tokenizers;

namespace Engine.Constraints;

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
        EndTokens = [.. tokenizer.EndOfGenerationTokens];
    }

    public static SharedGrammar For(Grammar grammar, TextTokenizer tokenizer) =>
        s_cache.GetValue(grammar, _ => new()).GetValue(tokenizer, t => new SharedGrammar(grammar, t));

    public GrammarMatcher Matcher { get; }
    public TextTokenizer Tokenizer { get; }
    public TokenTrie Trie { get; }

    /// <summary>The tokens that end a generation: allowed exactly where the text may end.</summary>
    public int[] EndTokens { get; }
    public Lock Gate { get; } = new();
    public Dictionary<int, TokenMask> Masks { get; } = [];
    public Dictionary<int, (TokenMask Accepted, int[]? Open)> Local { get; } = [];

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

    /// <summary>Counts the times the shared caches were dropped: states from an older count mean nothing now (replay their text).</summary>
    internal int Epoch
    {
        get
        {
            lock (_shared.Gate)
                return _shared.Epoch;
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

    /// <summary>
    /// <see cref="Allows"/> as a delegate made once, for a sampler that asks about a few dozen candidates per
    /// token (<see cref="Sampling.SamplerChain.TrySampleAllowed"/>): where the current state's mask is cached
    /// already, a bit test without the lock; otherwise a step of the token's bytes (no mask is computed).
    /// </summary>
    public Func<int, bool> AllowsToken => _allowsToken ??= AllowsFromMask;

    private Func<int, bool>? _allowsToken;

    // the current state's cached mask as AllowsFromMask last saw it (one generation's thread only)
    private int _knownState = int.MinValue, _knownEpoch = -1;
    private TokenMask? _knownMask;
    private bool _knownCanEnd;

    /// <summary>
    /// Whether checking the best candidates one by one is likely to find enough allowed ones: the current
    /// state's mask is not computed yet (the check may spare computing it), or it allows at least half the
    /// vocabulary (free text). Where the grammar allows a few tokens, a sampler's search among the best
    /// candidates would fail and be paid twice (measured: 25 of 68 steps of a JSON walk, +16 µs a token).
    /// </summary>
    private bool MostlyAllows
    {
        get
        {
            Know();
            return _knownMask is not { } mask || 2L * mask.Count >= _trie.VocabSize;
        }
    }

    private void Know()
    {
        if (_knownState != _state || _knownEpoch != _epoch)
        {
            lock (_shared.Gate)
            {
                int state = State; // (replays the text if the caches were dropped)
                _knownMask = _shared.Masks.GetValueOrDefault(state);
                _knownCanEnd = _matcher.CanEnd(state);
                (_knownState, _knownEpoch) = (state, _epoch);
            }
        }
    }

    private bool AllowsFromMask(int token)
    {
        Know();
        if (_knownMask is not { } mask)
            return Allows(token);
        if (_tokenizer.IsEndOfGeneration(token))
            return _knownCanEnd;
        return (uint)token < (uint)_trie.VocabSize && mask.Contains(token); // (control tokens are never in a mask)
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
    /// Computes the allowed-token mask of the text so far, if not cached yet: what <see cref="Apply(Span{float})"/>
    /// does before writing the mask onto the logits. Returns how many tokens it allows (end tokens not counted).
    /// </summary>
    /// <remarks>Lets a benchmark time the mask apart from writing it over a vocabulary of logits.</remarks>
    public int ComputeMask()
    {
        lock (_shared.Gate)
        {
            return Mask(State).Count;
        }
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
        var mask = ApplyBits(_trie.VocabSize);
        bool canEnd;
        lock (_shared.Gate)
        {
            Mask(state).CopyTo(mask);
            canEnd = _matcher.CanEnd(state);
        }
        // the end tokens' logits, kept where the text may end (their bits are never in a mask)
        var ends = _shared.EndTokens;
        Span<float> endLogits = stackalloc float[canEnd ? ends.Length : 0];
        for (int i = 0; i < endLogits.Length; i++)
            endLogits[i] = ends[i] < logits.Length ? logits[ends[i]] : float.NegativeInfinity;
        bool any = false;
        // word by word: a word of 64 disallowed tokens is one fill, of 64 allowed ones nothing to do
        for (int w = 0; w * 64 < logits.Length; w++)
        {
            int start = w * 64, count = Math.Min(64, logits.Length - start);
            ulong bits = w < mask.Length ? mask[w] : 0;
            var word = logits.Slice(start, count);
            if (bits == 0)
            {
                word.Fill(float.NegativeInfinity);
                continue;
            }
            ulong inside = count == 64 ? ulong.MaxValue : (1UL << count) - 1;
            for (ulong rejected = ~bits & inside; rejected != 0; rejected &= rejected - 1)
                word[System.Numerics.BitOperations.TrailingZeroCount(rejected)] = float.NegativeInfinity;
            if (!any)
            {
                for (ulong kept = bits & inside; kept != 0 && !any; kept &= kept - 1)
                    any = word[System.Numerics.BitOperations.TrailingZeroCount(kept)] > float.NegativeInfinity;
            }
        }
        for (int i = 0; i < endLogits.Length; i++)
        {
            if (ends[i] < logits.Length)
            {
                logits[ends[i]] = endLogits[i];
                any |= endLogits[i] > float.NegativeInfinity;
            }
        }
        return any;
    }

    /// <summary>
    /// A draw of <paramref name="sampler"/> from <paramref name="logits"/> under the grammar: the best
    /// candidates checked first where that tells (<see cref="Sampling.SamplerChain.TrySampleAllowed"/>, in
    /// states that allow most of the vocabulary), else the logits copied into <paramref name="scratch"/>
    /// (vocabulary-sized, overwritten) and masked. −1 at a dead end.
    /// </summary>
    public int Sample(Sampling.SamplerChain sampler, ReadOnlySpan<float> logits, float[] scratch)
    {
        ArgumentNullException.ThrowIfNull(sampler);
        if (MostlyAllows && sampler.TrySampleAllowed(logits, AllowsToken, out int token))
            return token;
        logits.CopyTo(scratch);
        return Apply(scratch) ? sampler.Sample(scratch) : -1;
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
    private TokenMask Mask(int state)
    {
        if (_shared.Masks.TryGetValue(state, out var mask))
            return mask;
        var bits = Scratch(ref t_walkBits, _trie.VocabSize);
        ulong[]? shared;
        int local = _matcher.Local(state);
        if (local == state)
            shared = _trie.ClassifySplit(_matcher, state, bits, OpenScratch());
        else
        {
            if (!_shared.Local.TryGetValue(local, out var split))
            {
                var open = OpenScratch();
                var slice = _trie.ClassifySplit(_matcher, local, bits, open);
                split = (TokenMask.From(slice, bits), open.Count > OpenLimit ? null : open.ToArray());
                _shared.Local[local] = split;
            }
            if (split.Open is null)
                shared = _trie.ClassifySplit(_matcher, state, bits, OpenScratch());
            else
            {
                shared = split.Accepted.Base;
                split.Accepted.CopyBeyondBaseTo(bits);
                foreach (int t in split.Open)
                {
                    if (_matcher.Step(state, _tokenizer.TokenBytes(t)) != GrammarMatcher.Dead)
                        bits[t >> 6] |= 1UL << (t & 63);
                }
            }
        }
        mask = TokenMask.From(shared, bits);
        _shared.Masks[state] = mask;
        return mask;
    }

    /// <summary>The trie walk's bit set, one per thread and reused: memory already touched (see <see cref="TokenMask"/>).</summary>
    [ThreadStatic]
    private static ulong[]? t_walkBits;

    /// <summary>The bit set <see cref="Apply(int, Span{float})"/> writes from, one per thread (apart from the walk's: no call nests in another).</summary>
    [ThreadStatic]
    private static ulong[]? t_applyBits;

    [ThreadStatic]
    private static List<int>? t_open;

    private static ulong[] ApplyBits(int vocabSize) => Scratch(ref t_applyBits, vocabSize);

    private static ulong[] Scratch(ref ulong[]? slot, int vocabSize)
    {
        int words = (vocabSize + 63) / 64;
        if (slot is null || slot.Length != words)
            slot = new ulong[words];
        return slot;
    }

    private static List<int> OpenScratch() => t_open ??= [];

    /// <summary>
    /// A mask that lives as long as the grammar's caches: on the pinned object heap, which the collector
    /// never copies — thousands of 16 KB masks (a 128k vocabulary) promoted through the young generations
    /// would cost pauses of milliseconds in the middle of a generation.
    /// </summary>
    internal static ulong[] NewMask(int vocabSize) => GC.AllocateArray<ulong>((vocabSize + 63) / 64, pinned: true);

    /// <summary>Open tokens beyond which checking them one by one costs more than a full walk.</summary>
    private const int OpenLimit = 4096;
}
