using Engine.Sampling;

namespace Engine.Speculative;

/// <summary>
/// CPU references of kernels/acceptance.cu, which decides on the device what a verified draft tree
/// keeps: <see cref="AcceptGreedy"/> (<c>accept_greedy</c>, <see cref="GreedyMatch"/>'s walk over argmax
/// ids) and <see cref="AcceptSampled"/> (<c>accept_sampled</c>, <see cref="RecursiveRejectionSampling"/>
/// with Philox draws and the kernel's float sums in its order, so the emulator gives the same path
/// and token). The tree comes as arrays: parent[i] (−1 = the root) and token[i] for node i; rows are
/// 0 after the root and i + 1 after node i. Both return the next token and fill the accepted path.
/// </summary>
public static class AcceptanceKernels
{
    /// <summary>Threads of the sampled kernel's block (SAMPLE_THREADS, as the sampler's).</summary>
    public const int Threads = FusedSampling.Threads;

    /// <summary>The most siblings drawn without replacement the sampled kernel tracks (ACCEPT_MAX_SIBLINGS).</summary>
    public const int MaxSiblings = 256;

    /// <summary>accept_greedy: follow the first child whose token is the target's argmax after its parent.</summary>
    public static int AcceptGreedy(ReadOnlySpan<int> parent, ReadOnlySpan<int> token, ReadOnlySpan<int> argmax, List<int> path)
    {
        path.Clear();
        int node = -1;
        while (true)
        {
            int best = argmax[node + 1], next = -1;
            for (int c = node + 1; c < parent.Length; c++)
            {
                if (parent[c] == node && token[c] == best)
                {
                    next = c;
                    break;
                }
            }
            if (next < 0)
                return best;
            path.Add(next);
            node = next;
        }
    }

    /// <summary>
    /// accept_sampled: recursive rejection sampling. Row r's target distribution is sample_f32's, recomputed
    /// from its <paramref name="logits"/> and <paramref name="stats"/> (<see cref="FusedSampling.Probability"/>);
    /// <paramref name="sampled"/> [n + 1] are sample_f32's draws per row; q rows are
    /// chosen by <paramref name="qrow"/> (−1: deterministic children) and <paramref name="draw"/> says how
    /// each node's children were drawn (<see cref="DraftDraw"/> as 0, 1, 2).
    /// </summary>
    public static int AcceptSampled(ReadOnlySpan<float> logits, ReadOnlySpan<FusedSampling.RowStats> stats, float invTemp, ReadOnlySpan<int> sampled,
        ReadOnlySpan<float> q, ReadOnlySpan<int> qrow, ReadOnlySpan<int> draw, ReadOnlySpan<int> parent, ReadOnlySpan<int> token, int vocab,
        ulong seed, ulong offset, List<int> path)
    {
        var p = new float[vocab];
        int n = parent.Length;
        var residual = new float[vocab];
        var excludedTokens = new List<int>();
        path.Clear();
        int node = -1;
        while (true)
        {
            int row = node + 1;
            var x = logits.Slice(row * vocab, vocab);
            for (int i = 0; i < vocab; i++)
                p[i] = FusedSampling.Probability(x[i], stats[row], invTemp);
            int kind = draw[row];
            var qr = qrow[row] >= 0 ? q.Slice(qrow[row] * vocab, vocab) : default;
            bool modified = false;
            double removed = 0;
            excludedTokens.Clear();
            int accepted = -1;
            for (int c = node + 1; c < n; c++)
            {
                if (parent[c] != node)
                    continue;
                int t = token[c];
                bool isExcluded = excludedTokens.Contains(t);
                double qx = kind == 0 ? 1.0 : kind == 1 ? qr[t] : isExcluded ? 0.0 : qr[t] / (1.0 - removed);
                if (qx <= 0)
                    continue;
                double px = modified ? residual[t] : p[t];
                float u = Philox.Uniform(seed, offset, (uint)(c + 1), 1);
                if (u < Math.Min(1.0, px / qx))
                {
                    accepted = c;
                    break;
                }
                if (!modified)
                {
                    p.CopyTo(residual);
                    modified = true;
                }
                if (kind == 0)
                    residual[t] = 0;
                else if (kind == 1)
                {
                    for (int i = 0; i < vocab; i++)
                        residual[i] = MathF.Max(0, residual[i] - qr[i]);
                }
                else
                {
                    float inv = (float)(1.0 / (1.0 - removed));
                    for (int i = 0; i < vocab; i++)
                    {
                        if (!excludedTokens.Contains(i))
                            residual[i] = MathF.Max(0, residual[i] - qr[i] * inv);
                    }
                    if (excludedTokens.Count < MaxSiblings)
                        excludedTokens.Add(t);
                    removed += qr[t];
                }
                float sum = BlockSum(residual);
                if (!(sum > 1e-12f))
                    p.CopyTo(residual);
                else
                {
                    float inv = 1.0f / sum;
                    for (int i = 0; i < vocab; i++)
                        residual[i] *= inv;
                }
            }
            if (accepted < 0)
                return modified ? FusedSampling.BlockDraw(residual, Philox.Uniform(seed, offset, (uint)row, 2), out _) : sampled[row];
            path.Add(accepted);
            node = accepted;
        }
    }

    /// <summary>accept_block_sum: per-thread ranges, a warp's butterfly, the warps in order.</summary>
    public static float BlockSum(ReadOnlySpan<float> w)
    {
        int n = w.Length, per = (n + Threads - 1) / Threads;
        Span<float> lanes = stackalloc float[32];
        float total = 0;
        for (int warp = 0; warp < Threads / 32; warp++)
        {
            for (int lane = 0; lane < 32; lane++)
            {
                int t = warp * 32 + lane;
                int lo = Math.Min(n, t * per), hi = Math.Min(n, lo + per);
                float local = 0;
                for (int i = lo; i < hi; i++)
                    local += w[i];
                lanes[lane] = local;
            }
            total += Backends.Cpu.Kernels.TreeAttention.WarpSum(lanes);
        }
        return total;
    }
}
