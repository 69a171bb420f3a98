"""Atomic writes: the old file survives a failed write; the new file is complete and readable."""
import os
import stat

import pytest

from trainer.atomic import atomic_write


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.allmodel"
    target.write_bytes(b"old model")

    def broken(fh):
        fh.write(b"half of a new mod")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.allmodel"]


def test_new_file_replaces_old_with_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda fh: fh.write(b"new"))
        atomic_write(target, lambda fh: fh.write(b"newer"), fsync=False)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"newer"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
