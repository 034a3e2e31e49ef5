using Engine.Sampling;

namespace Engine.Speculative;

/// <summary>
/// Decides which part of a verified draft tree to keep. The target's logits come one row per tree
/// position: row 0 is the distribution after the root (the last context token), row i + 1 the one
/// after node i. The rule returns the accepted path (node indices from the root down) and the next
/// token, which comes from the target itself: the correction after a rejection or the bonus token
/// after a fully accepted path. A lossless rule makes the output distribution exactly the target's.
/// A rule tells the chain each token it accepts (<see cref="SamplerChain.Accept"/>) as it descends, so a
/// stateful processor — penalties, DRY, Mirostat's μ — computes the next node's distribution from exactly
/// the history plain decoding would have had; the caller accepts the returned next token.
/// </summary>
public interface IAcceptanceRule
{
    string Name { get; }

    /// <summary>Whether the output has exactly the target's distribution (false only for <see cref="TypicalAcceptance"/>).</summary>
    bool IsLossless { get; }

    /// <returns>The next token; <paramref name="path"/> is filled with the accepted nodes.</returns>
    int Accept(DraftTree tree, ReadOnlySpan<float> logits, int vocab, SamplerChain sampler, List<int> path);
}

/// <summary>
/// Greedy decoding: follow the child whose token is the target's argmax while there is one; the
/// argmax after the last accepted node is the next token. Output equals plain greedy decoding.
/// </summary>
public sealed class GreedyMatch : IAcceptanceRule
{
    public string Name => "greedy";

    public bool IsLossless => true;

    public int Accept(DraftTree tree, ReadOnlySpan<float> logits, int vocab, SamplerChain sampler, List<int> path)
    {
        path.Clear();
        int node = -1;
        while (true)
        {
            int best = sampler.Sample(logits.Slice((node + 1) * vocab, vocab)); // the argmax, after any processor that can move it (bias, penalties)
            int next = -1;
            for (int c = tree.FirstChild(node); c >= 0; c = tree.NextSibling(c))
            {
                if (tree.Token(c) == best)
                {
                    next = c;
                    break;
                }
            }
            if (next < 0)
                return best;
            path.Add(next);
            sampler.Accept(best);
            node = next;
        }
    }
}

/// <summary>
/// Recursive rejection sampling over a tree: at each node the children are tried in order; child k
/// (drawn from q_k) is accepted with probability min(1, p(x)/q_k(x)); on rejection the target
/// distribution becomes normalize(max(0, p − q_k)) for the next sibling, and if every child is
/// rejected the next token is drawn from what remains. The output distribution is exactly p.
/// q_k is one-hot for deterministic drafts, q for independent draws, and q without the earlier
/// siblings (renormalized) for draws without replacement.
/// </summary>
/// <remarks>
/// Speculative sampling is the one-child case (Leviathan et al., "Fast Inference from Transformers via
/// Speculative Decoding", 2023; Chen et al., "Accelerating Large Language Model Decoding with
/// Speculative Sampling", 2023); multi-candidate verification as in SpecInfer (Miao et al., 2023);
/// draws without replacement as in Recursive Speculative Decoding (Jeong et al., "Recursive
/// Speculative Decoding: Accelerating LLM Inference via Sampling Without Replacement", 2024).
/// </remarks>
public class RecursiveRejectionSampling : IAcceptanceRule
{
    private float[] _p = [], _q = [];
    private bool[] _excluded = [];

    public virtual string Name => "recursive-rejection";

    public bool IsLossless => true;

    public virtual int Accept(DraftTree tree, ReadOnlySpan<float> logits, int vocab, SamplerChain sampler, List<int> path)
    {
        if (sampler.IsGreedy)
            throw new InvalidOperationException("rejection sampling needs a sampling chain; greedy decoding uses GreedyMatch");
        var random = sampler.Random!;
        if (_p.Length != vocab)
        {
            _p = new float[vocab];
            _q = new float[vocab];
            _excluded = new bool[vocab];
        }
        path.Clear();
        int node = -1;
        while (true)
        {
            var p = _p.AsSpan();
            sampler.Distribution(logits.Slice((node + 1) * vocab, vocab), p);
            int child = tree.FirstChild(node);
            if (child < 0)
                return SamplerChain.Draw(p, random);
            var draw = tree.Draw(node);
            float[]? q = tree.DraftDistribution(node);
            double removed = 0; // mass of q already drawn (without replacement)
            if (draw == DraftDraw.WithoutReplacement)
                Array.Clear(_excluded);
            int accepted = -1;
            for (; child >= 0; child = tree.NextSibling(child))
            {
                int x = tree.Token(child);
                double qx = draw switch
                {
                    DraftDraw.Deterministic => 1,
                    DraftDraw.Independent => q![x],
                    _ => _excluded[x] ? 0 : q![x] / (1 - removed),
                };
                if (qx <= 0)
                    continue; // the draft could not have drawn it: no evidence either way
                double px = p[x];
                if (random.NextDouble() < Math.Min(1, px / qx))
                {
                    accepted = child;
                    break;
                }
                // rejected: p ← normalize(max(0, p − q_k))
                switch (draw)
                {
                    case DraftDraw.Deterministic:
                        p[x] = 0;
                        break;
                    case DraftDraw.Independent:
                        for (int i = 0; i < vocab; i++)
                            p[i] = MathF.Max(0, p[i] - q![i]);
                        break;
                    default:
                        float inv = (float)(1 / (1 - removed));
                        for (int i = 0; i < vocab; i++)
                        {
                            if (!_excluded[i])
                                p[i] = MathF.Max(0, p[i] - q![i] * inv);
                        }
                        _excluded[x] = true;
                        removed += q![x];
                        break;
                }
                if (!Normalize(p))
                {
                    // p was (numerically) equal to q_k, so rejection had probability 0; keep the target's own distribution
                    sampler.Distribution(logits.Slice((node + 1) * vocab, vocab), p);
                }
            }
            if (accepted < 0)
                return SamplerChain.Draw(p, random);
            path.Add(accepted);
            sampler.Accept(tree.Token(accepted));
            node = accepted;
        }
    }

    private static bool Normalize(Span<float> p)
    {
        double sum = 0;
        foreach (float v in p)
            sum += v;
        if (!(sum > 1e-12))
            return false;
        float inv = (float)(1 / sum);
        for (int i = 0; i < p.Length; i++)
            p[i] *= inv;
        return true;
    }
}

/// <summary>
/// Speculative sampling for a chain of drafted tokens (Leviathan et al., 2023; Chen et al., 2023):
/// <see cref="RecursiveRejectionSampling"/> restricted to one child per node.
/// </summary>
public sealed class SpeculativeSampling : RecursiveRejectionSampling
{
    public override string Name => "speculative-sampling";

    public override int Accept(DraftTree tree, ReadOnlySpan<float> logits, int vocab, SamplerChain sampler, List<int> path)
    {
        if (!tree.IsChain)
            throw new ArgumentException("speculative sampling verifies a chain; use recursive rejection sampling for trees", nameof(tree));
        return base.Accept(tree, logits, vocab, sampler, path);
    }
}

/// <summary>
/// Typical acceptance (Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with Multiple
/// Decoding Heads", 2024): accept a drafted token when the target gives it probability above
/// min(ε, δ·exp(−H(p))). LOSSY: the output no longer follows the target distribution exactly; it is
/// only used when asked for explicitly.
/// </summary>
public sealed class TypicalAcceptance(float epsilon = 0.3f, float delta = 0.09f) : IAcceptanceRule
{
    private float[] _p = [];

    public string Name => "typical (lossy)";

    public bool IsLossless => false;

    public int Accept(DraftTree tree, ReadOnlySpan<float> logits, int vocab, SamplerChain sampler, List<int> path)
    {
        if (_p.Length != vocab)
            _p = new float[vocab];
        path.Clear();
        int node = -1;
        while (true)
        {
            var p = _p.AsSpan();
            sampler.Distribution(logits.Slice((node + 1) * vocab, vocab), p);
            double entropy = 0;
            foreach (float v in p)
            {
                if (v > 0)
                    entropy -= v * Math.Log(v);
            }
            double threshold = Math.Min(epsilon, delta * Math.Exp(-entropy));
            int accepted = -1;
            double best = 0;
            for (int c = tree.FirstChild(node); c >= 0; c = tree.NextSibling(c))
            {
                float pc = p[tree.Token(c)];
                if (pc > threshold && pc > best)
                {
                    best = pc;
                    accepted = c;
                }
            }
            if (accepted < 0)
                return sampler.IsGreedy ? sampler.Sample(logits.Slice((node + 1) * vocab, vocab)) : SamplerChain.Draw(p, sampler.Random!);
            path.Add(accepted);
            sampler.Accept(tree.Token(accepted));
            node = accepted;
        }
    }
}
