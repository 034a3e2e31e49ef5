using System.Numerics;

namespace Engine.Constraints;

/// <summary>
/// An allowed-token set as the grammar's caches keep it, one per matcher state: a shared base (a slice's
/// tokens, <see cref="TokenTrie.ClassifySplit"/> — one array for every state and grammar in that run on
/// the vocabulary) and the tokens beyond it as a sorted list; or, where that list would be longer than a
/// bit set, a bit set of its own.
/// </summary>
/// <remarks>
/// Why not a bit set per state: a fresh grammar meets a new state at most of its tokens, and a new 16 KB
/// bit set (128k tokens) is memory touched for the first time — four page faults, about 45 µs on the 2-core
/// VM this was measured on, more than the trie walk that fills it — while most states allow a few hundred
/// tokens beyond their run's class. The walk fills a scratch bit set that stays warm; only what it found
/// is kept.
/// </remarks>
internal sealed class TokenMask
{
    private readonly ulong[]? _base; // shared and read-only
    private readonly int[]? _tokens; // beyond the base, ascending
    private readonly ulong[]? _bits; // the whole set (base included) where the list would be long

    private TokenMask(ulong[]? shared, int[]? tokens, ulong[]? bits, int count)
    {
        _base = shared;
        _tokens = tokens;
        _bits = bits;
        Count = count;
    }

    /// <summary>How many tokens the set holds.</summary>
    public int Count { get; }

    /// <summary>The shared base this set points at (null where none).</summary>
    public ulong[]? Base => _base;

    /// <summary>
    /// The set <paramref name="shared"/> ∪ <paramref name="extra"/>, where <paramref name="extra"/> is a scratch
    /// bit set (read, not kept) disjoint from <paramref name="shared"/>.
    /// </summary>
    public static TokenMask From(ulong[]? shared, ulong[] extra)
    {
        int n = 0;
        foreach (ulong w in extra)
            n += BitOperations.PopCount(w);
        int sharedCount = 0;
        if (shared is not null)
        {
            foreach (ulong w in shared)
                sharedCount += BitOperations.PopCount(w);
        }
        if (n > extra.Length)
        {
            // more tokens than bit-set words: a list of ints would be larger than the bits themselves
            var bits = GrammarConstraint.NewMask(extra.Length * 64);
            for (int w = 0; w < bits.Length; w++)
                bits[w] = extra[w] | (shared is null ? 0 : shared[w]);
            return new TokenMask(null, null, bits, n + sharedCount);
        }
        var tokens = new int[n];
        int k = 0;
        for (int w = 0; w < extra.Length; w++)
        {
            for (ulong bits = extra[w]; bits != 0; bits &= bits - 1)
                tokens[k++] = (w << 6) | BitOperations.TrailingZeroCount(bits);
        }
        return new TokenMask(shared, tokens, null, n + sharedCount);
    }

    /// <summary>Writes the whole set as bits into <paramref name="dest"/> (overwritten).</summary>
    public void CopyTo(ulong[] dest)
    {
        if (_bits is not null)
        {
            _bits.CopyTo(dest, 0);
            return;
        }
        if (_base is not null)
            _base.CopyTo(dest, 0);
        else
            Array.Clear(dest);
        SetTokens(dest);
    }

    /// <summary>Sets into <paramref name="dest"/> the bits beyond the base (all of them where there is no base).</summary>
    public void CopyBeyondBaseTo(ulong[] dest)
    {
        if (_bits is not null)
        {
            _bits.CopyTo(dest, 0);
            return;
        }
        Array.Clear(dest);
        SetTokens(dest);
    }

    private void SetTokens(ulong[] dest)
    {
        foreach (int t in _tokens!)
            dest[t >> 6] |= 1UL << (t & 63);
    }

    /// <summary>Whether <paramref name="token"/> is in the set.</summary>
    public bool Contains(int token)
    {
        if (_bits is not null)
            return (_bits[token >> 6] & (1UL << (token & 63))) != 0;
        if (_base is not null && (_base[token >> 6] & (1UL << (token & 63))) != 0)
            return true;
        return Array.BinarySearch(_tokens!, token) >= 0;
    }
}
