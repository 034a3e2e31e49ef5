using Google.Protobuf;

namespace Engine.Tokenizers;

/// <summary>
/// The parts of SentencePiece's <c>ModelProto</c> (sentencepiece_model.proto) that a BPE vocabulary
/// needs, read from an HF folder's <c>tokenizer.model</c>. (A GGUF file carries the same content as
/// <c>tokenizer.ggml.tokens/scores/token_type</c>.)
/// </summary>
internal sealed class SentencePieceModel
{
    // ModelProto fields
    private const int PiecesField = 1, TrainerSpecField = 2, NormalizerSpecField = 3;
    // SentencePiece fields
    private const int PieceField = 1, ScoreField = 2, TypeField = 3;
    // TrainerSpec fields
    private const int ModelTypeField = 3, ByteFallbackField = 35, UnkIdField = 40, BosIdField = 41, EosIdField = 42, PadIdField = 43;
    private const int TreatWhitespaceAsSuffixField = 24;
    // NormalizerSpec fields
    private const int NormalizerNameField = 1, AddDummyPrefixField = 3, RemoveExtraWhitespacesField = 4, EscapeWhitespacesField = 5;
    private const int BpeModelType = 2;

    public required string[] Pieces { get; init; }
    public required float[] Scores { get; init; }
    public required TokenKind[] Kinds { get; init; }
    public int ModelType { get; init; } = BpeModelType;
    public bool ByteFallback { get; init; }
    public int UnkId { get; init; }
    public int BosId { get; init; } = 1;
    public int EosId { get; init; } = 2;
    public int PadId { get; init; } = -1;
    public bool AddDummyPrefix { get; init; } = true;
    public bool RemoveExtraWhitespaces { get; init; }
    public bool EscapeWhitespaces { get; init; } = true;
    public bool TreatWhitespaceAsSuffix { get; init; }

    public bool IsBpe => ModelType == BpeModelType;

    /// <summary>Parses a <c>tokenizer.model</c>; unknown fields are skipped, malformed input throws <see cref="InvalidProtocolBufferException"/>.</summary>
    public static SentencePieceModel Parse(byte[] bytes)
    {
        var pieces = new List<string>();
        var scores = new List<float>();
        var kinds = new List<TokenKind>();
        int modelType = 1, unk = 0, bos = 1, eos = 2, pad = -1;
        bool byteFallback = false, addDummyPrefix = true, removeExtra = true, escape = true, suffix = false;
        var input = new CodedInputStream(bytes);
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case PiecesField:
                {
                    var p = new CodedInputStream(input.ReadBytes().ToByteArray());
                    string piece = "";
                    float score = 0;
                    var kind = TokenKind.Normal;
                    uint ptag;
                    while ((ptag = p.ReadTag()) != 0)
                    {
                        switch (WireFormat.GetTagFieldNumber(ptag))
                        {
                            case PieceField: piece = p.ReadString(); break;
                            case ScoreField: score = p.ReadFloat(); break;
                            case TypeField: kind = (TokenKind)p.ReadInt32(); break;
                            default: p.SkipLastField(); break;
                        }
                    }
                    pieces.Add(piece);
                    scores.Add(score);
                    kinds.Add(kind);
                    break;
                }
                case TrainerSpecField:
                {
                    var t = new CodedInputStream(input.ReadBytes().ToByteArray());
                    uint ttag;
                    while ((ttag = t.ReadTag()) != 0)
                    {
                        switch (WireFormat.GetTagFieldNumber(ttag))
                        {
                            case ModelTypeField: modelType = t.ReadInt32(); break;
                            case ByteFallbackField: byteFallback = t.ReadBool(); break;
                            case TreatWhitespaceAsSuffixField: suffix = t.ReadBool(); break;
                            case UnkIdField: unk = t.ReadInt32(); break;
                            case BosIdField: bos = t.ReadInt32(); break;
                            case EosIdField: eos = t.ReadInt32(); break;
                            case PadIdField: pad = t.ReadInt32(); break;
                            default: t.SkipLastField(); break;
                        }
                    }
                    break;
                }
                case NormalizerSpecField:
                {
                    var n = new CodedInputStream(input.ReadBytes().ToByteArray());
                    uint ntag;
                    while ((ntag = n.ReadTag()) != 0)
                    {
                        switch (WireFormat.GetTagFieldNumber(ntag))
                        {
                            case AddDummyPrefixField: addDummyPrefix = n.ReadBool(); break;
                            case RemoveExtraWhitespacesField: removeExtra = n.ReadBool(); break;
                            case EscapeWhitespacesField: escape = n.ReadBool(); break;
                            default: n.SkipLastField(); break;
                        }
                    }
                    break;
                }
                default:
                    input.SkipLastField();
                    break;
            }
        }
        return new SentencePieceModel
        {
            Pieces = [.. pieces],
            Scores = [.. scores],
            Kinds = [.. kinds],
            ModelType = modelType,
            ByteFallback = byteFallback,
            UnkId = unk,
            BosId = bos,
            EosId = eos,
            PadId = pad,
            AddDummyPrefix = addDummyPrefix,
            RemoveExtraWhitespaces = removeExtra,
            EscapeWhitespaces = escape,
            TreatWhitespaceAsSuffix = suffix,
        };
    }
}
