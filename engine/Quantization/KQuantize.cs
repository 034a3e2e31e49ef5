using System.Buffers.Binary;

namespace Engine.Quantization;

/// <summary>
/// Reference quantizers for the k-quants Q4_K, Q5_K and Q6_K (ggml's <c>quantize_row_q*_K_ref</c>, the
/// path llama-quantize takes without an importance matrix): per 32 (or 16) values a scale, and a min
/// for Q4_K/Q5_K, found by a weighted least-squares search; the scales themselves are then quantized to
/// 6 or 8 bits against a float16 super-block scale. Layouts as in <see cref="Dequantize"/>.
/// </summary>
public static class KQuantize
{
    private const int QK_K = 256;

    /// <summary>Round to nearest, ties to even — what ggml's <c>nearest_int</c> computes with its float trick.</summary>
    private static int NearestInt(float x) => (int)MathF.Round(x, MidpointRounding.ToEven);

    public static void Q4_K(ReadOnlySpan<float> src, Span<byte> dst) => QxK(src, dst, bits: 4);

    public static void Q5_K(ReadOnlySpan<float> src, Span<byte> dst) => QxK(src, dst, bits: 5);

    /// <summary>Q4_K (nmax 15) and Q5_K (nmax 31): 8 groups of 32 with a 6-bit scale and min each.</summary>
    private static void QxK(ReadOnlySpan<float> src, Span<byte> dst, int bits)
    {
        int nmax = (1 << bits) - 1;
        int blockBytes = bits == 4 ? 144 : 176;
        Span<byte> levels = stackalloc byte[QK_K];
        Span<byte> aux = stackalloc byte[32];
        Span<float> weights = stackalloc float[32];
        Span<float> mins = stackalloc float[8];
        Span<float> scales = stackalloc float[8];
        for (int b = 0; b < src.Length / QK_K; b++)
        {
            var x = src.Slice(b * QK_K, QK_K);
            var y = dst.Slice(b * blockBytes, blockBytes);
            y.Clear();
            float maxScale = 0, maxMin = 0;
            for (int j = 0; j < 8; j++)
            {
                var xj = x.Slice(32 * j, 32);
                float sumX2 = 0;
                foreach (float v in xj)
                    sumX2 += v * v;
                float avX = MathF.Sqrt(sumX2 / 32);
                for (int l = 0; l < 32; l++)
                    weights[l] = avX + MathF.Abs(xj[l]);
                scales[j] = bits == 4
                    ? MakeQkx2Quants(nmax, xj, weights, levels.Slice(32 * j, 32), out mins[j], aux, -1f, 0.1f, 20)
                    : MakeQkx2Quants(nmax, xj, weights, levels.Slice(32 * j, 32), out mins[j], aux, -0.5f, 0.1f, 15);
                maxScale = MathF.Max(maxScale, scales[j]);
                maxMin = MathF.Max(maxMin, mins[j]);
            }

            float invScale = maxScale > 0 ? 63f / maxScale : 0f;
            float invMin = maxMin > 0 ? 63f / maxMin : 0f;
            var packed = y.Slice(4, 12);
            for (int j = 0; j < 8; j++)
            {
                int ls = Math.Min(63, (int)(byte)NearestInt(invScale * scales[j]));
                int lm = Math.Min(63, (int)(byte)NearestInt(invMin * mins[j]));
                if (j < 4)
                {
                    packed[j] = (byte)ls;
                    packed[j + 4] = (byte)lm;
                }
                else
                {
                    packed[j + 4] = (byte)((ls & 0xF) | ((lm & 0xF) << 4));
                    packed[j - 4] |= (byte)((ls >> 4) << 6);
                    packed[j] |= (byte)((lm >> 4) << 6);
                }
            }
            BinaryPrimitives.WriteHalfLittleEndian(y, (Half)(maxScale / 63f));
            BinaryPrimitives.WriteHalfLittleEndian(y[2..], (Half)(maxMin / 63f));
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(y);
            float dmin = (float)BinaryPrimitives.ReadHalfLittleEndian(y[2..]);

            // Re-quantize every value against the scales as they were stored.
            for (int j = 0; j < 8; j++)
            {
                var (sc, m) = Dequantize.ScaleMinK4(j, packed);
                float dj = d * sc;
                if (dj == 0)
                    continue;
                float dm = dmin * m;
                for (int i = 0; i < 32; i++)
                    levels[32 * j + i] = (byte)Math.Clamp(NearestInt((x[32 * j + i] + dm) / dj), 0, nmax);
            }

            if (bits == 4)
            {
                var q = y.Slice(16, 128);
                for (int chunk = 0; chunk < 4; chunk++)
                {
                    for (int l = 0; l < 32; l++)
                        q[chunk * 32 + l] = (byte)(levels[chunk * 64 + l] | (levels[chunk * 64 + l + 32] << 4));
                }
            }
            else
            {
                var qh = y.Slice(16, 32);
                var ql = y.Slice(48, 128);
                for (int chunk = 0; chunk < 4; chunk++)
                {
                    int m1 = 1 << (2 * chunk), m2 = 2 << (2 * chunk);
                    for (int l = 0; l < 32; l++)
                    {
                        int l1 = levels[chunk * 64 + l], l2 = levels[chunk * 64 + l + 32];
                        if (l1 > 15)
                        {
                            l1 -= 16;
                            qh[l] |= (byte)m1;
                        }
                        if (l2 > 15)
                        {
                            l2 -= 16;
                            qh[l] |= (byte)m2;
                        }
                        ql[chunk * 32 + l] = (byte)(l1 | (l2 << 4));
                    }
                }
            }
        }
    }

    /// <summary>
    /// Fits x ≈ scale·L + min (L in 0..nmax, min ≤ 0) minimizing the weighted squared error: start from
    /// the min/max grid, then try <paramref name="steps"/> nearby grid scales, each solved in closed form
    /// (ggml's make_qkx2_quants). Returns the scale; <paramref name="negMin"/> gets -min.
    /// </summary>
    private static float MakeQkx2Quants(int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> levels,
        out float negMin, Span<byte> aux, float rmin, float rdelta, int steps)
    {
        int n = x.Length;
        float min = x[0], max = x[0];
        float sumW = weights[0], sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            sumW += weights[i];
            sumX += weights[i] * x[i];
        }
        if (min > 0)
            min = 0;
        if (max == min)
        {
            levels[..n].Clear();
            negMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Clamp(NearestInt(iscale * (x[i] - min)), 0, nmax);
            levels[i] = (byte)l;
            float diff = scale * l + min - x[i];
            bestError += weights[i] * diff * diff;
        }
        for (int step = 0; step <= steps; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Clamp(NearestInt(iscale * (x[i] - min)), 0, nmax);
                aux[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[i];
            }
            float det = sumW * sumL2 - sumL * sumL;
            if (det <= 0)
                continue;
            float thisScale = (sumW * sumXL - sumX * sumL) / det;
            float thisMin = (sumL2 * sumX - sumL * sumXL) / det;
            if (thisMin > 0)
            {
                thisMin = 0;
                thisScale = sumXL / sumL2;
            }
            float error = 0;
            for (int i = 0; i < n; i++)
            {
                float diff = thisScale * aux[i] + thisMin - x[i];
                error += weights[i] * diff * diff;
            }
            if (error < bestError)
            {
                aux[..n].CopyTo(levels);
                bestError = error;
                scale = thisScale;
                min = thisMin;
            }
        }
        negMin = -min;
        return scale;
    }

    /// <summary>Q6_K: 16 groups of 16 with signed 8-bit scales; 6-bit values centred on 32.</summary>
    public static void Q6_K(ReadOnlySpan<float> src, Span<byte> dst)
    {
        Span<sbyte> levels = stackalloc sbyte[QK_K];
        Span<float> scales = stackalloc float[16];
        for (int b = 0; b < src.Length / QK_K; b++)
        {
            var x = src.Slice(b * QK_K, QK_K);
            var y = dst.Slice(b * 210, 210);
            y.Clear();
            float maxScale = 0, maxAbsScale = 0;
            for (int g = 0; g < 16; g++)
            {
                float scale = MakeQxQuants(32, x.Slice(16 * g, 16), levels.Slice(16 * g, 16));
                scales[g] = scale;
                if (MathF.Abs(scale) > maxAbsScale)
                {
                    maxAbsScale = MathF.Abs(scale);
                    maxScale = scale;
                }
            }
            if (maxAbsScale < 1e-15f)
                continue; // an all-zero block: d = 0 and zero scales, as written by Clear()

            float iscale = -128f / maxScale;
            BinaryPrimitives.WriteHalfLittleEndian(y[208..], (Half)(1 / iscale));
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(y[208..]);
            var sc = y.Slice(192, 16);
            for (int g = 0; g < 16; g++)
                sc[g] = (byte)(sbyte)Math.Min(127, NearestInt(iscale * scales[g]));
            for (int g = 0; g < 16; g++)
            {
                float dg = d * (sbyte)sc[g];
                if (dg == 0)
                    continue;
                for (int i = 0; i < 16; i++)
                    levels[16 * g + i] = (sbyte)(Math.Clamp(NearestInt(x[16 * g + i] / dg), -32, 31) + 32);
            }
            var ql = y[..128];
            var qh = y.Slice(128, 64);
            for (int half = 0; half < 2; half++)
            {
                var L = levels.Slice(half * 128, 128);
                for (int l = 0; l < 32; l++)
                {
                    int q1 = L[l] & 0xF, q2 = L[l + 32] & 0xF, q3 = L[l + 64] & 0xF, q4 = L[l + 96] & 0xF;
                    ql[half * 64 + l] = (byte)(q1 | (q3 << 4));
                    ql[half * 64 + l + 32] = (byte)(q2 | (q4 << 4));
                    qh[half * 32 + l] = (byte)((L[l] >> 4) | ((L[l + 32] >> 4) << 2) | ((L[l + 64] >> 4) << 4) | ((L[l + 96] >> 4) << 6));
                }
            }
        }
    }

    /// <summary>
    /// Symmetric fit x ≈ scale·(L - nmax) with L in 0..2·nmax-1, weights x² (ggml's make_qx_quants with
    /// rmse_type 1): least squares at the max-magnitude grid, then 18 nearby grids. Returns the scale.
    /// </summary>
    private static float MakeQxQuants(int nmax, ReadOnlySpan<float> x, Span<sbyte> levels)
    {
        int n = x.Length;
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax)
            {
                amax = ax;
                max = x[i];
            }
        }
        if (amax < 1e-15f)
        {
            levels[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumLX = 0, sumL2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
            levels[i] = (sbyte)(l + nmax);
            float w = x[i] * x[i];
            sumLX += w * x[i] * l;
            sumL2 += w * l * l;
        }
        float scale = sumL2 != 0 ? sumLX / sumL2 : 0f;
        float best = scale * sumLX;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0)
                continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumLX = sumL2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
                float w = x[i] * x[i];
                sumLX += w * x[i] * l;
                sumL2 += w * l * l;
            }
            if (sumL2 > 0 && sumLX * sumLX > best * sumL2)
            {
                for (int i = 0; i < n; i++)
                    levels[i] = (sbyte)(Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1) + nmax);
                scale = sumLX / sumL2;
                best = scale * sumLX;
            }
        }
        return scale;
    }
}
