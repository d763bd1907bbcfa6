"""What every student family shares above the layers: the config bases and the vision-language model
(token embeddings with image features written in, one decoder loop for training, prefill and cached
decode, the LM head).

A family (`qwen2_5_vl`, `qwen3_vl`) subclasses `ModelConfig` with its vision and text config
classes and its own checks, and `VisionLanguageModel` with its vision tower (`vision_tower_cls`);
a tower returns the merged image features and any features the decoder's first layers add to the
image tokens (Qwen3-VL's DeepStack).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from zwz_jax.models import attention as attention_lib
from zwz_jax.models.layers import DecoderLayer, KVCache, RMSNorm, dense, mrope_cos_sin, param
from zwz_jax.models.scan import REMAT_POLICIES, run_layers, runs
from zwz_jax.sharding import constrain


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionTowerConfig:
  """The vision fields every family has; each family's config adds its own (keyword-only)."""
  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  out_hidden_size: int
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  rope_theta: float = 10000.0
  # Images (video frames count one each) one example may hold: bounds the runs cuDNN's packed full
  # attention takes (its softmax statistics grow with it); zwz_jax.data.batch refuses more.
  max_images: int = 8

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2

  # Each family defines `window_size` (pixels; Qwen3-VL: one merged patch, i.e. no windows).
  @property
  def window_merged(self) -> int:
    """Side of an attention window in merged tokens."""
    return self.window_size // self.patch_size // self.spatial_merge_size

  @property
  def window_patches(self) -> int:
    """Patches per attention window (square); the batch layout pads every window to this."""
    return (self.window_merged * self.spatial_merge_size) ** 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
  """The text-decoder fields every family has; each family's config adds its own (keyword-only)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mrope_section: tuple[int, ...]
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 128000


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionTowerConfig
  text: DecoderConfig
  image_token_id: int
  video_token_id: int
  vision_start_token_id: int
  vision_end_token_id: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"  # activation rematerialisation of each block: none | full | dots | dots_no_batch
  attention: str = "auto"  # attention backend, see zwz_jax.models.attention: auto | dense | chunked | splash | cudnn
  attention_block: int = 512  # query / key block of the chunked and splash backends
  scan_layers: bool = True  # one lax.scan per run of identical layers (zwz_jax.models.scan)
  vision_cls: ClassVar[type]  # the family's vision and text config classes
  text_cls: ClassVar[type]

  @classmethod
  def from_config(cls, model_cfg) -> "ModelConfig":
    """From the `config.model` ConfigDict (see configs/tiny.py); sequences become tuples."""
    tuples = lambda d: {k: tuple(x) if isinstance(x, (list, tuple)) else x for k, x in dict(d).items()}
    cfg = cls(
        vision=cls.vision_cls(**tuples(model_cfg.vision)), text=cls.text_cls(**tuples(model_cfg.text)),
        image_token_id=model_cfg.image_token_id, video_token_id=model_cfg.video_token_id,
        vision_start_token_id=model_cfg.vision_start_token_id,
        vision_end_token_id=model_cfg.vision_end_token_id,
        dtype=jnp.dtype(model_cfg.dtype), param_dtype=jnp.dtype(model_cfg.param_dtype),
        remat=model_cfg.get("remat", "none"), attention=model_cfg.get("attention", "auto"),
        attention_block=int(model_cfg.get("attention_block", 512)),
        scan_layers=bool(model_cfg.get("scan_layers", True)))
    cfg.validate()
    return cfg

  @property
  def attention_op(self) -> attention_lib.Attention:
    return attention_lib.Attention(self.attention, self.attention_block)

  def validate(self) -> None:
    v, t = self.vision, self.text
    checks = [
        (v.hidden_size % v.num_heads == 0, "vision.hidden_size must be divisible by vision.num_heads"),
        (v.head_dim % 4 == 0, "vision head_dim must be divisible by 4 (2D rotary)"),
        (v.max_images >= 1, f"vision.max_images must be at least 1, got {v.max_images}"),
        (t.num_heads % t.num_kv_heads == 0, "text.num_heads must be divisible by text.num_kv_heads"),
        (len(t.mrope_section) == 3 and 2 * sum(t.mrope_section) == t.head_dim,
         f"text.mrope_section {t.mrope_section} must be 3 sections summing to head_dim/2 = {t.head_dim // 2}"),
        (self.remat in REMAT_POLICIES, f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)}"),
        (self.attention in attention_lib.BACKENDS,
         f"attention {self.attention!r} is not one of {list(attention_lib.BACKENDS)}"),
        (self.attention_block > 0, f"attention_block must be positive, got {self.attention_block}"),
    ] + self.family_checks()
    for ok, msg in checks:
      if not ok:
        raise ValueError(f"model config: {msg}")

  def family_checks(self) -> list[tuple[bool, str]]:
    """(condition, message) pairs only this family needs."""
    return []


class VisionLanguageModel(nnx.Module):
  """Vision tower + decoder + LM head, for conditional generation. Subclasses set the tower."""

  vision_tower_cls: ClassVar[type]  # (ModelConfig, rngs) -> module: patches -> (features, DeepStack features)

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    t, pdt = cfg.text, cfg.param_dtype
    self.visual = self.vision_tower_cls(cfg, rngs)
    self.embed = param(rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"), pdt)
    self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(t.num_layers)])
    self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, pdt)
    if not t.tie_word_embeddings:
      self.lm_head = param(rngs, (t.hidden_size, t.vocab_size), ("embed", "vocab"), pdt)

  def embed_inputs(self, input_ids, pixel_values=None, vision_positions=None, vision_segment_ids=None,
                   image_token_index=None):
    """Token embeddings with the merged image features written into the `<|image_pad|>` slots.

    image_token_index (B, L): for each image-pad position, the index of its merged vision token
    (in the window-ordered vision output of the same example); -1 elsewhere. An `<|image_pad|>` id
    with index -1 (one the model generated) keeps its text embedding, as in cached decoding.
    Returns (embeddings, vision features or None, per-layer additions): the additions (B, L, E) are
    added to the outputs of the first decoder layers (Qwen3-VL's DeepStack; none for Qwen2.5-VL).
    """
    # Gather from a table split only over vocab (all-gathered over fsdp, as FSDP does for any
    # weight); gathering from a table also split over fsdp forces XLA to replicate it.
    table = constrain(self.embed[...], ("vocab", None))
    x = jnp.take(table, input_ids, axis=0).astype(self.cfg.dtype)
    # Whole along the length, unlike the residual between layers: split by position, the table's
    # gradient (a scatter of this cotangent) came out unsplit, 2 GiB of fp32 per chip for the 7B.
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    if pixel_values is None:
      return x, None, []
    feats, extra = self.visual(pixel_values, vision_positions, vision_segment_ids)
    is_image = ((input_ids == self.cfg.image_token_id) & (image_token_index >= 0))[..., None]
    index = jnp.maximum(image_token_index, 0)[..., None]
    gather = lambda f: jnp.take_along_axis(f, index, axis=1).astype(x.dtype)
    x = jnp.where(is_image, gather(feats), x)
    return x, feats, [jnp.where(is_image, gather(f), 0) for f in extra]

  def logits(self, hidden):
    t = self.cfg.text
    head = self.embed[...].T if t.tie_word_embeddings else self.lm_head[...]
    out = dense(hidden, head.astype(self.cfg.dtype))
    return constrain(out, ("act_batch", "act_length", "act_vocab"))

  def __call__(self, input_ids, positions, attention_mask=None, pixel_values=None, vision_positions=None,
               vision_segment_ids=None, image_token_index=None, *, cache=None, cache_index=0, head: bool = True,
               return_hidden: bool = False, attention_layer: int | None = None, attention_query=None):
    """Causal LM forward, one decoder loop for training, prefill and cached decode.

    input_ids (B, T) int; positions (3, B, T) M-RoPE ids. attention_mask (B, S), 1 = real token,
    over the keys: the tokens themselves, or with a cache its slots (left padding of a prompt is 0).
    pixel_values (B, P, patch_dim), vision_positions (B, P, 2), vision_segment_ids (B, P): the
    window-ordered, window-padded patches of each example (see the module docstring).
    cache (from `init_cache`): run the tokens as slots cache_index .. cache_index + T - 1 (prefill:
    index 0 with the images; decode: T = 1) and return (logits, new cache).
    head=False: the final-norm hidden states (B, T, E) instead of logits (losses apply the LM head
    blockwise, see zwz_jax.train.losses).
    attention_layer / attention_query (B,): also return that decoder layer's attention
    probabilities (B, heads, S) for one query position per example (attention coverage).
    Returns logits (B, T, vocab); with a cache (logits, cache); with `return_hidden` or
    `attention_layer` also a dict of intermediates.
    """
    x, feats, inject = self.embed_inputs(input_ids, pixel_values, vision_positions, vision_segment_ids,
                                         image_token_index)
    b, t = input_ids.shape
    keys = t if cache is None else cache.length
    kv_seg = (jnp.ones((b, keys), jnp.int32) if attention_mask is None
              else attention_mask.astype(jnp.int32))
    q_seg = kv_seg if cache is None else jax.lax.dynamic_slice_in_dim(kv_seg, cache_index, t, axis=1)
    segments = (q_seg, kv_seg)
    cos, sin = mrope_cos_sin(positions, self.cfg.text, self.cfg.dtype)
    n = len(self.layers)

    def body(layer, carry, xs):
      x, cache = carry
      i, add = xs
      x, cache, _ = layer(x, cos, sin, segments, cache, i, cache_index)
      out = x  # the layer's output, before any DeepStack addition (as transformers reports it)
      if add is not None:
        x = x + add
      return (x, cache), (out if return_hidden else None)

    # Runs of identical layers: the DeepStack-injected ones, the one whose attention is returned,
    # the rest. The returned-attention layer runs alone, outside the scan.
    cuts = [len(inject)] + ([attention_layer, attention_layer + 1] if attention_layer is not None else [])
    # A one-token decode step runs its layers unrolled: scanned, each layer would copy its weights
    # out of the stack on every step, doubling the weight traffic a memory-bound step is made of.
    scan = self.cfg.scan_layers and t > 1
    hidden, probs = [x], None
    for start, stop in runs(n, cuts):
      if start == attention_layer:
        x, _, probs = self.layers[start](x, cos, sin, segments, probs_query=attention_query)
        hidden.append(x)
        if start < len(inject):
          x = x + inject[start]
        continue
      adds = jnp.stack(inject[start:stop]) if start < len(inject) else None
      (x, cache), ys = run_layers(self.layers[start:stop], body, (x, cache), (jnp.arange(start, stop), adds),
                                  scan=scan, remat=self.cfg.remat)
      if return_hidden:
        hidden.extend(ys[j] for j in range(stop - start))
    out = self.norm(x)
    if head:
      out = self.logits(out)
    if cache is not None:
      return out, cache
    if return_hidden or attention_layer is not None:
      return out, {"layers": hidden, "vision": feats, "attention": probs}
    return out

  def init_cache(self, batch: int, length: int, dtype=None) -> "KVCache":
    """Empty key/value cache for every layer: (layers, batch, length, kv_heads, head_dim) each."""
    t = self.cfg.text
    shape = (t.num_layers, batch, length, t.num_kv_heads, t.head_dim)
    zeros = lambda: constrain(jnp.zeros(shape, dtype or self.cfg.dtype), KVCache.AXES)
    return KVCache(zeros(), zeros())


