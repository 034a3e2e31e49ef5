using System.Numerics.Tensors;
using Engine.Api;
using Engine.Backends;
using Engine.Speculative;

namespace Engine.Decoding;

/// <summary>
/// Contrastive search (Su et al., "A Contrastive Framework for Neural Text Generation", NeurIPS 2022):
/// of the k most likely next tokens, take the one maximizing
/// (1 − α)·p(v | x) − α·max_j cos(h_v, h_j), where h_v is the last hidden state (after the output norm,
/// what the LM head reads) the model gives candidate v and h_j those of every earlier token, prompt
/// included. The degeneration penalty keeps the text from repeating itself; α = 0 is greedy decoding.
/// <para>
/// The k candidates run as one pass at the same position under a mask where each sees only the prefix
/// and itself (a tree of k leaves); the winner's KV entry is compacted into place and its logits are the
/// next step's, so a token costs one pass of k rows.
/// </para>
/// </summary>
public sealed class ContrastiveSearch : DecodingStrategy
{
    /// <param name="alpha">The degeneration penalty α in [0, 1] (<c>--penalty-alpha</c>).</param>
    /// <param name="topK">Candidates per step, 1..64 (<c>--top-k</c>).</param>
    public ContrastiveSearch(LanguageModel model, float alpha = 0.6f, int topK = 4) : base(model)
    {
        if (!(alpha >= 0 && alpha <= 1))
            throw new ArgumentOutOfRangeException(nameof(alpha), $"--penalty-alpha {alpha} must be in [0, 1]");
        if (topK < 1 || topK > 64)
            throw new ArgumentOutOfRangeException(nameof(topK), $"--top-k {topK}: contrastive search takes 1..64 candidates");
        Alpha = alpha;
        TopK = topK;
    }

    public override string Name => "contrastive";

    public float Alpha { get; }

    public int TopK { get; }

    protected override IEnumerable<int> Run(int[] prompt, int maxTokens, CancellationToken ct)
    {
        var network = Model.Network;
        int vocab = Model.Config.VocabSize, dim = Model.Config.Dim, k = TopK;
        maxTokens = Math.Min(maxTokens, Model.ContextLength - prompt.Length);
        BeginStats();
        using var cache = CreateCache(1, prompt.Length, maxTokens + k);
        using var sequence = cache.CreateSequence();
        // the context's hidden states, each normalized once so that a cosine is a dot product
        var context = new float[(prompt.Length + maxTokens) * dim];
        int held = 0;
        var logits = new float[k * vocab];
        var hidden = new float[k * dim];
        const int chunk = 32; // the prompt's rows in passes whose logits fit a small buffer
        var chunkLogits = new float[chunk * vocab];
        var chunkHidden = new float[chunk * dim];
        var rows = new int[chunk];
        for (int start = 0; start < prompt.Length; start += chunk)
        {
            int n = Math.Min(chunk, prompt.Length - start);
            var positions = new int[n];
            for (int i = 0; i < n; i++)
                (positions[i], rows[i]) = (start + i, i);
            network.Forward(sequence, prompt.AsSpan(start, n), positions, AttentionMask.Causal, rows.AsSpan(0, n),
                chunkLogits.AsSpan(0, n * vocab), chunkHidden.AsSpan(0, n * dim));
            for (int i = 0; i < n; i++)
                Normalize(chunkHidden.AsSpan(i * dim, dim), context.AsSpan(held++ * dim, dim));
            if (start + n == prompt.Length)
                chunkLogits.AsSpan((n - 1) * vocab, vocab).CopyTo(logits);
        }
        PromptDone();
        var probs = new float[vocab];
        var candidates = new int[k];
        var parents = new int[k];
        Array.Fill(parents, -1);
        var mask = AttentionMask.FromParents(parents);
        var outputRows = new int[k];
        var positionsK = new int[k];
        var normalized = new float[dim];
        int bestRow = 0, generated = 0;
        var constraint = CreateConstraint();
        try
        {
            while (generated < maxTokens)
            {
                ct.ThrowIfCancellationRequested();
                if (constraint is not null && !constraint.Apply(logits.AsSpan(bestRow * vocab, vocab)))
                    break; // the grammar's dead end
                Distributions.Softmax(logits.AsSpan(bestRow * vocab, vocab), probs);
                int found = Speculative.TopK.Largest<float>(probs, candidates);
                int possible = 0; // candidates the model (or the grammar) gives no probability are no candidates
                for (int i = 0; i < found; i++)
                {
                    if (probs[candidates[i]] > 0)
                        candidates[possible++] = candidates[i];
                }
                found = possible;
                if (found == 0)
                    break;
                for (int i = 0; i < found; i++)
                    (outputRows[i], positionsK[i]) = (i, sequence.Length);
                var candidateMask = found == k ? mask : AttentionMask.FromParents(parents.AsSpan(0, found));
                network.Forward(sequence, candidates.AsSpan(0, found), positionsK.AsSpan(0, found), candidateMask, outputRows.AsSpan(0, found),
                    logits.AsSpan(0, found * vocab), hidden.AsSpan(0, found * dim));
                CountPass(found);
                double bestScore = double.NegativeInfinity;
                bestRow = 0;
                for (int i = 0; i < found; i++)
                {
                    Normalize(hidden.AsSpan(i * dim, dim), normalized);
                    double maxCos = held == 0 ? 0 : double.NegativeInfinity;
                    for (int j = 0; j < held; j++)
                        maxCos = Math.Max(maxCos, TensorPrimitives.Dot<float>(normalized, context.AsSpan(j * dim, dim)));
                    double score = (1 - Alpha) * probs[candidates[i]] - Alpha * maxCos;
                    if (score > bestScore)
                        (bestScore, bestRow) = (score, i);
                }
                int token = candidates[bestRow];
                sequence.Compact(sequence.Length - found, [bestRow]);
                if (IsEnd(token))
                    break;
                constraint?.Accept(token);
                Normalize(hidden.AsSpan(bestRow * dim, dim), context.AsSpan(held++ * dim, dim));
                generated++;
                yield return token;
            }
        }
        finally
        {
            EndStats(prompt.Length, generated);
        }
    }

    private static void Normalize(ReadOnlySpan<float> h, Span<float> into)
    {
        float norm = TensorPrimitives.Norm(h);
        TensorPrimitives.Divide(h, norm > 0 ? norm : 1f, into);
    }
}
