"""The session's leak check (``leakcheck.py``) fails a run that leaves something behind.

A nested pytest session runs a throwaway test that leaks a directory and a
sleeping process that left its parent (an orphan, like a daemon: found by the
session's marker, not by ancestry), next to a clean test.  The nested run must
fail, name both leftovers and the test that made them, and remove them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from leftovers import Marks, find

TESTS = Path(__file__).resolve().parent

LEAKY = """
import os
import subprocess

from leakcheck import session_dir


def test_leaves_a_directory_and_a_process():
    where = session_dir("leaky-")
    pid = subprocess.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                         check=True).stdout.strip()
    with open(os.environ["LEAK_NOTE"], "w") as f:
        f.write(f"{where} {pid}")


def test_clean(tmp_path):
    (tmp_path / "pytest-keeps-this").write_text("tmp_path is pytest's to remove, not a leak")
"""


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_a_leaking_test_fails_the_run_names_what_it_left_and_it_is_removed(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    note = tmp_path / "note"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "LEAK_NOTE": str(note)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "leakcheck", "-p", "no:cacheprovider", "test_leaky.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert note.exists(), r.stdout + r.stderr
    where, pid = note.read_text().split()
    try:
        assert r.returncode == 1, r.stdout + r.stderr
        out = r.stdout
        assert "left behind by this session (now removed)" in out, out
        assert f"path {where}/\n" in out, out
        assert f"process pid {pid} [" in out and "sleep 600" in out, out
        assert out.count("first seen after test_leaky.py::test_leaves_a_directory_and_a_process") == 2, out
        assert "test_clean" not in out and "pytest-keeps-this" not in out, out
        assert "2 passed, 2 left behind" in out, out
        assert b"sleep" not in _cmdline(pid)  # killed
        session_root = Path(where).parent
        assert session_root.name.startswith("fence-tests-") and not session_root.exists()
        assert not Path("/tmp", session_root.name).exists()
    finally:
        if b"sleep" in _cmdline(pid):
            os.kill(int(pid), 9)


def test_a_clean_session_passes(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_clean.py").write_text("def test_nothing(tmp_path):\n    (tmp_path / 'f').write_text('x')\n")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "leakcheck", "-p", "no:cacheprovider", "test_clean.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "left behind" not in r.stdout, r.stdout + r.stderr


def test_another_sessions_things_are_not_ours(tmp_path):
    """Sessions side by side: what carries another session's token is never counted as this one's."""
    mine = Marks(
        "fence-tests-aaaa1111", "aaaa1111", (str(tmp_path / "fence-tests-aaaa1111"),), pid=1 << 30
    )  # an ancestor of nothing: only the marker decides
    other_root = tmp_path / "fence-tests-bbbb2222"
    other_root.mkdir()
    (other_root / "theirs").mkdir()
    proc = subprocess.Popen(
        ["sleep", "30"],
        cwd=other_root,
        start_new_session=True,
        env={"PATH": os.environ["PATH"], "FENCE_TEST_SESSION": "fence-tests-bbbb2222"},
    )
    try:
        left = find(mine)
        assert not [item for item in left if str(proc.pid) in item.ident], left
        assert not [item for item in left if "theirs" in item.ident], left
    finally:
        proc.kill()
        proc.wait()
