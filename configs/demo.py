"""`make demo`: the whole method on one CPU, about 7 minutes on 2 cores (launch/demo.py).

  python launch/demo.py [--config=configs/demo.py] [--config.grpo.steps=20] [--config.out_dir=...]
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.out_dir = "out/demo"
  c.datagen = "configs/datagen_demo.py"  # scenes + the scene teacher
  c.student = "configs/tiny_demo.py"  # student, training and eval settings of every stage
  c.train_images = 600
  c.test_images = 60
  c.test_seed = 1000  # held-out scenes: another seed, so no scene is shared with training
  c.eval_items = 250  # held-out items evaluated (both views)
  # Stage 0, perception: the from-scratch student learns to read objects on the teacher's cut-out
  # regions (data.view=regional). It stands in for the pretrained VLM the paper starts from: it can
  # answer on the zoomed-in view but not on the full image, the zooming gap the method closes.
  c.perception = ml_collections.ConfigDict(dict(steps=400, learning_rate=3e-3))
  # Region-to-image distillation: the same records, on the full image with the red box.
  c.distill = ml_collections.ConfigDict(dict(steps=350, learning_rate=7e-4))
  # Control: the same distillation without the box (data.grounding=none): what the grounding adds.
  c.control = True
  # Optional GRPO from the distilled student (steps > 0); the RL settings of configs/tiny_grpo.py.
  c.grpo = ml_collections.ConfigDict(dict(steps=0, learning_rate=1e-4, num_generations=4))
  return c
