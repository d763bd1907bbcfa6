"""Thinking-with-images harness: tool-call parsing, crops of the original pixels, turn limits, errors."""
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from tests.shared import CONFIGS
from zwz_jax.data import processor
from zwz_jax.eval import agentic
from zwz_jax.eval.benchmarks import EvalItem

W, H = 150, 100  # not multiples of 28: the tiny processor views it as 140x112


def _item(arr, id="it0", answer="B"):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return EvalItem(id=id, image=buf.getvalue(), image_format="png", width=arr.shape[1], height=arr.shape[0],
                  crop=None, crop_format=None, question="What colour is the square?",
                  options=("red", "green", "blue", "yellow"), answer=answer, answer_type="mc",
                  dimension="colour", bbox=(30.0, 25.0, 90.0, 63.0), source="test:0")


@pytest.fixture(scope="module")
def arr():
  return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


class Scripted:
  """Returns canned outputs in order and keeps what each turn was shown."""

  def __init__(self, *outputs):
    self.outputs, self.seen = list(outputs), []

  def __call__(self, conv):
    self.seen.append((conv.render(), list(conv.images)))
    out = self.outputs[min(len(self.seen), len(self.outputs)) - 1]
    if isinstance(out, Exception):
      raise out
    return out


def _call(box):
  return f'Let me look closer. <tool_call>{{"name": "image_zoom_in_tool", "arguments": {{"bbox_2d": {box}}}}}</tool_call>'


def _harness(fn, tiny_config, **kw):
  return agentic.AgenticHarness(fn, view_size=agentic.view_size_fn(tiny_config), **kw)


def test_view_size_is_the_processor_resize(tiny_config):
  assert agentic.view_size_fn(tiny_config)(W, H) == (140, 112)
  assert "absolute pixel coordinates" in agentic.SYSTEM_PROMPT


def test_relative_coordinate_models_zoom_on_the_0_to_1000_scale(arr):
  """Qwen3-VL grounds on 0-1000: the tool says so and its boxes map back from that frame."""
  from zwz_jax.config import load_config
  config = load_config(f"{CONFIGS}/tiny_qwen3.py")
  view = agentic.view_size_fn(config)
  assert view(W, H) == (1000, 1000)
  assert "0-1000 scale" in agentic.tool_system_prompt(config.processor.box_coordinates)
  fn = Scripted(_call([200, 250, 600, 750]), "<answer>B</answer>")
  res = agentic.AgenticHarness(fn, view_size=view, upscale=1.0).run(_item(arr))
  assert res.tool_calls[0] == (30, 25, 90, 75)  # 150x100 image: x * 0.15, y * 0.1


def test_zoom_crops_the_original_pixels_then_answers(arr, tiny_config):
  fn = Scripted(_call([28, 28, 84, 70]), "It is green. <answer>B</answer>")
  res = _harness(fn, tiny_config, upscale=2.0).run(_item(arr))
  # Model view 140x112 -> original 150x100: x * 150/140, y * 100/112, widened to whole pixels.
  box = (30, 25, 90, 63)
  assert res.tool_calls == [box] and res.turns == 2 and res.error is None
  assert res.correct and res.prediction.endswith("<answer>B</answer>")
  text, images = fn.seen[1]
  assert len(images) == 2 and images[0].size == (W, H)
  want = Image.fromarray(arr[25:63, 30:90]).resize((120, 76), Image.BICUBIC)
  np.testing.assert_array_equal(np.asarray(images[1]), np.asarray(want))
  # The call stays in the assistant turn; the crop comes back in a tool-response turn after it.
  vision = "<|vision_start|><|image_pad|><|vision_end|>"
  assert text.count(vision) == 2
  assert text.index("</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n" + vision) > text.index(vision)
  assert text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_first_turn_equals_the_single_pass_prompt(arr, tiny_config):
  fn = Scripted("<answer>A</answer>")
  res = _harness(fn, tiny_config, system_prompt="You are a helpful assistant.").run(_item(arr))
  assert fn.seen[0][0] == processor.chat_prompt(_item(arr).prompt)
  assert res.turns == 1 and not res.tool_calls and not res.correct and res.error is None


def test_unscaled_crop_and_bare_zoom_tag(arr, tiny_config):
  fn = Scripted("<zoom>[14, 0, 70, 56]</zoom>", "<answer>B</answer>")
  res = _harness(fn, tiny_config, upscale=1.0).run(_item(arr))
  assert res.tool_calls == [(15, 0, 75, 50)] and res.correct
  np.testing.assert_array_equal(np.asarray(fn.seen[1][1][1]), arr[0:50, 15:75])


def test_turn_limit(arr, tiny_config):
  fn = Scripted(_call([0, 0, 56, 56]))
  res = _harness(fn, tiny_config, max_turns=2).run(_item(arr))
  assert res.turns == 3 and len(res.tool_calls) == 2
  assert "turn limit" in res.error and not res.correct
  assert len(fn.seen[-1][1]) == 3  # the original and two crops


@pytest.mark.parametrize("output, reason", [
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3}}</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3]}}</tool_call>', "4 numbers"),
    ('<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>', "unknown tool"),
    ("<zoom>[1, 2, 3, NaN]</zoom>", "finite"),
])
def test_malformed_call_is_recorded_not_raised(arr, tiny_config, output, reason):
  res = _harness(Scripted(output), tiny_config).run(_item(arr))
  assert res.turns == 1 and not res.tool_calls and not res.correct
  assert "malformed tool call" in res.error and reason in res.error


def test_failing_generation_and_bad_image_are_recorded(arr, tiny_config):
  res = _harness(Scripted(RuntimeError("out of memory")), tiny_config).run(_item(arr))
  assert "RuntimeError: out of memory" in res.error and not res.skipped and not res.correct
  bad = dataclasses.replace(_item(arr), image=b"not an image")
  res = _harness(Scripted("<answer>B</answer>"), tiny_config).run(bad)
  assert res.skipped and "does not decode" in res.error and res.turns == 0


def test_box_outside_the_image_is_clipped(arr, tiny_config):
  # Reversed corners and overhangs: sorted, clipped to 150x100; x1 = ceil(60 * 150 / 140) = 65.
  fn = Scripted(_call([60, 400, -50, -20]), _call([70, 50, 70.5, 50.5]), _call([200, 10, 300, 20]))
  res = _harness(fn, tiny_config, upscale=1.0).run(_item(arr))
  assert res.tool_calls[0] == (0, 0, 65, 100)
  np.testing.assert_array_equal(np.asarray(fn.seen[1][1][1]), arr[:, :65])
  # A point-sized box grows to min_crop (28) about its centre.
  assert res.tool_calls[1] == (61, 31, 89, 59)
  # A box with no overlap ends the loop with an error.
  assert len(res.tool_calls) == 2 and "outside" in res.error


def test_evaluate(arr, tiny_config):
  fn = Scripted(_call([0, 0, 56, 56]), "<answer>B</answer>")
  harness = _harness(fn, tiny_config)
  items = [_item(arr, "a", "B"), _item(arr, "b", "C")]
  report = agentic.evaluate(harness, items)
  # Scripted keeps answering after the second call: item a gets 2 turns, item b a final answer at once.
  assert report["n"] == 2 and report["accuracy"] == 0.5
  assert report["mean_turns"] == 1.5 and report["errors"] == []


def test_model_generate_fn_runs(arr, tiny_config):
  from zwz_jax.generate import sampler
  from zwz_jax.models import registry
  model = registry.from_config(tiny_config, seed=0)
  tok = processor.load_tokenizer("", tiny_config)
  fn = agentic.model_generate_fn(model, tok, tiny_config, sampler.SamplingConfig(max_new_tokens=4))
  assert fn.view_size(W, H) == (140, 112)
  conv = agentic.Conversation().add("user", Image.fromarray(arr), "What is it?")
  conv.add("assistant", _call([0, 0, 56, 56])).add("tool", Image.fromarray(arr[:40, :60]))
  assert isinstance(fn(conv), str)

  def forced(c):  # a random model never calls the tool: generate for real, then replace the first turn
    text = fn(c)
    return _call([28, 28, 84, 70]) if c.num_tool_turns == 0 else text
  res = agentic.AgenticHarness(forced, view_size=fn.view_size, max_turns=1).run(_item(arr))
  assert res.turns == 2 and res.tool_calls == [(30, 25, 90, 63)] and isinstance(res.prediction, str)


def test_evaluate_resumes_from_its_log(arr, tiny_config, tmp_path):
  fn = Scripted("<answer>B</answer>")
  harness = _harness(fn, tiny_config)
  first = agentic.evaluate(harness, [_item(arr, "a", "B"), _item(arr, "b", "C")], out_dir=str(tmp_path))
  with open(tmp_path / agentic.AGENTIC, "a") as f:
    f.write('{"id": "torn')  # a write cut by a kill
  # A re-run runs only the item not in the log, and the summary covers all three.
  items = [_item(arr, "a", "B"), _item(arr, "b", "C"), _item(arr, "c", "B")]
  again = agentic.evaluate(harness, items, out_dir=str(tmp_path))
  assert len(fn.seen) == 3
  assert first["accuracy"] == 0.5 and again["n"] == 3 and again["accuracy"] == pytest.approx(2 / 3)
  assert [r["id"] for r in again["results"]] == ["a", "b", "c"]
  saved = agentic.read_results(str(tmp_path))
  assert sorted(saved) == ["a", "b", "c"] and agentic.summarize(saved.values()) == {
      k: v for k, v in again.items() if k != "results"}
