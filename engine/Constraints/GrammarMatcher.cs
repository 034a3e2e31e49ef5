namespace Engine.Constraints;

/// <summary>
/// Runs a <see cref="Grammar"/> over UTF-8 bytes as a pushdown automaton, determinized lazily: a state is
/// the set of parse stacks alive after the bytes so far (llama.cpp's grammar stacks), plus whether the
/// text may end there and a partial UTF-8 character. Stacks are interned as (position, parent) nodes, so
/// equal stacks are equal ids, states are interned by their stack sets, and byte transitions are cached:
/// a configuration seen before (inside a JSON string, every character leads back to the same state) is a
/// dictionary lookup. The caches are bounded; past the bound they are dropped and rebuilt on demand.
/// </summary>
public sealed class GrammarMatcher
{
    /// <summary>A run of characters of one class (<see cref="Run"/>): tokens of at most <paramref name="Limit"/> of them are accepted.</summary>
    internal sealed record CharRun((int Lo, int Hi)[] Class, int Limit);

    /// <summary>The outcome of a token's walk from a local state (<see cref="Local"/>).</summary>
    public enum TokenVerdict { Rejected, Accepted, Open }

    /// <summary>A position in the grammar: rule, alternative, element index.</summary>
    private readonly record struct Position(int Rule, int Alt, int Index);

    private readonly Grammar _grammar;
    private readonly List<(Position Pos, int Parent)> _nodes = [];
    private readonly Dictionary<(Position, int), int> _nodeIds = [];
    private readonly List<State> _states = [];
    private readonly Dictionary<StateKey, int> _stateIds = [];
    private readonly List<int[]?> _transitions = []; // per state, per byte class (per byte in a partial character): the next state, Unknown until computed (the row itself made on the first step from the state)
    private readonly ByteClasses _classes;
    internal const int Unknown = -2;
    private readonly List<bool> _accepts = []; // per state: some stack is alive or the text may end (the verdict of a walk that stops here)
    private readonly Dictionary<(int, int), CharRun?> _runs = [];
    private const int MaxStates = 100_000;

    /// <summary>Rule references followed without a character in between, at most (a deeper chain would exhaust the thread's stack).</summary>
    private const int MaxExpansion = 2000;

    public GrammarMatcher(Grammar grammar)
        : this(grammar, byteClasses: true)
    {
    }

    /// <summary>A matcher whose rows are per byte class (<paramref name="byteClasses"/>) or per byte (the tests' reference).</summary>
    internal GrammarMatcher(Grammar grammar, bool byteClasses)
    {
        ArgumentNullException.ThrowIfNull(grammar);
        _grammar = grammar;
        _classes = byteClasses ? ByteClasses.Of(grammar) : ByteClasses.PerByte;
        Start = BuildStart();
    }

    public Grammar Grammar => _grammar;

    /// <summary>The state before any text.</summary>
    public int Start { get; private set; }

    /// <summary>The state no text leads out of: every byte from here is rejected.</summary>
    public const int Dead = -1;

    /// <summary>Whether the text may end in <paramref name="state"/> (a complete sentence of the grammar, no partial character).</summary>
    public bool CanEnd(int state) => state >= 0 && (_states[state].Flags & EndFlag) != 0 && _states[state].Remaining == 0;

    /// <summary>Whether any byte can follow <paramref name="state"/>.</summary>
    public bool CanContinue(int state) => state >= 0 && _states[state].Stacks.Length > 0;

    /// <summary>States interned so far (a measure of the caches).</summary>
    public int StateCount => _states.Count;

    /// <summary>The state after <paramref name="b"/> from <paramref name="state"/> (<see cref="Dead"/> if rejected).</summary>
    public int Step(int state, byte b)
    {
        if (state < 0)
            return Dead;
        var row = RowOf(state);
        int k = MapOf(row)[b];
        int next = row[k];
        if (next != Unknown)
            return next;
        next = Compute(_states[state], b);
        row[k] = next; // every byte of the class goes there (ByteClasses)
        return next;
    }

    /// <summary>The state after <paramref name="bytes"/>.</summary>
    public int Step(int state, ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
        {
            state = Step(state, b);
            if (state < 0)
                return Dead;
        }
        return state;
    }

    /// <summary>
    /// The local state of <paramref name="state"/>: each stack cut to its top frames, the rest unknown
    /// (XGrammar's split of context-independent tokens, Dong et al., 2024). A token the local state
    /// accepts without leaving the frame is accepted in every context; one it rejects without leaving
    /// the frame is rejected in every context; only tokens that leave it depend on the full stack.
    /// States with the same top frames share their local state, and so its cached walk.
    /// </summary>
    public int Local(int state)
    {
        if (state < 0)
            return Dead;
        var s = _states[state];
        if (s.Remaining > 0)
            return state; // mid-character: no sharing worth the trouble
        var tops = _scratchTops;
        tops.Clear();
        foreach (int n in s.Stacks)
            tops.Add(Cut(n, LocalDepth));
        return Intern(tops, s.Flags & EndFlag, 0, 0);
    }

    /// <summary>
    /// Frames a local state keeps: one would leave almost every token open where the top frame is a short
    /// or optional rule (whitespace, a sign), so the top few are kept and only what lies below them is cut.
    /// Eight measured best on the schema suite (<c>engine grammar-bench --suite</c>: cold mask medians a
    /// third lower than with four, on 32k and 128k vocabularies; two left too many tokens open).
    /// </summary>
    public int LocalDepth { get; set; } = 8;

    /// <summary>Node <paramref name="n"/> with its chain cut after <paramref name="depth"/> frames.</summary>
    private int Cut(int n, int depth)
    {
        var (pos, parent) = _nodes[n];
        int cut = parent == -1 ? -1 : depth <= 1 ? OuterFrame : Cut(parent, depth - 1);
        return cut == parent ? n : Node(pos, cut);
    }

    /// <summary>What a token's walk from a local state says: accepted or rejected whatever the context, or open (it left the top frame).</summary>
    public TokenVerdict Verdict(int localEnd)
    {
        if (localEnd < 0)
            return TokenVerdict.Rejected;
        var s = _states[localEnd];
        if (s.Stacks.Length > 0 || (s.Flags & EndFlag) != 0)
            return TokenVerdict.Accepted; // some path consumed the token inside the frame (or ended the root)
        return TokenVerdict.Open;
    }

    /// <summary>
    /// The transition row of <paramref name="state"/> (<see cref="Unknown"/> where not computed yet) and the map
    /// from a byte to its entry: the trie walk's inner loop reads <c>row[map[b]]</c> directly.
    /// </summary>
    internal int[] Row(int state, out byte[] map)
    {
        var row = RowOf(state);
        map = MapOf(row);
        return row;
    }

    /// <summary>A row's byte → entry map: by class between characters, by byte inside one (a per-byte row is the only one that long).</summary>
    private byte[] MapOf(int[] row) => row.Length == ByteClasses.Bytes ? ByteClasses.Identity : _classes.Map;

    /// <summary>The transition row of <paramref name="state"/>, made on the first step from it (a walk reaches some states only at a token's end).</summary>
    private int[] RowOf(int state)
    {
        var row = _transitions[state];
        if (row is not null)
            return row;
        var s = _states[state];
        row = new int[s.Remaining > 0 ? ByteClasses.Bytes : _classes.Count];
        System.Array.Fill(row, Unknown);
        if (s.Remaining == 0 && (s.Flags & PoppedFlag) == 0)
            MarkDeadBytes(s.Stacks, row);
        _transitions[state] = row;
        return row;
    }

    /// <summary>Whether a walk ending in <paramref name="state"/> accepted its token inside the frame (<see cref="Verdict"/> without the dead case).</summary>
    internal bool Accepts(int state) => _accepts[state];

    /// <summary>
    /// A run of one character class from <paramref name="state"/>: characters the same stacks take alike,
    /// step after step — the body of a JSON string (<c>char*</c>, unbounded, even where two branches of an
    /// <c>anyOf</c> both read it) or of a bounded one (<c>char{0,40}</c>, each character one position
    /// further). Every token made of up to <c>Limit</c> characters of the class is accepted here; a longer
    /// one is rejected. Null when there is no such run.
    /// </summary>
    /// <remarks>
    /// Exact: a character taken by exactly the stacks that take the probe advances those stacks alone, so
    /// every character of the class — of one byte or several, through the partial-character states — ends
    /// in the same expansion, and the probe walks the whole class's path. The run ends where no stack takes
    /// any of the class (rejected alike), or returns to a state met before (a loop: unbounded).
    /// </remarks>
    /// <param name="maxChars">The longest run worth following (the vocabulary's longest token, in characters).</param>
    internal CharRun? Run(int state, int maxChars)
    {
        if (state < 0)
            return null;
        if (!_runs.TryGetValue((state, maxChars), out var found))
            _runs[(state, maxChars)] = found = FindRun(state, maxChars);
        return found;
    }

    private CharRun? FindRun(int state, int maxChars)
    {
        var s = _states[state];
        if (s.Remaining > 0 || (s.Flags & PoppedFlag) != 0)
            return null;
        Span<byte> probe = stackalloc byte[4];
        var path = _runPath;
        var tried = _runTried;
        tried.Clear();
        for (int i = 0; i < s.Stacks.Length; i++)
        {
            var chars = CharsAt(s.Stacks[i]);
            if (chars.Size < MinLoopCodePoints || !tried.Add(chars.Positive[0].Lo))
                continue;
            // the probe: the class's first character; the run's class, what the same stacks take as it does
            int p = chars.Positive[0].Lo;
            var run = TakenAlike(s.Stacks, p, out var wide);
            if (run is null || CodePointRanges.Size(run) < MinLoopCodePoints)
                continue;
            int n = new System.Text.Rune(p).EncodeToUtf8(probe);
            path.Clear();
            path.Add(state);
            for (int cur = state; ;)
            {
                int next = Step(cur, probe[..n]);
                if (next == Dead)
                {
                    // the run's end (no path left the frame, or the state would not be dead): it ends for the whole class if no stack takes any of it
                    bool clean = true;
                    foreach (int st in _states[cur].Stacks)
                        clean &= !CharsAt(st).Intersects(run);
                    if (clean)
                    {
                        path.Add(Dead);
                        Found(run, path);
                        // each state on the path is in the same run, nearer its end (a class narrower than a
                        // walk from there would find is still exact: its longer tokens are rejected there too),
                        // so the next token's state finds its run here instead of following the path again
                        for (int k = 1; k + 1 < path.Count; k++)
                            _runs.TryAdd((path[k], maxChars), new CharRun(run, path.Count - 2 - k));
                        return new CharRun(run, path.Count - 2); // the limit rejects longer tokens: only the exact class
                    }
                    break;
                }
                if (path.Contains(next) || path.Count > maxChars)
                {
                    // a loop, or alive past every token's length: nothing is rejected, so characters other
                    // stacks take too count as well (they add stacks, the run's stacks stay)
                    path.Add(next);
                    Found(run, path);
                    return new CharRun(wide!, int.MaxValue);
                }
                var ns = _states[next];
                if (ns.Remaining > 0 || (ns.Flags & PoppedFlag) != 0)
                    break; // a path left the frame: what follows depends on the context
                path.Add(next);
                cur = next;
                if (TakenAlike(ns.Stacks, p, out var takers) is { } here)
                {
                    run = CodePointRanges.Intersect(run, here);
                    wide = CodePointRanges.Intersect(wide!, takers!);
                    if (CodePointRanges.Size(run) < MinLoopCodePoints)
                        break;
                }
                // else nobody takes the probe here: the next step is dead, and checks the end
            }
        }
        return null;
    }

    /// <summary>
    /// The characters taken by exactly the stacks that take <paramref name="probe"/> (those in all their
    /// classes and in no other stack's): each advances the same stacks as the probe, into the same
    /// state. Null when no stack takes the probe. <paramref name="takers"/>: what those stacks all take,
    /// other stacks or not (each such character advances them too, and maybe more).
    /// </summary>
    private (int Lo, int Hi)[]? TakenAlike(int[] stacks, int probe, out (int Lo, int Hi)[]? takers)
    {
        (int Lo, int Hi)[]? alike = null;
        foreach (int st in stacks)
        {
            var chars = CharsAt(st);
            if (chars.Contains(probe))
                alike = alike is null ? chars.Positive : CodePointRanges.Intersect(alike, chars.Positive);
        }
        takers = alike;
        if (alike is null)
            return null;
        foreach (int st in stacks)
        {
            var chars = CharsAt(st);
            if (!chars.Contains(probe))
                alike = CodePointRanges.Minus(alike, chars.Positive);
        }
        return alike;
    }

    /// <summary>
    /// The run found, its transitions written into the rows on the way: each state of the path goes to
    /// the next on every one-byte character of the class, so a walk through the run's states (the rest of
    /// the vocabulary, walked at every position of a bounded string) finds them computed.
    /// </summary>
    private void Found((int Lo, int Hi)[] run, List<int> path)
    {
        for (int k = 0; k + 1 < path.Count; k++)
        {
            var row = RowOf(path[k]);
            var map = MapOf(row);
            foreach (var (lo, hi) in run)
            {
                for (int b = lo; b <= Math.Min(hi, 0x7F); b++)
                {
                    if (row[map[b]] == Unknown)
                        row[map[b]] = path[k + 1];
                }
            }
        }
    }

    /// <summary>Classes narrower than this are not looked for: a walk prunes them quickly, and a slice would cost a vocabulary scan.</summary>
    internal const int MinLoopCodePoints = 16;

    private CharSet CharsAt(int node)
    {
        var pos = _nodes[node].Pos;
        return _grammar.Rules[pos.Rule].Alternatives[pos.Alt][pos.Index].Chars!;
    }

    /// <summary>Forgets every cached state (the ids handed out before become invalid); returns the new start.</summary>
    public int Reset()
    {
        _nodes.Clear();
        _nodeIds.Clear();
        _states.Clear();
        _stateIds.Clear();
        _transitions.Clear();
        _accepts.Clear();
        _runs.Clear();
        Start = BuildStart();
        return Start;
    }

    /// <summary>True when the caches passed their bound: the caller should <see cref="Reset"/> and replay its text.</summary>
    public bool Oversized => _states.Count > MaxStates;

    private int BuildStart()
    {
        var stacks = new HashSet<int>();
        int flags = 0;
        var rule = _grammar.Rules[_grammar.Root];
        var seen = new HashSet<(Position, int)>();
        for (int a = 0; a < rule.Alternatives.Count; a++)
            Expand(new Position(_grammar.Root, a, 0), -1, stacks, ref flags, seen);
        return Intern(stacks, flags, 0, 0);
    }

    private int Node(Position pos, int parent)
    {
        if (!_nodeIds.TryGetValue((pos, parent), out int id))
        {
            id = _nodes.Count;
            _nodes.Add((pos, parent));
            _nodeIds[(pos, parent)] = id;
        }
        return id;
    }

    /// <summary>
    /// Adds the stacks that continue from <paramref name="pos"/> (returning to <paramref name="parent"/>)
    /// to a character: rule references push their alternatives (a reference last in its alternative
    /// replaces the frame instead — tail calls keep repetition's stack flat), the end of an alternative
    /// returns to the parent, and the end of the root means the text may end.
    /// </summary>
    private void Expand(Position pos, int parent, HashSet<int> stacks, ref int flags, HashSet<(Position, int)> seen, int depth = 0)
    {
        if (!seen.Add((pos, parent)))
            return;
        if (depth > MaxExpansion)
            throw new GrammarException($"rules reference each other more than {MaxExpansion} deep before a character (at rule '{_grammar.Rules[pos.Rule].Name}')", 0, 0);
        var alt = _grammar.Rules[pos.Rule].Alternatives[pos.Alt];
        if (pos.Index == alt.Length)
        {
            if (parent == -1)
                flags |= EndFlag;
            else if (parent == OuterFrame)
                flags |= PoppedFlag; // a local state's path returned into the frame it does not know
            else
                Expand(_nodes[parent].Pos, _nodes[parent].Parent, stacks, ref flags, seen, depth + 1);
            return;
        }
        var e = alt[pos.Index];
        if (!e.IsRule)
        {
            stacks.Add(Node(pos, parent));
            return;
        }
        var after = pos with { Index = pos.Index + 1 };
        int returnTo = after.Index == alt.Length ? parent : Node(after, parent);
        var callee = _grammar.Rules[e.Rule];
        for (int a = 0; a < callee.Alternatives.Count; a++)
            Expand(new Position(e.Rule, a, 0), returnTo, stacks, ref flags, seen, depth + 1);
    }

    /// <summary>A state: the stacks (node ids, sorted; each top at a character set), whether the text may end, and a partial UTF-8 character (value so far, continuation bytes still due).</summary>
    private sealed record State(int[] Stacks, int Flags, int Partial, int Remaining, int Min);

    private const int EndFlag = 1, PoppedFlag = 2;

    /// <summary>The parent of a local state's stacks: the frame below the top, left unknown.</summary>
    private const int OuterFrame = -3;

    /// <summary>A state's identity: its sorted stacks and the rest, hashed once.</summary>
    private readonly struct StateKey(int[] stacks, int count, int canEnd, int partial, int remaining, int min) : IEquatable<StateKey>
    {
        private readonly int _hash = Hash(stacks, count, canEnd, partial, remaining, min);
        public int[] Stacks { get; } = stacks;
        public int Count { get; } = count;
        public int CanEnd { get; } = canEnd;
        public int Partial { get; } = partial;
        public int Remaining { get; } = remaining;
        public int Min { get; } = min;

        private static int Hash(int[] stacks, int count, int canEnd, int partial, int remaining, int min)
        {
            var h = new HashCode();
            for (int i = 0; i < count; i++)
                h.Add(stacks[i]);
            h.Add(canEnd);
            h.Add(partial);
            h.Add(remaining);
            h.Add(min);
            return h.ToHashCode();
        }

        public bool Equals(StateKey o) => _hash == o._hash && Count == o.Count && CanEnd == o.CanEnd && Partial == o.Partial && Remaining == o.Remaining
            && Min == o.Min && Stacks.AsSpan(0, Count).SequenceEqual(o.Stacks.AsSpan(0, o.Count));

        public override bool Equals(object? obj) => obj is StateKey k && Equals(k);

        public override int GetHashCode() => _hash;
    }

    private int[] _sortBuffer = new int[16];
    private readonly HashSet<int> _scratchStacks = [];
    private readonly HashSet<int> _scratchTops = []; // Local's
    private readonly List<int> _runPath = []; // FindRun's (it never nests: a step computes no run)
    private readonly HashSet<int> _runTried = [];
    private readonly HashSet<(Position, int)> _scratchSeen = [];

    private int Intern(HashSet<int> stacks, int flags, int partial, int remaining, int min = 0)
    {
        if (stacks.Count == 0 && flags == 0)
            return Dead;
        if (_sortBuffer.Length < stacks.Count)
            _sortBuffer = new int[Math.Max(stacks.Count, 2 * _sortBuffer.Length)];
        stacks.CopyTo(_sortBuffer);
        Array.Sort(_sortBuffer, 0, stacks.Count);
        if (_stateIds.TryGetValue(new StateKey(_sortBuffer, stacks.Count, flags, partial, remaining, min), out int id))
            return id; // seen before: nothing allocated
        var sorted = _sortBuffer.AsSpan(0, stacks.Count).ToArray();
        var key = new StateKey(sorted, sorted.Length, flags, partial, remaining, min);
        id = _states.Count;
        _states.Add(new State(sorted, flags, partial, remaining, min));
        _transitions.Add(null);
        _accepts.Add(sorted.Length > 0 || (flags & EndFlag) != 0);
        _stateIds[key] = id;
        return id;
    }

    /// <summary>
    /// Marks dead the bytes no stack's character set can begin with (an ASCII character outside every set, a
    /// lead byte of no character any set holds, a continuation byte): a trie walk from a fresh state then
    /// skips most of the 256 first bytes without computing them. (Not for partial characters, nor where a
    /// path left a local state's frames, whose outcome is open.)
    /// </summary>
    private void MarkDeadBytes(int[] stacks, int[] row)
    {
        Span<bool> live = stackalloc bool[256];
        foreach (int st in stacks)
        {
            foreach (var (lo, hi) in CharsAt(st).Positive)
            {
                for (int c = lo; c <= Math.Min(hi, 0x7F); c++)
                    live[c] = true;
                if (hi >= 0x80)
                {
                    int from = LeadByte(Math.Max(lo, 0x80)), to = LeadByte(hi);
                    for (int b = from; b <= to; b++)
                        live[b] = true;
                }
            }
        }
        var map = _classes.Map; // (the bytes of a class are live or dead together)
        for (int b = 0; b < 256; b++)
        {
            if (!live[b])
                row[map[b]] = Dead;
        }

        static int LeadByte(int c) => c < 0x800 ? 0xC0 | (c >> 6) : c < 0x10000 ? 0xE0 | (c >> 12) : 0xF0 | (c >> 18);
    }

    /// <summary>A partial state's <see cref="State.Partial"/> when the value no longer matters: every stack kept accepts every completion.</summary>
    private const int AnyCompletion = -1;

    private int Compute(State s, byte b)
    {
        if (s.Remaining > 0)
        {
            if ((b & 0xC0) != 0x80)
                return Dead; // a character's continuation byte was due
            if (s.Partial == AnyCompletion)
            {
                // the value's bits do not matter: count the bytes down, then every stack takes the character
                if (s.Remaining > 1)
                    return InternPartial(s.Stacks, AnyCompletion, s.Remaining - 1, 0, s.Flags);
                return AdvanceAll(s.Stacks, s.Flags & PoppedFlag);
            }
            int value = (s.Partial << 6) | (b & 0x3F);
            if (s.Remaining > 1 && Canonical(s.Stacks, value, s.Remaining - 1, s.Min, s.Flags) is int canonical)
                return canonical;
            if (s.Remaining > 1)
                return Possible(s.Stacks, value, s.Remaining - 1, s.Min) || (s.Flags & PoppedFlag) != 0 ? InternPartial(s.Stacks, value, s.Remaining - 1, s.Min, s.Flags) : Dead;
            // UTF-8 forbids overlong forms (F0 80 81 BB is not '{'), surrogates and values past U+10FFFF
            if (value < s.Min || value > 0x10FFFF || value is >= 0xD800 and <= 0xDFFF)
                return Dead;
            return Advance(s.Stacks, value, s.Flags & PoppedFlag);
        }
        if (b < 0x80)
            return Advance(s.Stacks, b, s.Flags & PoppedFlag);
        int more = (b & 0xE0) == 0xC0 ? 1 : (b & 0xF0) == 0xE0 ? 2 : (b & 0xF8) == 0xF0 ? 3 : -1;
        if (more < 0)
            return Dead; // not a lead byte
        int lead = b & (0x3F >> more);
        int min = more switch { 1 => 0x80, 2 => 0x800, _ => 0x10000 }; // the least value that needs this many bytes
        if (Canonical(s.Stacks, lead, more, min, s.Flags) is int any)
            return any;
        return Possible(s.Stacks, lead, more, min) || (s.Flags & PoppedFlag) != 0 ? InternPartial(s.Stacks, lead, more, min, s.Flags) : Dead;
    }

    /// <summary>
    /// A partial character whose completions [lo, hi] are all valid UTF-8 and which every stack either
    /// accepts whole or rejects whole needs no value: the state keeps the accepting stacks and counts the
    /// bytes still due. Inside a JSON string this folds the thousands of (lead, continuation) states of
    /// multi-byte characters into three. Null where the value still decides something.
    /// </summary>
    private int? Canonical(int[] stacks, int value, int remaining, int min, int flags)
    {
        int lo = value << (6 * remaining), hi = lo | ((1 << (6 * remaining)) - 1);
        if (lo < min || hi > 0x10FFFF || (lo <= 0xDFFF && hi >= 0xD800))
            return null; // overlong forms, surrogates or values past Unicode among the completions
        _scratchStacks.Clear();
        foreach (int st in stacks)
        {
            var (pos, _) = _nodes[st];
            var chars = _grammar.Rules[pos.Rule].Alternatives[pos.Alt][pos.Index].Chars!;
            if (chars.ContainsAll(lo, hi))
                _scratchStacks.Add(st);
            else if (chars.Intersects(lo, hi))
                return null; // this stack takes some completions and not others
        }
        if (_scratchStacks.Count == 0 && (flags & PoppedFlag) == 0)
            return Dead;
        return Intern(_scratchStacks, flags & PoppedFlag, AnyCompletion, remaining, 0);
    }

    /// <summary>The state after a character every stack accepts (a canonical partial state's end).</summary>
    private int AdvanceAll(int[] stacks, int popped)
    {
        var next = _scratchStacks;
        next.Clear();
        int flags = popped;
        var seen = _scratchSeen;
        seen.Clear();
        foreach (int st in stacks) // (a state's own array: Expand fills only the scratch sets)
        {
            var (pos, parent) = _nodes[st];
            Expand(pos with { Index = pos.Index + 1 }, parent, next, ref flags, seen);
        }
        return Intern(next, flags, 0, 0);
    }

    private int InternPartial(int[] stacks, int value, int remaining, int min, int popped)
    {
        _scratchStacks.Clear();
        foreach (int st in stacks)
            _scratchStacks.Add(st);
        return Intern(_scratchStacks, popped & PoppedFlag, value, remaining, min);
    }

    /// <summary>Whether a character beginning with these bits (<paramref name="remaining"/> continuation bytes to come, at least <paramref name="min"/>) can match some stack.</summary>
    private bool Possible(int[] stacks, int value, int remaining, int min)
    {
        int lo = Math.Max(min, value << (6 * remaining)), hi = Math.Min(0x10FFFF, (value << (6 * remaining)) | ((1 << (6 * remaining)) - 1));
        if (lo > hi)
            return false;
        foreach (int s in stacks)
        {
            var (pos, _) = _nodes[s];
            if (_grammar.Rules[pos.Rule].Alternatives[pos.Alt][pos.Index].Chars!.Intersects(lo, hi))
                return true;
        }
        return false;
    }

    /// <summary>The state after the whole character <paramref name="codePoint"/>.</summary>
    private int Advance(int[] stacks, int codePoint, int popped)
    {
        var next = _scratchStacks;
        next.Clear();
        int flags = popped; // once a path left the frame, the outcome stays open
        var seen = _scratchSeen;
        seen.Clear();
        foreach (int s in stacks)
        {
            var (pos, parent) = _nodes[s];
            if (_grammar.Rules[pos.Rule].Alternatives[pos.Alt][pos.Index].Chars!.Contains(codePoint))
                Expand(pos with { Index = pos.Index + 1 }, parent, next, ref flags, seen);
        }
        return Intern(next, flags, 0, 0);
    }
}
