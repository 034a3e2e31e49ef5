using System.Globalization;
using System.Text;

namespace Engine.Constraints;

/// <summary>A grammar that cannot be used: where (line and column, from 1) and why.</summary>
public sealed class GrammarException(string message, int line, int column) : FormatException(line > 0 ? $"grammar line {line}, column {column}: {message}" : $"grammar: {message}")
{
    public int Line { get; } = line;

    public int Column { get; } = column;
}

/// <summary>
/// The GBNF parser (llama.cpp's grammar format): <c>name ::= alternatives</c> rules, <c>|</c>, groups,
/// <c>? * +</c> and <c>{m}</c>, <c>{m,}</c>, <c>{m,n}</c>, <c>{,n}</c> repetition, string literals and
/// character classes (ranges, <c>[^...]</c>) with <c>\n \t \r \\ \" \xHH \uHHHH \UHHHHHHHH</c> escapes,
/// <c>.</c> (any character), and <c>#</c> comments. A rule ends at the end of its line unless inside
/// parentheses or after <c>|</c>. Errors give the line and column; references to undefined rules and
/// left recursion (which the matcher cannot run) are found before any decoding.
/// </summary>
public sealed class Gbnf
{
    private readonly string _text;
    private int _pos;
    private readonly List<GrammarRule> _rules = [];
    private readonly Dictionary<string, int> _index = new(StringComparer.Ordinal);
    private readonly HashSet<int> _defined = [];
    private readonly Dictionary<int, int> _firstReference = [];
    private readonly Dictionary<int, int> _definedAt = [];

    private Gbnf(string text) => _text = text;

    /// <summary>Limits on what one grammar may hold (requests reach this parser): text, group nesting, elements.</summary>
    private const int MaxText = 1 << 20, MaxNesting = 256, MaxElements = 1 << 20;

    private int _nesting, _elements;

    /// <summary>Parses GBNF text; generation starts from the rule named <paramref name="root"/>.</summary>
    /// <exception cref="GrammarException">The text does not parse, a rule is undefined or left-recursive, or there is no root.</exception>
    /// <remarks>The same text compiles to the same object (a bounded cache), so its masks are shared.</remarks>
    /// <param name="cache">False: a new object with caches of its own (what a measurement of cold masks needs).</param>
    public static Grammar Parse(string text, string root = "root", bool cache = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(root);
        Grammar Compile()
        {
            var parser = new Gbnf(text);
            parser.ParseRules();
            return parser.Build(root);
        }
        return cache ? GrammarCache.Get("gbnf:" + root + "\n" + text, Compile) : Compile();
    }

    private void ParseRules()
    {
        if (_text.Length > MaxText)
            throw new GrammarException($"the grammar is {_text.Length} characters long; at most {MaxText}", 0, 0);
        SkipSpace(newlines: true);
        while (_pos < _text.Length)
        {
            int start = _pos;
            string name = ParseName();
            int rule = RuleIndex(name);
            if (!_defined.Add(rule))
                throw Error($"rule '{name}' is defined twice", start);
            _definedAt[rule] = start;
            SkipSpace(newlines: false);
            if (!_text.AsSpan(_pos).StartsWith("::="))
                throw Error($"expected '::=' after the rule name '{name}'", _pos);
            _pos += 3;
            SkipSpace(newlines: true);
            ParseAlternatives(rule, nested: false);
            if (_pos < _text.Length && _text[_pos] is not ('\n' or '\r'))
                throw Error($"unexpected '{_text[_pos]}' in rule '{name}'", _pos);
            SkipSpace(newlines: true);
        }
    }

    private int RuleIndex(string name)
    {
        if (!_index.TryGetValue(name, out int i))
        {
            i = _rules.Count;
            _rules.Add(new GrammarRule(name));
            _index[name] = i;
        }
        return i;
    }

    private int NewRule(int parent)
    {
        string baseName = _rules[parent].Name;
        int n = _rules.Count;
        string name;
        do
            name = $"{baseName}~{n++}"; // '~' is no name character: never a rule defined further down
        while (_index.ContainsKey(name));
        int i = RuleIndex(name);
        _defined.Add(i);
        return i;
    }

    private void ParseAlternatives(int rule, bool nested)
    {
        _rules[rule].Alternatives.Add(ParseSequence(rule, nested));
        while (_pos < _text.Length && _text[_pos] == '|')
        {
            _pos++;
            SkipSpace(newlines: true);
            _rules[rule].Alternatives.Add(ParseSequence(rule, nested));
        }
    }

    private GrammarElement[] ParseSequence(int rule, bool nested)
    {
        var items = new List<GrammarElement>();
        while (_pos < _text.Length)
        {
            char c = _text[_pos];
            int itemStart = items.Count;
            if (c == '"')
            {
                _pos++;
                while (true)
                {
                    if (_pos >= _text.Length || _text[_pos] is '\n' or '\r')
                        throw Error("unterminated string literal", _pos);
                    if (_text[_pos] == '"')
                        break;
                    int cp = ParseChar();
                    items.Add(GrammarElement.Of(new CharSet([(cp, cp)], negated: false)));
                }
                _pos++;
            }
            else if (c == '[')
                items.Add(GrammarElement.Of(ParseClass()));
            else if (c == '.')
            {
                _pos++;
                items.Add(GrammarElement.Of(new CharSet([], negated: true)));
            }
            else if (IsNameChar(c))
            {
                int at = _pos;
                int referenced = RuleIndex(ParseName());
                _firstReference.TryAdd(referenced, at);
                items.Add(GrammarElement.Ref(referenced));
            }
            else if (c == '(')
            {
                if (++_nesting > MaxNesting)
                    throw Error($"groups nest more than {MaxNesting} deep", _pos);
                _pos++;
                SkipSpace(newlines: true);
                int group = NewRule(rule);
                ParseAlternatives(group, nested: true);
                if (_pos >= _text.Length || _text[_pos] != ')')
                    throw Error("expected ')' to close the group", _pos);
                _pos++;
                _nesting--;
                items.Add(GrammarElement.Ref(group));
            }
            else
                break; // '|', ')', a newline, or something the caller reports
            SkipSpace(nested);
            if (_pos < _text.Length && _text[_pos] is '*' or '+' or '?' or '{')
            {
                var (min, max) = ParseRepetition();
                // the repeated item: one element, or a literal of several characters made a rule of its own
                GrammarElement item;
                if (items.Count - itemStart == 1)
                    item = items[^1];
                else
                {
                    int literal = NewRule(rule);
                    _rules[literal].Alternatives.Add(items.GetRange(itemStart, items.Count - itemStart).ToArray());
                    item = GrammarElement.Ref(literal);
                }
                items.RemoveRange(itemStart, items.Count - itemStart);
                Repeat(rule, item, min, max, items);
                SkipSpace(nested);
            }
        }
        return items.ToArray();
    }

    /// <summary>item{min,max} (max −1: unbounded) as elements and helper rules, right-recursive so that a matcher's stack does not grow.</summary>
    private void Repeat(int rule, GrammarElement item, int min, int max, List<GrammarElement> into)
    {
        _elements += Math.Max(min, max) + 1;
        if (_elements > MaxElements)
            throw Error($"the repetitions expand to more than {MaxElements} elements", _pos);
        for (int i = 0; i < min; i++)
            into.Add(item);
        if (max < 0)
        {
            int star = NewRule(rule); // star ::= item star | ε
            _rules[star].Alternatives.Add([item, GrammarElement.Ref(star)]);
            _rules[star].Alternatives.Add([]);
            into.Add(GrammarElement.Ref(star));
            return;
        }
        // (item (item (...)?)?)?: each optional level a rule
        int? inner = null;
        for (int i = min; i < max; i++)
        {
            int level = NewRule(rule);
            _rules[level].Alternatives.Add(inner is int r ? [item, GrammarElement.Ref(r)] : [item]);
            _rules[level].Alternatives.Add([]);
            inner = level;
        }
        if (inner is int top)
            into.Add(GrammarElement.Ref(top));
    }

    private (int Min, int Max) ParseRepetition()
    {
        int start = _pos;
        char c = _text[_pos++];
        if (c == '*')
            return (0, -1);
        if (c == '+')
            return (1, -1);
        if (c == '?')
            return (0, 1);
        SkipSpace(newlines: false);
        int min = ParseInt(allowEmpty: true) ?? 0, max;
        SkipSpace(newlines: false);
        if (_pos < _text.Length && _text[_pos] == ',')
        {
            _pos++;
            SkipSpace(newlines: false);
            max = ParseInt(allowEmpty: true) ?? -1;
            SkipSpace(newlines: false);
        }
        else
            max = min;
        if (_pos >= _text.Length || _text[_pos] != '}')
            throw Error("expected '}' to close the repetition", _pos);
        _pos++;
        if (max >= 0 && max < min)
            throw Error($"repetition {{{min},{max}}}: the maximum is below the minimum", start);
        if (min > 10_000 || max > 10_000)
            throw Error("repetition counts above 10000 are not supported", start);
        return (min, max);
    }

    private int? ParseInt(bool allowEmpty)
    {
        int start = _pos;
        while (_pos < _text.Length && char.IsAsciiDigit(_text[_pos]))
            _pos++;
        if (_pos == start)
            return allowEmpty ? null : throw Error("expected a number", _pos);
        return int.TryParse(_text.AsSpan(start, _pos - start), NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v : throw Error("number too large", start);
    }

    private CharSet ParseClass()
    {
        _pos++; // [
        bool negated = _pos < _text.Length && _text[_pos] == '^';
        if (negated)
            _pos++;
        var ranges = new List<(int, int)>();
        while (true)
        {
            if (_pos >= _text.Length || _text[_pos] is '\n' or '\r')
                throw Error("unterminated character class", _pos);
            if (_text[_pos] == ']')
                break;
            int start = _pos;
            int lo = ParseChar(), hi = lo;
            if (_pos + 1 < _text.Length && _text[_pos] == '-' && _text[_pos + 1] != ']')
            {
                _pos++;
                hi = ParseChar();
                if (hi < lo)
                    throw Error($"character range {Describe(lo)}-{Describe(hi)} is reversed", start);
            }
            ranges.Add((lo, hi));
        }
        _pos++;
        return new CharSet([.. ranges], negated);
    }

    private static string Describe(int cp) => cp is >= 0x20 and < 0x7F ? ((char)cp).ToString() : $"U+{cp:X4}";

    /// <summary>One character of a literal or class, escapes decoded, surrogate pairs joined.</summary>
    private int ParseChar()
    {
        int start = _pos;
        char c = _text[_pos++];
        if (c != '\\')
        {
            if (char.IsHighSurrogate(c) && _pos < _text.Length && char.IsLowSurrogate(_text[_pos]))
                return char.ConvertToUtf32(c, _text[_pos++]);
            return c;
        }
        if (_pos >= _text.Length)
            throw Error("a backslash ends the text", start);
        char e = _text[_pos++];
        switch (e)
        {
            case 'n': return '\n';
            case 't': return '\t';
            case 'r': return '\r';
            case '\\': return '\\';
            case '"': return '"';
            case '[': return '[';
            case ']': return ']';
            case '-': return '-';
            case '^': return '^';
            case 'x': return Hex(2, start);
            case 'u': return Hex(4, start);
            case 'U': return Hex(8, start);
            default: throw Error($"unknown escape '\\{e}'", start);
        }
    }

    private int Hex(int digits, int start)
    {
        if (_pos + digits > _text.Length || !int.TryParse(_text.AsSpan(_pos, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int v))
            throw Error($"expected {digits} hexadecimal digits in the escape", start);
        _pos += digits;
        if (v > 0x10FFFF)
            throw Error($"code point U+{v:X} is beyond Unicode", start);
        return v;
    }

    private static bool IsNameChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '-' or '_';

    private string ParseName()
    {
        int start = _pos;
        while (_pos < _text.Length && IsNameChar(_text[_pos]))
            _pos++;
        if (_pos == start)
            throw Error(_pos < _text.Length ? $"expected a rule name, found '{_text[_pos]}'" : "expected a rule name", _pos);
        return _text[start.._pos];
    }

    /// <summary>Spaces, tabs and comments; newlines too where allowed (inside groups, after '::=' and '|').</summary>
    private void SkipSpace(bool newlines)
    {
        while (_pos < _text.Length)
        {
            char c = _text[_pos];
            if (c is ' ' or '\t')
                _pos++;
            else if (c == '#')
            {
                while (_pos < _text.Length && _text[_pos] is not ('\n' or '\r'))
                    _pos++;
            }
            else if (newlines && c is '\n' or '\r')
                _pos++;
            else
                break;
        }
    }

    private GrammarException Error(string message, int at)
    {
        int line = 1, column = 1;
        for (int i = 0; i < Math.Min(at, _text.Length); i++)
        {
            if (_text[i] == '\n')
                (line, column) = (line + 1, 1);
            else
                column++;
        }
        return new GrammarException(message, line, column);
    }

    private Grammar Build(string root)
    {
        for (int r = 0; r < _rules.Count; r++)
        {
            if (!_defined.Contains(r))
                throw Error($"rule '{_rules[r].Name}' is used but never defined", _firstReference.GetValueOrDefault(r));
        }
        if (!_index.TryGetValue(root, out int rootIndex))
            throw new GrammarException($"there is no rule '{root}' to start from", 0, 0);
        CheckLeftRecursion();
        return new Grammar(_rules, rootIndex, _text);
    }

    /// <summary>
    /// A rule that can reach itself before consuming a character (directly, or through rules that can
    /// match nothing) would make the matcher loop: rejected, naming the rule.
    /// </summary>
    private void CheckLeftRecursion()
    {
        var nullable = new bool[_rules.Count];
        for (bool changed = true; changed;)
        {
            changed = false;
            for (int r = 0; r < _rules.Count; r++)
            {
                if (!nullable[r] && _rules[r].Alternatives.Any(alt => alt.All(e => e.IsRule && nullable[e.Rule])))
                    changed = nullable[r] = true;
            }
        }
        var state = new byte[_rules.Count]; // 0 unvisited, 1 on the path, 2 done
        void Visit(int r, List<int> path)
        {
            state[r] = 1;
            path.Add(r);
            foreach (var alt in _rules[r].Alternatives)
            {
                foreach (var e in alt)
                {
                    if (!e.IsRule)
                        break;
                    if (state[e.Rule] == 1)
                    {
                        var cycle = path.Skip(path.IndexOf(e.Rule)).Select(i => _rules[i].Name).Append(_rules[e.Rule].Name);
                        int at = _definedAt.TryGetValue(e.Rule, out int d) ? d : _firstReference.GetValueOrDefault(e.Rule);
                        throw Error($"rule '{_rules[e.Rule].Name}' is left-recursive ({string.Join(" → ", cycle)}) — rewrite it with repetition", at);
                    }
                    if (state[e.Rule] == 0)
                        Visit(e.Rule, path);
                    if (!nullable[e.Rule])
                        break;
                }
            }
            path.RemoveAt(path.Count - 1);
            state[r] = 2;
        }
        for (int r = 0; r < _rules.Count; r++)
        {
            if (state[r] == 0)
                Visit(r, []);
        }
    }

    /// <summary>The grammar written back as GBNF (generated rules included): for error messages and tests.</summary>
    public static string Format(Grammar grammar)
    {
        var sb = new StringBuilder();
        foreach (var rule in grammar.Rules)
        {
            sb.Append(rule.Name).Append(" ::= ");
            sb.Append(string.Join(" | ", rule.Alternatives.Select(alt => string.Join(' ', alt.Select(e => e.IsRule ? grammar.Rules[e.Rule].Name
                : $"[{(e.Chars!.Negated ? "^" : "")}{string.Concat(e.Chars.Ranges.Select(r => r.Lo == r.Hi ? Esc(r.Lo) : Esc(r.Lo) + "-" + Esc(r.Hi)))}]")))));
            sb.Append('\n');
        }
        return sb.ToString();

        static string Esc(int cp) => cp is >= 0x20 and < 0x7F and not ('\\' or ']' or '-' or '^') ? ((char)cp).ToString() : $"\\U{cp:X8}";
    }
}
