"""The tiny student as `make demo` trains and evaluates it (launch/demo.py).

configs/tiny.py at twice the image budget (a 448x336 demo scene is seen at 364x280, 130 merged
tokens, so a 24 px object spans about two patches), buckets for both the cut-out regions of the
perception stage and the full scenes, and room for open answers (the tiny tokenizer spells
"diamond" in six tokens).
"""
from configs import _eval, tiny


def get_config():
  c = tiny.get_config()
  c.processor.max_pixels = 28 * 28 * 128
  c.data.buckets = ((96, 64), (128, 256), (256, 576))
  c.data.train = ("out/demo/data/train",)
  c.grpo.max_new_tokens = 8
  _eval.add_eval(c, benchmarks="out/demo/data/test", batch_size=8, max_new_tokens=8)
  c.eval.grounding = "overlay"  # the held-out records' questions are about "the red box"
  return c
