using Engine.Api;
using Engine.Cli;

namespace Engine.Tests;

/// <summary>The <c>engine</c> command line, run in-process with captured output.</summary>
public class CliTests
{
    /// <summary>Runs the CLI in-process (used by the tool and speculative tests too).</summary>
    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = EngineCli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Test]
    public void Generate_ids_from_bos_match_the_reference()
    {
        var expected = SharedData.StoriesExpected();
        var (code, output, err) = Run("generate", "-m", SharedData.StoriesGguf, "--prompt-ids", "1", "-n", "256", "--temp", "0", "--ids");
        Assert.That(code, Is.Zero, err);
        Assert.That(output.Trim(), Is.EqualTo(string.Join(' ', expected.FromBos)));
        Assert.That(err, Does.Match(@"prompt: 1 tokens, [\d.]+ tokens/s \| generation: 256 tokens, [\d.]+ tokens/s"));
    }

    [TestCase("gguf")]
    [TestCase("hf")]
    public void Generate_after_a_prompt_matches_ids_and_text(string source)
    {
        var expected = SharedData.StoriesExpected();
        string model = source == "gguf" ? SharedData.StoriesGguf : SharedData.StoriesHf;
        string prompt = "Once upon a time, there was a little dog";
        var ids = Run("generate", "-m", model, "-p", prompt, "-n", "48", "--temp", "0", "--ids");
        Assert.That(ids.Code, Is.Zero, ids.Err);
        Assert.That(ids.Out.Trim(), Is.EqualTo(string.Join(' ', expected.AfterPrompt)));
        var text = Run("generate", "-m", model, "-p", prompt, "-n", "48", "--temp", "0");
        Assert.That(text.Code, Is.Zero, text.Err);
        Assert.That(text.Out, Is.EqualTo(expected.TextAfterPrompt + Environment.NewLine));
    }

    /// <summary>Each strategy at its neutral setting reproduces the reference greedy ids through the CLI.</summary>
    [TestCase("--strategy", "beam", "--beams", "1")]
    [TestCase("--strategy", "contrastive", "--penalty-alpha", "0")]
    [TestCase("--strategy", "cad", "--context", "", "--alpha", "0")]
    [TestCase("--strategy", "adacad", "--context", "")]
    [TestCase("--strategy", "cfg", "--guidance-scale", "1")]
    [TestCase("--strategy", "cautious", "--entropy-threshold", "7")]
    public void Generate_with_a_neutral_strategy_matches_the_reference_ids(params string[] strategy)
    {
        var expected = SharedData.StoriesExpected();
        var (code, output, err) = Run(["generate", "-m", SharedData.StoriesGguf, "-p", "Once upon a time, there was a little dog", "-n", "48", "--temp", "0", "--ids", .. strategy]);
        Assert.That(code, Is.Zero, err);
        Assert.That(output.Trim(), Is.EqualTo(string.Join(' ', expected.AfterPrompt)));
        Assert.That(err, Does.Match($@"strategy {strategy[1]}: prompt \d+ tokens .* generation: 48 tokens"));
    }

    /// <summary>
    /// <c>grammar-bench --suite</c> measures every case of a folder and prints a table row per case, on a
    /// vocabulary <c>synth-vocab</c> grew (byte-level, every old token kept with its id, the merges recorded).
    /// </summary>
    [Test]
    public void Grammar_bench_runs_a_schema_suite_on_a_grown_vocabulary()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"engine-suite-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string vocab = Path.Combine(dir, "grown.gguf");
            var grow = Run("synth-vocab", "--like", SharedData.Require("vocab/ggml-vocab-gpt-2.gguf"), "--size", "60000", vocab);
            Assert.That(grow.Code, Is.Zero, grow.Err);
            Assert.That(grow.Out, Does.Contain("60000 tokens"));
            var grown = LanguageModel.LoadTokenizer(vocab);
            var source = LanguageModel.LoadTokenizer(SharedData.Require("vocab/ggml-vocab-gpt-2.gguf"));
            Assert.That(grown.VocabSize, Is.EqualTo(60000));
            Assert.That(grown.Encode("Hello world", addSpecial: false), Has.Count.LessThanOrEqualTo(source.Encode("Hello world", addSpecial: false).Count));
            Assert.That(grown.TokenBytes(59999).ToArray(), Is.Not.Empty);
            string cases = Path.Combine(dir, "cases");
            Directory.CreateDirectory(cases);
            foreach (string name in new[] { "01-person.json", "24-file-tree.json" })
                File.Copy(Path.Combine(SharedData.RepositoryRoot, "tools", "grammar-suite", name), Path.Combine(cases, name));
            var bench = Run("grammar-bench", "-m", vocab, "--suite", cases, "-r", "1");
            Assert.That(bench.Code, Is.Zero, bench.Err);
            Assert.That(bench.Out, Does.Contain("| 01-person |").And.Contains("| 24-file-tree |").And.Contains("2 case(s)"));
            Assert.That(bench.Out, Does.Match(@"cold \(a fresh grammar\): mask mean \d+ µs"));
            var bad = Run("synth-vocab", "--like", SharedData.Require("vocab/ggml-vocab-llama-spm.gguf"), Path.Combine(dir, "x.gguf"));
            Assert.That(bad.Code, Is.EqualTo(1));
            Assert.That(bad.Err, Does.Contain("not a byte-level BPE vocabulary"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public void Generate_constrains_output_to_grammars_schemas_and_regexes_and_samples_them_aligned()
    {
        string model = SharedData.StoriesGguf;
        var grammar = Run("generate", "-m", model, "-p", "Lily saw a big", "-n", "16", "--seed", "3", "--grammar", "root ::= \" \" (\"cat\" | \"dog\" | \"bird\") \".\"");
        Assert.That(grammar.Code, Is.Zero, grammar.Err);
        Assert.That(grammar.Out.Trim(), Is.AnyOf("Lily saw a big cat.", "Lily saw a big dog.", "Lily saw a big bird."));
        Assert.That(grammar.Err, Does.Contain("stop: EndOfGeneration"));
        var schema = Run("generate", "-m", model, "-p", "Once", "-n", "60", "--seed", "5", "--json-schema", "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":9}},\"required\":[\"n\"]}");
        Assert.That(schema.Code, Is.Zero, schema.Err);
        Assert.That(schema.Out.Trim(), Does.Match("^Once\\{\"n\":[1-9]\\}$"));
        // '@FILE' reads the schema from the file (not a response file of System.CommandLine's, which would split it into arguments)
        string schemaFile = Path.Combine(Path.GetTempPath(), $"engine-schema-{Guid.NewGuid():N}.json");
        File.WriteAllText(schemaFile, "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 1, \"maximum\": 9}}, \"required\": [\"n\"]}");
        try
        {
            var fromFile = Run("generate", "-m", model, "-p", "Once", "-n", "60", "--seed", "5", "--json-schema", "@" + schemaFile);
            Assert.That(fromFile.Code, Is.Zero, fromFile.Err);
            Assert.That(fromFile.Out.Trim(), Is.EqualTo(schema.Out.Trim()));
        }
        finally
        {
            File.Delete(schemaFile);
        }
        var regex = Run("generate", "-m", model, "-p", "Once", "-n", "20", "--seed", "5", "--regex", " [A-Z][a-z]+ (is|was) [a-z]+\\.");
        Assert.That(regex.Code, Is.Zero, regex.Err);
        Assert.That(regex.Out.Trim(), Does.Match("^Once [A-Z][a-z]+ (is|was) [a-z]+\\.$"));
        var beam = Run("generate", "-m", model, "-p", "Once", "-n", "20", "--strategy", "beam", "--beams", "3", "--regex", " [A-Z][a-z]+ (is|was) [a-z]+\\.");
        Assert.That(beam.Code, Is.Zero, beam.Err);
        Assert.That(beam.Out.Trim(), Does.Match("^Once [A-Z][a-z]+ (is|was) [a-z]+\\.$"), "a beam search under a grammar");
        var asap = Run("generate", "-m", model, "-p", "Lily saw a big", "-n", "16", "--seed", "3", "--grammar", "root ::= \" \" (\"cat\" | \"dog\") \".\"",
            "--grammar-sampling", "asap", "--asap-samples", "50");
        Assert.That(asap.Code, Is.Zero, asap.Err);
        Assert.That(asap.Out.Trim(), Is.AnyOf("Lily saw a big cat.", "Lily saw a big dog."));
        Assert.That(asap.Err, Does.Contain("grammar-aligned sampling (ASAp): 50 samples"));
        foreach (var (args, message) in new (string[], string)[]
        {
            (["--grammar", "root ::= [z-a]"], "--grammar: grammar line 1, column 11: character range z-a is reversed"),
            (["--json-schema", "{\"type\":\"number\",\"multipleOf\":2}"], "'multipleOf'"),
            (["--regex", "(a)\\1"], "backreferences"),
            (["--grammar-sampling", "asap"], "needs a grammar"),
            (["--grammar", "root ::= \"a\"", "--strategy", "cautious"], "cannot be combined with --strategy cautious"),
            (["--grammar", "root ::= \"a\"", "--grammar-sampling", "asap", "--strategy", "beam"], "cannot be combined with --strategy beam"),
        })
        {
            var run = Run(["generate", "-m", model, "-p", "Once", "-n", "4", .. args]);
            Assert.That(run.Code, Is.EqualTo(1), string.Join(' ', args));
            Assert.That(run.Err, Does.Contain(message), string.Join(' ', args));
        }
    }

    [Test]
    public void Generate_prints_a_beam_searchs_n_best_list_and_names_misplaced_options()
    {
        var (code, output, err) = Run("generate", "-m", SharedData.StoriesGguf, "-p", "Once upon a time", "-n", "12", "--strategy", "diverse-beam",
            "--beams", "4", "--beam-groups", "2", "--diversity", "50", "--n-best", "4");
        Assert.That(code, Is.Zero, err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(4));
        for (int i = 0; i < 4; i++)
            Assert.That(lines[i], Does.StartWith($"#{i + 1} score ").And.Contain("Once upon a time"));
        Assert.That(output, Does.Contain("group 0").And.Contain("group 1"));

        foreach (var (args, message) in new (string[], string)[]
        {
            (["--strategy", "beam", "--beams", "0"], "--beams 0: the beam width must be 1..64"),
            (["--strategy", "cad", "--beams", "3", "--context", "x"], "--beams is an option of --strategy beam or diverse-beam, not of --strategy cad"),
            (["--penalty-alpha", "0.5"], "--penalty-alpha is an option of --strategy contrastive, not of plain sampling"),
            (["--strategy", "cad"], "--strategy cad needs --context"),
            (["--strategy", "contrastive-decoding"], "--strategy contrastive-decoding needs --amateur-model"),
            (["--strategy", "nucleus"], "--strategy nucleus: unknown"),
            (["--strategy", "beam", "--spec", "lookup"], "cannot be combined"),
            (["--strategy", "cautious", "--trials", "1"], "--trials 1 must be 2..32"),
            (["--strategy", "extract"], "--strategy extract needs --context"),
        })
        {
            var run = Run(["generate", "-m", SharedData.StoriesGguf, "-p", "Once", "-n", "4", .. args]);
            Assert.That(run.Code, Is.EqualTo(1), string.Join(' ', args));
            Assert.That(run.Err, Does.Contain(message), string.Join(' ', args));
        }
    }

    [Test]
    public void Generate_text_from_bos_matches_the_reference_text()
    {
        var expected = SharedData.StoriesExpected();
        var (code, output, err) = Run("generate", "-m", SharedData.StoriesHf, "--prompt-ids", "1", "-n", "256", "--temp", "0");
        Assert.That(code, Is.Zero, err);
        Assert.That(output, Is.EqualTo(expected.TextFromBos + Environment.NewLine));
    }

    [Test]
    public void Tokenize_works_on_a_vocabulary_only_file()
    {
        string vocab = SharedData.Require("vocab/ggml-vocab-llama-spm.gguf");
        Assert.That(Run("tokenize", "-m", vocab, "-p", "Hello world").Out.Trim(), Is.EqualTo("15043 3186"));
        Assert.That(Run("tokenize", "-m", vocab, "-p", "Hello world", "--add-special").Out.Trim(), Is.EqualTo("1 15043 3186"));
        Assert.That(Run("tokenize", "-m", vocab, "-p", "<s>").Out.Trim(), Is.Not.EqualTo("1"), "special-token text is not parsed by default");
        using var dir = new TempDir();
        File.WriteAllText(dir.File("t.txt"), " Hello World!");
        Assert.That(Run("tokenize", "-m", vocab, "-f", dir.File("t.txt")).Out.Trim(), Is.EqualTo("29871 15043 2787 29991"));
    }

    [Test]
    public void Inspect_lists_metadata_and_tensors()
    {
        var (code, output, _) = Run("inspect", "-m", SharedData.StoriesGguf);
        Assert.That(code, Is.Zero);
        Assert.That(output, Does.Contain("general.architecture = \"llama\"").And.Contain("blk.4.ffn_down.weight").And.Contain("48 tensors"));
        var hf = Run("inspect", "-m", SharedData.StoriesHf);
        Assert.That(hf.Code, Is.Zero, hf.Err);
        Assert.That(hf.Out, Does.Contain("blk.0.attn_q.weight"));
    }

    [Test]
    public void Errors_are_one_line_on_stderr_with_a_nonzero_exit_code()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("junk.gguf"), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        var cases = new (string[] Args, string Mention)[]
        {
            (["generate", "-m", dir.File("missing.gguf"), "-p", "hi"], "missing.gguf"),
            (["generate", "-m", dir.File("junk.gguf"), "-p", "hi"], "junk.gguf: magic"),
            (["generate", "-m", dir.File("junk.gguf"), "-p", "hi", "--top-p", "2"], "top-p 2"),
            (["generate", "-m", dir.File("junk.gguf"), "-p", "hi", "--temp", "-1"], "temperature -1"),
            (["generate", "-m", dir.File("junk.gguf"), "-p", "hi", "--prompt-ids", "1"], "exactly one of"),
            (["generate", "-m", dir.File("junk.gguf"), "--prompt-ids", "1 x"], "'x'"),
            (["generate", "-m", dir.File("junk.gguf"), "-p", "hi", "--threads", "0"], "--threads 0"),
            (["tokenize", "-m", dir.File("junk.gguf"), "-p", "hi"], "junk.gguf"),
        };
        foreach (var (args, mention) in cases)
        {
            var (code, output, err) = Run(args);
            Assert.That(code, Is.Not.Zero, string.Join(' ', args));
            Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), $"one line: {err}");
            Assert.That(err, Does.StartWith("engine: error: ").And.Contain(mention));
            Assert.That(err, Does.Not.Contain("   at "), "no stack trace without --verbose");
        }
        var verbose = Run("generate", "-m", dir.File("junk.gguf"), "-p", "hi", "--verbose");
        Assert.That(verbose.Err, Does.Contain("   at "), "--verbose shows the stack trace");
    }

    [Test]
    public void Out_of_vocabulary_prompt_ids_are_rejected()
    {
        var (code, _, err) = Run("generate", "-m", SharedData.StoriesGguf, "--prompt-ids", "1 512", "-n", "4");
        Assert.That(code, Is.Not.Zero);
        Assert.That(err, Does.Contain("512").And.Contain("vocabulary"));
    }

    [Test]
    public void Sampling_with_a_seed_is_reproducible()
    {
        string[] args = ["generate", "-m", SharedData.StoriesGguf, "-p", "Once upon a time", "-n", "40", "--temp", "0.9", "--seed", "5", "--ids"];
        var a = Run(args);
        var b = Run(args);
        Assert.That(a.Code, Is.Zero, a.Err);
        Assert.That(b.Out, Is.EqualTo(a.Out));
        Assert.That(a.Err, Does.Contain("seed: 5"));
    }
}
