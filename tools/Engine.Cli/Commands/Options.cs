using System.CommandLine;

namespace Engine.Cli.Commands;

/// <summary>Options shared by several commands.</summary>
internal static partial class SharedOptions
{
    public static Option<string> Model() => new("--model", "-m")
    {
        Description = "A .gguf file or an HF safetensors folder",
        Required = true,
    };

    public static Option<int> Threads() => new("--threads", "-t")
    {
        Description = "CPU threads (default: one per core)",
        DefaultValueFactory = _ => Environment.ProcessorCount,
    };

    /// <summary>Environment variable that sets --device's default (otherwise auto).</summary>
    public const string DeviceVariable = "ENGINE_DEVICE";

    public static Option<string> Device() => new("--device")
    {
        Description = "Where to run: " + Engine.Cuda.BackendFactory.Help + $" (default: ${DeviceVariable}, else auto)",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable(DeviceVariable) is { Length: > 0 } d ? d : "auto",
    };

    public static Option<bool> CudaGraphs() => new("--cuda-graphs") { Description = "On CUDA, replay each decode step as a CUDA graph (one launch instead of hundreds)" };

    public static Option<string> CacheType() => new("--cache-type")
    {
        Description = "KV cache elements: f32, f16 (CUDA only: half the bytes attention reads), or auto (f16 on CUDA, f32 on the CPU)",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary>The element type of a --cache-type value.</summary>
    public static Engine.Tensors.GgmlType? ParseCacheType(string value) => value.Trim().ToLowerInvariant() switch
    {
        "f32" => Engine.Tensors.GgmlType.F32,
        "f16" => Engine.Tensors.GgmlType.F16,
        "auto" => null,
        _ => throw new ArgumentException($"--cache-type {value}: expected f32, f16 or auto"),
    };

    /// <summary>Model options for a device name: the CPU with <paramref name="threads"/>, or a CUDA backend.</summary>
    public static Engine.Api.ModelOptions ModelOptions(string device, int threads, bool cudaGraphs = false, string cacheType = "auto") =>
        new() { Threads = threads, Backend = Engine.Cuda.BackendFactory.Create(device, threads, cudaGraphs, ParseCacheType(cacheType)) };

    public static Option<string?> DraftModel() => new("--draft-model") { Description = "Draft model for --spec draft and rsd (same vocabulary as the target)" };

    public static Option<int> DraftMax() => new("--draft-max") { Description = "Most draft tokens verified per step (chains)", DefaultValueFactory = _ => 8 };

    public static Option<int?> Tree() => new("--tree") { Description = "Draft tree budget in nodes (overrides --draft-max)" };

    public static Option<int> Layers() => new("--layers") { Description = "Layers the layer-skip draft runs (default: a third of the model's)" };

    public static Option<bool> FixedBudget() => new("--fixed-budget") { Description = "Always verify the full budget instead of choosing it by measured goodput" };

    public static Option<bool> LossyTypical() => new("--lossy-typical") { Description = "Medusa typical acceptance: faster, LOSSY (output no longer follows the model's distribution)" };

    public static Option<string?> NgramCache() => new("--ngram-cache") { Description = "File the online n-gram cache is loaded from (if it exists) and saved to" };
}

/// <summary>Builds a speculative decoder from the shared options.</summary>
internal sealed class SpeculativeSetup : IDisposable
{
    public required Engine.Speculative.IDraftSource Source { get; init; }
    public required Engine.Speculative.SpeculativeOptions Options { get; init; }
    public Engine.Api.LanguageModel? Draft { get; init; }
    public string? NgramCache { get; init; }

    public static SpeculativeSetup Create(string method, Engine.Api.LanguageModel target, string? draftPath, int draftMax, int? tree, int layers,
        bool fixedBudget, bool lossy, string? ngramCache, int threads, string device = "cpu")
    {
        if (!Engine.Speculative.DraftSources.Methods.Contains(method))
            throw new ArgumentException($"--spec {method}: unknown method (known: {string.Join(", ", Engine.Speculative.DraftSources.Methods)})");
        if (method is "draft" or "rsd" && draftPath is null)
            throw new ArgumentException($"--spec {method} needs --draft-model");
        int budget = tree ?? draftMax;
        if (budget < 1 || budget > 255)
            throw new ArgumentException($"draft budget {budget} (--draft-max/--tree) must be 1..255");
        Engine.Api.LanguageModel? draft = null;
        try
        {
            if (method is "draft" or "rsd")
                draft = Engine.Api.LanguageModel.Load(draftPath!, SharedOptions.ModelOptions(device, threads) with { ContextLength = target.ContextLength });
            var source = Engine.Speculative.DraftSources.Create(method, target, draft, layers);
            if (source is Engine.Speculative.OnlineNGramSource online && ngramCache is not null && File.Exists(ngramCache))
                online.Load(ngramCache);
            return new SpeculativeSetup
            {
                Source = source,
                Draft = draft,
                NgramCache = ngramCache,
                Options = new Engine.Speculative.SpeculativeOptions { MaxDraft = budget, Adaptive = !fixedBudget, LossyTypicalAcceptance = lossy },
            };
        }
        catch
        {
            draft?.Dispose();
            throw;
        }
    }

    /// <summary>Saves what the online n-gram cache learned (if asked for).</summary>
    public void Save()
    {
        if (Source is Engine.Speculative.OnlineNGramSource online && NgramCache is not null)
            online.Save(NgramCache);
    }

    public void Dispose() => Draft?.Dispose();
}
