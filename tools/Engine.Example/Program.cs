using Engine.Api;
using Engine.Sampling;

// Usage: dotnet run --project tools/Engine.Example -- MODEL.gguf "Once upon a time"
string modelPath = args.Length > 0 ? args[0] : "../shared/models/stories260K/stories260K.gguf";
string prompt = args.Length > 1 ? args[1] : "Once upon a time";

using var model = LanguageModel.Load(modelPath, new ModelOptions { Threads = 2 });
using var session = model.CreateSession();
var options = new GenerationOptions
{
    MaxTokens = 64,
    Sampling = new SamplingOptions { Temperature = 0.8f, TopK = 40, TopP = 0.95f, Seed = 42 },
};
using var cancel = new CancellationTokenSource(TimeSpan.FromSeconds(30));

Console.Write(prompt);
await foreach (string piece in session.GenerateAsync(prompt, options, cancel.Token))
    Console.Write(piece);
Console.WriteLine();
