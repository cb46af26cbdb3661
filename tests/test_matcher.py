"""The request matcher serving uses must say what detect said, on every logged record."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stillroom.config import DetectParams
from stillroom.detect.matcher import TaskMatcher, build_index, write_index
from stillroom.detect.pipeline import detect_tasks
from stillroom.embeddings import embed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from discovery import build_log


@pytest.fixture(scope="module")
def detected():
    records, truth = build_log(3000, seed=1)
    params = DetectParams()
    detection = detect_tasks(records, params)
    return records, truth, detection, params


def _matcher(detected, with_embedding: bool, tmp_path: Path) -> TaskMatcher:
    records, _, detection, params = detected

    def embed_fn(texts: list[str]):
        return embed(texts, params.embedder)

    index = build_index(
        records,
        detection.assignments,
        detection.cards,
        embed_fn,
        params.cluster_similarity,
        detection.skeleton_words,
        detection.form_index,
        (params.second_chance_similarity, params.second_chance_margin),
    )
    path = tmp_path / "index.json"
    write_index(path, index)
    return TaskMatcher.load(path, embed_fn if with_embedding else None)


@pytest.mark.parametrize("with_embedding", [False, True])
def test_matcher_agrees_with_detect_and_never_claims_a_one_off(detected, with_embedding, tmp_path):
    records, truth, detection, _ = detected
    matcher = _matcher(detected, with_embedding, tmp_path)
    agree = oneoffs = oneoffs_left_alone = 0
    for record in records:
        match = matcher.match_record(record)
        found = match.task_id if match else None
        agree += found == detection.assignments[record.id]
        if truth[record.id] == "":
            oneoffs += 1
            oneoffs_left_alone += found is None
    assert agree / len(records) >= 0.995
    assert oneoffs > 100 and oneoffs_left_alone == oneoffs


def test_a_program_request_is_matched_by_structure_and_a_stranger_by_nothing(detected, tmp_path):
    records, _, detection, _ = detected
    matcher = _matcher(detected, False, tmp_path)
    program = next(r for r in records if r.system_prompt and detection.assignments[r.id])
    match = matcher.match_record(program)
    assert match is not None and match.by == "structure" and match.task_id == detection.assignments[program.id]
    assert matcher.match([{"role": "user", "content": "what should I cook tonight with leeks?"}]) is None
    # content-part lists are read like strings
    parts = [{"role": m.role, "content": [{"type": "text", "text": m.content}]} for m in program.prompt()]
    assert matcher.match(parts) == match


def test_missing_index_says_to_run_detect(tmp_path):
    with pytest.raises(FileNotFoundError, match="stillroom detect"):
        TaskMatcher.load(tmp_path / "index.json")
