using System.Text;

namespace Engine.Tokenizers;

/// <summary>
/// SentencePiece's BPE segmentation (Kudo &amp; Richardson, "SentencePiece: A simple and language
/// independent subword tokenizer", 2018; <c>bpe_model.cc</c>), as llama.cpp runs it for Llama 2,
/// Mistral and Phi-3 vocabularies: start from single characters, repeatedly merge the adjacent pair
/// whose merged piece has the highest score (ties: leftmost pair first), then emit each final symbol
/// as its token; a character that is not in the vocabulary becomes <c>&lt;0xNN&gt;</c> byte tokens
/// (byte fallback) or UNK.
/// </summary>
/// <remarks>
/// Microsoft.ML.Tokenizers 2.0.1 has a SentencePiece BPE too, but it breaks score ties in another
/// order and fails two of llama.cpp's tokenizer vectors (e.g. "!!!!!!"), so the merge loop lives here.
/// Vocabularies that come with ranked merges instead of scores (HF <c>tokenizer.json</c> with
/// <c>byte_fallback</c>) use the pair's rank as its priority, which is the same algorithm.
/// </remarks>
internal sealed class SentencePieceBpe
{
    private readonly Dictionary<string, int> _ids;
    private readonly float[] _scores;
    private readonly Dictionary<(string, string), int>? _mergeRanks;
    private readonly int[] _byteTokens;
    private readonly int _unk;

    /// <param name="pieces">Token texts with whitespace already escaped as U+2581.</param>
    /// <param name="scores">Merge priority of each token (higher merges first).</param>
    /// <param name="mergeRanks">If given, pairs merge by rank (lower first) instead of by <paramref name="scores"/>.</param>
    public SentencePieceBpe(string[] pieces, float[] scores, TokenKind[] kinds, int unkId, Dictionary<(string, string), int>? mergeRanks = null)
    {
        _scores = scores;
        _mergeRanks = mergeRanks;
        _unk = unkId;
        _ids = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        for (int i = 0; i < pieces.Length; i++)
            _ids.TryAdd(pieces[i], i); // first id wins for duplicate texts, as in llama.cpp
        _idLookup = _ids.GetAlternateLookup<ReadOnlySpan<char>>();
        // no piece continues a word across a space: "x▁y" nowhere (runs of ▁ alone are fine)
        WordsAreIndependent = !pieces.Any(HasSpaceAfterText);
        _byteTokens = new int[256];
        for (int b = 0; b < 256; b++)
        {
            _byteTokens[b] = _ids.TryGetValue($"<0x{b:X2}>", out int id) && kinds[id] == TokenKind.Byte ? id : -1;
        }
    }

    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _idLookup;

    /// <summary>Whether no piece has a U+2581 after another character, so words can be merged one by one.</summary>
    public bool WordsAreIndependent { get; }

    private static bool HasSpaceAfterText(string piece)
    {
        for (int i = 1; i < piece.Length; i++)
        {
            if (piece[i] == SentencePieceEncoder.Space && piece[i - 1] != SentencePieceEncoder.Space)
                return true;
        }
        return false;
    }

    private struct Symbol
    {
        public int Prev, Next, Start, Length;
    }

    private readonly record struct Bigram(int Left, int Right, int Size);

    /// <summary>Appends the tokens of <paramref name="text"/> (already normalized: spaces escaped, prefix added).</summary>
    public void Encode(string text, List<int> output)
    {
        if (text.Length == 0)
            return;
        // One symbol per Unicode character (surrogate pairs stay together).
        var symbols = new List<Symbol>(text.Length);
        for (int i = 0; i < text.Length;)
        {
            int len = char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? 2 : 1;
            symbols.Add(new Symbol { Prev = symbols.Count - 1, Next = i + len < text.Length ? symbols.Count + 1 : -1, Start = i, Length = len });
            i += len;
        }

        // Max-priority first; among equal priorities the leftmost pair first.
        var agenda = new PriorityQueue<Bigram, (float Priority, int Left)>(Comparer<(float Priority, int Left)>.Create(
            (a, b) => a.Priority != b.Priority ? b.Priority.CompareTo(a.Priority) : a.Left.CompareTo(b.Left)));

        void TryAdd(int left, int right)
        {
            if (left < 0 || right < 0)
                return;
            var l = symbols[left];
            var r = symbols[right];
            var merged = text.AsSpan(l.Start, l.Length + r.Length);
            if (!_idLookup.TryGetValue(merged, out int id))
                return;
            float priority;
            if (_mergeRanks is null)
                priority = _scores[id];
            else if (_mergeRanks.TryGetValue((text.Substring(l.Start, l.Length), text.Substring(r.Start, r.Length)), out int rank))
                priority = -rank;
            else
                return;
            agenda.Enqueue(new Bigram(left, right, merged.Length), (priority, left));
        }

        for (int i = 1; i < symbols.Count; i++)
            TryAdd(i - 1, i);

        while (agenda.TryDequeue(out var bigram, out _))
        {
            var left = symbols[bigram.Left];
            var right = symbols[bigram.Right];
            // Skip pairs made stale by an earlier merge.
            if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != bigram.Size)
                continue;
            left.Length += right.Length;
            right.Length = 0;
            left.Next = right.Next;
            if (right.Next >= 0)
            {
                var next = symbols[right.Next];
                next.Prev = bigram.Left;
                symbols[right.Next] = next;
            }
            symbols[bigram.Left] = left;
            symbols[bigram.Right] = right;
            TryAdd(left.Prev, bigram.Left);
            TryAdd(bigram.Left, left.Next);
        }

        // Every merged symbol is a vocabulary piece (a pair is queued only if its merge is); what is
        // left unknown is a single character outside the vocabulary: spell it in byte tokens.
        for (int i = 0; i != -1; i = symbols[i].Next)
        {
            var piece = text.AsSpan(symbols[i].Start, symbols[i].Length);
            if (_idLookup.TryGetValue(piece, out int id))
                output.Add(id);
            else
                foreach (byte b in Encoding.UTF8.GetBytes(piece.ToString()))
                    output.Add(_byteTokens[b] >= 0 ? _byteTokens[b] : _unk);
        }
    }
}
