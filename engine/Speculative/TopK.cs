using System.Numerics;

namespace Engine.Speculative;

/// <summary>Indices of the largest values, by insertion into a short sorted list (k is small: a tree's branching).</summary>
internal static class TopK
{
    /// <summary>
    /// Fills <paramref name="best"/> with the indices of the largest values, largest first (the earlier
    /// index on ties); NaN and −∞ are never chosen. Returns how many were found; the rest are −1.
    /// </summary>
    public static int Largest<T>(ReadOnlySpan<T> values, Span<int> best) where T : IFloatingPointIeee754<T>
    {
        int k = best.Length, found = 0;
        best.Fill(-1);
        for (int i = 0; i < values.Length; i++)
        {
            T v = values[i];
            if (T.IsNaN(v) || T.IsNegativeInfinity(v) || (found == k && !(v > values[best[k - 1]])))
                continue;
            int j = found < k ? found++ : k - 1;
            while (j > 0 && v > values[best[j - 1]])
            {
                best[j] = best[j - 1];
                j--;
            }
            best[j] = i;
        }
        return found;
    }
}
