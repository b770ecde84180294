"""tools/mpbuild.py without running make: clear errors for a bad --micropython-src, what each
target freezes, the generated manifest, and the stamp that skips an unchanged build."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edgemeter.tools import mpbuild, romfs


def _err(fn, *args) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*args)
    msg = str(e.value.code)
    assert msg.startswith("build-firmware: ") and "\n" not in msg
    return msg


def test_bad_sources_are_refused_with_one_line(tmp_path: Path) -> None:
    assert "no such file" in _err(mpbuild.source_tree, tmp_path / "nope", tmp_path)
    assert "not a MicroPython tree" in _err(mpbuild.source_tree, tmp_path, tmp_path)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    assert "not a readable tarball" in _err(mpbuild.source_tree, junk, tmp_path / "b")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tf:
        tf.add(tmp_path / "junk.tar.gz", arcname="x/readme")
    assert "holds no MicroPython tree" in _err(mpbuild.source_tree, empty, tmp_path / "c")
    msg = _err(mpbuild.source_tree, None, tmp_path)
    assert mpbuild.UPSTREAM[1] in msg and "git clone" in msg
    assert "--target 'esp32'" in _err(mpbuild.build, "esp32")


def test_what_each_target_freezes_and_the_manifest() -> None:
    mods, files = mpbuild.frozen_sources("unix32")
    assert mods == romfs.device_modules() and "main" in mods and "billing" not in mods
    assert [f.name for f in files] == ["mp_workload.py", "fw_driver.py"]
    allmods, _ = mpbuild.frozen_sources("unix32", "all")
    assert set(mods) < set(allmods) and "cloud_session" in allmods
    board, board_files = mpbuild.frozen_sources("cortex-m3")     # the board's device image
    assert "main" in board and [f.name for f in board_files] == ["emboard.py"]
    assert 'module("emboard.py", base_path=' in mpbuild.manifest_text(board, board_files)
    text = mpbuild.manifest_text(mods, files)
    assert f'module("firmware_py/main.py", base_path="{mpbuild.SRC.parent}")' in text
    assert f'module("fw_driver.py", base_path="{files[1].parent}")' in text
    assert "--freeze 'some'" in _err(mpbuild.frozen_sources, "unix32", "some")


def test_an_unchanged_build_is_skipped_and_a_change_is_seen(tmp_path: Path) -> None:
    src = mpbuild.default_source()
    if src is None:
        pytest.skip("no MicroPython source tarball in ../shared/micropython/")
    sdk = tmp_path / "sdk.py"
    sdk.write_text("X = 1\n")
    tree, tid = mpbuild.source_tree(src, tmp_path)
    assert (tree / "py" / "mpconfig.h").is_file() and tid.startswith("tarball:")
    mods, files = mpbuild.frozen_sources("unix32", extra=[sdk])
    make = [*mpbuild.COMMON_MAKE, *mpbuild.TARGETS["unix32"]["make"]]
    out = tmp_path / "fw-unix32"
    out.mkdir()
    (out / "micropython").write_bytes(b"\x7fELF stand-in")
    (out / "stamp.json").write_text(json.dumps(mpbuild._stamp("unix32", tid, make, mods, files)))
    r = mpbuild.build("unix32", src, out_root=tmp_path, extra=[sdk], install=False)
    assert r["built"] is False and r["bytes"] == len(b"\x7fELF stand-in")
    sdk.write_text("X = 2\n")
    assert mpbuild._stamp("unix32", tid, make, mods, files) != json.loads(
        (out / "stamp.json").read_text())
