using Engine.Backends;
using Engine.Models;
using Microsoft.Extensions.AI;

namespace Engine.Api;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/> over a model in this
/// process: a text's embedding is the mean of its tokens' last hidden states (after the output norm, as
/// the head reads them), optionally scaled to unit length. A decoder-only model trained for generation
/// gives embeddings good enough for clustering and rough retrieval, not those of a trained embedding
/// model; the point is one model file for both. One text at a time (callers queue).
/// </summary>
public sealed class ModelEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    private readonly LanguageModel _model;
    private readonly bool _normalize;
    private readonly Lock _gate = new();
    private readonly EmbeddingGeneratorMetadata _metadata;

    /// <param name="model">The model (the caller keeps owning it).</param>
    /// <param name="normalize">Scale each embedding to unit length (cosine similarity becomes a dot product).</param>
    public ModelEmbeddingGenerator(LanguageModel model, bool normalize = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _normalize = normalize;
        _metadata = new EmbeddingGeneratorMetadata("engine", null, Path.GetFileName(model.Path), model.Config.Dim);
    }

    /// <inheritdoc/>
    public Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (options?.Dimensions is int d && d != _model.Config.Dim)
            throw new NotSupportedException($"Dimensions {d}: this model's embeddings have {_model.Config.Dim} (its hidden width)");
        var texts = values.ToList();
        return Task.Run(() =>
        {
            var result = new GeneratedEmbeddings<Embedding<float>>(texts.Count);
            long tokens = 0;
            foreach (string text in texts)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var ids = _model.Tokenizer.Encode(text ?? throw new ArgumentException("a text to embed is null", nameof(values)));
                if (ids.Count == 0)
                    throw new ArgumentException("a text to embed gives no tokens", nameof(values));
                if (ids.Count > _model.ContextLength)
                    throw new ArgumentException($"a text of {ids.Count} tokens is longer than the model's context ({_model.ContextLength})", nameof(values));
                tokens += ids.Count;
                float[] vector;
                lock (_gate)
                    vector = MeanHidden(ids, cancellationToken);
                result.Add(new Embedding<float>(vector) { ModelId = _metadata.DefaultModelId, CreatedAt = DateTimeOffset.UtcNow });
            }
            result.Usage = new UsageDetails { InputTokenCount = tokens, TotalTokenCount = tokens };
            return result;
        }, cancellationToken);
    }

    /// <summary>The tokens through the model in passes of at most its batch, their hidden states summed, then averaged.</summary>
    private float[] MeanHidden(List<int> ids, CancellationToken cancellationToken)
    {
        var network = _model.Network;
        int dim = _model.Config.Dim, vocab = _model.Config.VocabSize, chunk = Math.Min(32, network.MaxBatch);
        using var cache = network.CreateKvCache(_model.ContextLength, 32, sequences: 1, poolTokens: ids.Count + 64 + network.MaxBatch);
        using var sequence = cache.CreateSequence();
        var sum = new double[dim];
        var hidden = new float[chunk * dim];
        var logits = new float[chunk * vocab];
        var positions = new int[chunk];
        var rows = new int[chunk];
        var tokens = ids.ToArray();
        for (int start = 0; start < tokens.Length; start += chunk)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int n = Math.Min(chunk, tokens.Length - start);
            for (int i = 0; i < n; i++)
                (positions[i], rows[i]) = (start + i, i);
            network.Forward(sequence, tokens.AsSpan(start, n), positions.AsSpan(0, n), AttentionMask.Causal, rows.AsSpan(0, n),
                logits.AsSpan(0, n * vocab), hidden.AsSpan(0, n * dim));
            for (int i = 0; i < n; i++)
            {
                for (int j = 0; j < dim; j++)
                    sum[j] += hidden[i * dim + j];
            }
        }
        var mean = new float[dim];
        double norm = 0;
        for (int j = 0; j < dim; j++)
        {
            mean[j] = (float)(sum[j] / tokens.Length);
            norm += (double)mean[j] * mean[j];
        }
        if (_normalize && norm > 0)
        {
            float scale = (float)(1 / Math.Sqrt(norm));
            for (int j = 0; j < dim; j++)
                mean[j] *= scale;
        }
        return mean;
    }

    /// <inheritdoc/>
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null)
            return null;
        if (serviceType == typeof(EmbeddingGeneratorMetadata))
            return _metadata;
        if (serviceType == typeof(LanguageModel))
            return _model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Nothing to free: each text's cache lives only while it is embedded; the model stays with its owner.</summary>
    public void Dispose()
    {
    }
}
