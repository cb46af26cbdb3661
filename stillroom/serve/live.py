"""Live statistics in one SQLite file: shadow audits (the teacher's verdict on student answers), demotions and
traffic counts by route. `stillroom status` reads it, also while the server runs (WAL mode).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from stillroom.data import open_sqlite
from stillroom.metrics.scoring import agreement_interval
from stillroom.schema import OutputFormat

SCHEMA = """
CREATE TABLE IF NOT EXISTS audits (
    ts REAL NOT NULL, task_id TEXT NOT NULL, task TEXT NOT NULL, version TEXT NOT NULL,
    request_id TEXT NOT NULL, agreement REAL NOT NULL);
CREATE INDEX IF NOT EXISTS audits_by_version ON audits (task_id, version);
CREATE TABLE IF NOT EXISTS demotions (
    task_id TEXT NOT NULL, version TEXT NOT NULL, task TEXT NOT NULL, ts REAL NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (task_id, version));
CREATE TABLE IF NOT EXISTS traffic (
    hour TEXT NOT NULL, task TEXT NOT NULL, route TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (hour, task, route));
"""


class LiveStats:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._db = open_sqlite(path)
        self._db.executescript(SCHEMA)
        self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            rows = self._db.execute(sql, tuple(args)).fetchall()
            self._db.commit()
            return rows

    def add_audit(self, task_id: str, task: str, version: str, request_id: str, agreement: float) -> None:
        self._execute(
            "INSERT INTO audits VALUES (?, ?, ?, ?, ?, ?)", (time.time(), task_id, task, version, request_id, agreement)
        )

    def agreement(self, task_id: str, version: str, output_format: OutputFormat) -> dict:
        """Live agreement of a version's student answers with the teacher, with its 95% interval."""
        scores = [
            row[0]
            for row in self._execute(
                "SELECT agreement FROM audits WHERE task_id = ? AND version = ?", (task_id, version)
            )
        ]
        low, high = agreement_interval(output_format, scores)
        mean = sum(scores) / len(scores) if scores else None
        return {"audits": len(scores), "agreement": mean, "low": low, "high": high}

    def demote(self, task_id: str, task: str, version: str, reason: str) -> None:
        self._execute(
            "INSERT OR REPLACE INTO demotions VALUES (?, ?, ?, ?, ?)", (task_id, version, task, time.time(), reason)
        )

    def demotions(self) -> dict[tuple[str, str], str]:
        return {(t, v): reason for t, v, reason in self._execute("SELECT task_id, version, reason FROM demotions")}

    def count_traffic(self, rows: list[dict]) -> None:
        """Called by the capture writer with each batch it wrote."""
        hour = datetime.now(UTC).strftime("%Y-%m-%dT%H")
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            served = row["stillroom"]
            key = (served.get("task") or "-", served.get("route") or "-")
            counts[key] = counts.get(key, 0) + 1
        with self._lock:
            self._db.executemany(
                "INSERT INTO traffic VALUES (?, ?, ?, ?) "
                "ON CONFLICT (hour, task, route) DO UPDATE SET n = n + excluded.n",
                [(hour, task, route, n) for (task, route), n in counts.items()],
            )
            self._db.commit()

    def report(self, formats: dict[str, OutputFormat], since_hours: float = 24) -> list[dict]:
        """Per task and version: live agreement, demotion, and the last day's traffic by route."""
        versions = self._execute(
            "SELECT DISTINCT task_id, task, version FROM audits UNION SELECT task_id, task, version FROM demotions"
        )
        demoted = self.demotions()
        since = datetime.fromtimestamp(time.time() - since_hours * 3600, UTC).strftime("%Y-%m-%dT%H")
        traffic: dict[str, dict[str, int]] = {}
        for task, route, n in self._execute(
            "SELECT task, route, SUM(n) FROM traffic WHERE hour >= ? GROUP BY task, route", (since,)
        ):
            traffic.setdefault(task, {})[route] = int(n)
        out = []
        for task_id, task, version in sorted(versions, key=lambda row: (row[1], row[2])):
            live = self.agreement(task_id, version, formats.get(task_id, "label"))
            out.append(
                {
                    "task_id": task_id,
                    "task": task,
                    "version": version,
                    **live,
                    "demoted": demoted.get((task_id, version)),
                    "traffic": traffic.pop(task, {}),
                }
            )
        out.extend({"task": task, "traffic": routes} for task, routes in sorted(traffic.items()))
        return out
