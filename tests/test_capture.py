"""The capture writer: a row is in the file before its request is answered, once per request id."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future
from pathlib import Path

import pytest

from stillroom.serve import capture
from stillroom.serve.capture import CaptureWriter, DuplicateRequest


def row(request_id: str) -> dict:
    return {"stillroom": {"request_id": request_id}, "request": {"messages": []}}


@pytest.mark.parametrize("fsync_first", [False, True])
def test_a_row_is_written_before_its_request_is_released_and_fsynced_in_either_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync_first: bool
) -> None:
    pending: list[Future] = []
    released_at_fsync: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        released_at_fsync.append(pending[-1].done())
        real_fsync(fd)

    monkeypatch.setattr(capture.os, "fsync", fsync)
    writer = CaptureWriter(tmp_path / "capture", fsync_first=fsync_first)
    writer.start()
    try:
        pending.append(writer.submit(row("req_1")))
        pending[-1].result(timeout=10)
        (written,) = (tmp_path / "capture").glob("capture-*.jsonl")
        assert [json.loads(line)["stillroom"]["request_id"] for line in written.read_text().splitlines()] == ["req_1"]
        # fsync_first: the request waits for the fsync; otherwise it is released once the row is written.
        assert released_at_fsync == [not fsync_first]
        with pytest.raises(DuplicateRequest):
            writer.submit(row("req_1")).result(timeout=10)
    finally:
        writer.close()
    assert writer.rows_written == 1 and len(released_at_fsync) == 1


def test_a_failed_fsync_after_release_is_logged_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(fd: int) -> None:
        raise OSError("disk gone")

    real_fsync = os.fsync
    monkeypatch.setattr(capture.os, "fsync", broken)
    writer = CaptureWriter(tmp_path / "capture")
    writer.start()
    try:
        writer.submit(row("req_1")).result(timeout=10)  # written: the caller is answered
        monkeypatch.setattr(capture.os, "fsync", real_fsync)
        writer.submit(row("req_2")).result(timeout=10)
    finally:
        writer.close()
    assert "written but not fsynced" in caplog.text
    (written,) = (tmp_path / "capture").glob("capture-*.jsonl")
    assert len(written.read_text().splitlines()) == 2
