"""Reference renderings of real chat templates, for test/chat-template.test.ts.

python3 scripts/make_chat_fixtures.py   (needs only Debian's python3-jinja2)

Reads test/fixtures/chat/templates.json (chat_template strings copied from public
tokenizer_config.json files, with their sources) and writes test/fixtures/chat/renderings.json:
every template over every conversation, cut after each message, with and without
add_generation_prompt. Rendering follows transformers' apply_chat_template: an
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension,
raise_exception, strftime_now (a fixed clock here, so the strings are stable), a tojson filter that
keeps non-ASCII, and render(messages, tools=None, documents=None, add_generation_prompt, **special
tokens). A template that raises gives {"error": message} instead of text.
"""
import json
import os
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "chat")
NOW = datetime(2025, 3, 14, 9, 26)

CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
    ],
    "system": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ],
    "multi": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road? To get to the other side."},
    ],
    "multi-system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Red."},
    ],
    "spaces-unicode": [
        {"role": "user", "content": "  Café — naïve? 日本語  "},
        {"role": "assistant", "content": "  Oui, très naïf.\n"},
    ],
}


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: NOW.strftime(fmt)
    return env


def render(template, messages, add_generation_prompt, special_tokens):
    try:
        text = template.render(messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **special_tokens)
        return {"text": text}
    except (TemplateError, jinja2.exceptions.TemplateError) as e:
        return {"error": str(e)}


def main():
    with open(os.path.join(ROOT, "templates.json"), encoding="utf-8") as f:
        templates = json.load(f)
    env = environment()
    cases = []
    for t in templates:
        compiled = env.from_string(t["chat_template"])
        for name, convo in CONVERSATIONS.items():
            for upto in range(1, len(convo) + 1):
                for agp in (False, True):
                    cases.append({"template": t["name"], "conversation": name, "upto": upto, "add_generation_prompt": agp,
                                  **render(compiled, convo[:upto], agp, t["special_tokens"])})
    out = {"renderer": f"python3-jinja2 {jinja2.__version__}", "now": NOW.isoformat(), "conversations": CONVERSATIONS, "cases": cases}
    with open(os.path.join(ROOT, "renderings.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(cases)} renderings, {sum('error' in c for c in cases)} of them errors")


if __name__ == "__main__":
    main()
