namespace Engine.Models;

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
