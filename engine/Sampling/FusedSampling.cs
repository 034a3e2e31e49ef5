namespace Engine.Sampling;

/// <summary>
/// The fused sampler's settings: temperature, then top-k, top-p and min-p, then the draw (the order of
/// <see cref="SamplerChain"/>). Temperature must be positive: greedy decoding takes the argmax instead.
/// </summary>
public readonly record struct FusedSamplingParameters(float Temperature, int TopK, float TopP, float MinP)
{
    public static FusedSamplingParameters From(SamplingOptions options) => new(options.Temperature, options.TopK, options.TopP, options.MinP);

    public void Validate()
    {
        if (!(Temperature > 0) || !float.IsFinite(Temperature))
            throw new ArgumentOutOfRangeException(nameof(Temperature), $"temperature {Temperature} must be a positive number for sampling");
        ValidateFilters(TopK, TopP, MinP);
    }

    /// <summary>The filters' settings, checked as <see cref="SamplingOptions"/> and the fused sampler both need them.</summary>
    internal static void ValidateFilters(int topK, float topP, float minP)
    {
        if (topK < 0)
            throw new ArgumentOutOfRangeException("TopK", $"top-k {topK} must be 0 (off) or positive");
        if (!(topP > 0 && topP <= 1))
            throw new ArgumentOutOfRangeException("TopP", $"top-p {topP} must be in (0, 1] (1 = off)");
        if (!(minP >= 0 && minP <= 1))
            throw new ArgumentOutOfRangeException("MinP", $"min-p {minP} must be in [0, 1] (0 = off)");
    }
}

/// <summary>
/// CPU reference of kernels/sampling.cu: <c>sample_f32</c> (temperature, top-k, top-p, min-p and the
/// draw in one pass per row, no sort) and <c>top_k_ids_f32</c>. It lays a row out over the kernel's
/// 1024 threads and does the kernel's float operations in the kernel's order — per-thread sums left
/// to right, a warp's butterfly, the warps in order — so on the emulator it gives the kernel's tokens
/// and probabilities bit for bit. Each filter keeps the weights at or above a threshold found by a
/// 16-way search over their float bit patterns (a radix select); the draw inverts the kept weights'
/// cumulative sum with a Philox number (<see cref="Philox"/>), so a seed reproduces the output on any
/// device. Top-k: Fan et al., 2018; top-p: Holtzman et al., "The Curious Case of Neural Text
/// Degeneration", 2020; min-p: Nguyen et al., "Turning Up the Heat: Min-p Sampling for Creative and
/// Coherent LLM Outputs", 2024.
/// </summary>
public static class FusedSampling
{
    /// <summary>Threads per row (SAMPLE_THREADS) and the search's ways (SAMPLE_WAYS).</summary>
    public const int Threads = 1024, Ways = 16;

    /// <summary>The most tokens top-k may keep for the rest of the chain to run over them alone (SAMPLE_MAX_CANDIDATES).</summary>
    public const int MaxCandidates = 1024;

    private const uint One = 0x3F800000u;
    private const int Warps = Threads / 32;

    private static float Weight(float x, float mx, float invTemp) => float.IsNaN(x) ? 0 : MathF.Exp((x - mx) * invTemp);

    private static uint Bits(float w) => BitConverter.SingleToUInt32Bits(w);

    /// <summary>
    /// sample_f32 for one row: the drawn token (−1 when no logit is finite) and its probability; the
    /// kept probability of <paramref name="query"/> (−1: none) and, when <paramref name="probs"/> is not
    /// empty, the whole distribution.
    /// </summary>
    public static int SampleF32(ReadOnlySpan<float> x, FusedSamplingParameters p, ulong seed, ulong offset, int row, int query,
        out float prob, out float queryProb, Span<float> probs = default) =>
        SampleF32(x, p, seed, offset, row, query, out prob, out queryProb, out _, probs);

    /// <summary>sample_f32 with its stats output: what the row's distribution is (<see cref="Probability"/>).</summary>
    public static int SampleF32(ReadOnlySpan<float> x, FusedSamplingParameters p, ulong seed, ulong offset, int row, int query,
        out float prob, out float queryProb, out RowStats stats, Span<float> probs = default)
    {
        int vocab = x.Length;
        float invTemp = 1 / p.Temperature;
        float mx = float.NegativeInfinity;
        foreach (float v in x)
        {
            if (!float.IsNaN(v))
                mx = MathF.Max(mx, v);
        }
        prob = queryProb = 0;
        stats = new RowStats(mx, float.PositiveInfinity, 0);
        if (!(mx > float.NegativeInfinity) || float.IsPositiveInfinity(mx))
            return -1;

        var all = new float[vocab];
        for (int i = 0; i < vocab; i++)
            all[i] = Weight(x[i], mx, invTemp);
        uint keep = 0;
        float[]? candidates = null; // top-k's kept weights in vocabulary order, when they fit the kernel's shared memory
        int[]? candidateIds = null;
        if (p.TopK > 0 && p.TopK < vocab)
        {
            keep = Threshold(all, keep, p.TopK, mass: false);
            int count = all.Count(w => Bits(w) >= keep);
            if (count <= MaxCandidates)
            {
                candidates = new float[count];
                candidateIds = new int[count];
                for (int i = 0, at = 0; i < vocab; i++)
                {
                    if (Bits(all[i]) >= keep)
                    {
                        candidates[at] = all[i];
                        candidateIds[at++] = i;
                    }
                }
            }
        }
        var weights = candidates ?? all;
        if (p.TopP < 1)
            keep = Threshold(weights, keep, p.TopP * Mass(weights, keep), mass: true);
        if (p.MinP > 0)
            keep = Math.Max(keep, Bits(p.MinP));

        // The draw over the kept weights (block_draw), in the kernel's order.
        var kept = new float[weights.Length];
        for (int i = 0; i < weights.Length; i++)
            kept[i] = Bits(weights[i]) >= keep ? weights[i] : 0;
        int chosen = BlockDraw(kept, Philox.Uniform(seed, offset, (uint)row, 0), out float z);
        if (candidateIds is not null)
            chosen = chosen >= 0 ? candidateIds[chosen] : -1;
        stats = new RowStats(mx, BitConverter.UInt32BitsToSingle(keep), z);
        prob = Weight(x[chosen], mx, invTemp) / z;
        if (query >= 0 && query < vocab)
        {
            float w = Weight(x[query], mx, invTemp);
            queryProb = Bits(w) >= keep ? w / z : 0;
        }
        if (!probs.IsEmpty)
        {
            for (int i = 0; i < vocab; i++)
            {
                float w = Weight(x[i], mx, invTemp);
                probs[i] = Bits(w) >= keep ? w / z : 0;
            }
        }
        return chosen;
    }

    /// <summary>
    /// What sample_f32 found for a row (its stats output): the largest logit, the threshold the kept
    /// weights reach, and their sum. With them the row's distribution is a function of its logits
    /// (<see cref="Probability"/>), so acceptance needs no [rows, vocab] copy of it.
    /// </summary>
    public readonly record struct RowStats(float Max, float Threshold, float Mass);

    /// <summary>sample_prob: p(token with logit x) under a row's stats — bit for bit the value of sample_f32's distribution output.</summary>
    public static float Probability(float x, RowStats stats, float invTemp)
    {
        float w = Weight(x, stats.Max, invTemp);
        return w >= stats.Threshold ? w / stats.Mass : 0;
    }

    /// <summary>
    /// block_draw (kernels/sampling.cuh): a token drawn with probability weight / Z by inverting the
    /// cumulative sum at u·Z, every sum in the kernel's order — each of 1024 threads a contiguous range
    /// left to right, a thread's prefix its warp's earlier threads after the earlier warps. Z goes to
    /// <paramref name="z"/>; −1 when no weight is positive.
    /// </summary>
    public static int BlockDraw(ReadOnlySpan<float> w, float u, out float z)
    {
        int n = w.Length, per = (n + Threads - 1) / Threads;
        Span<float> local = stackalloc float[Threads];
        for (int t = 0; t < Threads; t++)
        {
            int lo = Math.Min(n, t * per), hi = Math.Min(n, lo + per);
            float sum = 0;
            for (int i = lo; i < hi; i++)
                sum += w[i];
            local[t] = sum;
        }
        Span<float> within = stackalloc float[Threads];
        Span<float> warpTotal = stackalloc float[Warps];
        for (int warp = 0; warp < Warps; warp++)
        {
            for (int t = warp * 32; t < warp * 32 + 32; t++)
            {
                float s = 0;
                for (int v = warp * 32; v < t; v++)
                    s += local[v];
                within[t] = s;
            }
            warpTotal[warp] = within[warp * 32 + 31] + local[warp * 32 + 31];
        }
        z = 0;
        foreach (float t in warpTotal)
            z += t;
        Span<float> bases = stackalloc float[Threads + 1];
        for (int t = 0; t < Threads; t++)
        {
            float before = 0;
            for (int warp = 0; warp < t / 32; warp++)
                before += warpTotal[warp];
            bases[t] = before + within[t];
        }
        bases[Threads] = z;
        float target = u * z;
        int chosen = -1;
        for (int t = 0; t < Threads; t++)
        {
            float b = bases[t], next = bases[t + 1];
            if (!(b < next && b <= target && (target < next || (next == z && target >= z))))
                continue;
            float r = target - b, acc = 0;
            int lo = Math.Min(n, t * per), hi = Math.Min(n, lo + per);
            for (int i = lo; i < hi; i++)
            {
                if (w[i] > 0)
                {
                    acc += w[i];
                    chosen = i;
                    if (r < acc)
                        break;
                }
            }
        }
        return chosen;
    }

    /// <summary>sample_tail_sums: per candidate c[j], the count or mass of weights with bits ≥ max(c[j], base).</summary>
    private static void TailSums(ReadOnlySpan<float> w, uint keepBase, ReadOnlySpan<uint> c, bool mass, Span<float> total)
    {
        int n = w.Length, per = (n + Threads - 1) / Threads;
        Span<float> part = stackalloc float[Warps * (Ways - 1)];
        Span<float> lanes = stackalloc float[32 * (Ways - 1)];
        Span<float> one = stackalloc float[32];
        for (int warp = 0; warp < Warps; warp++)
        {
            lanes.Clear();
            for (int lane = 0; lane < 32; lane++)
            {
                int t = warp * 32 + lane;
                int lo = Math.Min(n, t * per), hi = Math.Min(n, lo + per);
                for (int i = lo; i < hi; i++)
                {
                    uint bits = Bits(w[i]);
                    if (bits < keepBase)
                        continue;
                    float add = mass ? w[i] : 1;
                    for (int j = 0; j < Ways - 1; j++)
                    {
                        if (bits >= c[j])
                            lanes[j * 32 + lane] += add;
                    }
                }
            }
            for (int j = 0; j < Ways - 1; j++)
            {
                lanes.Slice(j * 32, 32).CopyTo(one);
                part[warp * (Ways - 1) + j] = Backends.Cpu.Kernels.TreeAttention.WarpSum(one);
            }
        }
        for (int j = 0; j < Ways - 1; j++)
        {
            float t = 0;
            for (int warp = 0; warp < Warps; warp++)
                t += part[warp * (Ways - 1) + j];
            total[j] = t;
        }
    }

    /// <summary>sample_threshold: the largest T ≥ base whose tail reaches <paramref name="target"/>.</summary>
    private static uint Threshold(ReadOnlySpan<float> w, uint keepBase, float target, bool mass)
    {
        uint low = keepBase, high = One + 1;
        Span<uint> c = stackalloc uint[Ways - 1];
        Span<float> total = stackalloc float[Ways - 1];
        while (high - low > 1)
        {
            uint step = (high - low + Ways - 1) / Ways;
            for (int j = 0; j < Ways - 1; j++)
            {
                ulong cj = low + (ulong)(j + 1) * step;
                c[j] = cj < high ? (uint)cj : uint.MaxValue;
            }
            TailSums(w, keepBase, c, mass, total);
            uint newHigh = high;
            for (int j = Ways - 2; j >= 0; j--)
            {
                if (c[j] != uint.MaxValue && total[j] >= target)
                {
                    low = c[j];
                    break;
                }
                if (c[j] != uint.MaxValue)
                    newHigh = c[j];
            }
            high = newHigh;
        }
        return low;
    }

    /// <summary>sample_mass: the mass of the weights at or above the threshold, in the kernel's order.</summary>
    private static float Mass(ReadOnlySpan<float> w, uint keep)
    {
        Span<uint> c = stackalloc uint[Ways - 1];
        c.Fill(uint.MaxValue);
        c[0] = keep;
        Span<float> total = stackalloc float[Ways - 1];
        TailSums(w, keep, c, mass: true, total);
        return total[0];
    }

    /// <summary>top_k_ids_f32 for one row: the indices of the k largest logits, largest first, the earlier index on ties; NaN and −∞ never; −1 past the finite ones.</summary>
    public static void TopKIdsF32(ReadOnlySpan<float> x, Span<int> ids)
    {
        float prevV = float.PositiveInfinity;
        int prevI = -1;
        for (int j = 0; j < ids.Length; j++)
        {
            float bestV = float.NegativeInfinity;
            int bestI = -1;
            for (int i = 0; i < x.Length; i++)
            {
                float v = x[i];
                if (!(v > float.NegativeInfinity))
                    continue;
                bool after = v < prevV || (v == prevV && i > prevI);
                if (after && (bestI < 0 || v > bestV))
                {
                    bestV = v;
                    bestI = i;
                }
            }
            ids[j] = bestI;
            (prevV, prevI) = bestI < 0 ? (float.NegativeInfinity, -1) : (bestV, bestI);
        }
    }
}
