using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Api;
using Engine.Constraints;
using Engine.Sampling;
using Json.Schema;

namespace Engine.Tests;

/// <summary>
/// JSON Schema and regular expressions as grammars: a grammar accepts what validates (checked against
/// JsonSchema.Net on hand-picked documents, valid and not), integer ranges exactly, unsupported keywords
/// are errors, and constrained generation on stories260K produces documents that parse and validate.
/// </summary>
public class JsonSchemaTests
{
    internal static readonly Dictionary<string, string> Schemas = new()
    {
        ["person"] = """
            {"type": "object", "properties": {
               "name": {"type": "string", "minLength": 1, "maxLength": 12},
               "age": {"type": "integer", "minimum": 0, "maximum": 120},
               "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
             "required": ["name", "age"], "additionalProperties": false}
            """,
        ["contact"] = """
            {"type": "object", "properties": {"email": {"type": "string", "format": "email"}, "since": {"type": "string", "format": "date-time"},
             "id": {"type": "string", "format": "uuid"}}, "required": ["email"]}
            """,
        ["enum-and-const"] = """
            {"type": "object", "properties": {
               "color": {"enum": ["red", "green", "blue", 7, null]},
               "kind": {"const": "fixed"},
               "flag": {"type": "boolean"}},
             "required": ["color", "kind"]}
            """,
        ["tree"] = """
            {"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
               "value": {"type": "integer", "minimum": -5, "maximum": 5},
               "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
             "required": ["value"]}}}
            """,
        ["tuple"] = """
            {"type": "array", "prefixItems": [{"type": "number"}, {"type": "string", "pattern": "^[A-Z][a-z]{1,5}$"}, {"type": "null"}],
             "items": false, "minItems": 2}
            """,
        ["union"] = """
            {"anyOf": [{"type": "object", "properties": {"x": {"type": "integer", "minimum": 10, "maximum": 99}}, "required": ["x"]},
                       {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
                       {"type": "string", "format": "date"}]}
            """,
        ["all-of"] = """
            {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                       {"type": "object", "properties": {"b": {"type": ["string", "null"], "maxLength": 3}}}]}
            """,
        ["one-sided"] = """
            {"type": "array", "prefixItems": [{"type": "integer", "maximum": 12}, {"type": "integer", "maximum": -30},
                                              {"type": "integer", "minimum": -7}], "items": false}
            """,
        // a pattern's characters written as JSON writes them: quotes and backslashes escaped, never raw
        ["pattern-escapes"] = """
            {"type": "array", "prefixItems": [{"type": "string", "pattern": "^[^/]+$"}, {"type": "string", "pattern": "^a$|^b\\\\c$"},
                                              {"type": "string", "pattern": "^[+\\-.^]{1,3}$"}], "items": false}
            """,
    };

    private static bool Accepts(Grammar grammar, string text)
    {
        var m = new GrammarMatcher(grammar);
        return m.CanEnd(m.Step(m.Start, Encoding.UTF8.GetBytes(text)));
    }

    private static bool Validates(string schema, string json) =>
        JsonSchema.FromText(schema).Evaluate(JsonDocument.Parse(json).RootElement).IsValid;

    [TestCase("person", """{"name":"Ann","age":31}""")]
    [TestCase("person", """{"name":"Ann","age":31,"tags":["a","bc"]}""")]
    [TestCase("contact", """{"email":"ann@example.org","since":"2024-02-29T23:59:01Z","id":"123e4567-e89b-12d3-a456-426614174000"}""")]
    [TestCase("contact", """{"email":"ann@example.org","id":"123e4567-e89b-12d3-a456-42661417400"}""")]
    [TestCase("person", """{"name":"Ann","age":31,"tags":[]}""")]
    [TestCase("person", """{"name":"","age":31}""")]
    [TestCase("person", """{"name":"Ann","age":121}""")]
    [TestCase("person", """{"name":"Ann"}""")]
    [TestCase("person", """{"name":"Ann","age":3,"other":1}""")]
    [TestCase("enum-and-const", """{"color":"green","kind":"fixed","flag":true}""")]
    [TestCase("enum-and-const", """{"color":null,"kind":"fixed"}""")]
    [TestCase("enum-and-const", """{"color":"pink","kind":"fixed"}""")]
    [TestCase("tree", """{"value":-5,"children":[{"value":0},{"value":5,"children":[]}]}""")]
    [TestCase("tree", """{"value":6}""")]
    [TestCase("tuple", """[1.5e3,"Hello",null]""")]
    [TestCase("tuple", """[-2,"Ab"]""")]
    [TestCase("tuple", """[1,"hello"]""")]
    [TestCase("tuple", """[1]""")]
    [TestCase("union", """{"x":42}""")]
    [TestCase("union", """[true,false]""")]
    [TestCase("union", "\"2024-02-29\"")]
    [TestCase("union", """{"x":100}""")]
    [TestCase("union", "\"2024-13-01\"")]
    [TestCase("all-of", """{"a":1,"b":"xyz"}""")]
    [TestCase("all-of", """{"a":1,"b":null}""")]
    [TestCase("all-of", """{"a":1}""")]
    [TestCase("all-of", """{"b":"x"}""")]
    [TestCase("one-sided", """[12,-30,-7]""")]
    [TestCase("one-sided", """[-100000,-31,123456]""")]
    [TestCase("one-sided", """[13,-30,0]""")]
    [TestCase("one-sided", """[0,-29,0]""")]
    [TestCase("one-sided", """[0,-30,-8]""")]
    [TestCase("one-sided", """[0,-9999,-1]""")]
    [TestCase("pattern-escapes", """["a\"b c","a","+"]""")]
    [TestCase("pattern-escapes", """["a\\\\b","b\\c","-.^"]""")]
    [TestCase("pattern-escapes", """["x/y","a","+"]""")]
    [TestCase("pattern-escapes", """["x","bc","+"]""")]
    [TestCase("pattern-escapes", """["x","a",","]""")]
    [TestCase("pattern-escapes", """["x","a","~"]""")]
    public void The_grammar_accepts_a_compact_document_exactly_when_it_validates(string name, string json)
    {
        var grammar = JsonSchemaGrammar.Compile(Schemas[name]);
        Assert.That(Accepts(grammar, json), Is.EqualTo(Validates(Schemas[name], json)), $"{name}: {json}");
    }

    /// <summary>
    /// The one deliberate restriction: properties come in the schema's order (as llama.cpp's converter
    /// has them), so a valid document that reorders them is outside the grammar — generation never
    /// produces it; everything generated still validates.
    /// </summary>
    [Test]
    public void Properties_are_generated_in_the_schemas_order()
    {
        var grammar = JsonSchemaGrammar.Compile(Schemas["person"]);
        const string reordered = """{"age":31,"name":"Ann"}""";
        Assert.That(Validates(Schemas["person"], reordered), Is.True);
        Assert.That(Accepts(grammar, reordered), Is.False);
        Assert.That(Accepts(grammar, """{"name":"Ann","age":31}"""), Is.True);
    }

    [TestCase(0, 0)]
    [TestCase(7, 7)]
    [TestCase(3, 1187)]
    [TestCase(10, 99)]
    [TestCase(-120, 35)]
    [TestCase(-57, -9)]
    [TestCase(100, 1000)]
    [TestCase(199, 1200)]
    public void Integer_ranges_accept_exactly_their_integers(long lo, long hi)
    {
        var grammar = Gbnf.Parse("root ::= " + JsonSchemaGrammar.Range(lo, hi));
        for (long v = -200; v <= 1300; v++)
            Assert.That(Accepts(grammar, v.ToString(System.Globalization.CultureInfo.InvariantCulture)), Is.EqualTo(v >= lo && v <= hi), $"{v} in [{lo}, {hi}]");
        Assert.That(Accepts(grammar, "007"), Is.False, "no leading zeros");
    }

    [TestCase("""{"not": {"type": "null"}}""", "'not'")]
    [TestCase("""{"type": "integer", "multipleOf": 3}""", "'multipleOf'")]
    [TestCase("""{"type": "number", "minimum": 0.5}""", "a range of a non-integer number")]
    [TestCase("""{"$ref": "https://example.org/s.json"}""", "only local references")]
    [TestCase("""{"$ref": "#/$defs/missing"}""", "points nowhere")]
    [TestCase("""{"type": "strin"}""", "unknown type 'strin'")]
    [TestCase("""{"type": "string", "pattern": "(a)\\1"}""", "backreferences")]
    [TestCase("""{"type": "object" """, "not JSON")]
    [TestCase("""{"anyOf": [{"type": "string"}, {"type": "null"}], "maxLength": 3}""", "'maxLength' beside 'anyOf'")]
    [TestCase("""{"$ref": "#/$defs/a", "required": ["x"], "$defs": {"a": {"type": "object"}}}""", "'required' beside '$ref'")]
    [TestCase("""{"type": "string", "pattern": "a$b"}""", "'$' before the end")]
    public void What_a_grammar_cannot_express_is_an_error_naming_it(string schema, string message)
    {
        var e = Assert.Throws<GrammarException>(() => JsonSchemaGrammar.Compile(schema))!;
        Assert.That(e.Message, Does.Contain(message));
    }

    [TestCase("^[a-z]+@[a-z]+\\.(com|org)$", "abc@def.org", true)]
    [TestCase("^[a-z]+@[a-z]+\\.(com|org)$", "abc@def.net", false)]
    [TestCase("\\d{3}-\\d{4}", "555-1234", true)]
    [TestCase("\\d{3}-\\d{4}", "555-123", false)]
    [TestCase("(?:ab|c)*d?", "ababcd", true)]
    [TestCase("[^\\s]+ [\\w.]+", "x-y a_b.c", true)]
    [TestCase("a.c", "a\nc", false)]
    public void Regular_expressions_become_grammars_of_the_same_language(string pattern, string text, bool member)
    {
        var grammar = Gbnf.Parse(RegexGrammar.ToGbnf(pattern));
        Assert.That(Accepts(grammar, text), Is.EqualTo(member));
        Assert.That(System.Text.RegularExpressions.Regex.IsMatch(text, "^(?:" + pattern.TrimStart('^').TrimEnd('$') + ")$"), Is.EqualTo(member), ".NET agrees");
    }

    /// <summary>
    /// The benchmark suite (tools/grammar-suite: 50 real-world schemas, each with an instance): every schema
    /// compiles, its instance validates (JsonSchema.Net, formats asserted), the grammar accepts the instance
    /// written compactly, and what it accepts with a property name broken still validates.
    /// </summary>
    [Test]
    public void The_benchmark_suite_compiles_and_accepts_its_valid_instances()
    {
        string folder = Path.Combine(SharedData.RepositoryRoot, "tools", "grammar-suite");
        var files = Directory.GetFiles(folder, "*.json");
        Assert.That(files, Has.Length.GreaterThanOrEqualTo(50));
        var compact = new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        var options = new EvaluationOptions { RequireFormatValidation = true };
        int rejected = 0;
        foreach (string file in files)
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(file));
            string schema = doc.RootElement.GetProperty("schema").GetRawText();
            string instance = JsonSerializer.Serialize(doc.RootElement.GetProperty("instance"), compact);
            string name = Path.GetFileName(file);
            Assert.That(JsonSchema.FromText(schema).Evaluate(JsonDocument.Parse(instance).RootElement, options).IsValid, Is.True, $"{name}: the instance validates");
            var grammar = JsonSchemaGrammar.Compile(schema, cache: false);
            Assert.That(Accepts(grammar, instance), Is.True, $"{name}: the grammar accepts the instance");
            // a broken copy: the first property name's first letter changed (additionalProperties may still allow it)
            int quote = instance.IndexOf("{\"", StringComparison.Ordinal);
            if (quote >= 0 && quote + 2 < instance.Length && char.IsAsciiLetterLower(instance[quote + 2]))
            {
                string broken = instance[..(quote + 2)] + "Q" + instance[(quote + 3)..];
                bool valid = JsonSchema.FromText(schema).Evaluate(JsonDocument.Parse(broken).RootElement, options).IsValid;
                // sound: what the grammar accepts validates (the converse fails only where properties come in another order)
                if (Accepts(grammar, broken))
                    Assert.That(valid, Is.True, $"{name}: accepted but invalid: {broken[..Math.Min(60, broken.Length)]}");
                else
                    rejected++;
            }
        }
        Assert.That(rejected, Is.GreaterThan(40), "most broken copies are rejected");
    }

    /// <summary>Sampled generation under each schema (strings and arrays bounded, so every path ends) parses and validates.</summary>
    [TestCase("person")]
    [TestCase("enum-and-const")]
    [TestCase("tree")]
    [TestCase("tuple")]
    [TestCase("union")]
    public void Constrained_generation_produces_documents_that_validate(string name)
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2 });
        var grammar = JsonSchemaGrammar.Compile(Schemas[name]);
        int[] prompt = [.. lm.Tokenizer.Encode("Once upon a time", addSpecial: true)];
        int complete = 0;
        for (ulong seed = 1; seed <= 4; seed++)
        {
            using var session = lm.CreateSession();
            var options = new GenerationOptions { MaxTokens = 300, Grammar = grammar, Sampling = new SamplingOptions { Temperature = 1f, TopK = 0, TopP = 1, Seed = seed } };
            var tokens = session.Generate(prompt, options).ToList();
            string text = Encoding.UTF8.GetString(tokens.SelectMany(t => lm.Tokenizer.TokenBytes(t).ToArray()).ToArray());
            if (session.LastStats!.StopReason != StopReason.EndOfGeneration)
                continue; // a deep random tree may not close in 300 tokens; what was generated is still a prefix
            complete++;
            Assert.That(Validates(Schemas[name], text), Is.True, $"{name}, seed {seed}: {text}");
        }
        Assert.That(complete, Is.GreaterThanOrEqualTo(2), $"{name}: at least two of four generations finished their document");
    }
}
