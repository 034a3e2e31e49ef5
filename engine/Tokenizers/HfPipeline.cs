using System.Text.Json;
using System.Text.RegularExpressions;
using Engine.Formats;

namespace Engine.Tokenizers;

/// <summary>
/// The normalizer and pre-tokenizer of an HF <c>tokenizer.json</c> for a byte-level BPE model, read from
/// the file rather than guessed from the family: normalizers NFC/NFD/NFKC/NFKD, Lowercase, Replace,
/// Prepend, Strip and Sequence; pre-tokenizers Split (Isolated), Digits, Punctuation, ByteLevel and
/// Sequence, turned into the regex list <see cref="RegexSplitter"/> runs (each one splits the pieces the
/// ones before it left, as HF's Sequence does). What cannot be expressed that way is refused by name.
/// </summary>
internal static class HfPipeline
{
    /// <summary>GPT-2's word regex, which HF's ByteLevel pre-tokenizer applies when <c>use_regex</c> is on (the default).</summary>
    private const string ByteLevelRegex = PreTokenizerPatterns.Gpt2;

    /// <summary>The text a normalizer makes of a fragment, or null when the file has none.</summary>
    public static Func<string, string>? Normalizer(string path, JsonElement root)
    {
        if (!root.TryGetProperty("normalizer", out var n) || n.ValueKind == JsonValueKind.Null)
            return null;
        return Normalizer(path, n, "normalizer");
    }

    private static Func<string, string> Normalizer(string path, JsonElement n, string field)
    {
        string type = Type(path, n, field);
        switch (type)
        {
            case "NFC": return UnicodeNormalization.Nfc;
            case "NFD": return UnicodeNormalization.Nfd;
            case "NFKC": return UnicodeNormalization.Nfkc;
            case "NFKD": return UnicodeNormalization.Nfkd;
            case "Lowercase": return s => s.ToLowerInvariant();
            case "Prepend":
            {
                string prepend = String(path, n, "prepend", field);
                return s => s.Length == 0 ? s : prepend + s; // HF prepends to non-empty text only
            }
            case "Strip":
            {
                bool left = Bool(n, "strip_left", true), right = Bool(n, "strip_right", true);
                return s => left && right ? s.Trim() : left ? s.TrimStart() : right ? s.TrimEnd() : s;
            }
            case "Replace":
            {
                var regex = Pattern(path, n, field);
                string content = String(path, n, "content", field);
                return s => regex.Replace(s, content.Replace("$", "$$", StringComparison.Ordinal));
            }
            case "Sequence":
            {
                var steps = Array(path, n, "normalizers", field).Select((e, i) => Normalizer(path, e, $"{field}.normalizers[{i}]")).ToArray();
                return s =>
                {
                    foreach (var step in steps)
                        s = step(s);
                    return s;
                };
            }
            default:
                throw new ModelFormatException(path, field + ".type", $"normalizer '{type}' is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Strip, Replace, Sequence are)");
        }
    }

    /// <summary>The pre-tokenizer as regexes for <see cref="RegexSplitter"/> (empty: the fragment is one word); GPT-2's when the file has none.</summary>
    public static List<string> PreTokenizerRegexes(string path, JsonElement root)
    {
        var regexes = new List<string>();
        if (!root.TryGetProperty("pre_tokenizer", out var pre) || pre.ValueKind == JsonValueKind.Null)
            regexes.Add(ByteLevelRegex);
        else
            Add(path, pre, "pre_tokenizer", regexes);
        return regexes;
    }

    private static void Add(string path, JsonElement p, string field, List<string> regexes)
    {
        string type = Type(path, p, field);
        switch (type)
        {
            case "Sequence":
            {
                int i = 0;
                foreach (var e in Array(path, p, "pretokenizers", field))
                    Add(path, e, $"{field}.pretokenizers[{i++}]", regexes);
                return;
            }
            case "Split":
            {
                string behavior = p.TryGetProperty("behavior", out var b) && b.ValueKind == JsonValueKind.String ? b.GetString()! : "Isolated";
                if (behavior != "Isolated" || Bool(p, "invert", false))
                    throw new ModelFormatException(path, field, $"a Split with behavior '{behavior}'{(Bool(p, "invert", false) ? " inverted" : "")} is not supported (Isolated is)");
                regexes.Add(Pattern(path, p, field).ToString());
                return;
            }
            case "Digits":
                regexes.Add(Bool(p, "individual_digits", false) ? @"\p{N}" : @"\p{N}+");
                return;
            case "Punctuation":
            {
                string behavior = p.TryGetProperty("behavior", out var b) && b.ValueKind == JsonValueKind.String ? b.GetString()! : "Isolated";
                if (behavior != "Isolated")
                    throw new ModelFormatException(path, field, $"a Punctuation pre-tokenizer with behavior '{behavior}' is not supported (Isolated is)");
                regexes.Add(@"[\p{P}!-/:-@\[-`{-~]"); // HF's is_punc: ASCII punctuation or a Unicode P* character, each on its own
                return;
            }
            case "ByteLevel":
                if (Bool(p, "add_prefix_space", false))
                    throw new ModelFormatException(path, field + ".add_prefix_space", "a ByteLevel pre-tokenizer that adds a prefix space is not supported");
                if (Bool(p, "use_regex", true))
                    regexes.Add(ByteLevelRegex);
                return;
            default:
                throw new ModelFormatException(path, field + ".type",
                    $"pre-tokenizer '{type}' is not supported for byte-level BPE (Split, Digits, Punctuation, ByteLevel, Sequence are)");
        }
    }

    /// <summary>A <c>pattern</c> object: <c>{"String": …}</c> (taken literally) or <c>{"Regex": …}</c>.</summary>
    private static Regex Pattern(string path, JsonElement e, string field)
    {
        if (!e.TryGetProperty("pattern", out var pattern) || pattern.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, field + ".pattern", "missing or not an object");
        try
        {
            if (pattern.TryGetProperty("String", out var literal) && literal.ValueKind == JsonValueKind.String)
                return new Regex(Regex.Escape(literal.GetString()!), RegexOptions.CultureInvariant);
            if (pattern.TryGetProperty("Regex", out var regex) && regex.ValueKind == JsonValueKind.String)
                return new Regex(regex.GetString()!, RegexOptions.CultureInvariant);
        }
        catch (ArgumentException ex)
        {
            throw new ModelFormatException(path, field + ".pattern", $"the regex does not compile in .NET: {ex.Message}", ex);
        }
        throw new ModelFormatException(path, field + ".pattern", "needs a String or a Regex");
    }

    private static string Type(string path, JsonElement e, string field) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()!
            : throw new ModelFormatException(path, field, "must be an object with a type");

    private static IEnumerable<JsonElement> Array(string path, JsonElement e, string key, string field) =>
        e.TryGetProperty(key, out var a) && a.ValueKind == JsonValueKind.Array ? a.EnumerateArray()
            : throw new ModelFormatException(path, $"{field}.{key}", "missing or not an array");

    private static string String(string path, JsonElement e, string key, string field) =>
        e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()!
            : throw new ModelFormatException(path, $"{field}.{key}", "missing or not a string");

    private static bool Bool(JsonElement e, string key, bool fallback) =>
        e.TryGetProperty(key, out var v) ? v.ValueKind switch { JsonValueKind.True => true, JsonValueKind.False => false, _ => fallback } : fallback;
}
