using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Engine.Api;
using Engine.Constraints;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine grammar-bench</c>: how long a grammar takes to compile and to mask the vocabulary, token by
/// token along a text the grammar accepts (the text's own tokenization, as a model writing it would step).
/// The text is cut into tokens by longest match over the vocabulary's byte strings (a SentencePiece
/// tokenizer would add a leading space the grammar may not allow; a model writes the bytes either way).
/// Each repetition starts a fresh constraint (its mask cache empty, the vocabulary's trie and the JIT warm
/// after the first); reported: compile time (median), mask time per token (mean, median, p99, max), and
/// how many of the masks were cache hits.
/// </summary>
internal static class GrammarBenchCommand
{
    public static Command Create(CliOutput io)
    {
        var vocab = new Option<string>("--vocab", "-m") { Description = "A model or vocabulary-only GGUF (its tokenizer is used)", Required = true };
        var grammarText = new Option<string?>("--grammar") { Description = "GBNF text" };
        var grammarFile = new Option<string?>("--grammar-file") { Description = "GBNF file" };
        var schema = new Option<string?>("--json-schema") { Description = "JSON schema text or @FILE" };
        var regex = new Option<string?>("--regex") { Description = "A regular expression" };
        var text = new Option<string>("--text") { Description = "A text the grammar accepts (or @FILE), walked token by token", Required = true };
        var reps = new Option<int>("--repetitions", "-r") { Description = "Repetitions (the first also warms up)", DefaultValueFactory = _ => 5 };
        var json = new Option<bool>("--json") { Description = "One JSON object" };
        var command = new Command("grammar-bench", "Measure grammar compile time and per-token mask time on a vocabulary") { vocab, grammarText, grammarFile, schema, regex, text, reps, json };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            int r = parse.GetValue(reps);
            if (r < 1)
                throw new ArgumentException($"--repetitions {r} must be at least 1");
            string sentence = parse.GetRequiredValue(text);
            if (sentence.StartsWith('@'))
                sentence = File.ReadAllText(sentence[1..]);
            var tokenizer = LanguageModel.LoadTokenizer(parse.GetRequiredValue(vocab));
            var compile = new List<double>();
            Grammar? grammar = null;
            for (int i = 0; i <= r; i++)
            {
                var clock = Stopwatch.StartNew();
                grammar = GrammarOption.Load(parse.GetValue(grammarText), parse.GetValue(grammarFile), parse.GetValue(schema), parse.GetValue(regex), cache: false)
                    ?? throw new ArgumentException("give one of --grammar, --grammar-file, --json-schema and --regex");
                _ = new GrammarMatcher(grammar);
                if (i > 0)
                    compile.Add(clock.Elapsed.TotalMilliseconds);
            }
            var trieClock = Stopwatch.StartNew();
            var trie = TokenTrie.For(tokenizer);
            double trieMs = trieClock.Elapsed.TotalMilliseconds;
            var ids = LongestMatch(tokenizer, System.Text.Encoding.UTF8.GetBytes(sentence));
            var logits = new float[tokenizer.VocabSize];
            Grammar Compile() => GrammarOption.Load(parse.GetValue(grammarText), parse.GetValue(grammarFile), parse.GetValue(schema), parse.GetValue(regex), cache: false)!;
            // one walk of the text: each step's mask time
            List<double> Walk(Grammar g)
            {
                var times = new List<double>();
                var constraint = new GrammarConstraint(g, tokenizer);
                for (int i = 0; i < ids.Count; i++)
                {
                    Array.Clear(logits);
                    var clock = Stopwatch.StartNew();
                    constraint.Apply(logits);
                    times.Add(clock.Elapsed.TotalMicroseconds);
                    if (!constraint.Allows(ids[i]))
                        throw new ArgumentException($"--text: the grammar does not accept token {i} ('{tokenizer.Piece(ids[i])}') of the text's tokenization");
                    constraint.Accept(ids[i]);
                }
                if (!constraint.CanEnd)
                    throw new ArgumentException("--text: the grammar does not accept the whole text (it is only a prefix)");
                return times;
            }
            Walk(Compile()); // JIT warm-up
            var cold = new List<double>();
            for (int rep = 0; rep < r; rep++)
                cold.AddRange(Walk(Compile())); // a grammar compiled afresh: its caches empty
            var warmGrammar = Compile();
            Walk(warmGrammar);
            var warm = new List<double>();
            for (int rep = 0; rep < r; rep++)
                warm.AddRange(Walk(warmGrammar)); // the same grammar again: what serving one schema many times costs
            cold.Sort();
            warm.Sort();
            static double P(List<double> t, double q) => t[Math.Min(t.Count - 1, (int)(q * t.Count))];
            double compileMedian = compile.Order().ElementAt(compile.Count / 2);
            if (parse.GetValue(json))
            {
                io.Out.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
                {
                    ["vocab"] = Path.GetFileName(parse.GetRequiredValue(vocab)),
                    ["vocab_size"] = tokenizer.VocabSize,
                    ["trie_nodes"] = trie.Nodes,
                    ["tokens"] = ids.Count,
                    ["compile_ms"] = compileMedian,
                    ["cold_mask_us_mean"] = cold.Average(),
                    ["cold_mask_us_median"] = P(cold, 0.5),
                    ["cold_mask_us_p99"] = P(cold, 0.99),
                    ["warm_mask_us_mean"] = warm.Average(),
                    ["warm_mask_us_median"] = P(warm, 0.5),
                    ["warm_mask_us_p99"] = P(warm, 0.99),
                }));
            }
            else
            {
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"vocab {tokenizer.VocabSize} tokens (trie {trie.Nodes} nodes, {trieMs:F0} ms) | compile {compileMedian:F2} ms | {ids.Count} tokens × {r}"));
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  cold (a fresh grammar): mask mean {cold.Average():F0} µs, median {P(cold, 0.5):F0} µs, p99 {P(cold, 0.99):F0} µs, max {cold[^1]:F0} µs"));
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  warm (the grammar served before): mask mean {warm.Average():F0} µs, median {P(warm, 0.5):F0} µs, p99 {P(warm, 0.99):F0} µs, max {warm[^1]:F0} µs"));
            }
            return 0;
        }));
        return command;
    }

    /// <summary>The text as the longest vocabulary pieces from left to right (normal and byte tokens).</summary>
    private static List<int> LongestMatch(Engine.Tokenizers.TextTokenizer tokenizer, byte[] text)
    {
        var pieces = new Dictionary<string, int>(StringComparer.Ordinal);
        int longest = 1;
        for (int id = 0; id < tokenizer.VocabSize; id++)
        {
            if (tokenizer.Kind(id) is not (Engine.Tokenizers.TokenKind.Normal or Engine.Tokenizers.TokenKind.Byte))
                continue;
            var bytes = tokenizer.TokenBytes(id);
            if (bytes.Length == 0)
                continue;
            pieces.TryAdd(Convert.ToHexString(bytes), id);
            longest = Math.Max(longest, bytes.Length);
        }
        var ids = new List<int>();
        for (int at = 0; at < text.Length;)
        {
            int length = Math.Min(longest, text.Length - at);
            for (; length > 0; length--)
            {
                if (pieces.TryGetValue(Convert.ToHexString(text, at, length), out int id))
                {
                    ids.Add(id);
                    break;
                }
            }
            if (length == 0)
                throw new ArgumentException($"--text: byte {at} ({text[at]:X2}) has no token in this vocabulary");
            at += length;
        }
        return ids;
    }
}
