"""The load generator's own figures (wso2_sandbox.load.client_figures), from records: a refused
request is not a failure of the system, and the lag percentiles are the generator's delay."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wso2_sandbox.load import REFUSED, SHORT, RequestRecord, client_figures, summarize


def record(
    seq: int, *, status: int | None = 200, error: str | None = None, lag: float = 0.0
) -> RequestRecord:
    return RequestRecord(
        seq=seq, start=100.0 + seq, end=100.5 + seq, status=status, error=error,
        kind=SHORT, lb="lb1", node="n1" if status else None, lag=lag,
    )  # fmt: skip


def test_refused_requests_are_counted_apart_from_failed_ones_that_were_sent() -> None:
    records = [
        record(0),
        record(1, status=None, error=REFUSED, lag=2.0),
        record(2, status=None, error=REFUSED, lag=3.0),
        record(3, status=503),
        record(4, status=None, error="ClientOSError: reset"),
    ]
    figures = client_figures(records)
    assert figures["refused"] == 2 and figures["failed_sent"] == 2
    assert summarize(records)["failed"] == 4  # the report's total still counts every one
    assert figures["lag_max_s"] == 3.0


def test_records_without_lag_give_no_percentiles() -> None:
    figures = client_figures([RequestRecord.from_dict({**record(0).as_dict(), "lag": None})])
    assert figures["lag_p50_s"] is None and figures["lag_max_s"] is None
    assert client_figures([])["refused"] == 0


@given(st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1, max_size=200))
def test_lag_percentiles_are_ordered_and_taken_from_the_records(lags: list[float]) -> None:
    figures = client_figures(record(i, lag=lag) for i, lag in enumerate(lags))
    rounded = {round(x, 4) for x in lags}
    assert figures["lag_p50_s"] <= figures["lag_p99_s"] <= figures["lag_max_s"]
    assert {figures["lag_p50_s"], figures["lag_p99_s"], figures["lag_max_s"]} <= rounded
    assert figures["lag_max_s"] == round(max(lags), 4)
    assert figures["refused"] == figures["failed_sent"] == 0
