using System.CommandLine;
using System.Globalization;
using Engine.Api;
using Engine.Sampling;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine generate</c>: streams a continuation of a prompt to stdout (or only the generated ids with
/// <c>--ids</c>) and a stats line to stderr.
/// </summary>
internal static class GenerateCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Prompt text (BOS is added as the model's metadata says)" };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "Prompt as space-separated token ids, used exactly as given" };
        var count = new Option<int>("--n-predict", "-n") { Description = "Tokens to generate", DefaultValueFactory = _ => 128 };
        var temperature = new Option<float>("--temp") { Description = "Temperature (0 = greedy)", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "Top-k (0 = off)", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "Top-p (1 = off)", DefaultValueFactory = _ => 0.95f };
        var minP = new Option<float>("--min-p") { Description = "Min-p: drop tokens below this share of the most likely one's probability (0 = off)", DefaultValueFactory = _ => 0f };
        var seed = new Option<ulong?>("--seed") { Description = "Random seed (default: random)" };
        var threads = SharedOptions.Threads();
        var device = SharedOptions.Device();
        var graphs = SharedOptions.CudaGraphs();
        var context = new Option<int>("--ctx", "-c") { Description = "Context size in tokens (default: the model's, at most 4096)" };
        var cacheType = SharedOptions.CacheType();
        var noWarmup = SharedOptions.NoWarmup();
        var ids = new Option<bool>("--ids") { Description = "Print only the generated token ids, space separated" };
        var spec = new Option<string?>("--spec") { Description = "Speculative decoding: draft, layerskip, lookup, recycle, rsd or online (lossless)" };
        var draftModel = SharedOptions.DraftModel();
        var draftMax = SharedOptions.DraftMax();
        var tree = SharedOptions.Tree();
        var layers = SharedOptions.Layers();
        var fixedBudget = SharedOptions.FixedBudget();
        var lossy = SharedOptions.LossyTypical();
        var ngramCache = SharedOptions.NgramCache();
        var samplers = new SamplerFlags();
        var strategies = new StrategyFlags();
        var grammarText = new Option<string?>("--grammar") { Description = "Constrain the output to a GBNF grammar (llama.cpp's format; generation starts at rule 'root')" };
        var grammarFile = new Option<string?>("--grammar-file") { Description = "File holding the GBNF grammar" };
        var jsonSchema = new Option<string?>("--json-schema") { Description = "Constrain the output to JSON valid under this schema (JSON text, or @FILE)" };
        var regex = new Option<string?>("--regex") { Description = "Constrain the output to a regular expression (the whole text matches)" };
        var grammarSampling = new Option<string>("--grammar-sampling") { Description = "mask (default: constrained decoding) or asap (grammar-aligned sampling: the model's distribution conditioned on the grammar)", DefaultValueFactory = _ => "mask" };
        var asapSamples = new Option<int>("--asap-samples") { Description = "asap: samples drawn to learn the grammaticality estimates before the one printed", DefaultValueFactory = _ => 64 };

        var command = new Command("generate", "Generate text from a prompt")
        {
            model, prompt, promptIds, count, temperature, topK, topP, minP, seed, threads, device, graphs, cacheType, noWarmup, context, ids,
            spec, draftModel, draftMax, tree, layers, fixedBudget, lossy, ngramCache, grammarText, grammarFile, jsonSchema, regex, grammarSampling, asapSamples,
        };
        foreach (var option in samplers.All.Concat(strategies.All))
            command.Options.Add(option);
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            string? text = parse.GetValue(prompt);
            string? idText = parse.GetValue(promptIds);
            if ((text is null) == (idText is null))
                throw new ArgumentException("give exactly one of --prompt (-p) and --prompt-ids");
            var grammar = GrammarOption.Load(parse.GetValue(grammarText), parse.GetValue(grammarFile), parse.GetValue(jsonSchema), parse.GetValue(regex)); // before the model: a bad grammar fails fast
            var options = new GenerationOptions
            {
                Grammar = grammar,
                MaxTokens = parse.GetValue(count),
                Sampling = samplers.Apply(parse, new SamplingOptions
                {
                    Temperature = parse.GetValue(temperature),
                    TopK = parse.GetValue(topK),
                    TopP = parse.GetValue(topP),
                    MinP = parse.GetValue(minP),
                    Seed = parse.GetValue(seed) ?? (ulong)Random.Shared.NextInt64(),
                }),
            };
            options.Validate();
            int threadCount = parse.GetValue(threads);
            if (threadCount < 1)
                throw new ArgumentException($"--threads {threadCount} must be at least 1");

            List<int>? givenIds = idText is not null ? ParseIds(idText) : null;
            string? strategyName = strategies.Name(parse);
            if (grammar is not null && strategyName == "cautious")
                throw new ArgumentException("--grammar cannot be combined with --strategy cautious yet");
            if (strategyName is not null && parse.GetValue(spec) is not null)
                throw new ArgumentException($"--strategy {strategyName} and --spec cannot be combined (speculative decoding accelerates plain sampling)");

            using var lm = SharedOptions.Load(io, parse.GetRequiredValue(model), SharedOptions.ModelOptions(parse.GetRequiredValue(device), threadCount, parse.GetValue(graphs), parse.GetRequiredValue(cacheType)) with { ContextLength = parse.GetValue(context), WarmUp = !parse.GetValue(noWarmup) });
            var tokenizer = lm.Tokenizer;
            List<int> promptTokens = givenIds ?? tokenizer.Encode(text!, addSpecial: true, parseSpecial: true);
            string how = parse.GetValue(grammarSampling)!.Trim().ToLowerInvariant();
            if (how is not ("mask" or "asap"))
                throw new ArgumentException($"--grammar-sampling {how}: expected mask or asap");
            if (how == "asap")
            {
                if (strategyName is not null)
                    throw new ArgumentException($"--grammar-sampling asap cannot be combined with --strategy {strategyName} (ASAp samples the model's own distribution)");
                if (grammar is null)
                    throw new ArgumentException("--grammar-sampling asap needs a grammar (--grammar, --grammar-file, --json-schema or --regex)");
                if (parse.GetResult(temperature) is { Implicit: false } && parse.GetValue(temperature) != 1f)
                    throw new ArgumentException("--grammar-sampling asap samples the model's own distribution: --temp must be 1");
                int budget = parse.GetValue(asapSamples);
                if (budget < 1 || budget > 100_000)
                    throw new ArgumentException($"--asap-samples {budget} must be 1..100000");
                using var asap = new Engine.Constraints.GrammarAlignedSampler(lm, grammar, promptTokens, Math.Min(options.MaxTokens, lm.ContextLength - promptTokens.Count));
                var rng = new Random(unchecked((int)options.Sampling.Seed));
                IReadOnlyList<int> sample = [];
                for (int i = 0; i < budget; i++)
                    sample = asap.Sample(rng);
                var d = tokenizer.CreateStreamingDetokenizer();
                var written = new System.Text.StringBuilder();
                foreach (int t in parse.GetValue(ids) ? [] : promptTokens.Concat(sample))
                    written.Append(d.Push(t));
                io.Out.WriteLine(parse.GetValue(ids) ? string.Join(' ', sample) : written.Append(d.Flush()).ToString());
                io.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"grammar-aligned sampling (ASAp): {budget} samples, estimated P(grammatical) {asap.Grammaticality:G4} | seed: {options.Sampling.Seed} | {Where(lm, threadCount)}"));
                return 0;
            }
            if (strategyName is not null)
            {
                var (strategy, mainPrompt, amateur) = strategies.Create(parse, strategyName, lm, text, promptTokens, options.Sampling,
                    parse.GetValue(topK), parse.GetResult(topK) is { Implicit: false }, SharedOptions.ModelOptions(parse.GetRequiredValue(device), threadCount));
                strategy.Grammar = grammar;
                using (amateur)
                    return RunStrategy(io, lm, strategy, mainPrompt, options.MaxTokens, parse.GetValue(ids), threadCount);
            }
            string? method = parse.GetValue(spec);
            using var setup = method is null ? null : SpeculativeSetup.Create(method, lm, parse.GetValue(draftModel), parse.GetValue(draftMax),
                parse.GetValue(tree), parse.GetValue(layers), parse.GetValue(fixedBudget), parse.GetValue(lossy), parse.GetValue(ngramCache), threadCount, parse.GetRequiredValue(device));
            using var decoder = setup is null ? null : new Engine.Speculative.SpeculativeDecoder(lm, setup.Source, setup.Options);
            using var session = lm.CreateSession();
            bool onlyIds = parse.GetValue(ids);
            var output = io.Out;
            var detokenizer = tokenizer.CreateStreamingDetokenizer();
            if (!onlyIds)
            {
                foreach (int t in promptTokens)
                    output.Write(detokenizer.Push(t));
            }
            bool first = true;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var stream = decoder is null ? session.Generate(promptTokens, options) : decoder.Generate(promptTokens, options);
            foreach (int token in stream)
            {
                if (onlyIds)
                {
                    output.Write(first ? token.ToString(CultureInfo.InvariantCulture) : " " + token.ToString(CultureInfo.InvariantCulture));
                    first = false;
                }
                else
                    output.Write(detokenizer.Push(token));
                output.Flush();
            }
            if (!onlyIds)
                output.Write(detokenizer.Flush());
            output.WriteLine();
            output.Flush();

            if (decoder is not null)
            {
                setup!.Save();
                var s = decoder.Stats;
                io.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"speculative ({setup.Source.Name}{(setup.Options.LossyTypicalAcceptance ? ", LOSSY typical acceptance" : "")}): {s.GeneratedTokens} tokens in {clock.Elapsed.TotalSeconds:F2} s, {s.GeneratedTokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9):F1} tokens/s | steps: {s.Steps}, tau {s.Tau:F2}, acceptance {s.AcceptanceRate:P0} | seed: {options.Sampling.Seed} | {Where(lm, threadCount)}"));
                return 0;
            }
            var stats = session.LastStats!;
            io.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"prompt: {stats.PromptTokens} tokens, {stats.PromptTokensPerSecond:F1} tokens/s | generation: {stats.GeneratedTokens} tokens, {stats.GenerationTokensPerSecond:F1} tokens/s | stop: {stats.StopReason} | seed: {options.Sampling.Seed} | {Where(lm, threadCount)}"));
            return 0;
        }));
        return command;
    }

    /// <summary>Streams a strategy's tokens (beam search: its n-best list, best first) and a stats line.</summary>
    private static int RunStrategy(CliOutput io, LanguageModel lm, Engine.Decoding.DecodingStrategy strategy, List<int> prompt, int maxTokens, bool onlyIds, int threads)
    {
        var output = io.Out;
        var tokenizer = lm.Tokenizer;
        string Text(IEnumerable<int> tokens)
        {
            var d = tokenizer.CreateStreamingDetokenizer();
            var sb = new System.Text.StringBuilder();
            foreach (int t in tokens)
                sb.Append(d.Push(t));
            return sb.Append(d.Flush()).ToString();
        }
        string Ids(IEnumerable<int> tokens) => string.Join(' ', tokens.Select(t => t.ToString(CultureInfo.InvariantCulture)));
        if (strategy is Engine.Decoding.BeamSearch beam && beam.Options.NBest > 1)
        {
            var hypotheses = beam.Search(prompt, maxTokens);
            for (int i = 0; i < hypotheses.Count; i++)
            {
                var h = hypotheses[i];
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"#{i + 1} score {h.Score:F4} log-prob {h.LogProb:F4} group {h.Group}{(h.Finished ? "" : " (cut at the limit)")}: {(onlyIds ? Ids(h.Tokens) : Text(prompt.Concat(h.Tokens)))}"));
            }
        }
        else
        {
            var detokenizer = tokenizer.CreateStreamingDetokenizer();
            if (!onlyIds)
            {
                foreach (int t in prompt)
                    output.Write(detokenizer.Push(t));
            }
            bool first = true;
            foreach (int token in strategy.Generate(prompt, maxTokens))
            {
                output.Write(onlyIds ? (first ? "" : " ") + token.ToString(CultureInfo.InvariantCulture) : detokenizer.Push(token));
                first = false;
                output.Flush();
            }
            if (!onlyIds)
                output.Write(detokenizer.Flush());
            output.WriteLine();
        }
        output.Flush();
        var s = strategy.LastStats!;
        io.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"strategy {strategy.Name}: prompt {s.PromptTokens} tokens in {s.PromptTime.TotalSeconds:F2} s | generation: {s.GeneratedTokens} tokens, {s.GenerationTokensPerSecond:F1} tokens/s | passes {s.Passes}, rows {s.Rows} | {Where(lm, threads)}"));
        return 0;
    }

    /// <summary>"1 2 3" → [1, 2, 3]; anything else is an error naming the bad item.</summary>
    internal static List<int> ParseIds(string text)
    {
        var result = new List<int>();
        foreach (string item in text.Split([' ', ',', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out int id))
                throw new ArgumentException($"--prompt-ids: '{item}' is not a token id");
            result.Add(id);
        }
        if (result.Count == 0)
            throw new ArgumentException("--prompt-ids: no token ids given");
        return result;
    }

    /// <summary>"threads: 2" on the CPU, "device: cuda:0" on a GPU.</summary>
    internal static string Where(LanguageModel lm, int threads) => lm.Backend.Name == "cpu" ? $"threads: {threads}" : $"device: {lm.Backend.Name}";
}
