namespace Engine.Models;

/// <summary>
/// LongRoPE (Ding et al., "LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens", 2024), as
/// Phi-3 128k, Phi-3.5 and Phi-4-mini use it: two tables of per-frequency divisors, the short one for
/// contexts up to the trained <see cref="OriginalContext"/> and the long one beyond, and an attention
/// factor on cos and sin. The table is chosen once, by the context the model is loaded with (as
/// llama.cpp does), so that a sequence's keys are all rotated alike.
/// </summary>
public sealed record LongRope(float[] ShortFactors, float[] LongFactors, int OriginalContext, float AttentionFactor)
{
    /// <summary>
    /// The attention factor HF and llama.cpp's converter derive when a file gives none:
    /// √(1 + ln s / ln L₀) for a context stretched s = maxPositions / L₀ times, 1 when not stretched.
    /// </summary>
    public static float DefaultAttentionFactor(int maxPositions, int originalContext)
    {
        double scale = maxPositions / (double)originalContext;
        return scale <= 1 ? 1f : (float)Math.Sqrt(1 + Math.Log(scale) / Math.Log(originalContext));
    }
}

/// <summary>RoPE frequency adjustments for long-context variants.</summary>
public static class RopeScaling
{
    /// <summary>
    /// Llama 3.1's RoPE scaling (Meta's <c>apply_scaling</c>; HF <c>_compute_llama3_parameters</c>): wavelengths
    /// shorter than <c>original/high_freq_factor</c> are kept, longer than <c>original/low_freq_factor</c> are
    /// stretched by <paramref name="factor"/>, and those between are blended. Returned as divisors of each
    /// frequency (what llama.cpp stores in the <c>rope_freqs.weight</c> tensor of a GGUF file).
    /// </summary>
    public static float[] Llama3Factors(int ropeDims, float theta, float factor, float lowFreqFactor, float highFreqFactor, float originalContext)
    {
        double lowWavelen = originalContext / lowFreqFactor;
        double highWavelen = originalContext / highFreqFactor;
        var factors = new float[ropeDims / 2];
        for (int i = 0; i < factors.Length; i++)
        {
            double freq = 1.0 / Math.Pow(theta, 2.0 * i / ropeDims);
            double wavelen = 2 * Math.PI / freq;
            if (wavelen < highWavelen)
                factors[i] = 1f;
            else if (wavelen > lowWavelen)
                factors[i] = factor;
            else
            {
                double smooth = (originalContext / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
                factors[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
            }
        }
        return factors;
    }
}
