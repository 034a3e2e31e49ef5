#!/usr/bin/env python3
"""Renders the chat templates in tests/Engine.Tests/ChatTemplates with Python's jinja2 configured as
Hugging Face transformers configures it for apply_chat_template (sandboxed, trim_blocks, lstrip_blocks,
loop controls, its tojson, raise_exception and strftime_now — here with a fixed date), for fixed
conversations, and writes the expected strings the C# interpreter is tested against:
tests/Engine.Tests/ChatTemplates/expected.json.

Usage: python3 tools/chat/render_reference.py   (needs jinja2)
"""
import json
import os
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "Engine.Tests", "ChatTemplates")
NOW = datetime(2026, 7, 26, 14, 5, 9)


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    with open(os.path.join(HERE, "conversations.json"), encoding="utf-8") as f:
        conversations = json.load(f)
    env = environment()
    expected = {}
    for name in sorted(os.listdir(HERE)):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            template = env.from_string(f.read())
        expected[name] = {}
        for case, variables in conversations.items():
            try:
                expected[name][case] = {"text": template.render(**variables)}
            except Exception as e:  # the template refused the conversation: the message is what is checked
                expected[name][case] = {"error": str(e)}
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
