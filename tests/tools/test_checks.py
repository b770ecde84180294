"""tools/checks.py (rules K1-K5): the shipped tree has no finding beyond the recorded debt, and
each check finds what it is for in a small tree made here."""
from __future__ import annotations

from pathlib import Path

from edgemeter.tools import checks


def test_the_shipped_tree_has_no_new_finding_and_no_stale_debt() -> None:
    found = checks.findings()
    assert [f for f in found if checks.debt_key(f) not in checks.KNOWN_DEBT] == []
    assert sorted(checks.KNOWN_DEBT - {checks.debt_key(f) for f in found}) == []   # fixed debt leaves the list


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in checks.PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_each_check_finds_its_kind_of_defect(tmp_path: Path) -> None:
    long_body = "".join("    x = %d\n" % i for i in range(85))
    root = _tree(tmp_path, {
        "firmware_py/a.py": '"""A.\n\n A1. the first rule.\n"""\nfrom firmware_py import b\n',
        "firmware_py/b.py": '"""B (rule A1 of a; rule Z9).\n\n B1. a rule.\n"""\ndef f():\n'
                            '    from firmware_py import a\n',
        "cloud/c.py": '"""C."""\nimport tests.helpers\nLOOP = "tests/firmware/loop.py"\nimport fw_thing\n',
        "tests/firmware/fw_thing.py": "",
        "tools/d.py": '"""D (see b B1 and (B1))."""\ndef big():\n' + long_body,
        "tools/e.py": '"""E."""\nimport os\nfrom firmware_py import a\nclass K:\n    def __init__(self):\n'
                      '        self._mine = 1\n    def peek(self, other):\n        return other._mine + self._x\n'
                      'def f(j):\n    os._exit(0)\n    return a._hidden(j._segs)\n',
    })
    assert checks.cycles(checks.import_graph(root)) == [["firmware_py.a", "firmware_py.b"]]
    assert checks.test_imports(root) == ["K2 edgemeter.cloud.c imports tests.helpers",
                                         "K2 edgemeter.cloud.c imports fw_thing, a module of tests/",
                                         "K2 edgemeter.cloud.c:3 names 'tests/firmware/loop.py'"]
    assert checks.long_functions(root) == ["K3 edgemeter.tools.d.big is 86 lines (at most 80)"]
    table = checks.rule_table(root)
    assert sorted(table) == ["a.A1", "b.B1"] and table["a.A1"] == ("firmware_py.a", "the first rule.")
    # "rule A1 of a" resolves (module a named in the sentence); Z9 is defined nowhere; "(B1)" in
    # d's docstring resolves through "b" named in the same sentence.
    assert checks.bad_citations(root) == [
        "K5 firmware_py.b:1 cites Z9, which neither b nor a module named there defines"]
    assert "| `a.A1` | `firmware_py.a` | the first rule. |" in checks.render_rules(table)
    # K6: a's private function and j's private attribute are reaches; the module's own _mine on
    # another instance of its class, self._x and os._exit are not.
    assert checks.private_reaches(root) == ["K6 edgemeter.tools.e:11 reaches into a._hidden",
                                            "K6 edgemeter.tools.e:11 reaches into j._segs"]


def test_the_services_do_not_import_the_developer_harness() -> None:
    """The cloud, the agent and the core import nothing from edgemeter.tools (simulator,
    benchmarks, the test broker), lazily or not: a service runs without the harness."""
    graph = checks.import_graph()
    reaches = sorted(f"{m} -> {t}" for m, targets in graph.items() if not m.startswith("edgemeter.tools")
                     for t in targets if t.startswith("edgemeter.tools"))
    assert reaches == []
    assert any(t.startswith("edgemeter.cloud") for t in graph["edgemeter.tools.sim.stack"])  # edges are seen
