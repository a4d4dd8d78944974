"""Issue 12: the label-filter grammar (Google Product Search's ``filter``), as a pure parser."""

from __future__ import annotations

import pytest

from service.label_filter import (
    MAX_DEPTH,
    MAX_TERMS,
    All,
    Any_,
    FilterError,
    Term,
    labels_of,
    normalize_label,
    parse_filter,
)

FLORA = labels_of(["brand=Flora", "size = 400ml", "vegan"])


def test_tags_become_key_value_labels() -> None:
    assert normalize_label("vegan") == "tag=vegan"
    assert normalize_label(" size = 400ml ") == "size=400ml"
    assert FLORA == {"brand=Flora", "size=400ml", "tag=vegan"}


@pytest.mark.parametrize(("text", "expected"), [
    ("brand=Flora", True),
    ("brand = Flora", True),
    ("brand=Flora AND size=400ml", True),
    ("brand=Flora AND size=250ml", False),
    ("brand=Rama OR size=400ml", True),
    ("brand=Rama OR brand=Bona", False),
    ("tag=vegan AND (size=250ml OR size=400ml)", True),
    ("(brand=Rama OR brand=Flora) AND (size=400ml)", True),
    ("brand=Rama AND size=1l OR tag=vegan", True),  # AND binds tighter than OR
    ("brand=Rama AND (size=1l OR tag=vegan)", False),
    ("brand=flora", False),  # values are case-sensitive
])
def test_valid_filters_match_labels(text: str, expected: bool) -> None:
    node = parse_filter(text)
    assert node is not None and node.matches(FLORA) is expected


def test_tree_shape_and_empty_filter() -> None:
    assert parse_filter("a=1 OR b=2 AND c=3") == Any_((Term("a", "1"),
                                                       All((Term("b", "2"), Term("c", "3")))))
    assert parse_filter("") is None and parse_filter("   ") is None


@pytest.mark.parametrize(("text", "position"), [
    ("brand", 0),
    ("brand=", 0),
    ("=Flora", 0),
    ("brand=Flora AND", 15),
    ("brand=Flora and size=1l", 12),
    ("brand=Flora size=1l", 12),
    ("(brand=Flora", 12),
    ("brand=Flora)", 11),
    ("()", 1),
    ("brand=Flora OR OR a=1", 15),
    ("a=1 AND NOT b=2", 8),
    ('brand="Flora"', 0),  # no quoting: values are single words
])
def test_invalid_filters_say_where(text: str, position: int) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert info.value.position == position, str(info.value)
    assert f"at position {position}" in str(info.value)


def test_limits_on_terms_depth_and_length() -> None:
    ok = " OR ".join(f"k={i}" for i in range(MAX_TERMS))
    assert parse_filter(ok) is not None
    too_many = ok + " OR k=x"
    with pytest.raises(FilterError, match="more than 20 terms") as info:
        parse_filter(too_many)
    assert info.value.position == too_many.rindex("k=x")
    nested = "(" * MAX_DEPTH + "a=1" + ")" * MAX_DEPTH
    assert parse_filter(nested) == Term("a", "1")
    with pytest.raises(FilterError, match="nested") as info:
        parse_filter("(" * 900 + "a=1" + ")" * 900)
    assert info.value.position == MAX_DEPTH
    with pytest.raises(FilterError, match="longer than"):
        parse_filter("a=1 OR " * 1000)
