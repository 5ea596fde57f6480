"""Brace ranges in inventory values."""

import pytest

from fedctl.config.ranges import RangeError, expand, has_range


def test_plain_value_expands_to_itself():
    assert expand("fl-server") == ["fl-server"]
    assert not has_range("fl-server")


def test_zero_padding_is_kept():
    assert expand("fl-client-{01..10}") == [f"fl-client-{i:02d}" for i in range(1, 11)]


def test_no_padding_without_leading_zero():
    assert expand("h{8..11}") == ["h8", "h9", "h10", "h11"]


def test_padding_to_the_wider_bound():
    assert expand("n{001..003}") == ["n001", "n002", "n003"]
    assert expand("n{09..10}") == ["n09", "n10"]


def test_range_in_the_middle_of_an_address():
    assert expand("192.168.1.{11..13}") == ["192.168.1.11", "192.168.1.12", "192.168.1.13"]
    assert expand("10.0.{1..2}.5") == ["10.0.1.5", "10.0.2.5"]


def test_single_item_range():
    assert expand("h{3..3}") == ["h3"]


@pytest.mark.parametrize(
    "text",
    ["h{5..1}", "h{a..z}", "h{1..}", "h{..3}", "h{1,2}", "h{1..3", "h1..3}", "h{{1..3}}", "h{1..2}-{3..4}", "{}"],
)
def test_malformed_ranges_are_errors(text):
    with pytest.raises(RangeError):
        expand(text)


def test_backwards_range_message_says_so():
    with pytest.raises(RangeError, match="backwards"):
        expand("h{5..1}")
