using System.CommandLine;
using Engine.Formats;

namespace Engine.Cli;

/// <summary>Turns exceptions from a command into one line on stderr and an exit code.</summary>
internal static class CliErrors
{
    public static readonly Option<bool> Verbose = new("--verbose") { Description = "Print stack traces on errors", Recursive = true };

    /// <summary>Exit code of a command that failed (System.CommandLine uses 1 for parse errors too).</summary>
    public const int Failure = 1;

    public static int Run(CliOutput io, ParseResult parse, Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is not OutOfMemoryException || e is InsufficientMemoryException) // our own memory checks, not the runtime out of heap
        {
            io.Out.Flush();
            io.Error.WriteLine($"engine: error: {Describe(e)}");
            if (parse.GetValue(Verbose))
                io.Error.WriteLine(e);
            return Failure;
        }
    }

    private static string Describe(Exception e) => e switch
    {
        ModelFormatException m => m.Message,
        Hub.HubException h => h.Message,
        FileNotFoundException f => f.Message,
        DirectoryNotFoundException d => d.Message,
        AggregateException { InnerException: { } inner } => Describe(inner),
        UnauthorizedAccessException or IOException => e.Message,
        Cuda.CudaException c => c.Message,
        InsufficientMemoryException m => m.Message,
        ArgumentException a => a.ParamName is null ? a.Message : a.Message.Replace($" (Parameter '{a.ParamName}')", "", StringComparison.Ordinal),
        _ => $"{e.GetType().Name}: {e.Message}",
    };
}
