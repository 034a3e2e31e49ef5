using System.Globalization;
using System.Text;

namespace Engine.Chat.Jinja;

internal sealed partial class Interpreter
{
    public object? Eval(Expr e, Scope scope)
    {
        switch (e)
        {
            case Literal l:
                return l.Value;
            case NameExpr n:
                return scope.TryGet(n.Name, out var v) ? v : new Undefined(n.Name);
            case ListExpr l:
                return l.Items.Select(i => Eval(i, scope)).ToList();
            case DictExpr d:
            {
                var dict = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, val) in d.Items)
                    dict[PyValue.Str(Eval(k, scope))] = Eval(val, scope);
                return dict;
            }
            case AttributeExpr a:
                return GetAttribute(Eval(a.Target, scope), a.Name);
            case IndexExpr i:
                return GetItem(Eval(i.Target, scope), Eval(i.Index, scope));
            case SliceExpr s:
                return Slice(Eval(s.Target, scope), s.Start is null ? null : Eval(s.Start, scope), s.Stop is null ? null : Eval(s.Stop, scope),
                    s.Step is null ? null : Eval(s.Step, scope));
            case CallExpr c:
            {
                var callee = Eval(c.Target, scope);
                return Invoke(callee, c.Args.Select(x => Eval(x, scope)).ToList(), c.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, scope)));
            }
            case FilterExpr f:
                return Filter(f.Name, Eval(f.Value, scope), f.Args.Select(x => Eval(x, scope)).ToList(),
                    f.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, scope)), scope);
            case TestExpr t:
            {
                bool result = Test(t.Name, Eval(t.Value, scope), t.Args.Select(x => Eval(x, scope)).ToList());
                return t.Negated ? !result : result;
            }
            case UnaryExpr u:
            {
                var operand = Eval(u.Operand, scope);
                return u.Op switch
                {
                    "not" => !PyValue.Truthy(operand),
                    "-" => operand is long l ? (object)(-l) : -PyValue.ToDouble(operand),
                    _ => operand,
                };
            }
            case BinaryExpr b:
                return Binary(b, scope);
            case ConditionalExpr c:
                return PyValue.Truthy(Eval(c.Condition, scope)) ? Eval(c.Then, scope)
                    : c.Else is null ? new Undefined("conditional") : Eval(c.Else, scope);
            default:
                throw new InvalidOperationException($"cannot evaluate a {e.GetType().Name}");
        }
    }

    private object? Binary(BinaryExpr b, Scope scope)
    {
        if (b.Op == "and")
        {
            var left = Eval(b.Left, scope);
            return PyValue.Truthy(left) ? Eval(b.Right, scope) : left;
        }
        if (b.Op == "or")
        {
            var left = Eval(b.Left, scope);
            return PyValue.Truthy(left) ? left : Eval(b.Right, scope);
        }
        var l = Eval(b.Left, scope);
        var r = Eval(b.Right, scope);
        switch (b.Op)
        {
            case "==": return PyValue.Equal(l, r);
            case "!=": return !PyValue.Equal(l, r);
            case "<": return PyValue.Compare(l, r) < 0;
            case ">": return PyValue.Compare(l, r) > 0;
            case "<=": return PyValue.Compare(l, r) <= 0;
            case ">=": return PyValue.Compare(l, r) >= 0;
            case "in": return Contains(r, l);
            case "~": return Bounded(PyValue.Str(l), PyValue.Str(r));
            case "+":
                if (l is string ls && r is string rs)
                    return Bounded(ls, rs);
                if (l is IList<object?> ll && r is IList<object?> rl)
                    return ll.Concat(rl).ToList();
                return Arithmetic(l, r, (x, y) => x + y, (x, y) => x + y);
            case "-": return Arithmetic(l, r, (x, y) => x - y, (x, y) => x - y);
            case "*":
                if (l is string s && r is long n)
                    return string.Concat(Enumerable.Repeat(s, (int)Math.Clamp(n, 0, JinjaTemplate.MaxOutput / Math.Max(1, s.Length))));
                if (l is IList<object?> list && r is long times)
                    return Enumerable.Repeat(list, (int)Math.Clamp(times, 0, 1 << 16)).SelectMany(x => x).ToList();
                return Arithmetic(l, r, (x, y) => x * y, (x, y) => x * y);
            case "/": return PyValue.ToDouble(l) / PyValue.ToDouble(r);
            case "//":
                if (l is long a && r is long c)
                    return c == 0 ? throw new DivideByZeroException("integer division by zero") : (long)Math.Floor((double)a / c);
                return Math.Floor(PyValue.ToDouble(l) / PyValue.ToDouble(r));
            case "%":
                if (l is string format)
                    return PercentFormat(format, r);
                if (l is long m && r is long d)
                    return d == 0 ? throw new DivideByZeroException("modulo by zero") : ((m % d) + d) % d;
                return PyValue.ToDouble(l) % PyValue.ToDouble(r);
            case "**": return Arithmetic(l, r, (x, y) => (long)Math.Pow(x, y), Math.Pow);
            default: throw new InvalidOperationException($"unknown operator {b.Op}");
        }
    }

    /// <summary>A concatenation, refused beyond the output limit (a template doubling a string in a loop must not exhaust memory).</summary>
    private static string Bounded(string a, string b) => (long)a.Length + b.Length <= JinjaTemplate.MaxOutput ? a + b
        : throw new InvalidOperationException($"a string of more than {JinjaTemplate.MaxOutput} characters");

    private static object Arithmetic(object? l, object? r, Func<long, long, long> integer, Func<double, double, double> real)
    {
        if (l is (long or bool) && r is (long or bool))
            return integer(Interpreter.ToLong(l), Interpreter.ToLong(r));
        if (PyValue.IsNumber(l) && PyValue.IsNumber(r))
            return real(PyValue.ToDouble(l), PyValue.ToDouble(r));
        throw new InvalidOperationException($"unsupported operand types: {PyValue.TypeName(l)} and {PyValue.TypeName(r)}");
    }

    /// <summary>Python's <c>"…%s…" % value</c> for %s, %d, %r and %%.</summary>
    private static string PercentFormat(string format, object? args)
    {
        var values = args is IList<object?> l ? l : [args];
        var sb = new StringBuilder();
        int next = 0;
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 == format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            char d = format[++i];
            if (d == '%')
            {
                sb.Append('%');
                continue;
            }
            if (next >= values.Count)
                throw new InvalidOperationException("not enough arguments for format string");
            var v = values[next++];
            sb.Append(d switch { 'd' or 'i' => ToLong(v).ToString(CultureInfo.InvariantCulture), 'r' => PyValue.Repr(v), _ => PyValue.Str(v) });
        }
        return sb.ToString();
    }

    private static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal) : throw new InvalidOperationException($"'in <string>' needs a string, not {PyValue.TypeName(item)}"),
        IList<object?> l => l.Any(x => PyValue.Equal(x, item)),
        OrderedDictionary<string, object?> d => item is string k && d.ContainsKey(k),
        null or Undefined => false,
        _ => throw new InvalidOperationException($"{PyValue.TypeName(container)} has no 'in'"),
    };

    internal object? Invoke(object? callee, List<object?> args, Dictionary<string, object?> kwargs) => callee switch
    {
        JinjaFunction f => f(args, kwargs),
        Undefined u => throw new InvalidOperationException($"'{u.Name}' is undefined and cannot be called"),
        _ => throw new InvalidOperationException($"{PyValue.TypeName(callee)} is not callable"),
    };

    private static object? GetItem(object? target, object? key)
    {
        switch (target)
        {
            case OrderedDictionary<string, object?> d:
                return key is string k && d.TryGetValue(k, out var v) ? v : new Undefined(PyValue.Str(key));
            case IList<object?> l when key is long or bool:
            {
                long i = ToLong(key);
                if (i < 0)
                    i += l.Count;
                return i >= 0 && i < l.Count ? l[(int)i] : new Undefined($"[{key}]");
            }
            case string s when key is long or bool:
            {
                long i = ToLong(key);
                if (i < 0)
                    i += s.Length;
                return i >= 0 && i < s.Length ? s[(int)i].ToString() : new Undefined($"[{key}]");
            }
            case Namespace ns:
                return key is string nk && ns.Values.TryGetValue(nk, out var nv) ? nv : new Undefined(PyValue.Str(key));
            case Undefined u:
                throw new InvalidOperationException($"'{u.Name}' is undefined (indexed with {PyValue.Repr(key)})");
            case null:
                throw new InvalidOperationException($"None has no item {PyValue.Repr(key)}");
            default:
                return new Undefined(PyValue.Str(key));
        }
    }

    private static object? Slice(object? target, object? start, object? stop, object? step)
    {
        int length = target switch { string s => s.Length, IList<object?> l => l.Count, _ => throw new InvalidOperationException($"{PyValue.TypeName(target)} cannot be sliced") };
        long st = step is null or Undefined ? 1 : ToLong(step);
        if (st == 0)
            throw new InvalidOperationException("slice step cannot be zero");
        long Clamp(object? v, long fallback)
        {
            if (v is null or Undefined)
                return fallback;
            long i = ToLong(v);
            if (i < 0)
                i += length;
            return st > 0 ? Math.Clamp(i, 0, length) : Math.Clamp(i, -1, length - 1);
        }
        long from = Clamp(start, st > 0 ? 0 : length - 1), to = Clamp(stop, st > 0 ? length : -1);
        var indices = new List<int>();
        for (long i = from; st > 0 ? i < to : i > to; i += st)
            indices.Add((int)i);
        return target is string str ? string.Concat(indices.Select(i => str[i])) : indices.Select(i => ((IList<object?>)target!)[i]).ToList();
    }

    private object? GetAttribute(object? target, string name)
    {
        switch (target)
        {
            case OrderedDictionary<string, object?> d:
                if (d.TryGetValue(name, out var v))
                    return v;
                return (object?)DictMethod(d, name) ?? new Undefined(name);
            case Namespace ns:
                return ns.Values.TryGetValue(name, out var nv) ? nv : new Undefined(name);
            case string s:
                return (object?)StringMethod(s, name) ?? new Undefined(name);
            case IList<object?> l:
                return (object?)ListMethod(l, name) ?? new Undefined(name);
            case Undefined u:
                throw new InvalidOperationException($"'{u.Name}' is undefined (its attribute '{name}' was asked for)");
            case null:
                throw new InvalidOperationException($"None has no attribute '{name}'");
            default:
                return new Undefined(name);
        }
    }

    private static JinjaFunction? DictMethod(OrderedDictionary<string, object?> d, string name) => name switch
    {
        "items" => (_, _) => d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList(),
        "keys" => (_, _) => d.Keys.Cast<object?>().ToList(),
        "values" => (_, _) => d.Values.ToList(),
        "get" => (args, _) => args.Count > 0 && args[0] is string k && d.TryGetValue(k, out var v) ? v : args.Count > 1 ? args[1] : null,
        _ => null,
    };

    private static JinjaFunction? ListMethod(IList<object?> l, string name) => name switch
    {
        "index" => (args, _) => (long)l.ToList().FindIndex(x => PyValue.Equal(x, args[0])),
        "count" => (args, _) => (long)l.Count(x => PyValue.Equal(x, args[0])),
        _ => null,
    };

    private static JinjaFunction? StringMethod(string s, string name) => name switch
    {
        "strip" => (args, _) => args.Count > 0 && args[0] is string chars ? s.Trim(chars.ToCharArray()) : s.Trim(),
        "lstrip" => (args, _) => args.Count > 0 && args[0] is string chars ? s.TrimStart(chars.ToCharArray()) : s.TrimStart(),
        "rstrip" => (args, _) => args.Count > 0 && args[0] is string chars ? s.TrimEnd(chars.ToCharArray()) : s.TrimEnd(),
        "lower" => (_, _) => s.ToLowerInvariant(),
        "upper" => (_, _) => s.ToUpperInvariant(),
        "title" => (_, _) => Title(s),
        "capitalize" => (_, _) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(),
        "startswith" => (args, _) => Affix(args[0], p => s.StartsWith(p, StringComparison.Ordinal)),
        "endswith" => (args, _) => Affix(args[0], p => s.EndsWith(p, StringComparison.Ordinal)),
        "split" => (args, kwargs) => Split(s, args.Count > 0 ? args[0] : kwargs.GetValueOrDefault("sep"),
            args.Count > 1 ? ToLong(args[1]) : kwargs.TryGetValue("maxsplit", out var m) ? ToLong(m) : -1),
        "replace" => (args, _) => Replace(s, PyValue.Str(args[0]), PyValue.Str(args[1]), args.Count > 2 ? ToLong(args[2]) : -1),
        "find" => (args, _) => (long)s.IndexOf(PyValue.Str(args[0]), StringComparison.Ordinal),
        "count" => (args, _) => (long)CountOf(s, PyValue.Str(args[0])),
        "join" => (args, _) => string.Join(s, Iterate(args[0]).Select(PyValue.Str)),
        "isdigit" => (_, _) => s.Length > 0 && s.All(char.IsDigit),
        "isspace" => (_, _) => s.Length > 0 && s.All(char.IsWhiteSpace),
        _ => null,
    };

    private static bool Affix(object? prefixes, Func<string, bool> test) => prefixes switch
    {
        string p => test(p),
        IList<object?> list => list.Any(x => test(PyValue.Str(x))),
        _ => throw new InvalidOperationException("startswith/endswith need a string or a tuple of strings"),
    };

    private static List<object?> Split(string s, object? separator, long max)
    {
        if (separator is null or Undefined)
        {
            var words = s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (max >= 0 && words.Length > max + 1)
            {
                // the rest after max splits, leading whitespace removed
                int cut = 0;
                for (int w = 0; w < max; w++)
                {
                    cut = s.IndexOf(words[w], cut, StringComparison.Ordinal) + words[w].Length;
                }
                return [.. words.Take((int)max).Cast<object?>(), s[cut..].TrimStart()];
            }
            return [.. words.Cast<object?>()];
        }
        string sep = PyValue.Str(separator);
        if (sep.Length == 0)
            throw new InvalidOperationException("empty separator");
        var parts = max >= 0 ? s.Split(sep, (int)Math.Min(max + 1, int.MaxValue)) : s.Split(sep);
        return [.. parts.Cast<object?>()];
    }

    private static string Replace(string s, string old, string replacement, long count)
    {
        if (count < 0)
            return old.Length == 0 ? string.Join(replacement, s.Select(c => c.ToString()).Prepend("").Append("")) : s.Replace(old, replacement, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int at = 0;
        for (long n = 0; n < count && old.Length > 0; n++)
        {
            int i = s.IndexOf(old, at, StringComparison.Ordinal);
            if (i < 0)
                break;
            sb.Append(s, at, i - at).Append(replacement);
            at = i + old.Length;
        }
        return sb.Append(s, at, s.Length - at).ToString();
    }

    private static int CountOf(string s, string sub)
    {
        if (sub.Length == 0)
            return s.Length + 1;
        int n = 0;
        for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal))
            n++;
        return n;
    }

    private static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool start = true;
        foreach (char c in s)
        {
            sb.Append(start ? char.ToUpperInvariant(c) : char.ToLowerInvariant(c));
            start = !char.IsLetter(c);
        }
        return sb.ToString();
    }
}
