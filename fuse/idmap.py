"""Guest ids <-> host ids, so host users can work naturally on guest-owned files.

Files in a volume belong to *guest* users (usually root, uid 0). A mount
shows them to host processes through one of three models:

* identity (default): ids are shown and stored as they are;
* ``owner``: every file appears owned by one host ``uid:gid``; files created
  through the mount get the volume's default guest owner (0:0 on a disk
  volume), and a chown to the host owner maps back to it;
* ranges (``uid_map``/``gid_map`` of ``GUEST:HOST:COUNT``, as user
  namespaces): guest id ``GUEST+i`` appears as host id ``HOST+i``; guest ids
  outside every range appear as the overflow id 65534 (``nobody``); a host
  id outside every range creates files as the default guest owner.

With ``default_permissions`` the kernel checks permissions against the host
ids shown, so the model decides who may do what.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["IdMap", "OVERFLOW_ID"]

OVERFLOW_ID = 65534

Ranges = Sequence[tuple[int, int, int]]


def _forward(ranges: Ranges, guest: int) -> int | None:
    for g, h, n in ranges:
        if g <= guest < g + n:
            return h + (guest - g)
    return None


def _backward(ranges: Ranges, host: int) -> int | None:
    for g, h, n in ranges:
        if h <= host < h + n:
            return g + (host - h)
    return None


@dataclass(frozen=True, slots=True)
class IdMap:
    """One of the three models above; ``default_owner`` is the guest (uid, gid) for new files."""

    default_owner: tuple[int, int]
    owner: tuple[int, int] | None = None
    uid_map: tuple[tuple[int, int, int], ...] = ()
    gid_map: tuple[tuple[int, int, int], ...] = ()

    @property
    def identity(self) -> bool:
        return self.owner is None and not self.uid_map and not self.gid_map

    def host_uid(self, guest: int) -> int:
        """The uid host processes see for guest uid ``guest``."""
        if self.owner is not None:
            return self.owner[0]
        if not self.uid_map:
            return guest
        found = _forward(self.uid_map, guest)
        return OVERFLOW_ID if found is None else found

    def host_gid(self, guest: int) -> int:
        """The gid host processes see for guest gid ``guest``."""
        if self.owner is not None:
            return self.owner[1]
        if not self.gid_map:
            return guest
        found = _forward(self.gid_map, guest)
        return OVERFLOW_ID if found is None else found

    def guest_uid(self, host: int) -> int:
        """The uid stored for host uid ``host`` (new files, chown)."""
        if self.owner is not None:
            return self.default_owner[0]
        if not self.uid_map:
            return host
        found = _backward(self.uid_map, host)
        return self.default_owner[0] if found is None else found

    def guest_gid(self, host: int) -> int:
        """The gid stored for host gid ``host`` (new files, chown)."""
        if self.owner is not None:
            return self.default_owner[1]
        if not self.gid_map:
            return host
        found = _backward(self.gid_map, host)
        return self.default_owner[1] if found is None else found
