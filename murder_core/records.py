"""``@record``: the value classes of a dataclass, for a fraction of its start-up cost.

``@dataclass`` writes and compiles six methods for every class it decorates. A peer
imports 27 such classes: measured with valgrind, each cost about 2.5 M instructions,
a fifth of the ~317 M a peer's imports and command line took. One host pays
that once, but the bench's 16 hosts share two cores and a fleet's hosts are often
busy, so start-up is on every deploy's clock. ``@record`` compiles only ``__init__``;
equality, hashing, ordering and ``repr`` are shared functions that read the fields.

What it keeps from ``@dataclass``: fields are the class's own annotations, in order;
a plain class attribute is that field's default; ``__post_init__`` runs after
``__init__``; frozen (the default) means assigning or deleting an attribute raises
``FrozenRecordError``; instances of the same class compare and hash by their fields;
``order=True`` adds ``<`` ``<=`` ``>`` ``>=``; a ``ClassVar`` annotation is not a field. A
method the class defines itself (say a ``__repr__`` that hides a large field) is kept.
Not supported, and refused where it would silently differ: inheriting fields,
``field()`` (a default that is a list, dict or set is refused, as dataclass refuses it),
a field named ``self``.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda decorator: decorator


_C = TypeVar("_C", bound=type)

FIELDS = "__record_fields__"


class FrozenRecordError(AttributeError):
    """Assigning to, or deleting, an attribute of a frozen record."""


def fields(obj: object) -> tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    names: tuple[str, ...] = getattr(obj, FIELDS)
    return names


@overload
def record(cls: _C, /) -> _C: ...
@overload
def record(*, frozen: bool = True, order: bool = False) -> Callable[[_C], _C]: ...


@dataclass_transform(frozen_default=True)
def record(cls: Any = None, /, *, frozen: bool = True, order: bool = False) -> Any:
    """Make ``cls`` a record (see the module docstring)."""

    def wrap(cls: type) -> type:
        return _build(cls, frozen, order)

    return wrap if cls is None else wrap(cls)


def _build(cls: type, frozen: bool, order: bool) -> type:
    own = cls.__dict__
    if any(hasattr(base, FIELDS) for base in cls.__mro__[1:]):
        raise TypeError(f"{cls.__name__}: a record cannot inherit fields")
    names = tuple(
        name
        for name, kind in own.get("__annotations__", {}).items()
        if not str(kind).startswith(("ClassVar", "typing.ClassVar"))
    )
    if "self" in names:
        raise TypeError(f"{cls.__name__}: a field cannot be named self")
    defaults = {n: own[n] for n in names if n in own}
    for name, value in defaults.items():
        if isinstance(value, (list, dict, set)):
            raise TypeError(f"{cls.__name__}.{name}: mutable default {type(value).__name__}")
    key = _key_of(names)
    attrs: dict[str, Any] = {
        FIELDS: names,
        "__match_args__": names,
        "_record_key": staticmethod(key),
        "__init__": _make_init(cls, names, defaults, frozen),
        "__repr__": _repr,
        "__eq__": _eq,
    }
    if frozen:
        attrs.update(__hash__=_hash, __setattr__=_refuse_set, __delattr__=_refuse_del)
    elif "__hash__" not in own:
        attrs["__hash__"] = None  # equal by value and mutable: unhashable, as dataclass does
    if order:
        attrs.update(__lt__=_lt, __le__=_le, __gt__=_gt, __ge__=_ge)
    for name, value in attrs.items():
        if name in own and name not in (FIELDS, "__match_args__", "_record_key"):
            if name in ("__setattr__", "__delattr__"):
                raise TypeError(f"{cls.__name__}: a frozen record cannot define {name}")
            continue  # the class's own method wins
        type.__setattr__(cls, name, value)
    return cls


def _make_init(
    cls: type, names: tuple[str, ...], defaults: dict[str, Any], frozen: bool
) -> Callable[..., None]:
    params = []
    seen_default = False
    for name in names:
        if name in defaults:
            seen_default = True
            params.append(f"{name}=__default_{name}")
        elif seen_default:
            raise TypeError(f"{cls.__name__}.{name}: a field without a default follows one with")
        else:
            params.append(name)
    # Globals of the generated function have dunder names no field can take (a
    # field's name is an __init__ parameter and would shadow them).
    assign = "__setattr(self, {0!r}, {0})" if frozen else "self.{0} = {0}"
    body = [assign.format(name) for name in names]
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = "def __init__({}):\n    {}\n".format(
        ", ".join(["self", *params]), "\n    ".join(body or ["pass"])
    )
    scope: dict[str, Any] = {"__setattr": object.__setattr__}
    scope.update((f"__default_{name}", value) for name, value in defaults.items())
    exec(source, scope)  # built from field names, which the class body made identifiers
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _key_of(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda _obj: ()
    get = attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (get(obj),)
    return get  # several names: attrgetter already returns a tuple


def _repr(self: Any) -> str:
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in getattr(self, FIELDS))
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self._record_key(self) == self._record_key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(self._record_key(self))


def _lt(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self._record_key(self) < self._record_key(other)
    return NotImplemented


def _le(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self._record_key(self) <= self._record_key(other)
    return NotImplemented


def _gt(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self._record_key(self) > self._record_key(other)
    return NotImplemented


def _ge(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self._record_key(self) >= self._record_key(other)
    return NotImplemented


def _refuse_set(self: Any, name: str, value: object) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _refuse_del(self: Any, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
