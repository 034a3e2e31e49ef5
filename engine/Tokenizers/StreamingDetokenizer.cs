using System.Text;

namespace Engine.Tokenizers;

/// <summary>
/// Turns generated tokens into text as they arrive. A token may end in the middle of a UTF-8
/// character (byte-fallback tokens, byte-level BPE pieces of an emoji); the bytes are held in a
/// <see cref="Decoder"/> until the character is complete, so the text never contains a split character.
/// </summary>
public sealed class StreamingDetokenizer
{
    private readonly TextTokenizer _tokenizer;
    private readonly Decoder _utf8 = new UTF8Encoding(false, throwOnInvalidBytes: false).GetDecoder();
    private char[] _chars = new char[64];
    private bool _afterBos;

    internal StreamingDetokenizer(TextTokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Adds one token; returns the text that is now complete (often empty for partial characters).</summary>
    public string Push(int token)
    {
        var bytes = _tokenizer.TokenBytes(token);
        if (_afterBos && _tokenizer.StripSpaceAfterBos && bytes.Length > 0 && bytes[0] == (byte)' ')
            bytes = bytes[1..];
        if (bytes.Length > 0 || token == _tokenizer.BosId)
            _afterBos = token == _tokenizer.BosId;
        return Convert(bytes, flush: false);
    }

    /// <summary>Ends the stream: any incomplete character left is emitted as U+FFFD.</summary>
    public string Flush() => Convert([], flush: true);

    private string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        int need = _utf8.GetCharCount(bytes, flush: false) + 4;
        if (_chars.Length < need)
            _chars = new char[Math.Max(need, _chars.Length * 2)];
        int n = _utf8.GetChars(bytes, _chars, flush);
        return n == 0 ? string.Empty : new string(_chars, 0, n);
    }
}
