"""Teacher backends: `openai` against a real HTTP server on 127.0.0.1, `hf` on a tiny random
Qwen2.5-VL checkpoint written to disk, and the registry that picks between them."""
import base64
import copy
import http.server
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import types

import ml_collections
import numpy as np
from PIL import Image
import pytest
import torch

from data_gen.teachers import registry
from data_gen.teachers.base import Request, TeacherError
from tests import tiny_hf_vlm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "sk-test-DO-NOT-LEAK-4242"


def noise(h, w, seed=0):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------
# A small OpenAI-compatible server
# ----------------------------------------------------------------------------------------------


class FakeChatServer:
  """POST /v1/chat/completions; answers "<prompt>|<call>|<choice>" per choice, or reply(prompt).

  Knobs: the first `fail_first` calls answer `fail_status`; the first `sleep_first` calls sleep
  `sleep_s` (past the client's timeout); `max_choices` caps the choices returned; `delay_for` maps
  a prompt to a delay; `reply` (prompt -> text), when set, writes every choice.
  """

  def __init__(self):
    self.fail_first, self.fail_status, self.retry_after = 0, 500, None
    self.sleep_first, self.sleep_s = 0, 0.0
    self.max_choices = None
    self.delay_for = {}
    self.reply = None
    self.calls = []  # (headers, body) per call
    self.in_flight = self.max_in_flight = 0
    self._lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):  # pylint: disable=invalid-name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server._lock:
          call = len(server.calls)
          server.calls.append((dict(self.headers), body))
          server.in_flight += 1
          server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
          self._answer(call, body)
        finally:
          with server._lock:
            server.in_flight -= 1

      def _answer(self, call, body):
        if self.path != "/v1/chat/completions":
          return self._send(404, {"error": f"no route {self.path}"})
        if call < server.sleep_first:
          time.sleep(server.sleep_s)
        prompt = body["messages"][0]["content"][-1]["text"]
        time.sleep(server.delay_for.get(prompt, 0.0))
        if call < server.fail_first:
          # Echo the Authorization header, as a careless proxy might: the client must redact it.
          return self._send(server.fail_status,
                            {"error": f"failing on purpose; {self.headers.get('Authorization')}"})
        n = body["n"] if server.max_choices is None else min(body["n"], server.max_choices)
        text = lambda i: server.reply(prompt) if server.reply else f"{prompt}|{call}|{i}"
        choices = [{"index": i, "message": {"role": "assistant", "content": text(i)},
                    "finish_reason": "stop"} for i in range(n)]
        return self._send(200, {"object": "chat.completion", "choices": choices})

      def _send(self, status, payload):
        data = json.dumps(payload).encode()
        try:
          self.send_response(status)
          if status == 429 and server.retry_after is not None:
            self.send_header("Retry-After", str(server.retry_after))
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client timed out and left

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                    daemon=True)
    self._thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self._thread.join(timeout=5)


@pytest.fixture
def server():
  s = FakeChatServer()
  yield s
  s.close()


def make_openai(url, monkeypatch, **overrides):
  monkeypatch.setenv("ZWZ_TEST_KEY", SECRET)
  cfg = dict(backend="openai", url=url, api_key_env="ZWZ_TEST_KEY", model="tiny-vlm", name="remote",
             concurrency=4, max_retries=3, timeout_s=0.2, backoff_s=0.01, backoff_max_s=0.05)
  cfg.update(overrides)
  return registry.build_teacher(cfg)


def req(prompt, images=(), n=1, temperature=0.0, task="answer"):
  return Request(images=tuple(images), prompt=prompt, task=task, n=n, temperature=temperature,
                 max_new_tokens=32)


def assert_no_secret(*texts):
  for text in texts:
    assert SECRET not in text


# ----------------------------------------------------------------------------------------------
# openai
# ----------------------------------------------------------------------------------------------


def test_openai_request_body_and_auth(server, monkeypatch):
  teacher = make_openai(server.url, monkeypatch)
  image = noise(20, 30)
  out = teacher.generate([req("How many cups?", [image, noise(8, 8, 1)], n=2, temperature=0.7)])
  assert out == [["How many cups?|0|0", "How many cups?|0|1"]]
  headers, body = server.calls[0]
  assert headers["Authorization"] == f"Bearer {SECRET}"
  assert body["model"] == "tiny-vlm" and body["n"] == 2
  assert body["temperature"] == 0.7 and body["max_tokens"] == 32
  (message,) = body["messages"]
  assert message["role"] == "user"
  kinds = [part["type"] for part in message["content"]]
  assert kinds == ["image_url", "image_url", "text"]
  assert message["content"][2]["text"] == "How many cups?"
  data_url = message["content"][0]["image_url"]["url"]
  prefix = "data:image/png;base64,"
  assert data_url.startswith(prefix)
  decoded = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):])))
  assert decoded.size == (30, 20)
  np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))
  assert_no_secret(repr(teacher), str(vars(teacher)))


def test_openai_url_from_env_and_no_key(server, monkeypatch):
  monkeypatch.setenv("ZWZ_TEACHER_URL", server.url + "/")
  monkeypatch.delenv("ZWZ_UNSET_KEY", raising=False)
  teacher = registry.build_teacher(ml_collections.ConfigDict(dict(
      backend="openai", url="", model="m", api_key_env="ZWZ_UNSET_KEY", max_retries=0)))
  assert teacher.url == server.url + "/chat/completions"
  assert teacher.generate([req("hi")]) == [["hi|0|0"]]
  assert "Authorization" not in server.calls[0][0]
  monkeypatch.delenv("ZWZ_TEACHER_URL")
  with pytest.raises(ValueError, match="'url' is empty and env var ZWZ_TEACHER_URL is unset"):
    registry.build_teacher(dict(backend="openai", model="m"))
  with pytest.raises(ValueError, match="'model' is empty"):
    registry.build_teacher(dict(backend="openai", url=server.url))


def test_openai_retries_500_then_succeeds(server, monkeypatch, caplog):
  server.fail_first = 2
  teacher = make_openai(server.url, monkeypatch)
  with caplog.at_level(logging.WARNING, logger="zwz_jax.chat"):
    out = teacher.generate([req("q")])
  assert out == [["q|2|0"]]
  assert len(server.calls) == 3
  assert "HTTP 500" in caplog.text and "retry 1/3" in caplog.text
  assert_no_secret(caplog.text)


@pytest.mark.parametrize("status", [408, 409])
def test_openai_retries_what_the_judge_retries(server, monkeypatch, status):
  """Teachers and the LLM judge share one client (zwz_jax.chat): a request timeout or conflict is
  retried by both (the teacher failed at once on them)."""
  server.fail_first, server.fail_status = 1, status
  assert make_openai(server.url, monkeypatch).generate([req("q")]) == [["q|1|0"]]
  assert len(server.calls) == 2


def test_openai_retries_429_and_timeouts(server, monkeypatch):
  server.fail_first, server.fail_status, server.retry_after = 1, 429, 0
  teacher = make_openai(server.url, monkeypatch)
  assert teacher.generate([req("a")]) == [["a|1|0"]]
  server.calls.clear()
  server.fail_first, server.sleep_first, server.sleep_s = 0, 1, 1.0  # first call outlives 0.2 s
  start = time.monotonic()
  assert teacher.generate([req("b")]) == [["b|1|0"]]
  assert len(server.calls) == 2
  assert time.monotonic() - start < 0.9  # the client gave up on the slow call, did not wait


def test_openai_gives_up_after_limit(server, monkeypatch, caplog):
  server.fail_first = 1000
  teacher = make_openai(server.url, monkeypatch, max_retries=2)
  with caplog.at_level(logging.WARNING, logger="zwz_jax.chat"):
    with pytest.raises(TeacherError) as info:
      teacher.generate([req("q")])
  message = str(info.value)
  assert server.url + "/chat/completions" in message
  assert "3 attempts" in message and "HTTP 500" in message and "'remote'" in message
  assert "<secret>" in message  # the echoed Authorization header was redacted
  assert len(server.calls) == 3
  assert_no_secret(message, repr(info.value), caplog.text, repr(teacher))


def test_openai_gives_up_on_timeouts(server, monkeypatch):
  server.sleep_first, server.sleep_s = 1000, 0.5
  teacher = make_openai(server.url, monkeypatch, max_retries=1)
  with pytest.raises(TeacherError, match=r"2 attempts.*timed out after 0.2s"):
    teacher.generate([req("q")])
  assert len(server.calls) == 2


def test_openai_connection_refused(monkeypatch):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  teacher = make_openai(f"http://127.0.0.1:{port}/v1", monkeypatch, max_retries=1)
  with pytest.raises(TeacherError, match=r"2 attempts.*connection error"):
    teacher.generate([req("q")])


def test_openai_400_fails_at_once(server, monkeypatch):
  server.fail_first, server.fail_status = 1000, 400
  teacher = make_openai(server.url, monkeypatch)
  with pytest.raises(TeacherError, match=r"HTTP 400.*failing on purpose.*not retried") as info:
    teacher.generate([req("q")])
  assert len(server.calls) == 1
  assert_no_secret(str(info.value))


def test_openai_tops_up_when_server_ignores_n(server, monkeypatch):
  server.max_choices = 1
  teacher = make_openai(server.url, monkeypatch, concurrency=1)
  out = teacher.generate([req("q", n=3, temperature=1.0), req("r", n=1)])
  assert out == [["q|0|0", "q|1|0", "q|2|0"], ["r|3|0"]]
  assert [body["n"] for _, body in server.calls] == [3, 2, 1, 1]


def test_openai_concurrency_keeps_order(server, monkeypatch):
  prompts = [f"p{i}" for i in range(8)]
  server.delay_for = {p: 0.02 * (8 - i) for i, p in enumerate(prompts)}  # later ones finish first
  teacher = make_openai(server.url, monkeypatch, concurrency=4, timeout_s=2.0)
  image = noise(16, 16)
  out = teacher.generate([req(p, [image], n=2, temperature=1.0) for p in prompts])
  assert [[text.split("|")[0] for text in texts] for texts in out] == [[p, p] for p in prompts]
  assert server.max_in_flight > 1
  assert teacher.generate([]) == []


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------


def test_llm_grouper_over_an_openai_server(server, monkeypatch):
  """The grouper asks once per question with more than one distinct answer, merges what the model
  says means the same ("2" / "two" / "a pair"), and a reply it cannot read leaves that question to
  the rules, counted."""
  import collections
  from data_gen import consensus, grouping

  def reply(prompt):
    if "How many birds" in prompt:  # answers listed once each: 1. 2, 2. a pair, 3. 3
      assert "1. 2\n2. a pair\n3. 3" in prompt
      return "The first two are the same number.\n```json\n[[1, 2], [3]]\n```"
    return "I cannot group these."

  server.reply = reply
  teacher = make_openai(server.url, monkeypatch)
  birds = ["2", "two", "a pair", "a pair", "2", "3", "3", "2"]  # rules: "2" 4 of 8 (two == 2)
  cups = ["red", "crimson", "red", "red", "red", "crimson", "red", "maroon"]
  same = ["blue"] * 8  # one distinct answer: not asked
  counts = collections.Counter()
  groups = grouping.llm_groups(teacher, [("How many birds are on the wire?", {}), ("What colour is the cup?", {}),
                                         ("Which colour?", {})], [birds, cups, same], counts)
  assert len(server.calls) == 2 and counts == {"grouped_questions": 2, "errors/unparsable_groups": 1}
  assert groups[1] is None and groups[2] is None
  assert groups[0] == [0, 0, 0, 0, 0, 1, 1, 0]
  rules, llm = (consensus.consensus(birds, 6, groups=g) for g in (None, groups[0]))
  assert not rules.keep and rules.votes == {"2": 4, "pair": 2, "3": 2}  # normalised forms
  assert llm.keep and llm.answer == "2" and llm.votes == {"2": 6, "3": 2} and llm.agreement == 6 / 8
  teacher.close()


def test_registry_dispatch(monkeypatch):
  with pytest.raises(ValueError, match=r"teacher 'x': config key 'backend' is 'vllm'; expected"):
    registry.build_teacher(dict(backend="vllm", name="x"))
  with pytest.raises(ValueError, match="'backend' is None"):
    registry.build_teacher(ml_collections.ConfigDict(dict(name="x")))
  # The scene backend is imported lazily; stand in a module to check the dispatch alone.
  fake = types.ModuleType("data_gen.teachers.scene")

  class SceneTeacher:

    @classmethod
    def from_config(cls, cfg):
      return ("scene", cfg["name"])

  fake.SceneTeacher = SceneTeacher
  monkeypatch.setitem(sys.modules, "data_gen.teachers.scene", fake)
  assert registry.build_teacher(dict(backend="scene", name="oracle")) == ("scene", "oracle")


def test_imports_stay_light():
  """openai and the registry need neither torch nor jax; hf needs torch but never jax."""
  code = ("import sys; import data_gen.teachers.registry, data_gen.teachers.openai; "
          "bad = [m for m in ('jax', 'torch', 'transformers') if m in sys.modules]; "
          "assert not bad, bad; import data_gen.teachers.hf; assert 'jax' not in sys.modules")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=False, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------
# hf
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return tiny_hf_vlm.save_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("tiny_qwen2_5_vl")))


@pytest.fixture(scope="module")
def hf_teacher(checkpoint):
  return registry.build_teacher(ml_collections.ConfigDict(dict(
      backend="hf", path=checkpoint, device="cpu", dtype="float32", batch_size=3, name="tiny",
      seed=0)))


def hf_requests(n=2, temperature=0.0):
  images = [(noise(60, 80, 1),), (noise(120, 50, 2),), (noise(300, 400, 3), noise(30, 40, 4))]
  prompts = ["What colour is the car?", "How many windows are there?",
             "Read the text on the sign."]
  return [Request(images=im, prompt=p, task="answer", n=n, temperature=temperature,
                  max_new_tokens=6) for im, p in zip(images, prompts)]


def reference_greedy(teacher, request):
  """Unbatched generation straight through transformers."""
  inputs = teacher.processor(text=[teacher.prompt_text(request)], images=list(request.images),
                             return_tensors="pt")
  with torch.inference_mode():
    out = teacher.model.generate(**inputs, do_sample=False, max_new_tokens=request.max_new_tokens)
  return teacher.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                            skip_special_tokens=True)


def test_hf_loads_checkpoint(hf_teacher):
  from data_gen.teachers.hf import HFTeacher  # pylint: disable=import-outside-toplevel
  assert isinstance(hf_teacher, HFTeacher) and hf_teacher.name == "tiny"
  assert hf_teacher.processor.tokenizer.padding_side == "left"
  text = hf_teacher.prompt_text(hf_requests()[2])
  assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
  assert text.endswith("Read the text on the sign.<|im_end|>\n<|im_start|>assistant\n")


def test_hf_greedy_is_deterministic_and_batch_invariant(hf_teacher):
  requests = hf_requests()
  out = hf_teacher.generate(requests)
  assert len(out) == 3 and all(len(texts) == 2 for texts in out)
  assert all(isinstance(t, str) for texts in out for t in texts)
  assert all(texts[0] == texts[1] for texts in out)  # greedy: n copies of one answer
  assert any(texts[0] for texts in out)
  assert hf_teacher.generate(requests) == out
  refs = [reference_greedy(hf_teacher, r) for r in requests]
  assert [texts[0] for texts in out] == refs
  from data_gen.teachers.hf import HFTeacher  # pylint: disable=import-outside-toplevel
  one_by_one = HFTeacher(hf_teacher.model, hf_teacher.processor, batch_size=1)
  assert one_by_one.generate(requests) == out


def test_hf_sampling_is_seeded(checkpoint):
  def build(**overrides):
    cfg = dict(backend="hf", path=checkpoint, dtype="float32", batch_size=3, seed=0)
    return registry.build_teacher({**cfg, **overrides})

  requests = hf_requests(n=2, temperature=1.0)
  teacher = build()
  first, second = teacher.generate(requests), teacher.generate(requests)
  assert [len(texts) for texts in first] == [2, 2, 2]
  assert all(isinstance(t, str) for texts in first for t in texts)
  assert any(texts[0] != texts[1] for texts in first)
  assert second != first  # asking again gives fresh samples, never the same ones
  rerun = build()
  assert [rerun.generate(requests), rerun.generate(requests)] == [first, second]
  assert build(seed=1).generate(requests) != first
  assert build(name="other").generate(requests) != first


def test_hf_mixed_requests_keep_order(hf_teacher):
  greedy = hf_teacher.generate(hf_requests(n=1))
  a, b, c = hf_requests(n=1)
  mixed = [c, Request(images=b.images, prompt=b.prompt, task="answer", n=3, temperature=1.0,
                      max_new_tokens=4),
           a, Request(images=(), prompt="Say hello.", task="check", n=2, max_new_tokens=4)]
  out = hf_teacher.generate(mixed)
  assert [len(texts) for texts in out] == [1, 3, 1, 2]
  assert out[0] == greedy[2] and out[2] == greedy[0]


def test_hf_samples_despite_greedy_generation_config(hf_teacher):
  """Qwen checkpoints ship top_k=1 / top_p=0.001 defaults; sampled requests must still vary."""
  model = hf_teacher.model
  saved = copy.deepcopy(model.generation_config)
  try:
    for key, value in dict(do_sample=True, top_k=1, top_p=0.001, temperature=0.1).items():
      setattr(model.generation_config, key, value)
    out = hf_teacher.generate(hf_requests(n=4, temperature=1.0))
    assert all(len(set(texts)) > 1 for texts in out)
    # And a checkpoint that samples by default still decodes greedily when asked to.
    for key, value in dict(top_k=50, top_p=1.0, temperature=1.0).items():
      setattr(model.generation_config, key, value)
    greedy = hf_teacher.generate(hf_requests(n=1))
  finally:
    model.generation_config = saved
  assert greedy == hf_teacher.generate(hf_requests(n=1))


def test_hf_bad_image_is_a_teacher_error(hf_teacher):
  with pytest.raises(TeacherError, match=r"'tiny': cannot prepare .*\(2, 500\).*aspect ratio"):
    hf_teacher.generate([Request(images=(noise(500, 2),), prompt="q", task="answer")])


def test_hf_out_of_memory_halves_the_batch(hf_teacher, monkeypatch):
  from data_gen.teachers.hf import HFTeacher  # pylint: disable=import-outside-toplevel
  teacher = HFTeacher(hf_teacher.model, hf_teacher.processor, batch_size=3)
  real, sizes = teacher._generate_batch, []  # pylint: disable=protected-access

  def small_device(batch):
    sizes.append(len(batch))
    if len(batch) > 1:
      raise torch.OutOfMemoryError("pretend the batch does not fit")
    return real(batch)

  monkeypatch.setattr(teacher, "_generate_batch", small_device)
  assert teacher.generate(hf_requests()) == hf_teacher.generate(hf_requests())
  assert sizes == [3, 1, 2, 1, 1]
  monkeypatch.setattr(teacher, "_generate_batch", lambda batch: small_device(batch * 2))
  with pytest.raises(TeacherError, match="out of memory on a single request"):
    teacher.generate(hf_requests()[:1])


def test_hf_max_pixels_caps_images():
  from data_gen.teachers.hf import cap_pixels  # pylint: disable=import-outside-toplevel
  image = noise(300, 400)
  assert cap_pixels(image, None) is image and cap_pixels(image, 10**6) is image
  small = cap_pixels(image, 28 * 28 * 4)
  assert small.width * small.height <= 28 * 28 * 4
  assert abs(small.width / small.height - 4 / 3) < 0.05


def test_hf_config_errors(tmp_path):
  with pytest.raises(ValueError, match="'path' must be a local checkpoint directory"):
    registry.build_teacher(dict(backend="hf", path=str(tmp_path / "missing")))
  with pytest.raises(ValueError, match="'dtype' must be 'auto' or one of"):
    registry.build_teacher(dict(backend="hf", path=str(tmp_path), dtype="fp8"))
  bare = tiny_hf_vlm.save_tiny_qwen2_5_vl(str(tmp_path / "bare"), chat_template=False)
  with pytest.raises(ValueError, match="no chat template"):
    registry.build_teacher(dict(backend="hf", path=bare, dtype="float32"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hf_on_cuda_bf16(checkpoint):
  teacher = registry.build_teacher(dict(backend="hf", path=checkpoint, device_map="auto",
                                        dtype="bfloat16", batch_size=2))
  assert teacher.model.device.type == "cuda" and teacher.model.dtype == torch.bfloat16
  out = teacher.generate(hf_requests(n=2))
  assert out == teacher.generate(hf_requests(n=2))
  assert [len(texts) for texts in teacher.generate(hf_requests(n=3, temperature=1.0))] == [3, 3, 3]
  teacher.close()
