"""Latency per item: one-pass answering vs a thinking-with-images agent that zooms K times, same model.

  python -m bench.single_vs_agentic [--items=3] [--answer_tokens=16] [--turn_tokens=16,128]

For each config (tiny, small; the model overrides of bench/forward.py) and a few generated items,
the single pass is one greedy prompt (image + question, `answer_tokens` new tokens). The agent is
`zwz_jax.eval.agentic.AgenticHarness` with the same model and sampler: a random model never calls
the tool, so its first K outputs are replaced by a zoom call on the item's box; each of those turns
still pays for its real generation, and every crop is encoded and prefilled with the growing
conversation. K=0 is the agent's prompt (the tool description) without zooming, separating the cost
of the longer prompt from that of the extra turns. Per-turn budgets: the single pass's own (only the
longer prompt, extra turns and images cost more), and a longer one (a sentence of reasoning plus the
call, still far below what a real agent writes per turn). Times
exclude compilation: every program is compiled in a warm-up pass over the same items first.
Paper anchor: single pass is about 7-25x faster than thinking-with-images agents.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax

from bench import timing
from bench.forward import CASES
from tests.record_fixtures import write_records
from zwz_jax import records
from zwz_jax.config import load_config
from zwz_jax.data import processor
from zwz_jax.eval import agentic, benchmarks
from zwz_jax.generate import sampler
from zwz_jax.models import registry

KS = (0, 1, 2)  # K=0: the agent's prompt and budget without zooming, to separate the two costs


def _tool_call(box) -> str:
  args = {"bbox_2d": [int(round(c)) for c in box]}
  return f'<tool_call>\n{json.dumps({"name": agentic.TOOL_NAME, "arguments": args})}\n</tool_call>'


def forced(generate_fn, item, k: int):
  """generate_fn whose first k outputs are replaced by a zoom call on the item's box (model view)."""
  vw, vh = generate_fn.view_size(item.width, item.height)
  x0, y0, x1, y1 = item.bbox
  call = _tool_call((x0 * vw / item.width, y0 * vh / item.height, x1 * vw / item.width, y1 * vh / item.height))

  def fn(conv):
    text = generate_fn(conv)  # paid for even when replaced
    return call if conv.num_tool_turns < k else text
  return fn


def single_latency(fn, items) -> list[float]:
  out = []
  for item in items:
    t0 = time.perf_counter()
    fn(agentic.Conversation().add("user", records.decode_image(item.image), item.prompt))
    out.append(time.perf_counter() - t0)
  return out


def prompt_tokens(fn, item, k) -> list[int]:
  """Prompt length of each turn of the agent on one item (untimed replay)."""
  lengths = []
  inner = forced(fn, item, k)

  def record(conv):
    lengths.append(len(fn.example(conv)["input_ids"]))
    return inner(conv)
  agentic.AgenticHarness(record, view_size=fn.view_size, max_turns=k).run(item)
  return lengths


def agent_latency(fn, items, k) -> list[float]:
  out = []
  for item in items:
    res = agentic.AgenticHarness(forced(fn, item, k), view_size=fn.view_size, max_turns=k).run(item)
    if len(res.tool_calls) != k or res.turns != k + 1:
      raise RuntimeError(f"item {item.id}: expected {k} zooms in {k + 1} turns, got {res}")
    out.append(res.wall_time_s)
  return out


def run_case(name, overrides, items, answer_tokens, turn_tokens, json_path=""):
  config = load_config("configs/tiny.py", overrides)
  model = registry.from_config(config, seed=0)
  tok = processor.load_tokenizer("", config)
  make = lambda n: agentic.model_generate_fn(model, tok, config, sampler.SamplingConfig(max_new_tokens=n))
  single = make(answer_tokens)
  agents = {n: make(n) for n in turn_tokens}
  n_params = sum(x.size for x in jax.tree.leaves(model))
  t0 = time.perf_counter()
  # Warm-up: compiles every shape the timed pass meets (a run with fewer zooms repeats the first turns).
  single_latency(single, items)
  for fn in agents.values():
    agent_latency(fn, items, max(KS))
  warm = time.perf_counter() - t0
  base = statistics.mean(single_latency(single, items))
  conv = agentic.Conversation().add("user", records.decode_image(items[0].image), items[0].prompt)
  print(f"{name:6s} {n_params / 1e6:6.2f}M  {len(items)} items | single pass ({answer_tokens} tokens) "
        f"{base * 1e3:7.1f} ms/item | warm-up with compiles {warm:5.1f} s | prompt tokens of item 0: "
        f"single {len(single.example(conv)['input_ids'])}, agent turns {prompt_tokens(single, items[0], max(KS))}")
  for n, fn in agents.items():
    for k in KS:
      lat = statistics.mean(agent_latency(fn, items, k))
      print(f"       agent K={k} zoom(s), {k + 1} turn(s) x {n:3d} tokens: {lat * 1e3:8.1f} ms/item  "
            f"agentic/single {lat / base:5.2f}x")
      timing.emit(json_path, bench="single_vs_agentic", case=name,
                  what=f"latency per item: agent with {k} zoom(s), {n} tokens/turn",
                  ours=f"single pass {base * 1e3:.0f} ms", reference=f"agent {lat * 1e3:.0f} ms", ratio=lat / base,
                  meaning="agent / single-pass latency (paper: 7-25x)")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--items", type=int, default=3)
  parser.add_argument("--answer_tokens", type=int, default=16)
  parser.add_argument("--turn_tokens", default="16,128", help="comma-separated per-turn budgets of the agent")
  timing.add_json_flag(parser)
  args = parser.parse_args()
  turn_tokens = [int(x) for x in args.turn_tokens.split(",") if x]
  with tempfile.TemporaryDirectory() as d:
    write_records(d, args.items, seed=0, sizes=(320, 480))
    items = benchmarks.from_records(d)
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}; greedy, mean latency per item after warm-up "
        f"(paper: single pass ~7-25x faster than thinking-with-images agents)")
  for name, (overrides, _, _) in CASES.items():
    run_case(name, overrides, items, args.answer_tokens, turn_tokens, args.json)


if __name__ == "__main__":
  main()
