"""The LM student at inference: a small causal LM that writes the teacher's answer, for extraction and free text.

What a registered model, the server and evaluation run: load a student folder (a plain transformers
model, LoRA already merged), render the prompt in the model's chat template, and answer.
Training lives in `lm_train`; this module imports neither TRL, datasets nor PEFT.

Answers are checked against what the task allows: with a label set the student scores every
label instead of writing freely (so every answer is a label). With a JSON schema, decoding follows
the JSON grammar of the schema's top level and keys (`JsonDecoding`), and when the teacher copies
every string from the input, each string is held to spans of the input; an answer the budget cut
is closed at its last whole value with confidence 0, and one that does not validate is marked
invalid with confidence 0, so a router sends both on.
"""

from __future__ import annotations

import codecs
import json
import math
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from stillroom.base_lm import resolve_base_lm
from stillroom.schema import Prediction
from stillroom.students.base import Prompt, Student, last_user_turn, read_manifest
from stillroom.students.chat import (
    chat,
    clean_labels,
    eos_token_ids,
    fit_prompt,
    load_tokenizer,
    prompt_answer_ids,
    schema_validator,
    shared_tokenizer,
)
from stillroom.students.json_answers import (
    JsonCursor,
    close_json,
    distinct_items,
    ground_in_source,
    json_field_spans,
    source_views,
)
from stillroom.students.lora import SharedBase, convert_weights, load_adapter, runnable_weights, shared_base


class LMStudent(Student):
    kind = "lm"

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any]):
        """`info` is the manifest minus its kind: base model, max_new_tokens, labels, json_schema, training facts."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.max_new_tokens = int(info["max_new_tokens"])
        self.labels: list[str] | None = clean_labels(info.get("labels"))
        self.json_schema: dict[str, Any] | None = info.get("json_schema")
        self._validator = schema_validator(self.json_schema) if self.json_schema is not None else None
        self._label_ids: list[list[int]] | None = None  # built on first use
        # Learnt from the training answers (see `lm_train.answer_constraints`): a constant start every answer
        # shares, written instead of generated, and whether extracted values are copied from the input.
        self.answer_prefix: str = info.get("answer_prefix") or ""
        self.grounded: bool = bool(info.get("grounded"))
        self.unique_items: bool = bool(info.get("unique_items"))
        self._adapter: tuple[SharedBase, str] | None = None  # set by `load` for a student stored as an adapter
        # The previous prompt's token ids and per-layer keys and values: the next prompt starts from what it shares.
        self._prefix: tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    @classmethod
    def zero_shot(
        cls,
        base_model: str,
        labels: list[str] | None = None,
        json_schema: dict[str, Any] | None = None,
        max_new_tokens: int = 32,
    ) -> LMStudent:
        """The untuned base model answering as a student: the baseline that says what training bought."""
        from transformers import AutoModelForCausalLM

        path = resolve_base_lm(base_model)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        info = {
            "base_model": base_model,
            "rung": None,
            "zero_shot": True,
            "max_new_tokens": max_new_tokens,
            "n_train": 0,
            "labels": clean_labels(labels),
            "json_schema": json_schema,
        }
        return cls(model, load_tokenizer(path), info)

    @torch.inference_mode()
    def predict(self, prompts: Sequence[Prompt], batch_size: int = 16) -> list[Prediction]:
        """One answer per prompt, in input order.

        With labels: the most likely label (confidence = its probability renormalised over the label set),
        one prompt at a time (`batch_size` unused: the prompt pass dominates and then needs no padding).
        Otherwise greedy text, confidence = geometric mean probability of its tokens; with a JSON schema,
        that of the weakest top-level field, and 0 with valid=False when the answer does not validate.
        """
        with self._answering():
            return self._predict(self.fitted(prompts), batch_size)

    def fitted(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        """The prompts cut as in training: the last user turn to its head (and its tail, for the manifest's
        `prompt_tail_share`), within `max_prompt_tokens` (`chat.fit_prompt`; a folder trained before has
        no budget and reads them whole, or no share and keeps the head)."""
        budget, tail_share = self.info.get("max_prompt_tokens"), self.info.get("prompt_tail_share", 0.0)
        return [fit_prompt(self.tokenizer, prompt, budget, tail_share) for prompt in prompts]

    def _predict(self, prompts: Sequence[Prompt], batch_size: int) -> list[Prediction]:
        if self.labels:
            predictions = []
            for distribution in self.label_distribution(prompts):
                best = max(distribution, key=distribution.__getitem__)
                predictions.append(Prediction(text=best, confidence=min(max(distribution[best], 0.0), 1.0)))
            return predictions
        texts = [self._prompt_text(prompt) + self.answer_prefix for prompt in prompts]
        inputs = [last_user_turn(prompt) for prompt in prompts]
        if len(texts) == 1 or self._validator is not None:
            # One at a time through the own loop: JSON answers always, so what is evaluated is what is served.
            return [self._decode(text, source) for text, source in zip(texts, inputs, strict=True)]
        # Batches of similar length waste less compute on padding; answers go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[Prediction | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            generated = self._generate([texts[i] for i in chunk], [inputs[i] for i in chunk])
            for index, prediction in zip(chunk, generated, strict=True):
                results[index] = prediction
        return [prediction for prediction in results if prediction is not None]

    @torch.inference_mode()
    def label_distribution(self, prompts: Sequence[Prompt]) -> list[dict[str, float]]:
        """For each prompt, every label's probability as the whole answer, renormalised over the label set.

        A label's score is the log-probability of its tokens and the end-of-turn token after the prompt.
        The prompt runs once; its KV cache is copied for the labels, which then run as one small batch.
        """
        if not self.labels:
            raise ValueError("this student has no label set")
        with self._answering():
            return self._label_distribution(self.fitted(prompts))

    def _label_distribution(self, prompts: Sequence[Prompt]) -> list[dict[str, float]]:
        label_ids = self._label_token_ids()
        n_labels, longest = len(label_ids), max(len(ids) for ids in label_ids)
        pad = self.tokenizer.pad_token_id
        targets = torch.tensor([ids + [pad] * (longest - len(ids)) for ids in label_ids])
        target_mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in label_ids])
        distributions = []
        for prompt in prompts:
            prompt_ids = self.tokenizer(self._prompt_text(prompt), return_tensors="pt", add_special_tokens=False)
            prompt_ids = prompt_ids["input_ids"]
            out = self.model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)[targets[:, 0]]  # (L,)
            scores = first
            if longest > 1:
                # Feed each label's tokens but the last; the logits at position j score its token j + 1.
                cache = out.past_key_values
                cache.batch_repeat_interleave(n_labels)
                prompt_mask = torch.ones(n_labels, prompt_ids.shape[1], dtype=torch.long)
                rest = self.model(
                    input_ids=targets[:, :-1],
                    attention_mask=torch.cat([prompt_mask, target_mask[:, :-1]], dim=1),
                    past_key_values=cache,
                    use_cache=True,
                )
                logprobs = torch.log_softmax(rest.logits.float(), dim=-1).gather(-1, targets[:, 1:, None])[..., 0]
                scores = first + (logprobs * target_mask[:, 1:]).sum(dim=1)
            probabilities = torch.softmax(scores, dim=0).tolist()
            distributions.append(dict(zip(self.labels, probabilities, strict=True)))
        return distributions

    def json_prediction(
        self,
        tokens: Sequence[int],
        logprobs: Sequence[float] | torch.Tensor,
        source: str | None = None,
        overridden: Sequence[bool] | None = None,
    ) -> Prediction:
        """Judge one generated answer against the schema: valid JSON gets its weakest field's confidence.

        Each token is mapped to the characters it adds to the decoded text; a field's confidence is the
        lowest probability of the tokens overlapping its key-to-value span (one unsure letter makes a
        wrong copy), and `overridden` tokens, where the grammar or the input's spans turned decoding
        away from the model's own first choice, count too: there the constrained answer parts from the
        unconstrained one, and a near-miss must not look sure. A cut answer is closed at its last whole
        value (`close_json`) with confidence 0.
        """
        if self._validator is None:
            raise ValueError("this student has no JSON schema")
        tokens = list(tokens)
        scores = torch.as_tensor(logprobs, dtype=torch.float32)[: len(tokens)]
        prefix = self.answer_prefix  # written, not generated: it has no token scores of its own
        raw = prefix + self.tokenizer.decode(tokens, skip_special_tokens=True)
        text = raw.strip()
        parsed, whole = _parse_container(text), True
        if parsed is None and (closed := close_json(text)) is not None:
            parsed, whole = _parse_container(closed), False
        if parsed is None or not self._validator.is_valid(parsed):
            return Prediction(text=text, confidence=0.0, valid=False)
        written = parsed
        if self.grounded and source is not None:
            parsed = ground_in_source(parsed, source)
        if self.unique_items:
            parsed = distinct_items(parsed)
        rewritten = not whole or (self.grounded and source) or parsed != written
        answer = json.dumps(parsed, ensure_ascii=False) if rewritten else text
        if not whole:
            return Prediction(text=answer, confidence=0.0)
        lead = len(raw) - len(raw.lstrip())
        ends, reached = [], 0
        for k in range(1, len(tokens) + 1):
            # Decoding prefixes (not single tokens) keeps multi-byte characters and merged spaces right.
            reached = max(reached, len(prefix) + len(self.tokenizer.decode(tokens[:k], skip_special_tokens=True)))
            ends.append(reached)
        starts = [len(prefix), *ends[:-1]]
        weighed = {k for k, flag in enumerate(overridden or []) if flag and k < len(tokens)}
        for start, end in json_field_spans(text).values():
            start, end = start + lead, end + lead
            weighed.update(k for k in range(len(tokens)) if starts[k] < end and ends[k] > start)
        if weighed:
            confidence = float(torch.exp(scores[sorted(weighed)].min()))
        else:  # `{}`: nothing to single out, so the answer as a whole
            confidence = float(torch.exp(scores.min())) if len(tokens) else 0.0
        return Prediction(text=answer, confidence=min(max(confidence, 0.0), 1.0))

    def _prompt_text(self, prompt: Prompt) -> str:
        return self.tokenizer.apply_chat_template(chat(prompt), tokenize=False, add_generation_prompt=True)

    def _label_token_ids(self) -> list[list[int]]:
        """Each label as the answer tokens training taught, end-of-turn included; the same after any prompt."""
        if self._label_ids is None:
            eos_ids = self._eos_ids()
            probe = [{"role": "user", "content": "?"}]
            self._label_ids = [
                prompt_answer_ids(self.tokenizer, probe, label, eos_ids)[1] for label in self.labels or []
            ]
            if any(not ids for ids in self._label_ids):
                raise ValueError("a label renders to no tokens")
        return self._label_ids

    def _generate(self, texts: list[str], sources: Sequence[str] | None = None) -> list[Prediction]:
        from transformers import GenerationConfig

        self.tokenizer.padding_side = "left"  # generation continues from the last position of every row
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        eos_ids = self._eos_ids()
        sources = list(sources) if sources is not None else [None] * len(texts)
        constraint = None
        if self._validator is not None:
            constraint = JsonDecoding([self._cursor(source) for source in sources], self._token_table(), eos_ids)
        generation = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            eos_token_id=eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            output_scores=constraint is None,  # the constraint keeps its own scores, of the raw logits
            return_dict_in_generate=True,
        )
        output = self.model.generate(
            **batch, generation_config=generation, logits_processor=[constraint] if constraint else None
        )
        answers = output.sequences[:, batch["input_ids"].shape[1] :]
        if constraint is None:
            logprobs = self.model.compute_transition_scores(output.sequences, output.scores, normalize_logits=True)
        predictions = []
        for row, (tokens, source) in enumerate(zip(answers.tolist(), sources, strict=True)):
            # Count tokens up to and including the first end-of-turn: deciding to stop is part of the answer,
            # the padding after it is not.
            length = next((i + 1 for i, token in enumerate(tokens) if token in eos_ids), len(tokens))
            if constraint is not None:
                scores, overridden = constraint.logprobs[row], constraint.overridden[row]
                predictions.append(self.json_prediction(tokens[:length], scores[:length], source, overridden))
                continue
            text = (self.answer_prefix + self.tokenizer.decode(tokens[:length], skip_special_tokens=True)).strip()
            confidence = float(torch.exp(logprobs[row][:length].float().mean())) if length else 0.0
            predictions.append(Prediction(text=text, confidence=min(max(confidence, 0.0), 1.0)))
        return predictions

    def _decode(self, text: str, source: str | None) -> Prediction:
        """One greedy answer with a KV cache, written to give `_generate`'s answer with less work.

        HF `generate` costs more per step than a 135M model's forward on a CPU; this loop also starts
        from the KV cache of the prompt start it shares with the previous request (system prompt and
        template), writes the closing braces the grammar forces without asking the model, and stops
        as soon as the JSON answer is whole instead of spending a step on the end-of-turn token.
        """
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        eos_ids = self._eos_ids()
        constraint = None
        if self._validator is not None:
            constraint = JsonDecoding([self._cursor(source)], self._token_table(), eos_ids)
        cache, reused = self._prefix_cache(ids)
        out = self.model(
            input_ids=torch.tensor([ids[reused:]]), past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        self._remember_prefix(ids, out.past_key_values)
        cache, tokens, logprobs, draft = out.past_key_values, [], [], []
        done = False
        while not done:
            # The last row scores the next token; with a draft, each row after an accepted draft token too.
            for j, scores in enumerate(out.logits[0, -len(draft) - 1 :].float()):
                step = torch.log_softmax(scores, dim=-1)
                token = constraint.step(0, scores, step) if constraint is not None else int(scores.argmax())
                tokens.append(token)
                logprobs.append(float(step[token]))
                accepted = j < len(draft) and token == draft[j]  # then it is in the cache already
                feed = [] if accepted else [token]
                if constraint is not None and token not in eos_ids:
                    forced = constraint.force(0, self.tokenizer, self.max_new_tokens - len(tokens))
                    tokens.extend(forced)
                    logprobs.extend([0.0] * len(forced))  # no choice, so no doubt
                    feed.extend(forced)
                # A whole JSON answer stops here: its end of turn is certain and needs no step.
                whole = constraint is not None and constraint.whole(0)
                done = token in eos_ids or whole or len(tokens) >= self.max_new_tokens
                if done or feed:
                    break  # else the next row, scored after the accepted draft token, is valid
            if done:
                break
            if unused := len(draft) - j - accepted:
                cache.crop(-unused)  # the guesses the model did not make
            draft = (
                constraint.draft(0, self.tokenizer, min(4, self.max_new_tokens - len(tokens) - 1)) if constraint else []
            )
            out = self.model(
                input_ids=torch.tensor([feed + draft]),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=len(draft) + 1,
            )
        if constraint is not None:
            return self.json_prediction(tokens, constraint.logprobs[0], source, constraint.overridden[0])
        answer = (self.answer_prefix + self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()
        confidence = math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0
        return Prediction(text=answer, confidence=min(max(confidence, 0.0), 1.0))

    def _prefix_cache(self, ids: list[int]) -> tuple[Any, int]:
        """A KV cache of the longest start this prompt shares with the previous one (kept per student, so
        per adapter: its pairs change the keys and values), and its length; at least one token is left to run."""
        from transformers import DynamicCache

        if self._prefix is None:
            return None, 0
        previous, layers = self._prefix
        shared = 0
        for a, b in zip(previous, ids[:-1], strict=False):
            if a != b:
                break
            shared += 1
        if shared == 0:
            return None, 0
        # Slices, not copies: the cache appends by concatenation, so the kept tensors stay as they are.
        kv = [(keys[:, :, :shared], values[:, :, :shared]) for keys, values in layers]
        return DynamicCache(ddp_cache_data=kv, config=self.model.config), shared

    def _remember_prefix(self, ids: list[int], cache: Any) -> None:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer or layer.keys is None for layer in layers):
            return  # sliding windows and other kinds do not keep every position: run every prompt whole
        self._prefix = (tuple(ids), [(layer.keys, layer.values) for layer in layers])

    def _cursor(self, source: str | None) -> JsonCursor | None:
        """The grammar one answer is decoded in (the schema's, held to the input's spans when grounded),
        past the answer prefix already written; a prefix the schema refuses leaves plain JSON."""
        views = source_views(source) if self.grounded and source is not None else None
        for cursor in (JsonCursor(self.json_schema, views), JsonCursor()):
            if cursor.feed(self.answer_prefix):
                return cursor
        return None

    def _token_table(self) -> list[bytes | None]:
        """Built on first use, once per tokenizer object (students sharing a tokenizer share it too)."""
        table = _TOKEN_TABLES.get(self.tokenizer)
        if table is None:
            table = _TOKEN_TABLES[self.tokenizer] = token_bytes(self.tokenizer)
        return table

    def _eos_ids(self) -> list[int]:
        return eos_token_ids(self.model, self.tokenizer)

    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (transformers imports lazily)

    @classmethod
    def load(cls, directory: Path, weights: str | None = None) -> LMStudent:
        """`weights` overrides the manifest's form (float32, bf16, int8): evaluation checks a compact
        form against float32 this way."""
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        info = {key: value for key, value in read_manifest(directory).items() if key != "kind"}
        info["weights"] = runnable_weights(weights or info.get("weights") or "float32")
        if info.get("store") != "adapter":
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
            return cls(convert_weights(model, info["weights"]), shared_tokenizer(str(directory)), info)
        base = shared_base(resolve_base_lm(info["base_model"]), info["base_sha256"], info["weights"])
        name = base.add(load_adapter(directory), float(info["lora_scale"]))
        student = cls(base.model, shared_tokenizer(str(directory)), info)
        student._adapter = (base, name)
        weakref.finalize(student, base.remove, name)  # an unloaded student takes its pairs off the base
        return student

    def _answering(self) -> AbstractContextManager:
        """Its own adapter switched on over the shared base for the length of an answer."""
        if self._adapter is None:
            return nullcontext()
        base, name = self._adapter
        return base.using(name)


_TOKEN_TABLES: weakref.WeakKeyDictionary[Any, list[bytes | None]] = weakref.WeakKeyDictionary()


def _parse_container(text: str) -> dict | list | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def _byte_alphabet() -> dict[str, int]:
    """The printable stand-ins byte-level BPE vocabularies (GPT-2, SmolLM2) write bytes with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token id's bytes (None for special tokens), so decoding can follow a grammar over characters
    that a token may split mid-character. Byte-level vocabularies are read exactly; others through decode."""
    alphabet = _byte_alphabet()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    byte_level = any("Ġ" in piece for piece in pieces if piece)
    table: list[bytes | None] = []
    for token_id, piece in enumerate(pieces):
        if token_id in special or piece is None:
            table.append(None)
        elif byte_level and all(char in alphabet for char in piece):
            table.append(bytes(alphabet[char] for char in piece))
        else:
            table.append(tokenizer.decode([token_id]).encode("utf-8"))
    return table


class JsonDecoding:
    """A logits processor for greedy decoding held to one `JsonCursor` per row.

    At each step a row takes the most likely token that keeps its answer in the grammar (trying the
    model's top choices first, the whole vocabulary only when none fits), and the end of turn once the
    answer is complete. It keeps each chosen token's log-probability under the model's own, unmasked
    distribution, and whether the grammar overrode the model's first choice: the confidence reads both.
    """

    def __init__(
        self,
        cursors: Sequence[JsonCursor | None],
        table: Sequence[bytes | None],
        eos_ids: Sequence[int],
        top_k: int = 8,
    ):
        self.cursors = list(cursors)
        self.table = table
        self.eos_ids = list(eos_ids)
        self.top_k = top_k
        self.pending = [b""] * len(self.cursors)  # bytes of a character a token left unfinished
        self.finished = [False] * len(self.cursors)
        self.logprobs: list[list[float]] = [[] for _ in self.cursors]
        self.overridden: list[list[bool]] = [[] for _ in self.cursors]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = scores.argmax(dim=-1)
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        for row in range(len(self.cursors)):
            if not self.finished[row]:
                chosen[row] = self.step(row, scores[row], logprobs[row])
        masked = torch.full_like(scores, float("-inf"))
        masked.scatter_(1, chosen[:, None], 0.0)
        return masked

    def step(self, row: int, scores: torch.Tensor, logprobs: torch.Tensor) -> int:
        """The row's next token from its logits (1-D), its cursor moved over it and its score kept."""
        first = int(scores.argmax())
        cursor = self.cursors[row]
        if cursor is None:
            token = first
        elif cursor.done and not self.pending[row]:
            token = max(self.eos_ids, key=lambda i: float(scores[i]))
            first = token  # the end is forced once the answer is whole: no choice overridden
        else:
            token = self._choose(row, scores)
        self.logprobs[row].append(float(logprobs[token]))
        self.overridden[row].append(token != first)
        self.finished[row] = token in self.eos_ids
        return token

    def whole(self, row: int) -> bool:
        cursor = self.cursors[row]
        return cursor is not None and cursor.done and not self.pending[row]

    def draft(self, row: int, tokenizer: Any, size: int) -> list[int]:
        """Up to `size` guessed next tokens: how the input goes on after the string being copied so far.
        The next step checks them all in one pass and keeps those the model picks itself."""
        cursor = self.cursors[row]
        if cursor is None or size <= 0 or self.pending[row] or not (text := cursor.continuation()):
            return []
        return tokenizer(text, add_special_tokens=False)["input_ids"][:size]

    def force(self, row: int, tokenizer: Any, budget: int) -> list[int]:
        """Write what the grammar forces next (closing braces) as tokens the row takes without a model
        step, scored as certain; none when they do not fit the budget or the grammar."""
        cursor = self.cursors[row]
        if cursor is None or self.pending[row] or not (text := cursor.forced()):
            return []
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) > budget:
            return []
        saved = self.cursors[row], self.pending[row]
        for token in tokens:
            if not self._advance(row, token):
                self.cursors[row], self.pending[row] = saved
                return []
        self.logprobs[row].extend([0.0] * len(tokens))
        self.overridden[row].extend([False] * len(tokens))
        return tokens

    def _choose(self, row: int, scores: torch.Tensor) -> int:
        top = torch.topk(scores, min(self.top_k, scores.shape[-1])).indices.tolist()
        for token in top:
            if self._advance(row, token):
                return token
        for token in torch.argsort(scores, descending=True).tolist():  # rarely needed: sorting costs ms
            if self._advance(row, token):
                return token
        return self.eos_ids[0]  # nothing fits (cannot happen with a complete vocabulary): end, and be closed

    def _advance(self, row: int, token: int) -> bool:
        """Move the row's cursor over the token if the grammar allows it."""
        piece = self.table[token] if token < len(self.table) else None
        if not piece:
            return False
        decoder = codecs.getincrementaldecoder("utf-8")()
        decoder.setstate((self.pending[row], 0))
        try:
            text = decoder.decode(piece)
        except UnicodeDecodeError:
            return False
        trial = self.cursors[row].copy()  # type: ignore[union-attr]
        pending = decoder.getstate()[0]
        if not trial.feed(text) or (pending and not trial.accepts_start_of(pending)):
            return False
        self.cursors[row], self.pending[row] = trial, pending
        return True
