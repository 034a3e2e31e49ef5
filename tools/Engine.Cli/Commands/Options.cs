using System.CommandLine;

namespace Engine.Cli.Commands;

/// <summary>Options shared by several commands.</summary>
internal static partial class SharedOptions
{
    /// <summary>Loads a model, with a progress bar over its tensors where stderr is a terminal.</summary>
    public static Engine.Api.LanguageModel Load(CliOutput io, string path, Engine.Api.ModelOptions options) =>
        TerminalProgress.Run(io, "load " + System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(path)),
            progress => Engine.Api.LanguageModel.Load(path, options with { LoadProgress = progress }));

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

    public static Option<bool> NoWarmup() => new("--no-warmup")
    {
        Description = "Skip the warm-up pass at load (the first prompt then pays for reading and repacking the weights and compiling the code)",
    };

    public static Option<bool> CudaGraphs() => new("--cuda-graphs") { Description = "On CUDA, replay each decode step as a CUDA graph (one launch instead of hundreds)" };

    public static Option<string> CacheType() => new("--cache-type")
    {
        Description = "KV cache elements: f32, f16 (half the memory and the bytes attention reads; values rounded to half), q8_0 (CPU: 8-bit with a scale per head vector, about a quarter), or auto (f16 on CUDA, f32 on the CPU)",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary>The element type of a --cache-type value.</summary>
    public static Engine.Tensors.GgmlType? ParseCacheType(string value) => value.Trim().ToLowerInvariant() switch
    {
        "f32" => Engine.Tensors.GgmlType.F32,
        "f16" => Engine.Tensors.GgmlType.F16,
        "q8_0" => Engine.Tensors.GgmlType.Q8_0,
        "auto" => null,
        _ => throw new ArgumentException($"--cache-type {value}: expected f32, f16, q8_0 or auto"),
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

/// <summary>The research samplers' options of llama.cpp's CLI, shared by <c>generate</c> and <c>chat</c>; defaults as llama.cpp's (all off).</summary>
internal sealed class SamplerFlags
{
    public Option<float> Typical { get; } = new("--typical") { Description = "Locally typical sampling's mass (1 = off)", DefaultValueFactory = _ => 1f };
    public Option<float> TopNSigma { get; } = new("--top-n-sigma") { Description = "Top-nσ: keep logits within n standard deviations of the largest (-1 = off)", DefaultValueFactory = _ => -1f };
    public Option<float> Epsilon { get; } = new("--epsilon") { Description = "Epsilon sampling: drop tokens below this probability (0 = off)" };
    public Option<float> Eta { get; } = new("--eta") { Description = "Eta sampling's epsilon: an entropy-scaled cutoff (0 = off)" };
    public Option<float> XtcProbability { get; } = new("--xtc-probability") { Description = "XTC: chance per token of removing the top choices (0 = off)" };
    public Option<float> XtcThreshold { get; } = new("--xtc-threshold") { Description = "XTC: probability a top choice must reach", DefaultValueFactory = _ => 0.1f };
    public Option<float> DynatempRange { get; } = new("--dynatemp-range") { Description = "Dynamic temperature: temperature ± this by the entropy (0 = off)" };
    public Option<float> DynatempExponent { get; } = new("--dynatemp-exp") { Description = "Dynamic temperature's exponent", DefaultValueFactory = _ => 1f };
    public Option<float> RepeatPenalty { get; } = new("--repeat-penalty") { Description = "Repetition penalty over the last --repeat-last-n tokens (1 = off)", DefaultValueFactory = _ => 1f };
    public Option<int> RepeatLastN { get; } = new("--repeat-last-n") { Description = "Tokens the penalties look back over", DefaultValueFactory = _ => 64 };
    public Option<float> FrequencyPenalty { get; } = new("--frequency-penalty") { Description = "Frequency penalty (0 = off)" };
    public Option<float> PresencePenalty { get; } = new("--presence-penalty") { Description = "Presence penalty (0 = off)" };
    public Option<float> DryMultiplier { get; } = new("--dry-multiplier") { Description = "DRY: penalty multiplier for extending a repeated sequence (0 = off)" };
    public Option<float> DryBase { get; } = new("--dry-base") { Description = "DRY: the penalty's base, raised to the repeat's length beyond the allowed one", DefaultValueFactory = _ => 1.75f };
    public Option<int> DryAllowedLength { get; } = new("--dry-allowed-length") { Description = "DRY: repeats this long go unpenalized", DefaultValueFactory = _ => 2 };
    public Option<int> DryLastN { get; } = new("--dry-penalty-last-n") { Description = "DRY: tokens looked back over", DefaultValueFactory = _ => 1024 };
    public Option<string[]> DryBreakers { get; } = new("--dry-sequence-breaker") { Description = "DRY: a string no repeat spans (repeatable; default newline, colon, quote, asterisk)" };
    public Option<string?> Samplers { get; } = new("--samplers") { Description = "Which samplers run, in order, ';'-separated (llama.cpp's names: penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature; and epsilon, eta)" };
    public Option<int> Mirostat { get; } = new("--mirostat") { Description = "Mirostat version: 1, 2 (0 = off); replaces top-k, top-p and the other filters" };
    public Option<float> MirostatEnt { get; } = new("--mirostat-ent") { Description = "Mirostat's target surprise τ (bits)", DefaultValueFactory = _ => 5f };
    public Option<float> MirostatLr { get; } = new("--mirostat-lr") { Description = "Mirostat's learning rate η", DefaultValueFactory = _ => 0.1f };
    public Option<string[]> LogitBias { get; } = new("--logit-bias") { Description = "Token bias as ID+BIAS, ID-BIAS or ID-inf (repeatable)", AllowMultipleArgumentsPerToken = false };

    public IEnumerable<Option> All => [Typical, TopNSigma, Epsilon, Eta, XtcProbability, XtcThreshold, DynatempRange, DynatempExponent, RepeatPenalty,
        RepeatLastN, FrequencyPenalty, PresencePenalty, DryMultiplier, DryBase, DryAllowedLength, DryLastN, DryBreakers, Mirostat, MirostatEnt,
        MirostatLr, Samplers, LogitBias];

    /// <summary><paramref name="sampling"/> with these flags' values.</summary>
    public Sampling.SamplingOptions Apply(System.CommandLine.ParseResult parse, Sampling.SamplingOptions sampling) => sampling with
    {
        TypicalP = parse.GetValue(Typical),
        TopNSigma = parse.GetValue(TopNSigma),
        Epsilon = parse.GetValue(Epsilon),
        Eta = parse.GetValue(Eta),
        XtcProbability = parse.GetValue(XtcProbability),
        XtcThreshold = parse.GetValue(XtcThreshold),
        DynatempRange = parse.GetValue(DynatempRange),
        DynatempExponent = parse.GetValue(DynatempExponent),
        RepeatPenalty = parse.GetValue(RepeatPenalty),
        RepeatLastN = parse.GetValue(RepeatLastN),
        FrequencyPenalty = parse.GetValue(FrequencyPenalty),
        PresencePenalty = parse.GetValue(PresencePenalty),
        DryMultiplier = parse.GetValue(DryMultiplier),
        DryBase = parse.GetValue(DryBase),
        DryAllowedLength = parse.GetValue(DryAllowedLength),
        DryPenaltyLastN = parse.GetValue(DryLastN),
        DrySequenceBreakers = parse.GetValue(DryBreakers) is { Length: > 0 } breakers ? breakers : sampling.DrySequenceBreakers,
        Samplers = parse.GetValue(Samplers) is { } order ? order.Split([';', ','], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : null,
        Mirostat = parse.GetValue(Mirostat),
        MirostatTau = parse.GetValue(MirostatEnt),
        MirostatEta = parse.GetValue(MirostatLr),
        LogitBias = ParseBias(parse.GetValue(LogitBias) ?? []),
    };

    /// <summary>llama.cpp's <c>--logit-bias</c> form: "15043+1", "15043-0.5", "15043-inf".</summary>
    internal static Dictionary<int, float>? ParseBias(string[] items)
    {
        if (items.Length == 0)
            return null;
        var bias = new Dictionary<int, float>();
        foreach (string item in items)
        {
            int sign = item.IndexOfAny(['+', '-'], 1);
            if (sign < 1 || !int.TryParse(item.AsSpan(0, sign), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                throw new ArgumentException($"--logit-bias '{item}' is not ID+BIAS or ID-BIAS (e.g. 15043+1, 15043-inf)");
            string value = item[sign..];
            float b = value is "-inf" ? float.NegativeInfinity
                : float.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out float v) && float.IsFinite(v) ? v
                : throw new ArgumentException($"--logit-bias '{item}': '{value}' is not a number or -inf");
            bias[id] = b;
        }
        return bias;
    }
}

/// <summary><c>--grammar TEXT</c> / <c>--grammar-file F</c>: the grammar, parsed (errors give the line and column, and the file).</summary>
internal static class GrammarOption
{
    public static Engine.Constraints.Grammar? Load(string? text, string? file, string? schema = null, string? regex = null, bool cache = true)
    {
        if (new[] { text, file, schema, regex }.Count(x => x is not null) > 1)
            throw new ArgumentException("give one of --grammar, --grammar-file, --json-schema and --regex");
        if (schema is not null)
        {
            string json = schema;
            if (schema.StartsWith('@'))
            {
                string path = schema[1..];
                if (!File.Exists(path))
                    throw new FileNotFoundException($"--json-schema {schema}: no such file", path);
                json = File.ReadAllText(path);
            }
            try
            {
                return Engine.Constraints.JsonSchemaGrammar.Compile(json, cache: cache);
            }
            catch (Engine.Constraints.GrammarException e)
            {
                throw new ArgumentException($"--json-schema: {e.Message}", e);
            }
        }
        if (regex is not null)
        {
            try
            {
                return Engine.Constraints.Gbnf.Parse(Engine.Constraints.RegexGrammar.ToGbnf(regex), cache: cache);
            }
            catch (Engine.Constraints.GrammarException e)
            {
                throw new ArgumentException($"--regex: {e.Message}", e);
            }
        }
        if (file is not null)
        {
            if (!File.Exists(file))
                throw new FileNotFoundException($"--grammar-file {file}: no such file", file);
            try
            {
                return Engine.Constraints.Gbnf.Parse(File.ReadAllText(file), cache: cache);
            }
            catch (Engine.Constraints.GrammarException e)
            {
                throw new ArgumentException($"{file}: {e.Message}", e);
            }
        }
        if (text is null)
            return null;
        try
        {
            return Engine.Constraints.Gbnf.Parse(text, cache: cache);
        }
        catch (Engine.Constraints.GrammarException e)
        {
            throw new ArgumentException($"--grammar: {e.Message}", e);
        }
    }
}
