"""The authors' evaluation protocol (configs/eval_paper.py) on the tiny student, for tests on CPU:
their system prompt, the benchmark's own query and their sampling, at the tiny student's image size
and a short token budget."""
from configs import _eval, tiny


def get_config():
  c = tiny.get_config()
  pixels = c.processor.min_pixels, c.processor.max_pixels
  c = _eval.add_paper_protocol(c, batch_size=4)
  c.processor.min_pixels, c.processor.max_pixels = pixels
  c.eval.max_new_tokens = 8
  return c
