using System.Text;
using Engine.Api;
using Engine.Constraints;
using Engine.Sampling;

namespace Engine.Tests;

/// <summary>
/// GBNF grammars: the parser (with errors that give line and column), the byte-level matcher against
/// hand-listed languages, the token mask against brute force over random vocabularies, and constrained
/// generation on stories260K.
/// </summary>
public class GrammarTests
{
    /// <summary>Grammars in the shapes of llama.cpp's examples (written here): JSON, arithmetic, a list, chess moves, a C subset.</summary>
    internal static readonly Dictionary<string, string> Examples = new()
    {
        ["json"] = """
            root   ::= object
            value  ::= object | array | string | number | ("true" | "false" | "null") ws

            object ::=
              "{" ws (
                        string ":" ws value
                ("," ws string ":" ws value)*
              )? "}" ws

            array  ::=
              "[" ws (
                        value
                ("," ws value)*
              )? "]" ws

            string ::=
              "\"" (
                [^"\\\x7F\x00-\x1F] |
                "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
              )* "\"" ws

            number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

            # optional whitespace after literals
            ws ::= | " " | "\n" [ \t]{0,20}
            """,
        ["arithmetic"] = """
            root  ::= (expr "=" ws term "\n")+
            expr  ::= term ([-+*/] term)*
            term  ::= ident | num | "(" ws expr ")" ws
            ident ::= [a-z] [a-z0-9_]* ws
            num   ::= [0-9]+ ws
            ws    ::= [ \t\n]*
            """,
        ["list"] = """
            root ::= item+
            # no line breaks inside an item
            item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
            """,
        ["chess"] = """
            root   ::= "1. " move " " move "\n" ([1-9] [0-9]? ". " move " " move "\n")+
            move   ::= (pawn | nonpawn | castle) [+#]?
            pawn   ::= ([a-h] "x")? [a-h] [1-8] ("=" [NBKQR])?
            nonpawn ::= [NBKQR] [a-h]? [1-8]? "x"? [a-h] [1-8]
            castle ::= "O-O" "-O"?
            """,
        ["c"] = """
            root ::= (declaration)*
            declaration ::= dataType identifier "(" parameter? ")" "{" statement* "}"
            dataType  ::= "int" ws | "float" ws | "char" ws
            identifier ::= [a-zA-Z_] [a-zA-Z_0-9]*
            parameter ::= dataType identifier
            statement ::=
                ( dataType identifier ws "=" ws expression ";" ) |
                ( identifier ws "=" ws expression ";" ) |
                ( identifier ws "(" argList? ")" ";" ) |
                ( "return" ws expression ";" ) |
                ( "while" "(" condition ")" "{" statement* "}" ) |
                ( "for" "(" forInit ";" ws condition ";" ws forUpdate ")" "{" statement* "}" ) |
                ( "if" "(" condition ")" "{" statement* "}" ("else" "{" statement* "}")? ) |
                ( singleLineComment ) |
                ( multiLineComment )
            forInit ::= dataType identifier ws "=" ws expression | identifier ws "=" ws expression
            forUpdate ::= identifier ws "=" ws expression
            condition ::= expression relationOperator expression
            relationOperator ::= ("<=" | "<" | "==" | "!=" | ">=" | ">")
            expression ::= term (("+" | "-") term)*
            term ::= factor(("*" | "/") factor)*
            factor ::= identifier | number | unaryTerm | funcCall | parenExpression
            unaryTerm ::= "-" factor
            funcCall ::= identifier "(" argList? ")"
            parenExpression ::= "(" ws expression ws ")"
            argList ::= expression ("," ws expression)*
            number ::= [0-9]+
            singleLineComment ::= "//" [^\n]* "\n"
            multiLineComment ::= "/*" ( [^*] | ("*" [^/]) )* "*/"
            ws ::= ([ \t\n]+)
            """,
    };

    private static bool Matches(Grammar grammar, string text)
    {
        var m = new GrammarMatcher(grammar);
        int state = m.Step(m.Start, Encoding.UTF8.GetBytes(text));
        return m.CanEnd(state);
    }

    private static bool IsPrefix(Grammar grammar, string text)
    {
        var m = new GrammarMatcher(grammar);
        return m.Step(m.Start, Encoding.UTF8.GetBytes(text)) != GrammarMatcher.Dead;
    }

    [TestCase("json", "{\"a\": [1, 2.5, -3e7, \"x\\n\\u00e9\"], \"b\": {\"c\": true, \"d\": null}}", true)]
    [TestCase("json", "{}", true)]
    [TestCase("json", "{\"a\": }", false)]
    [TestCase("json", "{\"a\": 01}", false)]
    [TestCase("json", "[1]", false)]
    [TestCase("arithmetic", "x1 +(2*y)= 7\n", true)]
    [TestCase("arithmetic", "x + = 1\n", false)]
    [TestCase("list", "- milk\n- café au lait\n", true)]
    [TestCase("list", "- milk\n\n", false)]
    [TestCase("chess", "1. e4 e5\n2. Nf3 Nc6\n3. Bb5 a6\n", true)]
    [TestCase("chess", "1. e9 e5\n2. Nf3 Nc6\n", false)]
    [TestCase("c", "int main(){int x = 1;while(x<10){x = x+1;}return x;}", true)]
    [TestCase("c", "int main(){x = ;}", false)]
    public void The_example_grammars_compile_and_decide_their_languages(string name, string text, bool member)
    {
        var grammar = Gbnf.Parse(Examples[name]);
        Assert.That(Matches(grammar, text), Is.EqualTo(member), $"{name}: {text}");
    }

    [Test]
    public void Prefixes_and_partial_characters_are_followed_byte_by_byte()
    {
        var grammar = Gbnf.Parse("root ::= \"é\" [a-c]{2,3} | \"日本\" \".\"");
        Assert.That(Matches(grammar, "éab"), Is.True);
        Assert.That(Matches(grammar, "éabc"), Is.True);
        Assert.That(Matches(grammar, "éabca"), Is.False);
        Assert.That(Matches(grammar, "éa"), Is.False);
        Assert.That(IsPrefix(grammar, "éa"), Is.True);
        Assert.That(Matches(grammar, "日本."), Is.True);
        var m = new GrammarMatcher(grammar);
        var bytes = Encoding.UTF8.GetBytes("日本.");
        int half = m.Step(m.Start, bytes.AsSpan(0, 2)); // inside 日's three bytes
        Assert.That(half, Is.Not.EqualTo(GrammarMatcher.Dead));
        Assert.That(m.CanEnd(half), Is.False, "a partial character never ends the text");
        Assert.That(m.Step(m.Start, Encoding.UTF8.GetBytes("月").AsSpan(0, 2)), Is.EqualTo(GrammarMatcher.Dead),
            "月 (E6 9C 88) shares its lead byte with 日 (E6 97 A5) but not its second: dead after two bytes");
        Assert.That(m.Step(m.Start, [0xFF]), Is.EqualTo(GrammarMatcher.Dead), "not UTF-8");
        var brace = Gbnf.Parse("root ::= \"{\" [^\\x00]*");
        var b = new GrammarMatcher(brace);
        Assert.That(b.Step(b.Start, [0x7B]), Is.Not.EqualTo(GrammarMatcher.Dead));
        Assert.That(b.Step(b.Start, [0xF0, 0x80, 0x81, 0xBB]), Is.EqualTo(GrammarMatcher.Dead), "an overlong '{' (what byte-fallback tokens can spell) is not '{'");
        Assert.That(b.Step(b.Start, [0xC1]), Is.EqualTo(GrammarMatcher.Dead), "C1 only starts overlong forms");
        Assert.That(b.Step(b.Start, [0x7B, 0xED, 0xA0, 0x80]), Is.EqualTo(GrammarMatcher.Dead), "a UTF-16 surrogate is not a character");
    }

    [TestCase("root ::= foo", 1, 10, "rule 'foo' is used but never defined")]
    [TestCase("root ::= \"abc", 1, 14, "unterminated string literal")]
    [TestCase("root ::= x\nx ::= x \"a\" | \"b\"", 2, 1, "left-recursive")]
    [TestCase("root ::= a\na ::= b? a \"x\"\nb ::= \"y\"", 2, 1, "left-recursive")]
    [TestCase("root = \"a\"", 1, 6, "expected '::='")]
    [TestCase("root ::= [z-a]", 1, 11, "reversed")]
    [TestCase("root ::= \"\\q\"", 1, 11, "unknown escape")]
    [TestCase("root ::= \"a\"{3,1}", 1, 13, "below the minimum")]
    [TestCase("root ::= (\"a\" | \"b\"", 1, 20, "expected ')'")]
    [TestCase("root ::= \"a\"\nroot ::= \"b\"", 2, 1, "defined twice")]
    public void Bad_grammars_are_errors_with_line_and_column(string text, int line, int column, string reason)
    {
        var e = Assert.Throws<GrammarException>(() => Gbnf.Parse(text))!;
        Assert.That(e.Message, Does.Contain(reason));
        Assert.That((e.Line, e.Column), Is.EqualTo((line, column)), e.Message);
        Assert.That(Assert.Throws<GrammarException>(() => Gbnf.Parse("start ::= \"a\""))!.Message, Does.Contain("no rule 'root'"));
    }

    /// <summary>Grammars arrive in requests: size, nesting and expansion are bounded with errors, never a stack overflow.</summary>
    [Test]
    public void Hostile_grammars_hit_limits_with_errors()
    {
        string nested = "root ::= " + new string('(', 300) + "\"a\"" + new string(')', 300);
        Assert.That(Assert.Throws<GrammarException>(() => Gbnf.Parse(nested))!.Message, Does.Contain("nest more than 256"));
        Assert.That(Gbnf.Parse("root ::= (\"a\"{10000}){10000}").Rules.Count, Is.LessThan(20_100), "a repeated group is one rule, referenced");
        Assert.That(Assert.Throws<GrammarException>(() => Gbnf.Parse("root ::= " + string.Join(" ", Enumerable.Repeat("\"a\"{10000}", 120))))!.Message,
            Does.Contain("more than 1048576 elements"));
        Assert.That(Assert.Throws<GrammarException>(() => Gbnf.Parse("root ::= \"" + new string('a', 2 << 20) + "\""))!.Message, Does.Contain("at most"));
        var chain = string.Join("\n", Enumerable.Range(0, 3000).Select(i => $"r{i} ::= r{i + 1}")) + "\nr3000 ::= \"x\"";
        var deep = Gbnf.Parse(chain, root: "r0");
        Assert.That(Assert.Throws<GrammarException>(() => _ = new GrammarMatcher(deep))!.Message, Does.Contain("more than 2000 deep"));
        Assert.That(Assert.Throws<GrammarException>(() => RegexGrammar.ToGbnf(new string('(', 300) + "a" + new string(')', 300)))!.Message, Does.Contain("nest more than 256"));
    }

    /// <summary>Random tokens of 1..<paramref name="maxChars"/> characters of <paramref name="alphabet"/>, one in <paramref name="cutOneIn"/> cut short (maybe inside a character).</summary>
    private static List<byte[]> RandomVocabulary(Random rng, string alphabet, int count, int maxChars, int cutOneIn)
    {
        var vocab = new List<byte[]>();
        for (int i = 0; i < count; i++)
        {
            var bytes = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, rng.Next(1, maxChars + 1)).Select(_ => alphabet[rng.Next(alphabet.Length)])));
            if (rng.Next(cutOneIn) == 0 && bytes.Length > 1)
                bytes = bytes[..rng.Next(1, bytes.Length)];
            vocab.Add(bytes);
        }
        return vocab;
    }

    /// <summary>
    /// The mask never excludes a token that can continue a valid string, and never admits one that cannot:
    /// for a finite language listed by hand, at every prefix of every sentence, each token of a random
    /// vocabulary (multi-character pieces, pieces spanning several terminals, cut UTF-8) is allowed exactly
    /// when prefix + token is a prefix of some sentence.
    /// </summary>
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void The_mask_admits_exactly_the_tokens_that_keep_a_valid_prefix(int seed)
    {
        var grammar = Gbnf.Parse("""
            root ::= ("ab" | "a" [cd]) sep? ("é" | "x" | "日本"){1,2}
            sep ::= "-" | ", "
            """);
        var sentences = new List<string>();
        foreach (string head in new[] { "ab", "ac", "ad" })
        {
            foreach (string sep in new[] { "", "-", ", " })
            {
                foreach (string a in new[] { "é", "x", "日本" })
                {
                    sentences.Add(head + sep + a);
                    foreach (string b in new[] { "é", "x", "日本" })
                        sentences.Add(head + sep + a + b);
                }
            }
        }
        var language = sentences.Select(Encoding.UTF8.GetBytes).ToArray();
        var rng = new Random(seed);
        string alphabet = "abcdx-, é日本z";
        var vocab = RandomVocabulary(rng, alphabet, count: 300, maxChars: 3, cutOneIn: 4);
        var trie = new TokenTrie(vocab.Count, id => vocab[id]);
        var matcher = new GrammarMatcher(grammar);
        var mask = new ulong[(vocab.Count + 63) / 64];
        var prefixes = language.SelectMany(s => Enumerable.Range(0, s.Length + 1).Select(n => s[..n])).DistinctBy(Convert.ToHexString).ToList();
        foreach (var prefix in prefixes)
        {
            int state = matcher.Step(matcher.Start, prefix);
            Assert.That(state, Is.Not.EqualTo(GrammarMatcher.Dead));
            Assert.That(matcher.CanEnd(state), Is.EqualTo(language.Any(s => s.AsSpan().SequenceEqual(prefix))), Convert.ToHexString(prefix));
            trie.Allowed(matcher, state, mask);
            for (int t = 0; t < vocab.Count; t++)
            {
                var extended = prefix.Concat(vocab[t]).ToArray();
                bool expected = language.Any(s => s.AsSpan().StartsWith(extended));
                bool got = (mask[t >> 6] & (1UL << (t & 63))) != 0;
                Assert.That(got, Is.EqualTo(expected), $"prefix {Convert.ToHexString(prefix)}, token {Convert.ToHexString(vocab[t])}");
            }
        }
    }

    /// <summary>
    /// Rows per byte class change no transition: along random byte strings (ASCII the sets split finely, lead
    /// bytes whose range a set holds whole, partly or not at all, overlong and surrogate leads, stray
    /// continuation bytes, cut characters), a matcher with classes and one with a row entry per byte agree
    /// at every prefix on whether the text is alive, may end, and on the verdict of a local state.
    /// </summary>
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void Byte_classes_change_no_transition(int seed)
    {
        var grammar = Gbnf.Parse("""
            root ::= (word | quoted | accented | "#" [0-9a-f]+ | "." . | "!" [^a-z"])+
            word ::= [a-m]+ "_"? [k-z]*
            quoted ::= "\"" [^"\\\x00-\x1F]* "\""
            accented ::= [ɐ-ɟ] | [Ő-ſ]+ | "%" [ä-ą] | "日本" | [\U0001F600-\U0001F64F]
            """);
        var classed = new GrammarMatcher(grammar);
        var perByte = new GrammarMatcher(grammar, byteClasses: false);
        var rng = new Random(seed);
        string Pick(string[] options) => options[rng.Next(options.Length)];
        string[] pieces = ["a", "k", "z", "m", "_", "\"", "\\", "#", "0", "f", "g", ".", "!", "A", " ", "à", "ö", "÷", "Ā", "Ő", "ſ", "ƀ", "ɐ", "ɠ", "%", "ä", "ą", "â", "Ć", "ÿ", "日", "本", "😀", "🙏", "🚀", "\u0001"];
        string[] letters = ["a", "c", "k", "m", "z", "q"];
        // items of the language, each with a near miss beside it, so that texts live long enough to reach the leads
        Func<string>[] items =
        [
            () => Pick(letters) + Pick(letters) + (rng.Next(2) == 0 ? "_" : "") + Pick(letters),
            () => "\"" + Pick(pieces).Replace("\"", "x").Replace("\\", "y") + Pick(["ä", "ą", "日", "😀", "é"]) + "\"",
            () => "%" + Pick(["ä", "ą", "â", "Ć", "ÿ", "Ā", "ă"]),
            () => Pick(["ɐ", "ɟ", "ɠ", "ɏ", "Őſ", "ő", "Ŏ", "日本", "日日", "😀", "🙏", "🚀"]),
            () => "#" + Pick(["0", "f", "9a", "g"]),
            () => "." + Pick(pieces),
            () => "!" + Pick(pieces),
        ];
        byte[][] raw = [[0x80], [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x80, 0x80], [0xE1, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF0, 0x80, 0x80, 0x80], [0xF5], [0xFF], [0xC3], [0xC4], [0xE6, 0x97], [0xF0, 0x9F]];
        for (int text = 0; text < 400; text++)
        {
            var bytes = new List<byte>();
            int n = rng.Next(1, 10);
            for (int i = 0; i < n; i++)
                bytes.AddRange(rng.Next(10) == 0 ? raw[rng.Next(raw.Length)] : Encoding.UTF8.GetBytes(items[rng.Next(items.Length)]()));
            int a = classed.Start, b = perByte.Start;
            for (int i = 0; i < bytes.Count; i++)
            {
                a = classed.Step(a, bytes[i]);
                b = perByte.Step(b, bytes[i]);
                string at = $"text {Convert.ToHexString(bytes.ToArray())}, byte {i}";
                Assert.That(a == GrammarMatcher.Dead, Is.EqualTo(b == GrammarMatcher.Dead), at);
                if (a == GrammarMatcher.Dead)
                    break;
                Assert.That(classed.CanEnd(a), Is.EqualTo(perByte.CanEnd(b)), at);
                var rest = bytes.Skip(i + 1).Take(4).ToArray();
                Assert.That(classed.Verdict(classed.Step(classed.Local(a), rest)), Is.EqualTo(perByte.Verdict(perByte.Step(perByte.Local(b), rest))), at + " (local)");
            }
        }
        // an ASCII grammar (every lead byte outside every set) whose local states lose their frames at once:
        // there a path that left the frame keeps a cut character's value, and overlong leads must not join the others
        var ascii = Gbnf.Parse("""root ::= ("[" root "]" | [a-z]+ | "x" [0-9]){1,3}""");
        classed = new GrammarMatcher(ascii) { LocalDepth = 1 };
        perByte = new GrammarMatcher(ascii, byteClasses: false) { LocalDepth = 1 };
        string[] asciiPieces = ["[", "]", "a", "z", "x", "0", "[a", "]]"];
        for (int text = 0; text < 200; text++)
        {
            var bytes = new List<byte>();
            int n = rng.Next(1, 8);
            for (int i = 0; i < n; i++)
                bytes.AddRange(rng.Next(4) == 0 ? raw[rng.Next(raw.Length)] : Encoding.ASCII.GetBytes(Pick(asciiPieces)));
            int a = classed.Start, b = perByte.Start;
            for (int i = 0; i < bytes.Count && a != GrammarMatcher.Dead; i++)
            {
                var rest = bytes.Skip(i).Take(4).ToArray();
                string at = $"text {Convert.ToHexString(bytes.ToArray())}, byte {i} (ASCII grammar, local)";
                Assert.That(classed.Verdict(classed.Step(classed.Local(a), rest)), Is.EqualTo(perByte.Verdict(perByte.Step(perByte.Local(b), rest))), at);
                a = classed.Step(a, bytes[i]);
                b = perByte.Step(b, bytes[i]);
                Assert.That(a == GrammarMatcher.Dead, Is.EqualTo(b == GrammarMatcher.Dead), at);
            }
        }
    }

    /// <summary>
    /// States that loop on a character class take their class's tokens from a precomputed slice and walk
    /// only the rest of the vocabulary: the masks (from full states and, with the open tokens, from local
    /// states) equal a token-by-token step of the matcher at every prefix of random texts — loops inside
    /// quotes, after one character, bounded runs (<c>{0,5}</c>, <c>{2,6}</c>), two loops reading the same letters, a loop and a bounded run beside literals that take some of their characters, escapes, multi-byte characters and cut UTF-8 pieces.
    /// </summary>
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    [TestCase(4)]
    public void Looping_states_mask_exactly_what_a_token_by_token_check_allows(int seed)
    {
        var grammar = Gbnf.Parse("""
            root ::= item ("," " "? item)*
            item ::= "\"" ([^"\\\x00-\x1F] | "\\" ["\\n])* "\"" | [a-zé日本]+ | "#" [0-9a-f]{2,4} | "(" root ")" | "'" [a-zé]{0,5} "'" | "<" [^<>]{2,6} ">" | "k" [a-z]* ":" | "@" ("ab" | [^@,()<>'#"\\\x00-\x1F]*) "@" | "~" ("abba" | [^~@,()<>'#"\\\x00-\x1F]{0,2}) "~"
            """);
        var rng = new Random(seed);
        string alphabet = "ab\"\\n,( )#0fé日本z\u0001'<>k:@~";
        var vocab = RandomVocabulary(rng, alphabet, count: 400, maxChars: 4, cutOneIn: 5);
        var trie = new TokenTrie(vocab.Count, id => vocab[id]);
        var matcher = new GrammarMatcher(grammar);
        var mask = new ulong[(vocab.Count + 63) / 64];
        var open = new List<int>();
        for (int text = 0; text < 20; text++)
        {
            int state = matcher.Start;
            for (int step = 0; step < 25; step++)
            {
                var allowed = Enumerable.Range(0, vocab.Count).Where(t => matcher.Step(state, vocab[t]) != GrammarMatcher.Dead).ToList();
                trie.Allowed(matcher, state, mask);
                Assert.That(Enumerable.Range(0, vocab.Count).Where(t => (mask[t >> 6] & (1UL << (t & 63))) != 0), Is.EqualTo(allowed), $"text {text}, step {step}");
                // the local state's split: accepted bits plus the open tokens that pass the full check make the same set
                int local = matcher.Local(state);
                trie.Classify(matcher, local, mask, open);
                var fromLocal = Enumerable.Range(0, vocab.Count).Where(t => (mask[t >> 6] & (1UL << (t & 63))) != 0)
                    .Concat(open.Where(t => matcher.Step(state, vocab[t]) != GrammarMatcher.Dead)).Order();
                Assert.That(fromLocal, Is.EqualTo(allowed), $"text {text}, step {step} (local state)");
                if (allowed.Count == 0)
                    break;
                state = matcher.Step(state, vocab[allowed[rng.Next(allowed.Count)]]);
            }
        }
        Assert.That(trie.SliceCount, Is.GreaterThan(0), "some state looped on a class (the string body, the word characters)");
    }

    /// <summary>
    /// The constraint's masks — built from cached local classifications plus a check of the tokens that
    /// leave the top frames — equal a brute-force check of every token of a 32k vocabulary, at every step
    /// of a JSON text (llama-spm's vocabulary), cold and again warm.
    /// </summary>
    [Test]
    public void Constraint_masks_equal_a_token_by_token_check_on_a_real_vocabulary()
    {
        var tokenizer = LanguageModel.LoadTokenizer(SharedData.Require("vocab/ggml-vocab-llama-spm.gguf"));
        var grammar = Gbnf.Parse(Examples["json"].Replace("root   ::= object", "root ::= \" \"? object"));
        var ids = tokenizer.Encode("""{"name": "Ann Smith", "age": 31, "tags": ["a", "b c"], "more": {"x": [1, {"y": null}], "ok": false}}""", addSpecial: false);
        var reference = new GrammarMatcher(grammar);
        foreach (string pass in new[] { "cold", "warm" })
        {
            var constraint = new GrammarConstraint(grammar, tokenizer);
            int state = reference.Start;
            var logits = new float[tokenizer.VocabSize];
            for (int step = 0; step < ids.Count; step++)
            {
                Array.Clear(logits);
                constraint.Apply(logits);
                for (int t = 0; t < tokenizer.VocabSize; t++)
                {
                    var bytes = tokenizer.TokenBytes(t);
                    bool expected = tokenizer.Kind(t) is Engine.Tokenizers.TokenKind.Normal or Engine.Tokenizers.TokenKind.Byte or Engine.Tokenizers.TokenKind.UserDefined
                        && bytes.Length > 0 && reference.Step(state, bytes) != GrammarMatcher.Dead
                        || tokenizer.IsEndOfGeneration(t) && reference.CanEnd(state);
                    if ((logits[t] == 0) != expected)
                        Assert.Fail($"{pass}, step {step}: token {t} ('{tokenizer.Piece(t)}') is {(expected ? "valid but masked" : "invalid but allowed")}");
                }
                constraint.Accept(ids[step]);
                state = reference.Step(state, tokenizer.TokenBytes(ids[step]));
            }
            Assert.That(constraint.CanEnd, Is.True);
        }
    }

    /// <summary>
    /// A cached mask keeps a shared base and a list beyond it, or its own bits where the list would be the
    /// larger: every form holds exactly base ∪ extra (sparse, dense, with and without a base, a vocabulary
    /// not a multiple of 64).
    /// </summary>
    [TestCase(0.001, false)]
    [TestCase(0.001, true)]
    [TestCase(0.3, false)]
    [TestCase(0.3, true)]
    public void Token_masks_hold_their_base_and_extra_tokens_in_every_form(double density, bool withBase)
    {
        const int vocab = 50_257;
        int words = (vocab + 63) / 64;
        var rng = new Random(7);
        var shared = withBase ? new ulong[words] : null;
        var extra = new ulong[words];
        var expected = new bool[vocab];
        for (int t = 0; t < vocab; t++)
        {
            if (shared is not null && rng.NextDouble() < 0.5)
            {
                shared[t >> 6] |= 1UL << (t & 63);
                expected[t] = true;
            }
            else if (rng.NextDouble() < density)
            {
                extra[t >> 6] |= 1UL << (t & 63);
                expected[t] = true;
            }
        }
        var mask = TokenMask.From(shared, extra);
        Array.Fill(extra, ulong.MaxValue); // the scratch is reused by the next walk: the mask must not keep it
        var bits = new ulong[words];
        mask.CopyTo(bits);
        int count = 0;
        for (int t = 0; t < vocab; t++)
        {
            bool inBits = (bits[t >> 6] & (1UL << (t & 63))) != 0;
            Assert.That((inBits, mask.Contains(t)), Is.EqualTo((expected[t], expected[t])), $"token {t}");
            count += expected[t] ? 1 : 0;
        }
        Assert.That(mask.Count, Is.EqualTo(count));
        Assert.That(bits[^1] >> (vocab & 63), Is.EqualTo(0UL), "no bit past the vocabulary");
    }

    /// <summary>
    /// Sampling through a top-k under a grammar asks about the best candidates only, and draws exactly what
    /// masking all the logits first draws: two chains with one seed — one trying the best candidates, falling
    /// back to the mask when too few are allowed, one always masking — pick the same token at every step of
    /// a generation of JSON-like fields over llama-spm's 32k vocabulary (random logits, the allowed tokens lifted at some
    /// steps so both paths run), with penalties, top-p, min-p and XTC after the top-k, and the end token banned.
    /// A chain that filters the whole vocabulary before its top-k (top-n-σ) never takes the short way.
    /// </summary>
    [Test]
    public void Sampling_through_top_k_checks_the_best_candidates_and_draws_what_masking_draws()
    {
        var tokenizer = LanguageModel.LoadTokenizer(SharedData.Require("vocab/ggml-vocab-llama-spm.gguf"));
        // fields whose keys and values are free text (many allowed tokens) between literals (a few)
        var grammar = Gbnf.Parse("""
            root ::= ("{" field ("," field)* "}\n")+
            field ::= "\"" [a-z]{1,8} "\": \"" [^"\\\x00-\x1F]{0,40} "\""
            """);
        var options = new SamplingOptions
        {
            Temperature = 0.9f, TopK = 40, TopP = 0.9f, MinP = 0.02f, Seed = 11, RepeatPenalty = 1.3f, PresencePenalty = 0.2f,
            XtcProbability = 0.3f, LogitBias = new Dictionary<int, float> { [tokenizer.Encode("\"", addSpecial: false)[0]] = 2f, [tokenizer.EosId!.Value] = float.NegativeInfinity },
        };
        var lazy = SamplerChain.Create(options, tokenizer.VocabSize, tokenizer);
        var masking = SamplerChain.Create(options, tokenizer.VocabSize, tokenizer);
        var constraint = new GrammarConstraint(grammar, tokenizer);
        var reference = new GrammarConstraint(grammar, tokenizer);
        var rng = new Random(5);
        var logits = new float[tokenizer.VocabSize];
        var masked = new float[tokenizer.VocabSize];
        int shortWay = 0, fallbacks = 0;
        for (int step = 0; step < 200 && constraint.CanContinue; step++)
        {
            bool lift = rng.Next(3) > 0;
            for (int t = 0; t < logits.Length; t++)
                logits[t] = (float)(rng.NextDouble() * 6 - 3) + (lift && constraint.Allows(t) ? 4f : 0f);
            int got;
            if (lazy.TrySampleAllowed(logits, constraint.AllowsToken, out got))
                shortWay++;
            else
            {
                fallbacks++;
                logits.CopyTo(masked, 0);
                Assert.That(constraint.Apply(masked), Is.True);
                got = lazy.Sample(masked);
            }
            logits.CopyTo(masked, 0);
            Assert.That(reference.Apply(masked), Is.True);
            int expected = masking.Sample(masked);
            Assert.That(got, Is.EqualTo(expected), $"step {step}");
            if (tokenizer.IsEndOfGeneration(got))
                break;
            constraint.Accept(got);
            reference.Accept(got);
            lazy.Accept(got);
            masking.Accept(got);
        }
        Assert.That(shortWay, Is.GreaterThan(10), "the short way ran");
        Assert.That(fallbacks, Is.GreaterThan(10), "the fallback ran");
        var sigma = SamplerChain.Create(options with { TopNSigma = 2f }, tokenizer.VocabSize, tokenizer);
        Assert.That(sigma.TrySampleAllowed(logits, constraint.AllowsToken, out _), Is.False, "top-n-σ before top-k looks at the whole vocabulary");
    }

    /// <summary>The model's next-token logits after <paramref name="tokens"/>, from one causal pass in a fresh cache (the tests' reference).</summary>
    internal static float[] NextLogits(LanguageModel lm, IReadOnlyList<int> tokens)
    {
        using var cache = lm.Network.CreateKvCache(lm.ContextLength);
        using var seq = cache.CreateSequence();
        var logits = new float[lm.Config.VocabSize];
        lm.Network.Forward(seq, tokens.ToArray(), Enumerable.Range(0, tokens.Count).ToArray(), Engine.Backends.AttentionMask.Causal, [tokens.Count - 1], logits);
        return logits;
    }

    /// <summary>The tokens a grammar lets follow <paramref name="state"/>, each with the state it leads to, checked token by token (no trie, no mask cache).</summary>
    internal static List<(int Token, int Next)> Continuations(LanguageModel lm, GrammarMatcher matcher, int state)
    {
        var result = new List<(int, int)>();
        for (int t = 0; t < lm.Config.VocabSize; t++)
        {
            var bytes = lm.Tokenizer.TokenBytes(t);
            if (lm.Tokenizer.Kind(t) is not (Engine.Tokenizers.TokenKind.Normal or Engine.Tokenizers.TokenKind.Byte or Engine.Tokenizers.TokenKind.UserDefined) || bytes.Length == 0)
                continue;
            int next = matcher.Step(state, bytes);
            if (next != GrammarMatcher.Dead)
                result.Add((t, next));
        }
        return result;
    }

    private static LanguageModel Stories() => LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2 });

    [Test]
    public void Constrained_generation_stays_in_the_grammar_and_ends_where_it_may()
    {
        using var lm = Stories();
        var grammar = Gbnf.Parse("""
            root ::= " " answer "." (" " answer ".")?
            answer ::= "Yes" | "No" | "The dog was " ("happy" | "sad" | "big")
            """);
        int[] prompt = [.. lm.Tokenizer.Encode("Lily asked her mom if she could play.", addSpecial: true)];
        var matcher = new GrammarMatcher(grammar);
        foreach (var sampling in new[] { SamplingOptions.Greedy, new SamplingOptions { Temperature = 1.2f, TopK = 0, TopP = 1, Seed = 3 }, new SamplingOptions { Temperature = 1.5f, Seed = 9, MinP = 0.01f } })
        {
            using var session = lm.CreateSession();
            var tokens = session.Generate(prompt, new GenerationOptions { MaxTokens = 40, Sampling = sampling, Grammar = grammar }).ToList();
            string text = Encoding.UTF8.GetString(tokens.SelectMany(t => lm.Tokenizer.TokenBytes(t).ToArray()).ToArray());
            Assert.That(matcher.CanEnd(matcher.Step(matcher.Start, Encoding.UTF8.GetBytes(text))), Is.True, $"'{text}'");
            Assert.That(session.LastStats!.StopReason, Is.EqualTo(StopReason.EndOfGeneration), $"'{text}' ended at the end token the grammar forced");
        }
    }

    /// <summary>
    /// Inside speculative decoding each verified row is masked at the grammar state its branch reached, and
    /// (greedy) drafts the grammar rejects are pruned before verification, so greedy speculative output
    /// under a grammar equals plain constrained greedy output, token for token.
    /// </summary>
    [TestCase("lookup")]
    [TestCase("recycle")]
    [TestCase("draft")]
    public void Speculative_decoding_under_a_grammar_equals_constrained_decoding(string method)
    {
        using var lm = Stories();
        using var dir = new TempDir();
        using var draft = method == "draft" ? LanguageModel.Load(SpeculativeTests.QuantizedStories(dir, "Q8_0"), new ModelOptions { Threads = 2 }) : null;
        int pruned = 0;
        foreach (string name in new[] { "list", "json" })
        {
            var grammar = Gbnf.Parse(Examples[name]);
            int[] prompt = [.. lm.Tokenizer.Encode("Tom had a list of things to do:\n", addSpecial: true)];
            var options = new GenerationOptions { MaxTokens = 80, Sampling = SamplingOptions.Greedy, Grammar = grammar };
            using var session = lm.CreateSession();
            var plain = session.Generate(prompt, options).ToList();
            using var decoder = new Engine.Speculative.SpeculativeDecoder(lm, Engine.Speculative.DraftSources.Create(method, lm, draft), new Engine.Speculative.SpeculativeOptions { Adaptive = false, MaxDraft = 6 });
            var spec = decoder.Generate(prompt, options).ToList();
            Assert.That(spec, Is.EqualTo(plain), $"{method}, {name}");
            Assert.That(decoder.Stats.AcceptedTokens, Is.GreaterThan(0), $"{method}, {name}: drafts were accepted under the grammar");
            pruned += decoder.Stats.PrunedByGrammar;
        }
        if (method == "recycle")
            Assert.That(pruned, Is.GreaterThan(0), "drafts outside the grammar were pruned before verification (and the output still equals)");
    }

    /// <summary>
    /// Sampled speculative decoding under a grammar draws from the masked distribution plain constrained
    /// sampling draws from: over a finite language, the sentences' frequencies against that law computed
    /// exactly here (each step's probability renormalized over the allowed tokens), chi-square at 0.1%.
    /// </summary>
    [Test]
    public void Sampled_speculative_decoding_under_a_grammar_keeps_the_constrained_distribution()
    {
        using var lm = Stories();
        using var dir = new TempDir();
        using var draft = LanguageModel.Load(SpeculativeTests.QuantizedStories(dir, "Q4_0"), new ModelOptions { Threads = 2 });
        var grammar = Gbnf.Parse("root ::= \" \" (\"cat\" | \"dog\" | \"bird\" | \"boy\") \".\"");
        int[] prompt = [.. lm.Tokenizer.Encode("Lily saw a big", addSpecial: true)];
        int eos = lm.Tokenizer.EosId!.Value;
        var matcher = new GrammarMatcher(grammar);
        var law = new Dictionary<string, double>();
        void Enumerate(List<int> prefix, int state, double p)
        {
            var logits = NextLogits(lm, [.. prompt, .. prefix]);
            var probs = new float[logits.Length];
            Engine.Decoding.Distributions.Softmax(logits, probs);
            var allowed = Continuations(lm, matcher, state);
            double total = allowed.Sum(a => (double)probs[a.Token]) + (matcher.CanEnd(state) ? probs[eos] : 0);
            if (matcher.CanEnd(state))
                law[string.Join(' ', prefix)] = p * probs[eos] / total;
            foreach (var (t, next) in allowed)
            {
                double q = p * probs[t] / total;
                if (q > 1e-7) // deeper paths below this carry no measurable mass for 2000 draws
                    Enumerate([.. prefix, t], next, q);
            }
        }
        Enumerate([], matcher.Start, 1);
        var keys = law.Keys.ToArray();
        var expected = keys.Select(k => law[k]).ToArray();
        Assert.That(expected.Sum(), Is.EqualTo(1).Within(1e-4), "the enumerated law sums to 1 (cut paths carry < 1e-4)");
        const int draws = 2000;
        var counts = new int[keys.Length];
        using var decoder = new Engine.Speculative.SpeculativeDecoder(lm, Engine.Speculative.DraftSources.Create("draft", lm, draft), new Engine.Speculative.SpeculativeOptions { Adaptive = false, MaxDraft = 4 });
        long accepted = 0;
        for (int i = 0; i < draws; i++)
        {
            var tokens = decoder.Generate(prompt, new GenerationOptions { MaxTokens = 16, Grammar = grammar, Sampling = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, Seed = (ulong)(5000 + i) } }).ToList();
            int cell = Array.IndexOf(keys, string.Join(' ', tokens));
            Assert.That(cell, Is.GreaterThanOrEqualTo(0), $"'{string.Concat(tokens.Select(lm.Tokenizer.Piece))}' is a sentence of the grammar");
            counts[cell]++;
            accepted += decoder.Stats.AcceptedTokens;
        }
        Assert.That(accepted, Is.GreaterThan(0), "drafts were accepted");
        GpuSuite.AssertChiSquare(counts, expected, draws, "speculative sampling under a grammar");
    }

    [Test]
    public void Greedy_constrained_generation_takes_the_best_allowed_token_each_step()
    {
        using var lm = Stories();
        var grammar = Gbnf.Parse(Examples["list"]);
        int[] prompt = [.. lm.Tokenizer.Encode("Tom had a list:\n", addSpecial: true)];
        using var session = lm.CreateSession();
        var tokens = session.Generate(prompt, new GenerationOptions { MaxTokens = 30, Sampling = SamplingOptions.Greedy, Grammar = grammar }).ToList();
        Assert.That(tokens, Has.Count.EqualTo(30));
        // reference: each step, the argmax over the tokens whose bytes keep the text a prefix of the language
        var matcher = new GrammarMatcher(grammar);
        int state = matcher.Start;
        var context = prompt.ToList();
        foreach (int token in tokens)
        {
            var logits = NextLogits(lm, context);
            int best = -1;
            foreach (var (t, _) in Continuations(lm, matcher, state))
            {
                if (best < 0 || logits[t] > logits[best])
                    best = t;
            }
            Assert.That(token, Is.EqualTo(best), $"after {context.Count - prompt.Length} tokens");
            state = matcher.Step(state, lm.Tokenizer.TokenBytes(token));
            context.Add(token);
        }
        string text = Encoding.UTF8.GetString(tokens.SelectMany(t => lm.Tokenizer.TokenBytes(t).ToArray()).ToArray());
        Assert.That(text, Does.StartWith("- "));
    }
}

/// <summary>
/// Grammar-aligned sampling (ASAp) against the exact distribution of the model conditioned on a finite
/// grammar, enumerated here over every token sequence that spells a sentence.
/// </summary>
public class GrammarAlignedSamplingTests
{
    [Test]
    public void Asap_converges_to_the_models_distribution_conditioned_on_the_grammar_where_masking_is_biased()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2 });
        var grammar = Gbnf.Parse("root ::= \" \" (\"cat\" | \"dog\" | \"bird\" | \"boy\") \".\"");
        int[] prompt = [.. lm.Tokenizer.Encode("Lily saw a big", addSpecial: true)];
        int eos = lm.Tokenizer.EosId!.Value;
        var matcher = new GrammarMatcher(grammar);

        // exact: every token sequence of the language with its probability under the model
        var exact = new Dictionary<string, double>();
        void Enumerate(List<int> prefix, int state, double logP)
        {
            var logits = GrammarTests.NextLogits(lm, [.. prompt, .. prefix]);
            var lp = new float[logits.Length];
            Engine.Decoding.Distributions.LogSoftmax(logits, lp);
            if (matcher.CanEnd(state))
                exact[string.Join(' ', prefix)] = logP + lp[eos];
            foreach (var (t, next) in GrammarTests.Continuations(lm, matcher, state))
                Enumerate([.. prefix, t], next, logP + lp[t]);
        }
        Enumerate([], matcher.Start, 0);
        double max = exact.Values.Max();
        double z = exact.Values.Sum(v => Math.Exp(v - max));
        var keys = exact.Keys.ToArray();
        var probs = keys.Select(k => Math.Exp(exact[k] - max) / z).ToArray();
        Assert.That(keys.Length, Is.GreaterThan(8), "several tokenizations of the four sentences");

        int Cell(IReadOnlyList<int> tokens) => Array.IndexOf(keys, string.Join(' ', tokens));
        const int draws = 3000;

        // masking (plain constrained sampling): biased
        var masked = new int[keys.Length];
        for (int i = 0; i < draws; i++)
        {
            using var session = lm.CreateSession();
            var tokens = session.Generate(prompt, new GenerationOptions { MaxTokens = 16, Grammar = grammar, Sampling = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, Seed = (ulong)(1000 + i) } }).ToList();
            masked[Cell(tokens)]++;
        }

        // ASAp: learn over draws samples, then count the next draws
        using var asap = new GrammarAlignedSampler(lm, grammar, prompt, maxTokens: 16);
        var rng = new Random(7);
        for (int i = 0; i < draws; i++)
            asap.Sample(rng);
        var aligned = new int[keys.Length];
        for (int i = 0; i < draws; i++)
            aligned[Cell(asap.Sample(rng))]++;
        double grammatical = exact.Values.Sum(Math.Exp);
        Assert.That(asap.Grammaticality, Is.EqualTo(grammatical).Within(0.02 * grammatical + 1e-9), "the root's estimate is the language's probability");
        // Over the sentences the model gives at least 5 expected draws: Pearson's chi-square at the 0.1% level.
        // The rare tokenizations (byte tokens, a lone space) are left to the distance below: ASAp counts an
        // unexplored branch as fully grammatical until it has been tried, so in a finite run it visits a few
        // of them more often than their tiny probability — a transient its paper describes, not a bias in the limit.
        var major = Enumerable.Range(0, keys.Length).Where(i => probs[i] * draws >= 5).ToArray();
        double chi = major.Sum(i => (aligned[i] - probs[i] * draws) * (aligned[i] - probs[i] * draws) / (probs[i] * draws));
        int df = major.Length - 1;
        double h = 2.0 / (9 * df), critical = df * Math.Pow(1 - h + 3.0902 * Math.Sqrt(h), 3);
        Assert.That(chi, Is.LessThan(critical), $"ASAp over {major.Length} sentences: chi-square {chi:F1}, critical {critical:F1}");
        // total variation: 3000 draws over a handful of likely sentences put sampling noise near 0.015;
        // masking is off by far more (it prefers the first tokens whose grammatical continuations are few)
        double Tv(int[] counts) => 0.5 * Enumerable.Range(0, keys.Length).Sum(i => Math.Abs(counts[i] / (double)draws - probs[i]));
        Assert.That(Tv(aligned), Is.LessThan(0.04), "ASAp's distance to P(· | grammar)");
        Assert.That(Tv(masked), Is.GreaterThan(0.3), "masking's distance to P(· | grammar): the bias ASAp removes");
    }
}
