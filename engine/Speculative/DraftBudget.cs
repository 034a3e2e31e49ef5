namespace Engine.Speculative;

/// <summary>
/// Chooses how many draft nodes to verify per step by goodput, as SmartSpec does (Liu et al.,
/// "Optimizing Speculative Decoding for Serving Large Language Models Using Goodput", 2024): the
/// budget N that maximizes expected tokens per step, E[accepted | N] + 1, divided by the measured time
/// of a step with N nodes (drafting plus verifying). Both are learned from the steps so far:
/// acceptance as a per-depth rate (the chance that depth d is accepted once d − 1 was), time as a
/// moving average per budget, interpolated linearly where a budget has not been tried yet.
/// </summary>
public sealed class DraftBudget
{
    private static readonly int[] Candidates = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];
    private const int MaxDepth = 64;
    private readonly double[] _reached = new double[MaxDepth + 2];   // steps whose draft reached depth d
    private readonly double[] _accepted = new double[MaxDepth + 2];  // ... and whose accepted path reached it
    private readonly double[] _seconds = new double[Candidates.Length + 1]; // by candidate index; 0 = not measured
    private readonly Dictionary<int, double> _other = [];   // budgets off the candidate list (the cap, a short tail)
    private int _steps;

    public DraftBudget(int max, bool adaptive)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(max, 1);
        Max = max;
        Adaptive = adaptive;
    }

    public int Max { get; }

    public bool Adaptive { get; }

    /// <summary>The budget for the next step.</summary>
    public int Next()
    {
        // Fixed, or still learning: the first steps measure the largest budget and then a small one,
        // which anchors the linear cost model at both ends.
        if (!Adaptive || _steps < 2)
            return _steps == 1 && Adaptive ? Math.Min(2, Max) : Max;
        int best = 1;
        double bestRate = 0;
        foreach (int n in Candidates)
        {
            if (n > Max)
                break;
            double rate = (ExpectedAccepted(n) + 1) / Seconds(n);
            if (rate > bestRate)
            {
                bestRate = rate;
                best = n;
            }
        }
        return best;
    }

    /// <summary>Records one step: the draft's depth, how deep the accepted path went, and the step's time.</summary>
    public void Record(int budget, int draftDepth, int acceptedDepth, double seconds)
    {
        _steps++;
        for (int d = 1; d <= Math.Min(draftDepth, MaxDepth); d++)
        {
            _reached[d]++;
            if (d <= acceptedDepth)
                _accepted[d]++;
        }
        int index = Array.IndexOf(Candidates, budget);
        if (index < 0)
        {
            _other[budget] = _other.TryGetValue(budget, out double o) ? 0.8 * o + 0.2 * seconds : seconds;
            return;
        }
        double old = _seconds[index];
        _seconds[index] = old > 0 ? 0.8 * old + 0.2 * seconds : seconds;
    }

    /// <summary>Σ over depths of the chance the path gets that deep (a chain of n nodes reaches depth n).</summary>
    private double ExpectedAccepted(int n)
    {
        double survive = 1, total = 0;
        for (int d = 1; d <= Math.Min(n, MaxDepth); d++)
        {
            // Laplace-smoothed rate, so an untried depth counts as a coin flip rather than certainty.
            survive *= (_accepted[d] + 1) / (_reached[d] + 2);
            total += survive;
        }
        return total;
    }

    private double Seconds(int n)
    {
        int index = Array.IndexOf(Candidates, n);
        if (_seconds[index] > 0)
            return _seconds[index];
        // linear between the nearest measured candidates below and above (or the two nearest on one side)
        int lower = -1, upper = -1;
        for (int i = index - 1; i >= 0 && lower < 0; i--)
            lower = _seconds[i] > 0 ? i : -1;
        for (int i = index + 1; i < Candidates.Length && upper < 0; i++)
            upper = _seconds[i] > 0 ? i : -1;
        if (lower < 0 && upper < 0)
            return Fallback();
        if (lower < 0 || upper < 0)
        {
            int a = lower >= 0 ? lower : upper, b = -1;
            int step = lower >= 0 ? -1 : 1;
            for (int i = a + step; i >= 0 && i < Candidates.Length && b < 0; i += step)
                b = _seconds[i] > 0 ? i : -1;
            if (b < 0)
                return _seconds[a];
            (lower, upper) = a < b ? (a, b) : (b, a);
        }
        double slope = (_seconds[upper] - _seconds[lower]) / (Candidates[upper] - Candidates[lower]);
        return Math.Max(1e-6, _seconds[lower] + slope * (n - Candidates[lower]));
    }

    /// <summary>Any measured time, for when no candidate budget has been timed yet.</summary>
    private double Fallback()
    {
        foreach (double t in _other.Values)
            return t;
        return 1;
    }
}
