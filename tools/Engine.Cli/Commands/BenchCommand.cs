using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Engine.Api;
using Engine.Backends;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine bench</c>, with llama-bench's meaning: pp = prompt tokens/s for one batch of p tokens
/// into an empty context; tg = tokens/s generating n tokens one at a time from an empty context.
/// Tokens are random (seeded), a warm-up run is not counted, and each test repeats r times
/// (mean ± standard deviation).
/// </summary>
internal static class BenchCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var prompt = new Option<int>("--n-prompt", "-p") { Description = "Prompt tokens for pp (0 = skip)", DefaultValueFactory = _ => 128 };
        var gen = new Option<int>("--n-gen", "-n") { Description = "Generated tokens for tg (0 = skip)", DefaultValueFactory = _ => 64 };
        var reps = new Option<int>("--repetitions", "-r") { Description = "Repetitions of each test", DefaultValueFactory = _ => 3 };
        var threads = SharedOptions.Threads();
        var device = SharedOptions.Device();
        var graphs = SharedOptions.CudaGraphs();
        var batch = new Option<int>("--batch", "-b") { Description = "Most tokens per forward pass", DefaultValueFactory = _ => 512 };
        var json = new Option<bool>("--json") { Description = "One JSON object per line" };
        var cacheType = SharedOptions.CacheType();
        var profile = new Option<bool>("--profile") { Description = "Also print the time spent in each backend operation (stderr)" };
        var unfused = new Option<bool>("--unfused") { Description = "On CUDA, launch every step of a layer on its own kernel (the fused kernels' baseline)" };
        var dense = new Option<bool>("--dense-ffn") { Description = "BlockFFN models: compute every block (the dense baseline of the chunk-sparse FFN; same output)" };
        var strategies = new StrategyFlags();
        var samplers = new SamplerFlags();
        var chain = new Option<bool>("--sampler-chain") { Description = "Measure generation with the sampler options given (--temp, --top-k, … and the research samplers) against greedy decoding" };
        var temperature = new Option<float>("--temp") { Description = "--sampler-chain, --strategy: temperature (0 = greedy)", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "--sampler-chain: top-k (0 = off); --strategy contrastive: candidates", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "--sampler-chain: top-p (1 = off)", DefaultValueFactory = _ => 0.95f };
        var minP = new Option<float>("--min-p") { Description = "--sampler-chain: min-p (0 = off)", DefaultValueFactory = _ => 0f };
        var command = new Command("bench", "Measure prompt processing (pp) and generation (tg) speed; with --strategy or --sampler-chain, a decoding method's generation speed against greedy decoding")
        {
            model, prompt, gen, reps, threads, device, graphs, cacheType, batch, json, profile, unfused, dense, chain, temperature, topK, topP, minP,
        };
        foreach (var option in strategies.All.Concat(samplers.All))
            command.Options.Add(option);
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            int p = parse.GetValue(prompt), n = parse.GetValue(gen), r = parse.GetValue(reps), t = parse.GetValue(threads);
            if (p < 0 || n < 0 || r < 1 || t < 1 || parse.GetValue(batch) < 1)
                throw new ArgumentException("-p and -n must not be negative; -r, -t and -b must be at least 1");
            string path = parse.GetRequiredValue(model);
            string? strategyName = strategies.Name(parse);
            if (strategyName is not null || parse.GetValue(chain))
            {
                var sampling = samplers.Apply(parse, new Sampling.SamplingOptions
                {
                    Temperature = parse.GetValue(temperature),
                    TopK = parse.GetValue(topK),
                    TopP = parse.GetValue(topP),
                    MinP = parse.GetValue(minP),
                    Seed = 1,
                });
                sampling.Validate();
                return StrategyBench.Run(io, parse, strategies, strategyName, path, sampling, parse.GetValue(topK), parse.GetResult(topK) is { Implicit: false },
                    Math.Max(p, 1), Math.Max(n, 1), r, t, parse.GetRequiredValue(device), parse.GetValue(json));
            }
            var backend = Cuda.BackendFactory.Create(parse.GetRequiredValue(device), t, parse.GetValue(graphs), SharedOptions.ParseCacheType(parse.GetRequiredValue(cacheType)));
            if (parse.GetValue(unfused))
            {
                if (backend is not Cuda.CudaBackend cuda)
                    throw new ArgumentException("--unfused is for --device cuda (the CPU runs each step on its own)");
                cuda.FuseSteps = false;
            }
            // The profile times each backend call; on a GPU, calls are asynchronous, so it shows launch cost there.
            var profiler = parse.GetValue(profile) ? new ProfilingBackend(backend) : null;
            using var lm = SharedOptions.Load(io, path, new ModelOptions { Threads = t, MaxBatch = parse.GetValue(batch), ContextLength = Math.Max(p, n) + 1, Backend = profiler ?? backend });
            string where = backend.Name == "cpu" ? t.ToString(CultureInfo.InvariantCulture) : backend.Name;
            var sparsity = lm.Network.BlockSparsity;
            if (parse.GetValue(dense))
            {
                if (sparsity is null)
                    throw new ArgumentException("--dense-ffn is for BlockFFN models (arch blockffn)");
                lm.Network.DenseBlockFfn = true;
            }
            var random = new Random(42);
            int Token() => random.Next(lm.Config.VocabSize);

            double[] Measure(int tokens, bool prompt)
            {
                var speeds = new double[r];
                for (int rep = -1; rep < r; rep++) // rep -1 is the warm-up
                {
                    using var cache = lm.Network.CreateKvCache(tokens + 1);
                    using var seq = cache.CreateSequence();
                    var logits = new float[lm.Config.VocabSize];
                    var clock = Stopwatch.StartNew();
                    if (prompt)
                    {
                        var ids = Enumerable.Range(0, tokens).Select(_ => Token()).ToArray();
                        lm.Network.Forward(seq, ids, Enumerable.Range(0, tokens).ToArray(), AttentionMask.Causal, [tokens - 1], logits);
                    }
                    else
                    {
                        for (int i = 0; i < tokens; i++)
                            lm.Network.Forward(seq, [Token()], [i], AttentionMask.Causal, [0], logits);
                    }
                    if (rep >= 0)
                        speeds[rep] = tokens / clock.Elapsed.TotalSeconds;
                    else
                    {
                        profiler?.Reset(); // the profile covers the measured repetitions only
                        sparsity?.Reset();
                    }
                }
                return speeds;
            }

            void Report(string test)
            {
                if (profiler is null)
                    return;
                var totals = profiler.Totals();
                double all = totals.Sum(x => x.Seconds);
                io.Error.WriteLine($"{test}: time per backend operation over {r} repetitions");
                foreach (var (op, seconds, calls) in totals)
                    io.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {op,-16} {seconds * 1000,9:F1} ms {100 * seconds / all,5:F1}%  {calls,7} calls"));
                profiler.Reset();
            }
            var pp = p > 0 ? Measure(p, prompt: true) : [];
            Report($"pp{p}");
            string? ppSparsity = p > 0 ? sparsity?.Describe() : null;
            (object?, object?, object?)? ppLevels = p > 0 && sparsity is not null ? Levels(sparsity) : null;
            var gpu = (backend as Cuda.CudaBackend)?.Device;
            long launchesBefore = gpu?.Launches ?? 0;
            var tg = n > 0 ? Measure(n, prompt: false) : [];
            // Kernel launches per generated token (warm-up included): what CUDA-graph capture would save.
            double launchesPerToken = gpu is null || n == 0 ? 0 : (gpu.Launches - launchesBefore) / (double)((r + 1) * n);
            Report($"tg{n}");
            string? tgSparsity = n > 0 ? sparsity?.Describe() : null;
            (object?, object?, object?)? tgLevels = n > 0 && sparsity is not null ? Levels(sparsity) : null;
            long size = Directory.Exists(path) ? Directory.GetFiles(path, "*.safetensors").Sum(f => Engine.Formats.LinkedFile.Resolve(f).Length) : Engine.Formats.LinkedFile.Resolve(path).Length;
            long rss = Process.GetCurrentProcess().PeakWorkingSet64;
            string name = Path.GetFileName(path.TrimEnd('/'));
            if (parse.GetValue(json))
            {
                var row = new Dictionary<string, object?>
                {
                    ["model"] = name,
                    ["model_size"] = size,
                    ["threads"] = t,
                    ["device"] = backend.Name,
                    ["cache_type"] = (backend is Cuda.CudaBackend cb ? cb.KvCacheType : backend is Engine.Backends.Cpu.CpuBackend cpu ? cpu.KvCacheType : Engine.Tensors.GgmlType.F32).ToString().ToLowerInvariant(),
                    ["n_prompt"] = p,
                    ["n_gen"] = n,
                    ["repetitions"] = r,
                    ["pp_tokens_per_s"] = Mean(pp),
                    ["pp_stddev"] = Std(pp),
                    ["tg_tokens_per_s"] = Mean(tg),
                    ["tg_stddev"] = Std(tg),
                    ["peak_rss_bytes"] = rss,
                };
                if (gpu is not null)
                {
                    row["launches_per_token"] = launchesPerToken;
                    row["cuda_graphs"] = ((Cuda.CudaBackend)backend).UsesCudaGraphs;
                    row["fused_steps"] = ((Cuda.CudaBackend)backend).FuseSteps;
                    row["graph_replays"] = ((Cuda.CudaBackend)backend).GraphStats.Replays;
                    row["graph_instantiations"] = ((Cuda.CudaBackend)backend).GraphStats.Instantiations;
                }
                if (ppLevels is { } ppl)
                    (row["pp_tls"], row["pp_cls8"], row["pp_cls_pass"]) = ppl;
                if (tgLevels is { } tgl)
                    (row["tg_tls"], row["tg_cls8"], row["tg_cls_pass"]) = tgl;
                if (sparsity is not null)
                    row["dense_ffn"] = lm.Network.DenseBlockFfn;
                io.Out.WriteLine(JsonSerializer.Serialize(row));
            }
            else
            {
                io.Out.WriteLine($"| model | size | {(backend.Name == "cpu" ? "threads" : "device")} | test | t/s |");
                io.Out.WriteLine($"| --- | ---: | ---: | ---: | ---: |");
                string sizeText = string.Create(CultureInfo.InvariantCulture, $"{size / 1048576.0:F1} MiB");
                if (p > 0)
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {sizeText} | {where} | pp{p} | {Mean(pp):F2} ± {Std(pp):F2} |"));
                if (n > 0)
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {sizeText} | {where} | tg{n} | {Mean(tg):F2} ± {Std(tg):F2} |"));
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"peak resident memory: {rss / 1048576.0:F0} MiB"));
                if (ppSparsity is not null)
                    io.Out.WriteLine($"pp{p} block sparsity (mean of layers): {ppSparsity}{(lm.Network.DenseBlockFfn ? "; every block computed (--dense-ffn)" : "")}");
                if (tgSparsity is not null)
                    io.Out.WriteLine($"tg{n} block sparsity (mean of layers): {tgSparsity}{(lm.Network.DenseBlockFfn ? "; every block computed (--dense-ffn)" : "")}");
                if (gpu is not null)
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kernel launches per generated token: {launchesPerToken:F0}"));
            }
            return 0;
        }));
        return command;
    }

    /// <summary>Mean TLS, CLS(8) and CLS of the passes as they ran, over the layers (NaN as null for JSON).</summary>
    private static (object?, object?, object?) Levels(Models.BlockSparsity s)
    {
        static object? Mean(Func<int, double> f, int layers)
        {
            var values = Enumerable.Range(0, layers).Select(f).Where(double.IsFinite).ToList();
            return values.Count == 0 ? null : Math.Round(values.Average(), 4);
        }
        return (Mean(s.TokenLevel, s.Layers), Mean(s.ChunkLevel, s.Layers), Mean(s.PassLevel, s.Layers));
    }

    private static double Mean(double[] x) => x.Length == 0 ? 0 : x.Average();

    private static double Std(double[] x)
    {
        if (x.Length < 2)
            return 0;
        double mean = x.Average();
        return Math.Sqrt(x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1));
    }
}
