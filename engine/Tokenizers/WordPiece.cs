using System.Globalization;
using System.Text;

namespace Engine.Tokenizers;

/// <summary>
/// BERT's WordPiece (Wu et al., "Google's Neural Machine Translation System", 2016; Devlin et al., "BERT",
/// 2019) as llama.cpp runs a GGUF <c>bert</c> vocabulary: the text is cut into words — whitespace
/// separates, punctuation, ASCII symbols and CJK ideographs stand alone, control characters vanish —
/// each character lowercased and reduced to the first code point of its canonical decomposition (which
/// strips accents); each word, with a leading U+2581, is covered greedily by the longest vocabulary
/// entries (llama.cpp's converter writes word-initial pieces as "▁word" and "##"-continuations bare).
/// A word that cannot be covered becomes the unknown token.
/// </summary>
internal sealed class WordPieceEncoder : IFragmentEncoder
{
    private readonly Dictionary<string, int> _ids = new(StringComparer.Ordinal);
    private readonly int _maxLength;
    private readonly int _unknown;

    public WordPieceEncoder(string[] tokens, int unknown)
    {
        for (int i = 0; i < tokens.Length; i++)
        {
            _ids.TryAdd(tokens[i], i);
            _maxLength = Math.Max(_maxLength, tokens[i].Length);
        }
        _unknown = unknown;
    }

    public void Encode(string fragment, bool afterSpecial, bool atStart, List<int> output)
    {
        foreach (string word in Words(fragment))
        {
            string w = SentencePieceEncoder.Space + word;
            int start = output.Count;
            for (int i = 0; i < w.Length;)
            {
                int matched = 0;
                for (int j = Math.Min(w.Length, i + _maxLength); j > i; j--)
                {
                    if (_ids.TryGetValue(w[i..j], out int id))
                    {
                        output.Add(id);
                        matched = j - i;
                        break;
                    }
                }
                if (matched == 0)
                {
                    output.RemoveRange(start, output.Count - start); // the whole word is unknown
                    break;
                }
                i += matched;
            }
            if (output.Count == start)
                output.Add(_unknown);
        }
    }

    /// <summary>The words of a text (llama.cpp's <c>llm_tokenizer_wpm_session::preprocess</c>).</summary>
    internal static List<string> Words(string text)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        void Finish()
        {
            if (word.Length > 0)
                words.Add(word.ToString());
            word.Clear();
        }
        for (int i = 0; i < text.Length; i += char.IsSurrogatePair(text, i) ? 2 : 1)
        {
            var rune = Rune.GetRuneAt(text, i);
            int cp = rune.Value;
            if (Rune.IsWhiteSpace(rune))
            {
                Finish();
                continue;
            }
            cp = BaseCharacter(cp);
            var category = Rune.GetUnicodeCategory(new Rune(cp));
            if (cp == 0 || cp == 0xFFFD || category is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
                or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned)
                continue;
            string s = Rune.ToLowerInvariant(new Rune(cp)).ToString();
            bool alone = category is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
                or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation or UnicodeCategory.FinalQuotePunctuation
                or UnicodeCategory.OtherPunctuation
                || (cp < 0x7F && category is UnicodeCategory.MathSymbol or UnicodeCategory.CurrencySymbol or UnicodeCategory.ModifierSymbol or UnicodeCategory.OtherSymbol)
                || IsChineseCharacter(cp);
            if (alone)
            {
                Finish();
                words.Add(s);
            }
            else
                word.Append(s);
        }
        Finish();
        return words;
    }

    /// <summary>The first code point of a character's canonical decomposition (llama.cpp's <c>unicode_cpts_normalize_nfd</c>).</summary>
    private static int BaseCharacter(int cp)
    {
        if (cp < 0xC0)
            return cp;
        string nfd = UnicodeNormalization.Nfd(char.ConvertFromUtf32(cp));
        return char.ConvertToUtf32(nfd, 0);
    }

    /// <summary>The CJK ideograph blocks BERT isolates (as HF and llama.cpp list them).</summary>
    private static bool IsChineseCharacter(int cp) =>
        cp is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B920 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;
}
