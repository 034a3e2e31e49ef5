using BenchmarkDotNet.Running;

// Kernel microbenchmarks. Examples:
//   dotnet run -c Release --project tools/Engine.Benchmarks -- --filter '*'
//   dotnet run -c Release --project tools/Engine.Benchmarks -- --filter '*MatMul*' --anyCategories ... (BenchmarkDotNet options)
BenchmarkSwitcher.FromAssembly(typeof(Engine.Benchmarks.MatMulBenchmarks).Assembly).Run(args);
