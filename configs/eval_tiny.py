"""Dual-view evaluation of the tiny student on CPU (tests and `make demo`)."""
from configs import _eval, tiny


def get_config():
  return _eval.add_eval(tiny.get_config(), batch_size=4, max_new_tokens=4)
