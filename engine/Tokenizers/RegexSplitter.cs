using System.Text.RegularExpressions;

namespace Engine.Tokenizers;

/// <summary>
/// llama.cpp's <c>unicode_regex_split</c>: the text starts as one piece; each regex in turn splits every
/// piece into its matches and the gaps between them (a regex sees one piece at a time, so anchors and
/// lookarounds stop at the piece's ends). Empty pieces (a zero-length match) are dropped. The words of a
/// byte-level BPE vocabulary whose pre-tokenizer is more than one regex, or one that leaves gaps.
/// </summary>
public sealed class RegexSplitter : Microsoft.ML.Tokenizers.PreTokenizer
{
    private readonly Regex[] _regexes;

    /// <param name="patterns">The regexes in order; none: every text is one word.</param>
    public RegexSplitter(IReadOnlyList<string> patterns)
    {
        _regexes = patterns.Select(p => new Regex(p, RegexOptions.Compiled | RegexOptions.CultureInvariant)).ToArray();
    }

    /// <summary>The pieces of <paramref name="text"/> as (offset, length), in order, covering it.</summary>
    public List<(int Offset, int Length)> Split(string text)
    {
        var pieces = new List<(int Offset, int Length)>();
        if (text.Length > 0)
            pieces.Add((0, text.Length));
        var next = new List<(int Offset, int Length)>();
        foreach (var regex in _regexes)
        {
            next.Clear();
            foreach (var (offset, length) in pieces)
            {
                string piece = text.Substring(offset, length);
                int done = 0;
                for (var m = regex.Match(piece); m.Success; m = m.NextMatch())
                {
                    if (m.Index > done)
                        next.Add((offset + done, m.Index - done));
                    if (m.Length > 0)
                        next.Add((offset + m.Index, m.Length));
                    done = m.Index + m.Length;
                }
                if (done < length)
                    next.Add((offset + done, length - done));
            }
            (pieces, next) = (next, pieces);
        }
        return pieces;
    }

    /// <summary>The pieces as strings (for tests and inspection).</summary>
    public IEnumerable<string> Words(string text) => Split(text).Select(p => text.Substring(p.Offset, p.Length));

    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) => text is null ? [] : Split(text);

    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => Split(text.ToString());
}
