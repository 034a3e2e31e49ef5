using System.Globalization;
using System.Text;

namespace Engine.Constraints;

/// <summary>
/// A regular expression as GBNF rules (the subset a grammar can express exactly): literals and escapes
/// (<c>\d \w \s \D \W \S \. \\</c> …), classes <c>[...]</c> with ranges and negation, <c>.</c>, groups
/// <c>(...)</c> and <c>(?:...)</c>, alternation, and <c>* + ? {m} {m,} {m,n}</c>. The pattern must match
/// the whole text (<c>^</c> at the start and <c>$</c> at the end of an alternative are accepted and
/// ignored); anchors elsewhere, backreferences and lookaround are errors naming the position.
/// </summary>
/// <remarks>
/// Inside a JSON string (<c>jsonString</c>: a schema's <c>pattern</c>) the text is the string's JSON
/// form: a character the pattern matches that JSON must escape (<c>"</c>, <c>\</c>, controls) is
/// written escaped (<c>\"</c>, <c>\\</c>, <c>\n</c>, <c>\u0001</c>), never raw, so the string
/// stays valid JSON and its value matches the pattern.
/// </remarks>
public static class RegexGrammar
{
    /// <summary>GBNF for <paramref name="pattern"/> as a rule named <paramref name="name"/>.</summary>
    /// <param name="jsonString">The text is the inside of a JSON string (escapes as JSON writes them).</param>
    /// <exception cref="GrammarException">The pattern uses what a grammar cannot express, or does not parse.</exception>
    public static string ToGbnf(string pattern, string name = "root", bool jsonString = false)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        var p = new Parser(pattern, jsonString);
        string body = p.Parse();
        return $"{name} ::= {body}\n";
    }

    private sealed class Parser(string pattern, bool json)
    {
        private int _pos, _depth;

        public string Parse()
        {
            string body = Alternation();
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
            if (_pos < pattern.Length && pattern[_pos] == '^')
                _pos++; // the whole text is matched anyway
            while (_pos < pattern.Length && pattern[_pos] is not ('|' or ')'))
            {
                if (pattern[_pos] == '$')
                {
                    _pos++;
                    if (_pos < pattern.Length && pattern[_pos] is not ('|' or ')'))
                        throw Error("'$' before the end of an alternative cannot be expressed");
                    break;
                }
                if (pattern[_pos] == '^')
                    throw Error("'^' after the start of an alternative cannot be expressed");
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
                    return Set([('\n', '\n')], negated: true);
                case '\\':
                    var (ranges, negated, literal) = Escape(inClass: false);
                    return ranges is null ? Literal(literal) : Set(ranges, negated);
                case '*' or '+' or '?' or '{':
                    if (c == '{' && !TryBraces(out _))
                    {
                        _pos++;
                        return Literal('{');
                    }
                    throw Error($"'{c}' has nothing to repeat");
                default:
                    return Literal(Next());
            }
        }

        /// <summary>The code point at the cursor (a surrogate pair is one), moving past it.</summary>
        private int Next()
        {
            if (char.IsHighSurrogate(pattern[_pos]) && _pos + 1 < pattern.Length && char.IsLowSurrogate(pattern[_pos + 1]))
            {
                _pos += 2;
                return char.ConvertToUtf32(pattern[_pos - 2], pattern[_pos - 1]);
            }
            return pattern[_pos++];
        }

        private string Class()
        {
            int start = _pos++;
            bool negated = false;
            if (_pos < pattern.Length && pattern[_pos] == '^')
            {
                negated = true;
                _pos++;
            }
            var ranges = new List<(int Lo, int Hi)>();
            bool first = true;
            while (_pos < pattern.Length && (pattern[_pos] != ']' || first))
            {
                first = false;
                int lo;
                if (pattern[_pos] == '\\')
                {
                    var (set, setNegated, literal) = Escape(inClass: true);
                    if (set is not null)
                    {
                        if (setNegated)
                            throw Error("a negated class escape (\\D \\W \\S) inside a class cannot be expressed");
                        ranges.AddRange(set);
                        continue;
                    }
                    lo = literal;
                }
                else
                    lo = Next();
                // a range lo-hi (a '-' first, last or after a range is itself)
                if (_pos + 1 < pattern.Length && pattern[_pos] == '-' && pattern[_pos + 1] != ']')
                {
                    _pos++;
                    int hi;
                    if (pattern[_pos] == '\\')
                    {
                        var (set, _, literal) = Escape(inClass: true);
                        if (set is not null)
                            throw Error("a class escape cannot end a range");
                        hi = literal;
                    }
                    else
                        hi = Next();
                    if (hi < lo)
                        throw Error($"range {char.ConvertFromUtf32(lo)}-{char.ConvertFromUtf32(hi)} is reversed");
                    ranges.Add((lo, hi));
                }
                else
                    ranges.Add((lo, lo));
            }
            if (_pos >= pattern.Length)
            {
                _pos = start;
                throw Error("unterminated character class");
            }
            _pos++;
            return Set([.. ranges], negated);
        }

        /// <summary>Characters JSON writes escaped inside a string, and how.</summary>
        private static readonly (int Char, string Escaped)[] JsonEscapes = [('"', "\\\""), ('\\', "\\\\"), ('\n', "\\n"), ('\t', "\\t"), ('\r', "\\r")];

        /// <summary>A class as GBNF; inside a JSON string the characters JSON escapes become their escapes.</summary>
        private string Set((int Lo, int Hi)[] ranges, bool negated)
        {
            var set = new CharSet(ranges, negated);
            if (!json)
                return "[" + (negated ? "^" : "") + string.Concat(ranges.Select(r => r.Lo == r.Hi ? ClassChar(r.Lo) : ClassChar(r.Lo) + "-" + ClassChar(r.Hi))) + "]";
            // the raw characters: the class less what JSON escapes (controls, '"', '\\')
            var raw = CodePointRanges.Minus(set.Positive, [(0, 0x1F), ('"', '"'), ('\\', '\\')]);
            var alternatives = new List<string>();
            if (raw.Length > 0)
                alternatives.Add("[" + string.Concat(raw.Select(r => r.Lo == r.Hi ? ClassChar(r.Lo) : ClassChar(r.Lo) + "-" + ClassChar(r.Hi))) + "]");
            for (int c = 0; c < 0x20; c++)
            {
                if (set.Contains(c) && !JsonEscapes.Any(e => e.Char == c))
                    alternatives.Add($"\"\\\\u{c:x4}\"");
            }
            foreach (var (c, escaped) in JsonEscapes)
            {
                if (set.Contains(c))
                    alternatives.Add("\"" + escaped.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\""); // the escape's characters as a GBNF literal
            }
            if (alternatives.Count == 0)
                throw Error("a class that matches no character");
            return alternatives.Count == 1 ? alternatives[0] : "(" + string.Join(" | ", alternatives) + ")";
        }

        /// <summary>A character inside a GBNF class: the class's own syntax characters and the invisible ones escaped.</summary>
        private static string ClassChar(int c) => c switch
        {
            '\\' or ']' or '[' or '-' or '^' or '"' => "\\" + (char)c,
            _ when c < 0x20 || c == 0x7F => $"\\x{c:X2}",
            _ when c > 0xFFFF => $"\\U{c:X8}",
            _ => ((char)c).ToString(),
        };

        /// <summary>An escape: a class (<c>\d</c>, <c>\W</c> …) as ranges, or one character.</summary>
        private ((int Lo, int Hi)[]? Ranges, bool Negated, int Literal) Escape(bool inClass)
        {
            _pos++;
            if (_pos >= pattern.Length)
                throw Error("a backslash ends the pattern");
            char e = pattern[_pos++];
            (int, int)[] digits = [('0', '9')], word = [('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')], space = [(' ', ' '), ('\t', '\r')];
            switch (e)
            {
                case 'd': return (digits, false, 0);
                case 'D': return (digits, true, 0);
                case 'w': return (word, false, 0);
                case 'W': return (word, true, 0);
                case 's': return (space, false, 0);
                case 'S': return (space, true, 0);
            }
            int literal = e switch
            {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'f' => '\f',
                'v' => '\v',
                '0' => '\0',
                'x' => Hex(2),
                'u' => Hex(4),
                _ when char.IsAsciiDigit(e) => throw Error("backreferences cannot be expressed as a grammar"),
                _ when e is 'b' or 'B' && !inClass => throw Error("word boundaries cannot be expressed as a grammar"),
                'b' => '\b',
                _ when char.IsAsciiLetter(e) => throw Error($"unknown escape \\{e}"),
                _ => e,
            };
            return (null, false, literal);
        }

        private int Hex(int digits)
        {
            if (_pos + digits > pattern.Length || !int.TryParse(pattern.AsSpan(_pos, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int v))
                throw Error($"expected {digits} hexadecimal digits");
            _pos += digits;
            return v;
        }

        /// <summary>One character as a GBNF literal (inside a JSON string: as JSON writes it).</summary>
        private string Literal(int c)
        {
            if (json && (c < 0x20 || c is '"' or '\\'))
                return Set([(c, c)], negated: false);
            return "\"" + c switch
            {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\t' => "\\t",
                '\r' => "\\r",
                _ when c < 0x20 => $"\\x{c:X2}",
                _ => char.ConvertFromUtf32(c),
            } + "\"";
        }
    }
}
