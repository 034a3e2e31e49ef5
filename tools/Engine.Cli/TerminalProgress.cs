using Spectre.Console;

namespace Engine.Cli;

/// <summary>
/// A progress bar on stderr for long local work (quantize, synth, convert, pull), only where stderr is
/// a terminal: redirected output and the tests see no control sequences.
/// </summary>
internal static class TerminalProgress
{
    /// <summary>Whether a bar may be drawn: the command writes to the real stderr and it is a terminal.</summary>
    public static bool Available(CliOutput io) => ReferenceEquals(io.Error, Console.Error) && !Console.IsErrorRedirected;

    /// <summary>Runs <paramref name="work"/> with a byte-count bar labelled <paramref name="label"/> (no bar, a null progress, where none may be drawn).</summary>
    public static T Run<T>(CliOutput io, string label, Func<IProgress<(long Done, long Total)>?, T> work)
    {
        if (!Available(io))
            return work(null);
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        T result = default!;
        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(label, maxValue: 1);
                result = work(new Callback(p =>
                {
                    task.MaxValue = Math.Max(1, p.Total);
                    task.Value = p.Done;
                }));
                task.Value = task.MaxValue;
            });
        return result;
    }

    /// <summary>Reported on the working thread itself (no synchronization context to post to).</summary>
    private sealed class Callback(Action<(long Done, long Total)> report) : IProgress<(long Done, long Total)>
    {
        public void Report((long Done, long Total) value) => report(value);
    }
}
