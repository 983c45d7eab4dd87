#!/usr/bin/env python3
"""Renders the Helm chart deploy/helm/peage without helm, for CI.

helm itself cannot be installed on the machines Péage is built on (no Debian package, no PyPI
or npm package carrying the binary, and get.helm.sh is out of reach), so this renders the
chart the way `helm template` would, for the part of Go's text/template and of Helm's
functions the chart uses: actions with whitespace trimming, comments, `define`/`include`,
`if`/`else`/`end`, `range`, `with`, variables, pipelines, and the functions listed in FUNCS.
Anything else is an error, never silently rendered. The rendered manifests are then checked
against the Kubernetes schemas by kubernetes-validate (deploy/helm/validate.sh).

    render.py CHART [--values FILE]... [--set key.path=value]... [--release NAME]
"""

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml


class TemplateError(Exception):
    pass


# ---- lexing -------------------------------------------------------------------------------

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def lex(text, name):
    """Text and action tokens, with Go's trimming applied to the text around `{{-` / `-}}`."""
    tokens = []
    pos = 0
    for m in ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if m.group(1):
            chunk = chunk.rstrip(" \t\r\n")
        tokens.append(("text", chunk))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            tokens.append(("action", body))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip(" \t\r\n"))
    tokens.append(("text", text[pos:]))
    return tokens


# ---- parsing ------------------------------------------------------------------------------


def parse(tokens, name, defines):
    """A list of nodes; `define` blocks go into `defines`."""
    pos = 0

    def block(stop):
        nonlocal pos
        nodes = []
        while pos < len(tokens):
            kind, value = tokens[pos]
            pos += 1
            if kind == "text":
                if value:
                    nodes.append(("text", value))
                continue
            word = value.split(None, 1)[0] if value else ""
            rest = value[len(word) :].strip()
            if word in stop:
                return nodes, word, rest
            if word == "define":
                dname = parse_string(rest)
                body, end, _ = block({"end"})
                defines[dname] = body
            elif word in ("if", "with"):
                nodes.append(conditional(word, rest))
            elif word == "range":
                body, end, _ = block({"else", "end"})
                otherwise = []
                if end == "else":
                    otherwise, _, _ = block({"end"})
                nodes.append(("range", rest, body, otherwise))
            elif word in ("end", "else"):
                raise TemplateError(f"{name}: unexpected {{{{ {word} }}}}")
            elif word in ("template", "block", "break", "continue"):
                raise TemplateError(f"{name}: {{{{ {word} }}}} is not supported by this renderer")
            else:
                nodes.append(("action", value))
        if stop:
            raise TemplateError(f"{name}: missing {{{{ end }}}}")
        return nodes, None, ""

    def conditional(word, rest):
        then, end, erest = block({"else", "end"})
        otherwise = []
        if end == "else":
            if erest.startswith("if "):
                # `else if`: an `if` in the else branch, sharing the outer `end`.
                otherwise = [conditional("if", erest[3:].strip())]
            else:
                otherwise, _, _ = block({"end"})
        return (word, rest, then, otherwise)

    nodes, _, _ = block(set())
    return nodes


def parse_string(s):
    s = s.strip()
    if not (s.startswith('"') and s.endswith('"')):
        raise TemplateError(f"expected a string, not {s!r}")
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


# ---- pipelines ----------------------------------------------------------------------------

TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)'
    r"|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)|(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>:=|=|\||\(|\)|,))"
)


def tokenize(expr):
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot read {expr[pos:]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
    return out


def truthy(v):
    return not (v is None or v is False or v == 0 or v == "" or v == [] or v == {})


def go_str(v):
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def printf(fmt, *args):
    args = list(args)

    def sub(m):
        verb = m.group(1)
        if verb == "%":
            return "%"
        if not args:
            raise TemplateError(f"printf {fmt!r}: missing argument")
        a = args.pop(0)
        if verb in ("s", "v"):
            return go_str(a)
        if verb == "d":
            return str(int(a))
        if verb == "q":
            return '"' + go_str(a).replace("\\", "\\\\").replace('"', '\\"') + '"'
        raise TemplateError(f"printf verb %{verb} is not supported")

    return re.sub(r"%([svdq%])", sub, fmt)


def to_yaml(v):
    if v is None:
        return "null"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True, allow_unicode=True).rstrip("\n")


def indent(n, s):
    return "\n".join((" " * n + line) if line else line for line in go_str(s).split("\n"))


class Renderer:
    def __init__(self, defines, root):
        self.defines = defines
        self.root = root
        self.funcs = {
            "include": self.include,
            "printf": printf,
            "quote": lambda v: '"' + go_str(v).replace("\\", "\\\\").replace('"', '\\"') + '"',
            "trunc": lambda n, s: go_str(s)[: int(n)],
            "trimSuffix": lambda suffix, s: go_str(s)[: -len(suffix)] if suffix and go_str(s).endswith(suffix) else go_str(s),
            "nindent": lambda n, s: "\n" + indent(int(n), s),
            "indent": lambda n, s: indent(int(n), s),
            "toYaml": to_yaml,
            "default": lambda d, v=None: v if truthy(v) else d,
            "required": self.required,
            "lower": lambda s: go_str(s).lower(),
            "contains": lambda sub, s: go_str(sub) in go_str(s),
            "upper": lambda s: go_str(s).upper(),
            "eq": lambda a, b: a == b,
            "ne": lambda a, b: a != b,
            "not": lambda a: not truthy(a),
            "and": lambda *a: all(truthy(x) for x in a),
            "or": lambda *a: any(truthy(x) for x in a),
            "dict": lambda *kv: {kv[i]: kv[i + 1] for i in range(0, len(kv), 2)},
            "list": lambda *items: list(items),
        }

    def required(self, message, v=None):
        if not truthy(v):
            raise TemplateError(message)
        return v

    def include(self, name, dot):
        if name not in self.defines:
            raise TemplateError(f'include "{name}": no such template')
        return self.run(self.defines[name], dot, {"$": self.root})

    # Evaluation of one command (function call or single operand) given the piped value.
    def operand(self, tok, dot, scope):
        kind, text = tok
        if kind == "str":
            return parse_string(text)
        if kind == "raw":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "field":
            return self.walk(dot, text.split(".")[1:] if text != "." else [], text)
        if kind == "var":
            name, *path = text.split(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return self.walk(scope[name], path, text)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "nil":
                return None
        raise TemplateError(f"unexpected {text!r}")

    def walk(self, v, path, text):
        for p in path:
            if isinstance(v, dict):
                v = v.get(p)
            elif v is None:
                return None
            else:
                raise TemplateError(f"{text}: cannot read .{p} of a {type(v).__name__}")
        return v

    def pipeline(self, expr, dot, scope):
        toks = tokenize(expr)
        # Declarations: `$x := pipeline` and `$k, $v := pipeline` (range).
        decl = []
        for i, (k, v) in enumerate(toks):
            if k == "op" and v in (":=", "="):
                decl = [t[1] for t in toks[:i] if t[0] == "var"]
                toks = toks[i + 1 :]
                break
        value = self.eval_tokens(toks, dot, scope)
        return decl, value

    def eval_tokens(self, toks, dot, scope):
        # Split on top-level `|`, evaluate left to right.
        cmds, depth, cur = [], 0, []
        for t in toks:
            if t == ("op", "("):
                depth += 1
            elif t == ("op", ")"):
                depth -= 1
            if t == ("op", "|") and depth == 0:
                cmds.append(cur)
                cur = []
            else:
                cur.append(t)
        cmds.append(cur)
        piped, first = None, True
        for cmd in cmds:
            args = self.args(cmd, dot, scope)
            if not cmd:
                raise TemplateError("empty command in a pipeline")
            head = cmd[0]
            if head[0] == "ident" and head[1] in self.funcs:
                fn_args = args[1:] + ([] if first else [piped])
                piped = self.funcs[head[1]](*fn_args)
            elif head[0] == "ident" and head[1] not in ("true", "false", "nil"):
                raise TemplateError(f"function {head[1]!r} is not supported by this renderer")
            else:
                if len(args) != 1 or not first:
                    raise TemplateError(f"cannot call a value: {cmd}")
                piped = args[0]
            first = False
        return piped

    def args(self, cmd, dot, scope):
        out, i = [], 0
        while i < len(cmd):
            t = cmd[i]
            if t == ("op", "("):
                depth, j = 1, i + 1
                while depth:
                    if cmd[j] == ("op", "("):
                        depth += 1
                    elif cmd[j] == ("op", ")"):
                        depth -= 1
                    j += 1
                out.append(self.eval_tokens(cmd[i + 1 : j - 1], dot, scope))
                i = j
                continue
            if t[0] == "ident" and t[1] in self.funcs:
                out.append(None)  # the function itself, called by eval_tokens
            else:
                out.append(self.operand(t, dot, scope))
            i += 1
        return out

    def run(self, nodes, dot, scope):
        out = []
        scope = dict(scope)
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "action":
                decl, value = self.pipeline(node[1], dot, scope)
                if decl:
                    scope[decl[0]] = value
                else:
                    out.append(go_str(value))
            elif kind in ("if", "with"):
                _, value = self.pipeline(node[1], dot, scope)
                if truthy(value):
                    out.append(self.run(node[2], value if kind == "with" else dot, scope))
                else:
                    out.append(self.run(node[3], dot, scope))
            elif kind == "range":
                decl, value = self.pipeline(node[1], dot, scope)
                items = (
                    sorted(value.items())
                    if isinstance(value, dict)
                    else list(enumerate(value or []))
                )
                if not items:
                    out.append(self.run(node[3], dot, scope))
                for k, v in items:
                    inner = dict(scope)
                    if len(decl) == 2:
                        inner[decl[0]], inner[decl[1]] = k, v
                    elif len(decl) == 1:
                        inner[decl[0]] = v
                    out.append(self.run(node[2], v, inner))
        return "".join(out)


def set_path(values, path, raw):
    value = yaml.safe_load(raw) if raw != "" else ""
    keys = path.split(".")
    for k in keys[:-1]:
        values = values.setdefault(k, {})
    values[keys[-1]] = value


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def render(chart, values_files=(), sets=(), release="peage", namespace="default", revision=1):
    chart = Path(chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for f in values_files:
        merge(values, yaml.safe_load(Path(f).read_text()) or {})
    for s in sets:
        path, _, raw = s.partition("=")
        set_path(values, path, raw)
    root = {
        "Values": values,
        "Release": {
            "Name": release,
            "Namespace": namespace,
            "Service": "Helm",
            "Revision": revision,
            "IsInstall": True,
        },
        "Chart": {
            "Name": meta["name"],
            "Version": meta["version"],
            "AppVersion": meta.get("appVersion", ""),
        },
    }
    defines, bodies = {}, []
    for path in sorted((chart / "templates").iterdir()):
        nodes = parse(lex(path.read_text(), path.name), path.name, defines)
        if not path.name.startswith("_"):
            bodies.append((path.name, nodes))
    r = Renderer(defines, root)
    docs = []
    for name, nodes in bodies:
        text = r.run(nodes, copy.deepcopy(root), {"$": root})
        for doc in re.split(r"^---\s*$", text, flags=re.M):
            if yaml.safe_load(doc) is not None:
                docs.append(f"# Source: peage/templates/{name}\n{doc.strip()}\n")
    return "---\n".join(docs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("chart")
    p.add_argument("--values", "-f", action="append", default=[])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--release", default="peage")
    a = p.parse_args()
    try:
        sys.stdout.write(render(a.chart, a.values, a.set, a.release))
    except TemplateError as e:
        sys.exit(f"render.py: {e}")


if __name__ == "__main__":
    main()
