namespace Engine.Backends;

/// <summary>
/// The sequences of a continuous batch as a backend sees them: rows [<see cref="RowStart"/>(j),
/// <see cref="RowStart"/>(j + 1)) of the pass belong to sequence j, whose block table is
/// <see cref="Table"/>(j) and whose cache held <see cref="Prefix"/>(j) tokens before the pass. Each
/// sequence's rows are causal among themselves and see nothing of the other sequences. Reused from pass
/// to pass (no allocation once grown).
/// </summary>
public sealed class SequenceBatch
{
    private int[] _rowStart = [0];
    private int[] _prefix = [];
    private int[] _tableStart = [0];
    private int[] _tables = [];

    /// <summary>Sequences in the batch.</summary>
    public int Count { get; private set; }

    /// <summary>Rows of the pass.</summary>
    public int Rows => _rowStart[Count];

    public int RowStart(int j) => _rowStart[j];

    public int RowCount(int j) => _rowStart[j + 1] - _rowStart[j];

    public int Prefix(int j) => _prefix[j];

    public ReadOnlySpan<int> Table(int j) => _tables.AsSpan(_tableStart[j], _tableStart[j + 1] - _tableStart[j]);

    /// <summary>Every table, one after another (what a kernel takes, with <see cref="TableStart"/>).</summary>
    public ReadOnlySpan<int> Tables => _tables.AsSpan(0, _tableStart[Count]);

    public int TableStart(int j) => _tableStart[j];

    public void Clear() => Count = 0;

    /// <summary>Appends a sequence of <paramref name="rows"/> rows after a cached prefix of <paramref name="prefix"/> tokens.</summary>
    public void Add(int rows, int prefix, ReadOnlySpan<int> table)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(prefix);
        if ((long)(prefix + rows) > (long)table.Length * int.MaxValue)
            throw new ArgumentException("the block table is shorter than the sequence", nameof(table));
        Grow(ref _rowStart, Count + 2);
        Grow(ref _tableStart, Count + 2);
        Grow(ref _prefix, Count + 1);
        Grow(ref _tables, _tableStart[Count] + table.Length);
        _prefix[Count] = prefix;
        table.CopyTo(_tables.AsSpan(_tableStart[Count]));
        _rowStart[Count + 1] = _rowStart[Count] + rows;
        _tableStart[Count + 1] = _tableStart[Count] + table.Length;
        Count++;
    }

    private static void Grow(ref int[] array, int length)
    {
        if (array.Length < length)
            System.Array.Resize(ref array, Math.Max(length, 2 * array.Length));
    }
}
