using System.CommandLine;
using Engine.Cli.Commands;

namespace Engine.Cli;

/// <summary>
/// The <c>engine</c> command line. Each subcommand lives in Commands/ and writes to the given writers
/// (so tests run it in-process); errors become one line on stderr and exit code 1, with a stack trace
/// only under <c>--verbose</c>.
/// </summary>
public static class EngineCli
{
    /// <param name="stdin">Where interactive commands (<c>chat</c>) read lines; the console when null.</param>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader? stdin = null)
    {
        var io = new CliOutput(stdout, stderr) { In = stdin ?? Console.In };
        var root = new RootCommand("Engine: LLM inference and decoding on the CPU and NVIDIA GPUs.");
        root.Options.Add(CliErrors.Verbose);
        root.Subcommands.Add(GenerateCommand.Create(io));
        root.Subcommands.Add(ChatCommand.Create(io));
        root.Subcommands.Add(ServeCommand.Create(io));
        root.Subcommands.Add(TokenizeCommand.Create(io));
        root.Subcommands.Add(InspectCommand.Create(io));
        root.Subcommands.Add(BenchCommand.Create(io));
        root.Subcommands.Add(GrammarBenchCommand.Create(io));
        root.Subcommands.Add(PerplexityCommand.Create(io));
        root.Subcommands.Add(QuantizeCommand.Create(io));
        root.Subcommands.Add(ConvertCommand.Create(io));
        root.Subcommands.Add(SynthCommand.Create(io));
        root.Subcommands.Add(SynthVocabCommand.Create(io));
        root.Subcommands.Add(PullCommand.Create(io));
        root.Subcommands.Add(SpecBenchCommand.Create(io));
        root.Subcommands.Add(KernelsBenchCommand.Create(io));
        // no response files: '@FILE' is ours (--json-schema @FILE, --text @FILE), read by the option that takes it
        var parsed = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false, Output = stdout, Error = stderr });
    }
}

/// <summary>Where a command writes (and an interactive one reads).</summary>
public sealed record CliOutput(TextWriter Out, TextWriter Error)
{
    public TextReader In { get; init; } = Console.In;
}
