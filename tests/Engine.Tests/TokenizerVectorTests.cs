using Engine.Formats.Gguf;
using Engine.Tokenizers;

namespace Engine.Tests;

/// <summary>
/// llama.cpp's tokenizer vectors (../shared/vocab): each <c>*.gguf.inp</c> holds inputs separated by
/// "\n__ggml_vocab_test__\n", the matching line of <c>*.gguf.out</c> the expected ids (tokenized
/// without BOS/EOS and without parsing special tokens, as llama.cpp's test-tokenizer-0 does).
/// With <c>ENGINE_VOCAB_DIR</c> naming a folder of more of them (llama.cpp's <c>models/</c>: DeepSeek
/// Coder and LLM, Falcon, MPT, Refact, StarCoder, Phi-3, BERT-BGE…), every vocabulary there that has its
/// vectors is checked too; none of those files is served here or committed.
/// </summary>
public class TokenizerVectorTests
{
    private static readonly string[] SharedVocabularies = ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"];
    private static readonly Dictionary<string, TextTokenizer> Cache = [];

    /// <summary>The folder of <c>ENGINE_VOCAB_DIR</c>, or null.</summary>
    private static string? ExtraFolder => Environment.GetEnvironmentVariable("ENGINE_VOCAB_DIR") is { Length: > 0 } d && Directory.Exists(d) ? d : null;

    private static IEnumerable<string> Vocabularies =>
        ExtraFolder is { } extra
            ? SharedVocabularies.Concat(Directory.GetFiles(extra, "ggml-vocab-*.gguf").Select(Path.GetFileName).OfType<string>()
                .Where(v => !SharedVocabularies.Contains(v) && File.Exists(Path.Combine(extra, v + ".inp")) && File.Exists(Path.Combine(extra, v + ".out")))
                .Order(StringComparer.Ordinal))
            : SharedVocabularies;

    /// <summary>Where a vocabulary's files are: ../shared/vocab for the two served there, else the extra folder.</summary>
    private static string PathOf(string vocab) => SharedVocabularies.Contains(vocab) ? SharedData.Require("vocab/" + vocab) : Path.Combine(ExtraFolder!, vocab);

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (string vocab in Vocabularies)
        {
            // Count the cases from the file when it is present; enumerate a fixed count otherwise so that
            // the (ignored) cases still show up on a machine without ../shared.
            int count = 46;
            string path = SharedVocabularies.Contains(vocab) ? Path.Combine(SharedData.RepositoryRoot, "..", "shared", "vocab", vocab + ".inp")
                : Path.Combine(ExtraFolder!, vocab + ".inp");
            if (File.Exists(path))
                count = File.ReadAllText(path).Split("\n__ggml_vocab_test__\n").Length - 1;
            for (int i = 0; i < count; i++)
                yield return new TestCaseData(vocab, i).SetName($"{vocab} case {i}");
        }
    }

    private static (string Input, int[] Expected) Case(string vocab, int index)
    {
        string path = PathOf(vocab);
        var inputs = File.ReadAllText(path + ".inp").Split("\n__ggml_vocab_test__\n");
        var outputs = File.ReadAllText(path + ".out").Split('\n');
        Assert.That(inputs, Has.Length.GreaterThan(index + 1), "vector file has fewer cases than expected");
        return (inputs[index], outputs[index].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray());
    }

    private static TextTokenizer Tokenizer(string vocab)
    {
        lock (Cache)
        {
            if (!Cache.TryGetValue(vocab, out var t))
            {
                using var gguf = GgufFile.Open(PathOf(vocab));
                Cache[vocab] = t = TokenizerLoader.FromGguf(gguf.Metadata);
            }
            return t;
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void Encodes_like_llama_cpp_and_decodes_back(string vocab, int index)
    {
        var (input, expected) = Case(vocab, index);
        var tokenizer = Tokenizer(vocab);
        var ids = tokenizer.Encode(input, addSpecial: false);
        Assert.That(ids, Is.EqualTo(expected), $"input {System.Text.Json.JsonSerializer.Serialize(input)}");
        if (tokenizer.Model == TokenizerModel.WordPiece)
            return; // lowercased, accents and whitespace dropped: BERT's tokens do not decode to the input
        // SentencePiece adds a leading space to the text; decoding gives it back.
        string decoded = tokenizer.Decode(ids);
        Assert.That(decoded, Is.EqualTo(input).Or.EqualTo(" " + input));
    }

    [Test]
    public void Vocabulary_files_are_read_as_the_right_tokenizer_family()
    {
        Assert.That(Tokenizer("ggml-vocab-llama-spm.gguf").Model, Is.EqualTo(TokenizerModel.SentencePiece));
        Assert.That(Tokenizer("ggml-vocab-gpt-2.gguf").Model, Is.EqualTo(TokenizerModel.ByteLevelBpe));
        var spm = Tokenizer("ggml-vocab-llama-spm.gguf");
        Assert.Multiple(() =>
        {
            Assert.That(spm.VocabSize, Is.EqualTo(32000));
            Assert.That(spm.BosId, Is.EqualTo(1));
            Assert.That(spm.EosId, Is.EqualTo(2));
            Assert.That(spm.Encode("Hello world"), Is.EqualTo(new[] { 1, 15043, 3186 }), "BOS added by default for Llama");
        });
    }
}
