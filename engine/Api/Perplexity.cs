using Engine.Backends;

namespace Engine.Api;

/// <summary>A perplexity estimate with its standard error.</summary>
public sealed record PerplexityResult(double Perplexity, double Error, int Chunks, int ScoredTokens);

/// <summary>
/// Perplexity with llama-perplexity's method, so numbers compare with llama.cpp's: the text is tokenized
/// with BOS, cut into chunks of <c>ctx</c> tokens, each chunk evaluated from an empty KV cache with its
/// first token set to BOS (where the model uses one), and the next-token log-likelihood scored over
/// the second half of the chunk only.
/// </summary>
public static class Perplexity
{
    public static PerplexityResult Compute(LanguageModel lm, string text, int ctx, int maxChunks = 0, Action<int, double>? progress = null)
    {
        var tokenizer = lm.Tokenizer;
        var tokens = tokenizer.Encode(text, addSpecial: true);
        int chunks = tokens.Count / ctx;
        if (maxChunks > 0)
            chunks = Math.Min(chunks, maxChunks);
        if (chunks == 0)
            throw new ArgumentException($"the text has {tokens.Count} tokens, fewer than one chunk of {ctx}");
        int first = ctx / 2;
        int scored = ctx - 1 - first;
        int vocab = lm.Config.VocabSize;
        var rows = Enumerable.Range(first, scored).ToArray();
        var positions = Enumerable.Range(0, ctx).ToArray();
        var logits = new float[scored * vocab];
        var batch = new int[ctx];
        double sum = 0, sumSquares = 0;
        int count = 0;
        using var cache = lm.Network.CreateKvCache(ctx);
        for (int c = 0; c < chunks; c++)
        {
            tokens.CopyTo(c * ctx, batch, 0, ctx);
            if (tokenizer.AddBos)
                batch[0] = tokenizer.BosId!.Value;
            using var seq = cache.CreateSequence();
            lm.Network.Forward(seq, batch, positions, AttentionMask.Causal, rows, logits);
            for (int k = 0; k < scored; k++)
            {
                var row = logits.AsSpan(k * vocab, vocab);
                int target = tokens[c * ctx + first + k + 1];
                double nll = LogSumExp(row) - row[target];
                sum += nll;
                sumSquares += nll * nll;
                count++;
            }
            progress?.Invoke(c + 1, Math.Exp(sum / count));
        }
        double mean = sum / count;
        double variance = Math.Max(0, sumSquares / count - mean * mean);
        double ppl = Math.Exp(mean);
        double error = count > 1 ? ppl * Math.Sqrt(variance / (count - 1)) : 0;
        return new PerplexityResult(ppl, error, chunks, count);
    }

    private static double LogSumExp(ReadOnlySpan<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x)
            max = MathF.Max(max, v);
        double sum = 0;
        foreach (float v in x)
            sum += Math.Exp(v - max);
        return max + Math.Log(sum);
    }
}
