using System.Globalization;
using System.Text;

namespace Engine.Chat.Jinja;

internal sealed partial class Interpreter
{
    private object? Filter(string name, object? value, List<object?> args, Dictionary<string, object?> kwargs, Scope scope)
    {
        object? Arg(int i, string key, object? fallback = null) => i < args.Count ? args[i] : kwargs.TryGetValue(key, out var v) ? v : fallback;
        switch (name)
        {
            case "trim":
                return PyValue.Str(value).Trim();
            case "tojson":
            {
                var indent = Arg(0, "indent");
                return PyValue.Json(value, indent is null or Undefined ? null : (int)ToLong(indent), PyValue.Truthy(Arg(1, "sort_keys", false)));
            }
            case "length" or "count":
                return value switch
                {
                    string s => (long)s.Length,
                    System.Collections.ICollection collection => (long)collection.Count,
                    Undefined => 0L,
                    _ => throw new InvalidOperationException($"{PyValue.TypeName(value)} has no length"),
                };
            case "upper":
                return PyValue.Str(value).ToUpperInvariant();
            case "lower":
                return PyValue.Str(value).ToLowerInvariant();
            case "capitalize":
            {
                string s = PyValue.Str(value);
                return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();
            }
            case "title":
                return Title(PyValue.Str(value));
            case "replace":
                return Replace(PyValue.Str(value), PyValue.Str(Arg(0, "old")), PyValue.Str(Arg(1, "new")), Arg(2, "count") is { } c and not Undefined ? ToLong(c) : -1);
            case "join":
            {
                string separator = Arg(0, "d", "") is var sep && sep is not (null or Undefined) ? PyValue.Str(sep) : "";
                var attribute = Arg(1, "attribute");
                var items = Iterate(value);
                if (attribute is not (null or Undefined))
                    items = items.Select(x => Lookup(x, attribute));
                return string.Join(separator, items.Select(PyValue.Str));
            }
            case "default" or "d":
            {
                bool boolean = PyValue.Truthy(Arg(1, "boolean", false));
                bool missing = value is Undefined || (boolean && !PyValue.Truthy(value));
                return missing ? Arg(0, "default_value", "") : value;
            }
            case "items":
                return value is OrderedDictionary<string, object?> d ? d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()
                    : value is Undefined ? new List<object?>() : throw new InvalidOperationException($"{PyValue.TypeName(value)} has no items");
            case "list":
                return Iterate(value).ToList();
            case "first":
                return Iterate(value).FirstOrDefault(new Undefined("first"));
            case "last":
                return value is IList<object?> { Count: > 0 } l ? l[^1] : value is string { Length: > 0 } s2 ? s2[^1].ToString() : new Undefined("last");
            case "reverse":
                return value is string rs ? new string(rs.Reverse().ToArray()) : Iterate(value).Reverse().ToList();
            case "string":
                return PyValue.Str(value);
            case "int":
                return value switch
                {
                    string s when long.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long parsed) => parsed,
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double f) => (long)f,
                    long or double or bool => ToLong(value),
                    _ => Arg(0, "default", 0L),
                };
            case "float":
                return value switch
                {
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double f) => f,
                    long or double or bool => PyValue.ToDouble(value),
                    _ => Arg(0, "default", 0.0),
                };
            case "abs":
                return value is long l2 ? Math.Abs(l2) : Math.Abs(PyValue.ToDouble(value));
            case "round":
            {
                int precision = (int)ToLong(Arg(0, "precision", 0L));
                return Math.Round(PyValue.ToDouble(value), precision, MidpointRounding.ToEven);
            }
            case "safe" or "e" or "escape" when name == "safe":
                return value;
            case "indent":
            {
                var width = Arg(0, "width", 4L);
                string pad = width is string w ? w : new string(' ', (int)ToLong(width));
                bool first = PyValue.Truthy(Arg(1, "first", false)), blank = PyValue.Truthy(Arg(2, "blank", false));
                var lines = PyValue.Str(value).Split('\n');
                for (int i = 0; i < lines.Length; i++)
                {
                    if ((i > 0 || first) && (blank || lines[i].Length > 0))
                        lines[i] = pad + lines[i];
                }
                return string.Join('\n', lines);
            }
            case "selectattr" or "rejectattr":
            {
                bool keep = name == "selectattr";
                var attribute = args.Count > 0 ? args[0] : throw new InvalidOperationException($"{name} needs an attribute name");
                string? test = args.Count > 1 ? PyValue.Str(args[1]) : null;
                var testArgs = args.Skip(2).ToList();
                return Iterate(value).Where(x =>
                {
                    var v = Lookup(x, attribute);
                    bool ok = test is null ? PyValue.Truthy(v) : Test(test, v, testArgs);
                    return ok == keep;
                }).ToList();
            }
            case "select" or "reject":
            {
                bool keep = name == "select";
                string? test = args.Count > 0 ? PyValue.Str(args[0]) : null;
                var testArgs = args.Skip(1).ToList();
                return Iterate(value).Where(x => (test is null ? PyValue.Truthy(x) : Test(test, x, testArgs)) == keep).ToList();
            }
            case "map":
            {
                if (kwargs.TryGetValue("attribute", out var attribute))
                {
                    var fallback = kwargs.GetValueOrDefault("default");
                    return Iterate(value).Select(x => Lookup(x, attribute) is Undefined && fallback is not null ? fallback : Lookup(x, attribute)).ToList();
                }
                if (args.Count == 0)
                    throw new InvalidOperationException("map needs a filter name or attribute=");
                string filter = PyValue.Str(args[0]);
                var rest = args.Skip(1).ToList();
                return Iterate(value).Select(x => Filter(filter, x, rest, [], scope)).ToList();
            }
            case "sort":
            {
                bool reverse = PyValue.Truthy(Arg(0, "reverse", false));
                var attribute = Arg(2, "attribute");
                var list = Iterate(value).ToList();
                list.Sort((a, b) =>
                {
                    var x = attribute is null or Undefined ? a : Lookup(a, attribute);
                    var y = attribute is null or Undefined ? b : Lookup(b, attribute);
                    return PyValue.Compare(x, y);
                });
                if (reverse)
                    list.Reverse();
                return list;
            }
            case "unique":
            {
                var result = new List<object?>();
                foreach (var x in Iterate(value))
                {
                    if (!result.Any(y => PyValue.Equal(x, y)))
                        result.Add(x);
                }
                return result;
            }
            case "wordcount":
                return (long)PyValue.Str(value).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            case "dictsort":
                return value is OrderedDictionary<string, object?> ds
                    ? ds.OrderBy(kv => kv.Key, StringComparer.OrdinalIgnoreCase).Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()
                    : throw new InvalidOperationException("dictsort needs a dict");
            default:
                throw new InvalidOperationException($"unknown filter '{name}'");
        }
    }

    /// <summary>An attribute of an item, by name or dotted path (<c>map(attribute='function.name')</c>) or index.</summary>
    private object? Lookup(object? item, object? attribute)
    {
        if (attribute is long)
            return GetItem(item, attribute);
        object? v = item;
        foreach (string part in PyValue.Str(attribute).Split('.'))
        {
            if (v is Undefined)
                return v;
            v = long.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out long i) && v is IList<object?> ? GetItem(v, i) : GetAttributeOrUndefined(v, part);
        }
        return v;
    }

    private object? GetAttributeOrUndefined(object? v, string name) => v is null ? new Undefined(name) : GetAttribute(v, name);

    private bool Test(string name, object? value, List<object?> args)
    {
        object? Arg() => args.Count > 0 ? args[0] : throw new InvalidOperationException($"the test '{name}' needs an argument");
        return name switch
        {
            "defined" => value is not Undefined,
            "undefined" => value is Undefined,
            "none" => value is null,
            "string" => value is string,
            "number" => value is long or double,
            "integer" => value is long,
            "float" => value is double,
            "boolean" => value is bool,
            "true" => value is true,
            "false" => value is false,
            "mapping" => value is OrderedDictionary<string, object?> or Namespace,
            "sequence" or "iterable" => value is string or IList<object?> or OrderedDictionary<string, object?>,
            "callable" => value is JinjaFunction,
            "even" => ToLong(value) % 2 == 0,
            "odd" => ToLong(value) % 2 != 0,
            "divisibleby" => ToLong(value) % ToLong(Arg()) == 0,
            "eq" or "equalto" or "==" or "sameas" => PyValue.Equal(value, Arg()),
            "ne" or "!=" => !PyValue.Equal(value, Arg()),
            "lt" or "lessthan" or "<" => PyValue.Compare(value, Arg()) < 0,
            "gt" or "greaterthan" or ">" => PyValue.Compare(value, Arg()) > 0,
            "le" or "<=" => PyValue.Compare(value, Arg()) <= 0,
            "ge" or ">=" => PyValue.Compare(value, Arg()) >= 0,
            "in" => Contains(Arg(), value),
            "lower" => value is string s && s == s.ToLowerInvariant(),
            "upper" => value is string u && u == u.ToUpperInvariant(),
            _ => throw new InvalidOperationException($"unknown test '{name}'"),
        };
    }
}
