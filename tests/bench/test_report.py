"""The bench's rows from several rounds: medians per cell, each round's own ratios in the note."""

from __future__ import annotations

from bench.report import comparison_table, median_row


def test_each_cell_is_the_median_of_its_rounds_and_the_note_gives_the_rounds_ratios() -> None:
    row = median_row("p50", "ms", [[1.0, 2.5, 5.0], [2.0, 4.0, 7.0], [1.0, 3.0, 4.0]], "calls")
    assert list(row.values) == [1.0, 3.0, 5.0]
    assert row.note == "calls; median of 3 rounds, per round b/a 2.00 to 3.00, c/a 3.50 to 5.00"
    assert "| p50 | ms | 1 | 3 | 5 | 3.00 | 5.00 |" in comparison_table([row])


def test_one_round_is_the_round_itself_and_a_missing_cell_stays_missing() -> None:
    assert median_row("p50", "ms", [[1.0, 2.0, 4.0]], "calls").note == "calls"
    row = median_row("cpu", "µs", [[None, 140.0, 150.0], [None, 120.0, 160.0]], "role")
    assert list(row.values) == [None, 130.0, 155.0]
    assert row.note == "role; median of 2 rounds"
