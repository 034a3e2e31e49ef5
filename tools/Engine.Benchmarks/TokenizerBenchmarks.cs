using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Engine.Formats.Gguf;
using Engine.Tokenizers;
using Microsoft.ML.Tokenizers;

namespace Engine.Benchmarks;

/// <summary>
/// Encoding speed on English text, one core: the engine's tokenizers for llama.cpp's GPT-2 and
/// Llama (SentencePiece) vocabularies, next to Microsoft.ML.Tokenizers' Tiktoken with GPT-2's own
/// encoding (r50k) on the same text. The text is this repository's English documentation (README and
/// docs/), read once; every tokenizer keeps its word cache warm across iterations, as it would
/// tokenizing a stream of prompts. MB/s is UTF-8 megabytes (10^6) per second from the median.
/// Run: dotnet run -c Release --project tools/Engine.Benchmarks -- --filter '*Tokenizer*'
/// </summary>
[Config(typeof(TokenizerConfig))]
public class TokenizerBenchmarks
{
    public static string Text { get; } = LoadText();

    public static double Megabytes => Encoding.UTF8.GetByteCount(Text) / 1e6;

    private TextTokenizer _gpt2 = null!, _llama = null!;
    private TiktokenTokenizer _tiktoken = null!;

    [GlobalSetup]
    public void Setup()
    {
        _gpt2 = Load("ggml-vocab-gpt-2.gguf");
        _llama = Load("ggml-vocab-llama-spm.gguf");
        _tiktoken = TiktokenTokenizer.CreateForModel("gpt2");
    }

    [Benchmark(Description = "engine, gpt-2 vocab")]
    public int EngineGpt2() => _gpt2.Encode(Text, addSpecial: false).Count;

    [Benchmark(Description = "engine, llama-spm vocab")]
    public int EngineLlamaSpm() => _llama.Encode(Text, addSpecial: false).Count;

    [Benchmark(Baseline = true, Description = "Microsoft Tiktoken, gpt2 (r50k)")]
    public int Tiktoken() => _tiktoken.EncodeToIds(Text).Count;

    private static TextTokenizer Load(string name)
    {
        string path = Path.Combine(FindUp("shared/vocab") ?? throw new FileNotFoundException("../shared/vocab not found: the tokenizer benchmark needs llama.cpp's vocabulary files"), name);
        using var file = GgufFile.Open(path);
        return TokenizerLoader.FromGguf(file.Metadata);
    }

    private static string LoadText()
    {
        string root = Path.GetDirectoryName(FindUp("README.md", file: true) ?? throw new FileNotFoundException("the repository's README.md was not found"))!;
        var parts = new[] { "README.md" }.Concat(Directory.GetFiles(Path.Combine(root, "docs"), "*.md").Select(Path.GetFileName).Order(StringComparer.Ordinal))
            .Select(f => File.ReadAllText(Path.Combine(f == "README.md" ? root : Path.Combine(root, "docs"), f!)));
        return string.Join("\n\n", parts);
    }

    /// <summary>The first <paramref name="relative"/> found from the current directory or the binary's upwards.</summary>
    private static string? FindUp(string relative, bool file = false)
    {
        foreach (string start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, relative);
                if (file ? File.Exists(candidate) : Directory.Exists(candidate))
                    return candidate;
                string sibling = Path.Combine(dir.FullName, "..", relative);
                if (!file && Directory.Exists(sibling))
                    return Path.GetFullPath(sibling);
            }
        }
        return null;
    }
}

/// <summary>Short in-process runs with an MB/s column.</summary>
public sealed class TokenizerConfig : ManualConfig
{
    public TokenizerConfig()
    {
        AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(15).WithToolchain(InProcessEmitToolchain.Instance));
        AddColumn(new ThroughputColumn("MB/s", "UTF-8 megabytes of text encoded per second (10^6), from the median",
            _ => TokenizerBenchmarks.Megabytes * 1e9)); // per nanosecond: bytes × 10^3 → MB/s
        AddColumn(StatisticColumn.Median);
    }
}
