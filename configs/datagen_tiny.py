"""Data generation on CPU, offline: procedural scenes answered by the `scene` oracle teacher.

  python launch/gen_data.py --config=configs/datagen_tiny.py --config.out_dir=out/datagen_tiny

Swap in real teachers by pointing `teachers.*` at an `hf` checkpoint or an `openai`-compatible
server (see configs/datagen_qwen.py) and `pool` at your image folder.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.out_dir = "out/datagen_tiny"
  c.split = "train"

  # The image pool. With scenes.num_images > 0 and an empty path, procedural scenes are generated
  # into <out_dir>/scene_pool first and used as the pool.
  c.pool = ml_collections.ConfigDict(dict(
      kind="folder", path="", name="scenes", image_column="image", key_column="id",
      min_side=224, min_pixels=224 * 224))
  # kinds, num_objects (min, max) and size_fraction (min, max of the image area): data_gen/scenes.py.
  c.scenes = ml_collections.ConfigDict(dict(
      num_images=12, width=1344, height=1008, seed=0, kinds=("shape", "texture", "text", "group", "icon"),
      num_objects=(6, 12), size_fraction=(0.001, 0.02)))

  # Teachers by name; stages refer to them. Backends: scene | hf | openai.
  c.teachers = ml_collections.ConfigDict()
  c.teachers.scene = ml_collections.ConfigDict(dict(
      backend="scene", name="scene", root="", answer_noise=0.1, seed=0, student_accuracy=0.5))

  # detector: where the region boxes come from (data_gen/detectors): "teacher" (its own boxes), or
  # the teacher lists up to max_names objects that appear once and a text-prompted detector finds
  # each: "sam3" | "owlv2" | "grounding_dino" (a local checkpoint at detector.path), "scene" (the
  # oracle), or "package.module:function" (image, names -> a box or None per name).
  c.propose = ml_collections.ConfigDict(dict(
      teacher="scene", box_format="qwen2_5", max_pixels=1280 * 28 * 28, min_score=0.75,
      max_area_frac=0.10, min_side=8, max_regions=6, detector="teacher", max_names=16))
  # The model behind propose.detector: a local directory (nothing is downloaded); a name whose
  # best score is under `threshold` is counted as not found.
  c.detector = ml_collections.ConfigDict(dict(path="", device="cpu", dtype="float32", batch_size=16,
                                              threshold=0.3))
  c.crop = ml_collections.ConfigDict(dict(upscale=2.0))
  c.questions = ml_collections.ConfigDict(dict(teacher="scene", per_crop=3, temperature=0.7))
  c.check = ml_collections.ConfigDict(dict(enabled=True, teacher="scene"))
  # grouper: "rules" (answers equal after normalisation vote together) or "llm" (grouper_teacher also
  # groups them by meaning, as the authors do; data_gen/grouping.py).
  c.answers = ml_collections.ConfigDict(dict(teachers=("scene",), samples=8, temperature=1.0, min_agreement=6,
                                             max_new_tokens=64, grouper="rules", grouper_teacher="scene"))
  # num_options=0: open answers (the consensus answer text) instead of multiple choice.
  c.mc = ml_collections.ConfigDict(dict(num_options=4, teacher="scene", temperature=0.7))
  c.difficulty = ml_collections.ConfigDict(dict(
      enabled=False, student="scene", k=4, drop_if_correct=2, temperature=1.0))

  # images_in_flight: images processed concurrently (threads); >1 pays off with remote (openai)
  # teachers, keep 1 for a local hf teacher that owns the accelerator.
  c.write = ml_collections.ConfigDict(dict(images_per_shard=4, images_in_flight=1))
  return c
