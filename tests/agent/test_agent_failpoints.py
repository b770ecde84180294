"""The agent's failpoints (agent/failpoints.py): a malformed EDGEMETER_FAILPOINTS is refused
at start with one line naming it; the kill -9 campaign (test_agent_kill9.py) uses the points."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from agent_harness import ROOT, write_config
from edgemeter.agent import failpoints


def test_specs_parse_or_name_what_is_wrong():
    assert failpoints.parse("") == {}
    assert failpoints.parse("append:3, publish:1") == {"append": 3, "publish": 1}
    for bad, words in (("apend:3", "unknown point 'apend'"), ("append:0", "whole number >= 1"),
                       ("append", "whole number >= 1"), ("append:x", "whole number >= 1")):
        with pytest.raises(failpoints.FailpointError, match=words):
            failpoints.parse(bad)


def test_a_malformed_spec_stops_the_agent_before_it_runs(tmp_path):
    cfg = write_config(tmp_path, SimpleNamespace(host="127.0.0.1", device_port=1), 4300, "pw")
    p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "agent", "--config", str(cfg), "--check"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "EDGEMETER_FAILPOINTS": "append:3,flush:1"})
    assert p.returncode == 2 and "unknown point 'flush'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
