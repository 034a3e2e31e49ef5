using System.Text.Json;
using Engine.Chat.Jinja;

namespace Engine.Tests;

/// <summary>
/// The Jinja interpreter: real chat templates rendered exactly as Python's jinja2 renders them under
/// transformers' settings (expected strings written by tools/chat/render_reference.py), the language
/// features one by one, and bad templates refused with the line named.
/// </summary>
public class JinjaTemplateTests
{
    private static readonly string Folder = Path.Combine(AppContext.BaseDirectory, "ChatTemplates");
    private static readonly DateTime Now = new(2026, 7, 26, 14, 5, 9);

    public static IEnumerable<TestCaseData> RealTemplates()
    {
        using var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "expected.json")));
        foreach (var template in expected.RootElement.EnumerateObject())
        {
            foreach (var conversation in template.Value.EnumerateObject())
                yield return new TestCaseData(template.Name, conversation.Name).SetName($"chat template {template.Name}: {conversation.Name}");
        }
    }

    [TestCaseSource(nameof(RealTemplates))]
    public void Renders_like_transformers(string templateName, string conversation)
    {
        string source = File.ReadAllText(Path.Combine(Folder, templateName));
        using var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "expected.json")));
        using var conversations = JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "conversations.json")));
        var variables = conversations.RootElement.GetProperty(conversation).EnumerateObject().ToDictionary(p => p.Name, p => PyValue.FromJson(p.Value));
        var want = expected.RootElement.GetProperty(templateName).GetProperty(conversation);
        var template = JinjaTemplate.Parse(source);
        if (want.TryGetProperty("text", out var text))
        {
            Assert.That(template.Render(variables, Now), Is.EqualTo(text.GetString()));
            return;
        }
        // Python refused the conversation: so must we; where the template raised its own message, the same one
        string error = want.GetProperty("error").GetString()!;
        var e = Assert.Throws<JinjaException>(() => template.Render(variables, Now))!;
        if (source.Contains(error, StringComparison.Ordinal))
            Assert.That(e.Message, Does.Contain(error));
    }

    private static string Render(string source, object? variables = null)
    {
        var vars = variables is null ? new Dictionary<string, object?>()
            : JsonSerializer.SerializeToElement(variables).EnumerateObject().ToDictionary(p => p.Name, p => PyValue.FromJson(p.Value));
        return JinjaTemplate.Parse(source).Render(vars, Now);
    }

    [TestCase("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ 7 % 3 }}|{{ 2 ** 10 }}|{{ 7 / 2 }}|{{ -3 }}", "7|3|1|1024|3.5|-3")]
    [TestCase("{{ 'a' ~ 1 ~ none }}|{{ 'ab' * 3 }}|{{ [1, 2] + [3] }}", "a1None|ababab|[1, 2, 3]")]
    [TestCase("{{ x if x else 'no' }}|{{ 'yes' if true }}|{{ not false and (1 < 2 <= 2) }}", "no|yes|True")]
    [TestCase("{{ 'hello'[1:3] }}|{{ [1,2,3,4][::-1] }}|{{ 'abc'[-1] }}|{{ [1,2,3][1:] }}", "el|[4, 3, 2, 1]|c|[2, 3]")]
    [TestCase("{{ '  x  '|trim }}|{{ 'A b'|lower }}|{{ 'ab'|upper }}|{{ [1,2,3]|length }}|{{ 'a-b'|replace('-', '+') }}", "x|a b|AB|3|a+b")]
    [TestCase("{{ [1,2]|join(', ') }}|{{ undefined_thing|default('d') }}|{{ ''|default('e', true) }}|{{ [3,1,2]|sort|first }}", "1, 2|d|e|1")]
    [TestCase("{{ {'a': 1, 'b': [true, none, 1.5, 'x\"y']}|tojson }}|{{ [1]|tojson(indent=2) }}", "{\"a\": 1, \"b\": [true, null, 1.5, \"x\\\"y\"]}|[\n  1\n]")]
    [TestCase("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }}{{ ',' if not loop.last }}{% endfor %}", "a=1,b=2")]
    [TestCase("{% for x in [1,2,3,4] if x is even %}{{ loop.index }}/{{ loop.length }}:{{ x }} {% else %}none{% endfor %}", "1/2:2 2/2:4 ")]
    [TestCase("{% for x in [] %}x{% else %}empty{% endfor %}", "empty")]
    [TestCase("{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", "13")]
    [TestCase("{% set ns = namespace(found=false) %}{% for x in [1,2] %}{% set ns.found = true %}{% set local = 1 %}{% endfor %}{{ ns.found }}{{ local is defined }}", "TrueFalse")]
    [TestCase("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bo', punct='?') }}", "Hi Ann! Hi Bo?")]
    [TestCase("{% set x %}in{{ 1 }}side{% endset %}[{{ x }}]", "[in1side]")]
    [TestCase("{{ 'a,b,,c'.split(',') }}|{{ ' x y '.split() }}|{{ 'abc'.startswith(('x', 'a')) }}|{{ 'a.b'.endswith('.b') }}|{{ ' q '.strip() }}", "['a', 'b', '', 'c']|['x', 'y']|True|True|q")]
    [TestCase("{{ [{'n': 'a', 'k': 1}, {'n': 'b'}]|selectattr('k', 'defined')|map(attribute='n')|list }}|{{ [1, none, 2]|reject('none')|list }}", "['a']|[1, 2]")]
    [TestCase("{{ x is defined }}|{{ none is none }}|{{ 'a' is string }}|{{ 3 is divisibleby 3 }}|{{ 1 is not number }}|{{ {'a':1} is mapping }}", "False|True|True|True|False|True")]
    [TestCase("{{ strftime_now('%d %B %Y') }}|{{ range(3)|list }}|{{ '%s is %d' % ('x', 3) }}", "26 July 2026|[0, 1, 2]|x is 3")]
    [TestCase("{{ {'a': 1}.get('b', 'z') }}|{{ {'a': 1}['a'] }}|{{ 'b' in {'b': 1} }}|{{ 2 not in [1] }}|{{ 1.0 == 1 }}", "z|1|True|True|True")]
    public void Expressions_and_statements_evaluate_as_in_python(string template, string expected) =>
        Assert.That(Render(template), Is.EqualTo(expected));

    /// <summary>transformers' whitespace settings: trim_blocks and lstrip_blocks, and - / + on tags.</summary>
    [TestCase("a\n  {% if true %}\n  b\n  {% endif %}\nc", "a\n  b\nc")]
    [TestCase("a  {%- if true -%}  b  {%- endif %}\nc", "abc")]
    [TestCase("x\n{# comment #}\ny", "x\ny")]
    [TestCase("{{ 'a' }}\n{{- 'b' }}\n", "ab\n")]
    [TestCase("  {%+ if true %}x{% endif %}", "  x")]
    public void Whitespace_control_matches_transformers(string template, string expected) =>
        Assert.That(Render(template), Is.EqualTo(expected));

    [TestCase("{% if x %}", "line 1", "endif")]
    [TestCase("a\nb\n{{ 1 + }}", "line 3", "unexpected")]
    [TestCase("{% for x in %}{% endfor %}", "line 1", "")]
    [TestCase("x\n{{ 'abc }}", "line 2", "not closed")]
    [TestCase("{% frobnicate %}", "line 1", "unknown statement 'frobnicate'")]
    public void A_template_that_does_not_parse_names_the_line(string template, string line, string problem)
    {
        var e = Assert.Throws<JinjaException>(() => JinjaTemplate.Parse(template))!;
        Assert.That(e.Message, Does.Contain(line).And.Contain(problem));
    }

    [TestCase("a\n{{ raise_exception('no system role') }}", "line 2", "no system role")]
    [TestCase("\n\n{{ messages[0].content }}", "line 3", "'messages' is undefined")]
    [TestCase("{{ 1 + 'a' }}", "line 1", "unsupported operand")]
    [TestCase("{{ x|nosuchfilter }}", "line 1", "unknown filter 'nosuchfilter'")]
    [TestCase("{% for i in range(100000000) %}{% endfor %}", "line 1", "steps")]
    [TestCase("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}\n{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}", "line 2", "more than")]
    [TestCase("{% for i in range(20) %}{{ 'x' * 1000000 }}{% endfor %}", "line 1", "exceeds")]
    public void A_template_that_fails_names_the_line(string template, string line, string problem)
    {
        var e = Assert.Throws<JinjaException>(() => Render(template))!;
        Assert.That(e.Message, Does.Contain(line).And.Contain(problem));
    }

    /// <summary>Hostile templates fail with a JinjaException instead of overflowing the stack (which would end the process).</summary>
    [Test]
    public void Endless_recursion_and_deep_nesting_are_refused()
    {
        var recursive = JinjaTemplate.Parse("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        Assert.That(Assert.Throws<JinjaException>(() => recursive.Render(new Dictionary<string, object?>()))!.Message, Does.Contain("nest deeper"));
        var fine = JinjaTemplate.Parse("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(20) }}");
        Assert.That(fine.Render(new Dictionary<string, object?>()), Is.EqualTo(string.Concat(Enumerable.Range(1, 20).Reverse())), "real recursion within the bound works");
        foreach (string deep in new[] { "{{ " + new string('(', 20000) + "1" + new string(')', 20000) + " }}",
                     "{{ " + string.Concat(Enumerable.Repeat("not ", 20000)) + "x }}", "{{ " + new string('-', 20000) + "1 }}",
                     string.Concat(Enumerable.Repeat("{% if x %}", 20000)) })
            Assert.That(Assert.Throws<JinjaException>(() => JinjaTemplate.Parse(deep))!.Message, Does.Contain("nests deeper"));
    }
}
