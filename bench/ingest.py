"""Ingest benchmark: a big mixed-format log with corrupt lines and planted secrets, read twice.

It writes N records (default 1,000,000) in six formats (OpenAI chat, Responses API,
Anthropic, chat fine-tuning, prompt/completion, the serve capture log) with real text
from BBC News articles and chat turns, 1% corrupt lines, and secrets and personal data
planted in user turns and answers. It ingests them with scrubbing on, again (the re-run),
and once more with scrubbing off, and reports:

records_per_s_scrub, records_per_s_plain, peak_rss_mb, secret_recall, pii_recall,
pii_precision (planted items plus clean real text), quarantined, corrupt_planted, lost,
rerun_new_records.

    python bench/ingest.py                 # a table, and bench/results/ingest.json
    python bench/ingest.py --json --n 200000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stillroom.config import Params
from stillroom.data import Layout
from stillroom.ingest import run
from stillroom.ingest.scrub import SECRET_KINDS
from stillroom.samples import _bbc_articles, _chat_turns

SECRET_MAKERS = {
    "OPENAI_KEY": lambda r: "sk-proj-" + _token(r, 40),
    "ANTHROPIC_KEY": lambda r: "sk-ant-api03-" + _token(r, 40),
    "AWS_KEY": lambda r: "AKIA" + "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
    "GITHUB_TOKEN": lambda r: "ghp_" + _token(r, 36),
    "SLACK_TOKEN": lambda r: f"xoxb-{r.randrange(10**11, 10**12)}-{_token(r, 24, '-_')}",
    "GOOGLE_KEY": lambda r: "AIza" + _token(r, 35),
    "JWT": lambda r: f"eyJhbGciOiJIUzI1NiJ9.eyJ{_token(r, 30)}.{_token(r, 43)}",
    "PRIVATE_KEY": lambda r: f"-----BEGIN PRIVATE KEY-----\n{_token(r, 64)}\n-----END PRIVATE KEY-----",
    "URL_PASSWORD": lambda r: f"postgres://app:{_token(r, 12)}@db.internal:5432/prod",
}


def _card(r: random.Random) -> str:
    digits = [4] + [r.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


def _iban(r: random.Random) -> str:
    bban = "WEST" + "".join(str(r.randrange(10)) for _ in range(14))
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "GB00")) % 97
    return f"GB{check:02d}{bban}"


PII_MAKERS = {
    "EMAIL": lambda r: f"{r.choice(['anna', 'li.wei', 'j.smith', 'ops'])}{r.randrange(999)}@"
                       f"{r.choice(['example.com', 'mail.co.uk', 'corp.io'])}",
    "PHONE": lambda r: r.choice([f"+44 20 {r.randrange(1000, 9999)} {r.randrange(1000, 9999)}",
                                 f"({r.randrange(200, 999)}) {r.randrange(200, 999)}-{r.randrange(1000, 9999)}",
                                 f"+1-{r.randrange(200, 999)}-{r.randrange(200, 999)}-{r.randrange(1000, 9999)}"]),
    "CARD": _card,
    "IBAN": _iban,
    "IP": lambda r: f"{r.randrange(11, 223)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
}


def _token(r: random.Random, n: int, extra: str = "") -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + extra
    return "".join(r.choice(alphabet) for _ in range(n))


def _texts() -> list[str]:
    bodies = [body for _, body, *_ in _bbc_articles()]
    turns = [" ".join(t) for t in _chat_turns()]
    return [t[:600] for t in bodies + turns if t.strip()]


def _line(r: random.Random, i: int, user: str, answer: str) -> str:
    ts = f"2026-09-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00+00:00"
    system = "Label the topic of the article."
    kind = i % 6
    if kind == 0:
        return json.dumps({"timestamp": ts, "request": {"model": "gpt-4o-mini", "temperature": 0, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]},
            "response": {"id": f"chatcmpl-{i}", "choices": [{"message": {"content": answer}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 2}}})
    if kind == 1:
        return json.dumps({"timestamp": ts, "request": {"model": "gpt-4.1", "instructions": system, "input": user},
                           "response": {"object": "response", "id": f"resp_{i}", "output": [
                               {"type": "message", "content": [{"type": "output_text", "text": answer}]}]}})
    if kind == 2:
        return json.dumps({"timestamp": ts, "request": {"model": "claude-x", "system": system, "max_tokens": 20,
                                                        "messages": [{"role": "user", "content": user}]},
                           "response": {"type": "message", "id": f"msg_{i}",
                                        "content": [{"type": "text", "text": answer}],
                                        "usage": {"input_tokens": 10, "output_tokens": 2}}})
    if kind == 3:
        return json.dumps({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                                        {"role": "assistant", "content": answer}], "timestamp": ts, "id": i})
    if kind == 4:
        return json.dumps({"prompt": user, "completion": answer, "id": f"pc-{i}", "timestamp": ts})
    return json.dumps({"timestamp": ts, "request": {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": user}]},
        "response": {"id": f"cap-{i}", "choices": [{"message": {"content": answer}}]},
        "stillroom": {"route": "teacher", "task": "t1", "confidence": 0.3}})


def generate(folder: Path, n: int, seed: int = 7) -> dict:
    """The log files, and what was planted in them."""
    r = random.Random(seed)
    texts = _texts()
    planted = {"secret": [], "pii": []}
    corrupt = 0
    folder.mkdir(parents=True, exist_ok=True)
    files = [(folder / f"part{k}.jsonl").open("w") for k in range(4)]
    for i in range(n):
        user, answer = r.choice(texts), r.choice(["business", "sport", "tech", "politics", "entertainment"])
        if r.random() < 0.05:
            kind = r.choice(list(SECRET_MAKERS) + list(PII_MAKERS))
            value = (SECRET_MAKERS.get(kind) or PII_MAKERS[kind])(r)
            planted["secret" if kind in SECRET_KINDS else "pii"].append((i, kind, value))
            user = f"{user[:200]} (contact: {value}) {user[200:400]}"
            if r.random() < 0.3:
                answer = f"{answer}; noted {value}"
        line = _line(r, i, user, answer)
        if r.random() < 0.01:
            corrupt += 1
            line = line[: r.randrange(5, len(line) - 5)]
        files[i % 4].write(line + "\n")
    for file in files:
        file.close()
    return {"planted": planted, "corrupt": corrupt}


def _clean_false_positives(folder: Path) -> tuple[int, int]:
    """PII findings on clean real text, where every finding is a false one; and the texts read."""
    texts = _texts()
    with (folder / "clean.jsonl").open("w") as file:
        for i, text in enumerate(texts):
            file.write(json.dumps({"prompt": text, "completion": "x", "id": f"clean-{i}"}) + "\n")
    layout = Layout(folder / "clean_root")
    summary = run(Params.model_validate({"ingest": {"logs": str(folder / "clean.jsonl")}}), layout)
    return sum(v for k, v in summary["scrubbed"].items() if k not in SECRET_KINDS), len(texts)


_PLANTED = re.compile(r"\(contact: (.+?)\) |; noted (.+?)\"")


def _recall(records_path: Path, items: list) -> float:
    """Share of planted values that appear nowhere in the records (read line by line: the file is large)."""
    if not items:
        return 1.0
    planted = {json.dumps(value)[1:-1] for _, _, value in items}
    leaked = set()
    with records_path.open(encoding="utf-8") as lines:
        for line in lines:
            if "contact: " in line:
                leaked.update(v for pair in _PLANTED.findall(line) for v in pair if v in planted)
    return 1 - len(leaked) / len(planted)


def _timed_run(params: Params, layout: Layout) -> tuple[dict, float, int]:
    """(summary, seconds, peak RSS in MB) of one ingest run in a process of its own, so the RSS is ingest's."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_run_in_child, (params, layout))


def _run_in_child(params: Params, layout: Layout) -> tuple[dict, float, int]:
    start = time.perf_counter()
    summary = run(params, layout)
    seconds = time.perf_counter() - start
    return summary, seconds, round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        planted = generate(tmp / "logs", args.n)
        results = {"n": args.n}
        for mode in ("mask", "off"):
            layout = Layout(tmp / f"root_{mode}")
            params = Params.model_validate({"ingest": {"logs": str(tmp / "logs"), "scrub": mode,
                                                       "capture": str(tmp / "none")}})
            summary, seconds, rss = _timed_run(params, layout)
            results["peak_rss_mb"] = max(results.get("peak_rss_mb", 0), rss)
            results[f"records_per_s_{'scrub' if mode == 'mask' else 'plain'}"] = round(summary["records"] / seconds)
            if mode == "mask":
                results.update(quarantined=summary["quarantined"], corrupt_planted=planted["corrupt"],
                               lost=summary["lost"], records=summary["records"])
                results["secret_recall"] = _recall(layout.records, planted["planted"]["secret"])
                results["pii_recall"] = _recall(layout.records, planted["planted"]["pii"])
                found = sum(v for k, v in summary["scrubbed"].items() if k not in SECRET_KINDS)
                true_found = round(results["pii_recall"] * len(planted["planted"]["pii"]))
                false_clean, clean_texts = _clean_false_positives(tmp)
                results["pii_false_on_clean_text"] = false_clean
                results["clean_texts"] = clean_texts
                results["pii_precision"] = round(true_found / max(1, found + false_clean), 4)
                results["rerun_new_records"] = run(params, layout)["records"]
    out = Path(__file__).parent / "results" / "ingest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
