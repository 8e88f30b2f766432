"""Natural order of names: numbers compare by value, and the order never depends on the listing."""

from __future__ import annotations

import random
import re

from mlpipeline.ingestion.sources import natural_sorted


def by_parts(text: str) -> list[int | str]:
    """The definition: text and numbers alternate and compare part by part."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]


def test_numbers_compare_by_value() -> None:
    names = ["img10.png", "img2.png", "img1.png", "img.png", "img1a.png", "b", "a10b2", "a10b10", "a9"]
    expected = ["a9", "a10b2", "a10b10", "b", "img1.png", "img1a.png", "img2.png", "img10.png", "img.png"]
    assert natural_sorted(names) == expected  # "img", 1 before "img.png": text before a number compares alone


def test_same_order_as_comparing_part_by_part() -> None:
    draw = random.Random(12)
    for _ in range(200):
        names = {"".join(draw.choices("ab._-Z0123456789", k=draw.randint(0, 8))) for _ in range(100)}
        distinct = list({str(by_parts(name)): name for name in names}.values())  # no two read as equal
        assert natural_sorted(distinct) == sorted(distinct, key=by_parts)


def test_names_that_read_as_equal_keep_one_order_whatever_the_listing() -> None:
    names = ["a07.png", "a7.png", "a007.png", "a6.png", "a8.png"]
    for _ in range(10):
        random.shuffle(names)
        assert natural_sorted(names) == ["a6.png", "a007.png", "a07.png", "a7.png", "a8.png"]
