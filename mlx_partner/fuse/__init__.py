"""`mlx-partner fuse`: merge a run's LoRA/DoRA adapters into a standalone model, prove it, export it.

    run.py        run_fuse: the stage (lock, merge, check, exports, atomic swap into models/<run>/)
    merge.py      fuse_model: the adapters added into the base's weights, as `mlx_lm fuse` does
    template.py   the partner's system prompt as the chat template's default
    check.py      verify: fused logits against adapter-on-base, and the templates' tokens
    export.py     --gguf: <run>.gguf for llama.cpp/LM Studio/Ollama, and the Modelfile
    modelfile.py  the Ollama Modelfile: the chat template as a Go template, stops, sampling

Import from the defining module; the names below are the package's public API.
"""

from .check import FuseCheck, verify
from .export import GGUFPlan, plan_gguf
from .merge import fuse_model
from .run import FuseResult, run_fuse
from .template import with_partner_default, write_partner_template

__all__ = [
    "FuseCheck",
    "FuseResult",
    "GGUFPlan",
    "fuse_model",
    "plan_gguf",
    "run_fuse",
    "verify",
    "with_partner_default",
    "write_partner_template",
]
