namespace Engine.Constraints;

/// <summary>A set of Unicode code points: ranges, possibly negated (<c>[^...]</c>), or any (<c>.</c>).</summary>
public sealed class CharSet
{
    private readonly (int Lo, int Hi)[] _ranges;

    public CharSet((int Lo, int Hi)[] ranges, bool negated)
    {
        _ranges = ranges;
        Negated = negated;
    }

    public bool Negated { get; }

    public IReadOnlyList<(int Lo, int Hi)> Ranges => _ranges;

    /// <summary>The set as sorted disjoint positive ranges of encodable code points (computed once).</summary>
    internal (int Lo, int Hi)[] Positive => _positive ??= CodePointRanges.Of(this);

    /// <summary>How many code points <see cref="Positive"/> holds.</summary>
    internal long Size => CodePointRanges.Size(Positive);

    /// <summary>Whether the set shares a code point with <paramref name="ranges"/> (sorted, disjoint).</summary>
    internal bool Intersects((int Lo, int Hi)[] ranges) => CodePointRanges.Intersect(Positive, ranges).Length > 0;

    private (int Lo, int Hi)[]? _positive; // (a race computes it twice, alike)

    public bool Contains(int codePoint) => CodePointRanges.Contains(Positive, codePoint);

    /// <summary>Whether every code point in [lo, hi] is in the set (surrogates, never encodable, count as outside).</summary>
    public bool ContainsAll(int lo, int hi)
    {
        var ranges = Positive;
        int i = CodePointRanges.IndexOf(ranges, lo);
        return i >= 0 && hi <= ranges[i].Hi;
    }

    /// <summary>Whether some code point in [lo, hi] is in the set (a partial UTF-8 sequence's possible completions).</summary>
    public bool Intersects(int lo, int hi)
    {
        var ranges = Positive;
        int l = 0, h = ranges.Length - 1;
        while (l <= h) // the first range ending at or after lo
        {
            int m = (l + h) >> 1;
            if (ranges[m].Hi < lo)
                l = m + 1;
            else
                h = m - 1;
        }
        return l < ranges.Length && ranges[l].Lo <= hi;
    }
}

/// <summary>Sorted, disjoint, inclusive code point ranges: set operations for <see cref="CharSet"/>.</summary>
internal static class CodePointRanges
{
    public const int MaxCodePoint = 0x10FFFF;

    /// <summary>The code points of <paramref name="set"/> that UTF-8 can encode (no surrogates), as sorted disjoint ranges.</summary>
    public static (int Lo, int Hi)[] Of(CharSet set)
    {
        var merged = new List<(int Lo, int Hi)>();
        foreach (var (lo, hi) in set.Ranges.Where(r => r.Lo <= r.Hi).OrderBy(r => r.Lo))
        {
            if (merged.Count > 0 && lo <= merged[^1].Hi + 1)
                merged[^1] = (merged[^1].Lo, Math.Max(merged[^1].Hi, hi));
            else
                merged.Add((lo, hi));
        }
        var positive = set.Negated ? Complement(merged) : merged;
        return Minus([.. positive], [(0xD800, 0xDFFF)]);
    }

    private static List<(int Lo, int Hi)> Complement(List<(int Lo, int Hi)> ranges)
    {
        var result = new List<(int Lo, int Hi)>();
        int cursor = 0;
        foreach (var (lo, hi) in ranges)
        {
            if (lo > cursor)
                result.Add((cursor, lo - 1));
            cursor = Math.Max(cursor, hi + 1);
        }
        if (cursor <= MaxCodePoint)
            result.Add((cursor, MaxCodePoint));
        return result;
    }

    /// <summary><paramref name="a"/> without the code points of <paramref name="b"/> (both sorted and disjoint).</summary>
    public static (int Lo, int Hi)[] Minus((int Lo, int Hi)[] a, (int Lo, int Hi)[] b)
    {
        var result = new List<(int Lo, int Hi)>();
        int j = 0;
        foreach (var (lo0, hi) in a)
        {
            int lo = lo0;
            while (j < b.Length && b[j].Hi < lo)
                j++;
            for (int k = j; k < b.Length && b[k].Lo <= hi && lo <= hi; k++)
            {
                if (b[k].Lo > lo)
                    result.Add((lo, b[k].Lo - 1));
                lo = Math.Max(lo, b[k].Hi + 1);
            }
            if (lo <= hi)
                result.Add((lo, hi));
        }
        return [.. result];
    }

    public static (int Lo, int Hi)[] Intersect((int Lo, int Hi)[] a, (int Lo, int Hi)[] b) => Minus(a, Minus(a, b));

    public static long Size((int Lo, int Hi)[] ranges)
    {
        long size = 0;
        foreach (var (lo, hi) in ranges)
            size += hi - lo + 1;
        return size;
    }

    public static bool Contains((int Lo, int Hi)[] ranges, int codePoint) => IndexOf(ranges, codePoint) >= 0;

    /// <summary>The index of the range holding <paramref name="codePoint"/>, or −1.</summary>
    public static int IndexOf((int Lo, int Hi)[] ranges, int codePoint)
    {
        int l = 0, h = ranges.Length - 1;
        while (l <= h)
        {
            int m = (l + h) >> 1;
            if (codePoint < ranges[m].Lo)
                h = m - 1;
            else if (codePoint > ranges[m].Hi)
                l = m + 1;
            else
                return m;
        }
        return -1;
    }

    /// <summary>Range lists compared by their ranges: a key for what is computed once per character class.</summary>
    public sealed class Comparer : IEqualityComparer<(int Lo, int Hi)[]>
    {
        public static readonly Comparer Instance = new();

        public bool Equals((int Lo, int Hi)[]? a, (int Lo, int Hi)[]? b) => a is not null && b is not null && a.AsSpan().SequenceEqual(b);

        public int GetHashCode((int Lo, int Hi)[] ranges)
        {
            var h = new HashCode();
            foreach (var r in ranges)
                h.Add(r);
            return h.ToHashCode();
        }
    }
}

/// <summary>One symbol of an alternative: a character set to match, or a reference to a rule.</summary>
public readonly record struct GrammarElement(CharSet? Chars, int Rule)
{
    public bool IsRule => Chars is null;

    public static GrammarElement Ref(int rule) => new(null, rule);

    public static GrammarElement Of(CharSet chars) => new(chars, -1);
}

/// <summary>A rule: its name (generated rules for groups and repetitions are named <c>parent~N</c>, which no written rule can be) and its alternatives.</summary>
public sealed class GrammarRule(string name)
{
    public string Name { get; } = name;

    public List<GrammarElement[]> Alternatives { get; } = [];
}

/// <summary>
/// A context-free grammar over Unicode code points, as GBNF writes it (llama.cpp's grammar format): rules
/// of alternatives of sequences of character sets and rule references; groups and repetitions are
/// rewritten into rules of their own. Parse one with <see cref="Gbnf.Parse"/>; a grammar is immutable and
/// can be shared by any number of generations.
/// </summary>
public sealed class Grammar
{
    internal Grammar(List<GrammarRule> rules, int root, string source)
    {
        Rules = rules;
        Root = root;
        Source = source;
    }

    public IReadOnlyList<GrammarRule> Rules { get; }

    /// <summary>Index of the rule generation starts from (<c>root</c>).</summary>
    public int Root { get; }

    /// <summary>The GBNF text it was parsed from.</summary>
    public string Source { get; }
}
