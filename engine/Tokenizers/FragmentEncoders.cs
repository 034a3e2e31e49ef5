using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Engine.Tokenizers;

/// <summary>Encodes one run of plain text (special tokens already split out) into token ids.</summary>
internal interface IFragmentEncoder
{
    /// <param name="afterSpecial">True for the first fragment and for a fragment right after a special token.</param>
    void Encode(string fragment, bool afterSpecial, List<int> output);
}

/// <summary>
/// SentencePiece-style text handling (Llama 2, Mistral, Phi-3): optionally collapse extra whitespace,
/// prepend a space to a fragment that starts the text or follows a special token (the "dummy prefix"),
/// escape spaces as U+2581, then run <see cref="SentencePieceBpe"/>.
/// </summary>
internal sealed class SentencePieceEncoder(SentencePieceBpe bpe, bool addSpacePrefix, bool removeExtraWhitespaces) : IFragmentEncoder
{
    public const char Space = '\u2581';

    public bool AddSpacePrefix => addSpacePrefix;

    public void Encode(string fragment, bool afterSpecial, List<int> output)
    {
        if (removeExtraWhitespaces)
            fragment = CollapseSpaces(fragment);
        var sb = new StringBuilder(fragment.Length + 1);
        if (addSpacePrefix && afterSpecial)
            sb.Append(Space);
        foreach (char c in fragment)
            sb.Append(c == ' ' ? Space : c);
        bpe.Encode(sb.ToString(), output);
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
    /// (GPT-2, Llama 3, Qwen2) goes to Microsoft.ML.Tokenizers' own regex pre-tokenizer; anything else to
    /// <see cref="RegexSplitter"/>, which keeps the gaps between matches as words, as llama.cpp does.
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
        Microsoft.ML.Tokenizers.PreTokenizer pre = regexes is [var single] && single is PreTokenizerPatterns.Gpt2 or PreTokenizerPatterns.Llama3 or PreTokenizerPatterns.Qwen2
            ? new RegexPreTokenizer(new Regex(single, RegexOptions.Compiled | RegexOptions.CultureInvariant), specialTokens: null)
            : new RegexSplitter(regexes);
        _bpe = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = pre,
        });
    }

    private readonly Func<string, string>? _normalizer;

    public void Encode(string fragment, bool afterSpecial, List<int> output) =>
        output.AddRange(_bpe.EncodeToIds(_normalizer is null ? fragment : _normalizer(fragment), considerPreTokenization: true, considerNormalization: true));
}
