"""Report -> fine-grained fields: a pluggable extractor (offline rules by default, an LLM optionally).

FiVE (Li et al., CVPR 2024) has an LLM rewrite each free-text report into a
fixed set of fine-grained fields ("tissue type: ...; necrosis: ..."). Here an
extractor maps a report to ``{field: value or None}`` for the configured
``five.fields``:

- :class:`RuleExtractor` (default, offline): splits the report into
  sentences, assigns each to a field by its header (``Diagnosis: ...``) or, for
  narrative sentences, by keyword cues, strips template lead-ins ("The
  sections show ...") and canonicalises negations ("No necrosis is
  identified." -> ``absent necrosis``). Unrelated sentences are ignored.
- :class:`LLMExtractor`: any OpenAI-compatible ``/chat/completions``
  endpoint (vLLM, llama.cpp server, a hosted API), asked for a JSON object.
  It is only constructed when ``five.extractor.kind = "llm"`` with a URL and
  model: nothing contacts the network otherwise. The API key is read from the
  environment variable named in the config and never logged; an answer that
  cannot be parsed falls back to the rules (warned) or raises.

New extractors register with :func:`register_extractor`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from wsiscale.config import ConfigError, FiveConfig

log = logging.getLogger(__name__)

Fields = dict[str, str | None]


class ReportExtractor(Protocol):
    fields: list[str]

    def extract(self, report: str) -> Fields: ...

    def extract_many(self, reports: list[str]) -> list[Fields]: ...


# Section headers (lower case, without the colon) that name a field.
HEADERS: dict[str, str] = {
    "diagnosis": "tissue type", "final diagnosis": "tissue type", "tissue type": "tissue type",
    "tissue": "tissue type", "impression": "tissue type",
    "growth pattern": "growth pattern", "architecture": "growth pattern", "pattern": "growth pattern",
    "nuclear features": "nuclear features", "nuclei": "nuclear features", "cytology": "nuclear features",
    "necrosis": "necrosis", "inflammation": "inflammation", "inflammatory infiltrate": "inflammation",
    "stroma": "stroma", "background": "stroma",
}
# Keyword cues for narrative sentences, checked in this order (first match wins).
CUES: list[tuple[str, re.Pattern]] = [
    ("necrosis", re.compile(r"necro")),
    ("inflammation", re.compile(r"lymphocyt|inflamm")),
    ("stroma", re.compile(r"stroma|adipose|desmoplas")),
    ("nuclear features", re.compile(r"nucle|mitos|mitotic")),
    ("tissue type", re.compile(r"carcinoma|benign|malignan|adenoma|neoplas|diagnos")),
    ("growth pattern", re.compile(r"gland|sheet|nest|architect|pattern|acinar|papillar|cribriform")),
]
LEAD_INS = ["microscopy is consistent with", "the sections show", "sections show", "the architecture shows",
            "low power shows", "cytology shows", "at high power there are", "at high power there is",
            "the background shows", "the background contains", "there is", "there are", "consistent with"]
TRAILERS = [" is present", " are present", " is seen", " are seen", " is identified", " are identified", " noted"]
NEGATION = re.compile(r"^(no|not|absent|without|negative)\b|\b(not (seen|identified|present))\b|\babsent\b")
NEGATED = {"necrosis": "absent necrosis", "inflammation": "absent lymphocytic infiltrate"}
_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+")


def split_sentences(report: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(report or "") if s and s.strip(" .;")]


def _clean(text: str) -> str:
    v = text.strip().rstrip(".;!? ").strip()
    low = v.lower()
    for lead in LEAD_INS:
        if low.startswith(lead + " "):
            v, low = v[len(lead) + 1:], low[len(lead) + 1:]
            break
    for trail in TRAILERS:
        if low.endswith(trail):
            v = v[:-len(trail)]
            break
    return " ".join(v.lower().split())


class RuleExtractor:
    """Offline header/keyword extractor (see the module docstring)."""

    def __init__(self, fields: list[str]):
        self.fields = list(fields)

    def classify(self, sentence: str) -> tuple[str | None, str]:
        """``(field or None, value text)`` of one sentence."""
        head, sep, rest = sentence.partition(":")
        if sep and len(head.split()) <= 4:
            name = HEADERS.get(" ".join(head.lower().split()))
            if name is not None:
                return name, rest
            if not any(p.search(head.lower()) for _, p in CUES):
                return None, ""  # an unrelated section (specimen, clinical history, ...)
        low = sentence.lower()
        for name, pattern in CUES:
            if pattern.search(low):
                return name, sentence
        return None, ""

    def extract(self, report: str) -> Fields:
        """``{field: value or None}`` for every configured field."""
        found: dict[str, list[str]] = {}
        for sentence in split_sentences(report):
            name, text = self.classify(sentence)
            if name is None or name not in self.fields:
                continue
            value = _clean(text)
            if name in NEGATED and NEGATION.search(value):
                value = NEGATED[name]
            elif name == "necrosis" and "necrosis" not in value:
                value = f"{value} necrosis"
            if value and value not in found.setdefault(name, []):
                found[name].append(value)
        return {f: (", ".join(found[f]) if found.get(f) else None) for f in self.fields}

    def extract_many(self, reports: list[str]) -> list[Fields]:
        return [self.extract(r) for r in reports]


class LLMExtractor:
    """Fields from an OpenAI-compatible chat-completions endpoint (JSON answer), rules as the fallback.

    Args:
        fields: the field names to ask for.
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the served model name.
        api_key_env: environment variable holding the key (optional for local servers).
        timeout_s, max_retries: per request.
        fallback: a :class:`RuleExtractor` used when an answer cannot be parsed (None: raise).
        concurrency: requests in flight in :meth:`extract_many`.
    """

    def __init__(self, fields: list[str], base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, max_retries: int = 2, fallback: RuleExtractor | None = None,
                 concurrency: int = 8):
        self.fields, self.model = list(fields), model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env, self.timeout_s, self.max_retries = api_key_env, timeout_s, max_retries
        self.fallback, self.concurrency = fallback, concurrency

    def prompt(self, report: str) -> list[dict[str, str]]:
        keys = ", ".join(json.dumps(f) for f in self.fields)
        system = ("You extract fine-grained findings from pathology reports. Answer with one JSON object and "
                  f"nothing else. Its keys are exactly: {keys}. Each value is a short lower-case phrase taken "
                  "from the report (for an explicitly negative finding write e.g. \"absent necrosis\"), or "
                  "null when the report does not mention it.")
        return [{"role": "system", "content": system}, {"role": "user", "content": report}]

    def _post(self, report: str) -> str:
        import urllib.error
        import urllib.request

        body = json.dumps({"model": self.model, "messages": self.prompt(report), "temperature": 0.0}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    answer = json.loads(resp.read().decode())
                return str(answer["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                last = e
                if e.code in (400, 401, 403, 404):
                    break  # retrying will not help
            except (urllib.error.URLError, TimeoutError, OSError, KeyError, IndexError, ValueError) as e:
                last = e
            if attempt < self.max_retries:
                time.sleep(min(2.0 ** attempt, 10.0))
        raise ConnectionError(f"LLM extractor: {self.url} (model {self.model}) failed: {type(last).__name__}: "
                              f"{last}. Check five.extractor.llm_base_url / llm_model and that the key is in "
                              f"${self.api_key_env}, or use five.extractor.kind=rules")

    def parse(self, content: str) -> Fields:
        """The answer's JSON object restricted to the configured fields (``ValueError`` if there is none)."""
        text = content.strip()
        fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
        if fence:
            text = fence.group(1)
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ValueError(f"no JSON object in the answer {content[:200]!r}")
        obj = json.loads(text[start:end + 1])
        if not isinstance(obj, dict):
            raise ValueError(f"the answer is not a JSON object: {content[:200]!r}")
        lowered = {str(k).strip().lower(): v for k, v in obj.items()}
        out: Fields = {}
        for f in self.fields:
            v = lowered.get(f)
            out[f] = None if v in (None, "", "null", "none") else " ".join(str(v).lower().split())
        return out

    def extract(self, report: str) -> Fields:
        try:
            return self.parse(self._post(report))
        except (ValueError, ConnectionError) as e:
            if self.fallback is None:
                raise
            log.warning("LLM extractor: %s; using the rule extractor for this report", e)
            return self.fallback.extract(report)

    def extract_many(self, reports: list[str]) -> list[Fields]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self.extract, reports))


_REGISTRY: dict[str, Callable[[FiveConfig], ReportExtractor]] = {}


def register_extractor(kind: str, build: Callable[[FiveConfig], ReportExtractor]) -> None:
    """Register an extractor factory for ``five.extractor.kind``."""
    _REGISTRY[kind] = build


def _build_llm(five: FiveConfig) -> LLMExtractor:
    ex = five.extractor
    if not ex.llm_base_url or not ex.llm_model:
        raise ConfigError("five.extractor.kind=llm needs five.extractor.llm_base_url and five.extractor.llm_model "
                          "(an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1); or use kind=rules")
    if not ex.llm_base_url.startswith(("http://", "https://")):
        raise ConfigError(f"five.extractor.llm_base_url must be an http(s) URL, got {ex.llm_base_url!r}")
    return LLMExtractor(five.fields, ex.llm_base_url, ex.llm_model, ex.llm_api_key_env, ex.llm_timeout_s,
                        ex.llm_max_retries, RuleExtractor(five.fields) if ex.fallback_to_rules else None)


register_extractor("rules", lambda five: RuleExtractor(five.fields))
register_extractor("llm", _build_llm)


def build_extractor(five: FiveConfig) -> ReportExtractor:
    """The extractor ``five.extractor.kind`` names."""
    kind = five.extractor.kind
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown five.extractor.kind {kind!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[kind](five)
