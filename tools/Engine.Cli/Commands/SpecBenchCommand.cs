using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Engine.Api;
using Engine.Backends;
using Engine.Sampling;
using Engine.Speculative;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine spec-bench</c>: plain decoding and speculative decoding on the same prompts in one run, per
/// method: τ (tokens per verification), acceptance rate, tokens/s of both, the speedup, and whether the
/// greedy outputs were identical. <c>--verify-cost</c> instead measures what verifying N tokens costs
/// relative to one decode step, with exact (row-by-row) and batched verification.
/// </summary>
internal static class SpecBenchCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var method = new Option<string>("--method") { Description = "A method (draft, layerskip, lookup, recycle, rsd, online) or all", DefaultValueFactory = _ => "all" };
        var prompts = new Option<string?>("--prompts") { Description = "Text file, one prompt per line" };
        var count = new Option<int>("--n-predict", "-n") { Description = "Tokens to generate per prompt", DefaultValueFactory = _ => 128 };
        var temperature = new Option<float>("--temp") { Description = "Temperature (0 = greedy)", DefaultValueFactory = _ => 0f };
        var seed = new Option<ulong>("--seed") { Description = "Seed for sampling", DefaultValueFactory = _ => 1 };
        var threads = SharedOptions.Threads();
        var device = SharedOptions.Device();
        var cacheType = SharedOptions.CacheType();
        var json = new Option<bool>("--json") { Description = "One JSON object per line per method" };
        var draftModel = SharedOptions.DraftModel();
        var draftMax = SharedOptions.DraftMax();
        var tree = SharedOptions.Tree();
        var layers = SharedOptions.Layers();
        var fixedBudget = SharedOptions.FixedBudget();
        var verifyCost = new Option<string?>("--verify-cost") { Description = "Measure verification cost for these tree sizes instead, e.g. 1,2,4,8,16,32,64" };
        var repetitions = new Option<int>("--repetitions", "-r") { Description = "Repetitions for --verify-cost", DefaultValueFactory = _ => 5 };
        var command = new Command("spec-bench", "Speculative decoding against plain decoding on the same prompts")
        {
            model, method, prompts, count, temperature, seed, threads, device, cacheType, json, draftModel, draftMax, tree, layers, fixedBudget, verifyCost, repetitions,
        };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            int threadCount = parse.GetValue(threads);
            if (threadCount < 1)
                throw new ArgumentException($"--threads {threadCount} must be at least 1");
            using var lm = SharedOptions.Load(io, parse.GetRequiredValue(model), SharedOptions.ModelOptions(parse.GetRequiredValue(device), threadCount, cacheType: parse.GetRequiredValue(cacheType)));
            if (parse.GetValue(verifyCost) is { } sizes)
                return VerifyCost(io, lm, sizes, parse.GetValue(repetitions), parse.GetValue(json));

            string promptFile = parse.GetValue(prompts) ?? throw new ArgumentException("--prompts is required (a text file, one prompt per line)");
            var lines = File.ReadAllLines(promptFile).Where(l => l.Trim().Length > 0).ToList();
            if (lines.Count == 0)
                throw new ArgumentException($"--prompts {promptFile}: no prompts in the file");
            int n = parse.GetValue(count);
            if (n < 1)
                throw new ArgumentException($"--n-predict {n} must be at least 1");
            var sampling = new SamplingOptions { Temperature = parse.GetValue(temperature), TopK = 40, TopP = 0.95f, Seed = parse.GetValue(seed) };
            var options = new GenerationOptions { MaxTokens = n, Sampling = sampling, StopAtEndOfGeneration = false };
            options.Validate();
            var promptIds = lines.Select(l => lm.Tokenizer.Encode(l, addSpecial: true, parseSpecial: false).ToArray()).ToList();
            string m = parse.GetRequiredValue(method);
            var methods = m == "all" ? DraftSources.Methods.Where(x => x is not ("draft" or "rsd") || parse.GetValue(draftModel) is not null).ToList() : [m];
            bool asJson = parse.GetValue(json);
            if (!asJson)
            {
                io.Out.WriteLine($"| method | tau | acceptance | tokens verified per step | plain tok/s | spec tok/s | speedup | identical |");
                io.Out.WriteLine("|---|---:|---:|---:|---:|---:|---:|---|");
            }
            foreach (string name in methods)
            {
                using var setup = SpeculativeSetup.Create(name, lm, parse.GetValue(draftModel), parse.GetValue(draftMax), parse.GetValue(tree),
                    parse.GetValue(layers), parse.GetValue(fixedBudget), lossy: false, ngramCache: null, threadCount, parse.GetRequiredValue(device));
                using var decoder = new SpeculativeDecoder(lm, setup.Source, setup.Options);
                double plainSeconds = 0, specSeconds = 0;
                int plainTokens = 0, specTokens = 0, steps = 0, drafted = 0, accepted = 0;
                bool identical = true;
                // BlockFFN: the sparsity plain decoding met and the one verification met (passes of the draft's size)
                var sparsity = lm.Network.BlockSparsity;
                var plainSparsity = sparsity is null ? null : new Models.BlockSparsity(sparsity.Layers, sparsity.Blocks);
                var specSparsity = sparsity is null ? null : new Models.BlockSparsity(sparsity.Layers, sparsity.Blocks);
                foreach (var ids in promptIds)
                {
                    // plain and speculative back to back, so a noisy machine slows both alike
                    using var session = lm.CreateSession();
                    var clock = Stopwatch.StartNew();
                    sparsity?.Reset();
                    var plain = session.Generate(ids, options).ToList();
                    plainSeconds += clock.Elapsed.TotalSeconds;
                    plainSparsity?.Add(sparsity!);
                    sparsity?.Reset();
                    plainTokens += plain.Count;
                    clock.Restart();
                    var spec = decoder.Generate(ids, options).ToList();
                    specSeconds += clock.Elapsed.TotalSeconds;
                    specSparsity?.Add(sparsity!);
                    specTokens += spec.Count;
                    var s = decoder.Stats;
                    steps += s.Steps;
                    drafted += s.DraftedTokens;
                    accepted += s.AcceptedTokens;
                    identical &= plain.SequenceEqual(spec);
                }
                double tau = steps == 0 ? 0 : (double)(accepted + steps) / steps;
                double rate = drafted == 0 ? 0 : (double)accepted / drafted;
                double verified = steps == 0 ? 0 : (double)(drafted + steps) / steps; // the root plus the draft
                double plainRate = plainTokens / plainSeconds, specRate = specTokens / specSeconds;
                bool? same = sampling.Temperature == 0 ? identical : null; // sampled outputs use the generator differently
                if (asJson)
                {
                    io.Out.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object?>
                    {
                        ["method"] = name, ["tau"] = tau, ["acceptance_rate"] = rate, ["plain_tokens_per_s"] = plainRate,
                        ["spec_tokens_per_s"] = specRate, ["speedup"] = specRate / plainRate, ["identical"] = same,
                        ["steps"] = steps, ["verified_per_step"] = verified, ["drafted"] = drafted, ["accepted"] = accepted, ["prompts"] = promptIds.Count,
                        ["n_predict"] = n, ["temperature"] = sampling.Temperature, ["threads"] = threadCount,
                        ["plain_block_sparsity"] = plainSparsity?.Describe(), ["spec_block_sparsity"] = specSparsity?.Describe(),
                    }));
                }
                else
                {
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {name} | {tau:F2} | {rate:P0} | {verified:F1} | {plainRate:F1} | {specRate:F1} | {specRate / plainRate:F2}x | {(same is null ? "n/a (sampling)" : same.Value ? "yes" : "NO")} |"));
                }
                if (!asJson && plainSparsity is not null)
                    io.Out.WriteLine($"  {name}: block sparsity, plain decoding: {plainSparsity.Describe()}; speculative: {specSparsity!.Describe()}");
                io.Out.Flush();
                if (same == false)
                    io.Error.WriteLine($"spec-bench: {name}: greedy output differs from plain decoding");
            }
            return 0;
        }));
        return command;
    }

    /// <summary>Time of one verification pass over N tree tokens (a chain after a 64-token context) relative to one decode step.</summary>
    private static int VerifyCost(CliOutput io, LanguageModel lm, string sizes, int repetitions, bool json)
    {
        var ns = sizes.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v >= 1 && v < lm.Network.MaxBatch
                ? v : throw new ArgumentException($"--verify-cost: '{s}' is not a size from 1 to {lm.Network.MaxBatch - 1}"))
            .ToList();
        if (repetitions < 1)
            throw new ArgumentException($"--repetitions {repetitions} must be at least 1");
        var net = lm.Network;
        int vocab = lm.Config.VocabSize;
        const int context = 64;
        using var cache = net.CreateKvCache(context + 128);
        using var seq = cache.CreateSequence();
        var rng = new Random(1);
        var prompt = Enumerable.Range(0, context).Select(_ => rng.Next(vocab)).ToArray();
        var logits = new float[128 * vocab];
        net.Forward(seq, prompt, Enumerable.Range(0, context).ToArray(), AttentionMask.Causal, [context - 1], logits.AsSpan(0, vocab));

        double Measure(int n, bool exact)
        {
            var tokens = Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
            var positions = Enumerable.Range(context, n).ToArray();
            var parents = Enumerable.Range(-1, n).ToArray(); // a chain; a tree of the same size costs the same
            var mask = n == 1 ? AttentionMask.Causal : AttentionMask.FromParents(parents);
            var rows = Enumerable.Range(0, n).ToArray();
            var nodeParents = Enumerable.Range(-1, n - 1).ToArray();
            var nodeTokens = tokens[1..];
            var path = new List<int>();
            Span<int> next = stackalloc int[1];
            var times = new List<double>();
            for (int r = 0; r < repetitions + 1; r++)
            {
                var clock = Stopwatch.StartNew();
                if (net.Backend is IDeviceDecoding device)
                {
                    // A whole device step: the pass with its logits kept on the device, then the argmax (one
                    // token) or greedy acceptance of the chain; the host reads back token ids only.
                    var verified = net.ForwardOnDevice(seq, tokens, positions, mask, rows, batchInvariant: exact);
                    if (n == 1)
                        device.ArgMax(verified, next);
                    else
                        device.AcceptGreedy(verified, nodeParents, nodeTokens, path);
                }
                else
                {
                    net.Forward(seq, tokens, positions, mask, rows, logits.AsSpan(0, n * vocab), batchInvariant: exact);
                }
                times.Add(clock.Elapsed.TotalSeconds);
                seq.Truncate(context);
            }
            times.RemoveAt(0); // warm-up
            times.Sort();
            return times[times.Count / 2];
        }

        double one = Measure(1, exact: true);
        if (!json)
        {
            io.Out.WriteLine($"one decode step: {one * 1000:F2} ms (median of {repetitions})");
            io.Out.WriteLine("| tree tokens N | exact verification / decode step | batched verification / decode step |");
            io.Out.WriteLine("|---:|---:|---:|");
        }
        foreach (int n in ns)
        {
            double exact = Measure(n, exact: true) / one, batched = Measure(n, exact: false) / one;
            if (json)
                io.Out.WriteLine(JsonSerializer.Serialize(new { n, exact_cost = exact, batched_cost = batched, decode_step_ms = one * 1000 }));
            else
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {n} | {exact:F2} | {batched:F2} |"));
            io.Out.Flush();
        }
        return 0;
    }
}
