"""The async handle (VolumeFsHandle) under asyncio and trio, over every backend factory."""

from __future__ import annotations

import errno
import inspect

import pytest

from conformance.support import BIG
from volfs.errors import VolfsError
from volfs.fs import VolumeFs, VolumeFsHandle
from volfs.pathfs import PathFs

pytestmark = pytest.mark.anyio


async def expect(code: int, awaitable: object) -> VolfsError:
    with pytest.raises(VolfsError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.errno == code, repr(info.value)
    return info.value


def test_alias_and_twin_signatures() -> None:
    assert VolumeFs is VolumeFsHandle
    # The blocking twin has every async method, with the same parameters.
    for name, member in inspect.getmembers(VolumeFsHandle):
        if name.startswith("_") or not inspect.iscoroutinefunction(member) or name in ("aclose",):
            continue
        twin = getattr(PathFs, name)
        assert list(inspect.signature(member).parameters) == list(inspect.signature(twin).parameters), name


async def test_reads(afs: VolumeFsHandle) -> None:
    assert await afs.read("hello.txt") == b"hello world\n"
    assert await afs.read_text("dir/a.txt") == "a"
    assert await afs.read_to_string("link-abs") == "a"
    assert await afs.exists("dir") and not await afs.exists("nope")
    st = await afs.stat("big.bin")
    assert st.kind == "file" and st.size == len(BIG)
    assert (await afs.lstat("link-rel")).kind == "symlink"
    assert [e.path for e in await afs.list("dir")] == ["/dir/a.txt", "/dir/hard", "/dir/nested"]
    assert await afs.readlink("link-dir") == "dir"
    assert await afs.glob("dir/**/*.txt") == ["/dir/a.txt", "/dir/nested/deep.txt"]
    assert await afs.du("dir", apparent=True) > 0
    assert await afs.getxattr("xattr.txt", "user.color") == b"blue"
    assert "user.color" in await afs.listxattr("xattr.txt")
    walked = [d async for d, _dirs, _files in afs.walk("/dir")]
    assert walked == ["/dir", "/dir/nested"]
    assert (await afs.statfs()).bsize > 0
    await expect(errno.ENOENT, afs.read("missing"))
    await expect(errno.EISDIR, afs.read("dir"))
    await expect(errno.ELOOP, afs.stat("loop1"))


async def test_read_stream(afs: VolumeFsHandle) -> None:
    stream = await afs.read_stream("big.bin", 300_000)
    chunks = [c async for c in stream]
    assert b"".join(chunks) == BIG and len(chunks) == 4
    async with await afs.read_stream("big.bin") as s:
        first = await s.recv()
        assert first == BIG[: 64 << 10]
        assert await s.collect() == BIG[64 << 10 :]
        assert await s.recv() is None
    await expect(errno.ENOENT, afs.read_stream("missing"))


async def test_open(afs: VolumeFsHandle) -> None:
    async with await afs.open("big.bin", "rb") as f:
        assert await f.read(4) == BIG[:4]
        await f.seek(100)
        assert await f.read(2) == BIG[100:102]
    if afs.readonly:
        await expect(errno.EROFS, afs.open("n", "w"))
        return
    async with await afs.open("n.txt", "w") as f:
        await f.write("text")
    assert await afs.read("n.txt") == b"text"


async def test_mutations(afs: VolumeFsHandle) -> None:
    if afs.readonly:
        for aw in (
            afs.write("x", b"1"),
            afs.mkdir("x"),
            afs.remove("hello.txt"),
            afs.remove_file("hello.txt"),
            afs.remove_dir("dir"),
            afs.copy("hello.txt", "x"),
            afs.rename("hello.txt", "x"),
            afs.symlink("a", "x"),
            afs.link("hello.txt", "x"),
            afs.chmod("hello.txt", 0o600),
            afs.chown("hello.txt", 1, 1),
            afs.utime("hello.txt"),
            afs.truncate("hello.txt", 0),
            afs.setxattr("hello.txt", "user.a", b"b"),
            afs.removexattr("xattr.txt", "user.color"),
        ):
            await expect(errno.EROFS, aw)
        await expect(errno.EROFS, afs.write_stream("x"))
        return
    await afs.write("a/b/c", b"123")
    assert await afs.read("a/b/c") == b"123"
    await afs.mkdir("m/n")
    await afs.copy("a/b/c", "m/n/c2")
    await afs.rename("m/n/c2", "m/c3")
    assert await afs.read("m/c3") == b"123"
    await afs.symlink("/m/c3", "l")
    await afs.link("m/c3", "h")
    assert (await afs.stat("h")).nlink == 2
    await afs.chmod("h", 0o600)
    await afs.chown("h", 5, 6)
    await afs.utime("h", ns=(1, 2))
    await afs.truncate("h", 1)
    assert await afs.read("l") == b"1"
    await afs.setxattr("h", "user.k", b"v")
    await afs.removexattr("h", "user.k")
    await afs.remove("l")
    await afs.remove_file("h")
    await afs.remove_dir("m")
    assert not await afs.exists("m")
    await expect(errno.EBUSY, afs.remove_dir("/"))
    await expect(errno.EINVAL, afs.rename("a", "a/b/into"))
    sink = await afs.write_stream("s")
    await sink.write(b"x")
    await sink.write(b"y")
    await sink.close()
    assert await afs.read("s") == b"xy"
    async with afs.write_stream("s2") as sink2:
        await sink2.write(b"z")
    assert await afs.read("s2") == b"z"
    with pytest.raises(KeyError):
        async with afs.write_stream("s2") as sink3:
            await sink3.write(b"lost")
            raise KeyError("boom")
    assert await afs.read("s2") == b"z"
    await afs.sync()


async def test_close(afs: VolumeFsHandle) -> None:
    async with afs:
        pass
    await expect(errno.EBADF, afs.read("hello.txt"))
