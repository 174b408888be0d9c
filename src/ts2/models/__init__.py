"""Model and tokenizer loading: hub / local checkpoints at paper scale, the offline tiny model here."""

from ts2.models.loading import load_model, load_tokenizer, resolve_model_path

__all__ = ["load_model", "load_tokenizer", "resolve_model_path"]
