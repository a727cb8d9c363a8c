"""``records.record``: the dataclass behaviour murder relies on, without its start-up cost."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any, ClassVar

import pytest

from murder_core import records
from murder_core.records import FrozenRecordError, record


@record
class Point:
    x: int
    y: int = 7

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError(f"x must be >= 0, got {self.x}")


@record(order=True)
class Addr:
    host: str
    port: int


@record(frozen=False)
class Config:
    name: str
    retries: int = 3


@record
class Empty:
    pass


@record
class Secret:
    user: str
    token: bytes

    def __repr__(self) -> str:
        return f"Secret(user={self.user!r})"


def test_init_takes_fields_in_order_with_defaults_and_keywords() -> None:
    assert (Point(1).x, Point(1).y) == (1, 7)
    assert Point(y=2, x=3) == Point(3, 2)
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, 3)  # type: ignore[call-arg]


def test_post_init_runs_after_the_fields_are_set() -> None:
    with pytest.raises(ValueError, match="x must be >= 0, got -1"):
        Point(-1)


def test_frozen_refuses_assignment_and_deletion() -> None:
    p = Point(1)
    with pytest.raises(FrozenRecordError, match="cannot assign to field 'x' of a frozen Point"):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenRecordError, match="cannot delete field 'y'"):
        del p.y  # type: ignore[misc]
    assert isinstance(FrozenRecordError("x"), AttributeError)  # as dataclass's error is
    assert p.x == 1


def test_equality_and_hash_go_by_class_and_fields() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2
    assert Empty() == Empty()
    assert hash(Empty()) == hash(Empty())

    @record
    class Other:
        x: int
        y: int = 7

    assert Point(1) != Other(1)  # same fields, different class


def test_order_compares_fields_in_order() -> None:
    assert sorted([Addr("b", 1), Addr("a", 9), Addr("a", 2)]) == [
        Addr("a", 2),
        Addr("a", 9),
        Addr("b", 1),
    ]
    assert Addr("a", 1) <= Addr("a", 1) < Addr("a", 2)
    assert Addr("b", 0) > Addr("a", 9) >= Addr("a", 9)
    with pytest.raises(TypeError):
        _ = Point(1) < Point(2)  # type: ignore[operator]


def test_mutable_records_assign_compare_and_are_unhashable() -> None:
    c = Config("a")
    c.retries = 5
    assert c == Config("a", 5)
    with pytest.raises(TypeError):
        hash(c)


def test_repr_names_every_field_unless_the_class_wrote_its_own() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    assert repr(Empty()) == "Empty()"
    assert repr(Secret("u", b"hunter2")) == "Secret(user='u')"
    assert records.fields(Point) == ("x", "y")
    assert records.fields(Point(1)) == ("x", "y")


def test_pickle_round_trip() -> None:
    p = pickle.loads(pickle.dumps(Point(4, 5)))
    assert p == Point(4, 5)
    assert isinstance(p, Point)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("x: int = 1\n    y: int", "Bad.y: a field without a default follows one with"),
        ("x: list = []", "Bad.x: mutable default list"),
        ("x: int\n    def __setattr__(self, k, v): ...", "record cannot define __setattr__"),
    ],
)
def test_definitions_that_would_silently_differ_from_dataclass_are_refused(
    body: str, error: str
) -> None:
    scope: dict[str, Any] = {"record": record}
    with pytest.raises(TypeError, match=error):
        exec(f"@record\nclass Bad:\n    {body}\n", scope)


def test_classvars_are_not_fields_and_any_field_name_but_self_works() -> None:
    @record
    class Odd:
        KIND: ClassVar[str] = "odd"
        _set: int
        __setattr: int  # mangled to _Odd__setattr, as any field of that shape
        default_x: int = 1

    odd = Odd(1, 2)
    assert records.fields(Odd) == ("_set", "_Odd__setattr", "default_x")
    assert (odd._set, odd._Odd__setattr, odd.default_x, Odd.KIND) == (1, 2, 1, "odd")
    with pytest.raises(TypeError, match="a field cannot be named self"):
        exec("@record\nclass Bad:\n    self: int\n", {"record": record})


def test_inheriting_fields_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot inherit fields"):

        @record
        class Point3(Point):
            z: int


def test_a_peer_start_imports_no_dataclasses() -> None:
    # The point of the module: the classes a peer imports at start are records.
    code = (
        "import sys; import murder_core.client, murder_core.cli; "
        "print('dataclasses' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
