using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Engine.Api;
using Engine.Sampling;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine bench --strategy NAME</c> (or <c>--sampler-chain</c>): the generation speed of a decoding
/// method against plain greedy decoding of the same model, prompt and length, in the same process. Each
/// repetition runs the baseline and then the method, on a random (seeded) prompt of p tokens, n tokens,
/// never stopping at EOS; the warm-up pair is not counted. Reported: medians of tokens/s and the
/// method's time per token as a multiple of greedy's, with its passes and rows per token.
/// </summary>
internal static class StrategyBench
{
    public static int Run(CliOutput io, ParseResult parse, StrategyFlags strategies, string? name, string path, SamplingOptions sampling,
        int topK, bool topKGiven, int p, int n, int r, int threads, string device, bool json)
    {
        using var lm = LanguageModel.Load(path, SharedOptions.ModelOptions(device, threads) with { ContextLength = p + n + 64 });
        var random = new Random(42);
        var promptIds = new List<int>(p);
        if (lm.Tokenizer.BosId is int bos)
            promptIds.Add(bos);
        while (promptIds.Count < p)
            promptIds.Add(random.Next(lm.Config.VocabSize));

        Engine.Decoding.DecodingStrategy? strategy = null;
        LanguageModel? amateur = null;
        var mainPrompt = promptIds;
        if (name is not null)
        {
            (strategy, mainPrompt, amateur) = strategies.Create(parse, name, lm, null, promptIds, sampling, topK, topKGiven,
                SharedOptions.ModelOptions(device, threads), benchmark: true);
            strategy.StopAtEndOfGeneration = false;
        }
        using (amateur)
        {
            var greedy = new GenerationOptions { MaxTokens = n, Sampling = SamplingOptions.Greedy, StopAtEndOfGeneration = false };
            var method = new GenerationOptions { MaxTokens = n, Sampling = sampling, StopAtEndOfGeneration = false };
            var baseline = new double[r];
            var measured = new double[r];
            double passes = 0, rows = 0;
            for (int rep = -1; rep < r; rep++) // rep -1 warms up
            {
                double b, m;
                using (var session = lm.CreateSession())
                {
                    int count = session.Generate(promptIds, greedy).Count();
                    b = count / session.LastStats!.GenerationTime.TotalSeconds;
                }
                if (strategy is null)
                {
                    using var session = lm.CreateSession();
                    int count = session.Generate(promptIds, method).Count();
                    m = count / session.LastStats!.GenerationTime.TotalSeconds;
                }
                else
                {
                    _ = strategy.Generate(mainPrompt, n).Count();
                    var s = strategy.LastStats!;
                    m = s.GeneratedTokens / s.GenerationTime.TotalSeconds;
                    (passes, rows) = (s.Passes / (double)Math.Max(1, s.GeneratedTokens), s.Rows / (double)Math.Max(1, s.GeneratedTokens));
                }
                if (rep >= 0)
                    (baseline[rep], measured[rep]) = (b, m);
            }
            double greedyTps = Median(baseline), methodTps = Median(measured);
            double cost = greedyTps / methodTps; // time per token relative to greedy
            string label = strategy?.Name ?? "sampler-chain";
            string modelName = Path.GetFileName(path.TrimEnd('/'));
            if (json)
            {
                io.Out.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object?>
                {
                    ["model"] = modelName,
                    ["device"] = lm.Backend.Name,
                    ["threads"] = threads,
                    ["method"] = label,
                    ["n_prompt"] = p,
                    ["n_gen"] = n,
                    ["repetitions"] = r,
                    ["greedy_tokens_per_s"] = greedyTps,
                    ["method_tokens_per_s"] = methodTps,
                    ["time_per_token_vs_greedy"] = cost,
                    ["passes_per_token"] = strategy is null ? 1 : passes,
                    ["rows_per_token"] = strategy is null ? 1 : rows,
                }));
            }
            else
            {
                io.Out.WriteLine("| model | method | tg greedy t/s | tg method t/s | time/token vs greedy | passes/token | rows/token |");
                io.Out.WriteLine("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {modelName} | {label} | {greedyTps:F1} | {methodTps:F1} | {cost:F2}× | {(strategy is null ? 1 : passes):F2} | {(strategy is null ? 1 : rows):F2} |"));
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"medians of {r} repetitions, prompt {p} tokens, {n} generated, {GenerateCommand.Where(lm, threads)}"));
            }
        }
        return 0;
    }

    private static double Median(double[] x)
    {
        var sorted = x.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
