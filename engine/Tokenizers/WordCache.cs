namespace Engine.Tokenizers;

/// <summary>
/// The ids of words already tokenized, looked up by span so a hit allocates nothing: running text
/// repeats its words, and a word's tokens never depend on its neighbours once the pre-tokenizer has
/// cut it out. Bounded: when full it starts over, so memory stays flat on any input.
/// </summary>
internal sealed class WordCache
{
    private const int MaxEntries = 1 << 16, MaxWordLength = 48;
    private readonly Dictionary<string, int[]> _words = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _lookup;

    public WordCache() => _lookup = _words.GetAlternateLookup<ReadOnlySpan<char>>();

    /// <summary>Appends the ids of <paramref name="word"/>, computing them with <paramref name="encode"/> on a miss.</summary>
    public void Append<TState>(ReadOnlySpan<char> word, List<int> output, TState state, Func<TState, string, int[]> encode)
    {
        lock (_words) // a tokenizer may be shared by sessions on several threads
        {
            if (_lookup.TryGetValue(word, out var cached))
            {
                output.AddRange(cached);
                return;
            }
        }
        string text = word.ToString();
        int[] ids = encode(state, text);
        output.AddRange(ids);
        if (word.Length > MaxWordLength)
            return;
        lock (_words)
        {
            if (_words.Count >= MaxEntries)
                _words.Clear();
            _words.TryAdd(text, ids);
        }
    }
}
