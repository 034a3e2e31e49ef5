using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Engine.Sampling;

namespace Engine.Benchmarks;

/// <summary>
/// One token's sampling at vocab 32,000 (Llama 2's) on one core: the argmax (what greedy decoding costs),
/// the default chain (temperature, top-k 40, top-p 0.95), the research samplers stacked on it, and
/// Mirostat 2. The logits are fixed and shaped like a model's (a smooth bulk and a 1% head six nats up);
/// each chain has seen 200 tokens of history, so penalties and DRY have work to do. What a chain adds to
/// a token is its time here; a 110M model's decode step is about 3 ms on this machine.
/// Run: dotnet run -c Release --project tools/Engine.Benchmarks -- --filter '*Sampler*'
/// </summary>
[Config(typeof(SamplerConfig))]
public class SamplerBenchmarks
{
    private const int Vocab = 32_000;
    private float[] _logits = [];
    private SamplerChain _default = null!, _research = null!, _mirostat = null!;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        _logits = Enumerable.Range(0, Vocab).Select(_ => (float)(rng.NextDouble() * 8 + (rng.Next(100) == 0 ? 6 : 0))).ToArray();
        var basic = new SamplingOptions { Temperature = 0.8f, TopK = 40, TopP = 0.95f, Seed = 1 };
        _default = Chain(basic, rng);
        _research = Chain(basic with
        {
            MinP = 0.05f, TypicalP = 0.95f, RepeatPenalty = 1.1f, PresencePenalty = 0.5f, FrequencyPenalty = 0.1f,
            DryMultiplier = 0.8f, XtcProbability = 0.5f, TopNSigma = 2f,
        }, rng);
        _mirostat = Chain(basic with { Mirostat = 2 }, rng);
    }

    private SamplerChain Chain(SamplingOptions options, Random rng)
    {
        var chain = SamplerChain.Create(options, Vocab);
        for (int i = 0; i < 200; i++)
            chain.Accept(rng.Next(Vocab));
        return chain;
    }

    [Benchmark(Baseline = true, Description = "argmax (greedy)")]
    public int Argmax() => SamplerChain.Argmax(_logits);

    [Benchmark(Description = "temperature, top-k 40, top-p 0.95")]
    public int Default() => Draw(_default);

    [Benchmark(Description = "+ min-p, typical, penalties, DRY, XTC, top-n-sigma")]
    public int Research() => Draw(_research);

    [Benchmark(Description = "mirostat 2")]
    public int Mirostat() => Draw(_mirostat);

    private int Draw(SamplerChain chain)
    {
        int token = chain.Sample(_logits);
        chain.Accept(token);
        return token;
    }
}

public sealed class SamplerConfig : ManualConfig
{
    public SamplerConfig()
    {
        AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(15).WithToolchain(InProcessEmitToolchain.Instance));
        AddColumn(StatisticColumn.Median);
    }
}
