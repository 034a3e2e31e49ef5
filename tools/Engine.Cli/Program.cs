using System.CommandLine;
using System.Text;
using Engine.Cli;
using Engine.Cli.Commands;

// engine: the command-line front end. Each subcommand lives in Commands/; errors become one line on
// stderr and a non-zero exit code (a stack trace only with --verbose).
Console.OutputEncoding = new UTF8Encoding(false);
var root = new RootCommand("Engine: LLM inference and decoding on the CPU and NVIDIA GPUs.");
root.Options.Add(CliErrors.Verbose);
root.Subcommands.Add(GenerateCommand.Create());
root.Subcommands.Add(TokenizeCommand.Create());
root.Subcommands.Add(InspectCommand.Create());
var parsed = root.Parse(args);
return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
