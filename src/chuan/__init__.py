"""chuan: build bilingual (Chinese + English) Baichuan-style language models end to end.

Importing chuan registers the Baichuan config and model classes with transformers, so
`AutoModelForCausalLM.from_pretrained(dir)` works on chuan and released Baichuan dirs without
`trust_remote_code`.
"""

import chuan.tokenizer.hf  # noqa: F401  (registers the tokenizer classes with AutoTokenizer)
from chuan.model import BaichuanConfig, BaichuanForCausalLM, BaichuanModel, preset_config

__version__ = "0.1.0"

__all__ = ["BaichuanConfig", "BaichuanForCausalLM", "BaichuanModel", "preset_config"]
