"""Names, sizes and labels are validated before anything touches the disk."""

from __future__ import annotations

import pytest

from volfs.errors import InvalidArgument
from volfs.names import MAX_SIZE_MIB, host_component, parse_label, parse_size_mib, validate_labels, validate_name


@pytest.mark.parametrize("name", ["a", "A", "0", "pip-cache", "a.b_c-d", "x" * 255, "9lives"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "-dash", "_under", "a/b", "a b", "..", ".", "a\x00b", "é", "a\nb", "x" * 256, "a:b", "/abs"],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_name(name)
    assert info.value.errno == 22


def test_name_must_be_str() -> None:
    with pytest.raises(InvalidArgument):
        validate_name(b"abc")


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("100M", 100), ("100m", 100), ("1G", 1024), ("1g", 1024), ("1.5GiB", 1536), ("512MiB", 512),
        ("2048", 2048), ("1T", 1 << 20), ("1024K", 1), ("1048576B", 1), (" 64 MiB ", 64), ("0.5G", 512), (7, 7),
    ],
)  # fmt: skip
def test_sizes(text: str | int, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize(
    "text",
    ["0", "0M", "-1", "-5G", "1.5M", "1.5", "1X", "1GBB", "", "G", "1e3", "nan", "inf", "1..5G", "100 M B",
     "1023K", "1B", "99999999999999999999G", f"{MAX_SIZE_MIB + 1}", 0, -3, True, 1.5],
)  # fmt: skip
def test_bad_sizes(text: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_size_mib(text)


def test_largest_size() -> None:
    assert parse_size_mib(str(MAX_SIZE_MIB)) == MAX_SIZE_MIB


def test_labels() -> None:
    assert parse_label("k=v") == ("k", "v")
    assert parse_label("k=a=b") == ("k", "a=b")
    assert parse_label("k=") == ("k", "")
    assert validate_labels({"a": "1", "b": "2"}) == [("a", "1"), ("b", "2")]
    assert validate_labels([("a", "1"), ("b", "2"), ("a", "3")]) == [("a", "3"), ("b", "2")]
    assert validate_labels(None) == []


@pytest.mark.parametrize("bad", ["novalue", "=v", "k\n=v", "k=v\x1b"])
def test_bad_label_text(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_label(bad)


@pytest.mark.parametrize("bad", [5, "k=v", [("a",)], [(1, "x")], [("a", None)], {"": "x"}])
def test_bad_label_values(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_labels(bad)


def test_host_component_fits_name_max() -> None:
    assert host_component("", "abc", ".lock") == "abc.lock"
    long_a, long_b = "a" * 255, "a" * 254 + "b"
    ca, cb = host_component("", long_a, ".lock"), host_component("", long_b, ".lock")
    assert len(ca.encode()) <= 255 and len(cb.encode()) <= 255
    assert ca != cb and ca.endswith(".lock")
    assert len(host_component(".", long_a, ".tmp-12345678").encode()) <= 255
