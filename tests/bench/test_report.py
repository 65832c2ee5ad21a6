"""The bench's rows from several rounds: the median of each cell, and of each ratio taken within
its round (the ratio of two medians could pair a quiet round's direct with a noisy gateway)."""

from __future__ import annotations

from bench.report import comparison_table, median_row


def test_each_cell_and_each_ratio_is_the_median_of_its_rounds() -> None:
    row = median_row("p50", "ms", [[1.0, 2.5, 5.0], [2.0, 4.0, 7.0], [1.0, 3.0, 4.0]], "calls")
    assert list(row.values) == [1.0, 3.0, 5.0]
    # b/a per round 2.5, 2.0, 3.0; c/a 5.0, 3.5, 4.0 (the medians' own ratios would be 3.00, 5.00)
    assert "| p50 | ms | 1 | 3 | 5 | 2.50 | 4.00 |" in comparison_table([row])
    assert row.note == "calls; median of 3 rounds, per round b/a 2.00 to 3.00, c/a 3.50 to 5.00"


def test_one_round_is_the_round_itself_and_a_missing_cell_stays_missing() -> None:
    single = median_row("p50", "ms", [[1.0, 2.0, 4.0]], "calls")
    assert single.note == "calls"
    assert "| 2.00 | 4.00 | calls |" in comparison_table([single])
    row = median_row("cpu", "µs", [[None, 140.0, 150.0], [None, 120.0, 160.0]], "role")
    assert list(row.values) == [None, 130.0, 155.0]
    assert row.note == "role; median of 2 rounds"
    assert "| cpu | µs | n/a | 130 | 155 |  |  | role; median of 2 rounds |" in comparison_table([row])
