using System.Text;

namespace Engine.Tokenizers;

/// <summary>
/// Text ↔ token ids for one model. Encoding: special tokens are split out of the text first (added
/// tokens always; control tokens such as <c>&lt;s&gt;</c> only when asked to parse special text), the
/// plain runs go through the model family's encoder (SentencePiece BPE or byte-level BPE), and BOS/EOS
/// are added as the model's metadata says. Decoding maps each token to its exact bytes, so a stream of
/// tokens can be turned into text without ever splitting a UTF-8 character (<see cref="StreamingDetokenizer"/>).
/// Build one with <see cref="TokenizerLoader"/>.
/// </summary>
public sealed class TextTokenizer
{
    private readonly string[] _pieces;
    private readonly TokenKind[] _kinds;
    private readonly byte[][] _bytes;
    private readonly IFragmentEncoder _encoder;
    private readonly (string Text, int Id, TokenKind Kind)[] _specials;
    private readonly HashSet<int> _endOfGeneration;
    private readonly HashSet<char> _specialStarts, _userDefinedStarts; // first characters: most text positions start no special token

    internal TextTokenizer(TokenizerModel model, string[] pieces, TokenKind[] kinds, byte[][] bytes, IFragmentEncoder encoder,
        int? bos, int? eos, bool addBos, bool addEos, IEnumerable<int> extraEndTokens)
    {
        Model = model;
        _pieces = pieces;
        _kinds = kinds;
        _bytes = bytes;
        _encoder = encoder;
        BosId = bos;
        EosId = eos;
        AddBos = addBos && bos is not null;
        AddEos = addEos && eos is not null;
        _specials = Enumerable.Range(0, pieces.Length)
            .Where(i => kinds[i] is TokenKind.Control or TokenKind.UserDefined or TokenKind.Unknown && pieces[i].Length > 0)
            .Select(i => (pieces[i], i, kinds[i]))
            .OrderByDescending(s => s.Item1.Length)
            .ToArray();
        _specialStarts = [.. _specials.Select(s => s.Text[0])];
        _userDefinedStarts = [.. _specials.Where(s => s.Kind == TokenKind.UserDefined).Select(s => s.Text[0])];
        _endOfGeneration = [.. extraEndTokens.Where(IsValid)];
        if (eos is int e)
            _endOfGeneration.Add(e);
    }

    public TokenizerModel Model { get; }

    public int VocabSize => _pieces.Length;

    public int? BosId { get; }

    public int? EosId { get; }

    /// <summary>Whether <see cref="Encode"/> with <c>addSpecial</c> prepends BOS.</summary>
    public bool AddBos { get; }

    /// <summary>Whether <see cref="Encode"/> with <c>addSpecial</c> appends EOS.</summary>
    public bool AddEos { get; }

    /// <summary>The vocabulary text of a token (SentencePiece spaces shown as U+2581, byte-level as GPT-2 characters).</summary>
    public string Piece(int id) => _pieces[CheckId(id)];

    public TokenKind Kind(int id) => _kinds[CheckId(id)];

    public bool IsValid(int id) => (uint)id < (uint)_pieces.Length;

    /// <summary>EOS and any other token that ends a generation (end-of-turn, end-of-message).</summary>
    public bool IsEndOfGeneration(int id) => _endOfGeneration.Contains(id);

    /// <summary>Every token that ends a generation (EOS, EOT, EOM), in id order.</summary>
    public IReadOnlyList<int> EndOfGenerationTokens => _endTokens ??= [.. _endOfGeneration.Order()];

    private int[]? _endTokens;

    /// <summary>The exact bytes a token renders as (empty for control tokens).</summary>
    public ReadOnlySpan<byte> TokenBytes(int id) => _bytes[CheckId(id)];

    /// <summary>
    /// Tokenizes <paramref name="text"/>. <paramref name="addSpecial"/> adds BOS/EOS as the model says;
    /// <paramref name="parseSpecial"/> lets control-token text such as "&lt;s&gt;" in the input become
    /// that token (otherwise it is tokenized as plain text). Added (user-defined) tokens always match.
    /// </summary>
    public List<int> Encode(string text, bool addSpecial = true, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 2);
        if (addSpecial && AddBos)
            output.Add(BosId!.Value);
        bool afterSpecial = true;
        int start = 0;
        for (int i = 0; i < text.Length;)
        {
            int special = MatchSpecial(text, i, parseSpecial);
            if (special < 0)
            {
                i++;
                continue;
            }
            if (i > start)
                _encoder.Encode(text[start..i], afterSpecial, start == 0, output);
            output.Add(_specials[special].Id);
            afterSpecial = true;
            i += _specials[special].Text.Length;
            start = i;
            continue;
        }
        if (text.Length > start)
            _encoder.Encode(text[start..], afterSpecial, start == 0, output);
        if (addSpecial && AddEos)
            output.Add(EosId!.Value);
        return output;
    }

    /// <summary>The longest special token that starts at <paramref name="at"/>, or -1.</summary>
    private int MatchSpecial(string text, int at, bool parseSpecial)
    {
        if (!(parseSpecial ? _specialStarts : _userDefinedStarts).Contains(text[at]))
            return -1;
        for (int s = 0; s < _specials.Length; s++)
        {
            var (piece, _, kind) = _specials[s];
            if (!parseSpecial && kind != TokenKind.UserDefined)
                continue;
            if (string.CompareOrdinal(text, at, piece, 0, piece.Length) == 0 && at + piece.Length <= text.Length)
                return s;
        }
        return -1;
    }

    /// <summary>Decodes a whole sequence to text (invalid UTF-8 becomes U+FFFD).</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var detok = CreateStreamingDetokenizer();
        var sb = new StringBuilder();
        foreach (int id in ids)
            sb.Append(detok.Push(id));
        sb.Append(detok.Flush());
        return sb.ToString();
    }

    /// <summary>A decoder that turns tokens into text one at a time, holding back incomplete UTF-8 characters.</summary>
    public StreamingDetokenizer CreateStreamingDetokenizer() => new(this);

    /// <summary>SentencePiece vocabularies render a leading space on words; after BOS it is dropped (as SentencePiece's decoder does).</summary>
    internal bool StripSpaceAfterBos => _encoder is SentencePieceEncoder { AddSpacePrefix: true };

    private int CheckId(int id) => IsValid(id) ? id : throw new ArgumentOutOfRangeException(nameof(id), $"token id {id} is outside the vocabulary (0..{_pieces.Length - 1})");
}

/// <summary>The tokenizer algorithm family.</summary>
public enum TokenizerModel
{
    /// <summary>SentencePiece BPE with byte fallback (GGUF "llama"; Llama 2, Mistral, Phi-3).</summary>
    SentencePiece,
    /// <summary>Byte-level BPE with ranked merges (GGUF "gpt2"; GPT-2, Llama 3, Qwen2).</summary>
    ByteLevelBpe,
    /// <summary>WordPiece (GGUF "bert"; BERT and its embedding models).</summary>
    WordPiece,
    /// <summary>SentencePiece Unigram (GGUF "t5"; T5 and its relatives).</summary>
    Unigram,
}
