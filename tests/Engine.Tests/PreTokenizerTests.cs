using Engine.Formats.Gguf;
using Engine.Tokenizers;

namespace Engine.Tests;

/// <summary>
/// The pre-tokenizers of llama.cpp's byte-level BPE families (<c>tokenizer.ggml.pre</c>): the words each
/// splits a text into, worked out by hand from the family's regexes and llama.cpp's splitting rule (each
/// regex in turn splits every piece into its matches and the gaps between them). No vocabulary file of
/// these families is served here, so the split — where the families differ — is what the tests pin down;
/// the BPE after it is the one the GPT-2 and Llama 3 vectors check.
/// </summary>
public class PreTokenizerTests
{
    public static IEnumerable<TestCaseData> Splits()
    {
        TestCaseData Case(string pre, string text, params string[] words) =>
            new TestCaseData(pre, text, words).SetName($"pre-tokenizer {pre}: {text.Replace("\n", "\\n")}");
        // digits one by one, letter runs with an optional space, CJK runs cut out of a word
        yield return Case("deepseek-coder", "Hello 世界 123\nx", "Hello", " ", "世界", " ", "1", "2", "3", "\n", "x");
        // cased letters of every script in one class (Deseret's beyond the BMP too), numbers whole
        // (its punctuation class [!-/:-~…] holds the ASCII letters too, so it cuts a letter run at a Deseret letter)
        yield return Case("deepseek-llm", "Hello World\n123 ok x\U00010400y", "Hello", " World", "\n", "123", " ok", " x", "\U00010400", "y");
        // numbers in threes first, Han/kana runs, then the letter/punctuation regex
        yield return Case("deepseek-v3", "abc 12345 漢字", "abc", " ", "123", "45", " ", "漢字");
        // punctuation runs, GPT-2 words, then digits in threes from the left
        yield return Case("falcon", "Hi, you 12345!", "Hi", ",", " you", " ", "123", "45", "!");
        yield return Case("starcoder", "ab12 c", "ab", "1", "2", " c");
        // words up to whitespace or a sentence mark; the marks stay as words of their own
        yield return Case("bloom", "Hello, world. 你好。", "Hello", ",", " world", ".", " 你好", "。");
        yield return Case("viking", "abc 42", "abc", " ", "4", "2");
        // runs of letters split where lower case turns to upper
        yield return Case("tekken", "HelloWorld ABCdef", "Hello", "World", " ABCdef");
        yield return Case("gpt-4o", "I'm HAPPY123", "I'm", " HAPPY", "123");
        // digit runs split in threes from the right (a zero-width lookahead)
        yield return Case("superbpe", "x 1234567", "x ", "1", "234", "567");
        // llama.cpp's default (no or an unknown name): punctuation, GPT-2 words, numbers, threes
        yield return Case("default", "Hello!! 1234", "Hello", "!!", " ", "123", "4");
        // the later regexes split the sentinel again (llama.cpp: special tokens are cut out before the regexes run)
        yield return Case("chameleon", "<sentinel:12>ab  7", "<", "sentinel", ":", "1", "2", ">", "ab", "  ", "7");
        yield return Case("seed-coder", "it's 42", "it", "'s", " ", "4", "2");
        // a combining mark stays in its letter run (Qwen2's pattern would cut it off)
        yield return Case("qwen35", "cafe\u0301 1", "cafe\u0301", " ", "1");
        yield return Case("qwen2", "cafe\u0301 1", "cafe", "\u0301", " ", "1");
    }

    [TestCaseSource(nameof(Splits))]
    public void Each_family_splits_text_into_its_words(string pre, string text, string[] words)
    {
        var rule = PreTokenizerPatterns.ForGgufPre(pre)!;
        Assert.That(new RegexSplitter(rule.Regexes).Words(text), Is.EqualTo(words));
    }

    /// <summary>Every name the table knows builds (its regexes compile in .NET), and the pieces always cover the text exactly.</summary>
    [Test]
    public void Every_known_name_builds_and_covers_its_text()
    {
        const string text = "Hello, World! it's 2024…\n\t数字 123456 ÆØÅ naïve 🙂 <sentinel:3> x\U00010400";
        foreach (string name in PreTokenizerPatterns.KnownGgufPre.Where(n => n != "jina-*"))
        {
            var rule = PreTokenizerPatterns.ForGgufPre(name);
            Assert.That(rule, Is.Not.Null, name);
            Assert.That(string.Concat(new RegexSplitter(rule!.Regexes).Words(text)), Is.EqualTo(text), name);
        }
    }

    /// <summary>
    /// The name picks the split through the loader: with merges that build "123", the digits become one
    /// token where the family keeps numbers (up to three) together and three where it splits digits.
    /// Llama 3's family adds BOS unless the file says otherwise; ChatGLM's has no BOS at all.
    /// </summary>
    [TestCase("gpt-2", 1)]
    [TestCase("llama-bpe", 1)]
    [TestCase("deepseek-v3", 1)]
    [TestCase("qwen2", 3)]
    [TestCase("starcoder", 3)]
    [TestCase("deepseek-coder", 3)]
    public void The_gguf_pre_name_selects_the_split(string pre, int tokens)
    {
        using var dir = new TempDir();
        using var file = GgufFile.Open(WriteVocab(dir, pre));
        var tokenizer = TokenizerLoader.FromGguf(file.Metadata);
        Assert.That(tokenizer.Encode("123", addSpecial: false), Has.Count.EqualTo(tokens));
        Assert.That(tokenizer.Encode("123", addSpecial: true).FirstOrDefault() == 256, Is.EqualTo(pre == "llama-bpe"), "BOS by the family's default");
    }

    [Test]
    public void An_unknown_pre_tokenizer_names_itself_and_the_known_ones()
    {
        using var dir = new TempDir();
        using var file = GgufFile.Open(WriteVocab(dir, "kimi-k2"));
        var e = Assert.Throws<Formats.ModelFormatException>(() => TokenizerLoader.FromGguf(file.Metadata))!;
        Assert.That(e.Message, Does.Contain("tokenizer.ggml.pre").And.Contain("'kimi-k2'").And.Contain("deepseek-coder"));
    }

    /// <summary>A vocabulary-only GGUF: the 256 byte tokens, "12" and "123" with their merges, BOS 256 (the "12" token).</summary>
    private static string WriteVocab(TempDir dir, string pre)
    {
        string path = dir.File("vocab.gguf");
        var vocab = Enumerable.Range(0, 256).Select(b => ByteLevel.Encode([(byte)b])).Append("12").Append("123").ToArray();
        var w = new GgufWriter();
        w.Add("general.architecture", "llama");
        w.Add("tokenizer.ggml.model", "gpt2");
        w.Add("tokenizer.ggml.pre", pre);
        w.Add("tokenizer.ggml.tokens", GgufValue.FromArray(vocab));
        w.Add("tokenizer.ggml.merges", GgufValue.FromArray(new[] { "1 2", "12 3" }));
        w.Add("tokenizer.ggml.bos_token_id", 256u);
        w.Write(path);
        return path;
    }
}

/// <summary>
/// HF <c>tokenizer.json</c> pipelines read from the file: each normalizer and pre-tokenizer the byte-level
/// families use changes the ids of a text as HF's tokenizers library would, and what cannot be run is
/// refused by name.
/// </summary>
public class HfTokenizerPipelineTests
{
    /// <summary>A folder whose tokenizer.json has the 256 byte tokens, "12" and "123" with their merges, and the given parts.</summary>
    private static TextTokenizer Load(TempDir dir, object? normalizer, object? preTokenizer)
    {
        var vocab = Enumerable.Range(0, 256).Select(b => ByteLevel.Encode([(byte)b])).Append("12").Append("123")
            .Select((t, i) => (t, i)).ToDictionary(x => x.t, x => x.i);
        var json = new Dictionary<string, object?>
        {
            ["model"] = new Dictionary<string, object?> { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new[] { "1 2", "12 3" } },
            ["normalizer"] = normalizer,
            ["pre_tokenizer"] = preTokenizer,
            ["added_tokens"] = Array.Empty<object>(),
        };
        string folder = dir.File("hf");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), System.Text.Json.JsonSerializer.Serialize(json));
        return TokenizerLoader.FromHfFolder(folder);
    }

    private static Dictionary<string, object?> Of(string type, params (string Key, object? Value)[] fields)
    {
        var d = new Dictionary<string, object?> { ["type"] = type };
        foreach (var (k, v) in fields)
            d[k] = v;
        return d;
    }

    private static readonly object ByteLevelNoRegex = Of("ByteLevel", ("add_prefix_space", false), ("use_regex", false));

    private static string Text(TextTokenizer t, IEnumerable<int> ids) => System.Text.Encoding.UTF8.GetString(ids.SelectMany(id => t.TokenBytes(id).ToArray()).ToArray());

    [Test]
    public void Digits_and_split_regexes_in_a_sequence_cut_the_numbers()
    {
        using var dir = new TempDir();
        // whole numbers stay one word: "123" merges to one token
        var whole = Load(dir, null, Of("Sequence", ("pretokenizers", new[] { Of("Digits", ("individual_digits", false)), ByteLevelNoRegex })));
        Assert.That(whole.Encode("a123", addSpecial: false), Has.Count.EqualTo(2));
        using var dir2 = new TempDir();
        var single = Load(dir2, null, Of("Sequence", ("pretokenizers", new[] { Of("Digits", ("individual_digits", true)), ByteLevelNoRegex })));
        Assert.That(single.Encode("a123", addSpecial: false), Has.Count.EqualTo(4));
        using var dir3 = new TempDir();
        // a Split regex (Llama 3's shape: digits in twos here) then ByteLevel without its own regex
        var split = Load(dir3, null, Of("Sequence", ("pretokenizers", new object[]
        {
            Of("Split", ("pattern", new Dictionary<string, string> { ["Regex"] = @"\p{N}{1,2}" }), ("behavior", "Isolated"), ("invert", false)),
            ByteLevelNoRegex,
        })));
        Assert.That(split.Encode("123", addSpecial: false), Has.Count.EqualTo(2), "12|3: the merge of 12 with 3 cannot cross words");
    }

    [Test]
    public void Normalizers_run_before_the_split()
    {
        using var dir = new TempDir();
        var nfc = Load(dir, Of("NFC"), ByteLevelNoRegex);
        Assert.That(nfc.Encode("e\u0301", addSpecial: false), Has.Count.EqualTo(2), "é composed: two UTF-8 bytes, not three");
        using var dir2 = new TempDir();
        var sequence = Load(dir2, Of("Sequence", ("normalizers", new object[]
        {
            Of("Lowercase"),
            Of("Replace", ("pattern", new Dictionary<string, string> { ["String"] = "x" }), ("content", "12")),
            Of("Strip", ("strip_left", true), ("strip_right", true)),
        })), ByteLevelNoRegex);
        var ids = sequence.Encode("  AX3 ", addSpecial: false);
        Assert.That(Text(sequence, ids), Is.EqualTo("a123"));
        Assert.That(ids, Has.Count.EqualTo(2), "\"a\" and the merged \"123\"");
    }

    [Test]
    public void What_cannot_run_is_refused_by_name()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<Formats.ModelFormatException>(() => Load(dir, null, Of("Metaspace", ("replacement", "▁"))))!;
        Assert.That(e.Message, Does.Contain("pre_tokenizer.type").And.Contain("'Metaspace'"));
        using var dir2 = new TempDir();
        e = Assert.Throws<Formats.ModelFormatException>(() => Load(dir2, null, Of("Split", ("pattern", new Dictionary<string, string> { ["String"] = " " }), ("behavior", "Removed"))))!;
        Assert.That(e.Message, Does.Contain("behavior 'Removed'"));
        using var dir3 = new TempDir();
        e = Assert.Throws<Formats.ModelFormatException>(() => Load(dir3, Of("Precompiled"), ByteLevelNoRegex))!;
        Assert.That(e.Message, Does.Contain("normalizer.type").And.Contain("'Precompiled'"));
        using var dir4 = new TempDir();
        e = Assert.Throws<Formats.ModelFormatException>(() => Load(dir4, null, Of("Split", ("pattern", new Dictionary<string, string> { ["Regex"] = @"\p{L}++" }), ("behavior", "Isolated"))))!;
        Assert.That(e.Message, Does.Contain("does not compile"));
    }
}

/// <summary>
/// The engine's Unicode normalization (NFC/NFD/NFKC/NFKD; the runtime's does nothing to non-ASCII text in
/// invariant-globalization mode) against Python's unicodedata (Unicode 14), on the cases UAX #15 names:
/// canonical reordering of marks, blocked and unblocked composition, composition exclusions (U+0958),
/// singletons (U+212B, U+2126), non-starter decompositions (U+0344, U+0F73), Hangul both ways,
/// compatibility mappings (ﬁ, ㌀, ½, 𝐀), two-part vowels (U+0CCB, U+1026), astral characters.
/// </summary>
public class UnicodeNormalizationTests
{
    public static IEnumerable<TestCaseData> Vectors()
    {
        yield return new TestCaseData("e\u0301", "\u00E9", "e\u0301", "\u00E9", "e\u0301");
        yield return new TestCaseData("\u212B", "\u00C5", "A\u030A", "\u00C5", "A\u030A");
        yield return new TestCaseData("\uFB01", "\uFB01", "\uFB01", "fi", "fi");
        yield return new TestCaseData("\u1100\u1161\u11A8", "\uAC01", "\u1100\u1161\u11A8", "\uAC01", "\u1100\u1161\u11A8");
        yield return new TestCaseData("a\u0323\u0302", "\u1EAD", "a\u0323\u0302", "\u1EAD", "a\u0323\u0302");
        yield return new TestCaseData("a\u0302\u0323", "\u1EAD", "a\u0323\u0302", "\u1EAD", "a\u0323\u0302");
        yield return new TestCaseData("\u1E9B\u0323", "\u1E9B\u0323", "\u017F\u0323\u0307", "\u1E69", "s\u0323\u0307");
        yield return new TestCaseData("\u00C5\u0301", "\u01FA", "A\u030A\u0301", "\u01FA", "A\u030A\u0301");
        yield return new TestCaseData("\u0958", "\u0915\u093C", "\u0915\u093C", "\u0915\u093C", "\u0915\u093C");
        yield return new TestCaseData("\u2126", "\u03A9", "\u03A9", "\u03A9", "\u03A9");
        yield return new TestCaseData("\uFF21\u0301", "\uFF21\u0301", "\uFF21\u0301", "\u00C1", "A\u0301");
        yield return new TestCaseData("\U0001D400x", "\U0001D400x", "\U0001D400x", "Ax", "Ax");
        yield return new TestCaseData("\u0344", "\u0308\u0301", "\u0308\u0301", "\u0308\u0301", "\u0308\u0301");
        yield return new TestCaseData("\u0F73", "\u0F71\u0F72", "\u0F71\u0F72", "\u0F71\u0F72", "\u0F71\u0F72");
        yield return new TestCaseData("\u3300", "\u3300", "\u3300", "\u30A2\u30D1\u30FC\u30C8", "\u30A2\u30CF\u309A\u30FC\u30C8");
        yield return new TestCaseData("\u00BD", "\u00BD", "\u00BD", "1\u20442", "1\u20442");
        yield return new TestCaseData("A\u030A\u0301", "\u01FA", "A\u030A\u0301", "\u01FA", "A\u030A\u0301");
        yield return new TestCaseData("\u01FA", "\u01FA", "A\u030A\u0301", "\u01FA", "A\u030A\u0301");
        yield return new TestCaseData("\uD55C\uAD6D\uC5B4", "\uD55C\uAD6D\uC5B4", "\u1112\u1161\u11AB\u1100\u116E\u11A8\u110B\u1165", "\uD55C\uAD6D\uC5B4", "\u1112\u1161\u11AB\u1100\u116E\u11A8\u110B\u1165");
        yield return new TestCaseData("\u110B\u1161\u11AB", "\uC548", "\u110B\u1161\u11AB", "\uC548", "\u110B\u1161\u11AB");
        yield return new TestCaseData("\uAC00\u11A8", "\uAC01", "\u1100\u1161\u11A8", "\uAC01", "\u1100\u1161\u11A8");
        yield return new TestCaseData("\u0CCB", "\u0CCB", "\u0CC6\u0CC2\u0CD5", "\u0CCB", "\u0CC6\u0CC2\u0CD5");
        yield return new TestCaseData("\u1026", "\u1026", "\u1025\u102E", "\u1026", "\u1025\u102E");
        yield return new TestCaseData("a\u0315\u0300\u05AE\u0300b", "\u00E0\u05AE\u0300\u0315b", "a\u05AE\u0300\u0300\u0315b", "\u00E0\u05AE\u0300\u0315b", "a\u05AE\u0300\u0300\u0315b");
        yield return new TestCaseData("\u00E0\u05AE", "\u00E0\u05AE", "a\u05AE\u0300", "\u00E0\u05AE", "a\u05AE\u0300");
        yield return new TestCaseData("q\u0307\u0323", "q\u0323\u0307", "q\u0323\u0307", "q\u0323\u0307", "q\u0323\u0307");
        yield return new TestCaseData("\u1FD3", "\u0390", "\u03B9\u0308\u0301", "\u0390", "\u03B9\u0308\u0301");
        yield return new TestCaseData("\u0390", "\u0390", "\u03B9\u0308\u0301", "\u0390", "\u03B9\u0308\u0301");
        yield return new TestCaseData("caf\u00E9 na\u00EFve \u2460 \u2168", "caf\u00E9 na\u00EFve \u2460 \u2168", "cafe\u0301 nai\u0308ve \u2460 \u2168", "caf\u00E9 na\u00EFve 1 IX", "cafe\u0301 nai\u0308ve 1 IX");
        yield return new TestCaseData("\U0001F600 ok", "\U0001F600 ok", "\U0001F600 ok", "\U0001F600 ok", "\U0001F600 ok");
    }

    [TestCaseSource(nameof(Vectors))]
    public void Each_form_matches_unicodedata(string text, string nfc, string nfd, string nfkc, string nfkd)
    {
        Assert.That(UnicodeNormalization.Nfc(text), Is.EqualTo(nfc), "NFC");
        Assert.That(UnicodeNormalization.Nfd(text), Is.EqualTo(nfd), "NFD");
        Assert.That(UnicodeNormalization.Nfkc(text), Is.EqualTo(nfkc), "NFKC");
        Assert.That(UnicodeNormalization.Nfkd(text), Is.EqualTo(nfkd), "NFKD");
    }

    /// <summary>The forms are stable over every BMP code point: NFC of NFD is NFC, NFD of NFC is NFD, and the K forms likewise.</summary>
    [Test]
    public void Every_bmp_code_point_round_trips_between_the_forms()
    {
        for (int cp = 0; cp < 0x10000; cp++)
        {
            if (cp is >= 0xD800 and <= 0xDFFF)
                continue;
            string s = ((char)cp).ToString();
            string nfc = UnicodeNormalization.Nfc(s), nfd = UnicodeNormalization.Nfd(s);
            Assert.That(UnicodeNormalization.Nfc(nfd), Is.EqualTo(nfc), $"U+{cp:X4}");
            Assert.That(UnicodeNormalization.Nfd(nfc), Is.EqualTo(nfd), $"U+{cp:X4}");
            Assert.That(UnicodeNormalization.Nfkc(UnicodeNormalization.Nfkd(s)), Is.EqualTo(UnicodeNormalization.Nfkc(s)), $"U+{cp:X4}");
        }
    }
}

/// <summary>SentencePiece-style tokenizer.json files (byte fallback): where the space prefix comes from.</summary>
public class HfSentencePieceJsonTests
{
    private static TextTokenizer Load(TempDir dir, object? normalizer, object? preTokenizer)
    {
        var pieces = new List<string> { "<unk>", "<s>", "</s>" };
        pieces.AddRange(Enumerable.Range(0, 256).Select(b => $"<0x{b:X2}>"));
        pieces.AddRange(["▁", "a", "b", "▁a", "▁b"]);
        var json = new Dictionary<string, object?>
        {
            ["model"] = new Dictionary<string, object?>
            {
                ["type"] = "BPE", ["byte_fallback"] = true, ["unk_token"] = "<unk>",
                ["vocab"] = pieces.Select((p, i) => (p, i)).ToDictionary(x => x.p, x => x.i),
                ["merges"] = new[] { "▁ a", "▁ b" },
            },
            ["normalizer"] = normalizer,
            ["pre_tokenizer"] = preTokenizer,
            ["added_tokens"] = new object[]
            {
                new Dictionary<string, object> { ["id"] = 1, ["content"] = "<s>", ["special"] = true },
                new Dictionary<string, object> { ["id"] = 2, ["content"] = "</s>", ["special"] = true },
            },
        };
        string folder = dir.File("hf");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), System.Text.Json.JsonSerializer.Serialize(json));
        return TokenizerLoader.FromHfFolder(folder);
    }

    private static Dictionary<string, object?> Metaspace(string scheme) =>
        new() { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = scheme, ["split"] = false };

    /// <summary>A Prepend normalizer or Metaspace "always" prefix every fragment; "first" only the text's first; "never" none.</summary>
    [Test]
    public void Metaspace_prepend_scheme_decides_where_the_space_goes()
    {
        const int a = 259 + 1, b = 259 + 2, spaceA = 259 + 3, spaceB = 259 + 4;
        int[] Encode(object? normalizer, object? pre)
        {
            using var dir = new TempDir();
            return [.. Load(dir, normalizer, pre).Encode("a</s>b", addSpecial: false, parseSpecial: true)];
        }
        var prepend = new Dictionary<string, object?>
        {
            ["type"] = "Sequence",
            ["normalizers"] = new object[]
            {
                new Dictionary<string, object?> { ["type"] = "Prepend", ["prepend"] = "▁" },
                new Dictionary<string, object?> { ["type"] = "Replace", ["pattern"] = new Dictionary<string, string> { ["String"] = " " }, ["content"] = "▁" },
            },
        };
        Assert.That(Encode(prepend, null), Is.EqualTo(new[] { spaceA, 2, spaceB }), "Prepend normalizer");
        Assert.That(Encode(null, Metaspace("always")), Is.EqualTo(new[] { spaceA, 2, spaceB }), "always");
        Assert.That(Encode(null, Metaspace("first")), Is.EqualTo(new[] { spaceA, 2, b }), "first");
        Assert.That(Encode(null, Metaspace("never")), Is.EqualTo(new[] { a, 2, b }), "never");
    }
}
