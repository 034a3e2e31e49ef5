namespace Engine.Constraints;

/// <summary>
/// The bytes a grammar cannot tell apart at a character's start: two bytes are in one class when, from any
/// state between characters, they lead to the same next state. A matcher's transition row then holds one
/// entry per class instead of one per byte (regex engines' byte classes, as in RE2 and Rust's
/// <c>regex-automata</c>).
/// </summary>
/// <remarks>
/// <para>
/// An ASCII byte is a whole character: bytes that every character set of the grammar holds or leaves
/// alike go the same way. A continuation byte (or F8–FF) cannot begin a character: always dead. A lead byte
/// begins a character whose code points lie in one range (<c>C3</c>: U+00C0–U+00FF); lead bytes of the
/// same length go the same way where every set holds each one's whole range or none of it (then the matcher
/// keeps no value, <see cref="GrammarMatcher"/>'s canonical partial states). A lead byte some set holds
/// only partly, or whose range holds overlong forms, surrogates or values past U+10FFFF (C0, C1, E0, ED,
/// F0, F4–F7), keeps a class of its own.
/// </para>
/// <para>
/// Why: a row per state is memory first touched when the state is made, and a fresh grammar makes several
/// states per token — at 256 entries a row was the largest cost of a cold mask after the walk itself.
/// Within a character (a partial state) the continuation byte's value matters: those rows stay per byte.
/// </para>
/// </remarks>
internal sealed class ByteClasses
{
    /// <summary>Entries of a per-byte row (partial states).</summary>
    public const int Bytes = 256;

    /// <summary>The map of per-byte rows.</summary>
    public static readonly byte[] Identity = Enumerable.Range(0, Bytes).Select(b => (byte)b).ToArray();

    /// <summary>One class per byte: what a matcher without classes does (the tests' reference).</summary>
    public static readonly ByteClasses PerByte = new(Identity, Bytes);

    private ByteClasses(byte[] map, int count)
    {
        Map = map;
        Count = count;
    }

    /// <summary>Byte → its class.</summary>
    public byte[] Map { get; }

    /// <summary>
    /// How many classes: at most 185 (128 ASCII, one dead, 56 lead bytes C0–F7), so fewer than <see cref="Bytes"/>
    /// but in <see cref="PerByte"/> — a row's length tells the two kinds apart.
    /// </summary>
    public int Count { get; }

    public static ByteClasses Of(Grammar grammar)
    {
        // the grammar's distinct character sets
        var sets = new List<CharSet>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var rule in grammar.Rules)
        {
            foreach (var alt in rule.Alternatives)
            {
                foreach (var e in alt)
                {
                    if (e.Chars is { } chars && seen.Add(string.Join(',', chars.Positive.Select(r => $"{r.Lo:X}-{r.Hi:X}"))))
                        sets.Add(chars);
                }
            }
        }
        var signatures = new Dictionary<string, byte>(StringComparer.Ordinal);
        var map = new byte[Bytes];
        var bits = new char[sets.Count + 1];
        for (int b = 0; b < Bytes; b++)
        {
            string signature;
            if (b < 0x80)
            {
                bits[0] = 'a';
                for (int i = 0; i < sets.Count; i++)
                    bits[i + 1] = sets[i].Contains(b) ? '1' : '0';
                signature = new string(bits);
            }
            else if (b < 0xC0 || b >= 0xF8)
                signature = "dead"; // a continuation byte, or no lead byte at all
            else
                signature = LeadSignature(b, sets, bits) ?? $"own {b}";
            if (!signatures.TryGetValue(signature, out byte id))
                signatures[signature] = id = (byte)signatures.Count;
            map[b] = id;
        }
        return new ByteClasses(map, signatures.Count);
    }

    /// <summary>The signature of a lead byte whose whole range each set holds or leaves; null where it needs a class of its own.</summary>
    private static string? LeadSignature(int b, List<CharSet> sets, char[] bits)
    {
        int more = b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3;
        int lo = (b & (0x3F >> more)) << (6 * more), hi = lo | ((1 << (6 * more)) - 1);
        int min = more switch { 1 => 0x80, 2 => 0x800, _ => 0x10000 };
        if (lo < min || hi > 0x10FFFF || (lo <= 0xDFFF && hi >= 0xD800))
            return null; // overlong forms, surrogates or values past Unicode among its completions
        bits[0] = (char)('0' + more);
        for (int i = 0; i < sets.Count; i++)
        {
            if (sets[i].ContainsAll(lo, hi))
                bits[i + 1] = '1';
            else if (sets[i].Intersects(lo, hi))
                return null; // the value decides: the matcher keeps it
            else
                bits[i + 1] = '0';
        }
        return new string(bits);
    }
}
