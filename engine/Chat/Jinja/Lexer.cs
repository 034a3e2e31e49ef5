using System.Globalization;
using System.Text;

namespace Engine.Chat.Jinja;

/// <summary>A template that cannot be parsed or rendered: the message names the template line.</summary>
public sealed class JinjaException(string message, int line) : Exception($"line {line}: {message}")
{
    /// <summary>The template line (1-based) where the problem is.</summary>
    public int Line { get; } = line;
}

internal enum TokenType { Text, ExpressionStart, StatementStart, End, Name, String, Integer, Float, Operator, Eof }

internal readonly record struct Token(TokenType Type, string Text, int Line, object? Value = null);

/// <summary>
/// Splits a template into text and tag tokens with Jinja's whitespace control, configured as Hugging Face
/// transformers renders chat templates: <c>trim_blocks</c> (the newline after a block or comment tag is
/// dropped) and <c>lstrip_blocks</c> (spaces and tabs before a block or comment tag at the start of a line
/// are dropped), and <c>-</c> on a tag side stripping all whitespace there (<c>+</c> keeps it).
/// </summary>
internal static class Lexer
{
    public static List<Token> Tokenize(string source)
    {
        var tokens = new List<Token>();
        int i = 0, line = 1;
        bool stripNextText = false, trimNextNewline = false;
        var text = new StringBuilder();
        while (i < source.Length)
        {
            int open = FindTag(source, i);
            string chunk = open < 0 ? source[i..] : source[i..open];
            if (trimNextNewline && !stripNextText)
            {
                if (chunk.StartsWith("\r\n", StringComparison.Ordinal))
                    chunk = chunk[2..];
                else if (chunk.StartsWith('\n'))
                    chunk = chunk[1..];
            }
            if (stripNextText)
                chunk = chunk.TrimStart();
            int chunkLine = line;
            line += Count(source.AsSpan(i, (open < 0 ? source.Length : open) - i), '\n');
            if (open < 0)
            {
                if (chunk.Length > 0)
                    tokens.Add(new Token(TokenType.Text, chunk, chunkLine));
                break;
            }
            char kind = source[open + 1];
            bool minusLeft = open + 2 < source.Length && source[open + 2] == '-';
            bool plusLeft = open + 2 < source.Length && source[open + 2] == '+';
            if (minusLeft)
                chunk = chunk.TrimEnd();
            else if (kind != '{' && !plusLeft)
            {
                // lstrip_blocks: a block or comment tag with only spaces or tabs before it on its line
                int j = open - 1;
                while (j >= 0 && source[j] is ' ' or '\t')
                    j--;
                if (j < 0 || source[j] == '\n')
                    chunk = chunk.TrimEnd(' ', '\t');
            }
            if (chunk.Length > 0)
                tokens.Add(new Token(TokenType.Text, chunk, chunkLine));
            int start = open + 2 + (minusLeft || plusLeft ? 1 : 0);
            if (kind == '#')
            {
                int close = source.IndexOf("#}", start, StringComparison.Ordinal);
                if (close < 0)
                    throw new JinjaException("a comment is not closed with #}", line);
                bool minusRight = close > start && source[close - 1] == '-';
                line += Count(source.AsSpan(open, close + 2 - open), '\n');
                i = close + 2;
                stripNextText = minusRight;
                trimNextNewline = true;
                continue;
            }
            string closer = kind == '{' ? "}}" : "%}";
            int end = FindClose(source, start, closer, line);
            // a '-' or '+' just inside the closer trims (not the opener's own: "{{-}}" has none)
            bool minusRightTag = end > start && source[end - 1] == '-', plusRight = end > start && source[end - 1] == '+';
            string inside = source[start..(minusRightTag || plusRight ? end - 1 : end)];
            tokens.Add(new Token(kind == '{' ? TokenType.ExpressionStart : TokenType.StatementStart, "", line));
            if (kind == '%' && inside.Trim() == "raw")
            {
                // {% raw %}…{% endraw %}: the text between, untouched
                int endRaw = FindEndRaw(source, end + 2, out int rawCloseEnd, line);
                tokens.RemoveAt(tokens.Count - 1);
                string raw = source[(end + 2)..endRaw];
                tokens.Add(new Token(TokenType.Text, raw, line));
                line += Count(source.AsSpan(open, rawCloseEnd - open), '\n');
                i = rawCloseEnd;
                stripNextText = false;
                trimNextNewline = true;
                continue;
            }
            TokenizeExpression(inside, line, tokens);
            tokens.Add(new Token(TokenType.End, "", line));
            line += Count(source.AsSpan(open, end + 2 - open), '\n');
            i = end + 2;
            stripNextText = minusRightTag;
            trimNextNewline = kind == '%' && !plusRight;
        }
        tokens.Add(new Token(TokenType.Eof, "", line));
        return tokens;
    }

    private static int Count(ReadOnlySpan<char> s, char c)
    {
        int n = 0;
        foreach (char x in s)
        {
            if (x == c)
                n++;
        }
        return n;
    }

    private static int FindTag(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
        {
            if (s[i + 1] is '{' or '%' or '#')
                return i;
        }
        return -1;
    }

    /// <summary>The closing delimiter of a tag, skipping string literals inside it.</summary>
    private static int FindClose(string s, int from, string closer, int line)
    {
        char quote = '\0';
        for (int i = from; i + 1 < s.Length; i++)
        {
            char c = s[i];
            if (quote != '\0')
            {
                if (c == '\\')
                    i++;
                else if (c == quote)
                    quote = '\0';
                continue;
            }
            if (c is '"' or '\'')
                quote = c;
            else if (c == closer[0] && s[i + 1] == closer[1])
                return i;
        }
        throw new JinjaException($"a tag is not closed with {closer}", line);
    }

    private static int FindEndRaw(string s, int from, out int closeEnd, int line)
    {
        for (int i = s.IndexOf("{%", from, StringComparison.Ordinal); i >= 0; i = s.IndexOf("{%", i + 2, StringComparison.Ordinal))
        {
            int close = s.IndexOf("%}", i, StringComparison.Ordinal);
            if (close < 0)
                break;
            if (s[(i + 2)..close].Trim('-', '+', ' ', '\t', '\n', '\r') == "endraw")
            {
                closeEnd = close + 2;
                return i;
            }
        }
        throw new JinjaException("{% raw %} without {% endraw %}", line);
    }

    private static readonly string[] Operators = ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ".", ",", ":", "|"];

    private static void TokenizeExpression(string s, int line, List<Token> tokens)
    {
        int i = 0;
        while (i < s.Length)
        {
            char c = s[i];
            if (c == '\n')
            {
                line++;
                i++;
                continue;
            }
            if (char.IsWhiteSpace(c))
            {
                i++;
                continue;
            }
            if (char.IsLetter(c) || c == '_')
            {
                int start = i;
                while (i < s.Length && (char.IsLetterOrDigit(s[i]) || s[i] == '_'))
                    i++;
                tokens.Add(new Token(TokenType.Name, s[start..i], line));
                continue;
            }
            if (char.IsDigit(c))
            {
                int start = i;
                while (i < s.Length && (char.IsDigit(s[i]) || s[i] == '_'))
                    i++;
                bool isFloat = false;
                if (i + 1 < s.Length && s[i] == '.' && char.IsDigit(s[i + 1]))
                {
                    isFloat = true;
                    i++;
                    while (i < s.Length && char.IsDigit(s[i]))
                        i++;
                }
                if (i < s.Length && s[i] is 'e' or 'E')
                {
                    int save = i;
                    i++;
                    if (i < s.Length && s[i] is '+' or '-')
                        i++;
                    if (i < s.Length && char.IsDigit(s[i]))
                    {
                        isFloat = true;
                        while (i < s.Length && char.IsDigit(s[i]))
                            i++;
                    }
                    else
                        i = save;
                }
                string number = s[start..i].Replace("_", "", StringComparison.Ordinal);
                tokens.Add(isFloat
                    ? new Token(TokenType.Float, number, line, double.Parse(number, CultureInfo.InvariantCulture))
                    : new Token(TokenType.Integer, number, line, long.Parse(number, CultureInfo.InvariantCulture)));
                continue;
            }
            if (c is '"' or '\'')
            {
                var sb = new StringBuilder();
                i++;
                while (true)
                {
                    if (i >= s.Length)
                        throw new JinjaException("a string is not closed", line);
                    char d = s[i++];
                    if (d == c)
                        break;
                    if (d == '\\' && i < s.Length)
                    {
                        char e = s[i++];
                        switch (e)
                        {
                            case 'n': sb.Append('\n'); break;
                            case 't': sb.Append('\t'); break;
                            case 'r': sb.Append('\r'); break;
                            case '\\': sb.Append('\\'); break;
                            case '\'': sb.Append('\''); break;
                            case '"': sb.Append('"'); break;
                            case '\n':
                                line++; // a backslash before a newline continues the string on the next line
                                break;
                            case 'u' when i + 4 <= s.Length:
                                sb.Append((char)int.Parse(s.AsSpan(i, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                                i += 4;
                                break;
                            default: sb.Append('\\').Append(e); break;
                        }
                        continue;
                    }
                    if (d == '\n')
                        line++;
                    sb.Append(d);
                }
                tokens.Add(new Token(TokenType.String, sb.ToString(), line, sb.ToString()));
                continue;
            }
            string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(s, i, o, 0, o.Length) == 0);
            if (op is null)
                throw new JinjaException($"unexpected character '{c}'", line);
            tokens.Add(new Token(TokenType.Operator, op, line));
            i += op.Length;
        }
    }
}
