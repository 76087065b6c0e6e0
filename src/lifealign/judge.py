"""The LLM judge: a judge model scores each generated response 1-10.

`Judge` sends `lifealign.rubrics.build_messages` (the task's rubric and the material) to any
OpenAI-compatible chat-completions server (DeepSeek, as the paper used, OpenAI, a local vLLM,
llama.cpp or Ollama) through the `openai` client (transport, timeouts, typed errors), and reads the
reply with `lifealign.rubrics.parse_score`. It retries transient faults (timeouts, connection
errors, 429, 5xx, malformed replies; the client's own retries are off so that these are ours:
counted, with Retry-After honoured and capped) with exponential backoff, and keeps every
successful score in a persistent sqlite cache, so an interrupted run resumes where it stopped
and a rerun costs no requests. Failures are never cached: a rerun retries them.

The API key is read from an environment variable at request time. It is never stored in a config,
the cache, a log line, an exception message or a repr.

Usage:
    config = JudgeConfig.from_env()            # LIFEALIGN_JUDGE_BASE_URL / LIFEALIGN_JUDGE_MODEL
    judge = Judge(config, Path("results/judge_cache.sqlite"))
    result = judge.score_many("TruthfulQA", [{"prompt": ..., "response": ..., "reference": ...,
                                              "false_answers": [...]}])
    result["score"]                            # 10 x mean of the 1-10 scores, 0-100
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
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

# -----------------------------------------------------------------------------
# configuration


class JudgeError(RuntimeError):
    """A judge fault that makes continuing pointless (bad key, URL or model), or a misuse."""


def _redact_url(url: str) -> str:
    """The URL without any user:password part, for reprs and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, ""))


@dataclass
class JudgeConfig:
    """Where the judge runs and how requests are made. Holds no secret: only the NAME of the
    environment variable with the API key.

    base_url: the OpenAI-compatible root, e.g. https://api.deepseek.com/v1,
    http://127.0.0.1:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama).
    max_retries: retries after the first attempt (so up to 1 + max_retries requests per item).
    backoff: the first retry's delay in seconds, doubled per retry and capped at max_backoff.
    A server's Retry-After header replaces the computed delay (capped at MAX_RETRY_AFTER).
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
        # the dataclass repr (no key is stored), with any user:password in the URL hidden
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["base_url"] = _redact_url(self.base_url)
        return f"JudgeConfig({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    def api_key(self) -> str | None:
        """The key from the environment (api_key_env, else OPENAI_API_KEY); None for keyless
        local servers. Read per request, so that it never has to live in an object."""
        return os.environ.get(self.api_key_env) or os.environ.get(self.FALLBACK_KEY_ENV) or None

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None,
                 **kw) -> "JudgeConfig | None":
        """A config from the arguments, else LIFEALIGN_JUDGE_BASE_URL / LIFEALIGN_JUDGE_MODEL;
        None when either is missing (no judge configured: callers skip judging)."""
        base_url = base_url or os.environ.get("LIFEALIGN_JUDGE_BASE_URL")
        model = model or os.environ.get("LIFEALIGN_JUDGE_MODEL")
        if not base_url or not model:
            return None
        return cls(base_url=base_url, model=model, **kw)


# -----------------------------------------------------------------------------
# the judge


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


class _Transient(Exception):
    """A fault worth retrying; reason is the failure label if retries run out, attempts how many
    requests were made by then."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.detail, self.retry_after, self.attempts = reason, detail, retry_after, 1


class _Failed(Exception):
    """A fault of this item that a retry would not fix (a 4xx such as 400)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# Statuses that say the configuration is wrong (key, URL, model): every later item would fail the
# same way, so score() raises instead of counting a failure per item.
_FATAL_STATUSES = {401: "unauthorized (check the API key)", 403: "forbidden (check the API key)",
                   404: "not found (check base_url and model)"}

_SCHEMA = "lifealign-judge-cache-v1"


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Judge:
    """Scores responses with a judge model, with retries and a persistent cache.

    cache_path: a sqlite file (created if absent). Each successful score is committed at once,
    keyed by sha256 over (judge model, rubric, exact messages), so an interrupted run resumes
    where it stopped and an identical rerun sends no request. Failures are not cached.
    sleep: the function used to wait between retries (tests pass a recorder, so they run fast).
    """

    def __init__(self, config: JudgeConfig, cache_path: Path | str,
                 sleep: Callable[[float], None] | None = None):
        self.config = config
        self.cache_path = Path(cache_path)
        self.sleep = sleep or time.sleep
        self.stats = JudgeStats()
        self.last_failure: str | None = None  # reason of the latest failed score(), None if it worked
        self._lock = threading.Lock()
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.cache_path, timeout=30.0, check_same_thread=False)
        # WAL: readers and a writer (e.g. two evaluations sharing one cache) do not block each
        # other, and a commit per item is cheap.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, task TEXT, model TEXT, "
            "score INTEGER NOT NULL, reply TEXT, created REAL)")
        self._db.commit()
        # Retries are ours (backoff, Retry-After cap, counted), so the client makes one attempt.
        # A local server (vLLM, Ollama) must not be reached through an HTTP proxy from the
        # environment; a remote API keeps the usual proxy handling. The client holds no key: it
        # is read from the environment for each request (see _auth_header).
        self._client = openai.OpenAI(
            base_url=config.base_url, api_key="(set per request)", max_retries=0, timeout=config.timeout,
            http_client=openai.DefaultHttpxClient(trust_env=not _is_loopback(config.base_url),
                                                  timeout=config.timeout))

    def __repr__(self) -> str:
        return f"Judge({self.config!r}, cache_path={str(self.cache_path)!r})"

    def close(self) -> None:
        self._client.close()
        self._db.close()

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- cache ---------------------------------------------------------------

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
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                             (key, task, self.config.model, score, reply, time.time()))
            self._db.commit()  # one commit per item: a kill loses at most the item in flight

    # -- scoring -------------------------------------------------------------

    def score(self, task: str, prompt: str, response: str, reference: str,
              false_answers: str | Sequence[str] | None = None) -> int | None:
        """The judge's 1-10 score of one response, or None on failure (reason in last_failure
        and stats.failures). Raises JudgeError on 401/403/404, which no retry or item can fix."""
        name = task_name(task)
        messages = build_messages(name, prompt, response, reference, false_answers)
        key = self.cache_key(messages)
        cached = self._cached(key)
        if cached is not None:
            self.stats.cache_hits += 1
            self.last_failure = None
            return cached
        try:
            reply = self._complete(messages)
        except (_Transient, _Failed) as fault:
            return self._fail(fault.reason, fault.detail)
        score = parse_score(reply)
        if score is None:
            # Not retried: a judge that ignored the format seldom follows it on a second try of
            # the same request (servers with prompt caches, llama.cpp's among them, may answer a
            # temperature-0 repeat differently, but not more often in format). Not cached either,
            # so a rerun (perhaps with a better parser or judge) tries again.
            return self._fail("no_score", reply[-200:])
        self._store(key, name, score, reply)
        self.stats.scored += 1
        self.last_failure = None
        return score

    def preflight(self) -> None:
        """Check, with one GET /models, that the server answers and takes the key, before work
        whose verdicts would be lost: an unreachable server (after the retries) or a rejected key
        raises JudgeError (one line, naming the fix). Any other answer counts as reachable; a wrong
        model or route surfaces at the first scoring request."""
        try:
            self._retrying(self._list_models)
        except _Transient as fault:
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
            raise _Transient("connection", str(err)) from None

    def _fail(self, reason: str, detail: str) -> None:
        self.stats.failures[reason] += 1
        self.last_failure = reason
        log.warning("judge failure (%s): %s", reason, self._redact(detail))
        return None

    def _redact(self, text: str) -> str:
        """The text with the API key replaced, for anything echoed from a server."""
        key = self.config.api_key()
        return text.replace(key, "***") if key else text

    def _complete(self, messages: list[dict]) -> str:
        """The reply text of one chat completion, retrying transient faults."""
        return self._retrying(lambda: self._request_once(messages))

    def _retrying(self, call: Callable):
        """call(), again after each transient fault (up to max_retries times) with exponential
        backoff, or a server's Retry-After (capped); then the last fault is raised."""
        attempt = 0
        while True:
            try:
                return call()
            except _Transient as fault:
                if attempt >= self.config.max_retries:
                    fault.attempts = attempt + 1
                    raise
                delay = min(self.config.backoff * 2 ** attempt, self.config.max_backoff)
                if fault.retry_after is not None:
                    delay = min(fault.retry_after, JudgeConfig.MAX_RETRY_AFTER)
                attempt += 1
                self.stats.retries += 1
                log.info("judge %s, retry %d/%d in %.1f s", fault.reason, attempt,
                         self.config.max_retries, delay)
                self.sleep(delay)

    def _request_once(self, messages: list[dict]) -> str:
        """One chat completion through the openai client; its typed errors sorted into retry
        (_Transient), item failure (_Failed) or fatal (JudgeError)."""
        cfg = self.config
        self.stats.requests += 1
        try:
            reply = self._client.chat.completions.create(
                model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                extra_headers=self._auth_header())
        except openai.APITimeoutError as err:
            raise _Transient("timeout", str(err)) from None
        except openai.APIConnectionError as err:
            raise _Transient("connection", f"{err}: {err.__cause__ or ''}") from None
        except openai.APIStatusError as err:
            self._status_error(err)
        except (ValueError, openai.APIResponseValidationError) as err:  # a body that is not JSON
            raise _Transient("bad_json", str(err)[:200]) from None
        return self._reply_text(reply)

    def _auth_header(self) -> dict:
        """The key goes into each request's headers only; a keyless local server gets no
        Authorization header at all (an empty "Bearer " upsets some servers)."""
        key = self.config.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {"Authorization": openai.Omit()}

    def _status_error(self, err: "openai.APIStatusError") -> None:
        """Sort an HTTP error status into retry, item failure or fatal; always raises."""
        status = err.status_code
        detail = err.response.text[:500]
        retry_after = _retry_after_seconds(err.response.headers.get("Retry-After"))
        if status == 429:
            raise _Transient("http_429", detail, retry_after)
        if status >= 500:
            raise _Transient("http_5xx", f"{status} {detail}", retry_after)
        if status in _FATAL_STATUSES:
            raise JudgeError(self._redact(
                f"judge request to {_redact_url(self.config.base_url)} failed: HTTP {status} "
                f"{_FATAL_STATUSES[status]}; server said: {_one_line(detail)[:300]}"))
        raise _Failed(f"http_{status}", detail)

    @staticmethod
    def _reply_text(reply) -> str:
        """choices[0].message.content of a chat completion; _Transient when missing or empty."""
        choices = getattr(reply, "choices", None)
        message = getattr(choices[0], "message", None) if choices else None
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content.strip():
            # Some servers answer 200 with {"error": ...} under load; treat it as transient.
            raise _Transient("no_choices", str(reply)[:200])
        return content

    def score_many(self, task: str, items: list[dict], progress: bool = False) -> dict:
        """Score a list of {"prompt", "response", "reference", optional "false_answers"}.

        Returns {"score": 10 x mean of the successful 1-10 scores (None if none), "n",
        "scored", "failures", "failure_reasons": {reason: count}, "scores": per-item score or
        None}. Failed items are counted, not averaged in as some made-up value.
        """
        scores: list[int | None] = []
        reasons: Counter = Counter()
        iterator = items
        if progress:
            from tqdm import tqdm  # only when asked: keeps the import light otherwise
            iterator = tqdm(items, desc=f"judge {task}", unit="item")
        for item in iterator:
            score = self.score(task, item["prompt"], item["response"], item["reference"],
                               item.get("false_answers"))
            scores.append(score)
            if score is None:
                reasons[self.last_failure] += 1
        good = [s for s in scores if s is not None]
        return {"score": 10 * sum(good) / len(good) if good else None,
                "n": len(items), "scored": len(good), "failures": len(items) - len(good),
                "failure_reasons": dict(reasons), "scores": scores}
