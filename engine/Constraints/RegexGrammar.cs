using System.Globalization;
using System.Text;

namespace Engine.Constraints;

/// <summary>
/// A regular expression as GBNF rules (the subset a grammar can express exactly): literals and escapes
/// (<c>\d \w \s \D \W \S \. \\</c> …), classes <c>[...]</c> with ranges and negation, <c>.</c>, groups
/// <c>(...)</c> and <c>(?:...)</c>, alternation, and <c>* + ? {m} {m,} {m,n}</c>. The pattern must match
/// the whole text (leading <c>^</c> and trailing <c>$</c> are accepted and ignored); backreferences and
/// lookaround are errors naming the position.
/// </summary>
public static class RegexGrammar
{
    /// <summary>GBNF for <paramref name="pattern"/> as a rule named <paramref name="name"/> (helper rules share its prefix).</summary>
    /// <exception cref="GrammarException">The pattern uses what a grammar cannot express, or does not parse.</exception>
    public static string ToGbnf(string pattern, string name = "root")
    {
        ArgumentNullException.ThrowIfNull(pattern);
        var p = new Parser(pattern);
        string body = p.Parse();
        return $"{name} ::= {body}\n";
    }

    private sealed class Parser(string pattern)
    {
        private int _pos, _depth;

        public string Parse()
        {
            if (_pos < pattern.Length && pattern[_pos] == '^')
                _pos++;
            string body = Alternation();
            if (_pos < pattern.Length && pattern[_pos] == '$')
                _pos++;
            if (_pos < pattern.Length)
                throw Error(pattern[_pos] == ')' ? "unbalanced ')'" : $"unexpected '{pattern[_pos]}'");
            return body;
        }

        private GrammarException Error(string message) => new($"regex /{pattern}/ at {_pos + 1}: {message}", 0, 0);

        private string Alternation()
        {
            var alternatives = new List<string> { Sequence() };
            while (_pos < pattern.Length && pattern[_pos] == '|')
            {
                _pos++;
                alternatives.Add(Sequence());
            }
            return alternatives.Count == 1 ? alternatives[0] : "(" + string.Join(" | ", alternatives) + ")";
        }

        private string Sequence()
        {
            var items = new List<string>();
            while (_pos < pattern.Length && pattern[_pos] is not ('|' or ')'))
            {
                if (pattern[_pos] == '$' && _pos == pattern.Length - 1)
                    break;
                string atom = Atom();
                items.Add(atom + Quantifier());
            }
            return items.Count == 0 ? "\"\"" : string.Join(" ", items);
        }

        private string Quantifier()
        {
            if (_pos >= pattern.Length)
                return "";
            char c = pattern[_pos];
            string q;
            if (c is '*' or '+' or '?')
            {
                _pos++;
                q = c.ToString();
            }
            else if (c == '{' && TryBraces(out q))
            {
            }
            else
                return "";
            if (_pos < pattern.Length && pattern[_pos] is '?' or '+')
                _pos++; // lazy and possessive forms match the same language
            return q;
        }

        private bool TryBraces(out string q)
        {
            q = "";
            int end = pattern.IndexOf('}', _pos);
            if (end < 0)
                return false;
            string inner = pattern[(_pos + 1)..end];
            var parts = inner.Split(',');
            if (parts.Length > 2 || parts.Any(part => part.Length > 0 && !part.All(char.IsAsciiDigit)) || parts[0].Length == 0 && parts.Length == 1)
                return false;
            q = "{" + inner + "}";
            _pos = end + 1;
            return true;
        }

        private string Atom()
        {
            char c = pattern[_pos];
            switch (c)
            {
                case '(':
                    if (++_depth > 256)
                        throw Error("groups nest more than 256 deep");
                    _pos++;
                    if (pattern.AsSpan(_pos).StartsWith("?:"))
                        _pos += 2;
                    else if (_pos < pattern.Length && pattern[_pos] == '?')
                        throw Error("lookaround and named groups cannot be expressed as a grammar");
                    string inner = Alternation();
                    if (_pos >= pattern.Length || pattern[_pos] != ')')
                        throw Error("missing ')'");
                    _pos++;
                    _depth--;
                    return "(" + inner + ")";
                case '[':
                    return Class();
                case '.':
                    _pos++;
                    return "[^\\n]";
                case '\\':
                    return Escape(inClass: false);
                case '*' or '+' or '?' or '{':
                    if (c == '{' && !TryBraces(out _))
                    {
                        _pos++;
                        return Literal('{');
                    }
                    throw Error($"'{c}' has nothing to repeat");
                default:
                    _pos++;
                    return Literal(c);
            }
        }

        private string Class()
        {
            int start = _pos++;
            var sb = new StringBuilder("[");
            if (_pos < pattern.Length && pattern[_pos] == '^')
            {
                sb.Append('^');
                _pos++;
            }
            bool first = true;
            while (_pos < pattern.Length && (pattern[_pos] != ']' || first))
            {
                first = false;
                if (pattern[_pos] == '\\')
                {
                    string e = Escape(inClass: true);
                    sb.Append(e.StartsWith('[') ? e[1..^1] : e);
                }
                else
                {
                    sb.Append(ClassChar(pattern[_pos]));
                    _pos++;
                }
            }
            if (_pos >= pattern.Length)
            {
                _pos = start;
                throw Error("unterminated character class");
            }
            _pos++;
            return sb.Append(']').ToString();
        }

        private static string ClassChar(char c) => c switch
        {
            '\\' => "\\\\",
            ']' => "\\]",
            '[' => "\\[",
            '"' => "\\\"",
            '\n' => "\\n",
            '\t' => "\\t",
            '\r' => "\\r",
            _ when c < 0x20 => $"\\x{(int)c:X2}",
            _ => c.ToString(),
        };

        private string Escape(bool inClass)
        {
            _pos++;
            if (_pos >= pattern.Length)
                throw Error("a backslash ends the pattern");
            char e = pattern[_pos++];
            string set = e switch
            {
                'd' => "[0-9]",
                'D' => "[^0-9]",
                'w' => "[a-zA-Z0-9_]",
                'W' => "[^a-zA-Z0-9_]",
                's' => "[ \\t\\n\\r\\x0B\\x0C]",
                'S' => "[^ \\t\\n\\r\\x0B\\x0C]",
                _ => "",
            };
            if (set.Length > 0)
            {
                if (inClass && set[1] == '^')
                    throw Error($"\\{e} inside a class cannot be expressed");
                return set;
            }
            char literal = e switch
            {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'f' => '\f',
                'v' => '\v',
                '0' => '\0',
                'x' => (char)Hex(2),
                'u' => (char)Hex(4),
                _ when char.IsAsciiDigit(e) => throw Error("backreferences cannot be expressed as a grammar"),
                _ when e is 'b' or 'B' => throw Error("word boundaries cannot be expressed as a grammar"),
                _ when char.IsAsciiLetter(e) => throw Error($"unknown escape \\{e}"),
                _ => e,
            };
            return inClass ? ClassChar(literal) : Literal(literal);
        }

        private int Hex(int digits)
        {
            if (_pos + digits > pattern.Length || !int.TryParse(pattern.AsSpan(_pos, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int v))
                throw Error($"expected {digits} hexadecimal digits");
            _pos += digits;
            return v;
        }

        private static string Literal(char c) => "\"" + c switch
        {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\t' => "\\t",
            '\r' => "\\r",
            _ when c < 0x20 => $"\\x{(int)c:X2}",
            _ => c.ToString(),
        } + "\"";
    }
}
