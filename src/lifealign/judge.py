"""The LLM judge: a judge model scores each generated response 1-10.

`Judge` sends `lifealign.rubrics.build_messages` to any OpenAI-compatible chat-completions server
(DeepSeek, as the paper used, OpenAI, vLLM, llama.cpp, Ollama) through the `openai` client and reads
the reply with `lifealign.rubrics.parse_score`. It retries transient faults itself, counted, with
exponential backoff or the server's Retry-After (capped), and keeps every successful score in a
sqlite cache, so an interrupted run resumes where it stopped and a rerun costs no requests.
Failures are never cached. The API key is read from an environment variable at request time and
never stored in a config, the cache, a log line, an exception message or a repr.

Usage:
    config = JudgeConfig.from_env()            # LIFEALIGN_JUDGE_BASE_URL / LIFEALIGN_JUDGE_MODEL
    judge = Judge(config, Path("results/judge_cache.sqlite"))
    result = judge.score_many("TruthfulQA", [{"prompt": ..., "response": ..., "reference": ...,
                                              "false_answers": [...]}])
    result["score"]                            # 10 x mean of the 1-10 scores, 0-100
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import ipaddress
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import openai

from .data import task_name
from .rubrics import build_messages, parse_score

log = logging.getLogger(__name__)

_SCHEMA = "lifealign-judge-cache-v1"

# Statuses that say the configuration is wrong (key, URL, model): every later item would fail the
# same way, so score() raises instead of counting a failure per item.
_FATAL_STATUSES = {401: "unauthorized (check the API key)", 403: "forbidden (check the API key)",
                   404: "not found (check base_url and model)"}


class JudgeError(RuntimeError):
    """A judge fault that makes continuing pointless (bad key, URL or model), or a misuse."""


def _redact_url(url: str) -> str:
    """The URL without any user:password part, for reprs and messages."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2], fragment="").geturl()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class JudgeConfig:
    """Where the judge runs and how requests are made; holds only the NAME of the API key's variable.

    base_url: the OpenAI-compatible root, e.g. https://api.deepseek.com/v1, http://localhost:11434/v1.
    max_retries: retries after the first attempt. backoff: the first retry's delay in seconds, doubled
    per retry and capped at max_backoff; a server's Retry-After replaces it (capped at MAX_RETRY_AFTER).
    """

    base_url: str
    model: str
    api_key_env: str = "LIFEALIGN_JUDGE_API_KEY"
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    temperature: float = 0.0
    max_tokens: int = 512
    max_backoff: float = 30.0

    FALLBACK_KEY_ENV = "OPENAI_API_KEY"
    MAX_RETRY_AFTER = 300.0  # honour a server's wait, but never sleep unboundedly on its say-so

    def __post_init__(self):
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url or not self.model:
            raise ValueError("JudgeConfig needs a base_url and a model")

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)} | {"base_url": _redact_url(self.base_url)}
        return f"JudgeConfig({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    def api_key(self) -> str | None:
        """The key from the environment (api_key_env, else OPENAI_API_KEY); None for keyless local servers."""
        return os.environ.get(self.api_key_env) or os.environ.get(self.FALLBACK_KEY_ENV) or None

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, **kw) -> "JudgeConfig | None":
        """A config from the arguments, else LIFEALIGN_JUDGE_BASE_URL / LIFEALIGN_JUDGE_MODEL;
        None when either is missing (no judge configured: callers skip judging)."""
        base_url = base_url or os.environ.get("LIFEALIGN_JUDGE_BASE_URL")
        model = model or os.environ.get("LIFEALIGN_JUDGE_MODEL")
        return cls(base_url=base_url, model=model, **kw) if base_url and model else None


@dataclass
class JudgeStats:
    """Counters over a Judge's life: HTTP requests sent, cache hits, retries, items scored, and
    items failed by reason."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    scored: int = 0
    failures: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {**vars(self), "failures": dict(self.failures)}


class _Fault(Exception):
    """A failed request. reason labels the failure; a transient one is worth retrying (retry_after:
    the server's wait); attempts: requests made by the time it was given up."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None, transient: bool = True):
        super().__init__(reason)
        self.reason, self.detail, self.retry_after, self.transient = reason, detail, retry_after, transient
        self.attempts = 1


class Judge:
    """Scores responses with a judge model, with retries and a persistent cache.

    cache_path: a sqlite file (created if absent); each successful score is committed at once, under
    `cache_key`. sleep: the function that waits between retries (tests pass a recorder).
    """

    def __init__(self, config: JudgeConfig, cache_path: Path | str, sleep: Callable[[float], None] | None = None):
        self.config = config
        self.cache_path = Path(cache_path)
        self.sleep = sleep or time.sleep
        self.stats = JudgeStats()
        self.last_failure: str | None = None  # reason of the latest failed score(), None if it worked
        self._lock = threading.Lock()
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.cache_path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")  # two evaluations sharing one cache do not block each other
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, task TEXT, model TEXT, "
                             "score INTEGER NOT NULL, reply TEXT, created REAL)")
        # The client makes one attempt (the retries are ours) and holds no key (see _auth_header).
        # A local server must not be reached through an HTTP proxy from the environment.
        self._client = openai.OpenAI(
            base_url=config.base_url, api_key="(set per request)", max_retries=0, timeout=config.timeout,
            http_client=openai.DefaultHttpxClient(trust_env=not _is_loopback(config.base_url), timeout=config.timeout))

    def __repr__(self) -> str:
        return f"Judge({self.config!r}, cache_path={str(self.cache_path)!r})"

    def close(self) -> None:
        self._client.close()
        self._db.close()

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cache_key(self, messages: list[dict]) -> str:
        """sha256 over (schema, judge model, rubric, exact messages)."""
        rubric = next((m["content"] for m in messages if m["role"] == "system"), "")
        blob = json.dumps([_SCHEMA, self.config.model, rubric, messages],
                          ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _cached(self, key: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT score FROM scores WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _store(self, key: str, task: str, score: int, reply: str) -> None:
        with self._lock, self._db:  # one commit per item: a kill loses at most the item in flight
            self._db.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                             (key, task, self.config.model, score, reply, time.time()))

    def score(self, task: str, prompt: str, response: str, reference: str,
              false_answers: str | Sequence[str] | None = None) -> int | None:
        """The judge's 1-10 score of one response, or None on failure (reason in last_failure and
        stats.failures); JudgeError on 401/403/404, which no retry or item can fix. A reply without
        a score is not retried (a judge that ignored the format seldom follows it on a second try)."""
        name = task_name(task)
        messages = build_messages(name, prompt, response, reference, false_answers)
        key = self.cache_key(messages)
        score = self._cached(key)
        if score is not None:
            self.stats.cache_hits += 1
        else:
            try:
                reply = self._complete(messages)
            except _Fault as fault:
                return self._fail(fault.reason, fault.detail)
            score = parse_score(reply)
            if score is None:
                return self._fail("no_score", reply[-200:])
            self._store(key, name, score, reply)
            self.stats.scored += 1
        self.last_failure = None
        return score

    def preflight(self) -> None:
        """Check with one GET /models, before work whose verdicts would be lost, that the server
        answers and takes the key: if not, a one-line JudgeError naming the fix. Any other answer
        passes; a wrong model or route surfaces at the first scoring request."""
        try:
            self._retrying(self._list_models)
        except _Fault as fault:
            raise JudgeError(self._redact(
                f"the judge at {_redact_url(self.config.base_url)} does not answer "
                f"({_one_line(fault.detail)[:120]}; {fault.attempts} attempt(s)): start the server, or fix "
                "eval.judge_base_url / LIFEALIGN_JUDGE_BASE_URL")) from None

    def _list_models(self) -> None:
        """One GET /models: a rejected key is fatal, no answer transient, any other answer fine."""
        self.stats.requests += 1
        try:
            self._client.models.list(extra_headers=self._auth_header())
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                self._status_error(err)
        except openai.APIConnectionError as err:
            raise _Fault("connection", str(err)) from None

    def _fail(self, reason: str, detail: str) -> None:
        self.stats.failures[reason] += 1
        self.last_failure = reason
        log.warning("judge failure (%s): %s", reason, self._redact(detail))

    def _redact(self, text: str) -> str:
        """The text with the API key replaced, for anything echoed from a server."""
        key = self.config.api_key()
        return text.replace(key, "***") if key else text

    def _complete(self, messages: list[dict]) -> str:
        """The reply text of one chat completion, transient faults retried."""
        return self._retrying(lambda: self._request_once(messages))

    def _retrying(self, call: Callable):
        """call(), again after each transient fault (up to max_retries times) with exponential
        backoff, or a server's Retry-After (capped); then the last fault is raised."""
        cfg = self.config
        for attempt in itertools.count():
            try:
                return call()
            except _Fault as fault:
                fault.attempts = attempt + 1
                if not fault.transient or attempt >= cfg.max_retries:
                    raise
                delay = min(cfg.backoff * 2 ** attempt, cfg.max_backoff)
                if fault.retry_after is not None:
                    delay = min(fault.retry_after, JudgeConfig.MAX_RETRY_AFTER)
                self.stats.retries += 1
                log.info("judge %s, retry %d/%d in %.1f s", fault.reason, attempt + 1, cfg.max_retries, delay)
                self.sleep(delay)

    def _request_once(self, messages: list[dict]) -> str:
        """One chat completion's reply text; the client's typed errors sorted into retry or item
        failure (_Fault) or fatal (JudgeError)."""
        cfg = self.config
        self.stats.requests += 1
        try:
            reply = self._client.chat.completions.create(
                model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                extra_headers=self._auth_header())
        except openai.APITimeoutError as err:
            raise _Fault("timeout", str(err)) from None
        except openai.APIConnectionError as err:
            raise _Fault("connection", f"{err}: {err.__cause__ or ''}") from None
        except openai.APIStatusError as err:
            self._status_error(err)
        except (ValueError, openai.APIResponseValidationError) as err:  # a body that is not JSON
            raise _Fault("bad_json", str(err)[:200]) from None
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            content = None
        if not isinstance(content, str) or not content.strip():
            # some servers answer 200 with {"error": ...} under load
            raise _Fault("no_choices", str(reply)[:200])
        return content

    def _auth_header(self) -> dict:
        """The key goes into each request's headers only; a keyless local server gets no
        Authorization header at all (an empty "Bearer " upsets some servers)."""
        key = self.config.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {"Authorization": openai.Omit()}

    def _status_error(self, err: openai.APIStatusError) -> None:
        """Sort an HTTP error status into retry, item failure or fatal; always raises."""
        status, detail = err.status_code, err.response.text[:500]
        retry_after = _retry_after_seconds(err.response.headers.get("Retry-After"))
        if status == 429:
            raise _Fault("http_429", detail, retry_after)
        if status >= 500:
            raise _Fault("http_5xx", f"{status} {detail}", retry_after)
        if status in _FATAL_STATUSES:
            raise JudgeError(self._redact(
                f"judge request to {_redact_url(self.config.base_url)} failed: HTTP {status} "
                f"{_FATAL_STATUSES[status]}; server said: {_one_line(detail)[:300]}"))
        raise _Fault(f"http_{status}", detail, transient=False)

    def score_many(self, task: str, items: list[dict], progress: bool = False) -> dict:
        """Score a list of {"prompt", "response", "reference", optional "false_answers"}.

        Returns {"score": 10 x mean of the successful 1-10 scores (None if none), "n", "scored",
        "failures", "failure_reasons": {reason: count}, "scores": per-item score or None}.
        """
        if progress:
            from tqdm import tqdm
            items = tqdm(items, desc=f"judge {task}", unit="item")
        scores, reasons = [], Counter()
        for item in items:
            scores.append(self.score(task, item["prompt"], item["response"], item["reference"],
                                     item.get("false_answers")))
            if scores[-1] is None:
                reasons[self.last_failure] += 1
        good = [s for s in scores if s is not None]
        return {"score": 10 * sum(good) / len(good) if good else None,
                "n": len(scores), "scored": len(good), "failures": len(scores) - len(good),
                "failure_reasons": dict(reasons), "scores": scores}
