using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Engine.Tokenizers;

/// <summary>Encodes one run of plain text (special tokens already split out) into token ids.</summary>
internal interface IFragmentEncoder
{
    /// <param name="afterSpecial">True for the first fragment and for a fragment right after a special token.</param>
    /// <param name="atStart">True for the fragment that starts the text.</param>
    void Encode(string fragment, bool afterSpecial, bool atStart, List<int> output);
}

/// <summary>
/// SentencePiece-style text handling (Llama 2, Mistral, Phi-3): optionally collapse extra whitespace,
/// prepend a space to a fragment that starts the text or follows a special token (the "dummy prefix"),
/// escape spaces as U+2581, then run <see cref="SentencePieceBpe"/>.
/// </summary>
/// <remarks>
/// When no piece of the vocabulary has a U+2581 after another character (SentencePiece's
/// <c>split_by_whitespace</c>, the default: Llama 2, Mistral), no merge can cross the start of a word,
/// so the text is cut before each U+2581 that follows a non-space and each word is merged on its own —
/// through a <see cref="WordCache"/>, which is what makes running text fast. Other vocabularies merge
/// the whole fragment, as llama.cpp does.
/// </remarks>
/// <param name="prefixOnlyAtStart">
/// HF's Metaspace <c>prepend_scheme: "first"</c>: the space goes in front of the text's first fragment
/// only, not after each special token (llama.cpp and SentencePiece prepend it to both).
/// </param>
internal sealed class SentencePieceEncoder(SentencePieceBpe bpe, bool addSpacePrefix, bool removeExtraWhitespaces, bool prefixOnlyAtStart = false)
    : IFragmentEncoder
{
    public const char Space = '\u2581';

    private readonly WordCache? _cache = bpe.WordsAreIndependent ? new WordCache() : null;

    public bool AddSpacePrefix => addSpacePrefix;

    public void Encode(string fragment, bool afterSpecial, bool atStart, List<int> output)
    {
        if (removeExtraWhitespaces)
            fragment = CollapseSpaces(fragment);
        var sb = new StringBuilder(fragment.Length + 1);
        if (addSpacePrefix && afterSpecial && (atStart || !prefixOnlyAtStart))
            sb.Append(Space);
        foreach (char c in fragment)
            sb.Append(c == ' ' ? Space : c);
        string text = sb.ToString();
        if (_cache is null)
        {
            bpe.Encode(text, output);
            return;
        }
        int start = 0;
        for (int i = 1; i <= text.Length; i++)
        {
            if (i == text.Length || (text[i] == Space && text[i - 1] != Space))
            {
                _cache.Append(text.AsSpan(start, i - start), output, bpe, static (b, word) =>
                {
                    var ids = new List<int>(word.Length);
                    b.Encode(word, ids);
                    return [.. ids];
                });
                start = i;
            }
        }
    }

    private static string CollapseSpaces(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char c in s.Trim(' '))
        {
            if (c != ' ' || sb.Length == 0 || sb[^1] != ' ')
                sb.Append(c);
        }
        return sb.ToString();
    }
}

/// <summary>
/// Byte-level BPE (GPT-2, Llama 3, Qwen2): split with the family's regex, map bytes to GPT-2's
/// printable characters, apply ranked merges. Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> does
/// all three and matches llama.cpp's GPT-2 vectors exactly.
/// </summary>
internal sealed class ByteLevelEncoder : IFragmentEncoder
{
    private readonly BpeTokenizer _bpe;

    /// <param name="regexes">
    /// The pre-tokenizer's regexes (<see cref="PreTokenizerRule"/>). One of the patterns that match all text
    /// (GPT-2, Llama 3, Qwen2) splits by enumerating its matches; anything else goes through
    /// <see cref="RegexSplitter"/>, which keeps the gaps between matches as words, as llama.cpp does.
    /// Each word's ids come from a <see cref="WordCache"/>, merged by Microsoft.ML.Tokenizers' BPE on a miss.
    /// </param>
    /// <param name="normalizer">What the text goes through first (an HF normalizer), or null.</param>
    public ByteLevelEncoder(string[] tokens, IEnumerable<string> merges, IReadOnlyList<string> regexes, Func<string, string>? normalizer = null)
    {
        _normalizer = normalizer;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var vocab = new List<KeyValuePair<string, int>>(tokens.Length);
        for (int i = 0; i < tokens.Length; i++)
        {
            if (seen.Add(tokens[i]))
                vocab.Add(new(tokens[i], i));
        }
        if (regexes is [var single] && single is PreTokenizerPatterns.Gpt2 or PreTokenizerPatterns.Llama3 or PreTokenizerPatterns.Qwen2)
            _words = new Regex(single, RegexOptions.Compiled | RegexOptions.CultureInvariant);
        else
            _splitter = new RegexSplitter(regexes);
        _bpe = BpeTokenizer.Create(new BpeOptions(vocab) { Merges = merges, ByteLevel = true });
    }

    private readonly Func<string, string>? _normalizer;
    private readonly Regex? _words;
    private readonly RegexSplitter? _splitter;
    private readonly WordCache _cache = new();

    public void Encode(string fragment, bool afterSpecial, bool atStart, List<int> output)
    {
        string text = _normalizer is null ? fragment : _normalizer(fragment);
        if (_words is not null)
        {
            foreach (var m in _words.EnumerateMatches(text))
                Word(text.AsSpan(m.Index, m.Length), output);
            return;
        }
        foreach (var (offset, length) in _splitter!.Split(text))
            Word(text.AsSpan(offset, length), output);
    }

    private void Word(ReadOnlySpan<char> word, List<int> output) =>
        _cache.Append(word, output, _bpe, static (bpe, w) => [.. bpe.EncodeToIds(w, considerPreTokenization: false, considerNormalization: false)]);
}
