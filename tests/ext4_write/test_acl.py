"""POSIX ACL xattrs written in ext4's on-disk format; the kernel (getfacl, getxattr) reads them back."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check, debugfs, images
from testsupport import need_root
from volfs.backend import Ino, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError

ROOT = Ino(2)
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 1, 2, 4, 8, 0x10, 0x20
ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

FILE_ACL = [(USER_OBJ, 6, 0xFFFFFFFF), (USER, 4, 1000), (USER, 6, 1001), (GROUP_OBJ, 4, 0xFFFFFFFF),
            (GROUP, 5, 2000), (MASK, 6, 0xFFFFFFFF), (OTHER, 0, 0xFFFFFFFF)]
DIR_DEFAULT = [(USER_OBJ, 7, 0xFFFFFFFF), (USER, 5, 1234), (GROUP_OBJ, 5, 0xFFFFFFFF), (MASK, 5, 0xFFFFFFFF),
               (OTHER, 1, 0xFFFFFFFF)]


def _getfacl(path: Path) -> str:
    tool = shutil.which("getfacl")
    if tool is None:
        pytest.skip("getfacl (Debian package acl) is not installed")
    out = subprocess.run([tool, "-n", "--omit-header", "--", str(path)], capture_output=True, text=True, check=True)
    return out.stdout


def test_acls_are_stored_as_the_kernel_stores_them(make_image: Callable[..., Path]) -> None:
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    fh, f = b.create(ROOT, b"file", 0o640, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    d = b.mkdir(ROOT, b"dir", 0o755, 0, 0)
    b.setxattr(f.ino, ACCESS, images.acl_xattr(FILE_ACL))
    b.setxattr(d.ino, DEFAULT, images.acl_xattr(DIR_DEFAULT))
    b.setxattr(d.ino, ACCESS, images.acl_xattr(DIR_DEFAULT))
    # Equivalent to the mode bits: only the mode changes, nothing is stored (posix_acl_update_mode).
    fh, plain = b.create(ROOT, b"plain", 0o600, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    b.setxattr(plain.ino, ACCESS, images.acl_xattr([(USER_OBJ, 7, 0xFFFFFFFF), (GROUP_OBJ, 5, 0xFFFFFFFF),
                                                    (OTHER, 4, 0xFFFFFFFF)]))
    # Our own reader shows the xattr format back.
    assert b.getxattr(f.ino, ACCESS) == images.acl_xattr(FILE_ACL)
    assert b.getattr(f.ino).mode & 0o777 == 0o660  # group bits follow the mask
    assert b.getattr(plain.ino).mode & 0o777 == 0o754
    for bad, err in [(b"\x01\0\0\0", errno.EOPNOTSUPP), (images.acl_xattr(FILE_ACL)[:-3], errno.EINVAL),
                     (images.acl_xattr([(USER_OBJ, 7, 0xFFFFFFFF), (USER, 7, 5), (OTHER, 0, 0xFFFFFFFF),
                                        (GROUP_OBJ, 7, 0xFFFFFFFF)]), errno.EINVAL),
                     (images.acl_xattr([(USER_OBJ, 7, 0xFFFFFFFF), (USER, 7, 5), (GROUP_OBJ, 7, 0xFFFFFFFF),
                                        (OTHER, 0, 0xFFFFFFFF)]), errno.EINVAL)]:
        with pytest.raises(VolfsError) as info:
            b.setxattr(f.ino, ACCESS, bad)
        assert info.value.errno == err
    with pytest.raises(VolfsError) as info:
        b.setxattr(f.ino, DEFAULT, images.acl_xattr(DIR_DEFAULT))
    assert info.value.errno == errno.EACCES
    b.close()
    check(image)
    # On disk: ext4_acl_header version 1, short entries for owner/group/mask/other (debugfs shows raw bytes).
    raw = debugfs(image, "ea_get /file system.posix_acl_access")
    assert "posix_acl_access" not in debugfs(image, "ea_list /plain")
    need_root("loop mounts")
    with images.loop_mount(image, "ro") as mnt:
        assert os.getxattr(mnt / "file", "system.posix_acl_access") == images.acl_xattr(FILE_ACL)
        assert os.getxattr(mnt / "dir", "system.posix_acl_default") == images.acl_xattr(DIR_DEFAULT)
        text = _getfacl(mnt / "file")
        assert text.split() == ["user::rw-", "user:1000:r--", "user:1001:rw-", "group::r--", "group:2000:r-x", "#effective:r--",
                                "mask::rw-", "other::---"], text
        dtext = _getfacl(mnt / "dir")
        assert "default:user:1234:r-x" in dtext and "default:mask::r-x" in dtext, dtext
        assert stat.S_IMODE(os.stat(mnt / "plain").st_mode) == 0o754
        with pytest.raises(OSError):
            os.getxattr(mnt / "plain", "system.posix_acl_access")
    assert raw  # debugfs could read the entry
    # Removing an ACL works and leaves a clean image.
    b = Ext4Backend(image, readonly=False)
    b.removexattr(b.lookup(ROOT, b"file").ino, ACCESS)
    b.close()
    check(image)
    with images.loop_mount(image, "ro") as mnt:
        with pytest.raises(OSError):
            os.getxattr(mnt / "file", "system.posix_acl_access")


EQUIV_DEFAULT = [(USER_OBJ, 7, 0xFFFFFFFF), (GROUP_OBJ, 5, 0xFFFFFFFF), (OTHER, 0, 0xFFFFFFFF)]


def _acl_story_kernel(mnt: Path) -> None:
    """The reference: the same steps as _acl_story_volfs, by the kernel's ext4."""
    old = os.umask(0)
    try:
        os.mkdir(mnt / "d", 0o755)
        os.setxattr(mnt / "d", DEFAULT, images.acl_xattr(DIR_DEFAULT))
        os.close(os.open(mnt / "d" / "f", os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir(mnt / "d" / "sub", 0o777)
        os.close(os.open(mnt / "d" / "sub" / "deep", os.O_CREAT | os.O_WRONLY, 0o640))
        os.mkfifo(mnt / "d" / "p", 0o644)
        os.symlink("f", mnt / "d" / "l")
        os.mkdir(mnt / "e", 0o755)
        os.setxattr(mnt / "e", DEFAULT, images.acl_xattr(EQUIV_DEFAULT))
        os.close(os.open(mnt / "e" / "f", os.O_CREAT | os.O_WRONLY, 0o666))
        os.close(os.open(mnt / "g", os.O_CREAT | os.O_WRONLY, 0o640))
        os.setxattr(mnt / "g", ACCESS, images.acl_xattr(FILE_ACL))
        os.chmod(mnt / "g", 0o604)
        os.setxattr(mnt / "d", ACCESS, images.acl_xattr(FILE_ACL))
        os.chmod(mnt / "d", 0o2751)
        os.chmod(mnt / "d" / "f", 0o600)
    finally:
        os.umask(old)


def _acl_story_volfs(b: Ext4Backend) -> None:
    d = b.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    b.setxattr(d, DEFAULT, images.acl_xattr(DIR_DEFAULT))
    fh, f = b.create(d, b"f", 0o666, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    sub = b.mkdir(d, b"sub", 0o777, 0, 0).ino
    fh, _ = b.create(sub, b"deep", 0o640, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    b.mknod(d, b"p", stat.S_IFIFO | 0o644, 0, 0, 0)
    b.symlink(d, b"l", b"f", 0, 0)
    e = b.mkdir(ROOT, b"e", 0o755, 0, 0).ino
    b.setxattr(e, DEFAULT, images.acl_xattr(EQUIV_DEFAULT))
    fh, _ = b.create(e, b"f", 0o666, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    fh, g = b.create(ROOT, b"g", 0o640, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    b.setxattr(g.ino, ACCESS, images.acl_xattr(FILE_ACL))
    b.setattr(g.ino, SetAttr(mode=0o604))
    b.setxattr(d, ACCESS, images.acl_xattr(FILE_ACL))
    b.setattr(d, SetAttr(mode=0o2751))
    b.setattr(f.ino, SetAttr(mode=0o600))


def _acl_view(mnt: Path) -> dict[str, tuple[int, bytes | None, bytes | None]]:
    out: dict[str, tuple[int, bytes | None, bytes | None]] = {}
    for rel in ["d", "d/f", "d/sub", "d/sub/deep", "d/p", "d/l", "e", "e/f", "g"]:
        p = mnt / rel
        acls: list[bytes | None] = []
        for name in (ACCESS, DEFAULT):
            try:
                acls.append(os.getxattr(p, name, follow_symlinks=False))
            except OSError as exc:
                assert exc.errno in (errno.ENODATA, errno.EOPNOTSUPP), exc
                acls.append(None)
        out[rel] = (os.lstat(p).st_mode, acls[0], acls[1])
    return out


@pytest.mark.parametrize("variant", ["default", "inline", "i128"])
def test_chmod_and_default_acl_inheritance_as_the_kernel(make_image: Callable[..., Path], variant: str) -> None:
    """posix_acl_chmod and posix_acl_create: the kernel's ext4 on a loop mount is the reference."""
    need_root("loop mounts")
    ref, ours = make_image(variant), make_image(variant)
    with images.loop_mount(ref, "rw") as mnt:
        _acl_story_kernel(mnt)
    b = Ext4Backend(ours, readonly=False)
    _acl_story_volfs(b)
    b.close()
    check(ours)
    with images.loop_mount(ref, "ro") as mnt:
        want = _acl_view(mnt)
    with images.loop_mount(ours, "ro") as mnt:
        got = _acl_view(mnt)
        assert "user:1234:r-x" in _getfacl(mnt / "d" / "f")  # inherited from d's default ACL
    # The story covers what it claims to: an inherited access ACL, a masked mode, rewritten ACLs.
    assert want["d/f"][1] is not None and want["d/sub"][2] is not None and want["e/f"][1] is None
    for rel in want:
        assert got[rel] == want[rel], f"{rel}: volfs {got[rel]!r} != kernel {want[rel]!r}"
