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
/// after the first); reported: compile time (median), mask time per token (mean, median, p99, max: the
/// allowed-token bit set computed, as the field's mask times are), and apart from it the time to write the
/// mask over the logits. <c>--suite</c> runs a folder of JSON schema cases (tools/grammar-suite) with a row each.
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
        var text = new Option<string?>("--text") { Description = "A text the grammar accepts (or @FILE), walked token by token" };
        var suite = new Option<string?>("--suite") { Description = "A folder of JSON schema cases (files with 'schema' and 'instance'): each schema compiled and its instance walked; a table per schema" };
        var reps = new Option<int>("--repetitions", "-r") { Description = "Repetitions (the first also warms up)", DefaultValueFactory = _ => 5 };
        var json = new Option<bool>("--json") { Description = "One JSON object" };
        var command = new Command("grammar-bench", "Measure grammar compile time and per-token mask time on a vocabulary") { vocab, grammarText, grammarFile, schema, regex, text, suite, reps, json };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            int r = parse.GetValue(reps);
            if (r < 1)
                throw new ArgumentException($"--repetitions {r} must be at least 1");
            var tokenizer = LanguageModel.LoadTokenizer(parse.GetRequiredValue(vocab));
            var trieClock = Stopwatch.StartNew();
            var trie = TokenTrie.For(tokenizer);
            double trieMs = trieClock.Elapsed.TotalMilliseconds;
            var cases = new List<(string Name, Func<Grammar> Compile, string Text)>();
            if (parse.GetValue(suite) is string folder)
            {
                if (!Directory.Exists(folder))
                    throw new DirectoryNotFoundException($"--suite {folder}: no such folder");
                foreach (string file in Directory.GetFiles(folder, "*.json").Order(StringComparer.Ordinal))
                {
                    var (schemaText, instance) = SuiteCase(file);
                    cases.Add((Path.GetFileNameWithoutExtension(file), () => JsonSchemaGrammar.Compile(schemaText, cache: false), instance));
                }
                if (cases.Count == 0)
                    throw new ArgumentException($"--suite {folder}: no .json files");
            }
            else
            {
                string sentence = parse.GetValue(text) ?? throw new ArgumentException("give --text (or --suite)");
                if (sentence.StartsWith('@'))
                    sentence = File.ReadAllText(sentence[1..]);
                string? g = parse.GetValue(grammarText), gf = parse.GetValue(grammarFile), js = parse.GetValue(schema), rx = parse.GetValue(regex);
                if (GrammarOption.Load(g, gf, js, rx, cache: false) is null)
                    throw new ArgumentException("give one of --grammar, --grammar-file, --json-schema and --regex");
                cases.Add(("grammar", () => GrammarOption.Load(g, gf, js, rx, cache: false)!, sentence));
            }
            var logits = new float[tokenizer.VocabSize];
            var results = new List<CaseResult>();
            var cutter = new LongestMatch(tokenizer);
            foreach (var (name, compile, sentence) in cases)
                results.Add(Measure(name, compile, cutter.Cut(System.Text.Encoding.UTF8.GetBytes(sentence)), tokenizer, logits, r));
            var cold = results.SelectMany(x => x.Cold).Order().ToList();
            var warm = results.SelectMany(x => x.Warm).Order().ToList();
            var compileAll = results.Select(x => x.CompileMs).Order().ToList();
            if (parse.GetValue(json))
            {
                io.Out.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
                {
                    ["vocab"] = Path.GetFileName(parse.GetRequiredValue(vocab)),
                    ["vocab_size"] = tokenizer.VocabSize,
                    ["trie_nodes"] = trie.Nodes,
                    ["cases"] = results.Count,
                    ["tokens"] = results.Sum(x => x.Tokens),
                    ["compile_ms_median"] = compileAll[compileAll.Count / 2],
                    ["cold_mask_us_mean"] = cold.Average(),
                    ["cold_mask_us_median"] = P(cold, 0.5),
                    ["cold_mask_us_p99"] = P(cold, 0.99),
                    ["warm_mask_us_mean"] = warm.Average(),
                    ["warm_mask_us_median"] = P(warm, 0.5),
                    ["warm_mask_us_p99"] = P(warm, 0.99),
                    ["apply_us_mean"] = results.Average(x => x.ApplyMean),
                    ["per_case"] = results.Select(x => new Dictionary<string, object>
                    {
                        ["name"] = x.Name,
                        ["tokens"] = x.Tokens,
                        ["compile_ms"] = x.CompileMs,
                        ["cold_mask_us_mean"] = x.Cold.Average(),
                        ["cold_mask_us_p99"] = P(x.Cold, 0.99),
                        ["warm_mask_us_mean"] = x.Warm.Average(),
                    }).ToList(),
                }));
                return 0;
            }
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"vocab {tokenizer.VocabSize} tokens (trie {trie.Nodes} nodes, {trieMs:F0} ms) | {results.Count} case(s), {results.Sum(x => x.Tokens)} tokens × {r}"));
            if (results.Count > 1)
            {
                io.Out.WriteLine("| case | tokens | compile ms | cold mean µs | cold p99 µs | warm mean µs |");
                io.Out.WriteLine("|---|---:|---:|---:|---:|---:|");
                foreach (var x in results)
                {
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {x.Name} | {x.Tokens} | {x.CompileMs:F2} | {x.Cold.Average():F0} | {P(x.Cold, 0.99):F0} | {x.Warm.Average():F1} |"));
                }
            }
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  compile: median {compileAll[compileAll.Count / 2]:F2} ms, max {compileAll[^1]:F2} ms"));
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  cold (a fresh grammar): mask mean {cold.Average():F0} µs, median {P(cold, 0.5):F0} µs, p99 {P(cold, 0.99):F0} µs, max {cold[^1]:F0} µs"));
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  warm (the grammar served before): mask mean {warm.Average():F1} µs, median {P(warm, 0.5):F0} µs, p99 {P(warm, 0.99):F0} µs, max {warm[^1]:F0} µs"));
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  apply (the mask written over {tokenizer.VocabSize} logits, after it is computed): mean {results.Average(x => x.ApplyMean):F1} µs"));
            return 0;
        }));
        return command;
    }

    private static double P(List<double> sorted, double q) => sorted[Math.Min(sorted.Count - 1, (int)(q * sorted.Count))];

    private sealed record CaseResult(string Name, int Tokens, double CompileMs, List<double> Cold, List<double> Warm, double ApplyMean);

    /// <summary>
    /// One case: the compile time (median of the repetitions: the grammar parsed and its matcher built),
    /// then the walk of the text from fresh grammars (cold: every cache of the grammar empty) and again
    /// and again over one grammar (warm).
    /// </summary>
    private static CaseResult Measure(string name, Func<Grammar> compile, List<int> ids, Engine.Tokenizers.TextTokenizer tokenizer, float[] logits, int repetitions)
    {
        var apply = new List<double>();
        var compileTimes = new List<double>();
        for (int i = 0; i <= repetitions; i++)
        {
            var clock = Stopwatch.StartNew();
            _ = new GrammarMatcher(compile());
            if (i > 0)
                compileTimes.Add(clock.Elapsed.TotalMilliseconds);
        }
        List<double> Walk(Grammar g)
        {
            var times = new List<double>(ids.Count);
            var constraint = new GrammarConstraint(g, tokenizer);
            for (int i = 0; i < ids.Count; i++)
            {
                Array.Clear(logits);
                var clock = Stopwatch.StartNew();
                constraint.ComputeMask();
                double mask = clock.Elapsed.TotalMicroseconds;
                constraint.Apply(logits);
                times.Add(mask);
                apply.Add(clock.Elapsed.TotalMicroseconds - mask);
                if (!constraint.Allows(ids[i]))
                    throw new ArgumentException($"{name}: the grammar does not accept token {i} ('{tokenizer.Piece(ids[i])}') of the text's tokenization");
                constraint.Accept(ids[i]);
            }
            if (!constraint.CanEnd)
                throw new ArgumentException($"{name}: the grammar does not accept the whole text (it is only a prefix)");
            return times;
        }
        Walk(compile()); // JIT warm-up, and the vocabulary's slices
        var cold = new List<double>();
        for (int rep = 0; rep < repetitions; rep++)
            cold.AddRange(Walk(compile())); // a grammar compiled afresh: its caches empty
        var warmGrammar = compile();
        Walk(warmGrammar);
        var warm = new List<double>();
        for (int rep = 0; rep < repetitions; rep++)
            warm.AddRange(Walk(warmGrammar)); // the same grammar again: what serving one schema many times costs
        cold.Sort();
        warm.Sort();
        compileTimes.Sort();
        return new CaseResult(name, ids.Count, compileTimes[compileTimes.Count / 2], cold, warm, apply.Average());
    }

    /// <summary>A suite file's schema (as text) and its instance as compact JSON, properties in the file's order.</summary>
    internal static (string Schema, string Instance) SuiteCase(string file)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(file));
        if (!doc.RootElement.TryGetProperty("schema", out var schema) || !doc.RootElement.TryGetProperty("instance", out var instance))
            throw new ArgumentException($"{file}: a suite case needs 'schema' and 'instance'");
        var options = new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        return (schema.GetRawText(), JsonSerializer.Serialize(instance, options));
    }

    /// <summary>Texts cut into the longest vocabulary pieces from left to right (normal and byte tokens); the pieces are indexed once per vocabulary.</summary>
    private sealed class LongestMatch
    {
        private readonly Dictionary<string, int> _pieces = new(StringComparer.Ordinal);
        private readonly int _longest = 1;

        public LongestMatch(Engine.Tokenizers.TextTokenizer tokenizer)
        {
            for (int id = 0; id < tokenizer.VocabSize; id++)
            {
                if (tokenizer.Kind(id) is not (Engine.Tokenizers.TokenKind.Normal or Engine.Tokenizers.TokenKind.Byte))
                    continue;
                var bytes = tokenizer.TokenBytes(id);
                if (bytes.Length == 0)
                    continue;
                _pieces.TryAdd(Convert.ToHexString(bytes), id);
                _longest = Math.Max(_longest, bytes.Length);
            }
        }

        public List<int> Cut(byte[] text)
        {
            var ids = new List<int>();
            for (int at = 0; at < text.Length;)
            {
                int length = Math.Min(_longest, text.Length - at);
                for (; length > 0; length--)
                {
                    if (_pieces.TryGetValue(Convert.ToHexString(text, at, length), out int id))
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
}
