"""A CDDL (RFC 8610) checker for the subset edgemeter's schemas use, for tests and debugging.

PyPI's `pycddl` (0.6.4, on the cddl-rs crate) was tried first and is not used: on arrays with
optional or repeated entries, our messages' shape, it rejects valid instances
(`[x: uint, ? y: bstr]` with [1, h'61']) and accepts invalid ones (`[x: uint, + y: int]` with
[1]; `[* [uint, uint]]` with [[1, 2], [3]]). This module is small enough to be right instead.

    schema = Schema(text)                  # or Schema.from_file("docs/protocol.cddl")
    schema.validate(value, rule=None)      # a decoded value (firmware_py.cbor.loads); the first
    schema.validate_cbor(data, rule=None)  # rule is the root; bytes are decoded strictly first
    schema.check(value, rule=None) -> str | None   # the error text, or None when valid

Supported (anything else is refused with CDDLSyntaxError at load, never ignored):
  rules `name = type` and group rules `name = (group)`; `;` comments; every referenced rule
  must be defined.
  types: uint nint int bstr bytes tstr text bool true false nil null any; integer, text and
  h'..' literals; ranges `a..b` and `a...b` (ends may be rule names bound to integers); choices
  `t1 / t2`; parentheses; arrays `[group]`; maps `{group}`; `~rule` (unwraps an array or map
  rule's group); `&(group)` / `&rule` (choice of the group's value types).
  controls: `.size n` / `.size (a..b)` (bytes of bstr/tstr; for uint: fits in n bytes), `.le`,
  `.lt`, `.ge`, `.gt`, `.eq`, `.ne`, `.cbor rule` (a bstr holding the deterministic CBOR of an
  instance of rule, decoded with firmware_py.cbor.loads), `.default` (accepted, no effect).
  groups: entries separated by optional commas; group choices `//`; occurrence `?`, `*`, `+`,
  `n*m`; member keys `type =>`, `value:` and `bareword:` (a label in arrays, a text key in
  maps); nested `(group)` entries; group rules used as entries are inlined.
Arrays match with backtracking; map entries consume matching key/value pairs greedily, and
every pair must be consumed. Errors name the deepest path that failed (e.g. "$[2][0]: ...").
Exceptions: ValueError +-- CDDLSyntaxError (the schema), +-- CDDLError (the instance).
"""
from __future__ import annotations

import re
import sys
from typing import Any, Iterator

from firmware_py import cbor


class CDDLSyntaxError(ValueError):
    """The schema text is not in the supported subset (line and reason)."""


class CDDLError(ValueError):
    """The instance does not match the rule: .path (e.g. "$[2]") and .reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_TOKEN = re.compile(r"""
    (?P<ws>\s+|;[^\n]*)
  | (?P<bytes>h'[0-9a-fA-F\s]*')
  | (?P<text>"(?:[^"\\]|\\.)*")
  | (?P<num>-?0x[0-9a-fA-F]+|-?\d+)
  | (?P<ctrl>\.[A-Za-z][\w-]*)
  | (?P<id>[A-Za-z@_$](?:[\w@$]|[.-](?=[\w@$]))*)
  | (?P<op>\.\.\.|\.\.|=>|//|/=|[=/\[\]{}(),:?*+~&^<>#])
""", re.X)

_PRIMS = {"uint", "nint", "int", "bstr", "bytes", "tstr", "text", "bool", "true", "false",
          "nil", "null", "any"}
_CTRLS = {".size", ".le", ".lt", ".ge", ".gt", ".eq", ".ne", ".cbor", ".default"}
_UNLIMITED = 1 << 62


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out: list[tuple[str, Any, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise CDDLSyntaxError(f"line {line}: cannot read {text[pos:pos + 12]!r}")
        kind, s = m.lastgroup or "", m.group()
        if kind == "num":
            out.append(("val", int(s, 0), line))
        elif kind == "text":
            out.append(("val", s[1:-1].encode().decode("unicode_escape"), line))
        elif kind == "bytes":
            out.append(("val", bytes.fromhex("".join(s[2:-1].split())), line))
        elif kind in ("ctrl", "id", "op"):
            out.append((kind, s, line))
        line += s.count("\n")
        pos = m.end()
    out.append(("eof", None, line))
    return out


# Nodes (plain tuples): types ("prim", name) ("lit", v) ("ref", name) ("choice", [t])
# ("range", lo, hi, exclusive) ("ctrl", t, op, arg) ("array", grp) ("map", grp)
# ("unwrap", name) ("enum", grp); groups ("group", [[entry, ...], ...]) (alternatives);
# entries (min, max, key-type or None, node).

class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, Any, int]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self) -> tuple[str, Any, int]:
        t = self.peek()
        self.i += 1
        return t

    def is_op(self, s: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t[0] == "op" and t[1] == s

    def expect(self, s: str) -> None:
        t = self.take()
        if t[0] != "op" or t[1] != s:
            self.fail(f"expected {s!r}, found {t[1]!r}", t)

    def fail(self, msg: str, tok: tuple[str, Any, int] | None = None) -> None:
        raise CDDLSyntaxError(f"line {(tok or self.peek())[2]}: {msg}")

    def rules(self) -> dict[str, Any]:
        rules: dict[str, Any] = {}
        while self.peek()[0] != "eof":
            t = self.take()
            if t[0] != "id" or t[1][0] == "$":
                self.fail(f"expected a rule name, found {t[1]!r} (sockets/generics unsupported)", t)
            if self.is_op("<"):
                self.fail("generic rules are not supported")
            if not self.is_op("="):
                self.fail(f"expected '=' after {t[1]} ('/=' and '//=' are not supported)")
            self.take()
            if t[1] in rules:
                self.fail(f"rule {t[1]} defined twice", t)
            rules[t[1]] = self.group_or_type()
        return rules

    def group_or_type(self) -> Any:
        if self.is_op("("):  # `name = (...)`: a group rule (a one-type group also acts as a type)
            start = self.i
            self.take()
            grp = self.group(")")
            self.expect(")")
            if not self.at_rule_end():  # it was a parenthesised type after all: `(a / b) .size 2`
                self.i = start
                return self.type_()
            return grp
        return self.type_()

    def at_rule_end(self) -> bool:
        t = self.peek()
        return t[0] == "eof" or (t[0] == "id" and self.is_op("=", 1))

    def type_(self) -> Any:
        alts = [self.type1()]
        while self.is_op("/"):
            self.take()
            alts.append(self.type1())
        return alts[0] if len(alts) == 1 else ("choice", alts)

    def type1(self) -> Any:
        t = self.type2()
        if self.is_op("..") or self.is_op("..."):
            excl = self.take()[1] == "..."
            return ("range", t, self.type2(), excl)
        if self.peek()[0] == "ctrl":
            tok = self.take()
            if tok[1] not in _CTRLS:
                self.fail(f"control {tok[1]} is not supported", tok)
            return ("ctrl", t, tok[1], self.type2())
        return t

    def type2(self) -> Any:
        tok = self.take()
        kind, s = tok[0], tok[1]
        if kind == "val":
            return ("lit", s)
        if kind == "id":
            if s[0] == "$":
                self.fail("sockets are not supported", tok)
            if self.is_op("<"):
                self.fail("generic arguments are not supported", tok)
            return ("prim", s) if s in _PRIMS else ("ref", s)
        if kind == "op":
            if s == "(":
                t = self.type_()
                self.expect(")")
                return t
            if s in ("[", "{"):
                close = "]" if s == "[" else "}"
                grp = self.group(close)
                self.expect(close)
                return ("array" if s == "[" else "map", grp)
            if s == "~":
                name = self.take()
                if name[0] != "id":
                    self.fail("expected a rule name after '~'", name)
                return ("unwrap", name[1])
            if s == "&":
                if self.is_op("("):
                    self.take()
                    grp = self.group(")")
                    self.expect(")")
                    return ("enum", grp)
                name = self.take()
                if name[0] != "id":
                    self.fail("expected a group or rule name after '&'", name)
                return ("enum", ("ref", name[1]))
        self.fail(f"unexpected {s!r} (tags, floats and '#' types are not supported)", tok)
        raise AssertionError  # unreachable: fail() raises

    def group(self, close: str) -> Any:
        alts = [self.grpchoice(close)]
        while self.is_op("//"):
            self.take()
            alts.append(self.grpchoice(close))
        return ("group", alts)

    def grpchoice(self, close: str) -> list[Any]:
        entries: list[Any] = []
        while not (self.is_op(close) or self.is_op("//") or self.peek()[0] == "eof"):
            entries.append(self.grpent(close))
            if self.is_op(","):
                self.take()
        return entries

    def occur(self) -> tuple[int, int]:
        if self.is_op("?"):
            self.take()
            return 0, 1
        if self.is_op("+"):
            self.take()
            return 1, _UNLIMITED
        lo, hi = 0, _UNLIMITED
        if self.peek()[0] == "val" and isinstance(self.peek()[1], int) and self.is_op("*", 1):
            lo = self.take()[1]
        if self.is_op("*"):
            self.take()
            if self.peek()[0] == "val" and isinstance(self.peek()[1], int) and \
                    not (self.is_op(":", 1) or self.is_op("=>", 1)):
                hi = self.take()[1]
            return lo, hi
        return 1, 1

    def grpent(self, close: str) -> Any:
        lo, hi = self.occur()
        key = None
        t = self.peek()
        if t[0] in ("id", "val") and self.is_op(":", 1):
            self.take()
            self.take()
            key = ("label", t[1]) if t[0] == "id" else ("lit", t[1])
        elif self.is_op("("):
            self.take()
            grp = self.group(")")
            self.expect(")")
            if self.is_op("=>"):
                self.fail("parenthesised map keys are not supported")
            return (lo, hi, None, grp)
        node = self.type1()
        if self.is_op("=>"):
            if key is not None:
                self.fail("a member key cannot have two keys")
            self.take()
            key, node = node, self.type_()
        elif self.is_op("/"):
            alts = [node]
            while self.is_op("/"):
                self.take()
                alts.append(self.type1())
            node = ("choice", alts)
        return (lo, hi, key, node)


class _Ctx:
    """The deepest failure seen while matching, for the error message."""

    def __init__(self) -> None:
        self.best: tuple[int, str, str] = (-1, "$", "no match")

    def fail(self, path: str, reason: str) -> bool:
        depth = path.count("[") + path.count("{")
        if depth >= self.best[0]:
            self.best = (depth, path, reason)
        return False


def _kind(v: Any) -> str:
    t = type(v)
    return {int: "int", bytes: "bstr", str: "tstr", list: "array", dict: "map",
            bool: "bool", type(None): "nil"}.get(t, t.__name__)


class Schema:
    def __init__(self, text: str) -> None:
        self.rules = _Parser(text).rules()
        if not self.rules:
            raise CDDLSyntaxError("the schema defines no rule")
        self.root = next(iter(self.rules))
        for name in sorted(self._refs()):
            if name not in self.rules:
                raise CDDLSyntaxError(f"rule {name} is used but not defined")

    @classmethod
    def from_file(cls, path: str) -> "Schema":
        with open(path, encoding="utf-8") as f:
            return cls(f.read())

    def _refs(self) -> set[str]:
        found: set[str] = set()

        def walk(n: Any) -> None:
            if isinstance(n, tuple):
                if n and n[0] in ("ref", "unwrap") and isinstance(n[1], str):
                    found.add(n[1])
                for x in n:
                    walk(x)
            elif isinstance(n, list):
                for x in n:
                    walk(x)
        for r in self.rules.values():
            walk(r)
        return found

    # ---- public API
    def _failure(self, value: Any, rule: str | None) -> tuple[str, str] | None:
        name = rule or self.root
        if name not in self.rules:
            raise ValueError(f"no rule named {name!r}")
        ctx = _Ctx()
        if self._type(("ref", name), value, "$", ctx):
            return None
        return ctx.best[1], f"{ctx.best[2]} (rule {name})"

    def check(self, value: Any, rule: str | None = None) -> str | None:
        """None when value is an instance of rule (default: the first), else the error text."""
        f = self._failure(value, rule)
        return None if f is None else f"{f[0]}: {f[1]}"

    def validate(self, value: Any, rule: str | None = None) -> None:
        """Raise CDDLError (.path, .reason) unless value is an instance of rule."""
        f = self._failure(value, rule)
        if f is not None:
            raise CDDLError(*f)

    def validate_cbor(self, data: bytes, rule: str | None = None) -> None:
        try:
            value = cbor.loads(data)
        except cbor.CBORError as exc:
            raise CDDLError("$", f"not valid CBOR of our subset: {exc}") from None
        self.validate(value, rule)

    # ---- matching
    def _resolve(self, node: Any) -> Any:
        seen = 0
        while node[0] == "ref":
            node = self.rules[node[1]]
            seen += 1
            if seen > 100:
                raise CDDLSyntaxError("rule references loop")
        return node

    def _as_type(self, node: Any) -> Any:
        node = self._resolve(node)
        if node[0] == "group":  # a one-entry, one-type group rule used as a type
            alts = node[1]
            if len(alts) == 1 and len(alts[0]) == 1 and alts[0][0][:3] == (1, 1, None):
                return self._as_type(alts[0][0][3])
            raise CDDLSyntaxError("a group rule is used where a type is expected")
        return node

    def _int_of(self, node: Any) -> Any:
        node = self._as_type(node)
        if node[0] != "lit":
            raise CDDLSyntaxError(f"range or control argument {node!r} is not a literal")
        return node[1]

    def _type(self, node: Any, v: Any, path: str, ctx: _Ctx) -> bool:
        n = self._as_type(node)
        tag = n[0]
        if tag == "prim":
            return self._prim(n[1], v, path, ctx)
        if tag == "lit":
            if type(v) is type(n[1]) and v == n[1]:
                return True
            return ctx.fail(path, f"expected {n[1]!r}, got {v!r}")
        if tag == "choice":
            return any(self._type(a, v, path, ctx) for a in n[1])
        if tag == "range":
            lo, hi = self._int_of(n[1]), self._int_of(n[2])
            if type(v) is not int:
                return ctx.fail(path, f"expected an integer in {lo}..{hi}, got {_kind(v)}")
            if lo <= v and (v < hi if n[3] else v <= hi):
                return True
            return ctx.fail(path, f"{v} outside {lo}{'...' if n[3] else '..'}{hi}")
        if tag == "ctrl":
            return self._type(n[1], v, path, ctx) and self._ctrl(n[2], n[3], v, path, ctx)
        if tag == "array":
            if type(v) is not list:
                return ctx.fail(path, f"expected an array, got {_kind(v)}")
            for alt in n[1][1]:
                for end in self._seq(alt, 0, v, 0, path, ctx):
                    if end == len(v):
                        return True
            return ctx.fail(path, f"array of {len(v)} does not match")
        if tag == "map":
            if type(v) is not dict:
                return ctx.fail(path, f"expected a map, got {_kind(v)}")
            return self._map(n[1], v, path, ctx)
        if tag == "unwrap":
            inner = self._as_type(("ref", n[1]))
            if inner[0] not in ("array", "map"):
                raise CDDLSyntaxError(f"~{n[1]}: not an array or map rule")
            return self._type(inner, v, path, ctx)
        if tag == "enum":
            grp = self._resolve(n[1])
            return any(self._type(e[3], v, path, ctx) for alt in grp[1] for e in alt)
        raise CDDLSyntaxError(f"cannot use {tag} as a type")

    def _prim(self, name: str, v: Any, path: str, ctx: _Ctx) -> bool:
        t = type(v)
        ok = {
            "uint": t is int and v >= 0, "nint": t is int and v < 0, "int": t is int,
            "bstr": t is bytes, "bytes": t is bytes, "tstr": t is str, "text": t is str,
            "bool": t is bool, "true": v is True, "false": v is False,
            "nil": v is None, "null": v is None, "any": True,
        }[name]
        return True if ok else ctx.fail(path, f"expected {name}, got {_kind(v)} {v!r}"[:120])

    def _ctrl(self, op: str, arg: Any, v: Any, path: str, ctx: _Ctx) -> bool:
        if op == ".default":
            return True
        if op == ".cbor":
            if type(v) is not bytes:
                return ctx.fail(path, ".cbor needs a byte string")
            try:
                inner = cbor.loads(v)
            except cbor.CBORError as exc:
                return ctx.fail(path, f".cbor: {exc}")
            return self._type(arg, inner, path + "<<>>", ctx)
        if op == ".size":
            a = self._as_type(arg)
            lo, hi = ((self._int_of(a[1]), self._int_of(a[2]) - (1 if a[3] else 0))
                      if a[0] == "range" else (self._int_of(a), self._int_of(a)))
            if type(v) is int:
                if v < 256 ** hi:
                    return True
                return ctx.fail(path, f"{v} does not fit in {hi} bytes")
            size = len(v.encode()) if type(v) is str else len(v)
            if lo <= size <= hi:
                return True
            want = str(lo) if lo == hi else f"{lo}..{hi}"
            return ctx.fail(path, f"size {size}, expected {want}")
        bound = self._int_of(arg)
        ok = {".le": v <= bound, ".lt": v < bound, ".ge": v >= bound, ".gt": v > bound,
              ".eq": v == bound, ".ne": v != bound}[op]
        return True if ok else ctx.fail(path, f"{v!r} fails {op} {bound!r}")

    def _group_node(self, node: Any) -> Any:
        """The group a bare entry stands for (a (group) or a group rule), else None."""
        if node[0] == "group":
            return node
        if node[0] == "unwrap":
            inner = self._as_type(("ref", node[1]))
            return inner[1] if inner[0] in ("array", "map") else None
        if node[0] == "ref":
            r = self._resolve(node)
            if r[0] == "group":
                return r
        return None

    def _seq(self, entries: list[Any], k: int, items: list[Any], pos: int, path: str,
             ctx: _Ctx) -> Iterator[int]:
        """Positions at which entries[k:] can end when matching items from pos (greedy first)."""
        if k == len(entries):
            yield pos
            return
        lo, hi, _key, node = entries[k]
        grp = self._group_node(node)
        if grp is None:  # a single type: count consecutive matches, then back off
            count = 0
            while count < hi and pos + count < len(items) and \
                    self._type(node, items[pos + count], f"{path}[{pos + count}]", ctx):
                count += 1
            if count < lo and pos + count >= len(items):
                ctx.fail(path, f"array ends after {len(items)} items; more were expected")
            for c in range(count, lo - 1, -1):
                yield from self._seq(entries, k + 1, items, pos + c, path, ctx)
            return
        yield from self._reps(grp, lo, hi, 0, entries, k, items, pos, path, ctx)

    def _reps(self, grp: Any, lo: int, hi: int, done: int, entries: list[Any], k: int,
              items: list[Any], pos: int, path: str, ctx: _Ctx) -> Iterator[int]:
        if done < hi:
            for alt in grp[1]:
                for p in self._seq(alt, 0, items, pos, path, ctx):
                    if p > pos:
                        yield from self._reps(grp, lo, hi, done + 1, entries, k, items, p, path, ctx)
        if done >= lo:
            yield from self._seq(entries, k + 1, items, pos, path, ctx)

    def _map(self, grp: Any, m: dict[Any, Any], path: str, ctx: _Ctx) -> bool:
        for alt in grp[1]:
            for left in self._members(alt, 0, frozenset(m), m, path, ctx):
                if not left:
                    return True
                k = sorted(left, key=repr)[0]
                ctx.fail(f"{path}{{{k!r}}}", f"key {k!r} is not allowed here")
        return False

    def _members(self, entries: list[Any], k: int, left: frozenset[Any], m: dict[Any, Any],
                 path: str, ctx: _Ctx) -> Iterator[frozenset[Any]]:
        if k == len(entries):
            yield left
            return
        lo, hi, key, node = entries[k]
        grp = self._group_node(node) if key is None else None
        if grp is not None:
            yield from self._group_members(grp, lo, hi, 0, entries, k, left, m, path, ctx)
            return
        if key is None:
            raise CDDLSyntaxError("a map entry needs a key (`k: type` or `type => type`)")
        ktype = ("lit", key[1]) if key[0] == "label" else key
        taken: list[Any] = []
        for mk in sorted(left, key=lambda x: (type(x).__name__, x)):
            if len(taken) >= hi:
                break
            sub = _Ctx()
            if self._type(ktype, mk, path, sub):
                if not self._type(node, m[mk], f"{path}{{{mk!r}}}", ctx):
                    if ktype[0] == "lit":  # a literal key with a bad value: no other entry may take it
                        return
                    continue
                taken.append(mk)
        if len(taken) < lo:
            want = repr(key[1]) if key[0] in ("lit", "label") else "matching"
            ctx.fail(path, f"missing {want} key")
            return
        yield from self._members(entries, k + 1, left - frozenset(taken), m, path, ctx)

    def _group_members(self, grp: Any, lo: int, hi: int, done: int, entries: list[Any], k: int,
                       left: frozenset[Any], m: dict[Any, Any], path: str,
                       ctx: _Ctx) -> Iterator[frozenset[Any]]:
        if done < hi:
            for alt in grp[1]:
                for rest in self._members(alt, 0, left, m, path, ctx):
                    if rest != left:
                        yield from self._group_members(grp, lo, hi, done + 1, entries, k, rest, m,
                                                       path, ctx)
        if done >= lo:
            yield from self._members(entries, k + 1, left, m, path, ctx)


def main(argv: list[str] | None = None) -> int:
    """python -m edgemeter.tools.cddl SCHEMA [--rule NAME] (--hex HEX | FILE): validate one instance."""
    import argparse
    import binascii
    ap = argparse.ArgumentParser(prog="python -m edgemeter.tools.cddl", description=main.__doc__)
    ap.add_argument("schema")
    ap.add_argument("file", nargs="?")
    ap.add_argument("--rule")
    ap.add_argument("--hex")
    args = ap.parse_args(argv)
    try:
        schema = Schema.from_file(args.schema)
        if args.hex is not None:
            data = binascii.unhexlify("".join(args.hex.split()))
        else:
            with open(args.file, "rb") if args.file else sys.stdin.buffer as f:
                data = f.read()
        schema.validate_cbor(data, args.rule)
    except (ValueError, OSError, binascii.Error) as exc:
        print(f"cddl: {exc}", file=sys.stderr)
        return 1
    print(f"valid {args.rule or schema.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
