using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Engine.Constraints;

/// <summary>
/// JSON Schema as a GBNF grammar whose sentences are exactly the JSON texts that validate (for the parts a
/// context-free grammar can express): <c>type</c> (one or a list), <c>properties</c>/<c>required</c>/
/// <c>additionalProperties</c> (properties in schema order, optional ones optional), <c>items</c>/
/// <c>prefixItems</c>/<c>minItems</c>/<c>maxItems</c>, <c>enum</c>/<c>const</c>, <c>anyOf</c>/<c>oneOf</c>,
/// <c>allOf</c> of objects (merged), <c>$ref</c> to <c>#/$defs/…</c> or <c>#/definitions/…</c> (recursion
/// allowed), strings with <c>minLength</c>/<c>maxLength</c>/<c>pattern</c>/<c>format</c> (date, time,
/// date-time, uuid, email), integers with <c>minimum</c> ≥ 0 or bounded ranges, numbers, booleans, null.
/// Anything else that constrains the value — <c>not</c>, <c>multipleOf</c>, a number range, a remote
/// <c>$ref</c>, <c>uniqueItems</c> — is an error naming the keyword and where it is, never silently dropped.
/// Whitespace: compact (none) by default, or one optional space/newline run after punctuation.
/// </summary>
public sealed class JsonSchemaGrammar
{
    private readonly StringBuilder _rules = new();
    private readonly Dictionary<string, string> _refRules = new(StringComparer.Ordinal);
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly JsonElement _root;
    private readonly bool _whitespace;

    private JsonSchemaGrammar(JsonElement root, bool whitespace)
    {
        _root = root;
        _whitespace = whitespace;
        foreach (string shared in new[] { "root", "char", "hex", "string", "natural", "integer", "number", "value", "object", "array", "date", "time", "ws" })
            _names.Add(shared); // the primitives' names: generated rules never take them
    }

    /// <summary>The GBNF text for <paramref name="schema"/> (JSON text of a schema).</summary>
    /// <param name="whitespace">Allow whitespace between tokens (default: compact, none).</param>
    /// <exception cref="GrammarException">The schema is not JSON, or uses what a grammar cannot express.</exception>
    public static string ToGbnf(string schema, bool whitespace = false)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(schema);
        }
        catch (JsonException e)
        {
            throw new GrammarException($"the JSON schema is not JSON: {e.Message}", 0, 0);
        }
        using (doc)
        {
            var g = new JsonSchemaGrammar(doc.RootElement, whitespace);
            string root = g.Visit(doc.RootElement, "#", "root");
            g.Primitives();
            return $"root ::= {root}\n" + g._rules;
        }
    }

    /// <summary>The compiled grammar of <paramref name="schema"/>.</summary>
    /// <remarks>The same schema text compiles to the same object (a bounded cache), so its masks are shared.</remarks>
    public static Grammar Compile(string schema, bool whitespace = false, bool cache = true)
    {
        ArgumentNullException.ThrowIfNull(schema);
        return cache ? GrammarCache.Get((whitespace ? "json-ws:" : "json:") + schema, () => Gbnf.Parse(ToGbnf(schema, whitespace), cache: false))
            : Gbnf.Parse(ToGbnf(schema, whitespace), cache: false);
    }

    private string Ws => _whitespace ? " ws" : "";

    private string NewRule(string hint, string body)
    {
        string name = Sanitize(hint);
        string unique = name;
        for (int i = 2; !_names.Add(unique); i++)
            unique = $"{name}-{i}";
        _rules.Append(unique).Append(" ::= ").Append(body).Append('\n');
        return unique;
    }

    private static string Sanitize(string hint)
    {
        var sb = new StringBuilder();
        foreach (char c in hint)
            sb.Append(char.IsAsciiLetterOrDigit(c) ? c : '-');
        string s = sb.ToString().Trim('-');
        return s.Length == 0 ? "r" : s.Length > 40 ? s[..40] : s;
    }

    private static GrammarException Unsupported(string path, string what) => new($"JSON schema at {path}: {what} cannot be expressed as a grammar", 0, 0);

    /// <summary>A GBNF expression for the value the schema at <paramref name="path"/> describes.</summary>
    private string Visit(JsonElement schema, string path, string hint)
    {
        if (schema.ValueKind == JsonValueKind.True)
            return "value";
        if (schema.ValueKind == JsonValueKind.False)
            throw Unsupported(path, "the schema false (no value validates)");
        if (schema.ValueKind != JsonValueKind.Object)
            throw new GrammarException($"JSON schema at {path}: a schema must be an object or a boolean, found {schema.ValueKind}", 0, 0);
        foreach (string keyword in new[] { "not", "multipleOf", "uniqueItems", "patternProperties", "dependentRequired", "dependentSchemas", "if", "propertyNames", "contains", "exclusiveMinimum", "exclusiveMaximum" })
        {
            if (schema.TryGetProperty(keyword, out var v) && !(keyword == "uniqueItems" && v.ValueKind == JsonValueKind.False))
                throw Unsupported($"{path}/{keyword}", $"'{keyword}'");
        }
        // a keyword that constrains the value beside $ref, anyOf or oneOf would have to be intersected with
        // it, which a grammar cannot do in general: an error rather than a keyword silently dropped
        foreach (string combinator in new[] { "$ref", "anyOf", "oneOf", "const", "enum" })
        {
            if (!schema.TryGetProperty(combinator, out _))
                continue;
            foreach (string keyword in Constraining)
            {
                if (keyword != combinator && schema.TryGetProperty(keyword, out _) && !(combinator is "const" or "enum" && keyword == "type"))
                    throw Unsupported($"{path}/{keyword}", $"'{keyword}' beside '{combinator}'");
            }
        }
        if (schema.TryGetProperty("$ref", out var reference))
            return Ref(reference.GetString() ?? "", path);
        if (schema.TryGetProperty("const", out var constant))
            return Literal(constant);
        if (schema.TryGetProperty("enum", out var values))
        {
            if (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0)
                throw new GrammarException($"JSON schema at {path}/enum: expected a non-empty array", 0, 0);
            return "(" + string.Join(" | ", values.EnumerateArray().Select(Literal)) + ")";
        }
        foreach (string combinator in new[] { "anyOf", "oneOf" })
        {
            if (schema.TryGetProperty(combinator, out var options))
            {
                var alternatives = options.EnumerateArray().Select((o, i) => Visit(o, $"{path}/{combinator}/{i}", $"{hint}-{i}")).ToList();
                return "(" + string.Join(" | ", alternatives) + ")";
            }
        }
        if (schema.TryGetProperty("allOf", out var all))
            return Visit(MergeAll(all, path), path, hint);
        if (schema.TryGetProperty("type", out var type))
        {
            if (type.ValueKind == JsonValueKind.Array)
                return "(" + string.Join(" | ", type.EnumerateArray().Select(t => Typed(schema, t.GetString() ?? "", path, hint))) + ")";
            return Typed(schema, type.GetString() ?? "", path, hint);
        }
        if (schema.TryGetProperty("properties", out _))
            return Typed(schema, "object", path, hint);
        if (schema.TryGetProperty("items", out _) || schema.TryGetProperty("prefixItems", out _))
            return Typed(schema, "array", path, hint);
        return "value"; // {} or only annotations: any JSON value
    }

    /// <summary>The keywords that constrain a value (annotations — title, description, default, examples — do not).</summary>
    private static readonly string[] Constraining =
    [
        "$ref", "anyOf", "oneOf", "allOf", "const", "enum", "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
    ];

    /// <summary>allOf of object schemas: one object with every part's properties and required names.</summary>
    private JsonElement MergeAll(JsonElement all, string path)
    {
        var properties = new Dictionary<string, JsonElement>();
        var required = new List<string>();
        foreach (var (part, i) in all.EnumerateArray().Select((p, i) => (p, i)))
        {
            var resolved = part.TryGetProperty("$ref", out var r) ? Resolve(r.GetString() ?? "", path) : part;
            if (!resolved.TryGetProperty("properties", out var props))
                throw Unsupported($"{path}/allOf/{i}", "allOf of anything but object schemas");
            foreach (var p in props.EnumerateObject())
                properties[p.Name] = p.Value;
            if (resolved.TryGetProperty("required", out var req))
                required.AddRange(req.EnumerateArray().Select(x => x.GetString()!));
        }
        string json = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["type"] = "object",
            ["properties"] = properties,
            ["required"] = required.Distinct().ToArray(),
        });
        return JsonDocument.Parse(json).RootElement.Clone();
    }

    private JsonElement Resolve(string reference, string path)
    {
        if (!reference.StartsWith("#/", StringComparison.Ordinal))
            throw Unsupported(path, $"the $ref '{reference}' (only local references '#/...' are followed)");
        var node = _root;
        foreach (string part in reference[2..].Split('/'))
        {
            string key = part.Replace("~1", "/").Replace("~0", "~");
            if (node.ValueKind != JsonValueKind.Object || !node.TryGetProperty(key, out node))
                throw new GrammarException($"JSON schema at {path}: $ref '{reference}' points nowhere", 0, 0);
        }
        return node;
    }

    private string Ref(string reference, string path)
    {
        if (_refRules.TryGetValue(reference, out string? rule))
            return rule;
        var target = Resolve(reference, path);
        // name the rule before visiting it, so that a recursive reference finds it
        string name = Sanitize(reference.Split('/')[^1]);
        string unique = name;
        for (int i = 2; _names.Contains(unique); i++)
            unique = $"{name}-{i}";
        _names.Add(unique);
        _refRules[reference] = unique;
        string body = Visit(target, reference, unique);
        _rules.Append(unique).Append(" ::= ").Append(body).Append('\n');
        return unique;
    }

    private string Typed(JsonElement schema, string type, string path, string hint) => type switch
    {
        "object" => Object(schema, path, hint),
        "array" => Array(schema, path, hint),
        "string" => String(schema, path, hint),
        "integer" => Integer(schema, path, hint),
        "number" => Number(schema, path),
        "boolean" => "(\"true\" | \"false\")",
        "null" => "\"null\"",
        _ => throw new GrammarException($"JSON schema at {path}/type: unknown type '{type}'", 0, 0),
    };

    private string Object(JsonElement schema, string path, string hint)
    {
        var props = schema.TryGetProperty("properties", out var p) ? p.EnumerateObject().ToList() : [];
        var required = schema.TryGetProperty("required", out var r) ? r.EnumerateArray().Select(x => x.GetString()!).ToHashSet() : [];
        foreach (string name in required)
        {
            if (!props.Any(x => x.Name == name))
                throw Unsupported($"{path}/required", $"the required property '{name}' without a schema in 'properties'");
        }
        string? extra = null;
        if (schema.TryGetProperty("additionalProperties", out var additional) && additional.ValueKind != JsonValueKind.False)
            extra = $"string{Ws} \":\"{Ws} " + Visit(additional, $"{path}/additionalProperties", hint + "-extra");
        else if (props.Count == 0 && !schema.TryGetProperty("additionalProperties", out _))
            extra = $"string{Ws} \":\"{Ws} value"; // {"type": "object"}: any object
        var kv = props.Select(x => $"{Literal(x.Name)}{Ws} \":\"{Ws} {Visit(x.Value, $"{path}/properties/{x.Name}", $"{hint}-{x.Name}")}").ToList();
        int k = kv.Count;
        // tail_i: the properties from i on, each after a comma; a required one must be there
        var tails = new string[k + 1];
        string extras = extra is null ? "" : $"(\",\"{Ws} {extra})*";
        tails[k] = extras.Length == 0 ? "" : NewRule(hint + "-tail", extras);
        for (int i = k - 1; i >= 0; i--)
        {
            string item = $"\",\"{Ws} {kv[i]}";
            string body = required.Contains(props[i].Name) ? $"{item} {tails[i + 1]}" : $"({item})? {tails[i + 1]}";
            tails[i] = NewRule($"{hint}-tail", body.Trim());
        }
        // the first property present: any up to the first required one (or none, when nothing is required)
        var firsts = new List<string>();
        for (int j = 0; j < k; j++)
        {
            firsts.Add($"{kv[j]} {tails[j + 1]}".Trim());
            if (required.Contains(props[j].Name))
                break;
        }
        if (!props.Any(x => required.Contains(x.Name)))
        {
            if (extra is not null)
                firsts.Add($"{extra} {(extras.Length > 0 ? tails[k] : "")}".Trim());
            firsts.Add("\"\"");
        }
        return $"\"{{\"{Ws} ({string.Join(" | ", firsts)}){Ws} \"}}\"";
    }

    private string Array(JsonElement schema, string path, string hint)
    {
        int min = schema.TryGetProperty("minItems", out var mi) ? mi.GetInt32() : 0;
        int? max = schema.TryGetProperty("maxItems", out var ma) ? ma.GetInt32() : null;
        if (min < 0 || max < min)
            throw new GrammarException($"JSON schema at {path}: minItems {min} / maxItems {max} is impossible", 0, 0);
        var prefix = schema.TryGetProperty("prefixItems", out var pi) ? pi.EnumerateArray().Select((s, i) => Visit(s, $"{path}/prefixItems/{i}", $"{hint}-{i}")).ToList() : [];
        string? item = schema.TryGetProperty("items", out var items) ? items.ValueKind == JsonValueKind.False ? null : Visit(items, $"{path}/items", hint + "-item") : "value";
        string sep = $"\",\"{Ws}";
        if (prefix.Count > 0)
        {
            // the prefix items in order (each may end the array once minItems is met), then more items
            var sb = new StringBuilder();
            string rest = item is null ? "" : $"({sep} {item})*";
            string tail = rest;
            for (int i = prefix.Count - 1; i >= 1; i--)
                tail = i < min ? $"{sep} {prefix[i]} {tail}" : $"({sep} {prefix[i]} {tail})?";
            string body = $"{prefix[0]} {tail}".Trim();
            return $"\"[\"{Ws} ({body}){(min == 0 ? "?" : "")}{Ws} \"]\"";
        }
        if (item is null)
            return $"\"[\"{Ws} \"]\"";
        string itemRule = NewRule(hint + "-item", item);
        string more;
        if (max is int m)
        {
            if (m == 0)
                return $"\"[\"{Ws} \"]\"";
            more = $"({sep} {itemRule}){{{Math.Max(0, min - 1)},{m - 1}}}";
        }
        else
            more = $"({sep} {itemRule}){{{Math.Max(0, min - 1)},}}";
        string list = $"{itemRule} {more}";
        return min == 0 ? $"\"[\"{Ws} ({list})?{Ws} \"]\"" : $"\"[\"{Ws} {list}{Ws} \"]\"";
    }

    private string String(JsonElement schema, string path, string hint)
    {
        if (schema.TryGetProperty("pattern", out var pattern))
        {
            string rule = Sanitize(hint + "-pattern"), unique = rule;
            for (int i = 2; !_names.Add(unique); i++)
                unique = $"{rule}-{i}";
            string gbnf;
            try
            {
                gbnf = RegexGrammar.ToGbnf(pattern.GetString() ?? "", unique, jsonString: true);
            }
            catch (GrammarException e)
            {
                throw new GrammarException($"JSON schema at {path}/pattern: {e.Message}", 0, 0);
            }
            _rules.Append(gbnf);
            rule = unique;
            return $"\"\\\"\" {rule} \"\\\"\"";
        }
        if (schema.TryGetProperty("format", out var format))
        {
            string? f = format.GetString() switch
            {
                "date" => "date",
                "time" => "time",
                "date-time" => "date \"T\" time",
                "uuid" => "hex{8} \"-\" hex{4} \"-\" hex{4} \"-\" hex{4} \"-\" hex{12}",
                "email" => "[a-zA-Z0-9._%+-]+ \"@\" [a-zA-Z0-9-]+ (\".\" [a-zA-Z0-9-]+)+",
                _ => null, // an annotation we do not enforce: any string
            };
            if (f is not null)
                return $"\"\\\"\" {f} \"\\\"\"";
        }
        int min = schema.TryGetProperty("minLength", out var mi) ? mi.GetInt32() : 0;
        int? max = schema.TryGetProperty("maxLength", out var ma) ? ma.GetInt32() : null;
        if (min < 0 || max < min)
            throw new GrammarException($"JSON schema at {path}: minLength {min} / maxLength {max} is impossible", 0, 0);
        if (min == 0 && max is null)
            return "string";
        return $"\"\\\"\" char{{{min},{(max is int m ? m.ToString(CultureInfo.InvariantCulture) : "")}}} \"\\\"\"";
    }

    private string Integer(JsonElement schema, string path, string hint)
    {
        long? min = schema.TryGetProperty("minimum", out var mi) ? (long)mi.GetDouble() : null;
        long? max = schema.TryGetProperty("maximum", out var ma) ? (long)ma.GetDouble() : null;
        if (min is null && max is null)
            return "integer";
        if (max is null && min == 0)
            return "natural";
        if (max is null && min > 0)
            return NewRule(hint + "-int", $"{Range(min.Value, (long)Math.Pow(10, Digits(min.Value)) - 1)} | [1-9] [0-9]{{{Digits(min.Value)},15}}");
        if (min is long lo && max is long hi && lo <= hi && hi - lo <= 1_000_000_000)
            return NewRule(hint + "-int", Range(lo, hi));
        // one open end: the bounded part as a range, every longer number beyond it
        if (min is null && max is long top && top >= 0 && top < 1_000_000_000)
            return NewRule(hint + "-int", $"\"-\" natural | {Range(0, top)}");
        if (min is null && max is long neg && neg < 0 && neg > -1_000_000_000)
            return NewRule(hint + "-int", $"{Range(1 - (long)Math.Pow(10, Digits(-neg)), neg)} | \"-\" [1-9] [0-9]{{{Digits(-neg)},15}}");
        if (max is null && min is long bottom && bottom < 0 && bottom > -1_000_000_000)
            return NewRule(hint + "-int", $"{Range(bottom, -1)} | natural");
        throw Unsupported(path, $"an integer range [{min?.ToString(CultureInfo.InvariantCulture) ?? "-inf"}, {max?.ToString(CultureInfo.InvariantCulture) ?? "inf"}]");
    }

    private static int Digits(long v) => v.ToString(CultureInfo.InvariantCulture).Length;

    /// <summary>The decimal integers in [lo, hi] as alternatives of digit ranges (negatives by their absolute values).</summary>
    internal static string Range(long lo, long hi)
    {
        var parts = new List<string>();
        if (lo < 0)
        {
            long nlo = Math.Max(1, hi < 0 ? -hi : 1), nhi = -lo;
            parts.AddRange(Positive(nlo, nhi).Select(p => "\"-\" " + p));
            lo = 0;
        }
        if (hi >= 0 && lo <= hi)
        {
            if (lo == 0)
            {
                parts.Add("\"0\"");
                lo = 1;
            }
            if (lo <= hi)
                parts.AddRange(Positive(lo, hi));
        }
        return "(" + string.Join(" | ", parts) + ")";
    }

    /// <summary>[lo, hi] with 1 ≤ lo: by length, then digit by digit (a prefix, one digit range, free digits).</summary>
    private static IEnumerable<string> Positive(long lo, long hi)
    {
        var result = new List<string>();
        for (int length = Digits(lo); length <= Digits(hi); length++)
        {
            long from = Math.Max(lo, length == 1 ? 1 : (long)Math.Pow(10, length - 1));
            long to = Math.Min(hi, (long)Math.Pow(10, length) - 1);
            if (from <= to)
                result.AddRange(SameLength(from.ToString(CultureInfo.InvariantCulture), to.ToString(CultureInfo.InvariantCulture)));
        }
        return result;
    }

    /// <summary>Digit strings of one length between a and b (leading zeros allowed inside the recursion).</summary>
    private static List<string> SameLength(string a, string b)
    {
        int n = a.Length;
        if (n == 1)
            return [a[0] == b[0] ? $"\"{a}\"" : $"[{a[0]}-{b[0]}]"];
        if (a[0] == b[0])
            return SameLength(a[1..], b[1..]).Select(rest => $"\"{a[0]}\" {rest}").ToList();
        var parts = new List<string>();
        char first = a[0], last = b[0];
        if (!a[1..].All(c => c == '0'))
        {
            parts.AddRange(SameLength(a[1..], new string('9', n - 1)).Select(rest => $"\"{a[0]}\" {rest}"));
            first++;
        }
        bool hiPartial = !b[1..].All(c => c == '9');
        if (hiPartial)
            last--;
        if (first <= last)
            parts.Add($"{(first == last ? $"\"{first}\"" : $"[{first}-{last}]")} [0-9]{(n - 1 == 1 ? "" : $"{{{n - 1}}}")}");
        if (hiPartial)
            parts.AddRange(SameLength(new string('0', n - 1), b[1..]).Select(rest => $"\"{b[0]}\" {rest}"));
        return parts;
    }

    private string Number(JsonElement schema, string path)
    {
        if (schema.TryGetProperty("minimum", out _) || schema.TryGetProperty("maximum", out _))
            throw Unsupported(path, "a range of a non-integer number");
        return "number";
    }

    /// <summary>A JSON value written compactly, as a literal.</summary>
    private static readonly JsonSerializerOptions Plain = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static string Literal(JsonElement value) => Quote(JsonSerializer.Serialize(value, Plain));

    /// <summary>A property name as the JSON string literal that spells it.</summary>
    private static string Literal(string name) => Quote(JsonSerializer.Serialize(name, Plain));

    /// <summary>JSON text as a GBNF string literal.</summary>
    private static string Quote(string json)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in json)
        {
            sb.Append(c switch
            {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                _ => c.ToString(),
            });
        }
        return sb.Append('"').ToString();
    }

    /// <summary>The shared rules: JSON strings, numbers, any value; whitespace when allowed.</summary>
    private void Primitives()
    {
        string ws = Ws;
        _rules.Append("char ::= [^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" hex{4})\n");
        _rules.Append("hex ::= [0-9a-fA-F]\n");
        _rules.Append("string ::= \"\\\"\" char* \"\\\"\"\n");
        _rules.Append("natural ::= \"0\" | [1-9] [0-9]{0,15}\n");
        _rules.Append("integer ::= \"-\"? natural\n");
        _rules.Append("number ::= integer (\".\" [0-9]+)? ([eE] [-+]? [0-9]+)?\n");
        _rules.Append($"value ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n");
        _rules.Append($"object ::= \"{{\"{ws} (string{ws} \":\"{ws} value ({ws} \",\"{ws} string{ws} \":\"{ws} value)*)?{ws} \"}}\"\n");
        _rules.Append($"array ::= \"[\"{ws} (value ({ws} \",\"{ws} value)*)?{ws} \"]\"\n");
        _rules.Append("date ::= [0-9]{4} \"-\" (\"0\" [1-9] | \"1\" [0-2]) \"-\" (\"0\" [1-9] | [12] [0-9] | \"3\" [01])\n");
        _rules.Append("time ::= ([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9] \":\" [0-5] [0-9] (\".\" [0-9]+)? (\"Z\" | [+-] ([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9])\n");
        if (_whitespace)
            _rules.Append("ws ::= [ \\t\\n]{0,20}\n");
    }
}
