"""A full disk while the beam image copies its kernel is one line naming where and what to do, not a
traceback. ``/dev/full`` is the kernel's own full disk: every write to it fails with ENOSPC."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ImageError
from pipeline.images.beam import copy_file


def test_copying_onto_a_full_disk_is_one_line_with_a_hint(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz-6.1.0-28-cloud-amd64"
    kernel.write_bytes(b"MZ" * 4096)
    with pytest.raises(ImageError) as err:
        copy_file(kernel, Path("/dev/full"), "the kernel")
    line = str(err.value)
    assert line.startswith("no space left on the disk of /dev while copying the kernel (vmlinuz-6.1.0-28")
    assert "(hint: free some space there (df -h /dev), then run invoke build again)" in line
    assert "\n" not in line


def test_other_write_errors_name_the_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        copy_file(tmp_path / "missing", tmp_path / "out", "the kernel")
    assert f"cannot copy the kernel {tmp_path / 'missing'} to {tmp_path / 'out'}: No such file" in str(
        err.value
    )
