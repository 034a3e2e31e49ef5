using System.Text;

// engine: the command-line front end (see EngineCli for the commands).
Console.OutputEncoding = new UTF8Encoding(false);
return Engine.Cli.EngineCli.Run(args, Console.Out, Console.Error);
