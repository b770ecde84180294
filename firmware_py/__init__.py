"""edgemeter's runtime-neutral core (MicroPython and CPython) and the MicroPython device shell.

Modules here import only what MicroPython has (struct, hashlib, binascii, sys, time, os, gc,
socket in the shell). The core does no I/O: bytes, integers and `now` in; results and bytes out.
"""

VERSION = "0.1.0"   # the firmware's version, as devices report it (proto FIRMWARE); = pyproject's
