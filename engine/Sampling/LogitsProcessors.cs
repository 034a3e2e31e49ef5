namespace Engine.Sampling;

/// <summary>
/// One stage of a sampler chain (llama.cpp's <c>llama_sampler_i</c>): it reshapes the candidate
/// distribution. A stage that can never change which token has the highest logit says so, so a greedy
/// chain can skip straight to the argmax.
/// </summary>
public interface ILogitsProcessor
{
    string Name { get; }

    bool PreservesArgmax { get; }

    void Apply(Candidates candidates);
}

/// <summary>Divides logits by T: T &lt; 1 sharpens, T &gt; 1 flattens the distribution.</summary>
public sealed class Temperature : ILogitsProcessor
{
    public Temperature(float value)
    {
        if (!(value > 0) || !float.IsFinite(value))
            throw new ArgumentOutOfRangeException(nameof(value), $"temperature {value} must be a positive number (use greedy decoding for 0)");
        Value = value;
    }

    public float Value { get; }

    public string Name => $"temp={Value}";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c)
    {
        var logits = c.Logits.AsSpan(0, c.Count);
        System.Numerics.Tensors.TensorPrimitives.Multiply(logits, 1f / Value, logits);
        c.HasProbs = false;
    }
}

/// <summary>Keeps the K most likely tokens (Fan et al., "Hierarchical Neural Story Generation", 2018).</summary>
public sealed class TopK : ILogitsProcessor
{
    public TopK(int k)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        K = k;
    }

    public int K { get; }

    public string Name => $"top-k={K}";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c)
    {
        if (K >= c.Count)
            return;
        c.KeepTop(K);
    }
}

/// <summary>
/// Nucleus sampling (Holtzman et al., "The Curious Case of Neural Text Degeneration", 2020): keeps the
/// smallest set of most likely tokens whose probabilities add up to at least P.
/// </summary>
public sealed class TopP : ILogitsProcessor
{
    public TopP(float p)
    {
        if (!(p > 0 && p <= 1))
            throw new ArgumentOutOfRangeException(nameof(p), $"top-p {p} must be in (0, 1]");
        P = p;
    }

    public float P { get; }

    public string Name => $"top-p={P}";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c)
    {
        if (P >= 1)
            return;
        c.Sort();
        c.Softmax();
        double cumulative = 0;
        int keep = c.Count;
        for (int i = 0; i < c.Count; i++)
        {
            cumulative += c.Probs[i];
            if (cumulative >= P)
            {
                keep = i + 1;
                break;
            }
        }
        c.Count = keep;
        c.HasProbs = false;
    }
}

/// <summary>
/// Min-p sampling (Nguyen et al., "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM
/// Outputs", 2024): keeps the tokens whose probability is at least P times the most likely one's.
/// </summary>
public sealed class MinP : ILogitsProcessor
{
    public MinP(float p)
    {
        if (!(p >= 0 && p <= 1))
            throw new ArgumentOutOfRangeException(nameof(p), $"min-p {p} must be in [0, 1]");
        P = p;
    }

    public float P { get; }

    public string Name => $"min-p={P}";

    public bool PreservesArgmax => true;

    public void Apply(Candidates c)
    {
        if (P <= 0 || c.Count == 0)
            return;
        c.Sort();
        c.Softmax();
        float floor = P * c.Probs[0];
        int keep = 1;
        while (keep < c.Count && c.Probs[keep] >= floor)
            keep++;
        c.Count = keep;
        c.HasProbs = false;
    }
}
