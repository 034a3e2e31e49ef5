using System.Globalization;
using System.Text;

namespace Engine.Chat.Jinja;

/// <summary>A name or attribute that is not there: prints as nothing, is false, iterates as empty; anything more is an error.</summary>
public sealed class Undefined(string name)
{
    public string Name { get; } = name;

    public override string ToString() => "";
}

/// <summary>Jinja's <c>namespace(...)</c>: attributes a loop body may assign and the code after the loop sees.</summary>
public sealed class Namespace
{
    public OrderedDictionary<string, object?> Values { get; } = new(StringComparer.Ordinal);
}

/// <summary>A function a template can call (globals such as <c>raise_exception</c>, macros, bound methods).</summary>
public delegate object? JinjaFunction(List<object?> args, Dictionary<string, object?> kwargs);

/// <summary>
/// Python semantics of the values templates handle: None, bool, int (long), float (double), str, list,
/// dict (ordered, as JSON objects arrive), and their truthiness, equality, ordering, str() and
/// <c>json.dumps</c> — what HF's Python reference renders, so the same template gives the same text.
/// </summary>
public static class PyValue
{
    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        System.Collections.ICollection c => c.Count > 0,
        _ => true,
    };

    /// <summary>str(v) as Python prints it (undefined prints as nothing).</summary>
    public static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        string s => s,
        _ => Repr(v, top: true),
    };

    /// <summary>repr(v): strings quoted as Python quotes them, containers with their items' repr.</summary>
    public static string Repr(object? v, bool top = false) => v switch
    {
        null => "None",
        Undefined => "",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => Float(d),
        string s => top ? s : Quote(s),
        IList<object?> list => "[" + string.Join(", ", list.Select(x => Repr(x))) + "]",
        OrderedDictionary<string, object?> dict => "{" + string.Join(", ", dict.Select(kv => Quote(kv.Key) + ": " + Repr(kv.Value))) + "}",
        Namespace => "<Namespace>",
        _ => v.ToString() ?? "",
    };

    private static string Quote(string s)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder().Append(q);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == q)
                        sb.Append('\\').Append(c);
                    else
                        sb.Append(c);
                    break;
            }
        }
        return sb.Append(q).ToString();
    }

    /// <summary>Python's float repr: the shortest round-trip digits, always with a point or an exponent.</summary>
    public static string Float(double d)
    {
        if (double.IsNaN(d))
            return "nan";
        if (double.IsInfinity(d))
            return d > 0 ? "inf" : "-inf";
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        if (r.Contains('E'))
        {
            // 1E+16 → 1e+16, 1E-05 → 1e-05 (Python pads the exponent to two digits)
            int e = r.IndexOf('E');
            string mantissa = r[..e], exponent = r[(e + 1)..];
            int exp = int.Parse(exponent, CultureInfo.InvariantCulture);
            return mantissa + "e" + (exp < 0 ? "-" : "+") + Math.Abs(exp).ToString("00", CultureInfo.InvariantCulture);
        }
        return r.Contains('.') ? r : r + ".0";
    }

    /// <summary>json.dumps(v, ensure_ascii=False, indent=indent) as transformers' tojson filter calls it.</summary>
    public static string Json(object? v, int? indent = null, bool sortKeys = false)
    {
        var sb = new StringBuilder();
        WriteJson(sb, v, indent, 0, sortKeys);
        return sb.ToString();
    }

    private static void WriteJson(StringBuilder sb, object? v, int? indent, int depth, bool sortKeys)
    {
        string itemSeparator = indent is null ? ", " : ",";
        void NewLine(int d)
        {
            if (indent is int n)
                sb.Append('\n').Append(' ', n * d);
        }
        switch (v)
        {
            case null or Undefined:
                sb.Append("null");
                break;
            case bool b:
                sb.Append(b ? "true" : "false");
                break;
            case long l:
                sb.Append(l.ToString(CultureInfo.InvariantCulture));
                break;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : Float(d));
                break;
            case string s:
                JsonString(sb, s);
                break;
            case IList<object?> list:
                if (list.Count == 0)
                {
                    sb.Append("[]");
                    break;
                }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0)
                        sb.Append(itemSeparator);
                    NewLine(depth + 1);
                    WriteJson(sb, list[i], indent, depth + 1, sortKeys);
                }
                NewLine(depth);
                sb.Append(']');
                break;
            case OrderedDictionary<string, object?> dict:
            {
                if (dict.Count == 0)
                {
                    sb.Append("{}");
                    break;
                }
                sb.Append('{');
                var entries = sortKeys ? dict.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList() : dict.ToList();
                for (int i = 0; i < entries.Count; i++)
                {
                    if (i > 0)
                        sb.Append(itemSeparator);
                    NewLine(depth + 1);
                    JsonString(sb, entries[i].Key);
                    sb.Append(": ");
                    WriteJson(sb, entries[i].Value, indent, depth + 1, sortKeys);
                }
                NewLine(depth);
                sb.Append('}');
                break;
            }
            case Namespace ns:
                WriteJson(sb, ns.Values, indent, depth, sortKeys);
                break;
            default:
                JsonString(sb, v.ToString() ?? "");
                break;
        }
    }

    private static void JsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20)
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else
                        sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>Python's == between template values (1 == 1.0, lists and dicts by content).</summary>
    public static bool Equal(object? a, object? b)
    {
        if (a is Undefined || b is Undefined)
            return a is Undefined && b is Undefined;
        if (a is null || b is null)
            return a is null && b is null;
        if (IsNumber(a) && IsNumber(b))
            return ToDouble(a) == ToDouble(b);
        if (a is string sa && b is string sb)
            return sa == sb;
        if (a is IList<object?> la && b is IList<object?> lb)
            return la.Count == lb.Count && la.Zip(lb).All(p => Equal(p.First, p.Second));
        if (a is OrderedDictionary<string, object?> da && b is OrderedDictionary<string, object?> db)
            return da.Count == db.Count && da.All(kv => db.TryGetValue(kv.Key, out var other) && Equal(kv.Value, other));
        return Equals(a, b);
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidCastException($"{Repr(v)} is not a number"),
    };

    public static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
            return ToDouble(a).CompareTo(ToDouble(b));
        if (a is string sa && b is string sb)
            return string.CompareOrdinal(sa, sb);
        throw new InvalidOperationException($"cannot compare {TypeName(a)} with {TypeName(b)}");
    }

    public static string TypeName(object? v) => v switch
    {
        null => "None",
        Undefined u => $"undefined '{u.Name}'",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        IList<object?> => "list",
        OrderedDictionary<string, object?> => "dict",
        _ => v.GetType().Name,
    };

    /// <summary>A .NET value (JSON elements, arrays, dictionaries, anonymous data) as a template value.</summary>
    public static object? From(object? v) => v switch
    {
        null => null,
        string or bool or long or double or Undefined or Namespace or JinjaFunction => v,
        int i => (long)i,
        float f => (double)f,
        System.Text.Json.JsonElement e => FromJson(e),
        OrderedDictionary<string, object?> d => d,
        IDictionary<string, object?> d => ToDict(d),
        IList<object?> l => l,
        System.Collections.IEnumerable e => e.Cast<object?>().Select(From).ToList(),
        _ => v,
    };

    private static OrderedDictionary<string, object?> ToDict(IDictionary<string, object?> d)
    {
        var result = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, val) in d)
            result[k] = From(val);
        return result;
    }

    public static object? FromJson(System.Text.Json.JsonElement e) => e.ValueKind switch
    {
        System.Text.Json.JsonValueKind.Null or System.Text.Json.JsonValueKind.Undefined => null,
        System.Text.Json.JsonValueKind.True => true,
        System.Text.Json.JsonValueKind.False => false,
        System.Text.Json.JsonValueKind.String => e.GetString(),
        System.Text.Json.JsonValueKind.Number => e.TryGetInt64(out long l) ? l : e.GetDouble(),
        System.Text.Json.JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        _ => ObjectFromJson(e),
    };

    private static OrderedDictionary<string, object?> ObjectFromJson(System.Text.Json.JsonElement e)
    {
        var d = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
        foreach (var p in e.EnumerateObject())
            d[p.Name] = FromJson(p.Value);
        return d;
    }
}
