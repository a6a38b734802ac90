"""The source policy: local paths only under data roots (after resolving symlinks and '..'),
s3:// only in allowed buckets, nothing else; a refusal never tells whether a path exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from detrforge.platform.errors import InvalidSpecError
from detrforge.platform.settings import Settings
from detrforge.platform.sources import SourcePolicy


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "ds").mkdir(parents=True)
    (folder / "ds" / "w.pth").write_bytes(b"x")
    return folder


@pytest.fixture
def policy(root: Path, tmp_path: Path) -> SourcePolicy:
    return SourcePolicy.build(
        roots=[root],
        s3_buckets=["allowed"],
        artifact_root=(tmp_path / "artifacts").as_uri(),
    )


def _refusal(policy: SourcePolicy, uri: str, field: str = "dataset") -> str:
    with pytest.raises(InvalidSpecError) as info:
        policy.check(uri, field=field)
    assert info.value.field == field
    assert info.value.code == "INVALID_SPEC"
    return info.value.message


def test_paths_under_a_root_are_admitted_in_canonical_form(
    policy: SourcePolicy, root: Path, tmp_path: Path
) -> None:
    assert policy.check(str(root / "ds"), field="dataset") == str(root / "ds")
    assert policy.check(str(root / "ds" / "w.pth"), field="checkpoint") == str(root / "ds/w.pth")
    # Missing files inside a root pass the policy: their absence is reported by the caller.
    assert policy.check(str(root / "new.pth"), field="x") == str(root / "new.pth")
    assert policy.check((root / "ds").as_uri(), field="dataset") == str(root / "ds")
    assert policy.check(f"file://localhost{root}/ds", field="dataset") == str(root / "ds")
    assert policy.check(f"{root}/ds/../ds/./w.pth", field="x") == str(root / "ds" / "w.pth")
    inside = tmp_path / "data" / "link"
    inside.symlink_to(root / "ds")
    assert policy.check(str(inside / "w.pth"), field="x") == str(root / "ds" / "w.pth")
    blob = (tmp_path / "artifacts" / "blobs" / "sha256" / ("a" * 64)).as_uri()
    assert policy.check(blob, field="checkpoint") == str(
        tmp_path / "artifacts" / "blobs" / "sha256" / ("a" * 64)
    )
    assert policy.check("s3://allowed/ds/train", field="dataset") == "s3://allowed/ds/train"


@pytest.mark.parametrize(
    ("existing", "missing"),
    [
        ("/etc/hostname", "/etc/no-such-file-7c1d"),
        ("/proc/self/environ", "/proc/self/no-such-entry"),
        ("/etc", "/no-such-folder-7c1d"),
    ],
)
def test_outside_the_roots_reads_the_same_whether_it_exists(
    policy: SourcePolicy, existing: str, missing: str
) -> None:
    assert os.path.exists(existing) and not os.path.exists(missing)
    first = _refusal(policy, existing, "checkpoint")
    second = _refusal(policy, missing, "checkpoint")
    assert first.replace(existing, "<path>") == second.replace(missing, "<path>")
    assert "not under a data root" in first and "DETRFORGE_DATA_ROOTS" in first
    assert _refusal(policy, f"file://{existing}").replace(existing, "<p>") == _refusal(
        policy, f"file://{missing}"
    ).replace(missing, "<p>")


def test_dot_dot_and_symlink_escapes_are_refused(
    policy: SourcePolicy, root: Path, tmp_path: Path
) -> None:
    assert "not under a data root" in _refusal(policy, f"{root}/../../../../../../etc/hostname")
    encoded = (root / "ds").as_uri() + "/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fhostname"
    assert "not under a data root" in _refusal(policy, encoded)
    (root / "etc").symlink_to("/etc")
    assert "not under a data root" in _refusal(policy, str(root / "etc" / "hostname"))
    (root / "shadow.pth").symlink_to("/etc/hostname")
    assert "not under a data root" in _refusal(policy, str(root / "shadow.pth"), "checkpoint")
    # A sibling whose name merely starts with the root's is not inside it.
    sibling = tmp_path / "data-evil"
    sibling.mkdir()
    assert "not under a data root" in _refusal(policy, str(sibling))


@pytest.mark.parametrize(
    "uri",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://example.com/weights.pth",
        "hf://roboflow/rf-detr-nano",
        "ftp://example.com/ds",
        "169.254.169.254/latest",
        "relative/path/ds",
        "file://remotehost/etc/hostname",
        "file:relative.pth",
        "gs://bucket/ds",
        "/data/ds\x00.pth",
        "",
    ],
)
def test_other_schemes_and_relative_paths_are_refused(policy: SourcePolicy, uri: str) -> None:
    message = _refusal(policy, uri, "pretrain_weights")
    assert message.startswith("pretrain_weights:")


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("s3://other-bucket/ds", "in a bucket this server does not read from (allowed: allowed)"),
        ("s3://allowed-not/ds", "in a bucket this server does not read from (allowed: allowed)"),
        ("s3:///ds", "is not a source this server reads"),
        ("s3://allowed/ds?versionId=1", "is not a source this server reads"),
        ("s3://allowed/../x", "not under a data root"),
    ],
)
def test_s3_only_in_allowed_buckets(policy: SourcePolicy, uri: str, fragment: str) -> None:
    assert fragment in _refusal(policy, uri)


def test_s3_artifact_root_is_admitted_without_listing_its_bucket() -> None:
    policy = SourcePolicy.build(roots=[], s3_buckets=[], artifact_root="s3://art/prefix/")
    assert policy.check("s3://art/prefix/blobs/sha256/x", field="c") == (
        "s3://art/prefix/blobs/sha256/x"
    )
    assert "allowed: none" in _refusal(policy, "s3://art/other/x")
    assert "not under a data root" in _refusal(policy, "/etc/hostname")


def test_settings_parse_roots_and_buckets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETRFORGE_DATA_ROOTS", f"{tmp_path}/a{os.pathsep}{tmp_path}/b, /srv/c")
    monkeypatch.setenv("DETRFORGE_S3_BUCKETS", "one, two")
    monkeypatch.setenv("DETRFORGE_MAX_CHECKPOINT_BYTES", "1000")
    settings = Settings(home=tmp_path / "home")
    assert settings.resolved_data_roots() == (tmp_path / "a", tmp_path / "b", Path("/srv/c"))
    assert settings.resolved_s3_buckets() == frozenset({"one", "two"})
    assert settings.max_checkpoint_bytes == 1000


def test_settings_defaults_are_home_cwd_and_the_artifact_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DETRFORGE_DATA_ROOTS", "DETRFORGE_S3_BUCKETS", "DETRFORGE_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings(home=tmp_path / "home")
    assert settings.resolved_data_roots() == ((tmp_path / "home").resolve(), tmp_path.resolve())
    assert settings.resolved_s3_buckets() == frozenset()
    assert settings.max_checkpoint_bytes == 2 * 1024**3
    on_s3 = Settings(home=tmp_path / "home", artifact_root="s3://art-bucket/detrforge")
    assert on_s3.resolved_s3_buckets() == frozenset({"art-bucket"})
