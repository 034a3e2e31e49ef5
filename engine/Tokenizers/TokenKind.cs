namespace Engine.Tokenizers;

/// <summary>
/// What a vocabulary entry is, with the numbers GGUF's <c>tokenizer.ggml.token_type</c> and
/// SentencePiece's <c>ModelProto.SentencePiece.Type</c> both use.
/// </summary>
public enum TokenKind
{
    Normal = 1,
    Unknown = 2,
    /// <summary>BOS, EOS and other markers: never produced from plain text, rendered as nothing.</summary>
    Control = 3,
    /// <summary>Added tokens matched verbatim in the text before BPE runs.</summary>
    UserDefined = 4,
    Unused = 5,
    /// <summary>SentencePiece byte-fallback tokens <c>&lt;0x00&gt;</c>..<c>&lt;0xFF&gt;</c>.</summary>
    Byte = 6,
}
