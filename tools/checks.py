"""The house's structural checks, run by the test suite (tests/tools/test_checks.py) and by hand:

    python -m edgemeter.tools.checks                  # every check; exit 1 with one line per finding
    python -m edgemeter.tools.checks --write-rules    # regenerate docs/rules.md from the docstrings

Over the shipped code (firmware_py/, agent/, cloud/, tools/; generated migrations excepted):
 K1. No import cycle between modules, imports inside functions included (a cycle through a
     lazy import is still two modules that cannot be read or shipped apart).
 K2. Shipped code neither imports tests/ (the package, or its modules by bare name) nor reads it.
 K3. No function longer than MAX_FUNCTION_LINES lines (decorators excluded).
 K4. Rule glossary: a rule is defined once, in its module's docstring, as a line starting with
     its id (" P1. ...", " C7 ...", "  R11 name ..."); its glossary id is <module>.<ID>
     (`pool.P1`, `mqtt.C7`), so ids of different modules never collide. docs/rules.md lists every
     one and must match the docstrings (--write-rules rewrites it).
 K6. No reach into another module's private names: `x._name` only on self or cls (or
     super()) or for a name the module itself defines (a class's instances within their own
     module); the standard library's public underscore names (os._exit, namedtuple._replace)
     excepted.
 K5. A rule cited in code ("rule R11", "rules Q1-Q3", "(Q4)") resolves: to the citing module's
     own rule, or to the rule of a module named within the same sentence ("mqtt_codec R11",
     "rules Q1-Q3 of cloud.mqttclient", "ingest.G9").
KNOWN_DEBT lists the findings that predate these checks; a finding not in it fails, and an entry
that no longer occurs fails too (so the list only shrinks).
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"firmware_py": "firmware_py", "agent": "edgemeter.agent", "cloud": "edgemeter.cloud",
            "tools": "edgemeter.tools"}
MAX_FUNCTION_LINES = 80
TESTS = "test" + "s"   # the folder's name, spelt so that this module does not name it (K2)
RULES_DOC = ROOT / "docs" / "rules.md"

RULE_DEF = re.compile(r"^ {1,4}([A-Z]{1,2}\d{1,2})(?:\.|:)?\s+\S")
_IDS = r"[A-Z]{1,2}\d{1,2}(?:(?:-|, | and |, and )[A-Z]{1,2}\d{1,2})*"
CITE = re.compile(r"\b[Rr]ules? (" + _IDS + r")\b|\((" + _IDS + r")(?=\)|,|;| and | there| of | in )")
ID = re.compile(r"[A-Z]{1,2}\d{1,2}")

# Findings that predate the checks, to be worked off (each entry: the finding's text without its
# line number, so that edits elsewhere in the file do not move it).
KNOWN_DEBT: frozenset[str] = frozenset({
})


def shipped_files(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every shipped .py file."""
    for folder, pkg in PACKAGES.items():
        for p in sorted((root / folder).rglob("*.py")):
            rel = p.relative_to(root / folder)
            if "migrations" in rel.parts or "__pycache__" in rel.parts:
                continue
            parts = [pkg] + list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), p


def _imports(tree: ast.AST, modname: str, is_pkg: bool) -> Iterator[str]:
    base = modname.split(".") if is_pkg else modname.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            yield stem
            for a in node.names:
                yield stem + "." + a.name


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the shipped modules it imports anywhere in its body (K1). `from pkg import mod`
    counts as an import of pkg.mod only: a sub-module importing a sibling through its package is
    not a cycle with the package's own __init__."""
    files = dict(shipped_files(root))
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        found = set(_imports(tree, mod, path.name == "__init__.py"))
        parents = {t.rsplit(".", 1)[0] for t in found if t in files and "." in t}
        graph[mod] = {t for t in found if t in files and t != mod and t not in parents}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_imports(root: Path = ROOT) -> list[str]:
    """K2: shipped modules that import tests, import a module of tests/ by its bare name, or
    name a path under tests/."""
    found = []
    helpers = {p.stem for p in (root / TESTS).rglob("*.py")} - {"__init__"}
    for mod, path in shipped_files(root):
        tree = ast.parse(path.read_text(), str(path))
        heads = set()
        for t in _imports(tree, mod, path.name == "__init__.py"):
            if t == TESTS or t.startswith(TESTS + "."):
                found.append(f"K2 {mod} imports {t}")
            elif t.split(".")[0] in helpers:
                heads.add(t.split(".")[0])
        found += [f"K2 {mod} imports {h}, a module of {TESTS}/" for h in sorted(heads)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (node.value == TESTS or node.value.startswith(TESTS + "/")):
                found.append(f"K2 {mod}:{node.lineno} names {node.value!r}")
    return found


def long_functions(root: Path = ROOT) -> list[str]:
    """K3: functions over MAX_FUNCTION_LINES lines (from `def` to the last line of the body)."""
    found = []
    for mod, path in shipped_files(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    found.append(f"K3 {mod}.{node.name} is {n} lines (at most {MAX_FUNCTION_LINES})")
    return found


def rule_table(root: Path = ROOT) -> dict[str, tuple[str, str]]:
    """K4: glossary id (<module>.<ID>) -> (dotted module, the rule's first line)."""
    table: dict[str, tuple[str, str]] = {}
    for mod, path in shipped_files(root):
        doc = ast.get_docstring(ast.parse(path.read_text(), str(path)), clean=False) or ""
        short = mod.rsplit(".", 1)[-1]
        for line in doc.splitlines():
            m = RULE_DEF.match(line)
            if m:
                text = " ".join(line.strip()[len(m.group(1)):].lstrip(".: ").split())
                table.setdefault(f"{short}.{m.group(1)}", (mod, text))
    return table


def render_rules(table: dict[str, tuple[str, str]]) -> str:
    lines = ["# Rule glossary", "",
             "Every rule the code cites, once. A rule is defined in its module's docstring (the full text",
             "is there); its id here is `<module>.<ID>`, which no other module can reuse. Code cites a",
             "module's own rules by their short id (`P1`) and another module's with the module named in",
             "the same sentence (`mqtt_codec R11`, `ingest.G9`). Generated by",
             "`python -m edgemeter.tools.checks --write-rules`; the test suite fails when it is stale.", "",
             "| id | module | rule (first line) |", "|---|---|---|"]
    for key in sorted(table, key=lambda k: (table[k][0], int(re.sub(r"\D", "", k.split(".")[-1])), k)):
        mod, text = table[key]
        lines.append(f"| `{key}` | `{mod}` | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _cited(text: str) -> Iterator[tuple[int, str]]:
    for m in CITE.finditer(text):
        cited = m.group(1) or m.group(2)
        ids = ID.findall(cited)
        if "-" in cited and len(ids) == 2 and ids[0][0] == ids[1][0]:
            p = re.match(r"[A-Z]+", ids[0]).group()  # type: ignore[union-attr]
            lo, hi = int(ids[0][len(p):]), int(ids[1][len(p):])
            ids = [f"{p}{i}" for i in range(lo, hi + 1)] if 0 <= hi - lo <= 20 else ids
        for i in ids:
            yield m.start(), i


def bad_citations(root: Path = ROOT) -> list[str]:
    """K5: cited rule ids that resolve neither to the module's own rules nor to a module named
    in the same sentence."""
    table = rule_table(root)
    by_short: dict[str, set[str]] = {}
    for key in table:
        short, rid = key.rsplit(".", 1)
        by_short.setdefault(short, set()).add(rid)
    found = []
    for mod, path in shipped_files(root):
        short = mod.rsplit(".", 1)[-1]
        text = path.read_text()
        for pos, rid in _cited(text):
            if rid in by_short.get(short, ()):
                continue
            start = max(text.rfind(".\n", 0, pos), text.rfind(". ", 0, pos), text.rfind("\n\n", 0, pos), 0)
            ends = [e for e in (text.find(". ", pos), text.find(".\n", pos), text.find("\n\n", pos)) if e >= 0]
            sentence = text[start:min(ends) if ends else len(text)]
            named = {w for w in re.findall(r"[a-z_]+", sentence) if rid in by_short.get(w, ())}
            if not named:
                line = text.count("\n", 0, pos) + 1
                found.append(f"K5 {mod}:{line} cites {rid}, which neither {short} nor a module named there defines")
    return found


PUBLIC_UNDERSCORE = frozenset({"_exit", "_replace", "_asdict", "_fields", "_make", "_getframe"})


def private_reaches(root: Path = ROOT) -> list[str]:
    """K6: attribute accesses `<expr>._name` whose <expr> is not self, cls or super()."""
    found = []
    for mod, path in shipped_files(root):
        tree = ast.parse(path.read_text(), str(path))
        own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(tree):
            if node.__class__ is ast.Attribute and node.attr in own:   # the module's own name
                continue
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr not in PUBLIC_UNDERSCORE):
                continue
            v = node.value
            if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                continue
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                continue
            found.append(f"K6 {mod}:{node.lineno} reaches into {ast.unparse(v)}.{node.attr}")
    return found


def findings(root: Path = ROOT) -> list[str]:
    out = [f"K1 import cycle: {' -> '.join(c)}" for c in cycles(import_graph(root))]
    out += test_imports(root) + long_functions(root) + private_reaches(root)
    if not RULES_DOC.exists() or RULES_DOC.read_text() != render_rules(rule_table(root)):
        out.append("K4 docs/rules.md does not match the rules in the docstrings: "
                   "python -m edgemeter.tools.checks --write-rules")
    out += bad_citations(root)
    return out


def debt_key(finding: str) -> str:
    """The finding as KNOWN_DEBT records it: without the line number."""
    return re.sub(r"^(K\d [\w.]+):\d+", r"\1", finding)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgemeter.tools.checks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-rules", action="store_true", help="regenerate docs/rules.md, then check")
    a = ap.parse_args(argv)
    if not (ROOT / "firmware_py").is_dir() or not (ROOT / "cloud").is_dir():
        print(f"edgemeter checks: {ROOT} is not a source checkout (they check the project's folders)",
              file=sys.stderr)
        return 2
    if a.write_rules:
        RULES_DOC.write_text(render_rules(rule_table()))
    found = findings()
    new = [f for f in found if debt_key(f) not in KNOWN_DEBT]
    gone = sorted(KNOWN_DEBT - {debt_key(f) for f in found})
    for f in new:
        print(f)
    for f in gone:
        print(f"fixed, remove from KNOWN_DEBT in tools/checks.py: {f}")
    return 1 if new or gone else 0


if __name__ == "__main__":
    sys.exit(main())
