"""What an exported model says about itself: its shape, how it was trained, and how to sample from it.

Both exporters carry the same facts (the ONNX files as metadata, the HTML page in its header), so a
file that has travelled far from its run directory still says which model it is.
"""

from __future__ import annotations

import math
from typing import Any

from ..base.version import __version__
from ..generation.generator import Generator
from ..training.checkpoint import LoadedModel


def sampling_defaults(loaded: LoadedModel) -> dict[str, Any]:
    """How charlstm samples this model, for a runtime that wants to do the same.

    ``lead_in`` is read before a prime from a fresh state (see :meth:`Generator.prime`); the id in
    ``never_draw`` (the unknown symbol, if any) is never drawn.
    """
    generator = Generator(loaded.model, loaded.vocab)
    unknown = loaded.vocab.unknown_id if len(loaded.vocab) > 1 else None
    return {"temperature": 1.0, "top_k": None, "top_p": None, "lead_in": generator.lead_in, "never_draw": unknown}


def model_card(loaded: LoadedModel) -> dict[str, Any]:
    """The model's shape, its training and its best validation loss, as plain JSON values."""
    config = loaded.config
    metrics = config.get("metrics", {})
    train = config.get("train", {})
    corpus = config.get("corpus", {})
    best = metrics.get("best_val_loss", metrics.get("val_loss"))
    return {
        "name": loaded.name,
        "checkpoint": loaded.path.name,
        "model": loaded.model.config.to_dict(),
        "parameters": loaded.model.num_parameters(),
        "corpus": corpus.get("source"),
        "corpus_chars": corpus.get("chars"),
        "steps": metrics.get("step"),
        "train_seconds": metrics.get("elapsed"),
        "batch_size": train.get("batch_size"),
        "seq_len": train.get("seq_len"),
        "val_loss": best,
        "val_bpc": best / math.log(2) if isinstance(best, (int, float)) else None,
        "trained_with": config.get("charlstm_version"),
        "exported_with": __version__,
    }


def training_line(card: dict[str, Any]) -> str:
    """One sentence on how the model was trained, from :func:`model_card`."""
    shape = card["model"]
    parts = [f"{shape['cell'].upper()} {shape['num_layers']}x{shape['hidden_size']}, embedding {shape['emb_size']}, "
             f"{shape['vocab_size']} characters, {card['parameters']:,} parameters"]
    if card["corpus"]:
        size = f" ({card['corpus_chars']:,} characters)" if isinstance(card["corpus_chars"], int) else ""
        parts.append(f"trained on {card['corpus']}{size}")
    if isinstance(card["steps"], int):
        took = f" in {card['train_seconds'] / 60:.1f} min" if isinstance(card["train_seconds"], (int, float)) else ""
        parts.append(f"{card['steps']:,} steps of batch {card['batch_size']} x {card['seq_len']}{took}")
    if card["val_bpc"] is not None:
        parts.append(f"validation {card['val_loss']:.3f} nats = {card['val_bpc']:.3f} bits per character")
    return "; ".join(parts)
