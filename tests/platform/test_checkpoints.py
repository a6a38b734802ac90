"""Taking in a checkpoint: only real RF-DETR checkpoints pass, loaded with weights_only, within a
size and a time cap; refusals carry neither the file's hash nor its size."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch

from detrforge.platform.checkpoints import staged_checkpoint
from detrforge.platform.errors import InvalidSpecError

NOT_A_CHECKPOINT = "checkpoint: not an RF-DETR checkpoint"


def _stage(path: Path, workdir: Path, *, max_bytes: int = 2**31, timeout_s: float = 60) -> str:
    """The refusal message for ``path``, after checking the private copy was cleaned up."""
    with pytest.raises(InvalidSpecError) as info:
        with staged_checkpoint(
            str(path), workdir, max_bytes=max_bytes, timeout_s=timeout_s, field="checkpoint"
        ):
            pass
    assert info.value.field == "checkpoint"
    assert list(workdir.iterdir()) == []
    return info.value.message


class _Exploit:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("touch /tmp/detrforge-pwned",))


def test_real_checkpoint_is_copied_hashed_and_read(nano_checkpoint: Path, tmp_path: Path) -> None:
    expected = hashlib.sha256(nano_checkpoint.read_bytes()).hexdigest()
    with staged_checkpoint(
        str(nano_checkpoint), tmp_path, max_bytes=2**31, timeout_s=60, field="checkpoint"
    ) as staged:
        assert staged.sha256 == expected
        assert staged.size == nano_checkpoint.stat().st_size
        assert staged.class_names == ["square", "circle"]
        assert staged.path.parent == tmp_path and staged.path != nano_checkpoint
        assert hashlib.sha256(staged.path.read_bytes()).hexdigest() == expected
    assert not staged.path.exists()


def test_rfdetr_namespace_args_are_admitted(nano_checkpoint: Path, tmp_path: Path) -> None:
    import argparse

    data = torch.load(nano_checkpoint, map_location="cpu", weights_only=False)
    data["args"] = argparse.Namespace(**data["args"])  # how rfdetr's own training saves them
    legacy = tmp_path / "legacy.pth"
    torch.save(data, legacy)
    with staged_checkpoint(
        str(legacy), tmp_path / "w", max_bytes=2**31, timeout_s=60, field="checkpoint"
    ) as staged:
        assert staged.class_names == ["square", "circle"]


def _files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "shadow": b"root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\ndaemon:*:19000::::::\n",
        "admin_key": b"dfk_" + b"a" * 40,
        "environ": b"PATH=/usr/bin\x00AWS_SECRET_ACCESS_KEY=abc\x00",
        "random": os.urandom(4096),
        "empty": b"",
    }
    files = {}
    for name, content in made.items():
        files[name] = tmp_path / name
        files[name].write_bytes(content)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "no_model.pth")
    torch.save({"model": {"layer.weight": torch.zeros(3)}}, tmp_path / "no_head.pth")
    torch.save({"model": {"class_embed.bias": torch.zeros(3), "x": "str"}}, tmp_path / "str.pth")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with open(tmp_path / "exploit.pth", "wb") as handle:
        pickle.dump({"model": _Exploit()}, handle)
    for name in ("no_model", "no_head", "str", "list", "exploit"):
        files[name] = tmp_path / f"{name}.pth"
    return files


def test_anything_else_is_refused_without_hash_or_size(tmp_path: Path) -> None:
    sources = tmp_path / "src"
    sources.mkdir()
    for name, path in _files(sources).items():
        message = _stage(path, tmp_path / "work")
        assert message.startswith(NOT_A_CHECKPOINT), (name, message)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest not in message and digest[:12] not in message
        assert str(path.stat().st_size) not in message.replace("RF-DETR", "")
    assert not Path("/tmp/detrforge-pwned").exists()


def test_size_cap_is_checked_before_reading(nano_checkpoint: Path, tmp_path: Path) -> None:
    size = nano_checkpoint.stat().st_size
    message = _stage(nano_checkpoint, tmp_path / "work", max_bytes=size - 1)
    assert "max_checkpoint_bytes" in message and str(size) not in message
    with staged_checkpoint(
        str(nano_checkpoint), tmp_path / "work", max_bytes=size, timeout_s=60, field="checkpoint"
    ) as staged:
        assert staged.size == size


def test_time_cap(nano_checkpoint: Path, tmp_path: Path) -> None:
    message = _stage(nano_checkpoint, tmp_path / "work", timeout_s=1e-9)
    assert "took longer than" in message


def test_missing_file_inside_a_root_is_named(tmp_path: Path) -> None:
    message = _stage(tmp_path / "nothing.pth", tmp_path / "work")
    assert message == f"checkpoint: {tmp_path / 'nothing.pth'} does not exist or is not a file"
    assert _stage(tmp_path, tmp_path / "work").endswith("does not exist or is not a file")
