using System.Text;
using System.Text.Json;
using Engine.Api;
using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Tokenizers;

namespace Engine.Tests;

public class TokenizerTests
{
    private static TextTokenizer Spm()
    {
        using var gguf = GgufFile.Open(SharedData.Require("vocab/ggml-vocab-llama-spm.gguf"));
        return TokenizerLoader.FromGguf(gguf.Metadata);
    }

    [Test]
    public void Special_token_text_is_a_token_only_when_parsing_special()
    {
        var t = Spm();
        Assert.That(t.Encode("<s>Hi", addSpecial: false, parseSpecial: true)[0], Is.EqualTo(1));
        var plain = t.Encode("<s>Hi", addSpecial: false, parseSpecial: false);
        Assert.That(plain, Does.Not.Contain(1), "control-token text stays text when not parsing special tokens");
        Assert.That(t.Decode(plain), Is.EqualTo(" <s>Hi"));
    }

    [Test]
    public void Streaming_decode_never_splits_a_utf8_character()
    {
        var t = Spm();
        // The llama emoji is not in the vocabulary: it becomes four byte-fallback tokens.
        var ids = t.Encode("a 🦙 b", addSpecial: false);
        var detok = t.CreateStreamingDetokenizer();
        var pieces = ids.Select(detok.Push).ToList();
        pieces.Add(detok.Flush());
        Assert.That(pieces, Has.None.Contains("\uFFFD"), "a partial character was emitted");
        Assert.That(pieces.Any(p => p.Length == 0), Is.True, "byte tokens of an unfinished character must be held back");
        Assert.That(string.Concat(pieces), Is.EqualTo(" a 🦙 b"));
    }

    [Test]
    public void First_word_after_bos_loses_its_sentencepiece_space_when_streaming()
    {
        var t = Spm();
        var detok = t.CreateStreamingDetokenizer();
        var ids = t.Encode("Hello world");
        Assert.That(string.Concat(ids.Select(detok.Push)), Is.EqualTo("Hello world"));
    }

    [Test]
    public void Stories_gguf_and_tokenizer_model_agree()
    {
        var fromGguf = LanguageModel.LoadTokenizer(SharedData.StoriesGguf);
        var fromHf = LanguageModel.LoadTokenizer(SharedData.StoriesHf);
        foreach (string text in new[] { "Once upon a time, there was a little dog", "Lily's mom said, \"Lily, let's go!\"\n", "tabs\tand ünïcödé ✓" })
            Assert.That(fromHf.Encode(text), Is.EqualTo(fromGguf.Encode(text)), text);
        Assert.That(fromHf.VocabSize, Is.EqualTo(512));
        // This tokenizer.model keeps SentencePiece's default remove_extra_whitespaces=true, which
        // SentencePiece (and HF's slow tokenizer) honour; GGUF has no such flag and llama.cpp never collapses.
        Assert.That(fromHf.Encode("  spaces  and "), Is.EqualTo(fromGguf.Encode("spaces and")));
    }

    [Test]
    public void Byte_level_tokenizer_json_with_added_tokens()
    {
        using var dir = new TempDir();
        // GPT-2 characters for "a", "b", "Ġ" (space) and one merge "a b" -> "ab".
        var vocab = new Dictionary<string, int> { ["a"] = 0, ["b"] = 1, ["Ġ"] = 2, ["ab"] = 3, ["Ġa"] = 4 };
        var json = new Dictionary<string, object>
        {
            ["model"] = new Dictionary<string, object> { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new[] { "a b", "Ġ a" } },
            ["pre_tokenizer"] = new Dictionary<string, object> { ["type"] = "ByteLevel" },
            ["added_tokens"] = new[]
            {
                new Dictionary<string, object> { ["id"] = 5, ["content"] = "<|end|>", ["special"] = true },
                new Dictionary<string, object> { ["id"] = 6, ["content"] = "<tool>", ["special"] = false },
            },
        };
        File.WriteAllText(dir.File("tokenizer.json"), JsonSerializer.Serialize(json));
        File.WriteAllText(dir.File("config.json"), """{"eos_token_id": [5, 3]}""");
        var t = TokenizerLoader.FromHfFolder(dir.Path);
        Assert.Multiple(() =>
        {
            Assert.That(t.Model, Is.EqualTo(TokenizerModel.ByteLevelBpe));
            Assert.That(t.Encode("ab ab", addSpecial: false), Is.EqualTo(new[] { 3, 2, 3 }).Or.EqualTo(new[] { 3, 4, 1 }));
            Assert.That(t.Encode("ab<|end|>", addSpecial: false, parseSpecial: true), Is.EqualTo(new[] { 3, 5 }));
            Assert.That(t.Encode("a<tool>b", addSpecial: false), Is.EqualTo(new[] { 0, 6, 1 }), "added (non-special) tokens always match");
            Assert.That(t.EosId, Is.EqualTo(5));
            Assert.That(t.IsEndOfGeneration(3), Is.True, "every id of an eos_token_id list ends generation");
            Assert.That(t.Decode([3, 4, 5]), Is.EqualTo("ab a"), "special tokens render as nothing");
        });
    }

    [Test]
    public void Byte_fallback_tokenizer_json_is_sentencepiece_style()
    {
        using var dir = new TempDir();
        var vocab = new Dictionary<string, int> { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2, ["▁"] = 3, ["h"] = 4, ["i"] = 5, ["▁h"] = 6, ["▁hi"] = 7 };
        for (int b = 0; b < 256; b++)
            vocab[$"<0x{b:X2}>"] = 8 + b;
        var json = new Dictionary<string, object>
        {
            ["normalizer"] = new Dictionary<string, object> { ["type"] = "Sequence", ["normalizers"] = new object[] { new Dictionary<string, object> { ["type"] = "Prepend", ["prepend"] = "▁" } } },
            ["model"] = new Dictionary<string, object> { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new[] { "▁ h", "▁h i" }, ["byte_fallback"] = true, ["unk_token"] = "<unk>" },
        };
        File.WriteAllText(dir.File("tokenizer.json"), JsonSerializer.Serialize(json));
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}""");
        var t = TokenizerLoader.FromHfFolder(dir.Path);
        Assert.Multiple(() =>
        {
            Assert.That(t.Model, Is.EqualTo(TokenizerModel.SentencePiece));
            Assert.That(t.Encode("hi"), Is.EqualTo(new[] { 1, 7 }));
            Assert.That(t.Encode("hé", addSpecial: false), Is.EqualTo(new[] { 6, 8 + 0xC3, 8 + 0xA9 }), "é is not in the vocabulary: UTF-8 byte tokens");
            Assert.That(t.Decode([1, 6, 8 + 0xC3, 8 + 0xA9]), Is.EqualTo("hé"));
        });
    }

    [Test]
    public void Bad_tokenizer_metadata_is_a_clear_error()
    {
        using var dir = new TempDir();
        void Write(Action<GgufWriter> edit)
        {
            var w = new GgufWriter();
            w.Add("general.architecture", "llama");
            w.Add("tokenizer.ggml.model", "llama");
            w.Add("tokenizer.ggml.tokens", GgufValue.FromArray(new[] { "<unk>", "<s>", "</s>", "▁a" }));
            w.Add("tokenizer.ggml.scores", GgufValue.FromArray(new float[] { 0, 0, 0, -1 }));
            w.Add("tokenizer.ggml.token_type", GgufValue.FromArray(new[] { 2, 3, 3, 1 }));
            edit(w);
            w.Write(dir.File("v.gguf"));
        }
        string Error(Action<GgufWriter> edit)
        {
            Write(edit);
            return Assert.Throws<ModelFormatException>(() => LanguageModel.LoadTokenizer(dir.File("v.gguf")))!.Message;
        }
        Assert.Multiple(() =>
        {
            Assert.That(Error(w => w.Add("tokenizer.ggml.bos_token_id", 99u)), Does.Contain("tokenizer.ggml.bos_token_id").And.Contain("99"));
            Assert.That(Error(w => w.Add("tokenizer.ggml.scores", GgufValue.FromArray(new float[] { 0 }))), Does.Contain("tokenizer.ggml.scores").And.Contain("1 entries"));
            Assert.That(Error(w => w.Add("tokenizer.ggml.model", "rwkv")), Does.Contain("'rwkv' is not supported").And.Contain("bert, t5"));
            Assert.That(Error(w => w.Add("tokenizer.ggml.model", "t5")), Does.Contain("tokenizer.ggml.unknown_token_id"), "a Unigram vocabulary without its unknown token");
            Assert.That(Error(w => w.Add("tokenizer.ggml.token_type", GgufValue.FromArray(new[] { 2, 3, 3, 9 }))), Does.Contain("type 9"));
            Assert.That(Error(w => w.Add("tokenizer.ggml.tokens", GgufValue.From("x"))), Does.Contain("tokenizer.ggml.tokens").And.Contain("expected an array of strings"));
            Assert.That(Error(w => { w.Add("tokenizer.ggml.model", "gpt2"); w.Add("tokenizer.ggml.merges", GgufValue.FromArray(Array.Empty<string>())); w.Add("tokenizer.ggml.pre", "klingon"); }),
                Does.Contain("tokenizer.ggml.pre").And.Contain("klingon"));
        });
    }

    [Test]
    public void Unicode_text_round_trips_through_the_byte_level_tokenizer()
    {
        using var gguf = GgufFile.Open(SharedData.Require("vocab/ggml-vocab-gpt-2.gguf"));
        var t = TokenizerLoader.FromGguf(gguf.Metadata);
        string text = "naïve café — 日本語 🦙🚀 \u200d end";
        var ids = t.Encode(text, addSpecial: false);
        var detok = t.CreateStreamingDetokenizer();
        var sb = new StringBuilder();
        foreach (int id in ids)
        {
            string piece = detok.Push(id);
            Assert.That(piece, Does.Not.Contain("\uFFFD"));
            sb.Append(piece);
        }
        Assert.That(sb.ToString(), Is.EqualTo(text));
    }
}
