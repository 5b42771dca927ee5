"""Building frozen records fast: decoders make one per inode, descriptor, directory entry.

Theory of operation.  The engine's records are frozen slotted dataclasses
(style rule 5).  Their generated ``__init__`` cannot assign fields the usual
way (the frozen ``__setattr__`` refuses), so it stores every field through
``object.__setattr__``: about 0.15 µs a field, 3 µs for an :class:`Inode`,
more than unpacking the record's bytes, and paid for every entry of a parsed
directory block.

:func:`maker` gives, for one record class, a function that takes the fields
positionally and returns an instance equal to ``cls(*fields)``: it fills a
plain slotted *twin* class with the same slots (ordinary attribute stores),
then turns the object into ``cls`` by ``__class__`` assignment, which
CPython allows between classes whose instances have the same layout (same
base, same slots).  The object is then exactly what ``cls(...)`` builds:
same type, same field values, frozen from then on.  The maker checks this
on one instance when it is made, and falls back to ``cls`` itself where the
interpreter refuses the assignment.  Only for classes without
``__post_init__`` or field defaults that the decoders rely on (the maker
takes every field, positionally, and runs no validation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["maker"]

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """A fast positional constructor for the frozen slotted dataclass ``cls`` (see the module header)."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass without __post_init__")
    names = [f.name for f in dataclasses.fields(cls)]
    if {"o", "new", "twin", "cls"} & set(names):
        raise TypeError(f"{cls.__name__}: a field name clashes with the constructor's own names")
    if tuple(names) != tuple(cls.__dict__["__slots__"]) or cls.__bases__ != (object,):
        raise TypeError(f"{cls.__name__}: slots and fields differ")
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": tuple(names)})
    # One function per class, with one plain store per field (no loop, no setattr calls).
    params = ", ".join(names)
    stores = "".join(f"    o.{n} = {n}\n" for n in names)
    source = f"def make({params}):\n    o = new(twin)\n{stores}    o.__class__ = cls\n    return o\n"
    namespace: dict[str, Any] = {"new": object.__new__, "twin": twin, "cls": cls}
    exec(source, namespace)  # noqa: S102 - the source is built from dataclass field names only
    make: Callable[..., T] = namespace["make"]
    sample = tuple(object() for _ in names)
    try:
        made = make(*sample)
    except TypeError:
        return cls  # (an interpreter that refuses the __class__ assignment: the ordinary constructor)
    if type(made) is not cls or made != cls(*sample):
        return cls
    return make
