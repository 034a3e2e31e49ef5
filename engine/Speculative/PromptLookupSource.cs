namespace Engine.Speculative;

/// <summary>
/// Prompt lookup decoding (Saxena, "Prompt Lookup Decoding", 2023; llama.cpp's lookup decoding): find
/// the longest suffix of the context (up to <see cref="MaxNgram"/> tokens) that occurred earlier, and
/// propose what followed it. Different earlier occurrences that continue differently become sibling
/// branches, most recent first, so one verification tries several continuations. No model, no state
/// beyond the context; strong on inputs that repeat (code edits, summaries, extraction).
/// </summary>
public sealed class PromptLookupSource(int maxNgram = 3, int minNgram = 1, int maxBranches = 3) : IDraftSource
{
    public string Name => "lookup";

    public int MaxNgram { get; } = maxNgram >= 1 ? maxNgram : throw new ArgumentOutOfRangeException(nameof(maxNgram));

    public int MinNgram { get; } = minNgram >= 1 && minNgram <= maxNgram ? minNgram : throw new ArgumentOutOfRangeException(nameof(minNgram));

    private readonly List<int> _starts = [];

    public void Begin(IReadOnlyList<int> context) { }

    public void Draft(DraftRequest request, DraftTree tree)
    {
        var ctx = request.Context;
        int count = ctx.Count;
        for (int n = Math.Min(MaxNgram, count - 1); n >= MinNgram; n--)
        {
            // Occurrences of the last n tokens ending before the suffix itself, most recent first.
            _starts.Clear();
            for (int end = count - 2; end >= n - 1 && _starts.Count < 16; end--)
            {
                bool match = true;
                for (int k = 0; k < n; k++)
                {
                    if (ctx[end - k] != ctx[count - 1 - k])
                    {
                        match = false;
                        break;
                    }
                }
                if (match)
                    _starts.Add(end + 1); // continuation starts here
            }
            if (_starts.Count == 0)
                continue;
            int branches = 0;
            // The budget is shared between the branches; the most recent occurrence goes first.
            int perBranch = Math.Max(1, request.Budget / Math.Min(maxBranches, _starts.Count));
            foreach (int start in _starts)
            {
                if (tree.Count >= request.Budget || branches >= maxBranches)
                    break;
                // Walk the continuation, sharing the prefix already in the tree.
                int parent = -1;
                bool added = false;
                for (int i = start; i < count && i - start < perBranch && tree.Count < request.Budget; i++)
                {
                    int token = ctx[i];
                    int existing = -1;
                    for (int c = tree.FirstChild(parent); c >= 0; c = tree.NextSibling(c))
                    {
                        if (tree.Token(c) == token)
                        {
                            existing = c;
                            break;
                        }
                    }
                    if (existing >= 0)
                    {
                        parent = existing;
                        continue;
                    }
                    parent = tree.Add(parent, token);
                    added = true;
                }
                if (added)
                    branches++;
            }
            return;
        }
    }

    /// <summary>The verification's logits are not read, so on a GPU they are never downloaded.</summary>
    public bool ObservesLogits => false;

    public void Observe(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<float> logits, int vocab, IReadOnlyList<int> context) { }

    public void Dispose() { }
}
