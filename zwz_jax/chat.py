"""One client for OpenAI-compatible chat endpoints (vLLM, SGLang, a hosted API): the data-generation
teachers and the LLM judge both call through it.

Standard library only, and no jax (data_gen uses it). Each call is retried on HTTP 408/409/429/5xx,
timeouts, dropped connections and malformed replies with capped, jittered exponential backoff
(honouring Retry-After), and fails at once on any other 4xx. The API key is sent only as a Bearer
header; it is kept out of repr and redacted from logs and errors, which show the URL without user
info or query.
"""
from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

log = logging.getLogger(__name__)

_ERROR_BODY_CHARS = 300
_RETRIED_4XX = (408, 409, 429)


class ChatError(RuntimeError):
  """A chat request that failed for good; the message names the endpoint, never the key."""


class _Retryable(Exception):
  """One failed attempt that may succeed when repeated: (reason, Retry-After seconds or None)."""


def chat_completions_url(base: str) -> str:
  """The chat completions address for a server base ("http://host:8000/v1") or the full address."""
  base = base.strip().rstrip("/")
  return base if base.endswith("/chat/completions") else base + "/chat/completions"


class _Secret:
  """Holds the API key; prints as a placeholder so it cannot leak through repr or vars()."""

  __slots__ = ("_value",)

  def __init__(self, value: str):
    self._value = value

  def reveal(self) -> str:
    return self._value

  def __bool__(self):
    return bool(self._value)

  def __repr__(self):
    return "<secret>" if self._value else "<none>"

  __str__ = __repr__


def _message_text(choice: Mapping[str, Any]) -> str:
  content = (choice.get("message") or {}).get("content")
  if content is None:  # a refusal or tool call: no text
    return ""
  if isinstance(content, list):  # some servers return content parts
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
  return str(content)


class ChatClient:
  """POSTs chat completion bodies to one endpoint; `complete` returns the choices' texts.

  name: how errors and logs name the caller ("teacher 'remote'", "judge"). Thread-safe: teachers
  call it from a pool of workers.
  """

  def __init__(self, url: str, *, api_key: str = "", name: str = "chat endpoint", timeout_s: float = 60.0,
               max_retries: int = 3, backoff_s: float = 1.0, backoff_max_s: float = 30.0):
    if not url or not url.strip().lower().startswith(("http://", "https://")):
      raise ValueError(f"{name}: url must be an http(s) URL, got {url!r}")
    if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
      raise ValueError(f"{name}: need max_retries >= 0, timeout_s > 0, backoff_s >= 0; "
                       f"got {max_retries}, {timeout_s}, {backoff_s}")
    self.url = chat_completions_url(url)
    parts = urllib.parse.urlsplit(self.url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    # Errors show scheme, host and path only: user info or query parameters may carry credentials.
    self.shown_url = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    self.name = name
    self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
    self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
    self._api_key = _Secret(api_key or "")
    self._lock = threading.Lock()
    self.http_calls = 0

  def __repr__(self):
    return f"ChatClient(name={self.name!r}, url={self.shown_url!r}, api_key={self._api_key!r})"

  def complete(self, body: Mapping[str, Any], stop: threading.Event | None = None) -> list[str]:
    """The texts of the reply's choices (at least one). `stop`, when set by another worker, ends
    the retries. Raises ChatError."""
    data = json.dumps(body).encode("utf-8")
    attempts = self.max_retries + 1
    stop = stop or threading.Event()
    for attempt in range(1, attempts + 1):
      if stop.is_set():
        raise ChatError(f"{self.name}: cancelled after another request failed")
      try:
        return self._post_once(data)
      except _Retryable as e:
        reason, retry_after = e.args
        if attempt == attempts:
          raise ChatError(f"{self.name}: POST {self.shown_url} failed after {attempts} attempts "
                          f"(max_retries={self.max_retries}); last error: {self._redact(reason)}") from None
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: workers hit by one outage do not retry in step
        if retry_after is not None:
          delay = max(delay, min(retry_after, self.backoff_max_s))
        log.warning("%s: POST %s: %s; retry %d/%d in %.2fs", self.name, self.shown_url,
                    self._redact(reason), attempt, self.max_retries, delay)
        stop.wait(delay)
    raise AssertionError("unreachable")

  def _post_once(self, data: bytes) -> list[str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if self._api_key:
      headers["Authorization"] = "Bearer " + self._api_key.reveal()
    req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
    with self._lock:
      self.http_calls += 1
    try:
      with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
        raw = resp.read()
    except urllib.error.HTTPError as e:
      detail = _error_detail(e)
      if e.code in _RETRIED_4XX or e.code >= 500:
        raise _Retryable(f"HTTP {e.code}{detail}", _retry_after(e)) from None
      raise ChatError(f"{self.name}: POST {self.shown_url} returned HTTP {e.code}"
                      f"{self._redact(detail)} (not retried)") from None
    except (TimeoutError, socket.timeout) as e:
      raise _Retryable(f"timed out after {self.timeout_s:g}s ({e})", None) from None
    except urllib.error.URLError as e:
      if isinstance(e.reason, (TimeoutError, socket.timeout)):
        raise _Retryable(f"timed out after {self.timeout_s:g}s ({e.reason})", None) from None
      raise _Retryable(f"connection error: {e.reason}", None) from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
      raise _Retryable(f"connection error: {type(e).__name__}: {e}", None) from None
    try:
      texts = [_message_text(c) for c in json.loads(raw)["choices"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise _Retryable(f"malformed response ({type(e).__name__}: {e}): {raw[:_ERROR_BODY_CHARS]!r}", None) from None
    if not texts:
      raise _Retryable("response has no choices", None)
    return texts

  def _redact(self, text: str) -> str:
    key = self._api_key.reveal()
    return text.replace(key, "<secret>") if key else text


def _error_detail(e: urllib.error.HTTPError) -> str:
  try:
    body = e.read(_ERROR_BODY_CHARS).decode("utf-8", "replace").strip()
  except Exception:  # pylint: disable=broad-except
    body = ""
  return f": {body}" if body else ""


def _retry_after(e: urllib.error.HTTPError) -> float | None:
  value = e.headers.get("Retry-After") if e.headers else None
  try:
    return max(0.0, float(value)) if value is not None else None
  except ValueError:
    return None
