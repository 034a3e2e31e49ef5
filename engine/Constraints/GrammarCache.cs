namespace Engine.Constraints;

/// <summary>
/// Compiled grammars by their source text: a schema or grammar sent again (every request of a client that
/// always asks for the same JSON) is the same <see cref="Grammar"/> object, so it finds the matcher states
/// and masks earlier requests built. Bounded: past 64 entries the oldest half of the cache is dropped.
/// </summary>
internal static class GrammarCache
{
    private const int Capacity = 64;
    private static readonly Dictionary<string, Grammar> s_grammars = new(StringComparer.Ordinal);
    private static readonly Queue<string> s_order = new();
    private static readonly Lock s_gate = new();

    public static Grammar Get(string key, Func<Grammar> compile)
    {
        lock (s_gate)
        {
            if (s_grammars.TryGetValue(key, out var cached))
                return cached;
        }
        var grammar = compile(); // outside the lock: a slow compile does not hold up others; errors are not cached
        lock (s_gate)
        {
            if (s_grammars.TryGetValue(key, out var raced))
                return raced;
            while (s_grammars.Count >= Capacity)
                s_grammars.Remove(s_order.Dequeue());
            s_grammars[key] = grammar;
            s_order.Enqueue(key);
            return grammar;
        }
    }
}
