"""The one error hierarchy of volfs.

Every error volfs raises on purpose is a :class:`VolfsError`, which is an
:class:`OSError` carrying an ``errno`` and the offending path (a
volume-relative path, an image path, or a volume name). Errors are built from
an errno with :func:`error`, which also mixes in the matching builtin subclass,
so ``except FileNotFoundError`` works as well as ``except VolfsError``.

Layers above turn these into their own shape in exactly one place each: the
FUSE layer into ``FUSEError(errno)``, the CLI into a one-line message and a
non-zero exit code.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Final

__all__ = [
    "VolfsError",
    "NotFoundError",
    "ExistsError",
    "NotADirError",
    "IsADirError",
    "PermissionDenied",
    "InvalidArgument",
    "VolumeNotFound",
    "VolumeExists",
    "VolumeBusy",
    "RegistryError",
    "CorruptError",
    "error",
    "errno_name",
]


class VolfsError(OSError):
    """Base of every volfs error: an OSError with an errno and a path.

    ``str(err)`` is one line: ``"<path>: <message> (<ERRNO>)"``.
    """

    def __init__(self, code: int, message: str, path: str | None = None) -> None:
        super().__init__(code, message, path)
        self.path: str | None = path

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"{where}{self.strerror} ({errno_name(self.errno)})"

    def __reduce__(self) -> tuple[object, ...]:
        # OSError's own reduce would call our __init__ with the wrong
        # arguments; errors cross process boundaries in tests and tools.
        return (_rebuild, (type(self), self.errno, self.strerror, self.path, self.__dict__))


def _rebuild(
    cls: type[VolfsError], code: int, message: str, path: str | None, state: dict[str, object]
) -> VolfsError:
    err = cls.__new__(cls)
    VolfsError.__init__(err, code, message, path)
    err.__dict__.update(state)
    return err


class NotFoundError(VolfsError, FileNotFoundError):
    """ENOENT."""


class ExistsError(VolfsError, FileExistsError):
    """EEXIST."""


class NotADirError(VolfsError, NotADirectoryError):
    """ENOTDIR."""


class IsADirError(VolfsError, IsADirectoryError):
    """EISDIR."""


class PermissionDenied(VolfsError, PermissionError):
    """EACCES or EPERM."""


class InvalidArgument(VolfsError, ValueError):
    """A name, size, label or option that volfs refuses before touching disk."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(_errno.EINVAL, message, path)


class VolumeNotFound(NotFoundError):
    """No volume of that name in the registry (or its data is missing)."""

    def __init__(self, name: str, message: str = "no such volume") -> None:
        super().__init__(_errno.ENOENT, message, name)


class VolumeExists(ExistsError):
    """A volume of that name already exists."""

    def __init__(self, name: str, message: str = "volume already exists") -> None:
        super().__init__(_errno.EEXIST, message, name)


class VolumeBusy(VolfsError):
    """The volume (or its registry) is in use by a sandbox or another process."""

    def __init__(self, name: str, message: str = "volume is in use") -> None:
        super().__init__(_errno.EBUSY, message, name)


class RegistryError(VolfsError):
    """The registry database cannot be read or written (corrupt, locked, I/O)."""

    def __init__(self, message: str, path: str | None = None, code: int = _errno.EIO) -> None:
        super().__init__(code, message, path)


class CorruptError(VolfsError):
    """On-disk data failed validation (EUCLEAN), with where it was found.

    ``structure`` names the on-disk structure (``"superblock"``, ``"extent
    header"``, ...); ``inode`` and ``block`` locate it when known.
    """

    def __init__(
        self,
        structure: str,
        message: str,
        *,
        inode: int | None = None,
        block: int | None = None,
        path: str | None = None,
    ) -> None:
        where = [structure]
        if inode is not None:
            where.append(f"inode {inode}")
        if block is not None:
            where.append(f"block {block}")
        super().__init__(_errno.EUCLEAN, f"corrupt {', '.join(where)}: {message}", path)
        self.structure = structure
        self.inode = inode
        self.block = block


# Builtin OSError subclasses by errno, so error() results are catchable the
# way Python programmers expect (FileNotFoundError, IsADirectoryError, ...).
_CLASS_BY_ERRNO: Final[dict[int, type[VolfsError]]] = {
    _errno.ENOENT: NotFoundError,
    _errno.EEXIST: ExistsError,
    _errno.ENOTDIR: NotADirError,
    _errno.EISDIR: IsADirError,
    _errno.EACCES: PermissionDenied,
    _errno.EPERM: PermissionDenied,
}


def error(code: int, message: str | None = None, path: str | None = None) -> VolfsError:
    """Build the VolfsError for ``code``: the message defaults to ``os.strerror``."""
    cls = _CLASS_BY_ERRNO.get(code, VolfsError)
    return cls(code, message if message is not None else os.strerror(code), path)


def errno_name(code: int | None) -> str:
    """``errno.ENOENT`` -> ``"ENOENT"``; unknown codes as ``"errno 1234"``."""
    if code is None:
        return "no errno"
    return _errno.errorcode.get(code, f"errno {code}")
