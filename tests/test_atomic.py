"""Atomic writes: the old file survives a failed write; the new file is complete and readable."""
import os
import stat

import pytest

from trainer.util.atomic import atomic_write


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
    from trainer.util import atomic
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, lambda fh: fh.write(b"new"))
    atomic_write(target, lambda fh: fh.write(b"newer"), fsync=False)
    assert target.read_bytes() == b"newer"
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~atomic._UMASK  # the umask decides, not mkstemp's 0600
    assert atomic._UMASK == os.umask(atomic._UMASK)  # the process umask was left as it was
