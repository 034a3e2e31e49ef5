using System.CommandLine;

namespace Engine.Cli.Commands;

/// <summary>Options shared by several commands.</summary>
internal static class SharedOptions
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
}
