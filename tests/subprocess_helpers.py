"""Running ``vmemcore`` in a subprocess, with stderr a pipe or a pseudo-terminal."""

import os
import pty
import subprocess
import sys


def vmemcore(*argv, stderr=subprocess.PIPE, cwd=None):
    """``vmemcore ARGV`` with this interpreter: the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-c", "import sys; from vmemcore.cli import main; sys.exit(main())", *argv],
                          stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd, timeout=300)


def on_a_terminal(*argv):
    """``(CompletedProcess, stderr text)`` of ``vmemcore ARGV`` whose stderr is a pseudo-terminal."""
    leader, follower = pty.openpty()
    try:
        result = vmemcore(*argv, stderr=follower)
        os.close(follower)
        follower = None
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return result, b"".join(chunks).decode(errors="replace")
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
