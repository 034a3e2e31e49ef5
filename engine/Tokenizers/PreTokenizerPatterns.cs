namespace Engine.Tokenizers;

/// <summary>
/// What a byte-level BPE vocabulary does before its merges: the regexes that split text into words
/// (applied one after another, llama.cpp's <c>unicode_regex_split</c>: each regex splits every piece
/// the previous ones left into its matches and the gaps between them) and whether a BOS token is added
/// when the file does not say.
/// </summary>
public sealed record PreTokenizerRule(IReadOnlyList<string> Regexes, bool AddBos = false, bool HasBos = true);

/// <summary>
/// The pre-tokenizers of byte-level BPE vocabularies by the name GGUF's <c>tokenizer.ggml.pre</c> gives
/// them, with the regexes of llama.cpp's <c>llm_tokenizer_bpe</c> (src/llama-vocab.cpp) written for .NET:
/// <c>$</c> becomes <c>\z</c> (std::regex's end of input; .NET's <c>$</c> also matches before a final
/// newline), <c>\d</c> becomes <c>[0-9]</c>, and a class with letters beyond the BMP becomes an
/// alternation with their UTF-16 surrogate pairs (DeepSeek LLM).
/// </summary>
public static class PreTokenizerPatterns
{
    /// <summary>GPT-2's pattern (OpenAI encoder.py).</summary>
    public const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>llama.cpp's GPT-2-family word regex (OpenAI's without its final <c>\s+</c>: what it leaves becomes a gap).</summary>
    private const string Gpt2Words = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

    /// <summary>Llama 3's pattern (tiktoken cl100k style; digits in groups of up to three).</summary>
    public const string Llama3 = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Qwen2's pattern (as Llama 3, but single digits).</summary>
    public const string Qwen2 = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Mistral's Tekken and GPT-4o's split of letter runs at case changes ([\p{Lu}…]*[\p{Ll}…]+ as llama.cpp rewrites it).</summary>
    private const string UpperThenLower = @"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+";
    private const string UpperRun = @"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*";
    private const string Contraction = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

    /// <summary>BLOOM, Poro, GPT-3 Finnish: words up to whitespace or a sentence mark.</summary>
    private const string Bloom = @" ?[^(\s|.,!?…。，、।۔،)]+";

    /// <summary>CJK ideographs, Samaritan..CJK and Hangul (DeepSeek's runs of Han and Hangul).</summary>
    private const string DeepSeekCjk = "[一-龥ࠀ-一가-퟿]+";

    /// <summary>
    /// DeepSeek LLM's cased letters: its tokenizer.json's class, written as escapes (several of its
    /// characters — U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A — are ones that Unicode normalization
    /// replaces, so a literal copy is not safe), then the Deseret, Osage, Old Hungarian, Warang Citi and
    /// Adlam letters as surrogate pairs.
    /// </summary>
    private const string DeepSeekLetters =
        @"\s?(?:["
        + @"\u0041-\u005A\u0061-\u007A\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373"
        + @"\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481"
        + @"\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A"
        + @"\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4"
        + @"\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102"
        + @"\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139"
        + @"\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3"
        + @"\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A"
        + @"]|\uD801[\uDC00-\uDC4F\uDCB0-\uDCD3\uDCD8-\uDCFB]|\uD803[\uDC80-\uDCB2\uDCC0-\uDCF2]|\uD806[\uDCA0-\uDCDF]|\uD83A[\uDD00-\uDD43])+";

    private static readonly PreTokenizerRule Default = new([@"[\p{P}\$\+<=>\^~\|]+", Gpt2Words, @"\p{N}+", "[0-9][0-9][0-9]"]);
    private static readonly PreTokenizerRule Gpt2Family = new([Gpt2]);
    private static readonly PreTokenizerRule Llama3Family = new([Llama3], AddBos: true);
    private static readonly PreTokenizerRule Qwen2Family = new([Qwen2]);
    private static readonly PreTokenizerRule StarCoder = new([@"\p{N}", Gpt2Words]);

    /// <summary>The pre-tokenizer of a <c>tokenizer.ggml.pre</c> value (null or absent: llama.cpp's default), or null if it is not one we know.</summary>
    public static PreTokenizerRule? ForGgufPre(string? pre) => pre switch
    {
        null or "default" => Default,
        "gpt-2" or "gpt2" or "phi-2" or "jina-es" or "jina-de" or "jina-v2-es" or "jina-v2-de" or "jina-v1-en" or "jina-v2-code" or "roberta-bpe"
            or "gigachat" or "a.x-4.0" or "mellum" or "mpt" or "olmo" or "jais" or "trillion" or "granite-docling" or "exaone4" => Gpt2Family,
        "llama3" or "llama-v3" or "llama-bpe" or "falcon3" or "falcon-h1" or "pixtral" or "midm-2.0" or "lfm2" => Llama3Family,
        "dbrx" or "smaug-bpe" => new PreTokenizerRule([Llama3]),
        "glm4" or "chatglm-bpe" => new PreTokenizerRule([Llama3], HasBos: false),
        "qwen2" or "deepseek-r1-qwen" or "kormo" or "megrez" or "stablelm2" or "hunyuan" or "grok-2" => Qwen2Family,
        "deepseek-llm" => new([@"[\r\n]", DeepSeekLetters, @"\s?[!-/:-~！-／：-～‘-‟　-。]+", @"\s+\z", DeepSeekCjk, @"\p{N}+"]),
        "deepseek-coder" => new([@"[\r\n]", @"\s?\p{L}+", @"\s?\p{P}+", DeepSeekCjk, @"\p{N}"]),
        "deepseek-v3" or "hunyuan-dense" => new([@"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
            @"[!""#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]),
        "falcon" => new([@"[\p{P}\$\+<=>\^~\|`]+", Gpt2Words, "[0-9][0-9][0-9]"]),
        "starcoder" or "refact" or "command-r" or "smollm" or "codeshell" or "exaone" or "minerva-7b" => StarCoder,
        "poro-chat" or "bloom" or "gpt3-finnish" => new([Bloom]),
        "viking" => new([Bloom, @"\p{N}"]),
        "tekken" => new([$@"{UpperThenLower}|{UpperRun}|\p{{N}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"], AddBos: true),
        "chameleon" => new(["<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\t\n]|    |  )", @"\p{N}", @"[\p{P}!-/:-@\[-`{-~]", Gpt2Words], AddBos: true),
        "gpt-4o" or "llama4" or "minimax-m2" => new([$@"{UpperThenLower}{Contraction}?|{UpperRun}{Contraction}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"]),
        "superbpe" => new([@"\p{N}+", "(?=([0-9]{3})+(?![0-9]))"]),
        "bailingmoe" or "bailingmoe2" or "llada-moe" => new([@"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"]),
        // Qwen3.5: Qwen2's pattern with combining marks kept in letter runs
        "qwen35" => new([$@"{Contraction}|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}\p{{M}}]+|\p{{N}}| ?[^\s\p{{L}}\p{{M}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]),
        "seed-coder" => new([$@"{Contraction}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1}}| ?[^\s\p{{L}}\p{{N}}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"]),
        _ => null,
    };

    /// <summary>Every name <see cref="ForGgufPre"/> knows, for error messages.</summary>
    public static IReadOnlyList<string> KnownGgufPre { get; } =
    [
        "default", "gpt-2", "phi-2", "jina-*", "roberta-bpe", "gigachat", "a.x-4.0", "mellum", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4",
        "llama-bpe", "llama3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "dbrx", "smaug-bpe", "glm4", "chatglm-bpe",
        "qwen2", "deepseek-r1-qwen", "kormo", "megrez", "stablelm2", "hunyuan", "hunyuan-dense", "grok-2",
        "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon", "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
        "poro-chat", "bloom", "gpt3-finnish", "viking", "tekken", "chameleon", "gpt-4o", "llama4", "minimax-m2", "superbpe",
        "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "qwen35",
    ];
}
