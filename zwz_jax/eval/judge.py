"""The LLM judge: an OpenAI-compatible chat endpoint asked whether a prediction matches the reference,
for what the rules in `zwz_jax.answers` cannot settle; verdicts are cached on disk so re-runs never
re-ask.

Pure python: imports neither jax nor torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

from zwz_jax.answers import parse_yes_no
from zwz_jax.chat import ChatClient, ChatError

JUDGE_PROMPT = (
    "Decide whether a model's response gives the same answer as the reference answer to a question "
    "about an image. Ignore wording, formatting, letter case, units and extra explanation; judge only "
    "whether the final answer agrees with the reference. For multiple choice, the chosen option must be "
    "the reference option.\n\nQuestion: {question}\nReference answer: {answer}\nResponse: {prediction}\n\n"
    "Reply with exactly one word: Yes or No.")


class LLMJudgeError(RuntimeError):
  """The judge endpoint could not be reached or answered nonsense; the message names the URL."""


def cache_key(question: str, answer: str, prediction: str) -> str:
  blob = json.dumps([question or "", answer or "", prediction or ""], ensure_ascii=False)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LLMJudge:
  """Asks an OpenAI-compatible chat endpoint whether a prediction matches the reference.

  url: the server's base ("http://host:8000/v1") or its full ".../chat/completions" address;
  default the ZWZ_JUDGE_URL environment variable. The API key is read from the environment variable
  named by `api_key_env` and is sent only as a bearer header, never logged or put in errors.
  cache_path: a JSON-lines file of verdicts keyed by sha256(question, answer, prediction); use one
  file per judge model. Callable as judge(question, answer, prediction) -> bool | None.
  """

  def __init__(self, url: str | None = None, *, model: str = "judge", api_key_env: str = "ZWZ_JUDGE_API_KEY",
               cache_path: str | None = None, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
               max_tokens: int = 16, prompt: str = JUDGE_PROMPT):
    url = url or os.environ.get("ZWZ_JUDGE_URL")
    if not url:
      raise ValueError("no judge URL: pass url= or set ZWZ_JUDGE_URL (an OpenAI-compatible chat endpoint)")
    self.client = ChatClient(url, api_key=os.environ.get(api_key_env, ""), name="judge", timeout_s=timeout,
                             max_retries=retries, backoff_s=backoff)
    self.url = self.client.url
    self.model, self.max_tokens, self.prompt = model, max_tokens, prompt
    self.cache_path = cache_path
    self.cache_hits = 0
    self._cache: dict[str, dict] = {}
    self._lock = threading.Lock()
    if cache_path and os.path.exists(cache_path):
      with open(cache_path, encoding="utf-8") as f:
        for line in f:
          try:
            entry = json.loads(line)
            self._cache[entry["key"]] = entry
          except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a killed run

  def __repr__(self):
    return f"LLMJudge(url={self.client.shown_url!r}, model={self.model!r})"

  @property
  def http_calls(self) -> int:
    return self.client.http_calls

  def __call__(self, question: str, answer: str, prediction: str) -> bool | None:
    key = cache_key(question, answer, prediction)
    with self._lock:
      hit = self._cache.get(key)
      if hit is not None:
        self.cache_hits += 1
    if hit is not None:
      return hit["correct"]
    reply = self.complete(self.prompt.format(question=question, answer=answer, prediction=prediction))
    verdict = parse_yes_no(reply)
    if verdict is not None:  # an unclear reply is asked again next run
      entry = {"key": key, "correct": verdict, "reply": reply, "model": self.model}
      with self._lock:
        self._cache[key] = entry
        if self.cache_path:
          os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
          with open(self.cache_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return verdict

  def complete(self, content: str) -> str:
    """One chat completion (retried by the client); raises LLMJudgeError naming the URL."""
    body = {"model": self.model, "messages": [{"role": "user", "content": content}],
            "temperature": 0.0, "max_tokens": self.max_tokens}
    try:
      return self.client.complete(body)[0]
    except ChatError as e:
      raise LLMJudgeError(str(e)) from None
