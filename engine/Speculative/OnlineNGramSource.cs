using System.Buffers.Binary;

namespace Engine.Speculative;

/// <summary>
/// An n-gram cache that keeps learning from every request it sees — prompts and generated text — and
/// drafts by following the most frequent continuation of the longest n-gram it knows, branching at the
/// first step into the runner-up. In the spirit of online speculative decoding (Liu et al., "Online
/// Speculative Decoding", 2024), which keeps adapting the drafter to the traffic it serves, here with
/// the cheapest drafter there is (llama.cpp's lookup cache works the same way). The table can be saved
/// and loaded, so what one process learned the next one starts with.
/// </summary>
public sealed class OnlineNGramSource : IDraftSource
{
    private const ulong Magic = 0x4D41524730474E45; // "ENG0GRAM"
    private readonly Dictionary<ulong, Entry> _table = [];
    private readonly List<int> _scratch = [];
    private int _learnedUpTo;

    /// <summary>Up to four continuations of one n-gram, with counts.</summary>
    private struct Entry
    {
        public int T0, T1, T2, T3;
        public int C0, C1, C2, C3;
    }

    public OnlineNGramSource(int maxNgram = 3, int maxEntries = 1 << 20, int minCount = 1)
    {
        if (maxNgram is < 1 or > 8)
            throw new ArgumentOutOfRangeException(nameof(maxNgram), $"n-gram length {maxNgram} must be 1..8");
        ArgumentOutOfRangeException.ThrowIfLessThan(maxEntries, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(minCount, 1);
        MaxNgram = maxNgram;
        MaxEntries = maxEntries;
        MinCount = minCount;
    }

    public string Name => "online";

    public int MaxNgram { get; }

    public int MaxEntries { get; }

    /// <summary>A continuation is drafted only once it has been seen this many times.</summary>
    public int MinCount { get; }

    public int Entries => _table.Count;

    public void Begin(IReadOnlyList<int> context)
    {
        _learnedUpTo = 0;
        Learn(context);
    }

    public void Draft(DraftRequest request, DraftTree tree)
    {
        _scratch.Clear();
        for (int i = Math.Max(0, request.Context.Count - MaxNgram); i < request.Context.Count; i++)
            _scratch.Add(request.Context[i]);
        int parent = -1;
        for (int depth = 0; depth < request.Budget && tree.Count < request.Budget; depth++)
        {
            if (!Lookup(out var entry))
                break;
            if (entry.C0 < MinCount)
                break;
            // at the root, also try the runner-up when there is room
            if (depth == 0 && entry.C1 >= MinCount && request.Budget >= 3)
                tree.Add(-1, entry.T1);
            parent = tree.Add(parent, entry.T0);
            _scratch.Add(entry.T0);
            if (_scratch.Count > MaxNgram)
                _scratch.RemoveAt(0);
        }
    }

    /// <summary>The entry of the longest n-gram ending the scratch context that the table knows.</summary>
    private bool Lookup(out Entry entry)
    {
        for (int n = Math.Min(MaxNgram, _scratch.Count); n >= 1; n--)
        {
            if (_table.TryGetValue(Key(_scratch, _scratch.Count - n, n), out entry))
                return true;
        }
        entry = default;
        return false;
    }

    /// <summary>The verification's logits are not read, so on a GPU they are never downloaded.</summary>
    public bool ObservesLogits => false;

    public void Observe(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<float> logits, int vocab, IReadOnlyList<int> context) =>
        Learn(context);

    /// <summary>Counts every n-gram → next token pair of the context not yet counted.</summary>
    private void Learn(IReadOnlyList<int> context)
    {
        for (int end = Math.Max(1, _learnedUpTo); end < context.Count; end++)
        {
            int token = context[end];
            for (int n = 1; n <= MaxNgram && n <= end; n++)
                Count(Key(context, end - n, n), token);
        }
        _learnedUpTo = context.Count;
    }

    private void Count(ulong key, int token)
    {
        if (!_table.TryGetValue(key, out var e))
        {
            if (_table.Count >= MaxEntries)
                return; // full: keep what is known rather than evict at random
            e = new Entry { T0 = -1, T1 = -1, T2 = -1, T3 = -1 };
        }
        if (e.T0 == token) e.C0++;
        else if (e.T1 == token) e.C1++;
        else if (e.T2 == token) e.C2++;
        else if (e.T3 == token) e.C3++;
        else
        {
            // replace the rarest slot (an empty one has count 0)
            if (e.C3 <= e.C2 && e.C3 <= e.C1 && e.C3 <= e.C0) (e.T3, e.C3) = (token, 1);
            else if (e.C2 <= e.C1 && e.C2 <= e.C0) (e.T2, e.C2) = (token, 1);
            else if (e.C1 <= e.C0) (e.T1, e.C1) = (token, 1);
            else (e.T0, e.C0) = (token, 1);
        }
        // keep slots ordered by count, most frequent first
        if (e.C1 > e.C0) { (e.T0, e.T1) = (e.T1, e.T0); (e.C0, e.C1) = (e.C1, e.C0); }
        if (e.C2 > e.C1) { (e.T1, e.T2) = (e.T2, e.T1); (e.C1, e.C2) = (e.C2, e.C1); }
        if (e.C3 > e.C2) { (e.T2, e.T3) = (e.T3, e.T2); (e.C2, e.C3) = (e.C3, e.C2); }
        if (e.C1 > e.C0) { (e.T0, e.T1) = (e.T1, e.T0); (e.C0, e.C1) = (e.C1, e.C0); }
        _table[key] = e;
    }

    /// <summary>FNV-1a over the n tokens and n itself.</summary>
    private static ulong Key(IReadOnlyList<int> tokens, int start, int n)
    {
        ulong h = 14695981039346656037UL ^ (ulong)n;
        for (int i = start; i < start + n; i++)
        {
            h ^= (uint)tokens[i];
            h *= 1099511628211UL;
        }
        return h;
    }

    /// <summary>Writes the table (magic, version, n, entry count, entries) to <paramref name="path"/>, atomically.</summary>
    public void Save(string path)
    {
        string temp = path + $".{Environment.ProcessId}.partial";
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write))
            using (var w = new BinaryWriter(stream))
            {
                w.Write(Magic);
                w.Write(1);
                w.Write(MaxNgram);
                w.Write(_table.Count);
                foreach (var (key, e) in _table)
                {
                    w.Write(key);
                    w.Write(e.T0); w.Write(e.C0); w.Write(e.T1); w.Write(e.C1);
                    w.Write(e.T2); w.Write(e.C2); w.Write(e.T3); w.Write(e.C3);
                }
            }
            File.Move(temp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Adds the counts saved in <paramref name="path"/> (a file written by <see cref="Save"/>).</summary>
    /// <exception cref="InvalidDataException">The file is not an n-gram table or is truncated; nothing is added.</exception>
    public void Load(string path)
    {
        var bytes = File.ReadAllBytes(path);
        const int header = 8 + 4 + 4 + 4, record = 8 + 8 * 4;
        if (bytes.Length < header || BinaryPrimitives.ReadUInt64LittleEndian(bytes) != Magic)
            throw new InvalidDataException($"{path}: not an n-gram table (bad magic)");
        int version = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8));
        int n = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(12));
        int count = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(16));
        if (version != 1)
            throw new InvalidDataException($"{path}: version {version} is not supported");
        if (n != MaxNgram)
            throw new InvalidDataException($"{path}: the table is for n-grams up to {n}, this source uses {MaxNgram}");
        if (count < 0 || (long)count * record != bytes.Length - header)
            throw new InvalidDataException($"{path}: entry count {count} does not match the file size {bytes.Length}");
        var entries = new List<(ulong, Entry)>(count);
        for (int i = 0; i < count; i++)
        {
            var s = bytes.AsSpan(header + i * record);
            ulong key = BinaryPrimitives.ReadUInt64LittleEndian(s);
            var e = new Entry
            {
                T0 = BinaryPrimitives.ReadInt32LittleEndian(s[8..]), C0 = BinaryPrimitives.ReadInt32LittleEndian(s[12..]),
                T1 = BinaryPrimitives.ReadInt32LittleEndian(s[16..]), C1 = BinaryPrimitives.ReadInt32LittleEndian(s[20..]),
                T2 = BinaryPrimitives.ReadInt32LittleEndian(s[24..]), C2 = BinaryPrimitives.ReadInt32LittleEndian(s[28..]),
                T3 = BinaryPrimitives.ReadInt32LittleEndian(s[32..]), C3 = BinaryPrimitives.ReadInt32LittleEndian(s[36..]),
            };
            if (e.C0 < 0 || e.C1 < 0 || e.C2 < 0 || e.C3 < 0 || e.T0 < -1 || e.T1 < -1 || e.T2 < -1 || e.T3 < -1)
                throw new InvalidDataException($"{path}: entry {i} has a negative count or token");
            entries.Add((key, e));
        }
        foreach (var (key, e) in entries)
        {
            if (_table.Count >= MaxEntries && !_table.ContainsKey(key))
                break;
            _table[key] = e;
        }
    }

    public void Dispose() { }
}
