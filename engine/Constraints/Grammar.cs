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

    public bool Contains(int codePoint)
    {
        bool inside = false;
        foreach (var (lo, hi) in _ranges)
        {
            if (codePoint >= lo && codePoint <= hi)
            {
                inside = true;
                break;
            }
        }
        return inside != Negated;
    }

    /// <summary>Whether every code point in [lo, hi] is in the set (conservative: false when it cannot tell cheaply).</summary>
    public bool ContainsAll(int lo, int hi)
    {
        if (Negated)
        {
            foreach (var r in _ranges)
            {
                if (r.Lo <= hi && r.Hi >= lo)
                    return false;
            }
            return true;
        }
        foreach (var r in _ranges)
        {
            if (r.Lo <= lo && r.Hi >= hi)
                return true;
        }
        return false;
    }

    /// <summary>Whether some code point in [lo, hi] is in the set (a partial UTF-8 sequence's possible completions).</summary>
    public bool Intersects(int lo, int hi)
    {
        if (!Negated)
        {
            foreach (var r in _ranges)
            {
                if (r.Lo <= hi && r.Hi >= lo)
                    return true;
            }
            return false;
        }
        // negated: some point of [lo, hi] escapes every range
        int cursor = lo;
        foreach (var r in _ranges.OrderBy(r => r.Lo))
        {
            if (r.Lo > cursor)
                return true;
            cursor = Math.Max(cursor, r.Hi + 1);
            if (cursor > hi)
                return false;
        }
        return cursor <= hi;
    }
}

/// <summary>One symbol of an alternative: a character set to match, or a reference to a rule.</summary>
public readonly record struct GrammarElement(CharSet? Chars, int Rule)
{
    public bool IsRule => Chars is null;

    public static GrammarElement Ref(int rule) => new(null, rule);

    public static GrammarElement Of(CharSet chars) => new(chars, -1);
}

/// <summary>A rule: its name (generated rules for groups and repetitions are named <c>parent-N</c>) and its alternatives.</summary>
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
