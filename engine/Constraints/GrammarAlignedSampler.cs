using Engine.Api;
using Engine.Backends;
using Engine.Cache;

namespace Engine.Constraints;

/// <summary>
/// Grammar-aligned sampling by ASAp (Park et al., "Grammar-Aligned Decoding", NeurIPS 2024). Masking
/// (grammar-constrained decoding) renormalizes each step over the allowed tokens, which favours prefixes
/// whose allowed continuations the model happens to like, whatever their overall probability: the output
/// is not the model's distribution conditioned on the grammar. ASAp keeps, over the prefixes it has
/// sampled, an estimate of each prefix's expected future grammaticality — the probability that the
/// model's continuation from it stays in the grammar — optimistic (1) where unexplored, and samples each
/// token in proportion to p(token) × EFG(prefix + token). After each sample the estimates along its path
/// are recomputed from the children (EFG(w) = Σ_t p(t | w)·EFG(w t), masked tokens contributing 0), so
/// they converge to the truth and the samples to P(· | grammatical). Reusable: one instance learns over
/// all its samples for one prompt.
/// </summary>
public sealed class GrammarAlignedSampler : IDisposable
{
    private readonly LanguageModel _model;
    private readonly int[] _prompt;
    private readonly int _maxTokens;
    private readonly GrammarMatcher _matcher;
    private readonly TokenTrie _trie;
    private readonly KvCache _cache;
    private readonly KvSequence _scratch;
    private readonly List<int> _computed = []; // the tokens in the scratch sequence after the prompt
    private readonly Node _root;
    private readonly float[] _logits;

    /// <param name="maxTokens">Longest sentence sampled; a path that reaches it without ending counts as ungrammatical.</param>
    public GrammarAlignedSampler(LanguageModel model, Grammar grammar, IReadOnlyList<int> prompt, int maxTokens = 64)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(grammar);
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Count == 0)
            throw new ArgumentException("the prompt is empty (it needs at least one token, e.g. BOS)", nameof(prompt));
        if (maxTokens < 1 || prompt.Count + maxTokens > model.ContextLength)
            throw new ArgumentOutOfRangeException(nameof(maxTokens), $"--asap-max-tokens {maxTokens} must be at least 1 and fit the context with the prompt ({prompt.Count} + {maxTokens} > {model.ContextLength})");
        _model = model;
        _prompt = [.. prompt];
        _maxTokens = maxTokens;
        _matcher = new GrammarMatcher(grammar);
        _trie = TokenTrie.For(model.Tokenizer);
        _cache = model.Network.CreateKvCache(model.ContextLength);
        _scratch = _cache.CreateSequence();
        _logits = new float[model.Config.VocabSize];
        _root = new Node(_matcher.Start, 0);
    }

    /// <summary>The current estimate of the probability that the model's output from the prompt is in the grammar.</summary>
    public double Grammaticality => _root.Efg;

    /// <summary>Samples one sentence of the grammar (its tokens, without the end token) and refines the estimates.</summary>
    public IReadOnlyList<int> Sample(Random random)
    {
        ArgumentNullException.ThrowIfNull(random);
        var path = new List<Node> { _root };
        var tokens = new List<int>();
        var node = _root;
        int eos = _model.Tokenizer.EosId ?? throw new InvalidOperationException("grammar-aligned sampling needs the model's end token");
        bool ended = false;
        while (tokens.Count < _maxTokens)
        {
            var allowed = Expand(node, tokens);
            // weights: p(t) × EFG(child), an unexplored allowed child counting 1
            double total = 0;
            foreach (var (t, p) in allowed)
                total += p * (node.Children.TryGetValue(t, out var c) ? c.Efg : 1);
            if (!(total > 0))
                break; // every continuation is known to fail: this path is a dead end
            double u = random.NextDouble() * total;
            int chosen = allowed[^1].Token;
            foreach (var (t, p) in allowed)
            {
                u -= p * (node.Children.TryGetValue(t, out var c) ? c.Efg : 1);
                if (u < 0)
                {
                    chosen = t;
                    break;
                }
            }
            if (chosen == eos)
            {
                ended = true;
                break;
            }
            if (!node.Children.TryGetValue(chosen, out var child))
            {
                child = new Node(_matcher.Step(node.State, _model.Tokenizer.TokenBytes(chosen)), node.Depth + 1);
                node.Children[chosen] = child;
            }
            tokens.Add(chosen);
            node = child;
            path.Add(node);
        }
        if (!ended)
            node.Efg = 0; // cut at the length limit (or a dead end): no grammatical future known from here
        // refine the estimates bottom-up along the path
        for (int i = path.Count - 1; i >= 0; i--)
        {
            var n = path[i];
            if (n.Allowed is null || (i == path.Count - 1 && !ended))
                continue;
            double efg = 0;
            foreach (var (t, p) in n.Allowed)
                efg += p * (t == eos ? 1 : n.Children.TryGetValue(t, out var c) ? c.Efg : 1);
            n.Efg = efg;
        }
        return tokens;
    }

    /// <summary>The model's distribution at a node, restricted to the tokens the grammar allows there (once per node).</summary>
    private List<(int Token, double P)> Expand(Node node, List<int> tokens)
    {
        if (node.Allowed is { } known)
            return known;
        // the scratch sequence holds prompt + _computed: keep the common prefix, run the rest
        int common = 0;
        while (common < _computed.Count && common < tokens.Count && _computed[common] == tokens[common])
            common++;
        int keep = _prompt.Length + common;
        int[] run;
        if (_scratch.Length == 0)
            run = [.. _prompt, .. tokens];
        else
        {
            // rerun the last kept token so that its logits are fresh
            _scratch.Truncate(keep - 1);
            run = [(common == 0 ? _prompt[^1] : tokens[common - 1]), .. tokens.Skip(common)];
        }
        int start = _scratch.Length;
        var positions = new int[run.Length];
        for (int i = 0; i < run.Length; i++)
            positions[i] = start + i;
        _model.Network.Forward(_scratch, run, positions, AttentionMask.Causal, [run.Length - 1], _logits);
        _computed.Clear();
        _computed.AddRange(tokens);
        var logProbs = new float[_logits.Length];
        Engine.Decoding.Distributions.LogSoftmax(_logits, logProbs);
        var mask = new ulong[(_trie.VocabSize + 63) / 64];
        _trie.Allowed(_matcher, node.State, mask);
        var allowed = new List<(int, double)>();
        for (int t = 0; t < _trie.VocabSize; t++)
        {
            if ((mask[t >> 6] & (1UL << (t & 63))) != 0)
                allowed.Add((t, Math.Exp(logProbs[t])));
        }
        if (_matcher.CanEnd(node.State) && _model.Tokenizer.EosId is int eos)
            allowed.Add((eos, Math.Exp(logProbs[eos])));
        node.Allowed = allowed;
        return allowed;
    }

    /// <summary>A sampled prefix: its grammar state, its allowed tokens with the model's probabilities, its children and its EFG estimate.</summary>
    private sealed class Node(int state, int depth)
    {
        public int State { get; } = state;
        public int Depth { get; } = depth;
        public List<(int Token, double P)>? Allowed { get; set; }
        public Dictionary<int, Node> Children { get; } = [];
        public double Efg { get; set; } = 1;
    }

    public void Dispose()
    {
        _scratch.Dispose();
        _cache.Dispose();
    }
}
