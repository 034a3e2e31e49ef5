using System.Numerics.Tensors;

namespace Engine.Decoding;

/// <summary>The vocabulary-sized arithmetic the strategies share: log-softmax, entropy, Jensen–Shannon divergence.</summary>
public static class Distributions
{
    /// <summary>
    /// log softmax(<paramref name="logits"/>) into <paramref name="logProbs"/> (may be the same span). The
    /// normalizer is summed in double, so a 150k vocabulary loses no mass to rounding. NaN is an error.
    /// </summary>
    public static void LogSoftmax(ReadOnlySpan<float> logits, Span<float> logProbs)
    {
        if (logProbs.Length != logits.Length)
            throw new ArgumentException($"{logits.Length} logits but room for {logProbs.Length}", nameof(logProbs));
        float max = float.NegativeInfinity;
        foreach (float l in logits)
        {
            if (float.IsNaN(l))
                throw new ArgumentException("the logits contain NaN (a broken model or a bad guidance setting)", nameof(logits));
            if (l > max)
                max = l;
        }
        if (float.IsNegativeInfinity(max))
            throw new ArgumentException("every logit is -inf: nothing can be chosen", nameof(logits));
        double sum = 0;
        foreach (float l in logits)
            sum += Math.Exp(l - max);
        float shift = max + (float)Math.Log(sum);
        TensorPrimitives.Subtract(logits, shift, logProbs);
    }

    /// <summary>softmax(<paramref name="logits"/>) into <paramref name="probs"/>.</summary>
    public static void Softmax(ReadOnlySpan<float> logits, Span<float> probs)
    {
        LogSoftmax(logits, probs);
        TensorPrimitives.Exp(probs, probs);
    }

    /// <summary>Shannon entropy in nats of the distribution whose log-probabilities are given.</summary>
    public static double Entropy(ReadOnlySpan<float> logProbs)
    {
        double h = 0;
        foreach (float lp in logProbs)
        {
            if (lp > float.NegativeInfinity)
                h -= Math.Exp(lp) * lp;
        }
        return h;
    }

    /// <summary>
    /// Jensen–Shannon divergence in bits (so it lies in [0, 1]) between two distributions given as
    /// log-probabilities: ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q).
    /// </summary>
    public static double JensenShannon(ReadOnlySpan<float> logP, ReadOnlySpan<float> logQ)
    {
        if (logP.Length != logQ.Length)
            throw new ArgumentException($"distributions over {logP.Length} and {logQ.Length} tokens", nameof(logQ));
        double js = 0;
        for (int i = 0; i < logP.Length; i++)
        {
            double p = Math.Exp(logP[i]), q = Math.Exp(logQ[i]), m = 0.5 * (p + q);
            if (p > 0)
                js += 0.5 * p * Math.Log(p / m);
            if (q > 0)
                js += 0.5 * q * Math.Log(q / m);
        }
        return Math.Clamp(js / Math.Log(2), 0, 1);
    }
}
