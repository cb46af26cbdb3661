"""Secrets and personal data out of every text before it touches disk.

Our own compiled patterns, each gated by a cheap substring test and, where a pattern
alone over-matches, validated (Luhn for cards, mod-97 for IBANs, `ipaddress` for IPs).
Most text holds no finding, so the gates make the common case a few `in` tests: this is
what keeps ingest above 20,000 records/s on two cores (see the README for why not
detect-secrets or scrubadub). Each finding becomes a typed placeholder, numbered per
record, so the same address is `<EMAIL_1>` everywhere in that record.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _ip_ok(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (address.version == 4 and text.startswith("0."))


def _phone_ok(text: str) -> bool:
    return 8 <= sum(char.isdigit() for char in text) <= 15


_NUMBERS = r"\d[\d .()/-]{6,}|\+\d|[A-Z]{2}\d\d|[0-9a-fA-F]:[0-9a-fA-F]{0,4}:"


@dataclass(frozen=True)
class Rule:
    kind: str  # the placeholder's name, and the key counted in metrics
    pattern: re.Pattern
    gates: tuple[str, ...] = ()  # the text must contain one of these for the pattern to run
    gate: re.Pattern | None = None  # or match this cheap pattern (for kinds made of digits, which most text has)
    valid: Callable[[str], bool] | None = None
    secret: bool = True  # a credential (vs personal data): what secret_recall measures


def _rule(kind: str, pattern: str, *gates: str, gate: str | None = None, valid: Callable[[str], bool] | None = None,
          secret: bool = True) -> Rule:
    return Rule(kind, re.compile(pattern), gates, re.compile(gate) if gate else None, valid, secret)


# Order matters: a key is taken before the digits inside it could look like a phone number.
RULES: tuple[Rule, ...] = (
    _rule("PRIVATE_KEY", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
          "PRIVATE KEY"),
    _rule("ANTHROPIC_KEY", r"\bsk-ant-[A-Za-z0-9_-]{20,}", "sk-ant-"),
    _rule("OPENAI_KEY", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", "sk-"),
    _rule("AWS_KEY", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", "AKIA", "ASIA", "ABIA", "ACCA"),
    _rule("AWS_SECRET", r"(?i)(?<=aws_secret_access_key)[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}", "ws_secret",
          "WS_SECRET"),
    _rule("GITHUB_TOKEN", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
          "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    _rule("SLACK_TOKEN", r"\bxox[abposr]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+",
          "xox", "hooks.slack"),
    _rule("GOOGLE_KEY", r"\bAIza[0-9A-Za-z_-]{35}", "AIza"),
    _rule("JWT", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", "eyJ"),
    _rule("BEARER_TOKEN", r"(?i)(?<=bearer )[A-Za-z0-9._~+/-]{20,}=*", "earer "),
    _rule("URL_PASSWORD", r"(?<=://)[^\s:/@\"'<>]+:[^\s@/\"'<>]+(?=@)", "://"),
    _rule("EMAIL", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", "@", secret=False),
    _rule("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", gate=_NUMBERS, valid=iban_ok,
          secret=False),
    _rule("CARD", r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w.])", gate=_NUMBERS, valid=_card_ok, secret=False),
    _rule("PHONE", r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"
          r"|\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w.-])",
          gate=_NUMBERS, valid=_phone_ok, secret=False),
    _rule("IP", r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){2,7}(?::|[0-9a-fA-F]"
          r"{1,4})(?::[0-9a-fA-F]{1,4})*(?![\w:])", gate=_NUMBERS, valid=_ip_ok, secret=False),
)
# Kinds made of digits share one cheap test first: text with no run of digits like these has none of them.
_NUMBERS_GATE = re.compile(_NUMBERS)
_CLEAN: set[str] = set()  # texts seen to hold nothing (system prompts, labels repeat): not scanned again
_CLEAN_MAX, _CLEAN_TEXT_MAX = 20_000, 2048  # at most ~40 MB
KINDS = tuple(rule.kind for rule in RULES)
SECRET_KINDS = frozenset(rule.kind for rule in RULES if rule.secret)


@dataclass
class Scrubber:
    """One record's scrubbing: the value -> placeholder map that keeps placeholders consistent."""

    placeholders: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def text(self, text: str) -> str:
        if text in _CLEAN:
            return text
        original, numbers = text, None
        for rule in RULES:
            if rule.gates and not any(gate in text for gate in rule.gates):
                continue
            if rule.gate is not None:
                numbers = bool(_NUMBERS_GATE.search(text)) if numbers is None else numbers
                if not numbers:
                    continue
            text = rule.pattern.sub(lambda match, rule=rule: self._replace(rule, match), text)
        if text == original and len(text) <= _CLEAN_TEXT_MAX:
            if len(_CLEAN) >= _CLEAN_MAX:
                _CLEAN.clear()
            _CLEAN.add(text)
        return text

    def _replace(self, rule: Rule, match: re.Match) -> str:
        value = match.group(0)
        if rule.valid is not None and not rule.valid(value):
            return value
        key = (rule.kind, value)
        placeholder = self.placeholders.get(key)
        if placeholder is None:
            self.counts[rule.kind] += 1
            number = sum(1 for kind, _ in self.placeholders if kind == rule.kind) + 1
            placeholder = self.placeholders[key] = f"<{rule.kind}_{number}>"
        return placeholder

    def value(self, value: object) -> object:
        """Every string inside a JSON-like value (for `extra`, tool arguments and raw lines)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        return value

    @property
    def found(self) -> int:
        return sum(self.counts.values())


def scrub_text(text: str) -> str:
    """A standalone text (a quarantined line, an error message) with its own placeholders."""
    return Scrubber().text(text)
