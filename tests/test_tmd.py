"""The TMD schema: sizes, pack/unpack round trips over every code, names, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.bank import TMD_MAX
from cascade.tmd import (
    CODE_MAX,
    DOMAINS,
    MODIFIERS,
    TASKS,
    check_codes,
    code_of,
    distribution,
    name,
    pack,
    unpack,
)


def test_schema_sizes_and_unique_names():
    assert (len(DOMAINS), len(TASKS), len(MODIFIERS)) == (16, 32, 64)
    for names in (DOMAINS, TASKS, MODIFIERS):
        assert len(set(names)) == len(names) and all("/" not in n for n in names)
    assert CODE_MAX == TMD_MAX == 1 << 15
    assert DOMAINS[:5] == ("Science", "Mathematics", "Technology", "Engineering", "Medicine")
    assert TASKS[0] == "statement" and MODIFIERS[0] == "none"


def test_pack_unpack_every_code():
    codes = np.arange(CODE_MAX)
    d, t, m = unpack(codes)
    assert d.max() == 15 and t.max() == 31 and m.max() == 63
    np.testing.assert_array_equal(pack(d, t, m), codes)
    assert pack(d, t, m).dtype == np.uint16
    # the bit layout: domain 4 | task 5 | modifier 6
    assert int(pack(1, 0, 0)) == 1 << 11 and int(pack(0, 1, 0)) == 1 << 6
    assert int(pack(15, 31, 63)) == CODE_MAX - 1


def test_pack_broadcasts():
    codes = pack(np.array([3, 7]), 2, np.array([[1], [5]]))
    assert codes.shape == (2, 2)
    d, t, m = unpack(codes)
    assert d.tolist() == [[3, 7], [3, 7]] and t.tolist() == [[2, 2], [2, 2]]
    assert m.tolist() == [[1, 1], [5, 5]]


def test_every_code_has_a_distinct_name_and_back():
    names = [name(c) for c in range(CODE_MAX)]
    assert len(set(names)) == CODE_MAX
    assert name(int(pack(DOMAINS.index("History"), TASKS.index("event"),
                         MODIFIERS.index("military")))) == "History/event/military"
    for c in (0, 1, 2047, 2048, CODE_MAX - 1):
        assert code_of(names[c]) == c


@pytest.mark.parametrize("args, message", [
    ((16, 0, 0), "domain: value 16"),
    ((0, 32, 0), "task: value 32"),
    ((0, 0, 64), "modifier: value 64"),
    ((np.array([0, -1]), 0, 0), "domain: value -1 at position 1"),
    ((np.array([0.5]), 0, 0), "expected integers"),
])
def test_pack_refuses_out_of_range(args, message):
    with pytest.raises(ValueError, match=message):
        pack(*args)


def test_codes_refused_outside_15_bits():
    with pytest.raises(ValueError, match="value 32768 at position 2"):
        unpack(np.array([0, 5, 32768]))
    with pytest.raises(ValueError, match="value -3"):
        check_codes(np.array([-3]))
    with pytest.raises(ValueError, match="unknown domain"):
        code_of("Cooking/definition/none")
    with pytest.raises(ValueError, match="Domain/task/modifier"):
        code_of("Science")


def test_distribution_counts():
    codes = pack(np.array([0, 0, 7, 7, 7]), np.array([1, 1, 2, 2, 0]), 0)
    dist = distribution(codes, top=2)
    assert dist["rows"] == 5 and dist["distinct_codes"] == 3
    assert dist["domains"] == {"History": 3, "Science": 2}
    assert list(dist["tasks"]) == ["definition", "history", "statement"]
    assert dist["modifiers"] == {"none": 5}
    assert dist["top_codes"] == {"Science/definition/none": 2, "History/history/none": 2}
