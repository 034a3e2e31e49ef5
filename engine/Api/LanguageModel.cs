using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Models;
using Engine.Tensors;
using Engine.Tokenizers;

namespace Engine.Api;

/// <summary>How to load a model.</summary>
public sealed record ModelOptions
{
    /// <summary>CPU threads (0 = one per core). Ignored when <see cref="Backend"/> is given.</summary>
    public int Threads { get; init; }

    /// <summary>Tokens a session may hold (0 = the model's trained context, capped at 4096).</summary>
    public int ContextLength { get; init; }

    /// <summary>Most tokens one forward pass computes; longer prompts are split.</summary>
    public int MaxBatch { get; init; } = 256;

    /// <summary>The device to run on; null for the CPU backend. The model takes ownership (also when loading fails).</summary>
    public Backend? Backend { get; init; }

    /// <summary>Told the weight tensors loaded so far and in the file, as the model loads (a progress bar's feed).</summary>
    public IProgress<(long Done, long Total)>? LoadProgress { get; init; }

    /// <summary>Run <see cref="LanguageModel.WarmUp"/> before <see cref="LanguageModel.Load"/> returns (the CLI does, as llama.cpp does).</summary>
    public bool WarmUp { get; init; }
}

/// <summary>
/// A loaded model: its configuration, tokenizer and decoder on a backend. Load one with <see cref="Load"/>,
/// then open a <see cref="Session"/> per conversation or request.
/// </summary>
public sealed class LanguageModel : IDisposable
{
    private readonly WeightSource _weights;

    private LanguageModel(string path, WeightSource weights, TextTokenizer tokenizer, LlamaModel network, int contextLength)
    {
        Path = path;
        _weights = weights;
        Tokenizer = tokenizer;
        Network = network;
        ContextLength = contextLength;
    }

    /// <summary>The <c>.gguf</c> file or safetensors folder this model came from.</summary>
    public string Path { get; }

    public ModelConfig Config => Network.Config;

    public TextTokenizer Tokenizer { get; }

    /// <summary>The decoder, for callers that drive the forward pass themselves (batches, trees, forks).</summary>
    public LlamaModel Network { get; }

    public Backend Backend => Network.Backend;

    /// <summary>Tokens a session holds at most.</summary>
    public int ContextLength { get; }

    /// <summary>
    /// Loads a <c>.gguf</c> file, or an HF folder with <c>config.json</c>, <c>*.safetensors</c> and
    /// <c>tokenizer.json</c> or <c>tokenizer.model</c>. Weights are memory-mapped, not copied.
    /// </summary>
    /// <exception cref="ModelFormatException">The files are malformed or describe an unsupported model.</exception>
    /// <exception cref="FileNotFoundException">The path does not exist.</exception>
    public static LanguageModel Load(string path, ModelOptions? options = null)
    {
        options ??= new ModelOptions();
        if (options.ContextLength < 0)
            throw new ArgumentOutOfRangeException(nameof(options), $"context length {options.ContextLength} must be positive (0 = the model's)");
        WeightSource? weights = null;
        Backend? backend = options.Backend;
        LanguageModel model;
        try
        {
            ModelConfig config;
            TextTokenizer tokenizer;
            if (Directory.Exists(path))
            {
                string configPath = System.IO.Path.Combine(path, "config.json");
                if (!File.Exists(configPath))
                    throw new ModelFormatException(path, "config.json", "the model folder has no config.json");
                config = ModelConfigReader.FromHf(configPath);
                tokenizer = TokenizerLoader.FromHfFolder(path);
                weights = new SafetensorsWeightSource(path, config.Architecture);
            }
            else if (File.Exists(path))
            {
                var gguf = GgufFile.Open(path);
                weights = new GgufWeightSource(gguf);
                tokenizer = TokenizerLoader.FromGguf(gguf.Metadata);
                var embedding = weights.Find("token_embd.weight")
                    ?? throw new ModelFormatException(path, "tensor 'token_embd.weight'", "required tensor is missing (is this a vocabulary-only file?)");
                if (embedding.Dims.Count != 2)
                    throw new ModelFormatException(path, "tensor 'token_embd.weight'", $"shape {embedding.ShapeText} is not a matrix");
                config = ModelConfigReader.FromGguf(gguf, checked((int)embedding.Dims[1]), RopeFreqs(weights), ModelConfigReader.GgufLongRope(gguf, weights));
            }
            else
                throw new FileNotFoundException($"{path}: no such file or folder", path);

            if (tokenizer.VocabSize > config.VocabSize)
                throw new ModelFormatException(path, "vocabulary", $"the tokenizer has {tokenizer.VocabSize} tokens but the embedding only {config.VocabSize} rows");
            backend ??= new CpuBackend(options.Threads);
            int context = options.ContextLength > 0 ? options.ContextLength : Math.Min(config.ContextLength, 4096);
            config = config.ForContext(context); // LongRoPE: the short or the long factors
            backend.Reserve(MemoryPlan.For(path, config, weights, backend, context, options.MaxBatch)); // before anything is allocated
            var network = new LlamaModel(config, LlamaWeights.Load(weights, config, backend, options.LoadProgress), backend, options.MaxBatch);
            model = new LanguageModel(path, weights, tokenizer, network, context);
        }
        catch
        {
            weights?.Dispose();
            backend?.Dispose(); // the model owns a given backend too, even when loading fails
            throw;
        }
        if (options.WarmUp)
        {
            try
            {
                model.WarmUp();
            }
            catch
            {
                model.Dispose(); // its weights and backend with it
                throw;
            }
        }
        return model;
    }

    /// <summary>
    /// Loads a model from the Hugging Face hub: <paramref name="file"/> in <paramref name="repo"/> (or the
    /// repository's GGUF file, or its HF folder), downloaded into the hub cache unless it is there already
    /// (<see cref="Hub.HubClient"/>: resumable, SHA-256 checked, <c>HF_TOKEN</c>/<c>HF_HUB_OFFLINE</c> honoured).
    /// </summary>
    /// <exception cref="Hub.HubException">The repository or file does not exist, the network failed, the download did not check out.</exception>
    public static async Task<LanguageModel> LoadFromHubAsync(string repo, string? file = null, ModelOptions? options = null, string revision = "main",
        IProgress<Hub.DownloadProgress>? progress = null, Hub.HubClient? hub = null, CancellationToken cancellationToken = default)
    {
        var client = hub ?? new Hub.HubClient();
        try
        {
            string path = await Hub.HubModel.DownloadAsync(client, repo, file, revision, progress, cancellationToken).ConfigureAwait(false);
            return Load(path, options);
        }
        finally
        {
            if (hub is null)
                client.Dispose();
        }
    }

    /// <summary><see cref="LoadFromHubAsync"/>, waited for.</summary>
    public static LanguageModel LoadFromHub(string repo, string? file = null, ModelOptions? options = null, string revision = "main",
        IProgress<Hub.DownloadProgress>? progress = null) =>
        LoadFromHubAsync(repo, file, options, revision, progress).GetAwaiter().GetResult();

    /// <summary>Loads only the tokenizer of a model file or folder (works on vocabulary-only GGUF files).</summary>
    public static TextTokenizer LoadTokenizer(string path)
    {
        if (Directory.Exists(path))
            return TokenizerLoader.FromHfFolder(path);
        using var gguf = GgufFile.Open(path);
        return TokenizerLoader.FromGguf(gguf.Metadata);
    }

    /// <summary>Llama 3 RoPE frequency divisors, which llama.cpp stores as the tensor <c>rope_freqs.weight</c>.</summary>
    private static unsafe float[]? RopeFreqs(WeightSource weights)
    {
        var t = weights.Find("rope_freqs.weight");
        if (t is null)
            return null;
        if (t.Type != GgmlType.F32 || t.Dims.Count != 1 || t.ElementCount > 1 << 16)
            throw new ModelFormatException(weights.Path, "tensor 'rope_freqs.weight'", $"expected a 1-D F32 tensor, found {t.Type} {t.ShapeText}");
        return new ReadOnlySpan<float>(t.Data, (int)t.ElementCount).ToArray();
    }

    /// <summary>
    /// The model's chat template (<paramref name="name"/>: a named alternate such as "tool_use"), from the GGUF
    /// metadata or the HF folder, with the tokenizer's BOS and EOS text; null when the model has none.
    /// </summary>
    /// <exception cref="ModelFormatException">The named template is missing, or the template does not parse.</exception>
    public Chat.ChatTemplate? GetChatTemplate(string? name = null)
    {
        string? bos = Tokenizer.BosId is int b ? Tokenizer.Piece(b) : null;
        string? eos = Tokenizer.EosId is int e ? Tokenizer.Piece(e) : null;
        return _weights is GgufWeightSource gguf ? Chat.ChatTemplate.FromGguf(gguf.File.Metadata, bos, eos, name)
            : Chat.ChatTemplate.FromHfFolder(Path, bos, eos, name);
    }

    /// <summary>
    /// Decodes two tokens after a 32-token prompt in a throw-away session, and one step of a two-sequence
    /// continuous batch, so that what a first request would otherwise pay is paid now: the weights read
    /// from the file once (they are mapped, not read, at load), the CPU kernels' repacking of the matrices
    /// they repack, the code paths compiled. On the 110M
    /// shape (Q4_0, 2 cores) a first 16-token prompt took 436 ms cold and 6 ms after. llama.cpp runs such a
    /// warm-up pass at load too. Leaves no state behind: sessions opened later start from an empty cache.
    /// </summary>
    public void WarmUp()
    {
        const int WarmUpPrompt = 32; // the prompt kernels' row blocks (16, 32) run too, not only the one- and two-row paths
        int vocab = Config.VocabSize;
        int first = Tokenizer.BosId is int bos && bos < vocab ? bos : 0;
        using var session = CreateSession();
        int[] prompt = [first, .. Enumerable.Range(0, WarmUpPrompt - 1).Select(i => (i + 1) % vocab)];
        foreach (var _ in session.Generate(prompt,
            new GenerationOptions { MaxTokens = 2, Sampling = Sampling.SamplingOptions.Greedy, StopAtEndOfGeneration = false }))
        {
        }
        // a continuous batch's paths too (a server's steps): two one-token sequences in one pass, on a cache of two blocks
        using var cache = Network.CreateKvCache(64, sequences: 2, poolTokens: 64);
        using var a = cache.CreateSequence();
        using var b = cache.CreateSequence();
        Network.ForwardBatch([new BatchSegment(a, 1, true), new BatchSegment(b, 1, true)], [first, first], new float[2L * vocab]);
    }

    /// <summary>A new conversation with its own KV cache.</summary>
    public Session CreateSession() => new(this);

    public void Dispose()
    {
        Network.Dispose();
        Backend.Dispose();
        _weights.Dispose();
    }
}
