using System.CommandLine;
using Engine.Api;
using Engine.Decoding;
using Engine.Sampling;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>--strategy</c> and its options, shared by <c>generate</c> and <c>bench</c>: which flags belong to
/// which strategy, their defaults per strategy, and the strategy object they build.
/// </summary>
internal sealed class StrategyFlags
{
    public static readonly string[] Names = ["beam", "diverse-beam", "contrastive", "cad", "adacad", "contrastive-decoding", "cfg", "cautious", "extract"];

    public Option<string?> Strategy { get; } = new("--strategy") { Description = "Decoding strategy: " + string.Join(", ", Names) + " (default: sampling as the sampler options say)" };
    public Option<int> Beams { get; } = new("--beams") { Description = "beam, diverse-beam: beams in all", DefaultValueFactory = _ => 4 };
    public Option<int?> BeamGroups { get; } = new("--beam-groups") { Description = "diverse-beam: groups (default 2; must divide --beams)" };
    public Option<float?> Diversity { get; } = new("--diversity") { Description = "diverse-beam: Hamming diversity penalty λ (default 0.5)" };
    public Option<float> LengthPenalty { get; } = new("--length-penalty") { Description = "beam, diverse-beam: length normalization exponent", DefaultValueFactory = _ => 1f };
    public Option<int> NBest { get; } = new("--n-best") { Description = "beam, diverse-beam: hypotheses printed, best first", DefaultValueFactory = _ => 1 };
    public Option<bool> NoEarlyStopping { get; } = new("--no-early-stopping") { Description = "beam, diverse-beam: search on until no running beam can beat a finished one" };
    public Option<float> PenaltyAlpha { get; } = new("--penalty-alpha") { Description = "contrastive: degeneration penalty α", DefaultValueFactory = _ => 0.6f };
    public Option<float?> Alpha { get; } = new("--alpha") { Description = "cad: α of (1+α)·l(y|c,x) − α·l(y|x) (default 0.5); contrastive-decoding: plausibility threshold (default 0.1)" };
    public Option<string?> Context { get; } = new("--context") { Description = "cad, adacad, extract: the context, put before the prompt in the main sequence (extract: the text the answer is a span of)" };
    public Option<string?> NoContextPrompt { get; } = new("--no-context-prompt") { Description = "cad, adacad: the second sequence's text (default: the prompt alone)" };
    public Option<string?> AmateurModel { get; } = new("--amateur-model") { Description = "contrastive-decoding: the amateur model (same vocabulary)" };
    public Option<float> AmateurTemperature { get; } = new("--amateur-temp") { Description = "contrastive-decoding: temperature of the amateur's distribution", DefaultValueFactory = _ => 1f };
    public Option<string?> NegativePrompt { get; } = new("--negative-prompt") { Description = "cfg: the prompt guided away from (default: none, BOS only)" };
    public Option<float> GuidanceScale { get; } = new("--guidance-scale") { Description = "cfg: γ (1 = no guidance)", DefaultValueFactory = _ => 1.5f };
    public Option<int> Trials { get; } = new("--trials") { Description = "cautious: most trials at an uncertain step", DefaultValueFactory = _ => 4 };
    public Option<float> EntropyThreshold { get; } = new("--entropy-threshold") { Description = "cautious: entropy (nats) above which a step is uncertain", DefaultValueFactory = _ => 1.5f };
    public Option<int> TrialLength { get; } = new("--trial-length") { Description = "cautious: most tokens per trial", DefaultValueFactory = _ => 16 };

    public IEnumerable<Option> All => [Strategy, Beams, BeamGroups, Diversity, LengthPenalty, NBest, NoEarlyStopping, PenaltyAlpha, Alpha, Context,
        NoContextPrompt, AmateurModel, AmateurTemperature, NegativePrompt, GuidanceScale, Trials, EntropyThreshold, TrialLength];

    /// <summary>The strategies each option belongs to (<c>--top-k</c>, shared with sampling, is checked by the caller).</summary>
    private Dictionary<Option, string[]> Owners() => new()
    {
        [Beams] = ["beam", "diverse-beam"],
        [BeamGroups] = ["beam", "diverse-beam"],
        [Diversity] = ["diverse-beam"],
        [LengthPenalty] = ["beam", "diverse-beam"],
        [NBest] = ["beam", "diverse-beam"],
        [NoEarlyStopping] = ["beam", "diverse-beam"],
        [PenaltyAlpha] = ["contrastive"],
        [Alpha] = ["cad", "contrastive-decoding"],
        [Context] = ["cad", "adacad", "extract"],
        [NoContextPrompt] = ["cad", "adacad"],
        [AmateurModel] = ["contrastive-decoding"],
        [AmateurTemperature] = ["contrastive-decoding"],
        [NegativePrompt] = ["cfg"],
        [GuidanceScale] = ["cfg"],
        [Trials] = ["cautious"],
        [EntropyThreshold] = ["cautious"],
        [TrialLength] = ["cautious"],
    };

    private static bool Given(ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };

    /// <summary>The chosen strategy's name (null: plain sampling), after checking that every strategy option given belongs to it.</summary>
    public string? Name(ParseResult parse)
    {
        string? name = parse.GetValue(Strategy)?.Trim().ToLowerInvariant();
        if (name is not null && !Names.Contains(name))
            throw new ArgumentException($"--strategy {name}: unknown (known: {string.Join(", ", Names)})");
        foreach (var (option, owners) in Owners())
        {
            if (Given(parse, option) && (name is null || !owners.Contains(name)))
                throw new ArgumentException($"{option.Name} is an option of --strategy {string.Join(" or ", owners)}, not of {(name is null ? "plain sampling" : "--strategy " + name)}");
        }
        return name;
    }

    /// <summary>
    /// Builds the strategy. <paramref name="prompt"/> is the text prompt (null when ids were given, which
    /// CAD cannot split from a context); returns the strategy, the main sequence's ids and the amateur
    /// model to dispose (if any).
    /// </summary>
    public (DecodingStrategy Strategy, List<int> Prompt, LanguageModel? Amateur) Create(ParseResult parse, string name, LanguageModel lm,
        string? prompt, List<int> promptIds, SamplingOptions sampling, int topK, bool topKGiven, ModelOptions amateurOptions, bool benchmark = false)
    {
        var tokenizer = lm.Tokenizer;
        List<int> Encode(string text) => tokenizer.Encode(text, addSpecial: true, parseSpecial: true);
        switch (name)
        {
            case "beam":
            case "diverse-beam":
            {
                int groups = parse.GetValue(BeamGroups) ?? (name == "diverse-beam" ? 2 : 1);
                var options = new BeamSearchOptions
                {
                    Beams = parse.GetValue(Beams),
                    Groups = groups,
                    DiversityPenalty = parse.GetValue(Diversity) ?? (groups > 1 ? 0.5f : 0f),
                    LengthPenalty = parse.GetValue(LengthPenalty),
                    NBest = parse.GetValue(NBest),
                    EarlyStopping = !parse.GetValue(NoEarlyStopping),
                };
                return (new BeamSearch(lm, options), promptIds, null);
            }
            case "contrastive":
                return (new ContrastiveSearch(lm, parse.GetValue(PenaltyAlpha), topKGiven ? topK : 4), promptIds, null);
            case "cad":
            case "adacad":
            {
                var kind = name == "cad" ? Guidance.ContextAware : Guidance.AdaptiveContextAware;
                if (benchmark && parse.GetValue(Context) is null)
                {
                    // bench's random prompt: its first half stands for the context, the second sequence reads only the rest
                    List<int> rest = [.. promptIds.Take(1), .. promptIds.Skip(Math.Max(1, promptIds.Count / 2))];
                    return (new GuidedDecoding(lm, kind, rest, parse.GetValue(Alpha) ?? 0.5f, sampling), promptIds, null);
                }
                string context = parse.GetValue(Context) ?? throw new ArgumentException($"--strategy {name} needs --context (the text the answer should rely on)");
                if (prompt is null)
                    throw new ArgumentException($"--strategy {name} needs --prompt text (the context is put before it)");
                var contrast = Encode(parse.GetValue(NoContextPrompt) ?? prompt);
                return (new GuidedDecoding(lm, kind, contrast, parse.GetValue(Alpha) ?? 0.5f, sampling), Encode(context + prompt), null);
            }
            case "cfg":
            {
                var negative = parse.GetValue(NegativePrompt) is { } text ? Encode(text)
                    : tokenizer.BosId is int bos ? [bos] : throw new ArgumentException("--strategy cfg needs --negative-prompt (the model has no BOS token to stand for an empty one)");
                return (new GuidedDecoding(lm, Guidance.ClassifierFree, negative, parse.GetValue(GuidanceScale), sampling), promptIds, null);
            }
            case "contrastive-decoding":
            {
                string path = parse.GetValue(AmateurModel) ?? throw new ArgumentException("--strategy contrastive-decoding needs --amateur-model");
                var amateur = LanguageModel.Load(path, amateurOptions with { ContextLength = lm.ContextLength });
                try
                {
                    return (new ContrastiveDecoding(lm, amateur, parse.GetValue(Alpha) ?? 0.1f, parse.GetValue(AmateurTemperature), sampling), promptIds, amateur);
                }
                catch
                {
                    amateur.Dispose();
                    throw;
                }
            }
            case "extract":
            {
                if (benchmark && parse.GetValue(Context) is null)
                    return (new SpanExtraction(lm, [.. promptIds.Skip(tokenizer.BosId is null ? 0 : 1)], sampling), promptIds, null); // bench: a span of the prompt
                string context = parse.GetValue(Context) ?? throw new ArgumentException("--strategy extract needs --context (the text the answer is a span of)");
                var source = tokenizer.Encode(context, addSpecial: false, parseSpecial: false);
                var main = prompt is null ? promptIds : Encode(context + prompt);
                return (new SpanExtraction(lm, source, sampling), main, null);
            }
            case "cautious":
                return (new CautiousDecoding(lm, new CautiousOptions
                {
                    MaxTrials = parse.GetValue(Trials),
                    EntropyThreshold = parse.GetValue(EntropyThreshold),
                    MaxTrialTokens = parse.GetValue(TrialLength),
                    Sampling = sampling,
                }), promptIds, null);
            default:
                throw new ArgumentException($"--strategy {name}: unknown (known: {string.Join(", ", Names)})");
        }
    }
}
