"""What review resolutions and signatures add to a decision: evaluating a subject with its resolutions
applied, and hashing the signed form, against the plain evaluation (the anchor, same run).

Run: .venv/bin/python bench/bench_review.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from collector.eligibility.service import evaluate_subject, resolve_review, signed_form, thresholds_for_config  # noqa: E402
from collector.config import defaults  # noqa: E402
from collector.signatures.content import content_hash, decision_content  # noqa: E402
from collector.storage.db import open_db, transaction  # noqa: E402
from test_review_long_night import SUBJECT, _borderline_night  # noqa: E402

REPEATS = 20


def best(fn) -> float:  # type: ignore[no-untyped-def]
    out = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def main() -> None:
    from collector.storage import repo

    cfg = defaults()
    th = thresholds_for_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        conn = open_db(Path(tmp) / "b.sqlite").conn
        with transaction(conn):
            repo.add_subject(conn, SUBJECT, by="bench", at=1.767e9)
        _borderline_night(conn, 1.767e9)  # a 10 h night with 300 gaps, borderline
        user = {"name": "bench", "full_name": "Bench Investigator", "role": "investigator"}
        with transaction(conn):
            conn.execute("INSERT INTO users (name, password_hash, role, created_utc, created_by, password_changed_utc, full_name) "
                         "VALUES ('bench', 'x', 'investigator', 'now', 'bench', 'now', 'Bench Investigator')")
            resolve_review(conn, SUBJECT, "nocturnal_spo2", decision="met", reason="bench", user=user, at=1.767e9 + 40000, config=cfg)
        anchor = best(lambda: evaluate_subject(conn, SUBJECT, now=1.767e9 + 50000, thresholds=th, apply_reviews=False))
        reviewed = best(lambda: evaluate_subject(conn, SUBJECT, now=1.767e9 + 50000, thresholds=th))
        decision = evaluate_subject(conn, SUBJECT, now=1.767e9 + 50000, thresholds=th)
        signing = best(lambda: content_hash(decision_content(signed_form(conn, SUBJECT, decision, cfg))))
    print(f"evaluate (anchor, no resolutions applied): {anchor * 1e3:.2f} ms")
    print(f"evaluate with the resolution applied:     {reviewed * 1e3:.2f} ms  ({reviewed / anchor:.2f} x anchor)")
    print(f"signed form + RFC 8785 SHA-256:           {signing * 1e3:.2f} ms  ({signing / anchor:.2f} x anchor)")


if __name__ == "__main__":
    main()
