"""Pure rules of fan-out (`for_each`): instance ids, reading the items out of an upstream
output, putting an item into a prompt, and the instance tasks a template expands into.
No I/O: fanout.py does the plan edit (under the goal's edit lock) with these.

Ids: instance k (0-based, the item's index) of template `t` is `t.k` -- letters, digits and
a dot, so it is a safe folder name and needs no quoting in a shell (`t[k]` would be a glob).
"""
from __future__ import annotations

import json
import re

from . import lazyre

MAX_ITEMS_BYTES = 16 * 1024 * 1024      # the most of an upstream output read for its items
_INSTANCE = lazyre.Pattern(r"(.+)\.(0|[1-9][0-9]{0,5})")
_PLACEHOLDER = lazyre.Pattern(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
_FENCE = lazyre.Pattern(r"\A\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n```\s*\Z", re.S)


class FanoutError(Exception):
    """The items are unusable: the template fails with this one-line reason."""


def instance_id(template: str, k: int) -> str:
    return f"{template}.{k}"


def template_of(tid: str) -> str | None:
    """`t` for an id shaped like an instance id `t.<k>`, else None."""
    m = _INSTANCE.fullmatch(tid)
    return m.group(1) if m else None


def parse_items(data: bytes, *, source: str, limit: int) -> list:
    """The items of an upstream output: a JSON array, or JSON Lines (one JSON value per
    non-empty line). One Markdown code fence around the whole output (```json ... ```), as
    LLM agents like to write, is taken off first. More than `limit` items, or an output that
    is neither, raises FanoutError naming the problem."""
    if len(data) > MAX_ITEMS_BYTES:
        raise FanoutError(f"the output of {source} is {len(data)} bytes; at most {MAX_ITEMS_BYTES} are read for items")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FanoutError(f"the output of {source} is not UTF-8 text (byte {e.start})") from None
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    if not text.strip():
        raise FanoutError(f"the output of {source} is empty: expected a JSON array of items (or JSON Lines)")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
        whole = True
    except (ValueError, RecursionError):
        whole = False
    if whole and isinstance(doc, list):
        items = doc
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line, parse_constant=_no_constant))
            except (ValueError, RecursionError):
                what = "is JSON but not an array" if whole else "is not a JSON array"
                raise FanoutError(f"the output of {source} {what} of items, nor JSON Lines (line {n} is "
                                  f"not JSON: {_clip(line)})") from None
            if len(items) > limit:
                break
    if len(items) > limit:
        n = f"{len(items)}" if whole and isinstance(doc, list) else f"more than {limit}"
        raise FanoutError(f"the output of {source} lists {n} items; for_each.max is {limit}")
    for k, it in enumerate(items):
        if it is None:
            raise FanoutError(f"item {k} of the output of {source} is null")
    return items


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _clip(s: str, n: int = 40) -> str:
    s = s.strip()
    return json.dumps(s if len(s) <= n else s[:n] + "...")


def substitute(prompt: str, name: str, item, k: int) -> str:
    """The prompt with `{{name}}` replaced by the item (a string as it is, anything else as
    JSON) and `{{name.a.b}}` by a field of an object item (an array index also works:
    `{{name.0}}`); `{{name_index}}` is k. Other `{{...}}` are left alone. A field the item
    does not have raises FanoutError."""
    def one(m: re.Match) -> str:
        var, path = m.group(1), m.group(2)
        if var == f"{name}_index" and not path:
            return str(k)
        if var != name:
            return m.group(0)
        v = item
        for part in path.split(".")[1:]:
            if isinstance(v, dict) and part in v:
                v = v[part]
            elif isinstance(v, list) and part.isdigit() and int(part) < len(v):
                v = v[int(part)]
            else:
                raise FanoutError(f"item {k} has no field {path[1:]!r} (for {m.group(0)} in the prompt): {_clip(json.dumps(item))}")
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return _PLACEHOLDER.sub(one, prompt)


def expand(template, items: list, max_prompt: int):
    """(the expanded template, its instance tasks). Each instance is the template with its
    declared dependencies, its knobs, its hooks, and its prompt with the item put in; the
    template becomes the join: it depends on every instance too (fanout = their number),
    runs no agent, and is done when they all are (its output: their outputs, fanout.py)."""
    fe = template.for_each
    out = []
    for k, item in enumerate(items):
        prompt = substitute(template.prompt, fe["as"], item, k)
        if len(prompt.encode("utf-8", "surrogatepass")) > max_prompt:
            raise FanoutError(f"item {k} makes a prompt longer than {max_prompt} bytes")
        out.append(template.replace(
            id=instance_id(template.id, k), deps=template.declared_deps, prompt=prompt, prompt_file=None,
            for_each=None, fanout=None, description=f"item {k} of {template.id}",
            origin={"edit": "fanout", "of": template.id, "index": k, "item": item}))
    joined = template.replace(deps=tuple(template.declared_deps) + tuple(t.id for t in out), fanout=len(out))
    return joined, out


def collapse(template):
    """The template as it was before expansion (a plan edit that must expand it again)."""
    return template.replace(deps=template.declared_deps, fanout=None)
