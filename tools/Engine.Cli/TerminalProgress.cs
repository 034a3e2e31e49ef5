using Spectre.Console;

namespace Engine.Cli;

/// <summary>
/// Progress bars on stderr for long local work (quantize, synth, convert, load, pull), only where stderr
/// is a terminal: redirected output and the tests see no control sequences.
/// </summary>
internal static class TerminalProgress
{
    /// <summary>Whether a bar may be drawn: the command writes to the real stderr and it is a terminal.</summary>
    public static bool Available(CliOutput io) => ReferenceEquals(io.Error, Console.Error) && !Console.IsErrorRedirected;

    /// <summary>Runs <paramref name="work"/> with one byte-count bar labelled <paramref name="label"/> (no bar, a null progress, where none may be drawn).</summary>
    public static T Run<T>(CliOutput io, string label, Func<IProgress<(long Done, long Total)>?, T> work) =>
        Run(io, bars => work(bars?.Invoke(label)));

    /// <summary>
    /// Runs <paramref name="work"/> with a bar per label it asks for (one per downloaded file, say); it gets
    /// null where no bar may be drawn. Reports may come from any thread.
    /// </summary>
    public static T Run<T>(CliOutput io, Func<Func<string, IProgress<(long Done, long Total)>>?, T> work)
    {
        if (!Available(io))
            return work(null);
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        T result = default!;
        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var bars = new Dictionary<string, ProgressTask>();
                IProgress<(long Done, long Total)> Bar(string label)
                {
                    lock (bars)
                    {
                        if (!bars.TryGetValue(label, out var task))
                            bars[label] = task = ctx.AddTask(label, maxValue: 1);
                        return new Callback(p =>
                        {
                            task.MaxValue = Math.Max(1, p.Total);
                            task.Value = p.Done;
                        });
                    }
                }
                result = work(Bar);
                lock (bars)
                {
                    foreach (var task in bars.Values)
                        task.Value = task.MaxValue;
                }
            });
        return result;
    }

    /// <summary>Reported on the working thread itself (no synchronization context to post to).</summary>
    private sealed class Callback(Action<(long Done, long Total)> report) : IProgress<(long Done, long Total)>
    {
        public void Report((long Done, long Total) value) => report(value);
    }
}
