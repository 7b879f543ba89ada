"""fence.runtime.read_cache / write_cache: the one typed reader every cache goes through.

A cache steers sandboxes (seccomp programs, exec masks, probe answers), so a
file that is not plainly ours, or does not decode as what the caller expects,
must read as "nothing cached", never as an error and never as data.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading

import msgspec
import pytest

from conftest import session_dir
from fence.runtime import read_cache, write_cache


class Entry(msgspec.Struct):
    name: str
    count: int


@pytest.fixture
def cache():
    path = session_dir("fence-cache-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_round_trip_is_typed_private_and_atomic(cache):
    path = str(cache / "sub" / "entry.json")
    write_cache(path, Entry(name="a", count=2))
    assert read_cache(path, Entry) == Entry(name="a", count=2)
    assert read_cache(path, list[Entry]) is None  # decodes, but not as that type
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache / "sub").st_mode) == 0o700
    assert os.listdir(cache / "sub") == ["entry.json"]  # no temporary file left behind
    write_cache(path, [Entry(name="b", count=3)])
    assert read_cache(path, list[Entry]) == [Entry(name="b", count=3)]


def test_bytes_are_the_file_as_it_is(cache):
    path = str(cache / "program.bpf")
    write_cache(path, b"\x00\x01not json")
    assert read_cache(path, bytes) == b"\x00\x01not json"
    assert read_cache(path, Entry) is None


def test_nothing_to_trust_reads_as_none(cache):
    good = msgspec.json.encode(Entry(name="a", count=1))
    assert read_cache("", Entry) is None
    assert read_cache(str(cache / "absent.json"), Entry) is None
    (cache / "broken.json").write_bytes(b"{not json")
    os.chmod(cache / "broken.json", 0o600)
    assert read_cache(str(cache / "broken.json"), Entry) is None
    (cache / "big.json").write_bytes(good)
    assert read_cache(str(cache / "big.json"), Entry, max_size=len(good) - 1) is None
    assert read_cache(str(cache / "big.json"), Entry, max_size=len(good)) == Entry(name="a", count=1)
    for mode in (0o620, 0o602):  # writable by the group or by others: anyone could have planted it
        os.chmod(cache / "big.json", mode)
        assert read_cache(str(cache / "big.json"), Entry) is None
    os.chmod(cache / "big.json", 0o644)
    assert read_cache(str(cache / "big.json"), Entry) is not None  # readable by others is fine
    os.symlink(cache / "big.json", cache / "link.json")
    assert read_cache(str(cache / "link.json"), Entry) is None  # a link is never followed
    (cache / "dir.json").mkdir()
    assert read_cache(str(cache / "dir.json"), bytes) is None


def test_a_planted_fifo_neither_blocks_nor_reads(cache):
    os.mkfifo(cache / "fifo.json", 0o600)
    result = []
    reader = threading.Thread(target=lambda: result.append(read_cache(str(cache / "fifo.json"), bytes)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock it before failing
        with open(cache / "fifo.json", "wb"):
            pass
        reader.join(5)
        pytest.fail("read_cache blocked on a FIFO")
    assert result == [None]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_a_file_of_another_user_is_not_trusted(cache):
    path = cache / "theirs.json"
    path.write_bytes(msgspec.json.encode(Entry(name="x", count=0)))
    os.chmod(path, 0o600)
    os.chown(path, 65534, 65534)
    assert read_cache(str(path), Entry) is None


def test_a_cache_that_cannot_be_written_is_no_error(cache):
    (cache / "blocker").write_text("a file where the directory should be")
    write_cache(str(cache / "blocker" / "sub" / "entry.json"), Entry(name="a", count=1))
    assert read_cache(str(cache / "blocker" / "sub" / "entry.json"), Entry) is None
