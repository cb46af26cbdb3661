"""Template mining of user turns, Drain-style: the constant part of a turn with its variable
slots masked.

Calls that fill one template ("Summarize this: {text}", "{text}\\n\\ntl;dr", "What is {n} + {n}?")
share that part, so they can be grouped by counting strings instead of embedding every call:
at a million calls, embedding each one would take hours on a CPU, while the distinct templates
number in the hundreds. Only places where people put an instruction are candidates (a head
before a colon, a separate first or last paragraph, a short turn once its payload is masked:
a JSON document, a quoted span, a file name, a number, a URL), so the opening words two chat
messages happen to share never make a template.

A hand-typed sentence whose slots are free words ("got holiday photo (jpeg, 2 mb), keep it?")
shares no exact template with its siblings; its second chance is a skeleton: the words rare
in the free-form pool become a wildcard, so only the words a person repeats stay fixed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

from stillroom.answers import fold_case_and_spacing

# A candidate longer than this is content (an article's paragraph), not an instruction.
MAX_TEMPLATE_WORDS = 60
# A whole turn is its own template only when it is this short and has a masked slot.
MAX_SHORT_TURN_WORDS = 12
# A skeleton is only made of a turn this short (characters before masking, words after).
MAX_SKELETON_CHARS = 400
MAX_SKELETON_WORDS = 30
# A word stays fixed in a skeleton when this many distinct free-form turns use it, and this share
# of them: payload words recur as the log grows, a repeated instruction's words recur with every call.
SKELETON_WORD_TEXTS = 5
SKELETON_WORD_SHARE = 0.002
# ... and a skeleton needs this many fixed content words (not function words), so "what <*> the <*>
# of <*>" never names a task: any two questions share that much.
_SKELETON_MIN_WORDS = 2
_FUNCTION_WORD_LIST = (
    "a an the and or but if of to in on at for from by with into about as is are was were be been am do does did "
    "i me my you your we our us he she it its they them their this that these those there here what which who "
    "how why when where can could would should will shall may might must not no yes so than then just very "
    "have has had get got some any all one s t m ll re ve d"
)
FUNCTION_WORDS = frozenset(_FUNCTION_WORD_LIST.split())
WILDCARD = "<*>"
# An instruction line is its own candidate over a payload of at least this many words (a chat message is shorter).
_PAYLOAD_WORDS = 40

_FILE_EXTENSIONS = (
    "pdf doc docx odt rtf txt md csv tsv xls xlsx ods ppt pptx key json xml yaml yml toml ini log sql db "
    "jpg jpeg png gif bmp tif tiff webp heic svg psd raw mp3 wav flac ogg m4a aac mp4 mov avi mkv webm "
    "zip tar gz tgz bz2 xz 7z rar iso dmg exe msi apk deb rpm bin py js ts java c cpp h rb go rs php html css "
    "sh bat ipynb bak tmp"
)
_FILE = "|".join(_FILE_EXTENSIONS.split())
# (substrings a match needs, or None; pattern; slot): a pattern whose substrings a turn lacks is
# skipped, since most turns have no URL or e-mail address and each regex pass costs microseconds.
_MASKS = (
    (("<",), re.compile(r"<[a-z]+(?:_[a-z]+)*_\d+>"), "<redacted>"),  # ingest's scrub placeholders (<EMAIL_1>)
    (("http", "www."), re.compile(r"(?:https?://|www\.)\S+"), "<url>"),
    (("@",), re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "<email>"),
    ((".",), re.compile(rf"(?<![\w/.])(?:[a-z]:)?(?:[\w~.-]*/)*[\w-][\w.()-]{{0,80}}?\.(?:{_FILE})\b"), "<file>"),
    (
        ('"', "\u201c", "`", "'"),
        re.compile(r"\"[^\"\n]{1,300}\"|\u201c[^\u201d\n]{1,300}\u201d|`[^`\n]{1,300}`|(?<!\w)'[^'\n]{1,300}'(?!\w)"),
        "<quote>",
    ),
    (("@",), re.compile(r"(?<![\w@])@\w+"), "<user>"),
    (None, re.compile(r"\d+(?:[.,:/-]\d+)*"), "<num>"),
)
_JSON = "<json>"
_SLOT_TOKENS = (*(token for _, _, token in _MASKS), _JSON)
_EDGE_PUNCTUATION = " .:;,!?-\"'"
_TOKEN = re.compile(r"<\w+>|[\w']+|[^\w\s]")


_DECODER = json.JSONDecoder()


def _json_end(text: str, start: int) -> int | None:
    """Where the JSON object or array opening at `start` ends, if it is one (the C decoder, not
    a Python loop over characters: pasted documents are most of a turn's characters)."""
    try:
        return _DECODER.raw_decode(text, start)[1]
    except ValueError:
        return None


def mask_json(text: str) -> str:
    """JSON documents pasted into a turn as one slot: the instruction around them is what repeats."""
    out, i = [], 0
    while (start := min((p for p in (text.find("{", i), text.find("[", i)) if p >= 0), default=-1)) >= 0:
        end = _json_end(text, start)
        out.append(text[i:start] + (_JSON if end else text[start]))
        i = end or start + 1
    return "".join(out) + text[i:] if out else text


@lru_cache(maxsize=65536)  # instruction parts repeat with every call of a task
def mask(text: str) -> str:
    """Case, spacing and edge punctuation folded, variable tokens (numbers, URLs, e-mail
    addresses, file names, quoted spans, @handles) replaced by a slot name, so "Order 12:"
    and "order 7" agree."""
    text = " ".join(text.split()).casefold()
    for needs, pattern, token in _MASKS:
        if needs is None or any(n in text for n in needs):
            text = pattern.sub(token, text)
    return text.strip(_EDGE_PUNCTUATION)


def _has_slot(masked: str) -> bool:
    return "<" in masked and any(token in masked for token in _SLOT_TOKENS)


def _words_besides_slots(masked: str) -> int:
    return sum(token[0].isalnum() for token in _TOKEN.findall(masked))


def candidates(text: str, mask: Callable[[str], str] = mask) -> list[str]:
    """The masked parts of a turn that could be its fixed instruction."""
    text = mask_json(text.strip())
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    head = re.match(r"([^\n]+?):(?:\s|$)", text)
    found = [head.group(1)] if head else []
    if len(paragraphs) > 1:
        found += [paragraphs[0], paragraphs[-1]]
    masked = [mask(part) for part in found if len(part.split()) <= MAX_TEMPLATE_WORDS]
    first, newline, rest = text.partition("\n")
    # an instruction line over a longer payload; the payload is a wildcard, so a cluster of these needs more evidence
    if newline and 3 <= len(first.split()) <= MAX_SHORT_TURN_WORDS and len(rest.split()) >= _PAYLOAD_WORDS:
        masked.append(f"{mask(first)} {WILDCARD}")
    if len(text) <= MAX_SKELETON_CHARS or len(text.split()) <= MAX_SHORT_TURN_WORDS:
        whole = mask(text)
        if len(whole.split()) <= MAX_SHORT_TURN_WORDS and _has_slot(whole) and _words_besides_slots(whole) >= 2:
            masked.append(whole)
    return list(dict.fromkeys(m for m in masked if m))


def _skeleton_tokens(text: str, mask: Callable[[str], str] = mask) -> list[str] | None:
    """The tokens of a short turn once masked, or None for a turn too long to be one sentence."""
    if len(text) > MAX_SKELETON_CHARS:
        return None
    tokens = _TOKEN.findall(mask(mask_json(text.strip())))
    return tokens if len(tokens) <= 2 * MAX_SKELETON_WORDS else None


class TurnForms:
    """Each distinct turn's candidates and skeleton tokens, worked out once per detect run: the
    passes, the cards and the index all read them, and at a million calls the masking is most
    of detect's time. Per run, not global, so a long-lived process does not grow with traffic."""

    def __init__(self) -> None:
        self._masks: dict[str, str] = {}  # one turn's whole text is masked for its candidates, skeleton and form
        self._candidates: dict[str, list[str]] = {}
        self._tokens: dict[str, list[str] | None] = {}
        self._skeletons: dict[str, str | None] = {}
        self._vocabulary: frozenset[str] | None = None  # what the cached skeletons were made over

    def candidates(self, text: str) -> list[str]:
        found = self._candidates.get(text)
        if found is None:
            found = self._candidates[text] = candidates(text, self.mask)
        return found

    def mask(self, text: str) -> str:
        """`mask`, memoized for the run: its cache is too small for a large log's distinct turns."""
        found = self._masks.get(text)
        if found is None:
            found = self._masks[text] = mask(text)
        return found

    def tokens(self, text: str) -> list[str] | None:
        if text not in self._tokens:
            self._tokens[text] = _skeleton_tokens(text, self.mask)
        return self._tokens[text]

    def skeleton(self, text: str, vocabulary: frozenset[str]) -> str | None:
        if vocabulary is not self._vocabulary:
            self._skeletons, self._vocabulary = {}, vocabulary
        if text not in self._skeletons:
            self._skeletons[text] = _skeleton_of(self.tokens(text), vocabulary)
        return self._skeletons[text]


def skeleton_vocabulary(texts: Iterable[str], forms: TurnForms | None = None) -> frozenset[str]:
    """The words that many distinct short turns use: what a person repeats."""
    tokens_of = forms.tokens if forms else _skeleton_tokens
    used: Counter[str] = Counter()
    short = 0
    for text in set(texts):
        tokens = tokens_of(text)
        if tokens:
            short += 1
            used.update({t for t in tokens if t[0] != "<" and (t[0].isalnum() or t[0] == "_")})
    floor = max(SKELETON_WORD_TEXTS, SKELETON_WORD_SHARE * short)
    return frozenset(word for word, n in used.items() if n >= floor)


def _wildcard_runs(tokens: Sequence[str], vocabulary: frozenset[str]) -> list[str]:
    """Tokens with every word outside `vocabulary` as a wildcard, runs of them as one."""
    out: list[str] = []
    for token in tokens:
        if token[0] == "<" or not (token[0].isalnum() or token[0] == "_") or token in vocabulary:
            out.append(token)
        elif out[-1:] != [WILDCARD]:
            out.append(WILDCARD)
    return out


def skeleton(text: str, vocabulary: frozenset[str], forms: TurnForms | None = None) -> str | None:
    """A short turn with every word outside `vocabulary` as a wildcard (runs of them as one),
    when it keeps a slot or wildcard, at least two fixed content words and no more wildcards
    than those (a chat message is mostly its own words); else None."""
    return forms.skeleton(text, vocabulary) if forms else _skeleton_of(_skeleton_tokens(text), vocabulary)


def _skeleton_of(tokens: list[str] | None, vocabulary: frozenset[str]) -> str | None:
    if not tokens:
        return None
    out = _wildcard_runs(tokens, vocabulary)
    fixed = sum(token in vocabulary and token not in FUNCTION_WORDS for token in out)
    form = " ".join(out)
    wildcards = out.count(WILDCARD)
    if fixed < max(_SKELETON_MIN_WORDS, wildcards) or not (wildcards or _has_slot(form)):
        return None
    return form


def mine(
    texts: Sequence[str],
    min_support: int = 2,
    vocabulary: frozenset[str] | None = None,
    forms: TurnForms | None = None,
) -> list[str | None]:
    """Per turn, the candidate it shares with the most other turns (ties: the first found),
    or None when it shares none with at least `min_support - 1` others; support counts
    distinct turns (the same turn sent again, in other case or spacing, is not a template: else
    a whole-turn form carrying its payload's words would count every resend, and such forms
    would grow with the log). With a `vocabulary`, a turn left without one gets its skeleton
    when at least `min_support` distinct turns share it."""
    found = {text: (forms.candidates if forms else candidates)(text) for text in dict.fromkeys(texts)}
    support = Counter(c for cs in {fold_case_and_spacing(t): cs for t, cs in found.items()}.values() for c in cs)
    picked: dict[str, str | None] = {}
    for text, cs in found.items():
        best = max(cs, key=support.__getitem__, default=None)
        picked[text] = best if best is not None and support[best] >= min_support else None
    if vocabulary is not None:
        shapes = {text: skeleton(text, vocabulary, forms) for text, p in picked.items() if p is None}
        shared = Counter(form for form in {fold_case_and_spacing(t): f for t, f in shapes.items()}.values() if form)
        picked |= {text: form for text, form in shapes.items() if form and shared[form] >= min_support}
    return [picked[text] for text in texts]


def distinct_support(texts: Sequence[str], picked: Sequence[str | None]) -> Counter[str]:
    """How many distinct turns (case and spacing aside) carry each picked template, as `mine` counts them."""
    turns = {fold_case_and_spacing(text): t for text, t in dict(zip(texts, picked, strict=True)).items() if t}
    return Counter(turns.values())
