namespace Engine.Chat.Jinja;

/// <summary>
/// Jinja's grammar as chat templates use it, by recursive descent with Jinja's precedence (lowest first):
/// conditional <c>a if c else b</c>, <c>or</c>, <c>and</c>, <c>not</c>, comparisons and <c>in</c>, <c>~</c>,
/// <c>+ -</c>, <c>* / // %</c>, <c>**</c>, unary <c>- +</c>, then a primary with its postfixes (attribute,
/// subscript or slice, call) and its filters (<c>|</c>) and tests (<c>is</c>).
/// </summary>
internal sealed class Parser(List<Token> tokens)
{
    /// <summary>Deepest nesting of expressions or blocks a template may have: real templates stay far below, and a hostile one must not overflow the stack.</summary>
    public const int MaxNesting = 100;

    private int _at;
    private int _depth;

    /// <summary>Runs one level of recursive descent, refusing nesting beyond <see cref="MaxNesting"/>.</summary>
    private T Nested<T>(Func<T> parse)
    {
        if (++_depth > MaxNesting)
            throw new JinjaException($"the template nests deeper than {MaxNesting} levels", Peek().Line);
        try
        {
            return parse();
        }
        finally
        {
            _depth--;
        }
    }

    private Token Peek(int ahead = 0) => tokens[Math.Min(_at + ahead, tokens.Count - 1)];

    private Token Next() => tokens[_at++];

    private bool IsOp(string op, int ahead = 0) => Peek(ahead) is { Type: TokenType.Operator } t && t.Text == op;

    private bool IsName(string name, int ahead = 0) => Peek(ahead) is { Type: TokenType.Name } t && t.Text == name;

    private Token Expect(TokenType type, string? text = null)
    {
        var t = Next();
        if (t.Type != type || (text is not null && t.Text != text))
            throw new JinjaException($"expected {text ?? type.ToString()}, found {Describe(t)}", t.Line);
        return t;
    }

    private static string Describe(Token t) => t.Type switch
    {
        TokenType.End => "the end of the tag",
        TokenType.Eof => "the end of the template",
        TokenType.Text => "text",
        _ => $"'{t.Text}'",
    };

    public List<Node> ParseTemplate()
    {
        var body = ParseBody(out string? end);
        if (end is not null)
            throw new JinjaException($"unexpected {{% {end} %}}", Peek().Line);
        return body;
    }

    /// <summary>Nodes up to a statement whose keyword the caller handles (endif, else, …), returned in <paramref name="end"/>.</summary>
    private List<Node> ParseBody(out string? end, params string[] stops)
    {
        if (_depth + 1 > MaxNesting)
            throw new JinjaException($"the template nests deeper than {MaxNesting} levels", Peek().Line);
        _depth++;
        try
        {
            return ParseBodyNested(out end, stops);
        }
        finally
        {
            _depth--;
        }
    }

    private List<Node> ParseBodyNested(out string? end, params string[] stops)
    {
        var nodes = new List<Node>();
        while (true)
        {
            var t = Peek();
            switch (t.Type)
            {
                case TokenType.Eof:
                    end = null;
                    return nodes;
                case TokenType.Text:
                    Next();
                    nodes.Add(new TextNode(t.Line, t.Text));
                    break;
                case TokenType.ExpressionStart:
                    Next();
                    var value = ParseExpression();
                    Expect(TokenType.End);
                    nodes.Add(new OutputNode(t.Line, value));
                    break;
                case TokenType.StatementStart:
                {
                    var keyword = Peek(1);
                    if (keyword.Type != TokenType.Name)
                        throw new JinjaException($"a statement starts with {Describe(keyword)}", keyword.Line);
                    if (stops.Contains(keyword.Text))
                    {
                        Next();
                        Next();
                        end = keyword.Text;
                        return nodes;
                    }
                    Next();
                    Next();
                    nodes.Add(ParseStatement(keyword));
                    break;
                }
                default:
                    throw new JinjaException($"unexpected {Describe(t)}", t.Line);
            }
        }
    }

    private Node ParseStatement(Token keyword)
    {
        int line = keyword.Line;
        switch (keyword.Text)
        {
            case "if":
            {
                var branches = new List<(Expr, List<Node>)>();
                var condition = ParseExpression();
                Expect(TokenType.End);
                List<Node>? otherwise = null;
                while (true)
                {
                    var body = ParseBody(out string? end, "elif", "else", "endif");
                    branches.Add((condition, body));
                    if (end == "elif")
                    {
                        condition = ParseExpression();
                        Expect(TokenType.End);
                        continue;
                    }
                    if (end == "else")
                    {
                        Expect(TokenType.End);
                        otherwise = ParseBody(out end, "endif");
                    }
                    if (end != "endif")
                        throw new JinjaException("{% if %} is not closed with {% endif %}", line);
                    Expect(TokenType.End);
                    return new IfNode(line, branches, otherwise);
                }
            }
            case "for":
            {
                var targets = new List<string> { Expect(TokenType.Name).Text };
                while (IsOp(","))
                {
                    Next();
                    targets.Add(Expect(TokenType.Name).Text);
                }
                Expect(TokenType.Name, "in");
                var iterable = ParseConditional(allowIf: false);
                Expr? filter = null;
                if (IsName("if"))
                {
                    Next();
                    filter = ParseExpression();
                }
                if (IsName("recursive"))
                    throw new JinjaException("recursive loops are not supported", line);
                Expect(TokenType.End);
                var body = ParseBody(out string? end, "else", "endfor");
                List<Node>? otherwise = null;
                if (end == "else")
                {
                    Expect(TokenType.End);
                    otherwise = ParseBody(out end, "endfor");
                }
                if (end != "endfor")
                    throw new JinjaException("{% for %} is not closed with {% endfor %}", line);
                Expect(TokenType.End);
                return new ForNode(line, targets, iterable, filter, body, otherwise);
            }
            case "set":
            {
                var targets = new List<Expr> { ParsePrimaryWithPostfix() };
                while (IsOp(","))
                {
                    Next();
                    targets.Add(ParsePrimaryWithPostfix());
                }
                if (IsOp("="))
                {
                    Next();
                    var value = ParseTuple();
                    Expect(TokenType.End);
                    return new SetNode(line, targets, value, null);
                }
                Expect(TokenType.End);
                var body = ParseBody(out string? end, "endset");
                if (end != "endset")
                    throw new JinjaException("{% set %} block is not closed with {% endset %}", line);
                Expect(TokenType.End);
                return new SetNode(line, targets, null, body);
            }
            case "macro":
            {
                string name = Expect(TokenType.Name).Text;
                var parameters = new List<(string, Expr?)>();
                Expect(TokenType.Operator, "(");
                while (!IsOp(")"))
                {
                    string p = Expect(TokenType.Name).Text;
                    Expr? d = null;
                    if (IsOp("="))
                    {
                        Next();
                        d = ParseExpression();
                    }
                    parameters.Add((p, d));
                    if (!IsOp(")"))
                        Expect(TokenType.Operator, ",");
                }
                Next();
                Expect(TokenType.End);
                var body = ParseBody(out string? end, "endmacro");
                if (end != "endmacro")
                    throw new JinjaException("{% macro %} is not closed with {% endmacro %}", line);
                Expect(TokenType.End);
                return new MacroNode(line, name, parameters, body);
            }
            case "call":
            {
                var call = ParseExpression();
                Expect(TokenType.End);
                var body = ParseBody(out string? end, "endcall");
                if (end != "endcall")
                    throw new JinjaException("{% call %} is not closed with {% endcall %}", line);
                Expect(TokenType.End);
                return new CallBlockNode(line, call, body);
            }
            case "generation":
            {
                // transformers' assistant-mask marker: its content renders as is
                Expect(TokenType.End);
                var body = ParseBody(out string? end, "endgeneration");
                if (end != "endgeneration")
                    throw new JinjaException("{% generation %} is not closed with {% endgeneration %}", line);
                Expect(TokenType.End);
                return new IfNode(line, [(new Literal(line, true), body)], null);
            }
            case "break":
                Expect(TokenType.End);
                return new BreakNode(line);
            case "continue":
                Expect(TokenType.End);
                return new ContinueNode(line);
            case "do":
            {
                var value = ParseExpression();
                Expect(TokenType.End);
                return new ExprStatementNode(line, value);
            }
            default:
                throw new JinjaException($"unknown statement '{keyword.Text}'", line);
        }
    }

    /// <summary>An expression, or several separated by commas (a tuple without parentheses).</summary>
    private Expr ParseTuple()
    {
        var first = ParseExpression();
        if (!IsOp(","))
            return first;
        var items = new List<Expr> { first };
        while (IsOp(","))
        {
            Next();
            if (Peek().Type == TokenType.End)
                break;
            items.Add(ParseExpression());
        }
        return new ListExpr(first.Line, items, Tuple: true);
    }

    public Expr ParseExpression() => Nested(() => ParseConditional(allowIf: true));

    private Expr ParseConditional(bool allowIf)
    {
        var value = ParseOr();
        if (allowIf && IsName("if"))
        {
            int line = Next().Line;
            var condition = ParseOr();
            Expr? otherwise = null;
            if (IsName("else"))
            {
                Next();
                otherwise = ParseConditional(allowIf: true);
            }
            return new ConditionalExpr(line, condition, value, otherwise);
        }
        return value;
    }

    private Expr ParseOr()
    {
        var left = ParseAnd();
        while (IsName("or"))
        {
            int line = Next().Line;
            left = new BinaryExpr(line, "or", left, ParseAnd());
        }
        return left;
    }

    private Expr ParseAnd()
    {
        var left = ParseNot();
        while (IsName("and"))
        {
            int line = Next().Line;
            left = new BinaryExpr(line, "and", left, ParseNot());
        }
        return left;
    }

    private Expr ParseNot()
    {
        if (IsName("not"))
        {
            int line = Next().Line;
            return new UnaryExpr(line, "not", Nested(ParseNot));
        }
        return ParseCompare();
    }

    private static readonly string[] Comparisons = ["==", "!=", "<", ">", "<=", ">="];

    private Expr ParseCompare()
    {
        var left = ParseConcat();
        while (true)
        {
            var t = Peek();
            if (t.Type == TokenType.Operator && Comparisons.Contains(t.Text))
            {
                Next();
                left = new BinaryExpr(t.Line, t.Text, left, ParseConcat());
            }
            else if (IsName("in"))
            {
                Next();
                left = new BinaryExpr(t.Line, "in", left, ParseConcat());
            }
            else if (IsName("not") && IsName("in", 1))
            {
                Next();
                Next();
                left = new UnaryExpr(t.Line, "not", new BinaryExpr(t.Line, "in", left, ParseConcat()));
            }
            else
                return left;
        }
    }

    private Expr ParseConcat()
    {
        var left = ParseAdditive();
        while (IsOp("~"))
        {
            int line = Next().Line;
            left = new BinaryExpr(line, "~", left, ParseAdditive());
        }
        return left;
    }

    private Expr ParseAdditive()
    {
        var left = ParseMultiplicative();
        while (IsOp("+") || IsOp("-"))
        {
            var t = Next();
            left = new BinaryExpr(t.Line, t.Text, left, ParseMultiplicative());
        }
        return left;
    }

    private Expr ParseMultiplicative()
    {
        var left = ParsePower();
        while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%"))
        {
            var t = Next();
            left = new BinaryExpr(t.Line, t.Text, left, ParsePower());
        }
        return left;
    }

    private Expr ParsePower()
    {
        var left = ParseUnary();
        while (IsOp("**"))
        {
            int line = Next().Line;
            left = new BinaryExpr(line, "**", left, ParseUnary());
        }
        return left;
    }

    private Expr ParseUnary()
    {
        if (IsOp("-") || IsOp("+"))
        {
            var t = Next();
            return ParseFilters(new UnaryExpr(t.Line, t.Text, Nested(ParseUnary)));
        }
        return ParseFilters(ParsePrimaryWithPostfix());
    }

    private Expr ParseFilters(Expr value)
    {
        while (true)
        {
            if (IsOp("|"))
            {
                int line = Next().Line;
                string name = Expect(TokenType.Name).Text;
                var (args, kwargs) = IsOp("(") ? ParseArguments() : ([], []);
                value = new FilterExpr(line, value, name, args, kwargs);
            }
            else if (IsName("is"))
            {
                int line = Next().Line;
                bool negated = false;
                if (IsName("not"))
                {
                    Next();
                    negated = true;
                }
                var nameToken = Next();
                string name = nameToken.Type switch
                {
                    TokenType.Name => nameToken.Text,
                    TokenType.Operator when nameToken.Text is "==" or "!=" or "<" or ">" or "<=" or ">=" => nameToken.Text,
                    _ => throw new JinjaException($"expected a test name after 'is', found {Describe(nameToken)}", nameToken.Line),
                };
                var args = new List<Expr>();
                if (IsOp("("))
                    args = ParseArguments().Args;
                else if (Peek().Type is TokenType.String or TokenType.Integer or TokenType.Float
                         || (Peek().Type == TokenType.Name && !IsName("and") && !IsName("or") && !IsName("else") && !IsName("if") && !IsName("is")))
                    args.Add(ParsePrimaryWithPostfix()); // `is divisibleby 3`, `is sameas x`
                value = new TestExpr(line, value, name, args, negated);
            }
            else
                return value;
        }
    }

    private (List<Expr> Args, List<(string, Expr)> Kwargs) ParseArguments()
    {
        Expect(TokenType.Operator, "(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!IsOp(")"))
        {
            if (Peek().Type == TokenType.Name && IsOp("=", 1))
            {
                string name = Next().Text;
                Next();
                kwargs.Add((name, ParseExpression()));
            }
            else
                args.Add(ParseExpression());
            if (!IsOp(")"))
                Expect(TokenType.Operator, ",");
        }
        Next();
        return (args, kwargs);
    }

    private Expr ParsePrimaryWithPostfix()
    {
        var value = ParsePrimary();
        while (true)
        {
            if (IsOp("."))
            {
                int line = Next().Line;
                var name = Next();
                if (name.Type is not (TokenType.Name or TokenType.Integer))
                    throw new JinjaException($"expected an attribute name after '.', found {Describe(name)}", name.Line);
                value = name.Type == TokenType.Integer ? new IndexExpr(line, value, new Literal(line, name.Value)) : new AttributeExpr(line, value, name.Text);
            }
            else if (IsOp("["))
            {
                int line = Next().Line;
                Expr? start = null, stop = null, step = null;
                bool slice = false;
                if (!IsOp(":"))
                    start = ParseExpression();
                if (IsOp(":"))
                {
                    slice = true;
                    Next();
                    if (!IsOp(":") && !IsOp("]"))
                        stop = ParseExpression();
                    if (IsOp(":"))
                    {
                        Next();
                        if (!IsOp("]"))
                            step = ParseExpression();
                    }
                }
                Expect(TokenType.Operator, "]");
                value = slice ? new SliceExpr(line, value, start, stop, step) : new IndexExpr(line, value, start!);
            }
            else if (IsOp("("))
            {
                int line = Peek().Line;
                var (args, kwargs) = ParseArguments();
                value = new CallExpr(line, value, args, kwargs);
            }
            else
                return value;
        }
    }

    private Expr ParsePrimary()
    {
        var t = Next();
        switch (t.Type)
        {
            case TokenType.String:
            {
                // adjacent string literals concatenate
                string s = (string)t.Value!;
                while (Peek().Type == TokenType.String)
                    s += (string)Next().Value!;
                return new Literal(t.Line, s);
            }
            case TokenType.Integer:
            case TokenType.Float:
                return new Literal(t.Line, t.Value);
            case TokenType.Name:
                return t.Text switch
                {
                    "true" or "True" => new Literal(t.Line, true),
                    "false" or "False" => new Literal(t.Line, false),
                    "none" or "None" => new Literal(t.Line, null),
                    _ => new NameExpr(t.Line, t.Text),
                };
            case TokenType.Operator when t.Text == "(":
            {
                if (IsOp(")"))
                {
                    Next();
                    return new ListExpr(t.Line, [], Tuple: true);
                }
                var first = ParseExpression();
                if (IsOp(")"))
                {
                    Next();
                    return first;
                }
                var items = new List<Expr> { first };
                while (IsOp(","))
                {
                    Next();
                    if (IsOp(")"))
                        break;
                    items.Add(ParseExpression());
                }
                Expect(TokenType.Operator, ")");
                return new ListExpr(t.Line, items, Tuple: true);
            }
            case TokenType.Operator when t.Text == "[":
            {
                var items = new List<Expr>();
                while (!IsOp("]"))
                {
                    items.Add(ParseExpression());
                    if (!IsOp("]"))
                        Expect(TokenType.Operator, ",");
                }
                Next();
                return new ListExpr(t.Line, items, Tuple: false);
            }
            case TokenType.Operator when t.Text == "{":
            {
                var items = new List<(Expr, Expr)>();
                while (!IsOp("}"))
                {
                    var key = ParseExpression();
                    Expect(TokenType.Operator, ":");
                    items.Add((key, ParseExpression()));
                    if (!IsOp("}"))
                        Expect(TokenType.Operator, ",");
                }
                Next();
                return new DictExpr(t.Line, items);
            }
            default:
                throw new JinjaException($"unexpected {Describe(t)} in an expression", t.Line);
        }
    }
}
