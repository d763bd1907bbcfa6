"""Data for `make demo`: procedural scenes sized so the tiny student can learn the task on a CPU.

Scenes of 448x336 with 2-4 small objects (shapes, icons, groups: colour, structure, identification
and counting questions), answered open-ended (a from-scratch 2-layer student learns to read an object
long before it learns to match option letters). Everything else is configs/datagen_tiny.py.
"""
from configs import datagen_tiny


def get_config():
  c = datagen_tiny.get_config()
  c.out_dir = "out/demo/data/train"
  s = c.scenes
  s.num_images = 600
  s.width, s.height = 448, 336
  s.kinds = ("shape", "icon", "group")
  s.num_objects = (2, 4)
  c.mc.num_options = 0
  return c
