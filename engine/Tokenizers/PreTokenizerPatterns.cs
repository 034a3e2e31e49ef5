namespace Engine.Tokenizers;

/// <summary>
/// The pre-tokenizer regexes that split text into words before byte-level BPE, by the name GGUF's
/// <c>tokenizer.ggml.pre</c> gives them (as llama.cpp's llama-vocab.cpp defines them).
/// </summary>
public static class PreTokenizerPatterns
{
    /// <summary>GPT-2's pattern (OpenAI encoder.py).</summary>
    public const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Llama 3's pattern (tiktoken cl100k style; digits in groups of up to three).</summary>
    public const string Llama3 = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Qwen2's pattern (as Llama 3, but single digits).</summary>
    public const string Qwen2 = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>The pattern for a <c>tokenizer.ggml.pre</c> value, or null if it is not one we know.</summary>
    public static string? ForGgufPre(string? pre) => pre switch
    {
        null or "default" or "gpt-2" or "gpt2" or "phi-2" or "jina-es" or "jina-de" or "jina-v2-es" or "jina-v2-de" => Gpt2,
        "llama-bpe" or "llama3" or "dbrx" or "smaug-bpe" => Llama3,
        "qwen2" or "deepseek-r1-qwen" or "stablelm2" => Qwen2,
        _ => null,
    };

    public static IReadOnlyList<string> KnownGgufPre { get; } =
        ["default", "gpt-2", "phi-2", "jina-*", "llama-bpe", "dbrx", "smaug-bpe", "qwen2", "deepseek-r1-qwen", "stablelm2"];
}
