using Engine.Models;

namespace Engine.Backends;

/// <summary>
/// Rotary position embedding (Su et al., "RoFormer: Enhanced Transformer with Rotary Position
/// Embedding", 2021): pair i of a head is rotated by angle pos·θᵢ with θᵢ = base^(-2i/d), optionally
/// scaled (linear position scaling, Llama 3 or LongRoPE per-frequency divisors, LongRoPE's attention
/// factor on cos and sin). This holds θᵢ for one model.
/// </summary>
public sealed class RopeTable
{
    public RopeTable(ModelConfig config)
    {
        Style = config.RopeStyle;
        Dims = config.RopeDims;
        HeadDim = config.HeadDim;
        AttentionFactor = config.RopeAttentionFactor;
        InvFreq = new double[Dims / 2];
        for (int i = 0; i < InvFreq.Length; i++)
        {
            double theta = config.RopeFreqScale * Math.Pow(config.RopeTheta, -2.0 * i / Dims);
            InvFreq[i] = config.RopeFreqFactors is { } f ? theta / f[i] : theta;
        }
    }

    public RopeStyle Style { get; }

    /// <summary>
    /// cos and sin are multiplied by this (LongRoPE's attention factor, √(1 + ln s / ln L₀) for a context
    /// stretched s times beyond the trained L₀; 1 elsewhere): it scales the rotated dimensions of q and k.
    /// </summary>
    public double AttentionFactor { get; }

    /// <summary>Rotated dimensions per head (the rest pass through).</summary>
    public int Dims { get; }

    public int HeadDim { get; }

    /// <summary>θᵢ for each of the <see cref="Dims"/>/2 pairs, in radians per position.</summary>
    public double[] InvFreq { get; }

    private float[] _cos = [];
    private float[] _sin = [];
    private int _positions;

    /// <summary>
    /// cos and sin of pos·θᵢ for every pair (computed in double, rounded once), cached for positions
    /// below the largest one asked for so far: every layer and both q and k reuse them.
    /// </summary>
    public (ReadOnlyMemory<float> Cos, ReadOnlyMemory<float> Sin) Angles(int position)
    {
        if (position >= _positions)
            Grow(position + 1);
        int pairs = InvFreq.Length;
        return (_cos.AsMemory(position * pairs, pairs), _sin.AsMemory(position * pairs, pairs));
    }

    /// <summary>The cached tables for positions below <paramref name="positions"/> ([position][pair]).</summary>
    public (float[] Cos, float[] Sin) Tables(int positions)
    {
        if (positions > _positions)
            Grow(positions);
        return (_cos, _sin);
    }

    private void Grow(int positions)
    {
        lock (InvFreq)
        {
            if (positions <= _positions)
                return;
            int target = Math.Max(positions, Math.Max(256, _positions * 2));
            int pairs = InvFreq.Length;
            var cos = new float[target * pairs];
            var sin = new float[target * pairs];
            _cos.AsSpan(0, _positions * pairs).CopyTo(cos);
            _sin.AsSpan(0, _positions * pairs).CopyTo(sin);
            for (int p = _positions; p < target; p++)
            {
                for (int i = 0; i < pairs; i++)
                {
                    double angle = p * InvFreq[i];
                    cos[p * pairs + i] = (float)(Math.Cos(angle) * AttentionFactor);
                    sin[p * pairs + i] = (float)(Math.Sin(angle) * AttentionFactor);
                }
            }
            (_cos, _sin) = (cos, sin);
            _positions = target;
        }
    }
}
