"""SAM3, OWLv2 and Grounding DINO from local transformers checkpoints (`propose.detector`).

Per image, the names go through the model in batches of `batch_size` (SAM3 encodes the image once
for all of them); each name keeps its best query: the box and score that transformers' own
post-processing would rank first. Boxes come back as fractions of the image and are scaled to
full-image pixels here, so a detector's resize (SAM3's square 1008x1008, OWLv2's padding to a
square, Grounding DINO's aspect-kept resize) never leaks into the records.

Keys of `detector`: path (a local checkpoint directory; nothing is downloaded), device, dtype,
batch_size, threshold (a best score below it means "not found").
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np
from PIL import Image
import torch
import transformers
from transformers.image_transforms import center_to_corners_format

from data_gen.boxes import Box
from data_gen.detectors import Detector, DetectorError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFDetector(Detector):
  """One transformers detection model; subclasses say how a batch of names is scored."""

  kind = ""
  model_types: tuple[str, ...] = ()

  def __init__(self, model, tokenizer, image_processor=None, *, batch_size: int = 16, threshold: float = 0.3,
               name: str = ""):
    if batch_size < 1:
      raise ValueError(f"detector {self.kind}: batch_size must be >= 1, got {batch_size}")
    self.model = model.eval()
    self.tokenizer, self.image_processor = tokenizer, image_processor
    self.batch_size, self.threshold = int(batch_size), float(threshold)
    self.name = name or self.kind
    param = next(model.parameters())
    self.device, self.dtype = param.device, param.dtype
    self._lock = threading.Lock()  # one model on one accelerator: pipeline threads take turns

  def detect(self, image, names, context):
    if not names:
      return []
    try:
      with self._lock, torch.inference_mode():
        pixels = self._pixels(image)
        scores, rel = zip(*(self._best(image, pixels, list(names[i:i + self.batch_size]))
                            for i in range(0, len(names), self.batch_size)))
    except (ValueError, TypeError, RuntimeError) as e:
      raise DetectorError(f"detector {self.name!r} failed on image {context.get('image_key')!r} "
                          f"(size {image.size}): {e}") from e
    scores, rel = torch.cat(scores).float().cpu().numpy(), torch.cat(rel).float().cpu().numpy()
    w, h = image.size
    return [Box(float(b[0] * w), float(b[1] * h), float(b[2] * w), float(b[3] * h), n, float(s))
            if s >= self.threshold else None for n, s, b in zip(names, scores, rel)]

  def _pixels(self, image: Image.Image) -> dict:
    """The model's image inputs (one image)."""
    out = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")
    return {k: v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device)
            for k, v in out.items() if k in ("pixel_values", "pixel_mask")}

  def _text(self, texts: list[str], **kwargs) -> dict:
    enc = self.tokenizer(texts, return_tensors="pt", truncation=True, **kwargs)
    return {k: v.to(self.device) for k, v in enc.items()}

  def _best(self, image, pixels, names) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (k,), boxes (k, 4) as x0, y0, x1, y1 fractions of the image): each name's best query."""
    raise NotImplementedError

  def close(self) -> None:
    on_cuda = self.device.type == "cuda"
    self.model = None
    if on_cuda:
      torch.cuda.empty_cache()


class Owlv2Detector(HFDetector):
  """All names are text queries of one image; boxes are fractions of the image padded to a square."""

  kind, model_types = "owlv2", ("owlv2",)

  def _best(self, image, pixels, names):
    length = self.model.config.text_config.max_position_embeddings
    out = self.model(**self._text(names, padding="max_length", max_length=length), **pixels)
    scores, query = out.logits[0].sigmoid().max(0)  # (queries, names) -> per name
    boxes = center_to_corners_format(out.pred_boxes[0, query])
    w, h = image.size
    side = max(w, h)  # the processor pads bottom / right to a square before resizing
    return scores, boxes * boxes.new_tensor([side / w, side / h, side / w, side / h])


class GroundingDinoDetector(HFDetector):
  """One 'name.' prompt per row over the same image; a query's score is its best text token."""

  kind, model_types = "grounding_dino", ("grounding-dino",)

  def _best(self, image, pixels, names):
    texts = [n.strip().lower().rstrip(".") + "." for n in names]
    k = len(names)
    batch = {key: v.expand(k, *v.shape[1:]) for key, v in pixels.items()}
    out = self.model(**self._text(texts, padding="longest", max_length=self.model.config.max_text_len), **batch)
    scores, query = out.logits.sigmoid().max(-1)[0].max(1)  # (k, queries, tokens) -> (k,)
    return scores, center_to_corners_format(out.pred_boxes[torch.arange(k), query])


class Sam3Detector(HFDetector):
  """The image is encoded once; each name is a text prompt. Score = query x presence probability."""

  kind, model_types = "sam3", ("sam3", "sam3_video")  # the hub's facebook/sam3 is a sam3_video folder

  def __init__(self, model, tokenizer, image_processor=None, *, preprocess: dict | None = None, **kwargs):
    super().__init__(model, tokenizer, image_processor, **kwargs)
    self.preprocess = {**_SAM3_PREPROCESS, **(preprocess or {})}

  def _pixels(self, image):
    # Sam3ImageProcessor needs torchvision; its steps are a plain resize, rescale and normalise.
    p = self.preprocess
    size = (p["size"]["width"], p["size"]["height"])
    x = np.asarray(image.convert("RGB").resize(size, resample=p["resample"]), np.float32) * p["rescale_factor"]
    x = (x - np.asarray(p["image_mean"], np.float32)) / np.asarray(p["image_std"], np.float32)
    pixels = torch.from_numpy(x.transpose(2, 0, 1)[None]).to(self.device, self.dtype)
    return {"vision_embeds": self.model.get_vision_features(pixel_values=pixels)}

  def _best(self, image, pixels, names):
    k = len(names)
    vision = pixels["vision_embeds"]
    expand = lambda v: v.expand(k, *v.shape[1:]) if torch.is_tensor(v) else tuple(map(expand, v))
    vision = type(vision)(**{key: expand(v) for key, v in vision.items() if v is not None})
    length = min(32, self.model.config.text_config.max_position_embeddings)  # Sam3Processor's padding
    out = self.model(vision_embeds=vision, **self._text(names, padding="max_length", max_length=length))
    probs = out.pred_logits.sigmoid()
    if out.presence_logits is not None:
      probs = probs * out.presence_logits.sigmoid()
    scores, query = probs.max(1)
    return scores, out.pred_boxes[torch.arange(k), query]  # already x0, y0, x1, y1


_SAM3_PREPROCESS = {"size": {"height": 1008, "width": 1008}, "resample": 2, "rescale_factor": 1 / 255,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
_CLASSES = {"sam3": (Sam3Detector, "Sam3Model"), "owlv2": (Owlv2Detector, "Owlv2ForObjectDetection"),
            "grounding_dino": (GroundingDinoDetector, "GroundingDinoForObjectDetection")}


def _sam3_preprocess(path: str) -> dict:
  """The image-processor settings saved with a SAM3 checkpoint (preprocessor_config.json, or the
  image_processor entry of processor_config.json)."""
  for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
    file = os.path.join(path, name)
    if os.path.isfile(file):
      with open(file, encoding="utf-8") as f:
        cfg = json.load(f)
      cfg = cfg.get(key, {}) if key else cfg
      if cfg:
        return {k: cfg[k] for k in _SAM3_PREPROCESS if k in cfg}
  return {}


def from_config(kind: str, cfg) -> HFDetector:
  """The `kind` detector from the `detector` config section (configs/datagen_tiny.py)."""
  path = cfg.path
  if not path or not os.path.isdir(path):
    raise ValueError(f"config propose.detector={kind!r} needs detector.path, a local checkpoint directory; "
                     f"got {path!r}")
  dtype = cfg.dtype
  if dtype not in _DTYPES:
    raise ValueError(f"config detector.dtype={dtype!r} is not one of {sorted(_DTYPES)}")
  cls, model_cls = _CLASSES[kind]
  model_type = transformers.AutoConfig.from_pretrained(path).model_type
  if model_type not in cls.model_types:
    raise ValueError(f"config detector.path={path!r} holds a {model_type!r} checkpoint, not {kind}")
  model = getattr(transformers, model_cls).from_pretrained(path, dtype=_DTYPES[dtype]).to(cfg.device)
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  kwargs = dict(batch_size=cfg.batch_size, threshold=cfg.threshold, name=f"{kind}:{os.path.basename(path)}")
  if kind == "sam3":
    return cls(model, tokenizer, preprocess=_sam3_preprocess(path), **kwargs)
  return cls(model, tokenizer, transformers.AutoImageProcessor.from_pretrained(path), **kwargs)
