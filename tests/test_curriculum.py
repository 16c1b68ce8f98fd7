"""The hard-negative schedule: the checklist's string, one test per refusal, round trip."""

from __future__ import annotations

import pytest

from training.curriculum import (
    ScheduleError,
    Segment,
    check_covers,
    format_schedule,
    parse_schedule,
    segment_for,
)

CHECKLIST = "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96"


def test_checklist_schedule_parses():
    segs = parse_schedule(CHECKLIST)
    assert segs == [Segment(0, 5, 0), Segment(6, 10, 8, 0.82, 0.92),
                    Segment(11, 30, 16, 0.84, 0.96)]
    check_covers(segs, 30)
    check_covers(segs, 12)  # a shorter run is covered too


@pytest.mark.parametrize("epoch,index", [(1, 0), (5, 0), (6, 1), (10, 1), (11, 2), (30, 2)])
def test_segment_for(epoch, index):
    segs = parse_schedule(CHECKLIST)
    assert segment_for(segs, epoch) is segs[index]


def test_segment_for_outside_schedule():
    with pytest.raises(ScheduleError, match="epoch 31 is not covered"):
        segment_for(parse_schedule(CHECKLIST), 31)


def test_whitespace_and_start_at_one():
    segs = parse_schedule(" 1 - 3 : none ; 4-9: 4 @ 0.5 - 0.9 ")
    assert segs == [Segment(1, 3, 0), Segment(4, 9, 4, 0.5, 0.9)]


@pytest.mark.parametrize("text,match", [
    ("0-5:none;7-10:8@0.82-0.92", "gap before segment 2.*epochs 6-6"),
    ("0-5:none;5-10:8@0.82-0.92", "segment 2 .* overlaps segment 1"),
    ("0-5:none;3-10:8@0.82-0.92", "overlaps"),
    ("0-5:0@0.82-0.92", "count must be > 0"),
    ("0-5:8@0.92-0.82", "need 0 <= cos_min < cos_max <= 1"),
    ("0-5:8@0.9-0.9", "need 0 <= cos_min < cos_max <= 1"),
    ("0-5:8@0.9-1.5", "need 0 <= cos_min < cos_max <= 1"),
    ("0-5:8@0.8.2-0.9", "unreadable number"),
    ("0-5:8@.-0.9", "unreadable number"),
    ("0-5:sometimes", "expected FIRST-LAST:none"),
    ("garbage", "segment 1 'garbage': expected"),
    ("0-5:none;;6-10:none", "segment 2 is empty"),
    ("0-5:none;", "segment 2 is empty"),
    ("", "empty schedule"),
    ("   ", "empty schedule"),
    ("2-5:none", "epochs 1-1 are not covered"),
    ("5-3:none", "first epoch 5 > last 3"),
    ("-1-5:none", "expected"),
])
def test_refusals(text, match):
    with pytest.raises(ScheduleError, match=match):
        parse_schedule(text)


def test_check_covers_too_short():
    with pytest.raises(ScheduleError, match="epochs 31-40 are not covered"):
        check_covers(parse_schedule(CHECKLIST), 40)


@pytest.mark.parametrize("text", [CHECKLIST, "1-1:none", "1-4:3@0-1",
                                  "0-2:2@0.123456789-0.987654321;3-3:none",
                                  "1-2:4@0.00001-0.5"])
def test_format_round_trip(text):
    segs = parse_schedule(text)
    assert parse_schedule(format_schedule(segs)) == segs


def test_format_checklist_verbatim():
    assert format_schedule(parse_schedule(CHECKLIST)) == CHECKLIST
