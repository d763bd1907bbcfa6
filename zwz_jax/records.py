"""THE data contract between data generation (PyTorch side) and training/eval (JAX side).

A record is one distilled question about a region of a full image, serialized with msgpack (never
pickle) as one ArrayRecord entry. The full image is stored at its original resolution *without*
the red box: how the region is shown to the student (`overlay` red box, `coords` in the text, or
`none`) is chosen at train time, so the paper's grounding ablation is one flag. The rendering of
each mode lives here, the one place both sides use.

Imports neither jax nor torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from typing import Any, Sequence

import msgpack
from PIL import Image, ImageDraw

SCHEMA_VERSION = 1
DIMENSIONS = ("counting", "ocr", "colour", "structure", "material", "identification")
GROUNDING_MODES = ("overlay", "coords", "none")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"

# Wording and geometry follow the authors' data synthesis: box grown by 5% of its size per side,
# drawn in red, 5 px wide; the question gets the focus instruction appended.
BOX_EXPAND = 0.05
BOX_WIDTH = 5
BOX_COLOR = (255, 0, 0)
FOCUS_OVERLAY = "Only focus on the objects inside the red bounding box in the image to answer this question."
FOCUS_COORDS = "Only focus on the objects inside the bounding box {box} ({unit}) to answer this question."
# How `coords` boxes are expressed: Qwen2.5-VL reads pixels of its resized input, Qwen3-VL a 0-1000 scale.
COORD_UNITS = {"pixel": "pixel coordinates x0, y0, x1, y1 of the image",
               "relative": "coordinates x0, y0, x1, y1 of the image on a 0-1000 scale"}
MC_INSTRUCTION = "Answer with the option's letter from the given choices."
OPTION_LETTERS = "ABCDEFGHIJ"


class RecordError(ValueError):
  """A record that does not satisfy the contract; the message names the record and the field."""


@dataclasses.dataclass(frozen=True)
class Record:
  id: str
  image: bytes  # encoded FULL image (original resolution, no overlay)
  image_format: str  # "png", "jpeg", ...
  width: int
  height: int
  bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the full image
  question: str
  options: tuple[str, ...]  # multiple-choice options; empty for open answers
  answer: str  # option letter when options are given, else short text
  dimension: str  # one of DIMENSIONS
  source: dict  # {"pool": ..., "path": ...}
  teacher: dict  # {"names": [...], "votes": {...}, "agreement": float, ...}
  split: str = "train"
  schema_version: int = SCHEMA_VERSION

  def validate(self) -> "Record":
    def fail(field, why):
      raise RecordError(f"record {self.id!r}: field {field!r} {why}")

    if not isinstance(self.id, str) or not self.id:
      fail("id", "must be a non-empty string")
    if not isinstance(self.image, (bytes, bytearray)) or not self.image:
      fail("image", "must be non-empty encoded image bytes")
    for f in ("width", "height"):
      v = getattr(self, f)
      if not isinstance(v, int) or v <= 0:
        fail(f, f"must be a positive int, got {v!r}")
    if len(self.bbox) != 4 or not all(isinstance(c, (int, float)) for c in self.bbox):
      fail("bbox", f"must be 4 numbers [x0, y0, x1, y1], got {self.bbox!r}")
    x0, y0, x1, y1 = self.bbox
    if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
      fail("bbox", f"{list(self.bbox)} is empty or outside the {self.width}x{self.height} image")
    if not isinstance(self.question, str) or not self.question.strip():
      fail("question", "must be non-empty text")
    if not all(isinstance(o, str) and o for o in self.options):
      fail("options", "must be non-empty strings")
    if len(self.options) > len(OPTION_LETTERS):
      fail("options", f"has {len(self.options)} entries, at most {len(OPTION_LETTERS)}")
    if self.options and self.answer not in OPTION_LETTERS[:len(self.options)]:
      fail("answer", f"{self.answer!r} is not one of the option letters {OPTION_LETTERS[:len(self.options)]}")
    if not self.options and (not isinstance(self.answer, str) or not self.answer.strip()):
      fail("answer", "must be non-empty text")
    if self.dimension not in DIMENSIONS:
      fail("dimension", f"{self.dimension!r} is not one of {DIMENSIONS}")
    if self.split not in SPLITS:
      fail("split", f"{self.split!r} is not one of {SPLITS}")
    if self.schema_version != SCHEMA_VERSION:
      fail("schema_version", f"{self.schema_version} is not supported (this code reads {SCHEMA_VERSION})")
    return self

  @property
  def answer_text(self) -> str:
    """The answer as words (the option's text for multiple choice)."""
    return self.options[OPTION_LETTERS.index(self.answer)] if self.options else self.answer


_FIELDS = {f.name: f for f in dataclasses.fields(Record)}
_REQUIRED = [n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING]


def make_id(source: dict, bbox: Sequence[float], question: str) -> str:
  """Stable id of (source image, region, question): same inputs, same id, on any machine."""
  key = json.dumps([source.get("pool", ""), source.get("path", ""), [round(float(c), 2) for c in bbox],
                    question.strip()], ensure_ascii=False)
  return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def encode(record: Record) -> bytes:
  record.validate()
  d = dataclasses.asdict(record)
  d["bbox"] = [float(c) for c in record.bbox]
  d["options"] = list(record.options)
  d["image"] = bytes(record.image)
  return msgpack.packb(d, use_bin_type=True)


def decode(data: bytes, where: str = "") -> Record:
  """Parses and validates one serialized record; `where` (file:index) goes into error messages."""
  at = f" ({where})" if where else ""
  try:
    d = msgpack.unpackb(data, raw=False)
  except Exception as e:  # msgpack raises several unrelated types for garbage
    raise RecordError(f"undecodable record{at}: {type(e).__name__}: {e}") from None
  if not isinstance(d, dict):
    raise RecordError(f"record{at} is a {type(d).__name__}, not a map")
  rid = d.get("id", "?")
  missing = [k for k in _REQUIRED if k not in d]
  if missing:
    raise RecordError(f"record {rid!r}{at}: missing field(s) {missing}")
  unknown = sorted(set(d) - set(_FIELDS))
  if unknown:
    raise RecordError(f"record {rid!r}{at}: unknown field(s) {unknown}")
  try:
    d["bbox"] = tuple(d["bbox"])
    d["options"] = tuple(d["options"])
    return Record(**d).validate()
  except RecordError as e:
    raise RecordError(f"{e}{at}") from None
  except TypeError as e:
    raise RecordError(f"record {rid!r}{at}: {e}") from None


def to_rgb(image: Image.Image) -> Image.Image:
  """RGB copy of `image`; transparency is composited onto white, as transformers does."""
  has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
  if not has_alpha:
    return image.convert("RGB")
  rgba = image.convert("RGBA")
  background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  return Image.alpha_composite(background, rgba).convert("RGB")


def decode_image(data: bytes | None, what: str = "image") -> Image.Image:
  """Encoded image bytes -> RGB (`to_rgb`); a ValueError saying why not, naming `what`.

  Every reader of stored images (records, benchmarks, the agentic harness) decodes through here;
  data_gen's pool checks raw images more strictly (truncation, size limits, EXIF) before they are stored.
  """
  if not data:
    raise ValueError(f"no {what}")
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
  except Exception as e:  # PIL raises many types for bad bytes
    raise ValueError(f"{what} does not decode ({type(e).__name__}: {e})") from None
  return to_rgb(img)


def open_image(record: Record) -> Image.Image:
  """The full image as RGB; a corrupt image raises RecordError naming the record."""
  try:
    img = decode_image(record.image)
  except ValueError as e:
    raise RecordError(f"record {record.id!r}: {e}") from None
  if img.size != (record.width, record.height):
    raise RecordError(f"record {record.id!r}: image is {img.size[0]}x{img.size[1]}, "
                      f"record says {record.width}x{record.height}")
  return img


def encode_image(image: Image.Image, fmt: str = "png") -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt.upper())
  return buf.getvalue()


def expand_box(bbox: Sequence[float], width: int, height: int, frac: float = BOX_EXPAND):
  """Grows the box by `frac` of its size on each side, clipped to the image."""
  x0, y0, x1, y1 = bbox
  dx, dy = (x1 - x0) * frac, (y1 - y0) * frac
  return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(width), x1 + dx), min(float(height), y1 + dy))


def draw_box(image: Image.Image, bbox: Sequence[float], *, expand: float = BOX_EXPAND,
             width: int = BOX_WIDTH, color=BOX_COLOR) -> Image.Image:
  """A copy of `image` with the (expanded) box outlined in red."""
  out = image.convert("RGB").copy()
  box = expand_box(bbox, out.width, out.height, expand)
  ImageDraw.Draw(out).rectangle(box, outline=color, width=width)
  return out


def region_box(bbox: Sequence[float], size: tuple[int, int], context_frac: float = 0.0) -> tuple[int, int, int, int]:
  """The whole pixels covering `bbox` grown by `context_frac` of its size per side: snapped outward,
  clipped to the image of `size` (width, height), never empty."""
  x0, y0, x1, y1 = bbox
  dx, dy = (x1 - x0) * context_frac, (y1 - y0) * context_frac
  w, h = size
  cx0 = min(max(math.floor(x0 - dx), 0), w - 1)
  cy0 = min(max(math.floor(y0 - dy), 0), h - 1)
  return cx0, cy0, max(min(math.ceil(x1 + dx), w), cx0 + 1), max(min(math.ceil(y1 + dy), h), cy0 + 1)


def zoom(image: Image.Image, box: tuple[int, int, int, int], upscale: float = 1.0) -> Image.Image:
  """The pixels inside `box` (whole pixels), enlarged by `upscale` (bicubic): a zoomed-in view."""
  crop = image.crop(box)
  if upscale != 1.0:
    crop = crop.resize((max(1, round(crop.width * upscale)), max(1, round(crop.height * upscale))),
                       Image.Resampling.BICUBIC)
  return crop


def crop_region(image: Image.Image, bbox: Sequence[float]) -> Image.Image:
  """The record's region cut from its full image: the regional view."""
  return zoom(image, region_box(bbox, image.size))


def format_question(question: str, options: Sequence[str] = ()) -> str:
  if not options:
    return question
  lines = "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))
  return f"{question}\n\n{lines}\n\n{MC_INSTRUCTION}"


def ground(record: Record, mode: str, image: Image.Image | None = None,
           coord_size: tuple[int, int] | None = None, coord_unit: str = "pixel") -> tuple[Image.Image, str]:
  """(image, prompt text) the student sees for `record` under a grounding mode.

  coord_size: for `coords`, the (width, height) the box coordinates are expressed in (Qwen2.5-VL
  reads absolute coordinates of its resized input, Qwen3-VL (1000, 1000)); default the original
  image size. coord_unit: a key of COORD_UNITS, named in the prompt.
  `Processor.box_frame` gives both for the student's family.
  """
  image = open_image(record) if image is None else image
  return ground_view(image, format_question(record.question, record.options), record.bbox, mode,
                     coord_size=coord_size, coord_unit=coord_unit, size=(record.width, record.height))


def ground_view(image: Image.Image, text: str, bbox: Sequence[float], mode: str,
                coord_size: tuple[int, int] | None = None, coord_unit: str = "pixel",
                size: tuple[int, int] | None = None) -> tuple[Image.Image, str]:
  """`ground` for any full image and prompt: bbox in pixels of `size` (default the image's)."""
  if mode not in GROUNDING_MODES:
    raise ValueError(f"grounding mode {mode!r} is not one of {GROUNDING_MODES}")
  if mode == "overlay":
    return draw_box(image, bbox), f"{text}\n\n{FOCUS_OVERLAY}"
  if mode == "coords":
    size = size or image.size
    w, h = coord_size or size
    sx, sy = w / size[0], h / size[1]
    x0, y0, x1, y1 = bbox
    box = [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)]
    return image, f"{text}\n\n{FOCUS_COORDS.format(box=box, unit=COORD_UNITS[coord_unit])}"
  return image, text


# ----------------------------------------------------------------------------------------------
# Manifest: written beside the shards, lists shards and counts and the generating config.
# ----------------------------------------------------------------------------------------------


def write_manifest(directory: str, manifest: dict[str, Any]) -> str:
  """Atomically writes `manifest.json` (keys: shards [{path, num_records}], num_records, ...)."""
  manifest = {"schema_version": SCHEMA_VERSION, **manifest}
  path = os.path.join(directory, MANIFEST)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def read_manifest(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"no {MANIFEST} in {directory}: not a record directory (run launch/gen_data.py)") from None
  except json.JSONDecodeError as e:
    raise RecordError(f"{path}: not valid JSON ({e})") from None
  if manifest.get("schema_version") != SCHEMA_VERSION:
    raise RecordError(f"{path}: schema_version {manifest.get('schema_version')} is not {SCHEMA_VERSION}")
  return manifest


def shard_paths(directory: str) -> list[str]:
  """Absolute paths of the shards a manifest lists, in order."""
  return [os.path.join(directory, s["path"]) for s in read_manifest(directory)["shards"]]


def read_shard(path: str) -> list[bytes]:
  """The serialized records of one ArrayRecord shard; a shard that cannot be read is a ValueError
  naming it."""
  from array_record.python import array_record_module  # only the record readers need it
  try:
    reader = array_record_module.ArrayRecordReader(path)
    raws = reader.read_all()
    reader.close()
  except Exception as e:
    raise ValueError(f"{path}: cannot be read as an ArrayRecord shard ({type(e).__name__}: {e})") from None
  return raws
