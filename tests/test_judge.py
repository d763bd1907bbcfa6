"""Rule judge on a hand-written table, answer extraction, and the LLM judge against a loopback server."""
import http.server
import json
import threading

import pytest

from zwz_jax import answers as A
from zwz_jax.eval import judge as J

COLOURS = ("red", "blue", "green", "black")
CARS = ("blue car", "red car", "green car", "white car")

# (prediction, answer, options, expected correct)
CASES = [
    # option letters, in every form a model writes them
    ("D", "D", (), True),
    ("D.", "D", (), True),
    ("(d)", "D", (), True),
    ("d)", "D", (), True),
    ("Answer: D", "D", (), True),
    ("Answer: D", "A", (), False),  # the "A" of "Answer" is not option A
    ("The answer is (B).", "B", COLOURS, True),
    ("**C**", "C", COLOURS, True),
    ("Option B", "B", COLOURS, True),
    ("B. red", "B", COLOURS, True),
    ("\\boxed{C}", "C", COLOURS, True),
    ("(b)", "B", COLOURS, True),
    ("b", "B", COLOURS, True),
    ("A", "A", COLOURS, True),
    ("A.", "A", COLOURS, True),
    ("(A)", "A", COLOURS, True),
    ("A. red", "A", COLOURS, True),
    ("<think>It might be A, but the sign is blue.</think><answer>B</answer>", "B", COLOURS, True),
    ("Looking closely at the sign, the letters are blue. So the answer is B.", "B", COLOURS, True),
    ("I think it is C because the mug is green.", "C", COLOURS, True),
    ("The correct answer is option D", "D", COLOURS, True),
    ("答案：B", "B", COLOURS, True),
    ("blue", "B", COLOURS, True),  # the option's text instead of its letter
    ("There are two lamps.", "B", ("0", "2", "1", "3"), True),  # a count naming option B's value
    ("'C'", "C", COLOURS, True),
    ("It is a dark blue colour", "B", COLOURS, True),
    ("A red car", "B", CARS, True),  # article "A", text names option B
    ("A red car", "A", CARS, False),
    ("Answer: A red car", "A", CARS, False),
    ("A or B", "A", COLOURS, False),  # hedging is not an answer
    ("Answer: A or B", "B", COLOURS, False),
    ("Option A is wrong, option B is right", "A", COLOURS, False),
    ("E", "D", COLOURS, False),  # not an option of four
    ("C", "B", COLOURS, False),
    ("not blue", "B", COLOURS, False),
    ("The answer is C", "(B)", COLOURS, False),
    ("The answer is C", "C. green", COLOURS, True),  # reference written as "C. green"
    # numbers
    ("3", "3", (), True),
    ("three", "3", (), True),
    ("The answer is 3.", "3", (), True),
    ("3 cats", "3", (), True),
    ("twelve", "12", (), True),
    ("There are twelve birds on the wire.", "12", (), True),
    ("1,000", "1000", (), True),
    ("3.5", "3.5", (), True),
    ("twenty-one", "21", (), True),
    ("<answer>4</answer>", "four", (), True),
    ("4", "3", (), False),
    ("3.5", "3", (), False),
    ("I see 3 red and 2 blue balls", "5", (), False),  # no single count stated
    ("many", "3", (), False),
    # open text (OCR, names, yes/no)
    ("STOP", "stop", (), True),
    ("The sign says \"STOP\".", "STOP", (), True),
    ("the Eiffel Tower", "Eiffel Tower", (), True),
    ("<answer>Coca-Cola</answer>", "coca cola", (), True),
    ("Yes, it is open.", "yes", (), True),
    ("No.", "yes", (), False),
    ("No, it is not.", "no", (), True),
    ("SPOT", "STOP", (), False),
    ("not wood", "wood", (), False),
    ("wood or metal", "wood", (), False),
    ("It's made of plastic", "wood", (), False),
    # nothing to judge
    ("", "B", COLOURS, False),
    (None, "3", (), False),
    ("<answer>  </answer>", "STOP", (), False),
]


@pytest.mark.parametrize("prediction, answer, options, expected", CASES)
def test_judge_table(prediction, answer, options, expected):
  v = A.judge(prediction, answer, options=options)
  assert v.correct is expected, v


def test_table_is_large_and_has_negatives():
  assert len(CASES) >= 40
  assert sum(1 for c in CASES if c[3] is False) >= 15


@pytest.mark.parametrize("text, expected", [
    ("D", "D"), ("(d)", "D"), ("Answer: D", "D"), ("The answer is (B).", "B"), ("**C**", "C"),
    ("Option B", "B"), ("B. red", "B"), ("\\boxed{C}", "C"), ("A", "A"), ("A red car", None),
    ("Answer: A red car", None), ("A or B", None), ("", None), ("the red one", None), ("E", None),
    ("I see a cat", None), ("i.e. the red one", None), ("B's colour", None),
])
def test_parse_option(text, expected):
  assert A.parse_option(text) == expected


def test_parse_option_by_text_is_unique():
  assert A.parse_option("dark red", options=("red", "dark red", "blue", "green")) == "B"
  assert A.parse_option("red and blue", options=COLOURS) is None
  assert A.parse_option("E", num_options=5) == "E"


@pytest.mark.parametrize("text, expected", [
    ("3", 3), ("three", 3), ("The answer is 3.", 3), ("3 cats", 3), ("twelve", 12), ("1,000", 1000),
    ("3.5", 3.5), ("one hundred and five", 105), ("-2", -2), ("3 (three)", 3), ("none", 0),
    ("the one on the left has 3 stripes", 3), ("one, two", None), ("no number", None), (None, None),
    ("2 cars, so the answer is 4", 4),
])
def test_parse_number(text, expected):
  assert A.parse_number(text) == expected


def test_extract_and_normalise():
  assert A.extract_answer("<think>x</think> <answer> B </answer>") == "B"
  assert A.extract_answer("<answer>A</answer> then <answer>C</answer>") == "C"
  assert A.extract_answer("<think>long</think>\nfinal") == "final"
  assert A.extract_answer("<answer>cut off") == "cut off"
  assert A.extract_answer(None) == ""
  assert A.normalise_answer("  The Cat's HAT, 1,000 and 3.5! ") == "cats hat 1000 and 3.5"


def test_answer_types_and_invalid_reference():
  assert A.infer_answer_type("B") == "mc"
  assert A.infer_answer_type("red", COLOURS) == "mc"
  assert A.infer_answer_type("7") == "number"
  assert A.infer_answer_type("seven cats") == "number"
  assert A.infer_answer_type("Route 66") == "text"
  v = A.judge("B", "purple", options=COLOURS)
  assert v.correct is None and v.method == "invalid"
  v = A.judge("B", "B", answer_type="bogus")
  assert v.correct is None and v.method == "invalid"
  assert A.judge("", "B").reason == "empty prediction"


def test_llm_fallback_only_when_rules_cannot_confirm():
  calls = []

  def llm(question, answer, prediction):
    calls.append((question, answer, prediction))
    return True

  assert A.judge("STOP", "stop", llm=llm).method == "text"  # the rule settles it
  assert A.judge("C", "B", options=COLOURS, llm=llm).correct is False  # a read letter is never overridden
  assert not calls
  v = A.judge("crimson", "red", llm=llm, question="What colour?")
  assert v.correct is True and v.method == "llm"
  assert calls[-1] == ("What colour?", "red", "crimson")
  v = A.judge("the leftmost", "B", options=COLOURS, llm=llm, question="Which?")
  assert v.method == "llm" and calls[-1][1] == "B. blue" and "A. red" in calls[-1][0]

  def broken(*_):
    raise J.LLMJudgeError("judge endpoint http://x failed")

  v = A.judge("crimson", "red", llm=broken)
  assert v.correct is None and "failed" in v.reason


def test_parse_yes_no():
  assert A.parse_yes_no("Yes") is True
  assert A.parse_yes_no("No.") is False
  assert A.parse_yes_no("<think>maybe no</think>\\boxed{Yes}") is True
  assert A.parse_yes_no("The response matches. Yes") is True
  assert A.parse_yes_no("I cannot tell") is None


# ----------------------------------------------------------------------------------------------
# LLM judge over HTTP, against a server on 127.0.0.1
# ----------------------------------------------------------------------------------------------


class _Server:
  """A tiny OpenAI-compatible chat server: answers from `replies` (status, content) in turn."""

  def __init__(self, replies):
    self.replies, self.requests = list(replies), []
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        outer.requests.append((self.path, dict(self.headers), body))
        status, content = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def log_message(self, *args):
        pass

    self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def test_llm_judge_asks_once_then_uses_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("ZWZ_TEST_JUDGE_KEY", "sk-secret-123")
  cache = tmp_path / "judge_cache.jsonl"
  with _Server([(200, "Yes")]) as server:
    llm = J.LLMJudge(server.url, api_key_env="ZWZ_TEST_JUDGE_KEY", cache_path=str(cache), model="m")
    assert llm("What colour?", "red", "crimson") is True
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-secret-123"
    assert body["model"] == "m" and "crimson" in body["messages"][0]["content"]
    assert llm("What colour?", "red", "crimson") is True
    assert len(server.requests) == 1 and llm.cache_hits == 1
    # A fresh judge (a re-run) reads the cache file and asks nothing.
    again = J.LLMJudge(server.url, api_key_env="ZWZ_TEST_JUDGE_KEY", cache_path=str(cache))
    v = A.judge("crimson", "red", llm=again, question="What colour?")
    assert v.correct is True and v.method == "llm"
    assert len(server.requests) == 1 and again.http_calls == 0
  lines = [json.loads(l) for l in cache.read_text().splitlines()]
  assert len(lines) == 1 and lines[0]["key"] == J.cache_key("What colour?", "red", "crimson")
  assert "sk-secret" not in cache.read_text()


def test_llm_judge_retries_then_succeeds(tmp_path):
  with _Server([(503, "busy"), (500, "oops"), (200, "No")]) as server:
    llm = J.LLMJudge(server.url + "/chat/completions", backoff=0.01)
    assert llm("Q", "red", "blue") is False
    assert len(server.requests) == 3


def test_llm_judge_error_names_the_url_not_the_key(monkeypatch):
  monkeypatch.setenv("ZWZ_TEST_JUDGE_KEY", "sk-secret-123")
  with _Server([(401, "denied")]) as server:
    llm = J.LLMJudge(server.url, api_key_env="ZWZ_TEST_JUDGE_KEY", retries=3, backoff=0.01)
    with pytest.raises(J.LLMJudgeError, match="127.0.0.1") as info:
      llm("Q", "a", "b")
    assert len(server.requests) == 1  # a rejected request is not retried
  assert "sk-secret" not in str(info.value) and "sk-secret" not in repr(llm)
  # Nothing listening: the error still names the endpoint.
  llm = J.LLMJudge(server.url, retries=1, backoff=0.01, timeout=2)
  with pytest.raises(J.LLMJudgeError, match=r"http://127\.0\.0\.1:\d+/v1/chat/completions.*2 attempt"):
    llm("Q", "a", "b")


def test_llm_judge_needs_a_url(monkeypatch):
  monkeypatch.delenv("ZWZ_JUDGE_URL", raising=False)
  with pytest.raises(ValueError, match="ZWZ_JUDGE_URL"):
    J.LLMJudge()
  monkeypatch.setenv("ZWZ_JUDGE_URL", "http://127.0.0.1:1/v1/")
  assert J.LLMJudge().url == "http://127.0.0.1:1/v1/chat/completions"
