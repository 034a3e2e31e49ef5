using Engine.Api;
using Engine.Cache;
using Engine.Speculative;

namespace Engine.Decoding;

/// <summary>One hypothesis of a beam search.</summary>
/// <param name="Tokens">The generated tokens (an end token that finished it is not included).</param>
/// <param name="LogProb">The sum of the model's log-probabilities of its tokens (and of the end token that finished it).</param>
/// <param name="Score"><see cref="LogProb"/> / length^<see cref="BeamSearchOptions.LengthPenalty"/>, the length counting a finishing end token.</param>
/// <param name="Group">The diverse beam search group that found it (0 without groups).</param>
/// <param name="Finished">It ended with an end-of-generation token (false: the token limit cut it).</param>
public sealed record BeamHypothesis(IReadOnlyList<int> Tokens, double LogProb, double Score, int Group, bool Finished);

/// <summary>Options of <see cref="BeamSearch"/>; the CLI's flags are named in the errors.</summary>
public sealed record BeamSearchOptions
{
    /// <summary>Beams in all (<c>--beams</c>); with groups, each group keeps Beams / Groups.</summary>
    public int Beams { get; init; } = 4;

    /// <summary>Diverse beam search's groups (<c>--beam-groups</c>; 1 = plain beam search).</summary>
    public int Groups { get; init; } = 1;

    /// <summary>λ of the Hamming diversity term (<c>--diversity</c>): a token another group chose at this step costs λ per choice.</summary>
    public float DiversityPenalty { get; init; }

    /// <summary>Exponent of the length normalization of finished hypotheses (<c>--length-penalty</c>; 0 = raw sums, &gt;0 favours longer ones).</summary>
    public float LengthPenalty { get; init; } = 1f;

    /// <summary>
    /// Stop a group as soon as it has as many finished hypotheses as beams (<c>--early-stopping</c>);
    /// otherwise only once no running beam can still beat its worst finished one.
    /// </summary>
    public bool EarlyStopping { get; init; } = true;

    /// <summary>Hypotheses returned, best first (<c>--n-best</c>).</summary>
    public int NBest { get; init; } = 1;

    public void Validate()
    {
        if (Beams < 1 || Beams > 64)
            throw new ArgumentOutOfRangeException(nameof(Beams), $"--beams {Beams}: the beam width must be 1..64");
        if (Groups < 1 || Groups > Beams || Beams % Groups != 0)
            throw new ArgumentOutOfRangeException(nameof(Groups), $"--beam-groups {Groups}: the groups must divide --beams {Beams} (1..{Beams})");
        if (!(DiversityPenalty >= 0) || !float.IsFinite(DiversityPenalty))
            throw new ArgumentOutOfRangeException(nameof(DiversityPenalty), $"--diversity {DiversityPenalty} must be a number ≥ 0");
        if (DiversityPenalty > 0 && Groups == 1)
            throw new ArgumentOutOfRangeException(nameof(DiversityPenalty), $"--diversity {DiversityPenalty} needs --beam-groups > 1 (diversity is between groups)");
        if (!float.IsFinite(LengthPenalty))
            throw new ArgumentOutOfRangeException(nameof(LengthPenalty), $"--length-penalty {LengthPenalty} must be a number");
        if (NBest < 1 || NBest > Beams)
            throw new ArgumentOutOfRangeException(nameof(NBest), $"--n-best {NBest} must be 1..--beams {Beams}");
    }
}

/// <summary>
/// Beam search, and diverse beam search (Vijayakumar et al., "Diverse Beam Search: Decoding Diverse
/// Solutions from Neural Sequence Models", AAAI 2018). Every running beam is a fork of the prompt's KV
/// sequence (the prompt is computed and stored once; blocks are copied only where beams diverge), and
/// one batched forward pass per step computes the next logits of all beams of all groups.
/// <para>
/// Per step, each group in turn takes the best Beams/Groups continuations of its beams by cumulative
/// log-probability, where a token that earlier groups chose at this step costs λ per choice (the
/// Hamming diversity term; the reported log-probabilities stay the model's). A continuation ending in an
/// end token becomes a finished hypothesis, ranked by log-prob / length^<see cref="BeamSearchOptions.LengthPenalty"/>
/// (Wu et al., 2016) — the HF transformers conventions: 2·width candidates per step, an end token counts
/// only among the top width, at the limit the running beams are finalized too.
/// </para>
/// </summary>
public sealed class BeamSearch : DecodingStrategy
{
    private readonly BeamSearchOptions _options;

    public BeamSearch(LanguageModel model, BeamSearchOptions options) : base(model)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.Beams > model.Network.MaxBatch)
            throw new ArgumentOutOfRangeException(nameof(options), $"--beams {options.Beams} exceeds the model's batch of {model.Network.MaxBatch} rows");
        _options = options;
    }

    public override string Name => _options.Groups > 1 ? "diverse-beam" : "beam";

    public BeamSearchOptions Options => _options;

    /// <summary>The n-best hypotheses of the last search, best first.</summary>
    public IReadOnlyList<BeamHypothesis> LastHypotheses { get; private set; } = [];

    protected override IEnumerable<int> Run(int[] prompt, int maxTokens, CancellationToken ct)
    {
        var best = Search(prompt, maxTokens, ct);
        foreach (int t in best[0].Tokens)
            yield return t;
    }

    /// <summary>Runs the search and returns the <see cref="BeamSearchOptions.NBest"/> best hypotheses, best first.</summary>
    public IReadOnlyList<BeamHypothesis> Search(IReadOnlyList<int> prompt, int maxTokens, CancellationToken ct = default)
    {
        CheckPrompt(prompt, "prompt");
        if (maxTokens < 1)
            throw new ArgumentOutOfRangeException(nameof(maxTokens), $"a beam search needs at least one token to generate, got {maxTokens}");
        maxTokens = Math.Min(maxTokens, Model.ContextLength - prompt.Count);
        var o = _options;
        int vocab = Model.Config.VocabSize, groupSize = o.Beams / o.Groups, candidates = 2 * groupSize;
        var network = Model.Network;
        BeginStats();
        using var cache = CreateCache(2 * o.Beams + 1, prompt.Count, maxTokens);
        var nodes = new List<(int Parent, int Token)>(); // the beams' tokens as a tree: a beam is its last node
        var running = new List<Beam>[o.Groups];
        var finished = new List<BeamHypothesis>[o.Groups];
        var done = new bool[o.Groups];
        var logits = new float[o.Beams * vocab];
        var logProbs = new float[o.Beams * vocab];
        var row = new float[vocab];
        var best = new int[candidates];
        var chosen = new int[vocab]; // this step's choices by earlier groups (the diversity term)
        var touched = new List<int>();
        var pool = new List<(double Score, double LogProb, Beam From, int Token)>(o.Beams * candidates);
        var live = new List<KvSequence>();
        // a grammar: each beam follows its own state; a row the grammar leaves nothing in ends its beam
        var constraint = CreateConstraint();
        int epoch = constraint?.Epoch ?? 0;
        var alive = new bool[o.Beams];
        try
        {
            var root = cache.CreateSequence();
            live.Add(root);
            Prefill(network, root, prompt.ToArray(), logits.AsSpan(0, vocab));
            PromptDone();
            for (int g = 0; g < o.Groups; g++)
            {
                running[g] = [new Beam(root, -1, 0, 0, 0, constraint?.Current ?? 0)];
                finished[g] = [];
            }
            int rows = 1;
            for (int step = 0; step < maxTokens; step++)
            {
                ct.ThrowIfCancellationRequested();
                Array.Fill(alive, true, 0, rows);
                if (constraint is not null)
                    MaskRows(constraint, ref epoch, nodes, running, logits, vocab, alive);
                for (int r = 0; r < rows; r++)
                {
                    if (alive[r])
                        Distributions.LogSoftmax(logits.AsSpan(r * vocab, vocab), logProbs.AsSpan(r * vocab, vocab));
                }
                foreach (int t in touched)
                    chosen[t] = 0;
                touched.Clear();
                var next = new List<Beam>[o.Groups];
                for (int g = 0; g < o.Groups; g++)
                {
                    next[g] = [];
                    if (done[g])
                        continue;
                    pool.Clear();
                    foreach (var beam in running[g])
                    {
                        if (!alive[beam.Row])
                            continue;
                        var lp = logProbs.AsSpan(beam.Row * vocab, vocab);
                        lp.CopyTo(row);
                        foreach (int t in touched)
                            row[t] -= o.DiversityPenalty * chosen[t];
                        int found = TopK.Largest<float>(row, best);
                        for (int k = 0; k < found; k++)
                        {
                            if (!float.IsNegativeInfinity(lp[best[k]])) // a masked token is no continuation
                                pool.Add((beam.LogProb + row[best[k]], beam.LogProb + lp[best[k]], beam, best[k]));
                        }
                    }
                    pool.Sort((a, b) => b.Score.CompareTo(a.Score)); // stable enough: ties keep no promise
                    for (int rank = 0; rank < pool.Count && rank < candidates && next[g].Count < groupSize; rank++)
                    {
                        var (_, logProb, from, token) = pool[rank];
                        if (IsEnd(token))
                        {
                            if (rank < groupSize)
                                AddFinished(finished[g], groupSize, Hypothesis(nodes, from.Node, logProb, from.Length + 1, g, true));
                            continue;
                        }
                        nodes.Add((from.Node, token));
                        next[g].Add(new Beam(from.Sequence, nodes.Count - 1, logProb, from.Length + 1, 0, constraint?.After(from.Grammar, token) ?? 0));
                    }
                    foreach (var beam in next[g])
                    {
                        int t = nodes[beam.Node].Token;
                        if (chosen[t]++ == 0)
                            touched.Add(t);
                    }
                    done[g] = next[g].Count == 0 || IsGroupDone(finished[g], groupSize, next[g]);
                    if (done[g])
                        next[g].Clear();
                }
                running = next;
                if (done.All(d => d) || step == maxTokens - 1)
                    break;
                // each continuing beam forks its parent's sequence; the parents then go
                var sequences = new List<KvSequence>();
                var tokens = new List<int>();
                for (int g = 0; g < o.Groups; g++)
                {
                    for (int i = 0; i < running[g].Count; i++)
                    {
                        var beam = running[g][i];
                        var own = beam.Sequence.Fork();
                        running[g][i] = beam with { Sequence = own, Row = sequences.Count };
                        sequences.Add(own);
                        tokens.Add(nodes[beam.Node].Token);
                    }
                }
                foreach (var s in live)
                    s.Dispose();
                live.Clear();
                live.AddRange(sequences);
                Step(network, sequences, tokens.ToArray(), logits);
                rows = sequences.Count;
            }
            for (int g = 0; g < o.Groups; g++)
            {
                foreach (var beam in running[g])
                    AddFinished(finished[g], groupSize, Hypothesis(nodes, beam.Node, beam.LogProb, beam.Length, g, false));
            }
            var all = finished.SelectMany(f => f).OrderByDescending(h => h.Score).Take(o.NBest).ToArray();
            LastHypotheses = all;
            EndStats(prompt.Count, all.Length > 0 ? all[0].Tokens.Count : 0);
            return all;
        }
        finally
        {
            foreach (var s in live)
                s.Dispose();
        }
    }

    /// <summary>A running beam: its sequence (holding all but its last token), its last node, its log-prob, its length, its logits row and its grammar state.</summary>
    private readonly record struct Beam(KvSequence Sequence, int Node, double LogProb, int Length, int Row = 0, int Grammar = 0);

    /// <summary>
    /// Masks each beam's row at the beam's grammar state (rows shared by groups at the first step are one
    /// row); a row nothing survives in is not alive. States from before the grammar's caches were dropped
    /// are replayed from each beam's tokens first.
    /// </summary>
    private static void MaskRows(Engine.Constraints.GrammarConstraint constraint, ref int epoch, List<(int Parent, int Token)> nodes,
        List<Beam>[] running, float[] logits, int vocab, bool[] alive)
    {
        if (constraint.Epoch != epoch)
        {
            epoch = constraint.Epoch;
            foreach (var group in running)
            {
                for (int i = 0; i < group.Count; i++)
                {
                    var path = new List<int>();
                    for (int n = group[i].Node; n >= 0; n = nodes[n].Parent)
                        path.Add(nodes[n].Token);
                    int state = constraint.Current;
                    for (int j = path.Count - 1; j >= 0; j--)
                        state = constraint.After(state, path[j]);
                    group[i] = group[i] with { Grammar = state };
                }
            }
        }
        var masked = new HashSet<int>();
        foreach (var group in running)
        {
            foreach (var beam in group)
            {
                if (masked.Add(beam.Row))
                    alive[beam.Row] = constraint.Apply(beam.Grammar, logits.AsSpan(beam.Row * vocab, vocab));
            }
        }
    }

    private BeamHypothesis Hypothesis(List<(int Parent, int Token)> nodes, int node, double logProb, int length, int group, bool finished)
    {
        var tokens = new List<int>();
        for (int n = node; n >= 0; n = nodes[n].Parent)
            tokens.Add(nodes[n].Token);
        tokens.Reverse();
        double score = logProb / Math.Pow(Math.Max(1, length), _options.LengthPenalty);
        return new BeamHypothesis(tokens, logProb, score, group, finished);
    }

    /// <summary>Keeps a group's best <paramref name="size"/> hypotheses.</summary>
    private static void AddFinished(List<BeamHypothesis> list, int size, BeamHypothesis h)
    {
        list.Add(h);
        list.Sort((a, b) => b.Score.CompareTo(a.Score));
        if (list.Count > size)
            list.RemoveAt(list.Count - 1);
    }

    /// <summary>
    /// With early stopping, a group is done once it has as many finished hypotheses as beams; without, only
    /// once its worst finished one beats the best any running beam could still reach at its current length.
    /// </summary>
    private bool IsGroupDone(List<BeamHypothesis> finished, int size, List<Beam> running)
    {
        if (finished.Count < size)
            return false;
        if (_options.EarlyStopping)
            return true;
        double bestRunning = running.Max(b => b.LogProb / Math.Pow(Math.Max(1, b.Length), _options.LengthPenalty));
        return finished[^1].Score >= bestRunning;
    }
}
