"""bitsandbytes, in a process only when a model is quantized (QLoRA).

Why: peft imports bitsandbytes whenever it is installed (`peft/helpers.py`), and sentence-transformers
and every adapter load import peft. On a CPU with AVX512-BF16, importing bitsandbytes (0.49+) asks
the Hugging Face Hub for a kernel (`kernels.get_kernel("kernels-community/quantization-bitsandbytes")`):
a network call when online, two warnings on stderr when offline, on every model load, in the output
of `quickstart`, `search` and `serve`. Nothing but QLoRA uses bitsandbytes, so:

- `keep_bitsandbytes_out()`: loading a model that is not quantized (serving, evaluation, embedding,
  LoRA and full fine-tuning) marks bitsandbytes absent in this process before peft is imported;
  peft and transformers then see it as not installed (`importlib.util.find_spec` answers None).
  A process where it is already imported keeps it.
- `import_bitsandbytes()`: QLoRA imports it with the `kernels` package hidden for the import, so the
  CPU backend keeps its own kernels instead of fetching one (stackwise's CPU QLoRA path turns the
  AVX512-BF16 inference kernel off anyway: `training.trainer.cpu_safe_4bit`). The one warning
  bitsandbytes logs for the hidden package is held back for that import only.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType

_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"


def keep_bitsandbytes_out() -> None:
    """Make `import bitsandbytes` fail (ImportError) in this process, unless it already ran."""
    sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]


def import_bitsandbytes() -> ModuleType:
    """bitsandbytes, imported without reaching for the Hugging Face Hub. Raises ImportError when it
    is not installed (the caller says which extra installs it)."""
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
        # Kept out earlier in this process: let it in, and forget the "not installed" answers cached.
        del sys.modules["bitsandbytes"]
        for module, names in (("peft.import_utils", ("is_bnb_available", "is_bnb_4bit_available")),
                              ("transformers.utils.import_utils", ("is_bitsandbytes_available",))):
            for name in names:
                clear = getattr(getattr(sys.modules.get(module), name, None), "cache_clear", None)
                if clear is not None:
                    clear()
    if sys.modules.get("bitsandbytes") is not None:
        return sys.modules["bitsandbytes"]
    hidden = "kernels" in sys.modules, sys.modules.get("kernels")
    sys.modules["kernels"] = None  # type: ignore[assignment]
    ops_logger = logging.getLogger(_CPU_OPS_LOGGER)
    level = ops_logger.level
    ops_logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        ops_logger.setLevel(level)
        if hidden[0]:
            sys.modules["kernels"] = hidden[1]  # type: ignore[assignment]
        else:
            sys.modules.pop("kernels", None)
    return bitsandbytes
