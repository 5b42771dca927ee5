"""Validation of what users type: volume names, sizes and labels.

Everything here runs before volfs touches the disk, so a bad argument never
leaves anything behind. The rules follow microsandbox where it has one
(``validate_volume_name``, ``parse_size_mib``) and are stricter where it is
silent (a name length cap, exact arithmetic on sizes, no control characters in
labels).
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal, InvalidOperation
from typing import Final

from volfs.errors import InvalidArgument

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_SIZE_MIB",
    "validate_name",
    "parse_size_mib",
    "parse_label",
    "validate_labels",
    "host_component",
]

MAX_NAME_BYTES: Final = 255
# Quotas and capacities are u32 MiB in microsandbox's API (and 2**32-1 MiB is
# far above any ext4 image volfs can format).
MAX_SIZE_MIB: Final = 2**32 - 1
_MIB: Final = 1 << 20

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Binary multipliers: microsandbox reads "1G" as 1024 MiB, and so does docker.
_SUFFIX_BYTES: Final[dict[str, int]] = {
    "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}  # fmt: skip
_SIZE_RE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([A-Za-z]*)\s*")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid volume name, else raise InvalidArgument.

    A name starts with an ASCII letter or digit, continues with letters,
    digits, ``.``, ``-`` or ``_``, and is at most 255 bytes: so it is always a
    single safe path component and never a dot entry.
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"volume name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidArgument("volume name must not be empty")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"volume name is longer than {MAX_NAME_BYTES} bytes", name[:40] + "...")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            "invalid volume name: it must start with an ASCII letter or digit and contain "
            "only letters, digits, '.', '-' and '_'",
            name,
        )
    return name


def parse_size_mib(text: object, what: str = "size") -> int:
    """Parse a size such as ``100M``, ``1G``, ``1.5GiB``, ``512MiB`` or ``2048`` into MiB.

    A bare number is MiB (microsandbox's rule). Suffixes are binary and
    case-insensitive: B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB. The result must
    be a positive whole number of MiB no larger than ``MAX_SIZE_MIB``; an int
    argument is taken as MiB.
    """
    if isinstance(text, bool):
        raise InvalidArgument(f"{what} must be a size, not a bool")
    if isinstance(text, int):
        mib = text
    elif isinstance(text, str):
        mib = _parse_size_text(text, what)
    else:
        raise InvalidArgument(f"{what} must be a size string or an integer number of MiB")
    if mib <= 0:
        raise InvalidArgument(f"{what} must be greater than zero", str(text))
    if mib > MAX_SIZE_MIB:
        raise InvalidArgument(f"{what} is too large (at most {MAX_SIZE_MIB} MiB)", str(text))
    return mib


def _parse_size_text(text: str, what: str) -> int:
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise InvalidArgument(
            f"invalid {what} {text!r}: expected a number with an optional suffix (M, MiB, G, GiB, ...)",
            text,
        )
    number, suffix = match.groups()
    factor = _SUFFIX_BYTES.get(suffix.lower()) if suffix else _MIB
    if factor is None:
        raise InvalidArgument(f"invalid {what} {text!r}: unknown suffix {suffix!r}", text)
    try:
        total = Decimal(number) * factor
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise InvalidArgument(f"invalid {what} {text!r}", text) from exc
    if total != total.to_integral_value():
        raise InvalidArgument(f"invalid {what} {text!r}: not a whole number of bytes", text)
    if total > Decimal(MAX_SIZE_MIB) * _MIB:
        raise InvalidArgument(f"{what} is too large (at most {MAX_SIZE_MIB} MiB)", text)
    whole = int(total)
    if whole % _MIB:
        raise InvalidArgument(f"invalid {what} {text!r}: not a whole number of MiB", text)
    return whole // _MIB


def _check_label_text(text: str, role: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidArgument(f"label {role} contains a control character", repr(text))


def parse_label(text: str) -> tuple[str, str]:
    """Parse ``key=value`` (the value may contain ``=`` and may be empty)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidArgument(f"invalid label {text!r}: expected key=value", text)
    return validate_labels([(key, value)])[0]


def validate_labels(labels: object) -> list[tuple[str, str]]:
    """Normalise labels (a mapping or pairs) to a list of (key, value) pairs.

    Keys are non-empty; neither keys nor values contain control characters
    (they are shown in tables and JSON). A repeated key keeps its last value,
    at the position it first had.
    """
    if labels is None:
        return []
    if isinstance(labels, dict):
        pairs = list(labels.items())
    elif isinstance(labels, (list, tuple)):
        pairs = list(labels)
    else:
        raise InvalidArgument("labels must be a dict or a list of (key, value) pairs")
    out: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise InvalidArgument(f"invalid label {pair!r}: expected a (key, value) pair")
        key, value = pair
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(f"invalid label {pair!r}: key and value must be strings")
        if not key:
            raise InvalidArgument("label key must not be empty")
        _check_label_text(key, "key")
        _check_label_text(value, "value")
        out[key] = value
    return list(out.items())


def host_component(prefix: str, name: str, suffix: str) -> str:
    """A host file name ``prefix + name + suffix`` that fits NAME_MAX (255 bytes).

    Names are allowed up to 255 bytes, so derived names (``.<name>.lock``,
    temporary ``.<name>.tmp-XXXXXXXX``) can overflow; those use a shortened
    name with a digest of the full one, which stays unique per volume. Short
    names keep microsandbox's exact spelling, so its lock files and ours are
    the same files.
    """
    plain = f"{prefix}{name}{suffix}"
    if len(plain.encode()) <= MAX_NAME_BYTES:
        return plain
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    keep = MAX_NAME_BYTES - len(prefix) - len(suffix) - len(digest) - 1
    return f"{prefix}{name[:keep]}~{digest}{suffix}"
