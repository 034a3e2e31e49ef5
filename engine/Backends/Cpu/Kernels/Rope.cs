namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Rotary position embedding applied in place to every head of one token's q or k vector. Normal style
/// rotates pairs (x[2i], x[2i+1]); NeoX style rotates (x[i], x[i + d/2]) with d the rotated dims.
/// cos/sin come from <see cref="RopeTable.Angles"/>, shared by q, k and every layer.
/// </summary>
public static class Rope
{
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
