"""chuan: build bilingual (Chinese + English) Baichuan-style language models end to end.

After `import chuan`, transformers' Auto classes know chuan's: `AutoConfig`,
`AutoModelForCausalLM` and `AutoTokenizer.from_pretrained(dir)` work on chuan and released
Baichuan dirs without `trust_remote_code`, and the model has Baichuan's `model.chat`.

Importing chuan itself stays cheap: the registration (which needs torch and transformers,
seconds to import) runs when transformers' Auto classes are imported, before or after chuan,
so `import chuan.data.rules` in a corpus worker never loads torch. `register_with_transformers`
does it on demand.
"""

from __future__ import annotations

import importlib
import sys
from importlib.abc import Loader, MetaPathFinder

__version__ = "0.1.0"

__all__ = ["BaichuanConfig", "BaichuanForCausalLM", "BaichuanModel", "preset_config"]

# Using any Auto class imports one of these; then chuan's classes must be registered.
AUTO_MODULES = (
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
)
_registered = False


def register_with_transformers() -> None:
    """Register chuan's config, model and tokenizer classes with transformers' Auto classes
    and give the model `chat` / `stream_chat` (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True
    import chuan.infer.chat  # noqa: F401  (model.chat)
    import chuan.model  # noqa: F401  (AutoConfig, AutoModel, AutoModelFor{CausalLM,SequenceClassification})
    import chuan.tokenizer.hf  # noqa: F401  (AutoTokenizer)


def _mid_import(done: str) -> bool:
    """A chuan or transformers module other than `done` (whose body has just run) is still
    executing its body: registering now would import it half-made, so it waits."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name != done and name.startswith(("chuan.", "transformers"))
    )


def _maybe_register(done: str) -> None:
    used = any(name in sys.modules for name in AUTO_MODULES)
    if used and not _registered and not _mid_import(done):
        register_with_transformers()


class _ThenRegister(Loader):
    """The real loader, then `_maybe_register` once the module has run."""

    def __init__(self, loader: Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _maybe_register(module.__name__)

    def __getattr__(self, name: str):  # resources, source, is_package: the real loader's
        return getattr(self.loader, name)


class _AutoClassWatcher(MetaPathFinder):
    """Watches imports of transformers' and chuan's modules: once an Auto module has been
    imported and no module is half-made, the registration runs."""

    def find_spec(self, fullname, path, target=None):
        if _registered or not fullname.startswith(("chuan.", "transformers.")):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader)
                return spec
        return None


if any(name in sys.modules for name in AUTO_MODULES):
    register_with_transformers()  # transformers' Auto classes are in use already
else:
    sys.meta_path.insert(0, _AutoClassWatcher())


def __getattr__(name: str):
    """`chuan.BaichuanForCausalLM` and friends, imported on first use."""
    if name in __all__:
        return getattr(importlib.import_module("chuan.model"), name)
    raise AttributeError(f"module 'chuan' has no attribute {name!r}")
