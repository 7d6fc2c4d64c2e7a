"""Engines: how a piece of software runs a model (DESIGN.md, "A prediction is four things
crossed"). The same ModelSpec and HardwareProfile predict every engine; what differs lives
here, one module per engine, registered by name:

- its **schedule**: which transfers overlap which compute, where it synchronizes, what it
  prefetches (its scopes and channels in ``simulator.terms``);
- the **operations it executes**: fused or not, extra copies, decompression passes,
  kernels per layer (on top of the engine-independent costs of ``simulator.ops``);
- its **placement rules**: how a fraction of the weights becomes whole tensors
  (``Engine.realize``);
- its **buffers**: the working memory ``simulator.memory`` adds to the resident shares;
- its **constants**: data with a source (``EngineConstant``), never the machine's rates,
  which stay in the hardware profile.

    llmsim          llmsim's own torch executor (validate/executor/)
    flexgen         FlexGen 0.1.x (FMInference/FlexLLMGen, arXiv 2303.06865)
    accelerate      Hugging Face Accelerate device_map offload
    zero-inference  DeepSpeed ZeRO-Inference (weights streamed from CPU or NVMe)
    fastertransformer, deepspeed-inference, tensorrt-llm
                    static-batching GPU-resident engines with fused kernels (their published
                    multi-GPU runs; not in the plan's engine comparison)
"""

from __future__ import annotations

from simulator.engines.base import ENGINES, Engine, EngineConstant, engine_names, get_engine

# Importing the modules registers the engines.
from simulator.engines import llmsim as _llmsim  # noqa: E402,F401  (first: the default)
from simulator.engines import flexgen as _flexgen  # noqa: E402,F401
from simulator.engines import accelerate as _accelerate  # noqa: E402,F401
from simulator.engines import zero_inference as _zero_inference  # noqa: E402,F401
from simulator.engines import static as _static  # noqa: E402,F401  (fastertransformer, deepspeed-inference, tensorrt-llm)

__all__ = ["ENGINES", "Engine", "EngineConstant", "engine_names", "get_engine"]
