"""`build_teacher(cfg)`: one teacher config -> a `Teacher`, dispatching on `cfg.backend`;
`build_teachers(cfg)`: every teacher a datagen config uses.

Backends are imported on first use, so the openai and scene teachers never pull in torch.
"""
from __future__ import annotations

from data_gen.teachers.base import Teacher

BACKENDS = ("hf", "openai", "scene")


def build_teacher(cfg) -> Teacher:
  """`cfg`: an ml_collections ConfigDict or a dict; keys other than `backend` go to the backend."""
  backend = cfg.get("backend", None)
  if backend == "hf":
    from data_gen.teachers.hf import HFTeacher  # pylint: disable=import-outside-toplevel
    return HFTeacher.from_config(cfg)
  if backend == "openai":
    from data_gen.teachers.openai import OpenAITeacher  # pylint: disable=import-outside-toplevel
    return OpenAITeacher.from_config(cfg)
  if backend == "scene":
    from data_gen.teachers.scene import SceneTeacher  # pylint: disable=import-outside-toplevel
    return SceneTeacher.from_config(cfg)
  name = cfg.get("name", None)
  where = f"teacher {name!r}: " if name else ""
  raise ValueError(f"{where}config key 'backend' is {backend!r}; expected one of {BACKENDS}")


def build_teachers(cfg) -> dict[str, Teacher]:
  """The teachers the datagen config's stages name, built; raises ValueError naming any stage's
  teacher that `teachers` does not define."""
  used = {cfg.propose.teacher, cfg.questions.teacher, cfg.check.teacher, cfg.mc.teacher, *cfg.answers.teachers}
  if cfg.difficulty.enabled:
    used.add(cfg.difficulty.student)
  unknown = sorted(used - set(cfg.teachers))
  if unknown:
    raise ValueError(f"config refers to teachers {unknown} that are not defined under teachers "
                     f"(defined: {sorted(cfg.teachers)})")
  return {name: build_teacher(cfg.teachers[name]) for name in sorted(used)}
