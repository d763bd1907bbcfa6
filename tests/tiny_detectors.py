"""Tiny random SAM3, OWLv2 and Grounding DINO checkpoints on disk, as a user's local detector
checkpoint would be: weights, a tokenizer of the model's own class and its image-processor config.
Built offline in seconds."""
import json
import os

from tokenizers.pre_tokenizers import ByteLevel
import torch
import transformers

KINDS = ("sam3", "owlv2", "grounding_dino")


def clip_tokenizer():
  """A CLIP tokenizer (SAM3, OWLv2) over single bytes: every text tokenises, no merges needed."""
  chars = sorted(ByteLevel.alphabet())
  vocab = {c: i for i, c in enumerate(chars)}
  vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
  vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
  return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def bert_tokenizer():
  """A BERT word-piece tokenizer (Grounding DINO) over letters."""
  letters = "abcdefghijklmnopqrstuvwxyz"
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *letters, *("##" + c for c in letters)]
  return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def _text(vocab_size, hidden, **extra):
  return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
              num_attention_heads=2, **extra)


def model_and_tokenizer(kind: str):
  """(random model, tokenizer, image processor or None) of `kind`, seeded."""
  torch.manual_seed(0)
  if kind == "owlv2":
    tok = clip_tokenizer()
    config = transformers.Owlv2Config(
        text_config=_text(len(tok), 16, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16), projection_dim=16)
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil
    return (transformers.Owlv2ForObjectDetection(config), tok,
            Owlv2ImageProcessorPil(size={"height": 64, "width": 64}))
  if kind == "grounding_dino":
    tok = bert_tokenizer()
    config = transformers.GroundingDinoConfig(
        backbone_config=dict(model_type="swin", window_size=7, embed_dim=8, depths=[1, 1, 1, 1],
                             num_heads=[1, 1, 1, 1], image_size=32, out_features=["stage2", "stage3", "stage4"],
                             out_indices=[2, 3, 4]),
        text_config=dict(model_type="bert", **_text(len(tok), 32, max_position_embeddings=32)),
        d_model=32, num_queries=8, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, max_text_len=16)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil)
    return (transformers.GroundingDinoForObjectDetection(config), tok,
            GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}))
  if kind == "sam3":
    tok = clip_tokenizer()
    h = 16
    config = transformers.Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=h, intermediate_size=32,
                                 num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14,
                                 window_size=2, global_attn_indexes=[1], pretrain_image_size=28),
            fpn_hidden_size=h, backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]]),
        text_config=_text(len(tok), h, projection_dim=h, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        geometry_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=32),
        detr_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=32),
        detr_decoder_config=dict(hidden_size=h, num_layers=1, num_queries=8, num_attention_heads=2,
                                 intermediate_size=32),
        mask_decoder_config=dict(hidden_size=h, num_upsampling_stages=2, num_attention_heads=2))
    return transformers.Sam3Model(config), tok, None
  raise ValueError(kind)


def save_tiny_detector(kind: str, path: str, *, sam3_video: bool = False) -> str:
  """The checkpoint folder of `kind`; sam3_video: SAM3 laid out as the hub's facebook/sam3 is (a
  sam3_video config whose detector_config is the image model, weights under detector_model.)."""
  model, tok, image_processor = model_and_tokenizer(kind)
  if sam3_video:
    from safetensors.torch import save_file
    transformers.Sam3VideoConfig(detector_config=model.config.to_dict()).save_pretrained(path)
    save_file({f"detector_model.{k}": v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(path, "model.safetensors"))
  else:
    model.save_pretrained(path)
  tok.save_pretrained(path)
  if image_processor is not None:
    image_processor.save_pretrained(path)
  else:  # SAM3's processor needs torchvision; its settings are what a saved checkpoint carries
    with open(os.path.join(path, "preprocessor_config.json"), "w", encoding="utf-8") as f:
      json.dump({"image_processor_type": "Sam3ImageProcessor", "size": {"height": 56, "width": 56},
                 "resample": 2, "rescale_factor": 1 / 255, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}, f)
  return path
