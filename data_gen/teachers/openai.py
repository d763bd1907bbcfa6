"""Teacher behind an OpenAI-compatible chat endpoint (a vLLM or SGLang server, or a hosted API).

Standard library only. One worker thread per in-flight request (`concurrency`); each request is
retried on HTTP 429/5xx, timeouts and dropped connections with capped exponential backoff, and fails
at once on any other 4xx. The API key comes from the environment, is sent as a Bearer token and is
kept out of repr, logs and error messages.
"""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import logging
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from typing import Any, Mapping, Sequence

from PIL import Image

from data_gen.teachers.base import Request, Teacher, TeacherError

log = logging.getLogger(__name__)

DEFAULTS = {
    "name": "openai",
    "url": "",
    "url_env": "ZWZ_TEACHER_URL",
    "api_key_env": "OPENAI_API_KEY",
    "model": "",
    "concurrency": 8,
    "max_retries": 5,
    "timeout_s": 120.0,
    "backoff_s": 1.0,
    "backoff_max_s": 30.0,
    "image_format": "png",  # "png" (lossless) or "jpeg" (much smaller bodies for huge images)
    "top_p": None,  # None: the server's default
}

_ERROR_BODY_CHARS = 300


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


class _Retryable(Exception):
  """One failed attempt that may succeed when repeated."""


def _cfg_get(cfg, key):
  value = cfg.get(key, None) if cfg is not None else None
  return DEFAULTS[key] if value is None else value


def chat_completions_url(base: str) -> str:
  base = base.strip().rstrip("/")
  if base.endswith("/chat/completions"):
    return base
  return base + "/chat/completions"


def encode_image(image: Image.Image, image_format: str = "png") -> str:
  """A data URL for `image` (RGB; PNG or JPEG quality 95)."""
  image_format = image_format.lower()
  if image_format not in ("png", "jpeg"):
    raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
  if image.mode != "RGB":
    image = image.convert("RGB")
  buf = io.BytesIO()
  if image_format == "png":
    image.save(buf, format="PNG")
  else:
    image.save(buf, format="JPEG", quality=95)
  return f"data:image/{image_format};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _message_text(choice: Mapping[str, Any]) -> str:
  content = (choice.get("message") or {}).get("content")
  if content is None:  # a refusal or tool call: no text to judge, the consensus will drop it
    return ""
  if isinstance(content, list):  # some servers return content parts
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
  return str(content)


class OpenAITeacher(Teacher):
  """Generates with POST {url}/chat/completions; results keep request order."""

  def __init__(self, url: str, model: str, *, api_key: str = "", name: str = "openai",
               concurrency: int = 8, max_retries: int = 5, timeout_s: float = 120.0,
               backoff_s: float = 1.0, backoff_max_s: float = 30.0, image_format: str = "png",
               top_p: float | None = None):
    if not url or not url.strip().lower().startswith(("http://", "https://")):
      raise ValueError(f"openai teacher {name!r}: url must be an http(s) URL, got {url!r}")
    if not model:
      raise ValueError(f"openai teacher {name!r}: config key 'model' is empty")
    if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
      raise ValueError(
          f"openai teacher {name!r}: need concurrency >= 1, max_retries >= 0, timeout_s > 0, "
          f"backoff_s >= 0; got {concurrency}, {max_retries}, {timeout_s}, {backoff_s}")
    self.name = name
    self.url = chat_completions_url(url)
    self.model = model
    self.concurrency = int(concurrency)
    self.max_retries = int(max_retries)
    self.timeout_s = float(timeout_s)
    self.backoff_s = float(backoff_s)
    self.backoff_max_s = float(backoff_max_s)
    self.image_format = image_format
    self.top_p = top_p
    self._api_key = _Secret(api_key or "")
    encode_image(Image.new("RGB", (1, 1)), image_format)  # rejects a bad format now, not mid-run

  @classmethod
  def from_config(cls, cfg) -> "OpenAITeacher":
    """Keys: url (or the env var named by url_env), api_key_env, model, concurrency, max_retries,
    timeout_s, backoff_s, backoff_max_s, image_format, top_p, name."""
    url = _cfg_get(cfg, "url")
    url_env = _cfg_get(cfg, "url_env")
    if not url:
      url = os.environ.get(url_env, "")
      if not url:
        raise ValueError(
            f"openai teacher: config key 'url' is empty and env var {url_env} is unset")
    api_key = os.environ.get(_cfg_get(cfg, "api_key_env"), "")
    return cls(url, _cfg_get(cfg, "model"), api_key=api_key, name=_cfg_get(cfg, "name"),
               concurrency=_cfg_get(cfg, "concurrency"), max_retries=_cfg_get(cfg, "max_retries"),
               timeout_s=_cfg_get(cfg, "timeout_s"), backoff_s=_cfg_get(cfg, "backoff_s"),
               backoff_max_s=_cfg_get(cfg, "backoff_max_s"),
               image_format=_cfg_get(cfg, "image_format"), top_p=_cfg_get(cfg, "top_p"))

  def __repr__(self):
    return (f"OpenAITeacher(name={self.name!r}, url={self.url!r}, model={self.model!r}, "
            f"concurrency={self.concurrency}, api_key={self._api_key!r})")

  # --------------------------------------------------------------------------------------------

  def generate(self, requests: Sequence[Request]) -> list[list[str]]:
    if not requests:
      return []
    stop = threading.Event()  # set on the first failure so other workers stop retrying
    results: list[list[str] | None] = [None] * len(requests)
    workers = min(self.concurrency, len(requests))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=self.name) as pool:
      # The same crop is often asked several questions: encode each image object once, in parallel.
      unique = {id(im): im for r in requests for im in r.images}
      urls = dict(zip(unique, pool.map(lambda im: encode_image(im, self.image_format),
                                       unique.values())))
      contents = [[{"type": "image_url", "image_url": {"url": urls[id(im)]}} for im in r.images]
                  + [{"type": "text", "text": r.prompt}] for r in requests]
      futures = {pool.submit(self._samples, r, c, stop): i
                 for i, (r, c) in enumerate(zip(requests, contents))}
      try:
        for future in concurrent.futures.as_completed(futures):
          results[futures[future]] = future.result()
      except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return results  # type: ignore[return-value]

  def _samples(self, request: Request, content: list, stop: threading.Event) -> list[str]:
    """`request.n` strings, calling again while the server returns fewer choices than asked."""
    texts: list[str] = []
    while len(texts) < request.n:  # each call adds >= 1 choice (0 is retried), so this ends
      body = {"model": self.model, "messages": [{"role": "user", "content": content}],
              "n": request.n - len(texts), "temperature": float(request.temperature),
              "max_tokens": int(request.max_new_tokens)}
      if self.top_p is not None:
        body["top_p"] = float(self.top_p)
      texts += self._post_with_retries(body, stop)
    return texts[:request.n]

  def _post_with_retries(self, body: Mapping[str, Any], stop: threading.Event) -> list[str]:
    data = json.dumps(body).encode("utf-8")
    attempts = self.max_retries + 1
    for attempt in range(1, attempts + 1):
      if stop.is_set():
        raise TeacherError(f"teacher {self.name!r}: cancelled after another request failed")
      try:
        return self._post_once(data)
      except _Retryable as e:
        reason, retry_after = e.args
        if attempt == attempts:
          raise TeacherError(
              f"teacher {self.name!r}: POST {self.url} failed after {attempts} attempts "
              f"(max_retries={self.max_retries}); last error: {self._redact(reason)}") from None
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: workers hit by one outage do not retry in step
        if retry_after is not None:
          delay = max(delay, min(retry_after, self.backoff_max_s))
        log.warning("teacher %r: POST %s: %s; retry %d/%d in %.2fs", self.name, self.url,
                    self._redact(reason), attempt, self.max_retries, delay)
        stop.wait(delay)
    raise AssertionError("unreachable")

  def _post_once(self, data: bytes) -> list[str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if self._api_key:
      headers["Authorization"] = "Bearer " + self._api_key.reveal()
    req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
    try:
      with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
        raw = resp.read()
    except urllib.error.HTTPError as e:
      detail = _error_detail(e)
      if e.code == 429 or e.code >= 500:
        raise _Retryable(f"HTTP {e.code}{detail}", _retry_after(e)) from None
      raise TeacherError(f"teacher {self.name!r}: POST {self.url} returned HTTP {e.code}"
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
      choices = json.loads(raw)["choices"]
      texts = [_message_text(c) for c in choices]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise _Retryable(f"malformed response ({type(e).__name__}: {e}): "
                       f"{raw[:_ERROR_BODY_CHARS]!r}", None) from None
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
