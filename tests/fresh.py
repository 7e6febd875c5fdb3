"""A fresh interpreter for the tests that ask what a process imports (as a CLI call starts from nothing)."""
import subprocess
import sys


def fresh_python(code: str) -> str:
    """The stripped stdout of `code` run by a new Python interpreter; raises where it fails."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
