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
from volfs.backend import Ino, OpenFlags
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
