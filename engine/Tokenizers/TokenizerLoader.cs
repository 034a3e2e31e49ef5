using System.Globalization;
using System.Text;
using System.Text.Json;
using Engine.Formats;
using Engine.Formats.Gguf;

namespace Engine.Tokenizers;

/// <summary>
/// Builds a <see cref="TextTokenizer"/> from what a model ships: GGUF <c>tokenizer.ggml.*</c> metadata,
/// an HF <c>tokenizer.json</c>, or a SentencePiece <c>tokenizer.model</c>. Every id and count is
/// checked; a problem is a <see cref="ModelFormatException"/> naming the file and field.
/// </summary>
public static class TokenizerLoader
{
    /// <summary>Reads the tokenizer of a GGUF file (a full model or a vocabulary-only file).</summary>
    public static TextTokenizer FromGguf(GgufMetadata m)
    {
        string file = m.File;
        string model = m.Find("tokenizer.ggml.model") is null
            ? throw new ModelFormatException(file, "tokenizer.ggml.model", "missing: this GGUF file has no tokenizer")
            : m.GetString("tokenizer.ggml.model");
        string[] tokens = m.GetStringArray("tokenizer.ggml.tokens");
        if (tokens.Length == 0)
            throw new ModelFormatException(file, "tokenizer.ggml.tokens", "the vocabulary is empty");
        var kinds = m.Contains("tokenizer.ggml.token_type")
            ? m.GetInt32Array("tokenizer.ggml.token_type").Select(t => (TokenKind)t).ToArray()
            : Enumerable.Repeat(TokenKind.Normal, tokens.Length).ToArray();
        CheckLength(file, "tokenizer.ggml.token_type", kinds.Length, tokens.Length);
        for (int i = 0; i < kinds.Length; i++)
        {
            if (kinds[i] is < TokenKind.Normal or > TokenKind.Byte)
                throw new ModelFormatException(file, "tokenizer.ggml.token_type", $"token {i} has type {(int)kinds[i]}, not one of 1..6");
        }

        int? Id(string key) => m.Contains(key) ? CheckId(file, key, m.GetInt32(key), tokens.Length) : null;
        int? bos = Id("tokenizer.ggml.bos_token_id");
        int? eos = Id("tokenizer.ggml.eos_token_id");
        int? unk = Id("tokenizer.ggml.unknown_token_id");
        var ends = new[] { Id("tokenizer.ggml.eot_token_id"), Id("tokenizer.ggml.eom_token_id") }.OfType<int>();

        switch (model)
        {
            case "llama":
            {
                float[] scores = m.Contains("tokenizer.ggml.scores") ? m.GetSingleArray("tokenizer.ggml.scores") : new float[tokens.Length];
                CheckLength(file, "tokenizer.ggml.scores", scores.Length, tokens.Length);
                bool addPrefix = m.GetBool("tokenizer.ggml.add_space_prefix", true);
                var encoder = new SentencePieceEncoder(new SentencePieceBpe(tokens, scores, kinds, unk ?? 0), addPrefix, removeExtraWhitespaces: false);
                return new TextTokenizer(TokenizerModel.SentencePiece, tokens, kinds, SentencePieceBytes(tokens, kinds), encoder,
                    bos, eos, m.GetBool("tokenizer.ggml.add_bos_token", true), m.GetBool("tokenizer.ggml.add_eos_token", false), ends);
            }
            case "gpt2":
            {
                string[] merges = m.GetStringArray("tokenizer.ggml.merges");
                string? pre = m.GetStringOrNull("tokenizer.ggml.pre");
                var preTokenizer = PreTokenizerPatterns.ForGgufPre(pre) ?? throw new ModelFormatException(file, "tokenizer.ggml.pre",
                    $"pre-tokenizer '{pre}' is not supported (known: {string.Join(", ", PreTokenizerPatterns.KnownGgufPre)})");
                var encoder = CreateByteLevel(file, "tokenizer.ggml.merges", tokens, merges, preTokenizer.Regexes);
                // as llama.cpp: the family's default for adding BOS (Llama 3, Tekken, Chameleon: yes), the file's key over it;
                // ChatGLM's vocabularies have no BOS
                return new TextTokenizer(TokenizerModel.ByteLevelBpe, tokens, kinds, ByteLevelBytes(tokens, kinds), encoder,
                    preTokenizer.HasBos ? bos : null, eos, m.GetBool("tokenizer.ggml.add_bos_token", preTokenizer.AddBos) && preTokenizer.HasBos,
                    m.GetBool("tokenizer.ggml.add_eos_token", false), ends);
            }
            case "bert":
            {
                // llama.cpp's WPM: [CLS] in front and [SEP] at the end by default; an unknown token is required
                int unknown = unk ?? throw new ModelFormatException(file, "tokenizer.ggml.unknown_token_id", "a WordPiece vocabulary needs its unknown token");
                int? sep = Id("tokenizer.ggml.seperator_token_id") ?? eos; // (sic: the GGUF key is spelled so)
                var encoder = new WordPieceEncoder(tokens, unknown);
                return new TextTokenizer(TokenizerModel.WordPiece, tokens, kinds, SentencePieceBytes(tokens, kinds), encoder,
                    bos, sep, m.GetBool("tokenizer.ggml.add_bos_token", true), m.GetBool("tokenizer.ggml.add_sep_token", true), ends);
            }
            case "t5":
            {
                float[] scores = m.Contains("tokenizer.ggml.scores") ? m.GetSingleArray("tokenizer.ggml.scores") : new float[tokens.Length];
                CheckLength(file, "tokenizer.ggml.scores", scores.Length, tokens.Length);
                int unknown = unk ?? throw new ModelFormatException(file, "tokenizer.ggml.unknown_token_id", "a Unigram vocabulary needs its unknown token");
                const string charsMapKey = "tokenizer.ggml.precompiled_charsmap";
                var charsMap = m.Contains(charsMapKey) ? new PrecompiledCharsMap(m.GetByteArray(charsMapKey), file, charsMapKey) : null;
                var encoder = new UnigramEncoder(tokens, scores, kinds, unknown, charsMap, m.GetBool("tokenizer.ggml.add_space_prefix", true),
                    m.GetBool("tokenizer.ggml.remove_extra_whitespaces", false));
                return new TextTokenizer(TokenizerModel.Unigram, tokens, kinds, SentencePieceBytes(tokens, kinds), encoder,
                    bos, eos, m.GetBool("tokenizer.ggml.add_bos_token", false), m.GetBool("tokenizer.ggml.add_eos_token", true), ends);
            }
            default:
                throw new ModelFormatException(file, "tokenizer.ggml.model", $"tokenizer type '{model}' is not supported (supported: llama, gpt2, bert, t5)");
        }
    }

    /// <summary>
    /// Reads the tokenizer of an HF model folder: <c>tokenizer.json</c> if present, else a SentencePiece
    /// <c>tokenizer.model</c>; BOS/EOS ids from <c>config.json</c>/<c>generation_config.json</c>, whether to
    /// add them from <c>tokenizer_config.json</c>.
    /// </summary>
    public static TextTokenizer FromHfFolder(string folder)
    {
        var special = HfSpecialTokens.Read(folder);
        string json = Path.Combine(folder, "tokenizer.json");
        if (File.Exists(json))
            return FromTokenizerJson(json, special);
        string sp = Path.Combine(folder, "tokenizer.model");
        if (File.Exists(sp))
            return FromSentencePieceModel(sp, special);
        throw new ModelFormatException(folder, "tokenizer", "no tokenizer.json or tokenizer.model in the model folder");
    }

    /// <summary>
    /// Writes an HF folder's tokenizer as GGUF <c>tokenizer.ggml.*</c> keys, as llama.cpp's converter would:
    /// a SentencePiece <c>tokenizer.model</c> as "llama" (pieces, scores, types, the dummy prefix), a
    /// byte-level BPE <c>tokenizer.json</c> as "gpt2" with its merges and the llama.cpp pre-tokenizer whose
    /// regexes are the file's. What GGUF cannot express — a normalizer, a pre-tokenizer llama.cpp has no
    /// name for, a byte-fallback tokenizer.json without its tokenizer.model — is refused by field. The
    /// result loads back as the same tokenizer (<see cref="FromGguf"/>).
    /// </summary>
    public static void ToGguf(string folder, Formats.Gguf.GgufWriter w)
    {
        var special = HfSpecialTokens.Read(folder);
        string json = Path.Combine(folder, "tokenizer.json"), sp = Path.Combine(folder, "tokenizer.model");
        bool spFirst = File.Exists(sp) && (!File.Exists(json) || IsByteFallback(json));
        if (spFirst)
        {
            var t = FromSentencePieceModel(sp, special);
            var model = SentencePieceModel.Parse(File.ReadAllBytes(sp));
            w.Add("tokenizer.ggml.model", "llama");
            w.Add("tokenizer.ggml.tokens", Formats.Gguf.GgufValue.FromArray(model.Pieces));
            w.Add("tokenizer.ggml.scores", Formats.Gguf.GgufValue.FromArray(model.Scores));
            w.Add("tokenizer.ggml.token_type", Formats.Gguf.GgufValue.FromArray(model.Kinds.Select(k => (int)k).ToArray()));
            w.Add("tokenizer.ggml.add_space_prefix", model.AddDummyPrefix);
            if (model.UnkId >= 0 && model.UnkId < model.Pieces.Length)
                w.Add("tokenizer.ggml.unknown_token_id", (uint)model.UnkId);
            Specials(w, t);
            return;
        }
        if (!File.Exists(json))
            throw new ModelFormatException(folder, "tokenizer", "no tokenizer.json or tokenizer.model in the model folder");
        if (IsByteFallback(json))
            throw new ModelFormatException(json, "model.byte_fallback", "a SentencePiece-style tokenizer.json converts from its tokenizer.model, which the folder lacks");
        var tokenizer = FromTokenizerJson(json, special);
        using var doc = HfJson.Parse(json);
        var root = doc.RootElement;
        if (root.TryGetProperty("normalizer", out var n) && n.ValueKind != JsonValueKind.Null)
            throw new ModelFormatException(json, "normalizer", "GGUF's byte-level tokenizers carry no normalizer");
        var regexes = HfPipeline.PreTokenizerRegexes(json, root);
        string pre = PreTokenizerPatterns.KnownGgufPre.FirstOrDefault(name => PreTokenizerPatterns.ForGgufPre(name) is { } rule && rule.Regexes.SequenceEqual(regexes))
            ?? throw new ModelFormatException(json, "pre_tokenizer", "its regexes are none of llama.cpp's named pre-tokenizers");
        var merges = ReadMerges(json, HfJson.Object(json, root, "model"));
        w.Add("tokenizer.ggml.model", "gpt2");
        w.Add("tokenizer.ggml.pre", pre);
        w.Add("tokenizer.ggml.tokens", Formats.Gguf.GgufValue.FromArray(Enumerable.Range(0, tokenizer.VocabSize).Select(tokenizer.Piece).ToArray()));
        w.Add("tokenizer.ggml.token_type", Formats.Gguf.GgufValue.FromArray(Enumerable.Range(0, tokenizer.VocabSize).Select(i => (int)tokenizer.Kind(i)).ToArray()));
        w.Add("tokenizer.ggml.merges", Formats.Gguf.GgufValue.FromArray(merges.Select(m => m.Left + " " + m.Right).ToArray()));
        Specials(w, tokenizer);
    }

    private static void Specials(Formats.Gguf.GgufWriter w, TextTokenizer t)
    {
        if (t.BosId is int bos)
            w.Add("tokenizer.ggml.bos_token_id", (uint)bos);
        if (t.EosId is int eos)
            w.Add("tokenizer.ggml.eos_token_id", (uint)eos);
        w.Add("tokenizer.ggml.add_bos_token", t.AddBos);
        w.Add("tokenizer.ggml.add_eos_token", t.AddEos);
    }

    private static bool IsByteFallback(string json)
    {
        using var doc = HfJson.Parse(json);
        return doc.RootElement.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.Object
            && m.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
    }

    private static TextTokenizer FromSentencePieceModel(string path, HfSpecialTokens special)
    {
        SentencePieceModel sp;
        try
        {
            var info = Formats.LinkedFile.Resolve(path);
            if (info.Length > 64 << 20)
                throw new ModelFormatException(path, "file", $"{info.Length} bytes is too large for a SentencePiece model");
            sp = SentencePieceModel.Parse(File.ReadAllBytes(path));
        }
        catch (Google.Protobuf.InvalidProtocolBufferException e)
        {
            throw new ModelFormatException(path, "ModelProto", $"not a valid SentencePiece model: {e.Message}", e);
        }
        if (!sp.IsBpe)
            throw new ModelFormatException(path, "trainer_spec.model_type", $"{sp.ModelType} is not BPE (2); only BPE SentencePiece models are supported");
        if (sp.Pieces.Length == 0)
            throw new ModelFormatException(path, "pieces", "the vocabulary is empty");
        if (sp.TreatWhitespaceAsSuffix)
            throw new ModelFormatException(path, "trainer_spec.treat_whitespace_as_suffix", "suffix whitespace is not supported");
        int n = sp.Pieces.Length;
        int? Valid(int id) => id >= 0 && id < n ? id : null;
        var encoder = new SentencePieceEncoder(new SentencePieceBpe(sp.Pieces, sp.Scores, sp.Kinds, Valid(sp.UnkId) ?? 0),
            sp.AddDummyPrefix, sp.RemoveExtraWhitespaces);
        int? bos = special.BosId ?? Valid(sp.BosId);
        int? eos = special.EosId ?? Valid(sp.EosId);
        return new TextTokenizer(TokenizerModel.SentencePiece, sp.Pieces, sp.Kinds, SentencePieceBytes(sp.Pieces, sp.Kinds), encoder,
            CheckOptional(path, "bos_token_id", bos, n), CheckOptional(path, "eos_token_id", eos, n),
            special.AddBos ?? true, special.AddEos ?? false, special.ExtraEos);
    }

    private static TextTokenizer FromTokenizerJson(string path, HfSpecialTokens special)
    {
        using var doc = HfJson.Parse(path);
        var root = doc.RootElement;
        var model = HfJson.Object(path, root, "model");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "BPE";
        if (type != "BPE")
            throw new ModelFormatException(path, "model.type", $"'{type}' is not supported (only BPE)");
        var vocabObject = HfJson.Object(path, model, "vocab");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        int maxId = -1;
        foreach (var entry in vocabObject.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0 || id > 10_000_000)
                throw new ModelFormatException(path, $"model.vocab['{entry.Name}']", $"{entry.Value.GetRawText()} is not a valid token id");
            vocab[entry.Name] = id;
            maxId = Math.Max(maxId, id);
        }
        var added = new List<(string Content, int Id, bool Special)>();
        if (root.TryGetProperty("added_tokens", out var addedTokens) && addedTokens.ValueKind == JsonValueKind.Array)
        {
            foreach (var a in addedTokens.EnumerateArray())
            {
                if (!a.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out int id) || id < 0 || id > 10_000_000
                    || !a.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new ModelFormatException(path, "added_tokens", $"entry {a.GetRawText()} lacks a valid id or content");
                bool isSpecial = a.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True;
                added.Add((content.GetString()!, id, isSpecial));
                maxId = Math.Max(maxId, id);
            }
        }
        int n = maxId + 1;
        if (n == 0)
            throw new ModelFormatException(path, "model.vocab", "the vocabulary is empty");
        var pieces = new string[n];
        var kinds = new TokenKind[n];
        Array.Fill(pieces, "");
        Array.Fill(kinds, TokenKind.Unused);
        foreach (var (piece, id) in vocab)
        {
            pieces[id] = piece;
            kinds[id] = TokenKind.Normal;
        }
        foreach (var (content, id, isSpecial) in added)
        {
            pieces[id] = content;
            kinds[id] = isSpecial ? TokenKind.Control : TokenKind.UserDefined;
        }

        var merges = ReadMerges(path, model);
        bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        string? bosText = special.BosText, eosText = special.EosText;
        int? bos = special.BosId ?? (bosText is not null && vocab.TryGetValue(bosText, out int b) ? b : Added(added, bosText));
        int? eos = special.EosId ?? (eosText is not null && vocab.TryGetValue(eosText, out int e) ? e : Added(added, eosText));
        bos = CheckOptional(path, "bos_token_id", bos, n);
        eos = CheckOptional(path, "eos_token_id", eos, n);
        // BOS/EOS listed only in the vocabulary (not as added tokens) are still control tokens.
        foreach (int? id in new[] { bos, eos })
        {
            if (id is int i && kinds[i] == TokenKind.Normal)
                kinds[i] = TokenKind.Control;
        }

        if (byteFallback)
        {
            // Llama-2-style tokenizer.json: SentencePiece BPE written as ranked merges with byte fallback.
            for (int i = 0; i < n; i++)
            {
                if (kinds[i] == TokenKind.Normal && pieces[i].Length == 6 && pieces[i].StartsWith("<0x", StringComparison.Ordinal) && pieces[i].EndsWith('>'))
                    kinds[i] = TokenKind.Byte;
            }
            var ranks = new Dictionary<(string, string), int>();
            for (int r = 0; r < merges.Count; r++)
                ranks.TryAdd(merges[r], r);
            int unk = model.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String && vocab.TryGetValue(u.GetString()!, out int uid) ? uid : 0;
            var (prefix, onlyAtStart) = SpacePrefix(root);
            var encoder = new SentencePieceEncoder(new SentencePieceBpe(pieces, new float[n], kinds, unk, ranks), prefix, removeExtraWhitespaces: false, onlyAtStart);
            return new TextTokenizer(TokenizerModel.SentencePiece, pieces, kinds, SentencePieceBytes(pieces, kinds), encoder,
                bos, eos, special.AddBos ?? true, special.AddEos ?? false, special.ExtraEos);
        }

        // the file's own normalizer and pre-tokenizer (Qwen2: NFC, then its Split regex; GPT-2: ByteLevel's regex)
        var byteLevel = CreateByteLevel(path, "model.merges", pieces, merges.Select(m => m.Left + " " + m.Right),
            HfPipeline.PreTokenizerRegexes(path, root), HfPipeline.Normalizer(path, root));
        return new TextTokenizer(TokenizerModel.ByteLevelBpe, pieces, kinds, ByteLevelBytes(pieces, kinds), byteLevel,
            bos, eos, special.AddBos ?? HasBosInPostProcessor(root, bosText), special.AddEos ?? false, special.ExtraEos);
    }

    private static int? Added(List<(string Content, int Id, bool Special)> added, string? text) =>
        text is null ? null : added.Where(a => a.Content == text).Select(a => (int?)a.Id).FirstOrDefault();

    private static List<(string Left, string Right)> ReadMerges(string path, JsonElement model)
    {
        var merges = new List<(string, string)>();
        if (!model.TryGetProperty("merges", out var array))
            return merges;
        if (array.ValueKind != JsonValueKind.Array)
            throw new ModelFormatException(path, "model.merges", "must be an array");
        int i = 0;
        foreach (var m in array.EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.String)
            {
                string s = m.GetString()!;
                int space = s.IndexOf(' ', 1);
                if (space < 0)
                    throw new ModelFormatException(path, $"model.merges[{i}]", $"'{s}' is not two tokens separated by a space");
                merges.Add((s[..space], s[(space + 1)..]));
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                merges.Add((m[0].GetString()!, m[1].GetString()!));
            else
                throw new ModelFormatException(path, $"model.merges[{i}]", $"{m.GetRawText()} is not a merge");
            i++;
        }
        return merges;
    }

    /// <summary>
    /// Whether a SentencePiece-style tokenizer.json puts a space in front of the text: a Prepend normalizer
    /// (older Llama 2 files: every fragment) or a Metaspace pre-tokenizer (newer ones: its
    /// <c>prepend_scheme</c>, "always" or "first" — the text's first fragment only — or the legacy
    /// <c>add_prefix_space</c>).
    /// </summary>
    private static (bool Prefix, bool OnlyAtStart) SpacePrefix(JsonElement root)
    {
        if (root.TryGetProperty("normalizer", out var n) && n.ValueKind == JsonValueKind.Object && n.GetRawText().Contains("\"Prepend\"", StringComparison.Ordinal))
            return (true, false);
        if (root.TryGetProperty("pre_tokenizer", out var p) && p.ValueKind == JsonValueKind.Object)
        {
            IEnumerable<JsonElement> all = p.TryGetProperty("pretokenizers", out var list) && list.ValueKind == JsonValueKind.Array ? list.EnumerateArray() : [p];
            foreach (var e in all)
            {
                if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty("type", out var t) || t.GetString() != "Metaspace")
                    continue;
                if (e.TryGetProperty("prepend_scheme", out var scheme) && scheme.ValueKind == JsonValueKind.String)
                    return scheme.GetString() switch { "always" => (true, false), "first" => (true, true), _ => (false, false) };
                return (e.TryGetProperty("add_prefix_space", out var add) && add.ValueKind == JsonValueKind.True, false);
            }
        }
        return (false, false);
    }

    private static bool HasBosInPostProcessor(JsonElement root, string? bosText) =>
        bosText is not null && root.TryGetProperty("post_processor", out var p) && p.ValueKind == JsonValueKind.Object
        && p.GetRawText().Contains(JsonSerializer.Serialize(bosText), StringComparison.Ordinal);

    private static ByteLevelEncoder CreateByteLevel(string file, string field, string[] tokens, IEnumerable<string> merges, IReadOnlyList<string> regexes,
        Func<string, string>? normalizer = null)
    {
        try
        {
            return new ByteLevelEncoder(tokens, merges, regexes, normalizer);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new ModelFormatException(file, field, $"cannot build the byte-level BPE tokenizer: {e.Message}", e);
        }
    }

    /// <summary>SentencePiece pieces render with U+2581 as a space; &lt;0xNN&gt; byte tokens as their byte.</summary>
    private static byte[][] SentencePieceBytes(string[] pieces, TokenKind[] kinds)
    {
        var bytes = new byte[pieces.Length][];
        for (int i = 0; i < pieces.Length; i++)
        {
            bytes[i] = kinds[i] switch
            {
                TokenKind.Control or TokenKind.Unused => [],
                TokenKind.Byte when pieces[i].Length == 6 && byte.TryParse(pieces[i].AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b) => [b],
                TokenKind.Unknown => " \u2047 "u8.ToArray(),
                _ => Encoding.UTF8.GetBytes(pieces[i].Replace(SentencePieceEncoder.Space, ' ')),
            };
        }
        return bytes;
    }

    /// <summary>Byte-level pieces render through GPT-2's character map; added tokens render as their text.</summary>
    private static byte[][] ByteLevelBytes(string[] pieces, TokenKind[] kinds)
    {
        var bytes = new byte[pieces.Length][];
        for (int i = 0; i < pieces.Length; i++)
        {
            bytes[i] = kinds[i] switch
            {
                TokenKind.Control or TokenKind.Unused => [],
                TokenKind.UserDefined => Encoding.UTF8.GetBytes(pieces[i]),
                _ => ByteLevel.Decode(pieces[i]) ?? Encoding.UTF8.GetBytes(pieces[i]),
            };
        }
        return bytes;
    }

    private static void CheckLength(string file, string key, int length, int expected)
    {
        if (length != expected)
            throw new ModelFormatException(file, key, $"has {length} entries, but the vocabulary has {expected} tokens");
    }

    private static int CheckId(string file, string key, int id, int vocab) =>
        id >= 0 && id < vocab ? id : throw new ModelFormatException(file, key, $"token id {id} is outside the vocabulary (0..{vocab - 1})");

    private static int? CheckOptional(string file, string key, int? id, int vocab) => id is int i ? CheckId(file, key, i, vocab) : null;
}
