"""`stillroom watch FOLDER`: real files in a tmp folder, the real server's routing over HTTP, real images.

The project is built by the real stages from the sample logs: the downloads task gets a TF-IDF
student (trained, evaluated and registered as champion in MLflow on SQLite); a convert-to-JPEG
task has too few calls for a student, so the HTTP fake teacher answers it. One server (the
watcher's own in-process app) serves the module; one test starts the watcher's in-process server
itself.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from stillroom.cli import app
from stillroom.config import Params, load_params
from stillroom.data import Layout, read_cards, write_cards
from stillroom.folder_watch import Outcome, TaskRequest, undo_folder, watch_folder
from stillroom.folder_watch.endpoint import local_endpoint
from stillroom.folder_watch.journal import Journal, read_journal, state_dir
from stillroom.folder_watch.watcher import FolderWatcher
from stillroom.samples import DOWNLOADS_PROMPT, build_sample_logs, downloads_answer
from stillroom.schema import TaskCard
from stillroom.stages import get
from tests.conftest import log_line
from tests.fake_teacher import FakeTeacher

CONVERT_PROMPT = (
    "You look at images people download. Should this one be converted to JPEG before it is shared? "
    "Answer yes or no."
)
CONVERTIBLE = ("png", "webp", "bmp", "tiff", "gif")
QUALITY = 40


def convert_answer(name: str) -> str:
    return "yes" if name.rpartition(".")[2].casefold() in CONVERTIBLE else "no"


def teacher_answer(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    if isinstance(user, list):  # text and image parts: the text names the file
        user = next(part["text"] for part in user if part["type"] == "text")
    if messages[0]["content"] == CONVERT_PROMPT:
        return convert_answer(user.removeprefix("Image: "))
    return downloads_answer(user)


@dataclass
class Project:
    params: Params
    layout: Layout
    downloads: TaskCard
    convert: TaskCard


@pytest.fixture(scope="module")
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher(teacher_answer) as server:
        yield server


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, teacher: FakeTeacher) -> Project:
    """Sample downloads logs plus a small convert-to-JPEG task -> the real stages -> a registered champion."""
    root = tmp_path_factory.mktemp("watch-project")
    overrides = {
        "sample": {
            "bbc_articles": 0, "wnut_tweets": 0, "oneoff_prompts": 0, "downloads_files": 800, "jpeg_images": 0,
            "bbc_headlines": 0,
            "days": 30,
        },
        "train": {"classifier": {"features": ["tfidf"]}},
        "evaluate": {"baselines": ["tfidf_lr"], "latency_samples": 3},
        "serve": {"upstream_base_url": teacher.base_url, "shadow_rate": 0.0, "shadow_min_per_hour": 0},
        "watch": {"settle_s": 0.4, "poll_s": 0.05, "nice": 0, "jpeg_quality": QUALITY},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(overrides))
    params, layout = load_params(root / "params.yaml"), Layout(root)
    logs = layout.resolve(params.ingest.logs)
    build_sample_logs(params.sample, logs)
    names = [f"download_{i}.{ext}" for i, ext in enumerate(["png", "webp", "jpg", "pdf", "bmp", "jpeg"] * 10)]
    lines = [log_line(CONVERT_PROMPT, f"Image: {name}", convert_answer(name), index=i) for i, name in enumerate(names)]
    (logs / "convert.jsonl").write_text("\n".join(lines) + "\n")
    for stage in ("ingest", "detect", "synthesize", "train", "evaluate", "register"):
        get(stage).function()(params, layout)
    cards = {card.system_prompts[0]: card for card in read_cards(layout.cards)}
    return Project(params, layout, cards[DOWNLOADS_PROMPT], cards[CONVERT_PROMPT])


@pytest.fixture(scope="module")
def served(project: Project) -> Iterator[str]:
    """The serve app the watcher runs in-process, on loopback, for every test that passes --base-url."""
    with local_endpoint(project.params, project.layout, project.downloads.id) as url:
        yield url


def drop(folder: Path, name: str, data: bytes | None = None, age_s: float = 60) -> Path:
    """A downloaded file, finished `age_s` ago (so it has settled)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else f"bytes of {name}".encode())
    moment = time.time() - age_s
    os.utime(path, (moment, moment))
    return path


def tree(folder: Path) -> dict[str, str]:
    """Every file under the folder (symlinks as their target) -> its content hash."""
    return {
        path.relative_to(folder).as_posix(): os.readlink(path) if path.is_symlink()
        else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file() or path.is_symlink()
    }


def capture_rows(layout: Layout, params: Params) -> dict[str, dict]:
    rows = {}
    for path in sorted(layout.resolve(params.serve.capture_dir).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[row["stillroom"]["request_id"]] = row
    return rows


def run(project: Project, folder: Path, card: TaskCard, base_url: str | None, **options) -> tuple[dict, dict]:
    outcomes: dict[str, Outcome] = {}
    summary = watch_folder(project.params, project.layout, folder, card.name, base_url=base_url, once=True,
                           emit=lambda o: outcomes.__setitem__(o.file, o), **options)
    return summary, outcomes


def test_the_request_has_the_shape_of_the_logged_calls(project):
    request = TaskRequest.from_card(project.downloads)
    assert request.action == "move" and request.shape == "File: {name}"
    body = request.body("IMG_0001.JPG")
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "system", "content": DOWNLOADS_PROMPT},
                                {"role": "user", "content": "File: IMG_0001.JPG"}]
    convert = TaskRequest.from_card(project.convert)
    assert convert.action == "convert" and convert.shape == "Image: {name}"


def test_by_default_it_only_suggests_and_captures_each_exchange(project, tmp_path):
    folder = tmp_path / "Downloads"
    names = {"IMG_20240812_143022.jpg": "images", "Firefox Setup 128.0.3.exe": "installers",
             "linux-6.10.3.tar.xz": "archives", "Screenshot 2024-08-12 at 14.30.22.PNG": "images"}
    for name in names:
        drop(folder, name)
    before = tree(folder)
    niceness = os.nice(0)
    params = project.params.model_copy(update={"watch": project.params.watch.model_copy(update={"nice": 1})})
    outcomes: dict[str, Outcome] = {}
    summary = watch_folder(params, project.layout, folder, project.downloads.name, once=True,
                           emit=lambda o: outcomes.__setitem__(o.file, o))  # the app in-process

    assert os.nice(0) == min(niceness + 1, 19)
    assert tree(folder) == before  # nothing moved
    assert summary["files"] == 4 and summary["suggest"] == 4 and summary["action"] == "suggest"
    assert {name: o.answer for name, o in outcomes.items()} == names
    assert {o.route for o in outcomes.values()} == {"student"}
    assert all(o.confidence is not None and o.confidence >= 0.5 for o in outcomes.values())
    assert outcomes["IMG_20240812_143022.jpg"].line().startswith("IMG_20240812_143022.jpg -> images [student ")
    rows = capture_rows(project.layout, project.params)
    for name, outcome in outcomes.items():
        row = rows[outcome.request_id]
        assert row["request"]["messages"][-1]["content"] == f"File: {name}"
        assert row["stillroom"]["route"] == "student" and row["stillroom"]["task"] == project.downloads.name
    journal = read_journal(next((state_dir(project.params, project.layout, folder.resolve()) / "runs").iterdir()))
    assert [e["event"] for e in journal] == ["start", *["suggest"] * 4, "end"]


def test_apply_moves_each_file_into_its_folder_and_undo_puts_everything_back(project, served, tmp_path):
    folder = tmp_path / "Downloads"
    drop(folder, "IMG_0042.JPG")
    drop(folder, "report (1).PDF")
    drop(folder, "node-v20.16.0-linux-x64.tar.gz")
    drop(folder, "Voice Memo 12.m4a")
    drop(folder, "images/holiday.png", b"the user's own")  # an existing sub-folder, kept as it is
    before = tree(folder)

    summary, outcomes = run(project, folder, project.downloads, served, apply=True)

    assert summary["move"] == 4 and summary["action"] == "move"
    assert {o.to for o in outcomes.values()} == {
        "images/IMG_0042.JPG", "documents/report (1).PDF", "archives/node-v20.16.0-linux-x64.tar.gz",
        "audio/Voice Memo 12.m4a",
    }
    after = tree(folder)
    assert sorted(after.values()) == sorted(before.values())  # every file still there, none overwritten
    assert after["images/holiday.png"] == before["images/holiday.png"]

    undone = undo_folder(project.params, project.layout, folder)
    assert undone["restored"] == 4 and undone["removed"] == 3 and undone["left"] == 0  # 3 folders it made
    assert tree(folder) == before
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["images"]
    again = undo_folder(project.params, project.layout, folder)
    assert again["run"] is None and tree(folder) == before


def test_a_name_collision_never_overwrites_a_file_moving_or_undoing(project, served, tmp_path):
    folder = tmp_path / "Downloads"
    drop(folder, "images/IMG_0001.JPG", b"the first one, sorted last week")
    drop(folder, "images/IMG_0001 (1).JPG", b"the second one")
    drop(folder, "IMG_0001.JPG", b"a third camera roll's IMG_0001")
    drop(folder, "backup.tar.gz", b"archive v2")
    drop(folder, "archives/backup.tar.gz", b"archive v1")
    before = tree(folder)

    _, outcomes = run(project, folder, project.downloads, served, apply=True)

    assert outcomes["IMG_0001.JPG"].to == "images/IMG_0001 (2).JPG"
    assert outcomes["backup.tar.gz"].to == "archives/backup (1).tar.gz"  # `.tar.gz` kept whole
    assert "not overwritten" in outcomes["IMG_0001.JPG"].reason
    after = tree(folder)
    assert sorted(after.values()) == sorted(before.values())
    assert after["images/IMG_0001.JPG"] == before["images/IMG_0001.JPG"]

    drop(folder, "IMG_0001.JPG", b"downloaded again meanwhile")  # the old name is taken again
    undone = undo_folder(project.params, project.layout, folder)
    assert undone["restored"] == 2
    now = tree(folder)
    assert now["IMG_0001.JPG"] == hashlib.sha256(b"downloaded again meanwhile").hexdigest()
    assert now["IMG_0001 (1).JPG"] == before["IMG_0001.JPG"]  # came back beside it, under a free name
    assert now["backup.tar.gz"] == before["backup.tar.gz"]
    assert len(now) == len(before) + 1


def _photo_with_orientation() -> bytes:
    """A 60x30 WebP whose EXIF says: rotate 90 degrees clockwise to show it (Orientation 6)."""
    image = Image.new("RGB", (60, 30), (0, 90, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Pixel"  # Make: kept on the JPEG
    out = io.BytesIO()
    image.save(out, "WEBP", exif=exif.tobytes(), lossless=True)
    return out.getvalue()


def _logo_with_alpha() -> bytes:
    """40x20: the left half transparent, the right half opaque red."""
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste((220, 0, 0, 255), (20, 0, 40, 20))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _quantization(quality: int) -> dict:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(out, "JPEG", quality=quality)
    return Image.open(out).quantization


def test_a_yes_from_the_convert_task_writes_an_upright_jpeg_beside_the_original(project, served, tmp_path):
    folder = tmp_path / "Downloads"
    logo = _logo_with_alpha()
    drop(folder, "photo.webp", _photo_with_orientation())
    drop(folder, "logo.png", logo)
    drop(folder, "logo.jpg", b"a JPEG the user already had under that name")
    drop(folder, "snap.jpg", b"\xff\xd8\xff already a JPEG")
    drop(folder, "broken.png", logo[: len(logo) // 2])  # a download cut off halfway
    before = tree(folder)

    summary, outcomes = run(project, folder, project.convert, served, apply=True)

    assert summary["convert"] == 2 and summary["error"] == 1 and summary["suggest"] == 2
    assert {o.route for o in outcomes.values()} == {"teacher"}  # no student for this task: the teacher said
    assert outcomes["snap.jpg"].answer == "no" and outcomes["snap.jpg"].to is None
    assert outcomes["broken.png"].action == "error" and "damaged" in outcomes["broken.png"].reason
    assert outcomes["photo.webp"].to == "photo.jpg"
    assert outcomes["logo.png"].to == "logo (1).jpg"  # logo.jpg existed: never overwritten
    after = tree(folder)
    assert {name: after[name] for name in before} == before  # originals kept, byte for byte
    assert set(after) - set(before) == {"photo.jpg", "logo (1).jpg"}

    with Image.open(folder / "photo.jpg") as photo:
        assert (photo.format, photo.mode, photo.size) == ("JPEG", "RGB", (30, 60))  # rotated upright
        assert photo.getexif().get(0x0112) is None and photo.getexif().get(0x010F) == "Pixel"
        assert photo.quantization == _quantization(QUALITY)
    with Image.open(folder / "logo (1).jpg") as flat:
        assert min(flat.getpixel((5, 10))) >= 245  # transparency laid on white
        red = flat.getpixel((35, 10))
        assert red[0] >= 190 and red[1] <= 40 and red[2] <= 40

    undone = undo_folder(project.params, project.layout, folder)
    assert undone["removed"] == 2 and tree(folder) == before


def test_an_image_task_is_sent_the_file_itself_as_a_data_url_part(project, served, teacher, tmp_path):
    """A task whose logged calls carried the image (`inputs: image+text`) gets the file's bytes, as logged."""
    layout = Layout(tmp_path / "project")
    write_cards(layout.cards, [project.convert.model_copy(update={"inputs": "image+text"})])
    folder = tmp_path / "Downloads"
    logo = _logo_with_alpha()
    drop(folder, "logo.png", logo)
    drop(folder, "notes.pdf", b"%PDF-1.7 not an image")
    asked = len(teacher.requests)
    outcomes: dict[str, Outcome] = {}
    watch_folder(project.params, layout, folder, project.convert.name, apply=True, once=True, base_url=served,
                 emit=lambda o: outcomes.__setitem__(o.file, o))

    assert outcomes["notes.pdf"].action == "skip" and "the task reads images" in outcomes["notes.pdf"].reason
    assert outcomes["logo.png"].action == "convert" and outcomes["logo.png"].to == "logo.jpg"
    (request,) = teacher.requests[asked:]  # the PDF was never sent
    text, image = request["messages"][-1]["content"]
    assert text == {"type": "text", "text": "Image: logo.png"}
    assert image["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(logo).decode()


def test_symlinks_are_never_followed_out_of_the_folder(project, served, tmp_path):
    folder, outside = tmp_path / "Downloads", tmp_path / "elsewhere"
    drop(outside, "secret.txt", b"not yours")
    folder.mkdir()
    (folder / "secret.txt").symlink_to(outside / "secret.txt")
    (folder / "images").symlink_to(outside, target_is_directory=True)
    drop(folder, "IMG_0007.JPG")
    outside_before = tree(outside)

    summary, outcomes = run(project, folder, project.downloads, served, apply=True)

    assert outcomes["secret.txt"].action == "skip" and "symlink" in outcomes["secret.txt"].reason
    assert outcomes["IMG_0007.JPG"].answer == "images" and outcomes["IMG_0007.JPG"].action == "skip"
    assert "symlink" in outcomes["IMG_0007.JPG"].reason
    assert tree(outside) == outside_before and (folder / "IMG_0007.JPG").is_file()
    assert summary.get("move", 0) == 0


def test_a_file_still_being_written_waits_until_it_settles(project, served, tmp_path):
    folder = tmp_path / "Downloads"
    folder.mkdir()
    outcomes: list[tuple[float, Outcome]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_folder, args=(project.params, project.layout, folder,
                                                          project.downloads.name),
                               kwargs={"apply": True, "base_url": served, "stop": stop,
                                       "emit": lambda o: outcomes.append((time.monotonic(), o))})
    watcher.start()
    try:
        time.sleep(0.5)  # the observer is watching
        chunks = 12
        with open(folder / "dataset-2026.zip", "wb") as download:  # a browser writing as bytes arrive
            for chunk in range(chunks):
                time.sleep(0.1 if chunk else 0)  # gaps under settle_s (0.4 s)
                download.write(b"x" * 1000)
                download.flush()
            finished = time.monotonic()
        deadline = finished + 20
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join(timeout=20)
    assert len(outcomes) == 1
    when, outcome = outcomes[0]
    assert when >= finished + project.params.watch.settle_s * 0.9  # not before it held still for settle_s
    assert outcome.action == "move" and outcome.to == "archives/dataset-2026.zip"
    assert (folder / "archives/dataset-2026.zip").stat().st_size == chunks * 1000


def test_a_flood_of_files_waits_in_a_bounded_queue_and_every_one_is_handled(project, served, tmp_path):
    folder = tmp_path / "Downloads"
    names = [f"IMG_{n:04d}.JPG" for n in range(7)]
    for name in names:
        drop(folder, name)
    watch = project.params.watch.model_copy(update={"max_pending": 2, "rescan_s": 3600})  # no periodic listing
    params = project.params.model_copy(update={"watch": watch})
    with Journal(tmp_path / "state") as journal:
        bounded = FolderWatcher(folder, TaskRequest.from_card(project.downloads), None, watch, journal, False, print)
        assert bounded.scan() is False and len(bounded.pending) == 2  # the rest wait for the next listing

    seen: list[str] = []
    stop = threading.Event()

    def emit(outcome: Outcome) -> None:
        seen.append(outcome.file)
        if len(seen) == len(names):
            stop.set()

    thread = threading.Thread(target=watch_folder, args=(params, project.layout, folder, project.downloads.name),
                              kwargs={"base_url": served, "stop": stop, "emit": emit})
    thread.start()
    thread.join(timeout=60)
    stop.set()
    assert sorted(seen) == names  # each listed as the queue drained, none waiting for rescan_s


def test_once_skips_a_file_still_being_written_and_the_next_run_takes_it(project, served, tmp_path):
    folder = tmp_path / "Downloads"
    folder.mkdir()
    writing = threading.Event()

    def write_slowly() -> None:
        with open(folder / "movie.mkv", "wb") as download:
            for _ in range(20):
                download.write(b"y" * 500)
                download.flush()
                writing.set()
                time.sleep(0.05)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    writing.wait(5)
    _, outcomes = run(project, folder, project.downloads, served)
    writer.join()
    assert outcomes["movie.mkv"].action == "skip" and "still being written" in outcomes["movie.mkv"].reason
    assert outcomes["movie.mkv"].request_id is None  # the task was never asked
    _, outcomes = run(project, folder, project.downloads, served)
    assert outcomes["movie.mkv"].action == "suggest" and outcomes["movie.mkv"].answer == "video"


def test_the_cli_watches_with_either_mode_and_prints_json_lines(project, served, tmp_path):
    runner = CliRunner()
    folder = tmp_path / "Downloads"
    drop(folder, "Invoice-2291.pdf")
    root = ["--root", str(project.layout.root)]
    result = runner.invoke(app, ["watch", str(folder), "--task", project.downloads.name, "--once", "--apply",
                                 "--json", "--base-url", served, *root])
    assert result.exit_code == 0, result.output
    *files, last = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert files == [{**files[0], "file": "Invoice-2291.pdf", "action": "move", "to": "documents/Invoice-2291.pdf"}]
    assert last["summary"]["move"] == 1
    undone = runner.invoke(app, ["watch", str(folder), "--undo", "--json", *root])
    assert undone.exit_code == 0 and json.loads(undone.stdout)["restored"] == 1
    assert (folder / "Invoice-2291.pdf").is_file()

    no_folder = runner.invoke(app, ["watch", "--task", project.downloads.name, *root])
    assert no_folder.exit_code == 2
    unknown = runner.invoke(app, ["watch", str(folder), "--task", "no-such-task", "--once", *root])
    assert unknown.exit_code == 1
    shown = runner.invoke(app, ["watch", "--help"], terminal_width=200)
    assert "Without FOLDER: retrain" in shown.stdout and "With FOLDER and --task" in shown.stdout
