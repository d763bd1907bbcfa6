"""Data generation with real teachers, as in the paper: strong VLMs served behind OpenAI-compatible
endpoints (e.g. vLLM) name the objects, SAM3 (a local checkpoint) boxes them, two answer teachers x 4
samples are grouped by meaning before the 6-of-8 vote, and the student's difficulty filter.

  export ZWZ_TEACHER_URL=http://host-a:8000/v1 ZWZ_TEACHER2_URL=http://host-b:8000/v1
  python launch/gen_data.py --config=configs/datagen_qwen.py --config.pool.path=/data/images \
      --config.out_dir=/data/zwz_records --config.teachers.student.path=/models/Qwen2.5-VL-7B-Instruct \
      --config.detector.path=/models/sam3 \
      --shard_index=$RANK --num_shards=$WORLD_SIZE
  python launch/gen_data.py --config=configs/datagen_qwen.py ... --merge --num_shards=$WORLD_SIZE
"""
import ml_collections

from configs import datagen_tiny


def get_config():
  c = datagen_tiny.get_config()
  c.out_dir = "out/datagen_qwen"
  c.pool.path = ""  # required: a folder, a file list or parquet (pool.kind)
  c.pool.name = "pool"
  c.pool.min_side = 512
  c.pool.min_pixels = 1024 * 1024  # high-resolution images: micro regions exist
  c.scenes.num_images = 0

  c.teachers = ml_collections.ConfigDict()
  # API keys come from the environment variable named by api_key_env and are never logged.
  c.teachers.qwen3 = ml_collections.ConfigDict(dict(
      backend="openai", name="qwen3-vl-235b", url="", url_env="ZWZ_TEACHER_URL",
      api_key_env="OPENAI_API_KEY", model="Qwen/Qwen3-VL-235B-A22B-Instruct", concurrency=32,
      max_retries=5, timeout_s=180.0, backoff_s=2.0))
  c.teachers.qwen25 = ml_collections.ConfigDict(dict(
      backend="openai", name="qwen2.5-vl-72b", url="", url_env="ZWZ_TEACHER2_URL",
      api_key_env="OPENAI_API_KEY", model="Qwen/Qwen2.5-VL-72B-Instruct", concurrency=32,
      max_retries=5, timeout_s=180.0, backoff_s=2.0))
  # The student for the difficulty filter, run locally with transformers.
  c.teachers.student = ml_collections.ConfigDict(dict(
      backend="hf", name="student", path="", device="cuda", device_map="", dtype="bfloat16", batch_size=16))

  # As the authors: the teacher names the objects that appear once and SAM3 boxes each (>= 0.75).
  c.propose.teacher, c.propose.detector = "qwen3", "sam3"
  c.detector.path = ""  # required: a local SAM3 folder (e.g. `hf download facebook/sam3 --local-dir DIR`)
  c.detector.device, c.detector.dtype = "cuda", "bfloat16"
  c.propose.box_format = "qwen3"  # Qwen3-VL answers boxes in 0-1000 normalised coordinates
  c.questions.teacher = "qwen3"
  c.check.teacher = "qwen3"
  c.answers.teachers = ("qwen3", "qwen25")  # 2 teachers x 4 samples
  c.answers.grouper, c.answers.grouper_teacher = "llm", "qwen3"  # the 8 answers grouped by meaning
  c.mc.teacher = "qwen3"
  c.difficulty.enabled = True
  c.difficulty.student = "student"
  c.write.images_per_shard = 256
  c.write.images_in_flight = 16
  return c
