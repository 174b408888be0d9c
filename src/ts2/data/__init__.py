"""SFT data: conversation sources (hub or local data directory) and assistant-only tokenisation."""

from ts2.data.sft import SFTData, build_sft_dataset, load_conversations, tokenize_conversation

__all__ = ["SFTData", "build_sft_dataset", "load_conversations", "tokenize_conversation"]
