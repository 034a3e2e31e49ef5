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
        // Partition refinement: every byte starts in the class of its kind, and each distinct character set
        // of the grammar splits every class into the bytes it holds and those it does not — O(256) per set.
        var cls = new int[Bytes];
        var own = new bool[Bytes]; // a class of its own whatever the sets say
        var dead = new bool[Bytes];
        var range = new (int Lo, int Hi)[Bytes];
        for (int b = 0; b < Bytes; b++)
        {
            if (b < 0x80)
                cls[b] = 0; // a whole ASCII character
            else if (b < 0xC0 || b >= 0xF8)
            {
                cls[b] = 1; // a continuation byte, or no lead byte at all: always dead between characters
                dead[b] = true;
            }
            else
            {
                int more = b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3;
                int lo = (b & (0x3F >> more)) << (6 * more), hi = lo | ((1 << (6 * more)) - 1);
                int min = more switch { 1 => 0x80, 2 => 0x800, _ => 0x10000 };
                range[b] = (lo, hi);
                cls[b] = 1 + more; // leads of one length together
                own[b] = lo < min || hi > 0x10FFFF || (lo <= 0xDFFF && hi >= 0xD800); // overlong forms, surrogates or values past Unicode among its completions
            }
        }
        var seen = new HashSet<(int Lo, int Hi)[]>(CodePointRanges.Comparer.Instance);
        var split = new int[2 * Bytes];
        foreach (var rule in grammar.Rules)
        {
            foreach (var alt in rule.Alternatives)
            {
                foreach (var e in alt)
                {
                    if (e.Chars is not { } chars || !seen.Add(chars.Positive))
                        continue;
                    Array.Fill(split, -1);
                    int next = 0;
                    for (int b = 0; b < Bytes; b++)
                    {
                        bool holds;
                        if (b < 0x80)
                            holds = chars.Contains(b);
                        else if (dead[b] || own[b])
                            holds = false;
                        else if (chars.ContainsAll(range[b].Lo, range[b].Hi))
                            holds = true;
                        else
                        {
                            holds = false;
                            own[b] |= chars.Intersects(range[b].Lo, range[b].Hi); // the value decides: the matcher keeps it
                        }
                        int key = 2 * cls[b] + (holds ? 1 : 0);
                        if (split[key] < 0)
                            split[key] = next++;
                        cls[b] = split[key];
                    }
                }
            }
        }
        // the bytes of their own last, then ids numbered in byte order
        var ids = new Dictionary<int, byte>();
        var map = new byte[Bytes];
        for (int b = 0; b < Bytes; b++)
        {
            int key = own[b] ? -1 - b : cls[b];
            if (!ids.TryGetValue(key, out byte id))
                ids[key] = id = (byte)ids.Count;
            map[b] = id;
        }
        return new ByteClasses(map, ids.Count);
    }
}
