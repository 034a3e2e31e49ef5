using Engine.Formats.Gguf;
using Engine.Tokenizers;

namespace Engine.Tests;

/// <summary>
/// The two non-BPE tokenizer families llama.cpp knows, on vocabularies written here (no BERT or T5
/// vocabulary file is served on this machine), with the expected ids worked out from llama.cpp's rules:
/// WordPiece (GGUF <c>bert</c>) and Unigram (GGUF <c>t5</c>, with a precompiled charsmap).
/// </summary>
public class WordPieceUnigramTests
{
    private static TextTokenizer Load(TempDir dir, Action<GgufWriter> write)
    {
        string path = dir.File("vocab.gguf");
        var w = new GgufWriter();
        w.Add("general.architecture", "bert");
        write(w);
        w.Write(path);
        using var file = GgufFile.Open(path);
        return TokenizerLoader.FromGguf(file.Metadata);
    }

    // ---- WordPiece ----

    private static readonly string[] BertVocab =
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "▁hello", "▁world", "▁un", "aff", "able", "▁!", "▁,", "▁中", "▁国", "▁cafe", "▁$", "▁5", "▁unaff"];

    private static TextTokenizer Bert(TempDir dir) => Load(dir, w =>
    {
        w.Add("tokenizer.ggml.model", "bert");
        w.Add("tokenizer.ggml.tokens", GgufValue.FromArray(BertVocab));
        w.Add("tokenizer.ggml.token_type", GgufValue.FromArray(BertVocab.Select(t => t.StartsWith('[') ? 3 : 1).ToArray()));
        w.Add("tokenizer.ggml.unknown_token_id", 1u);
        w.Add("tokenizer.ggml.bos_token_id", 2u);
        w.Add("tokenizer.ggml.seperator_token_id", 3u);
    });

    private static int Id(string piece) => Array.IndexOf(BertVocab, piece);

    [Test]
    public void Wordpiece_splits_words_and_covers_them_greedily()
    {
        using var dir = new TempDir();
        var t = Bert(dir);
        Assert.That(t.Model, Is.EqualTo(TokenizerModel.WordPiece));
        // lowercased; punctuation stands alone; [CLS] … [SEP] around
        Assert.That(t.Encode("Hello, World!"), Is.EqualTo(new[] { 2, Id("▁hello"), Id("▁,"), Id("▁world"), Id("▁!"), 3 }));
        // the longest piece first: "▁unaff" then "able" (not "▁un" "aff" "able")
        Assert.That(t.Encode("unaffable", addSpecial: false), Is.EqualTo(new[] { Id("▁unaff"), Id("able") }));
        // accents stripped to the base letter, CJK ideographs one by one, ASCII symbols alone
        Assert.That(t.Encode("Café 中国 $5", addSpecial: false), Is.EqualTo(new[] { Id("▁cafe"), Id("▁中"), Id("▁国"), Id("▁$"), Id("▁5") }));
        // a word that cannot be covered is one unknown token, however far the cover got
        Assert.That(t.Encode("unaffx hello", addSpecial: false), Is.EqualTo(new[] { 1, Id("▁hello") }));
        Assert.That(t.Decode(t.Encode("hello world", addSpecial: false)), Is.EqualTo(" hello world"));
    }

    [Test]
    public void Wordpiece_words_follow_bert_basic_tokenization()
    {
        Assert.That(WordPieceEncoder.Words("Hello,world  $5 ½ a\u200Bb\tÉcole"), Is.EqualTo(new[] { "hello", ",", "world", "$", "5", "½", "ab", "ecole" }));
    }

    // ---- Unigram ----

    private static readonly (string Piece, float Score, int Kind)[] T5Vocab =
    [
        ("<pad>", 0, 3), ("</s>", 0, 3), ("<unk>", 0, 2), ("▁", -2, 1), ("▁hello", -1, 1), ("▁he", -3, 1), ("llo", -3, 1), ("h", -5, 1), ("e", -5, 1),
        ("l", -5, 1), ("o", -5, 1), ("▁world", -2, 1), ("▁w", -4, 1), ("orld", -4, 1), ("▁a", -3, 1), ("b", -3, 1), ("a", -3, 1),
    ];

    private static TextTokenizer T5(TempDir dir, byte[]? charsMap = null, bool removeExtraWhitespaces = false) => Load(dir, w =>
    {
        w.Add("tokenizer.ggml.model", "t5");
        w.Add("tokenizer.ggml.tokens", GgufValue.FromArray(T5Vocab.Select(v => v.Piece).ToArray()));
        w.Add("tokenizer.ggml.scores", GgufValue.FromArray(T5Vocab.Select(v => v.Score).ToArray()));
        w.Add("tokenizer.ggml.token_type", GgufValue.FromArray(T5Vocab.Select(v => v.Kind).ToArray()));
        w.Add("tokenizer.ggml.unknown_token_id", 2u);
        w.Add("tokenizer.ggml.eos_token_id", 1u);
        w.Add("tokenizer.ggml.remove_extra_whitespaces", removeExtraWhitespaces);
        if (charsMap is not null)
            w.Add("tokenizer.ggml.precompiled_charsmap", GgufValue.FromArray(charsMap));
    });

    private static int T5Id(string piece) => Array.FindIndex(T5Vocab, v => v.Piece == piece);

    [Test]
    public void Unigram_takes_the_best_scoring_path()
    {
        using var dir = new TempDir();
        var t = T5(dir);
        Assert.That(t.Model, Is.EqualTo(TokenizerModel.Unigram));
        // "▁hello▁world": -1 + -2 beats every split; EOS appended by default
        Assert.That(t.Encode("hello world"), Is.EqualTo(new[] { T5Id("▁hello"), T5Id("▁world"), 1 }));
        // x has no piece: the unknown token at the lowest score less 10; "▁he" "l" "l" is the best cover of the rest
        Assert.That(t.Encode("hellx", addSpecial: false), Is.EqualTo(new[] { T5Id("▁he"), T5Id("l"), T5Id("l"), 2 }));
        // a run of unknown characters is one unknown token
        Assert.That(t.Encode("xyz", addSpecial: false), Is.EqualTo(new[] { T5Id("▁"), 2 }));
        // every space escaped unless runs are merged
        Assert.That(t.Encode("a  b", addSpecial: false), Is.EqualTo(new[] { T5Id("▁a"), T5Id("▁"), T5Id("▁"), T5Id("b") }));
        using var dir2 = new TempDir();
        Assert.That(T5(dir2, removeExtraWhitespaces: true).Encode("a  b", addSpecial: false), Is.EqualTo(new[] { T5Id("▁a"), T5Id("▁"), T5Id("b") }));
    }

    /// <summary>
    /// A precompiled charsmap built by hand: root BASE 1; byte 'A' leads to unit 1 ^ 0x41 = 64 (LCHECK 'A',
    /// LEAF, BASE 1), whose value unit 64 ^ 1 = 65 points at replacement 0, "a". So "A" normalizes to "a".
    /// </summary>
    private static byte[] UpperAToLowerCharsMap()
    {
        var units = new uint[66];
        units[0] = 1u << 10;
        units[64] = 0x41u | 1u << 8 | 1u << 10;
        units[65] = 1u << 31;
        var blob = new List<byte>(BitConverter.GetBytes((uint)(units.Length * 4)));
        foreach (uint u in units)
            blob.AddRange(BitConverter.GetBytes(u));
        blob.AddRange("a\0"u8.ToArray());
        return [.. blob];
    }

    [Test]
    public void Unigram_normalizes_through_the_precompiled_charsmap()
    {
        using var dir = new TempDir();
        var t = T5(dir, UpperAToLowerCharsMap());
        Assert.That(t.Encode("A b", addSpecial: false), Is.EqualTo(new[] { T5Id("▁a"), T5Id("▁"), T5Id("b") }));
        using var dir2 = new TempDir();
        Assert.That(T5(dir2).Encode("A", addSpecial: false), Is.EqualTo(new[] { T5Id("▁"), 2 }), "without the map, A is unknown");
    }

    [Test]
    public void A_bad_charsmap_is_refused_by_name()
    {
        using var dir = new TempDir();
        var blob = UpperAToLowerCharsMap();
        BitConverter.GetBytes(1_000_000u).CopyTo(blob, 0);
        var e = Assert.Throws<Formats.ModelFormatException>(() => T5(dir, blob))!;
        Assert.That(e.Message, Does.Contain("tokenizer.ggml.precompiled_charsmap").And.Contain("does not fit"));
    }
}
