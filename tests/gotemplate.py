"""A renderer of the Go text/template subset Ollama's Modelfile TEMPLATEs use, following Go's semantics:
text is printed verbatim; ``{{- `` / `` -}}`` trim the whitespace before / after an action; actions are
``if`` / ``else if`` / ``else`` / ``end``, ``range [$i, $v :=] PIPE``, ``$x := V`` and ``$x = V`` (assignment
reaches the variable declared outside the range, as in Go 1.11+), and printing a value. Values are fields
(``.Role``, ``$.System``, ``$m.Content``), variables, string literals, ``true``/``false``, and calls of
``eq``, ``ne``, ``and``, ``or``, ``not``, ``len``. Anything else raises, so a template using more than this
subset fails its test instead of being rendered wrongly."""

from __future__ import annotations

import re
import shlex
from typing import Any

TOKEN = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in TOKEN.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    out.append(("text", text.lstrip() if trim_next else text))
    return out


def _parse(tokens: list[tuple[str, str]], i: int, stop: tuple[str, ...]) -> tuple[list[Any], int, str]:
    nodes: list[Any] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split(" ", 1)[0]
        if word in stop or value.startswith("else"):
            return nodes, i, value
        if word == "if":
            branches = []
            cond = value[3:]
            body, i, end = _parse(tokens, i + 1, ("end",))
            branches.append((cond, body))
            while end.startswith("else"):
                rest = end[4:].strip()
                cond = rest[3:] if rest.startswith("if ") else "true"
                if rest and not rest.startswith("if "):
                    raise ValueError(f"unsupported else form {end!r}")
                body, i, end = _parse(tokens, i + 1, ("end",))
                branches.append((cond, body))
            nodes.append(("if", branches))
            i += 1
        elif word == "range":
            spec = value[6:]
            m = re.match(r"(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.+)$", spec) or re.match(r"(\$\w+)\s*:=\s*(.+)$", spec)
            if m and m.lastindex == 3:
                idx, var, pipe = m.group(1), m.group(2), m.group(3)
            elif m:
                idx, var, pipe = None, m.group(1), m.group(2)
            else:
                idx, var, pipe = None, None, spec
            body, i, end = _parse(tokens, i + 1, ("end",))
            if end != "end":
                raise ValueError("range ... else is not supported")
            nodes.append(("range", idx, var, pipe, body))
            i += 1
        elif re.match(r"^\$\w+\s*:?=", value):
            name, op, expr = re.match(r"^(\$\w+)\s*(:?=)\s*(.+)$", value).groups()  # type: ignore[union-attr]
            nodes.append(("set", name, op, expr))
            i += 1
        else:
            nodes.append(("print", value))
            i += 1
    return nodes, i, ""


class Scope:
    def __init__(self, parent: Scope | None = None):
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def get(self, name: str) -> Any:
        s: Scope | None = self
        while s is not None:
            if name in s.vars:
                return s.vars[name]
            s = s.parent
        raise KeyError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        s: Scope | None = self
        while s is not None:
            if name in s.vars:
                s.vars[name] = value
                return
            s = s.parent
        raise KeyError(f"assignment to undeclared {name}")


def _field(obj: Any, path: list[str]) -> Any:
    for p in path:
        if isinstance(obj, dict):
            obj = obj.get(p)
        else:
            raise ValueError(f"cannot read .{p} of {obj!r}")
    return obj


def _truthy(v: Any) -> bool:
    return bool(v)


FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "and": lambda *xs: next((x for x in xs if not _truthy(x)), xs[-1]),
    "or": lambda *xs: next((x for x in xs if _truthy(x)), xs[-1]),
    "not": lambda x: not _truthy(x),
    "len": lambda x: len(x),
}


def _split(expr: str) -> list[str]:
    """Words of a pipeline, keeping parenthesised groups and string literals whole."""
    out, depth, cur, quote = [], 0, "", False
    for ch in expr:
        if ch == '"' and (not cur or cur[-1] != "\\"):
            quote = not quote
        if not quote and ch == "(":
            depth += 1
        if not quote and ch == ")":
            depth -= 1
        if ch == " " and depth == 0 and not quote:
            if cur:
                out.append(cur)
            cur = ""
            continue
        cur += ch
    if cur:
        out.append(cur)
    return out


def _value(word: str, dot: Any, root: Any, scope: Scope) -> Any:
    if word.startswith("(") and word.endswith(")"):
        return _eval(word[1:-1], dot, root, scope)
    if word.startswith('"'):
        return shlex.split(word)[0] if "\\" not in word else bytes(word[1:-1], "utf-8").decode("unicode_escape")
    if word in ("true", "false"):
        return word == "true"
    if word == ".":
        return dot
    if word.startswith("$."):
        return _field(root, word[2:].split("."))
    if word.startswith("$"):
        name, *path = word.split(".")
        return _field(scope.get(name), path)
    if word.startswith("."):
        return _field(dot, word[1:].split("."))
    raise ValueError(f"unsupported value {word!r}")


def _eval(expr: str, dot: Any, root: Any, scope: Scope) -> Any:
    words = _split(expr.strip())
    if words[0] in FUNCS:
        return FUNCS[words[0]](*(_value(w, dot, root, scope) for w in words[1:]))
    if len(words) != 1:
        raise ValueError(f"unsupported expression {expr!r}")
    return _value(words[0], dot, root, scope)


def _run(nodes: list[Any], dot: Any, root: Any, scope: Scope, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            v = _eval(node[1], dot, root, scope)
            out.append("" if v is None else str(v))
        elif kind == "set":
            _, name, op, expr = node
            v = _eval(expr, dot, root, scope)
            if op == ":=":
                scope.vars[name] = v
            else:
                scope.assign(name, v)
        elif kind == "if":
            for cond, body in node[1]:
                if _truthy(_eval(cond, dot, root, scope)):
                    _run(body, dot, root, Scope(scope), out)
                    break
        elif kind == "range":
            _, idx, var, pipe, body = node
            for i, item in enumerate(_eval(pipe, dot, root, scope) or []):
                inner = Scope(scope)
                if idx:
                    inner.vars[idx] = i
                if var:
                    inner.vars[var] = item
                _run(body, item, root, inner, out)


def render(template: str, data: dict[str, Any]) -> str:
    nodes, i, end = _parse(_tokens(template), 0, ())
    if end:
        raise ValueError(f"unexpected {{{{{end}}}}}")
    out: list[str] = []
    _run(nodes, data, data, Scope(), out)
    return "".join(out)


def ollama_values(messages: list[dict[str, str]], default_system: str = "") -> dict[str, Any]:
    """What Ollama passes a template for a chat request: the Modelfile's SYSTEM as a first system message when
    the request has none, ``.System`` = the system messages joined, ``.Messages`` = all messages, with
    consecutive messages of one role collated (Ollama's ``collate``)."""
    msgs = [dict(m) for m in messages]
    if default_system and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": default_system})
    system = [m["content"] for m in msgs if m["role"] == "system"]
    collated: list[dict[str, str]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"]:
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"], "role": m["role"], "content": m["content"]})
    for c in collated:
        c["Role"], c["Content"] = c["role"], c["content"]
    return {"System": "\n\n".join(system), "Messages": collated}
