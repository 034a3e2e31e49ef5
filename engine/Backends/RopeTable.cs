using Engine.Models;

namespace Engine.Backends;

/// <summary>
/// Rotary position embedding (Su et al., "RoFormer: Enhanced Transformer with Rotary Position
/// Embedding", 2021): pair i of a head is rotated by angle pos·θᵢ with θᵢ = base^(-2i/d), optionally
/// scaled (linear position scaling, Llama 3 per-frequency divisors). This holds θᵢ for one model.
/// </summary>
public sealed class RopeTable
{
    public RopeTable(ModelConfig config)
    {
        Style = config.RopeStyle;
        Dims = config.RopeDims;
        HeadDim = config.HeadDim;
        InvFreq = new double[Dims / 2];
        for (int i = 0; i < InvFreq.Length; i++)
        {
            double theta = config.RopeFreqScale * Math.Pow(config.RopeTheta, -2.0 * i / Dims);
            InvFreq[i] = config.RopeFreqFactors is { } f ? theta / f[i] : theta;
        }
    }

    public RopeStyle Style { get; }

    /// <summary>Rotated dimensions per head (the rest pass through).</summary>
    public int Dims { get; }

    public int HeadDim { get; }

    /// <summary>θᵢ for each of the <see cref="Dims"/>/2 pairs, in radians per position.</summary>
    public double[] InvFreq { get; }
}
