using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Engine.Tensors;

namespace Engine.Benchmarks;

/// <summary>
/// Short runs in process (the machine is small: 2 cores), with throughput columns computed from the
/// median time: GB/s of weights and GMAC/s.
/// </summary>
public sealed class KernelConfig : ManualConfig
{
    public KernelConfig()
    {
        AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(10).WithToolchain(InProcessEmitToolchain.Instance));
        AddColumn(new ThroughputColumn("GB/s", "weight bytes read per second (10^9), from the median",
            c => MatMulBenchmarks.WeightBytes((GgmlType)c.Parameters["Type"])));
        AddColumn(new ThroughputColumn("GMAC/s", "multiply-adds per second (10^9), from the median",
            c => (double)MatMulBenchmarks.Rows * MatMulBenchmarks.Cols * (int)c.Parameters["Tokens"]));
        AddColumn(StatisticColumn.Median);
    }
}

/// <summary>An amount of work per benchmark case divided by its median time.</summary>
public sealed class ThroughputColumn(string name, string legend, Func<BenchmarkCase, double> amount) : IColumn
{
    public string Id => name;
    public string ColumnName => name;
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => legend;

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public bool IsAvailable(Summary summary) => true;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var statistics = summary[benchmarkCase]?.ResultStatistics;
        // amount per nanosecond = 10^9 × amount per second
        return statistics is null ? "-" : (amount(benchmarkCase) / statistics.Median).ToString("F1");
    }
}
