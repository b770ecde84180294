"""Where edgemeter's tools read the firmware sources and where they write what they make.

FIRMWARE_SRC  the firmware_py package's folder wherever it is installed: a checkout's
              firmware_py/ under an editable install, site-packages/firmware_py under a wheel.
              mpy-cross compiles these files and MicroPython imports them (MICROPYPATH =
              FIRMWARE_SRC.parent), so no tool needs the source checkout.
build_dir()   ./build of the current directory: the default place for everything the tools
              make (compiled firmware and its manifest, ROMFS images, benchmark scratch
              folders); a command's --out flag names another. Never beside the installed code:
              site-packages is not the user's and may be read-only. `bash tools/dev.sh` runs
              from the checkout's root, so there it is the checkout's build/.
"""
from __future__ import annotations

from pathlib import Path

import firmware_py

FIRMWARE_SRC = Path(firmware_py.__file__).resolve().parent


def build_dir(*parts: str) -> Path:
    """<current directory>/build/<parts...> as an absolute path (not created)."""
    return Path.cwd().joinpath("build", *parts)
