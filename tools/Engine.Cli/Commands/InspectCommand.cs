using System.CommandLine;
using Engine.Formats.Gguf;
using Engine.Models;

namespace Engine.Cli.Commands;

/// <summary><c>engine inspect</c>: prints a model's metadata and tensor table.</summary>
internal static class InspectCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var command = new Command("inspect", "Print a model's metadata and tensors") { model };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            string path = parse.GetRequiredValue(model);
            var o = io.Out;
            if (Directory.Exists(path))
            {
                o.WriteLine($"HF folder {path}");
                string config = Path.Combine(path, "config.json");
                if (File.Exists(config))
                    o.WriteLine(ModelConfigReader.FromHf(config));
                using var weights = new SafetensorsWeightSource(path);
                o.WriteLine($"{weights.Tensors.Count} tensors (GGUF names, ggml shape order):");
                foreach (var t in weights.Tensors)
                    o.WriteLine($"  {t.Name,-40} {t.Type,-5} {t.ShapeText}");
                return 0;
            }
            using var gguf = GgufFile.Open(path);
            o.WriteLine($"GGUF v{gguf.Version}, {gguf.Metadata.Count} metadata keys, {gguf.Tensors.Count} tensors, alignment {gguf.Alignment}, data at {gguf.DataOffset}");
            foreach (string key in gguf.Metadata.Keys)
                o.WriteLine($"  {key} = {gguf.Metadata[key]}");
            foreach (var t in gguf.Tensors)
                o.WriteLine($"  {t.Name,-40} {t.Type,-5} [{string.Join(", ", t.Dims)}] @{t.Offset}");
            return 0;
        }));
        return command;
    }
}
