"""bridge.malloc: after a big fax, the daemon's memory goes back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# A 30 MB buffer freed, then a 20 MB one (the mail, then the document of the next fax):
# what is the process's RSS above its start once both are freed?
SCRIPT = textwrap.dedent("""
    import os, sys
    from bridge.malloc import release_big_blocks

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    if sys.argv[1] == "on":
        assert release_big_blocks(), "mallopt refused"
    start = rss()
    for size in (30_000_000, 20_000_000):
        block = os.urandom(size)
        del block
    print(rss() - start)
""")


def retained(mode: str, env: dict[str, str] | None = None) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, env=env, timeout=60)
    return int(out.stdout)


def test_big_freed_blocks_are_returned_to_the_system() -> None:
    assert retained("on") < 5_000_000


def test_without_it_glibc_keeps_the_second_block() -> None:
    # The control: this is the behaviour release_big_blocks() exists to stop.
    assert retained("off") > 15_000_000


def test_an_operator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.malloc import release_big_blocks

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert release_big_blocks() is False
