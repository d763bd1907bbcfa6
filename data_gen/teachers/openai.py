"""Teacher behind an OpenAI-compatible chat endpoint (a vLLM or SGLang server, or a hosted API).

One worker thread per in-flight request (`concurrency`); each request goes through
`zwz_jax.chat.ChatClient` (the LLM judge's client too): retried on HTTP 408/409/429/5xx, timeouts
and dropped connections with capped exponential backoff, failing at once on any other 4xx. The API
key comes from the environment, is sent as a Bearer token and is kept out of repr, logs and errors.
"""
from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import threading
from typing import Sequence

from PIL import Image

from data_gen.teachers.base import Request, Teacher, TeacherError
from zwz_jax.chat import ChatClient, ChatError

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


def _cfg_get(cfg, key):
  value = cfg.get(key, None) if cfg is not None else None
  return DEFAULTS[key] if value is None else value


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


class OpenAITeacher(Teacher):
  """Generates with POST {url}/chat/completions; results keep request order."""

  def __init__(self, url: str, model: str, *, api_key: str = "", name: str = "openai",
               concurrency: int = 8, max_retries: int = 5, timeout_s: float = 120.0,
               backoff_s: float = 1.0, backoff_max_s: float = 30.0, image_format: str = "png",
               top_p: float | None = None):
    if not model:
      raise ValueError(f"openai teacher {name!r}: config key 'model' is empty")
    if concurrency < 1:
      raise ValueError(f"openai teacher {name!r}: need concurrency >= 1, got {concurrency}")
    self.client = ChatClient(url, api_key=api_key, name=f"teacher {name!r}", timeout_s=timeout_s,
                             max_retries=max_retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s)
    self.name = name
    self.url = self.client.url
    self.model = model
    self.concurrency = int(concurrency)
    self.image_format = image_format
    self.top_p = top_p
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
    return (f"OpenAITeacher(name={self.name!r}, url={self.client.shown_url!r}, model={self.model!r}, "
            f"concurrency={self.concurrency}, client={self.client!r})")

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
      try:
        texts += self.client.complete(body, stop)
      except ChatError as e:
        raise TeacherError(str(e)) from None
    return texts[:request.n]
