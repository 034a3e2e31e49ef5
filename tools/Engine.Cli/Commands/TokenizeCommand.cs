using System.CommandLine;
using System.Globalization;
using Engine.Api;

namespace Engine.Cli.Commands;

/// <summary><c>engine tokenize</c>: prints the token ids of a text (works on vocabulary-only GGUF files).</summary>
internal static class TokenizeCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Text to tokenize" };
        var file = new Option<string?>("--file", "-f") { Description = "File whose UTF-8 text to tokenize" };
        var addSpecial = new Option<bool>("--add-special") { Description = "Add BOS/EOS as the model's metadata says" };
        var parseSpecial = new Option<bool>("--parse-special") { Description = "Let special-token text such as <s> become that token" };
        var command = new Command("tokenize", "Print the token ids of a text") { model, prompt, file, addSpecial, parseSpecial };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            string? text = parse.GetValue(prompt);
            string? path = parse.GetValue(file);
            if ((text is null) == (path is null))
                throw new ArgumentException("give exactly one of --prompt (-p) and --file (-f)");
            text ??= File.ReadAllText(path!);
            var tokenizer = LanguageModel.LoadTokenizer(parse.GetRequiredValue(model));
            var ids = tokenizer.Encode(text, parse.GetValue(addSpecial), parse.GetValue(parseSpecial));
            io.Out.WriteLine(string.Join(' ', ids.Select(i => i.ToString(CultureInfo.InvariantCulture))));
            return 0;
        }));
        return command;
    }
}
