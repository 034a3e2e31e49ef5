namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Rotary position embedding applied in place to every head of one token's q or k vector. Normal style
/// rotates pairs (x[2i], x[2i+1]); NeoX style rotates (x[i], x[i + d/2]) with d the rotated dims.
/// </summary>
public static class Rope
{
    /// <summary>cos/sin of pos·θᵢ for each pair, computed once per token and shared by all heads.</summary>
    public static void Angles(int position, RopeTable table, Span<float> cos, Span<float> sin)
    {
        var invFreq = table.InvFreq;
        for (int i = 0; i < invFreq.Length; i++)
        {
            double angle = position * invFreq[i];
            cos[i] = (float)Math.Cos(angle);
            sin[i] = (float)Math.Sin(angle);
        }
    }

    public static void RopeF32(Span<float> x, int heads, int headDim, bool neox, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int pairs = cos.Length;
        for (int h = 0; h < heads; h++)
        {
            var head = x.Slice(h * headDim, headDim);
            for (int i = 0; i < pairs; i++)
            {
                int a = neox ? i : 2 * i;
                int b = neox ? i + pairs : 2 * i + 1;
                float x0 = head[a], x1 = head[b];
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}
