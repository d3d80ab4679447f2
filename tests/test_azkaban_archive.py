"""Safe project loading from zips and tarballs: unsafe entries are refused with the entry named,
nothing is ever written outside the private temporary directory, limits hold."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest

from airflow_ml_provider.azkaban.archive import (
    ArchiveError,
    ArchiveLimits,
    extract_archive,
    list_project_files,
    open_project_archive,
)
from airflow_ml_provider.azkaban.loader import ProjectLoadError, load_project

FLOW = b"nodes:\n  - name: a\n    type: command\n    config:\n      command: bash run.sh\n"
PROJECT = b"azkaban-flow-version: 2.0\n"


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Point tempfile at a directory we can inspect, to prove temp dirs are removed."""
    d = tmp_path / "tmpdirs"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def tar_info(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    return info


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------- good archives
def test_zip_project_with_single_top_folder_and_mac_junk(tmp_path, private_tmp):
    z = make_zip(
        tmp_path / "proj.zip",
        [
            ("proj/", b""),
            ("proj/basic.flow", FLOW),
            ("proj/flow20.project", PROJECT),
            ("proj/run.sh", b"echo hi\n"),
            ("proj/lib/tool.jar", b"PK-jar"),
            ("__MACOSX/proj/._run.sh", b"\x00\x05\x16\x07junk"),
            ("proj/___azkaban_project_dir_size_in_bytes___", b"123"),
        ],
    )
    project = load_project(z)
    assert project.name == "proj"
    assert project.errors == []
    assert list(project.flows) == ["basic"]
    assert project.resource_files == ["lib/tool.jar", "run.sh"]
    root = project.root
    assert (root / "run.sh").read_bytes() == b"echo hi\n"
    assert (root / "lib" / "tool.jar").read_bytes() == b"PK-jar"
    assert not (root / "__MACOSX").exists()
    assert len(list(private_tmp.iterdir())) == 1
    project.close()
    assert not root.exists()
    assert list(private_tmp.iterdir()) == []


def test_tarball_project(tmp_path, private_tmp):
    t = make_tar(
        tmp_path / "proj.tar.gz",
        [
            (tar_info("./", tarfile.DIRTYPE), None),
            (tar_info("./a.job"), b"type=command\ncommand=echo a\n"),
            (tar_info("./b.job"), b"type=noop\ndependencies=a\n"),
            (tar_info("./shared.properties"), b"retries=2\n"),
            (tar_info("./bin/x.sh"), b"echo x\n"),
        ],
    )
    with load_project(t) as project:
        assert project.name == "proj"
        assert project.flow_version == "1.0"
        assert project.errors == []
        assert list(project.flows) == ["b"]
        assert project.jobs["a"].get("retries") == "2"
        # resources (and .properties, which scripts may read) are on disk; .job files are read in memory
        assert all_files(project.root) == {"bin", "bin/x.sh", "shared.properties"}
        assert project.resource_files == ["bin/x.sh", "shared.properties"]
    assert list(private_tmp.iterdir()) == []


def test_extract_archive_writes_everything(tmp_path):
    z = make_zip(tmp_path / "p.zip", [("top/a.job", b"type=noop\n"), ("top/d/r.txt", b"r")])
    root = extract_archive(z, tmp_path / "out")
    assert root == (tmp_path / "out").resolve()
    assert all_files(root) == {"a.job", "d", "d/r.txt"}


def test_two_top_level_entries_are_not_stripped(tmp_path):
    z = make_zip(tmp_path / "p.zip", [("a/x.job", b"type=noop\n"), ("b.job", b"type=noop\n")])
    files = open_project_archive(z, tmp_path / "out")
    assert files.files == ["a/x.job", "b.job"]


# ------------------------------------------------------------------------------ unsafe entries
@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../evil.txt", "'..' not allowed"),
        ("proj/../../evil.txt", "'..' not allowed"),
        ("..\\evil.txt", "'..' not allowed"),
        ("/tmp/evil.txt", "absolute path"),
        ("\\evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
    ],
)
def test_zip_path_traversal_is_refused(tmp_path, private_tmp, entry, reason):
    z = make_zip(tmp_path / "bad.zip", [("ok.job", b"type=noop\n"), (entry, b"pwned")])
    with pytest.raises(ArchiveError) as err:
        load_project(z)
    assert err.value.entry == entry
    assert reason in str(err.value) and repr(entry) in str(err.value) and "bad.zip" in str(err.value)
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil.txt").exists() or Path("/tmp/evil.txt").read_bytes() != b"pwned"
    assert list(private_tmp.iterdir()) == []  # nothing written, temp dir removed


def test_zip_symlink_is_refused(tmp_path, private_tmp):
    info = zipfile.ZipInfo("proj/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = make_zip(tmp_path / "ln.zip", [("proj/a.job", b"type=noop\n"), (info, b"/etc/passwd")])
    with pytest.raises(ArchiveError, match=r"entry 'proj/link': symbolic links are not allowed"):
        load_project(z)
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (tar_info("link", tarfile.SYMTYPE, "/etc/passwd"), "links are not allowed"),
        (tar_info("hard", tarfile.LNKTYPE, "a.job"), "links are not allowed"),
        (tar_info("fifo", tarfile.FIFOTYPE), "only regular files and directories"),
        (tar_info("dev", tarfile.CHRTYPE), "only regular files and directories"),
        (tar_info("../up.job"), "'..' not allowed"),
        (tar_info("/abs.job"), "absolute path"),
    ],
)
def test_tar_unsafe_members_are_refused(tmp_path, private_tmp, member, match):
    t = make_tar(tmp_path / "bad.tar", [(tar_info("a.job"), b"type=noop\n"), (member, None)], mode="w")
    with pytest.raises(ArchiveError, match=match) as err:
        load_project(t)
    assert err.value.entry == member.name
    assert not (tmp_path / "up.job").exists()
    assert list(private_tmp.iterdir()) == []


def test_size_limit(tmp_path, private_tmp):
    big = b"\0" * (2 << 20)  # 2 MiB of zeros: a few KiB compressed
    z = make_zip(tmp_path / "bomb.zip", [("a.job", b"type=noop\n"), ("data/zeros.bin", big)])
    assert z.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match=r"entry 'data/zeros.bin': archive expands past the size limit"):
        load_project(z, limits=ArchiveLimits(max_total_bytes=1 << 20))
    assert list(private_tmp.iterdir()) == []
    # under a larger limit it loads
    with load_project(z, limits=ArchiveLimits(max_total_bytes=4 << 20)) as p:
        assert (p.root / "data" / "zeros.bin").stat().st_size == len(big)


def test_size_limit_holds_when_the_header_lies(tmp_path):
    """A zip whose directory under-states the size must not expand past the limit."""
    big = b"\0" * (3 << 20)
    z = make_zip(tmp_path / "liar.zip", [("zeros.bin", big)])
    raw = bytearray(z.read_bytes())
    # patch the uncompressed size in the local header (offset 22) and the central directory (offset 24)
    struct.pack_into("<I", raw, 22, 10)
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 10)
    z.write_bytes(bytes(raw))
    out = tmp_path / "out"
    with pytest.raises(ArchiveError):
        open_project_archive(z, out, ArchiveLimits(max_total_bytes=1 << 20))
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert written <= 1 << 20


def test_file_count_limit(tmp_path):
    z = make_zip(tmp_path / "many.zip", [(f"f{i}.txt", b"x") for i in range(50)])
    with pytest.raises(ArchiveError, match="50 entries, more than the limit of 20"):
        open_project_archive(z, tmp_path / "out", ArchiveLimits(max_files=20))
    assert not any((tmp_path / "out").iterdir())


def test_duplicate_and_conflicting_entries(tmp_path):
    with pytest.warns(UserWarning):
        z = make_zip(tmp_path / "dup.zip", [("a.job", b"type=noop\n"), ("a.job", b"type=command\n")])
    with pytest.raises(ArchiveError, match="entry 'a.job': duplicate entry"):
        open_project_archive(z, tmp_path / "o1")
    z2 = make_zip(tmp_path / "conf.zip", [("x", b"file"), ("x/y.job", b"type=noop\n")])
    with pytest.raises(ArchiveError, match="both a file and a directory"):
        open_project_archive(z2, tmp_path / "o2")


def test_encrypted_entry_is_refused(tmp_path):
    z = make_zip(tmp_path / "enc.zip", [("secret.job", b"type=noop\n")])
    raw = bytearray(z.read_bytes())
    raw[6] |= 0x1  # general-purpose flag bit 0 (encrypted): local header ...
    raw[raw.rfind(b"PK\x01\x02") + 8] |= 0x1  # ... and central directory
    z.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="encrypted"):
        open_project_archive(z, tmp_path / "out")


def test_not_an_archive(tmp_path, private_tmp):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ArchiveError, match="broken.zip: not a readable archive"):
        load_project(bad)
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    with pytest.raises(ProjectLoadError, match="not a project directory"):
        load_project(plain)
    with pytest.raises(ProjectLoadError, match="no such file or directory"):
        load_project(tmp_path / "missing")
    assert list(private_tmp.iterdir()) == []


def test_directory_project_with_symlink_is_refused(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "a.job").write_text("type=noop\n")
    os.symlink("/etc", proj / "etc-link")
    with pytest.raises(ArchiveError, match=r"entry 'etc-link': symbolic links are not allowed"):
        load_project(proj)
    os.unlink(proj / "etc-link")
    os.symlink(proj / "a.job", proj / "b.job")
    with pytest.raises(ArchiveError, match=r"entry 'b.job'"):
        list_project_files(proj)


def test_directory_listing_skips_mac_junk(tmp_path):
    proj = tmp_path / "p"
    (proj / "__MACOSX").mkdir(parents=True)
    (proj / "__MACOSX" / "._a.job").write_text("junk")
    (proj / "a.job").write_text("type=noop\n")
    (proj / "___azkaban_project_dir_size_in_bytes___").write_text("1")
    assert list_project_files(proj) == ["a.job"]


# ------------------------------------------------------------------------ bombs (issue 10, point 10)
def _gzip_tar_bomb(path: Path, member: str, size: int, chunk: int = 1 << 20) -> Path:
    """A real ``.tar.gz`` whose one member holds ``size`` zero bytes, written in well under a second.

    gzip-ing 20 GB of zeros would take a minute, so the deflate stream is built from one block:
    ``chunk`` zeros compressed then flushed with Z_FULL_FLUSH (which resets the compressor), so the
    same bytes stand for every further ``chunk`` of zeros and are simply repeated. The gzip
    trailer's CRC is not computed (a reader only checks it at the very end of the stream, which a
    refused archive never reaches); the sizes and the deflate data are exact.
    """
    info = tarfile.TarInfo(member)
    info.size = size
    info.mode = 0o644
    header = info.tobuf(format=tarfile.PAX_FORMAT)  # sizes past 8 GiB need a PAX header
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    with path.open("wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header, no name, no mtime
        out.write(comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH))
        block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
        again = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
        assert again == block  # the compressor state really is reset by each full flush
        n, rest = divmod(size, chunk)
        for _ in range(n - 2):  # two chunks were compressed above already
            out.write(block)
        tail = bytes(rest) + bytes(-size % 512) + bytes(1024)  # member padding, end-of-archive
        out.write(comp.compress(tail) + comp.flush())
        out.write(struct.pack("<II", 0, (len(header) + size + len(tail) - rest) & 0xFFFFFFFF))
    return path


def test_tar_gz_bomb_of_20_gb_is_refused_at_its_header(tmp_path, private_tmp, capsys):
    """A 21 MB .tar.gz expanding to 20 GB: refused in well under 5 s (was 75 s), archive and entry named."""
    import time

    from airflow_ml_provider.cli import main as cli_main

    size = 20 * 1000**3
    bomb = _gzip_tar_bomb(tmp_path / "bomb.tar.gz", "proj/data/zeros.bin", size)
    assert 15e6 < bomb.stat().st_size < 30e6  # about 21 MB on disk
    started = time.monotonic()
    with pytest.raises(ArchiveError) as err:
        load_project(bomb)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert err.value.entry == "proj/data/zeros.bin"
    assert "bomb.tar.gz" in str(err.value) and f"declares {size} bytes" in str(err.value)
    assert list(private_tmp.iterdir()) == []

    # the migrate command: exit 1, one line naming the archive and the entry, no DAG written
    started = time.monotonic()
    rc = cli_main(["azkaban", "migrate", str(bomb), "--out", str(tmp_path / "dags")])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert rc != 0 and elapsed < 5
    assert "bomb.tar.gz" in captured.err and "zeros.bin" in captured.err
    assert "Traceback" not in captured.err
    assert not list((tmp_path / "dags").glob("*.py")) if (tmp_path / "dags").exists() else True


def test_tar_total_size_limit_stops_reading_at_the_entry_that_passes_it(tmp_path):
    """Many members each under the per-entry limit: the entry that passes the total is named and
    nothing after it is read or written."""
    members = [(tar_info(f"p/z{i:02d}.bin"), bytes(1 << 20)) for i in range(40)]  # 40 x 1 MiB
    t = make_tar(tmp_path / "many.tar.gz", [(tar_info("p/a.job"), b"type=noop\n"), *members])
    out = tmp_path / "out"
    limits = ArchiveLimits(max_total_bytes=8 << 20, max_member_bytes=2 << 20)
    with pytest.raises(ArchiveError, match=r"entry 'p/z07.bin': archive expands past the size limit"):
        open_project_archive(t, out, limits)
    written = sorted(p.name for p in out.rglob("*.bin"))
    assert written == [f"z{i:02d}.bin" for i in range(7)]  # z07 and later never written


def test_per_entry_size_limit(tmp_path):
    t = make_tar(
        tmp_path / "one.tar", [(tar_info("a.job"), b"type=noop\n"), (tar_info("big.bin"), bytes(3 << 20))]
    )
    with pytest.raises(
        ArchiveError, match=r"entry 'big.bin': entry declares 3145728 bytes, past the size limit"
    ):
        open_project_archive(t, tmp_path / "o1", ArchiveLimits(max_member_bytes=1 << 20))
    z = make_zip(tmp_path / "one.zip", [("a.job", b"type=noop\n"), ("big.bin", bytes(3 << 20))])
    with pytest.raises(ArchiveError, match=r"entry 'big.bin': entry declares 3145728 bytes"):
        open_project_archive(z, tmp_path / "o2", ArchiveLimits(max_member_bytes=1 << 20))
    assert not (tmp_path / "o2" / "big.bin").exists()  # a zip is checked in full before writing


def test_tar_entry_count_limit_while_streaming(tmp_path):
    t = make_tar(tmp_path / "many.tar.gz", [(tar_info(f"f{i}.txt"), b"x") for i in range(50)])
    out = tmp_path / "out"
    with pytest.raises(
        ArchiveError, match=r"entry 'f20.txt': archive holds more than the limit of 20 entries"
    ):
        open_project_archive(t, out, ArchiveLimits(max_files=20))
    assert len(list(out.iterdir())) == 20  # stopped at the 21st entry


def test_single_top_folder_holding_a_folder_of_the_same_name(tmp_path):
    t = make_tar(
        tmp_path / "nested.tar.gz",
        [(tar_info("proj/proj/run.sh"), b"echo hi\n"), (tar_info("proj/a.job"), b"type=noop\n")],
    )
    files = open_project_archive(t, tmp_path / "out")
    assert files.files == ["a.job", "proj/run.sh"]
    assert (tmp_path / "out" / "proj" / "run.sh").read_bytes() == b"echo hi\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["proj"]
