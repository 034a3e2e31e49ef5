namespace Engine.Serving;

/// <summary>
/// Stop strings (OpenAI's <c>stop</c>) over streamed text: text is released as it comes, except a tail
/// that could still become a stop string, which waits for the next piece. Once a stop string appears the
/// text before it is released and nothing after it.
/// </summary>
public sealed class StopSequences
{
    private readonly string[] _stops;
    private readonly System.Text.StringBuilder _pending = new();

    public StopSequences(IReadOnlyList<string> stops)
    {
        foreach (var s in stops)
        {
            if (string.IsNullOrEmpty(s))
                throw new ArgumentException("a stop string must not be empty", nameof(stops));
        }
        _stops = [.. stops];
    }

    /// <summary>Whether a stop string has appeared.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds generated text; returns what may be shown now.</summary>
    public string Push(string text)
    {
        if (Stopped)
            return "";
        if (_stops.Length == 0)
            return text;
        _pending.Append(text);
        string all = _pending.ToString();
        int first = -1;
        foreach (var s in _stops)
        {
            int at = all.IndexOf(s, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first))
                first = at;
        }
        if (first >= 0)
        {
            Stopped = true;
            _pending.Clear();
            return all[..first];
        }
        // hold back the longest tail that is the start of some stop string
        int hold = 0;
        foreach (var s in _stops)
        {
            for (int k = Math.Min(s.Length - 1, all.Length); k > hold; k--)
            {
                if (all.AsSpan(all.Length - k).SequenceEqual(s.AsSpan(0, k)))
                {
                    hold = k;
                    break;
                }
            }
        }
        _pending.Clear();
        _pending.Append(all, all.Length - hold, hold);
        return all[..^hold];
    }

    /// <summary>At the end of the generation: whatever was held back.</summary>
    public string Flush()
    {
        string rest = Stopped ? "" : _pending.ToString();
        _pending.Clear();
        return rest;
    }
}
