using System.Globalization;
using System.Text;

namespace Engine.Chat.Jinja;

/// <summary>
/// A Jinja template (the language of Hugging Face chat templates), parsed once and rendered with a
/// context of variables. The subset chat templates use: <c>if/elif/else</c>, <c>for</c> with <c>loop.*</c>,
/// a filter and <c>else</c>, <c>break</c>/<c>continue</c>; <c>set</c> (with namespaces and blocks); macros and
/// <c>call</c>; expressions with Python's operators, filters and tests; string, list and dict methods;
/// whitespace control as transformers configures it (<c>trim_blocks</c>, <c>lstrip_blocks</c>). Errors —
/// parsing or rendering, <c>raise_exception</c> included — are <see cref="JinjaException"/>s that name the
/// template line. Rendering is bounded (output size and loop steps), so a hostile template cannot hang
/// or exhaust memory.
/// </summary>
public sealed class JinjaTemplate
{
    private readonly List<Node> _body;

    private JinjaTemplate(string source, List<Node> body)
    {
        Source = source;
        _body = body;
    }

    public string Source { get; }

    /// <summary>Most characters one rendering may produce, and most loop iterations and macro calls it may run.</summary>
    public const int MaxOutput = 16 << 20, MaxSteps = 10_000_000;

    /// <exception cref="JinjaException">The template does not parse; the message names the line.</exception>
    public static JinjaTemplate Parse(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        return new JinjaTemplate(source, new Parser(Lexer.Tokenize(source)).ParseTemplate());
    }

    /// <summary>Renders with <paramref name="variables"/> (.NET values are converted: JSON elements, lists, dictionaries).</summary>
    /// <exception cref="JinjaException">Rendering failed (an undefined value used, a type error, <c>raise_exception</c>).</exception>
    /// <param name="now">The time <c>strftime_now</c> reports (the current local time when null).</param>
    public string Render(IReadOnlyDictionary<string, object?> variables, DateTime? now = null)
    {
        var interpreter = new Interpreter(now ?? DateTime.Now);
        foreach (var (name, value) in variables)
            interpreter.Globals.Set(name, PyValue.From(value));
        var output = new StringBuilder();
        interpreter.Run(_body, interpreter.Globals, output);
        return output.ToString();
    }
}

/// <summary>Variables of one scope, looked up through the scopes around it.</summary>
internal sealed class Scope(Scope? parent)
{
    private readonly Dictionary<string, object?> _vars = new(StringComparer.Ordinal);

    public Scope? Parent { get; } = parent;

    public bool TryGet(string name, out object? value)
    {
        for (var s = this; s is not null; s = s.Parent)
        {
            if (s._vars.TryGetValue(name, out value))
                return true;
        }
        value = null;
        return false;
    }

    public void Set(string name, object? value) => _vars[name] = value;
}

internal sealed class BreakSignal : Exception;

internal sealed class ContinueSignal : Exception;

internal sealed partial class Interpreter
{
    public Scope Globals { get; } = new(null);

    private long _steps;

    public Interpreter(DateTime now)
    {
        Globals.Set("raise_exception", (JinjaFunction)((args, _) =>
            throw new TemplateRaised(args.Count > 0 ? PyValue.Str(args[0]) : "raise_exception was called")));
        Globals.Set("namespace", (JinjaFunction)((_, kwargs) =>
        {
            var ns = new Namespace();
            foreach (var (k, v) in kwargs)
                ns.Values[k] = v;
            return ns;
        }));
        Globals.Set("range", (JinjaFunction)((args, _) =>
        {
            long start = 0, stop, step = 1;
            if (args.Count == 1)
                stop = ToLong(args[0]);
            else
            {
                start = ToLong(args[0]);
                stop = ToLong(args[1]);
                if (args.Count > 2)
                    step = ToLong(args[2]);
            }
            if (step == 0)
                throw new InvalidOperationException("range() step must not be zero");
            var list = new List<object?>();
            for (long i = start; step > 0 ? i < stop : i > stop; i += step)
            {
                Step();
                list.Add(i);
            }
            return list;
        }));
        Globals.Set("strftime_now", (JinjaFunction)((args, _) => Strftime(now, args.Count > 0 ? PyValue.Str(args[0]) : "%Y-%m-%d")));
        Globals.Set("dict", (JinjaFunction)((_, kwargs) =>
        {
            var d = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
            foreach (var (k, v) in kwargs)
                d[k] = v;
            return d;
        }));
    }

    /// <summary>A <c>raise_exception</c> from the template itself.</summary>
    internal sealed class TemplateRaised(string message) : Exception(message);

    private void Step()
    {
        if (++_steps > JinjaTemplate.MaxSteps)
            throw new InvalidOperationException($"the template ran more than {JinjaTemplate.MaxSteps} steps");
    }

    public void Run(List<Node> nodes, Scope scope, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            try
            {
                Execute(node, scope, output);
            }
            catch (Exception e) when (e is not (JinjaException or BreakSignal or ContinueSignal))
            {
                throw new JinjaException(e is TemplateRaised ? $"the template raised an exception: {e.Message}" : e.Message, node.Line);
            }
            if (output.Length > JinjaTemplate.MaxOutput)
                throw new JinjaException($"the rendering exceeds {JinjaTemplate.MaxOutput} characters", node.Line);
        }
    }

    private void Execute(Node node, Scope scope, StringBuilder output)
    {
        switch (node)
        {
            case TextNode t:
                output.Append(t.Text);
                break;
            case OutputNode o:
                output.Append(PyValue.Str(Eval(o.Value, scope)));
                break;
            case IfNode n:
            {
                foreach (var (condition, body) in n.Branches)
                {
                    if (PyValue.Truthy(Eval(condition, scope)))
                    {
                        Run(body, scope, output);
                        return;
                    }
                }
                if (n.Else is not null)
                    Run(n.Else, scope, output);
                break;
            }
            case ForNode f:
                ExecuteFor(f, scope, output);
                break;
            case SetNode s:
            {
                object? value;
                if (s.Body is not null)
                {
                    var sb = new StringBuilder();
                    Run(s.Body, scope, sb);
                    value = sb.ToString();
                }
                else
                    value = Eval(s.Value!, scope);
                if (s.Targets.Count == 1)
                    Assign(s.Targets[0], value, scope);
                else
                {
                    var items = Iterate(value).ToList();
                    if (items.Count != s.Targets.Count)
                        throw new InvalidOperationException($"cannot unpack {items.Count} values into {s.Targets.Count} names");
                    for (int i = 0; i < items.Count; i++)
                        Assign(s.Targets[i], items[i], scope);
                }
                break;
            }
            case MacroNode m:
                scope.Set(m.Name, MakeMacro(m, scope));
                break;
            case CallBlockNode c:
            {
                var caller = (JinjaFunction)((_, _) =>
                {
                    var sb = new StringBuilder();
                    Run(c.Body, new Scope(scope), sb);
                    return sb.ToString();
                });
                if (c.Call is not CallExpr call)
                    throw new InvalidOperationException("{% call %} needs a macro call");
                var callee = Eval(call.Target, scope);
                var args = call.Args.Select(a => Eval(a, scope)).ToList();
                var kwargs = call.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, scope));
                kwargs["caller"] = caller;
                output.Append(PyValue.Str(Invoke(callee, args, kwargs)));
                break;
            }
            case BreakNode:
                throw new BreakSignal();
            case ContinueNode:
                throw new ContinueSignal();
            case ExprStatementNode e:
                Eval(e.Value, scope);
                break;
            default:
                throw new InvalidOperationException($"cannot run a {node.GetType().Name}");
        }
    }

    private void Assign(Expr target, object? value, Scope scope)
    {
        switch (target)
        {
            case NameExpr n:
                scope.Set(n.Name, value);
                break;
            case AttributeExpr { Target: var owner } a when Eval(owner, scope) is Namespace ns:
                ns.Values[a.Name] = value;
                break;
            default:
                throw new InvalidOperationException("only names and namespace attributes can be assigned");
        }
    }

    /// <summary>Macro calls in progress: a macro that calls itself without end must fail, not overflow the stack.</summary>
    private int _macroDepth;

    /// <summary>Deepest macro recursion allowed (templates that recurse, e.g. over nested JSON schemas, stay within a few levels).</summary>
    public const int MaxMacroDepth = 50;

    private JinjaFunction MakeMacro(MacroNode m, Scope definedIn) => (args, kwargs) =>
    {
        Step();
        if (_macroDepth >= MaxMacroDepth)
            throw new InvalidOperationException($"macro '{m.Name}' calls nest deeper than {MaxMacroDepth} (endless recursion?)");
        _macroDepth++;
        try
        {
            return CallMacro(m, definedIn, args, kwargs);
        }
        finally
        {
            _macroDepth--;
        }
    };

    private string CallMacro(MacroNode m, Scope definedIn, List<object?> args, Dictionary<string, object?> kwargs)
    {
        var scope = new Scope(definedIn);
        for (int i = 0; i < m.Parameters.Count; i++)
        {
            var (name, fallback) = m.Parameters[i];
            object? value = i < args.Count ? args[i]
                : kwargs.TryGetValue(name, out var kw) ? kw
                : fallback is not null ? Eval(fallback, scope) : new Undefined(name);
            scope.Set(name, value);
        }
        if (kwargs.TryGetValue("caller", out var caller))
            scope.Set("caller", caller);
        var sb = new StringBuilder();
        Run(m.Body, scope, sb);
        return sb.ToString();
    }

    private void ExecuteFor(ForNode f, Scope scope, StringBuilder output)
    {
        var source = Eval(f.Iterable, scope);
        var items = new List<object?>();
        foreach (var item in Iterate(source is OrderedDictionary<string, object?> d ? d.Keys.Cast<object?>().ToList() : source))
        {
            Step();
            if (f.Filter is not null)
            {
                var probe = new Scope(scope);
                Bind(f.Targets, item, probe);
                if (!PyValue.Truthy(Eval(f.Filter, probe)))
                    continue;
            }
            items.Add(item);
        }
        if (items.Count == 0)
        {
            if (f.Else is not null)
                Run(f.Else, scope, output);
            return;
        }
        for (int i = 0; i < items.Count; i++)
        {
            Step();
            var body = new Scope(scope);
            Bind(f.Targets, items[i], body);
            var loop = new OrderedDictionary<string, object?>(StringComparer.Ordinal)
            {
                ["index"] = (long)(i + 1),
                ["index0"] = (long)i,
                ["revindex"] = (long)(items.Count - i),
                ["revindex0"] = (long)(items.Count - i - 1),
                ["first"] = i == 0,
                ["last"] = i == items.Count - 1,
                ["length"] = (long)items.Count,
                ["previtem"] = i > 0 ? items[i - 1] : new Undefined("loop.previtem"),
                ["nextitem"] = i + 1 < items.Count ? items[i + 1] : new Undefined("loop.nextitem"),
            };
            loop["cycle"] = (JinjaFunction)((args, _) => args.Count == 0 ? null : args[i % args.Count]);
            body.Set("loop", loop);
            try
            {
                Run(f.Body, body, output);
            }
            catch (BreakSignal)
            {
                break;
            }
            catch (ContinueSignal)
            {
            }
        }
    }

    private static void Bind(List<string> targets, object? item, Scope scope)
    {
        if (targets.Count == 1)
        {
            scope.Set(targets[0], item);
            return;
        }
        var parts = Iterate(item).ToList();
        if (parts.Count != targets.Count)
            throw new InvalidOperationException($"cannot unpack {parts.Count} values into {targets.Count} loop variables");
        for (int i = 0; i < targets.Count; i++)
            scope.Set(targets[i], parts[i]);
    }

    /// <summary>The items of a list, the characters of a string, the keys of a dict; nothing for undefined or None.</summary>
    internal static IEnumerable<object?> Iterate(object? v) => v switch
    {
        null or Undefined => [],
        IList<object?> l => l,
        string s => s.Select(c => (object?)c.ToString()),
        OrderedDictionary<string, object?> d => d.Keys.Cast<object?>(),
        _ => throw new InvalidOperationException($"{PyValue.TypeName(v)} is not iterable"),
    };

    internal static long ToLong(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        double d => (long)d,
        string s when long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out long p) => p,
        _ => throw new InvalidOperationException($"{PyValue.Repr(v)} is not an integer"),
    };

    /// <summary>Python's strftime for the directives chat templates use.</summary>
    internal static string Strftime(DateTime t, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 == format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            char d = format[++i];
            sb.Append(d switch
            {
                'Y' => t.Year.ToString("0000", CultureInfo.InvariantCulture),
                'y' => (t.Year % 100).ToString("00", CultureInfo.InvariantCulture),
                'm' => t.Month.ToString("00", CultureInfo.InvariantCulture),
                'd' => t.Day.ToString("00", CultureInfo.InvariantCulture),
                '-' when i + 1 < format.Length && format[i + 1] == 'd' => (++i > 0 ? t.Day.ToString(CultureInfo.InvariantCulture) : ""),
                'H' => t.Hour.ToString("00", CultureInfo.InvariantCulture),
                'M' => t.Minute.ToString("00", CultureInfo.InvariantCulture),
                'S' => t.Second.ToString("00", CultureInfo.InvariantCulture),
                'B' => CultureInfo.InvariantCulture.DateTimeFormat.GetMonthName(t.Month),
                'b' => CultureInfo.InvariantCulture.DateTimeFormat.GetAbbreviatedMonthName(t.Month),
                'A' => CultureInfo.InvariantCulture.DateTimeFormat.GetDayName(t.DayOfWeek),
                'a' => CultureInfo.InvariantCulture.DateTimeFormat.GetAbbreviatedDayName(t.DayOfWeek),
                'j' => t.DayOfYear.ToString("000", CultureInfo.InvariantCulture),
                '%' => "%",
                _ => "%" + d,
            });
        }
        return sb.ToString();
    }
}
