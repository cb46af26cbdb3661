"""The span student at inference: a small encoder tags the input's word pieces, and the JSON answer is
built from the tagged spans, so every value it gives is a copy of the input.

For extraction tasks whose answers are all copied (an array of strings, or an object of string and
string-array fields), tagging does in one encoder pass what the LM does a token at a time: an answer
cannot drop the end of a long list, misspell a copy or write in a name the input does not hold.

Each field of the answer is a *slot* with a B(egin) and an I(nside) tag; `O` is everything else.
A list field takes every tagged run; a single-valued field takes the one span that makes the likeliest
tagging (`best_span`), so a doubtful word inside a subject line neither cuts it nor leaves two pieces.
Where the teacher's values of a field are whole whitespace-delimited tokens of the input (`whole_tokens`,
learnt per field in training), a span is grown to them: the encoder splits `'Rickey` into `'` and
`Rickey`. Where no value crosses a line break (`one_line_values`), no span runs on past one: a tagged
run that does is read as two, and a single-valued field's span stops at the line's end. Where a field's
values always run on to their line's end (`to_line_end`, an email's subject), its span is grown to it.
The encoder is uncased, so each piece's letter case (lower, Capitalised, UPPER, digits, other) is
added to its embedding as a learned vector. Inputs longer than the encoder's window are read in
overlapping windows, or only their head where training found every answer near the start of long
inputs (`read_chars`: a whole email's header fields cost one window, not twenty). Confidence is the
chance that the answer is right, words read as independent (`decode`): a single-valued
field's span against every other span it could be, a list field's every word in or out of it. It is raised
to a power fitted on validation in training (`confidence_power`), so the router's 99% means 99%.
Training is `span_train`.

A trained tagger is served as an ONNX graph (`runtime: onnx`; int8 weights, or float32 where int8 lost
validation agreement: `onnx_weights`) run by onnxruntime on one thread, with the `tokenizers` library
reading the words: no torch or transformers at answer time. Folders kept in torch (an export that lost
agreement, or one from before exports) load the torch model instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stillroom.schema import Prediction
from stillroom.students.base import Prompt, Student, last_user_turn, read_manifest
from stillroom.students.json_answers import distinct_items

ENCODER_DIR = "encoder"
TOKENIZER_FILE = "tokenizer.json"  # in ENCODER_DIR
ONNX_FILE = "tagger.onnx"  # in ENCODER_DIR: word pieces, attention mask and case ids in, tag logits out
SHAPES_FILE = "shapes.safetensors"
# A piece's letter case, as the uncased encoder cannot see it: padding and special tokens are 0.
SHAPES = ("special", "lower", "capitalised", "upper", "digits", "other")


def piece_shape(piece: str) -> int:
    """The index in SHAPES of a piece of the input as written."""
    letters = [c for c in piece if c.isalpha()]
    if letters:
        if all(c.isupper() for c in letters):
            return 3 if len(letters) > 1 else 2
        return 2 if letters[0].isupper() else 1
    if any(c.isdigit() for c in piece):
        return 4
    return 5 if piece else 0


def tag_names(slots: Sequence[dict]) -> list[str]:
    """O, then B- and I- for each slot in order: the label index of B for slot i is 1 + 2i."""
    names = ["O"]
    for slot in slots:
        names += [f"B-{slot['key']}", f"I-{slot['key']}"]
    return names


def at_token_edge(text: str, at: int, input_is_json: bool) -> bool:
    """Whether a whitespace-delimited token may start or end at `at`: the text's ends, whitespace, and in a JSON
    input a string's own (unescaped) quote count as delimiters."""
    if at < 0 or at >= len(text):
        return True
    char = text[at]
    return char.isspace() or (input_is_json and char == '"' and (at == 0 or text[at - 1] != "\\"))


def whole_tokens(text: str, start: int, end: int, input_is_json: bool) -> tuple[int, int]:
    """The span grown to whole whitespace-delimited tokens: `'Rickey` where the tags read `Rickey`."""
    while not at_token_edge(text, start - 1, input_is_json):
        start -= 1
    while not at_token_edge(text, end, input_is_json):
        end += 1
    return start, end


def line_end(text: str, end: int) -> int:
    """Where the line a span ends on ends, its trailing blanks left out: a value that always runs on to it
    (`to_line_end`, learnt per field) is grown to it, so a subject the tagger stops a word short of is whole."""
    stop = text.find("\n", end)
    stop = len(text) if stop < 0 else stop
    while stop > end and text[stop - 1] in " \t\r":
        stop -= 1
    return stop


def unescape_json_span(text: str) -> str:
    """A span cut from inside a JSON string of the input, as the value it stands for."""
    try:
        return json.loads(f'"{text}"')
    except ValueError:
        return text


def window_tokenizer(tokenizer_json: str, max_length: int, stride: int) -> Any:
    """The encoder's word-piece tokenizer (a `tokenizers.Tokenizer` as JSON) cutting an input into windows
    of `max_length` pieces that overlap by `stride`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, stride=stride)
    return tokenizer


def head_to_read(text: str, read_chars: int | None) -> str:
    """The part of an input the tagger reads: all of it, or (`read_chars`, learnt in training when every answer
    sits near the start of long inputs, as an email's header fields do) its head, cut at a word's end."""
    if read_chars is None or len(text) <= read_chars:
        return text
    cut = next((at for at in range(read_chars, len(text)) if text[at].isspace()), len(text))
    return text[:cut]


class Windows:
    """An input's word pieces in overlapping windows of the encoder's length, with each piece's
    characters in the input and its case, so tags can be read back onto the text.

    Tags are read per word (the encoder's pre-tokenised words: punctuation is a word of its own) off its
    first piece, so a span never starts or ends inside a word."""

    def __init__(self, tokenizer: Any, text: str):
        first = tokenizer.encode(text)
        encodings = [first, *first.overflowing]
        self.input_ids: list[list[int]] = [e.ids for e in encodings]
        self.offsets: list[list[tuple[int, int]]] = [e.offsets for e in encodings]
        word_ids = [e.word_ids for e in encodings]
        self.shapes = [
            [0 if word is None else piece_shape(text[a:b]) for (a, b), word in zip(offs, words, strict=True)]
            for offs, words in zip(self.offsets, word_ids, strict=True)
        ]
        # Each word of the text once, in order: its characters, and where its first piece sits in each window.
        spans: dict[int, list[int]] = {}
        places: dict[int, list[tuple[int, int]]] = {}
        for w, (offs, words) in enumerate(zip(self.offsets, word_ids, strict=True)):
            previous = None
            for t, ((a, b), word) in enumerate(zip(offs, words, strict=True)):
                if word is None:
                    previous = None
                    continue
                span = spans.setdefault(word, [a, b])
                span[0], span[1] = min(span[0], a), max(span[1], b)
                if word != previous:
                    places.setdefault(word, []).append((w, t))
                previous = word
        order = sorted(places)
        self.words: list[tuple[int, int]] = [(spans[k][0], spans[k][1]) for k in order]
        self.places = [places[k] for k in order]
        # window -> {position of a word's first piece: the word's index}, for the tags training sets.
        self.first_pieces: list[dict[int, int]] = [{} for _ in self.input_ids]
        for index, word_places in enumerate(self.places):
            for w, t in word_places:
                self.first_pieces[w][t] = index


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TorchTagger:
    """The fine-tuned encoder in torch: what training updates, and what folders kept in torch run."""

    def __init__(self, model: Any, shape_embedding: Any):
        self.model, self.shape_embedding = model, shape_embedding
        self.n_tags = int(model.config.num_labels)

    def probabilities(self, ids: Sequence[list[int]], shapes: Sequence[list[int]]) -> list[np.ndarray]:
        """(pieces, tags) probabilities of each window, the windows padded into one batch."""
        import torch

        longest = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [0] * (longest - len(x)) for x in ids])
        shape_ids = torch.tensor([x + [0] * (longest - len(x)) for x in shapes])
        mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in ids])
        with torch.inference_mode():
            logits = tag_logits(self.model, self.shape_embedding, input_ids, shape_ids, mask)
        probabilities = torch.softmax(logits.float(), dim=-1).numpy()
        return [probabilities[row, : len(x)] for row, x in enumerate(ids)]


class OnnxTagger:
    """The exported tagger run by onnxruntime. Each window runs alone: int8 scales activations per run, so
    a batch's padding would shift a window's tags, and a served request must get the tags evaluation saw."""

    def __init__(self, path: Path):
        from stillroom.students.onnx_encoder import cpu_session

        self.session = cpu_session(path)
        self.n_tags = int(self.session.get_outputs()[0].shape[-1])

    def probabilities(self, ids: Sequence[list[int]], shapes: Sequence[list[int]]) -> list[np.ndarray]:
        results = []
        for window, case in zip(ids, shapes, strict=True):
            input_ids = np.array([window], dtype=np.int64)
            feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "shape_ids": np.array([case])}
            results.append(softmax(self.session.run(None, feeds)[0][0].astype(np.float32)))
        return results


def encode_windows(tagger: TorchTagger | OnnxTagger, windows: Sequence[Windows], batch_size: int) -> list[np.ndarray]:
    """Tag probabilities for every word of each input ((words, tags) arrays) off its first piece, a word
    read in several windows getting the mean of its readings."""
    flat = [(i, w) for i, item in enumerate(windows) for w in range(len(item.input_ids))]
    readings: dict[tuple[int, int], np.ndarray] = {}
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        ids = [windows[i].input_ids[w] for i, w in chunk]
        shapes = [windows[i].shapes[w] for i, w in chunk]
        readings.update(zip(chunk, tagger.probabilities(ids, shapes), strict=True))
    results = []
    for i, item in enumerate(windows):
        rows = [np.mean([readings[(i, w)][t] for w, t in places], axis=0) for places in item.places]
        results.append(np.asarray(rows, dtype=np.float32).reshape(len(rows), tagger.n_tags))
    return results


def tag_logits(model: Any, shape_embedding: Any, input_ids: Any, shape_ids: Any, attention_mask: Any) -> Any:
    """The token classifier's logits with each piece's case vector added to its word embedding."""
    embedded = model.get_input_embeddings()(input_ids) + shape_embedding(shape_ids)
    return model(inputs_embeds=embedded, attention_mask=attention_mask).logits


def read_spans(tags: np.ndarray, n_slots: int, line_starts: frozenset[int] = frozenset()) -> list[tuple[int, int, int]]:
    """(slot, first word, last word) of each tagged span: B opens one, I of the same slot goes on,
    and an I after anything else opens one too (a missed B is likelier than a stray I). A word in
    `line_starts` opens a new span whatever its tag, for tasks whose values never cross a line."""
    spans: list[list[int]] = []
    open_slot = None
    for index, tag in enumerate(tags.tolist()):
        if tag == 0 or tag > 2 * n_slots:
            open_slot = None
            continue
        slot, inside = (tag - 1) // 2, tag % 2 == 0
        if inside and open_slot == slot and index not in line_starts:
            spans[-1][2] = index
        else:
            spans.append([slot, index, index])
            open_slot = slot
    return [(s, a, b) for s, a, b in spans]


def field_log_odds(probabilities: np.ndarray, slot: int) -> tuple[np.ndarray, np.ndarray]:
    """Each word's log-odds of opening the slot's span (B, or I: a missed B is likelier than a stray I) and
    of going on with it (I), against being outside it."""
    begin, inside = probabilities[:, 1 + 2 * slot], probabilities[:, 2 + 2 * slot]
    outside = np.log(np.clip(1.0 - begin - inside, 1e-12, None))
    return np.log(np.clip(begin + inside, 1e-12, None)) - outside, np.log(np.clip(inside, 1e-12, None)) - outside


def best_span(
    probabilities: np.ndarray, slot: int, line_starts: frozenset[int] = frozenset(), required: bool = False
) -> tuple[int, int] | None:
    """(first word, last word) of the one span for a single-valued slot that makes the likeliest tagging, or
    None when every span is less likely than none, unless the field is `required` (the teacher always
    filled it: an empty value would surely be wrong).

    Each word in the span trades its chance of being outside the slot for its chance of opening or going on
    with it (`field_log_odds`); the best run of those log-odds is found in one pass. Reading the tags word
    by word instead cuts a subject at a doubtful word (`Will` for `Will Tory tax cuts lift spirits?`) or
    keeps a second, weaker span (a name's letters in the address beside it). A span never runs on past a
    word in `line_starts`."""
    opens, goes_on = field_log_odds(probabilities, slot)
    best, span = (-np.inf if required else 0.0), None
    run, run_start = -np.inf, 0
    for word in range(len(probabilities)):
        carried = run + goes_on[word] if word not in line_starts else -np.inf
        if opens[word] >= carried:
            run, run_start = opens[word], word
        else:
            run = carried
        if run > best:
            best, span = run, (run_start, word)
    return span


def span_log_posterior(
    probabilities: np.ndarray,
    slot: int,
    span: tuple[int, int] | None,
    line_starts: frozenset[int] = frozenset(),
    required: bool = False,
) -> float:
    """log P(`span` is the single-valued slot's value), against every other span it could be (a forward sum
    over spans, none crossing a line start) and against no value unless `required`. Words far from the
    value that the tagger slightly doubts barely move it; a rival span, or a boundary one word off, does."""
    opens, goes_on = field_log_odds(probabilities, slot)
    ending, total = -np.inf, (-np.inf if required else 0.0)  # the log-sum of spans ending at the word; of all
    for word in range(len(probabilities)):
        carried = ending + goes_on[word] if word not in line_starts else -np.inf
        ending = np.logaddexp(opens[word], carried)
        total = np.logaddexp(total, ending)
    if span is None:
        return float(-total)
    first, last = span
    return float(opens[first] + goes_on[first + 1 : last + 1].sum() - total)


def list_log_probability(
    probabilities: np.ndarray, slot: int, tags: np.ndarray, line_starts: frozenset[int] = frozenset()
) -> float:
    """log P(a list slot's spans are exactly the tagged ones): each word outside the slot, opening one of its
    spans (B or I; B alone right after another of its spans) or going on with one (I), as tagged."""
    begin, inside = probabilities[:, 1 + 2 * slot], probabilities[:, 2 + 2 * slot]
    mine = np.isin(tags, [1 + 2 * slot, 2 + 2 * slot])
    after_mine = np.append(False, mine[:-1])
    after_mine[list(line_starts)] = False
    chance = np.where(
        ~mine,
        1.0 - begin - inside,
        np.where(after_mine, np.where(tags == 2 + 2 * slot, inside, begin), begin + inside),
    )
    return float(np.log(np.clip(chance, 1e-12, None)).sum())


def decode(
    probabilities: np.ndarray, slots: Sequence[dict], line_starts: frozenset[int] = frozenset()
) -> tuple[np.ndarray, float]:
    """Each word's tag, and the log of the chance that the answer they spell is right (words read as
    independent).

    Tags: each word's likeliest, except that a single-valued slot gets exactly its best span (`best_span`)
    and no other word of it. A word in one single-valued slot's span is not another's, and a word left out
    of every such span takes its likeliest of the other tags (never a single-valued slot's: that would grow
    or add to a span already chosen).
    Chance: a single-valued slot's span against every other it could have taken off the same free words
    (`span_log_posterior`), times each list slot's words in or out of it as tagged (`list_log_probability`)."""
    single = [slot for slot, facts in enumerate(slots) if not facts["many"]]
    columns = {slot: [1 + 2 * slot, 2 + 2 * slot] for slot in single}
    others = probabilities.copy()
    for slot in single:
        others[:, columns[slot]] = -1.0
    tags = others.argmax(axis=1)
    log_probability = 0.0
    claimed = np.zeros(len(probabilities), dtype=bool)
    for slot in single:
        free = probabilities.copy()
        free[np.ix_(claimed, columns[slot])] = 0.0
        required = bool(slots[slot].get("required"))
        span = best_span(free, slot, line_starts, required)
        log_probability += span_log_posterior(free, slot, span, line_starts, required)
        if span is not None:
            first, last = span
            tags[first] = columns[slot][0]
            tags[first + 1 : last + 1] = columns[slot][1]
            claimed[first : last + 1] = True
    for slot, facts in enumerate(slots):
        if facts["many"]:
            log_probability += list_log_probability(probabilities, slot, tags, line_starts)
    return tags, log_probability


class SpanStudent(Student):
    kind = "span"

    def __init__(self, tagger: TorchTagger | OnnxTagger, tokenizer: Any, info: dict):
        """`tokenizer` is a `window_tokenizer`."""
        self.tagger, self.tokenizer, self.info = tagger, tokenizer, info
        self.slots: list[dict] = info["slots"]

    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        import tokenizers  # noqa: F401

        if manifest.get("runtime") == "onnx":
            import onnxruntime  # noqa: F401
        else:
            import torch  # noqa: F401
            import transformers  # noqa: F401

    @classmethod
    def load(cls, directory: Path) -> SpanStudent:
        directory = Path(directory)
        info = read_manifest(directory)
        encoder = directory / ENCODER_DIR
        tokenizer_json = (encoder / TOKENIZER_FILE).read_text(encoding="utf-8")
        tokenizer = window_tokenizer(tokenizer_json, int(info.get("max_length", 256)), int(info.get("stride", 64)))
        if info.get("runtime") == "onnx":
            return cls(OnnxTagger(encoder / ONNX_FILE), tokenizer, info)
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForTokenClassification

        model = AutoModelForTokenClassification.from_pretrained(encoder).eval()
        weights = load_file(directory / SHAPES_FILE)["weight"]
        shape_embedding = torch.nn.Embedding.from_pretrained(weights.float(), freeze=True)
        return cls(TorchTagger(model, shape_embedding), tokenizer, info)

    def tag_probabilities(self, texts: Sequence[str], batch_size: int = 16) -> list[tuple[Windows, np.ndarray]]:
        read_chars = self.info.get("read_chars")
        windows = [Windows(self.tokenizer, head_to_read(text, read_chars)) for text in texts]
        return list(zip(windows, encode_windows(self.tagger, windows, batch_size), strict=True))

    def predict(self, prompts: Sequence[Prompt], batch_size: int = 16) -> list[Prediction]:
        texts = [last_user_turn(prompt) for prompt in prompts]
        tagged = self.tag_probabilities(texts, batch_size)
        return [
            self.answer(text, windows, probabilities)
            for text, (windows, probabilities) in zip(texts, tagged, strict=True)
        ]

    def answer(self, text: str, windows: Windows, probabilities: np.ndarray) -> Prediction:
        """The JSON answer the tags spell, and the calibrated chance that it is right."""
        values: list[list[str]] = [[] for _ in self.slots]
        if len(probabilities) == 0:
            return Prediction(text=self.render(values), confidence=0.0)
        input_is_json = bool(self.info.get("input_is_json"))
        line_starts = frozenset()
        if self.info.get("one_line_values"):  # words that open a line: a value never runs on past one
            words = windows.words
            line_starts = frozenset(k for k in range(1, len(words)) if "\n" in text[words[k - 1][1] : words[k][0]])
        tags, log_probability = decode(probabilities, self.slots, line_starts)
        for slot, first, last in read_spans(tags, len(self.slots), line_starts):
            start, end = windows.words[first][0], windows.words[last][1]
            if self.slots[slot].get("whole_tokens", self.info.get("whole_tokens")):
                start, end = whole_tokens(text, start, end, input_is_json)
            if self.slots[slot].get("to_line_end"):
                end = line_end(text, end)
            value = text[start:end]
            values[slot].append(unescape_json_span(value) if input_is_json else value)
        # The answer's chance, not the tagging's: on a whole email's head the product of ~150 words' tag
        # probabilities topped out near 0.91, so nothing routed, although its ranking was right. Raised to the
        # power fitted on validation (`confidence_power`), it is a calibrated chance the router can hold to 99%.
        confidence = float(np.exp(float(self.info.get("confidence_power", 1.0)) * log_probability))
        return Prediction(text=self.render(values), confidence=min(max(confidence, 0.0), 1.0))

    def render(self, values: list[list[str]]) -> str:
        """The answer in the shape the teacher writes: an array, or an object with the slots' keys in order."""
        unique = bool(self.info.get("unique_items"))
        fields = [
            distinct_items(found) if unique and slot["many"] else found
            for slot, found in zip(self.slots, values, strict=True)
        ]
        if self.info["answer_shape"] == "array":
            return json.dumps(fields[0], ensure_ascii=False)
        answer = {
            slot["key"]: found if slot["many"] else (found[0] if found else "")
            for slot, found in zip(self.slots, fields, strict=True)
        }
        return json.dumps(answer, ensure_ascii=False)
