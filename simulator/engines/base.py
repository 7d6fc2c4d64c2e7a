"""The engine interface and its registry (``simulator.engines`` explains what an engine owns)."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import PolicyError

ENGINES: dict[str, "Engine"] = {}
DEFAULT_ENGINE = "llmsim"


@dataclass(frozen=True)
class EngineConstant:
    """A figure that belongs to an engine's implementation (not to the machine), with its
    source: where it was read (code path and commit) or from which measured run it was
    derived, and how."""

    name: str
    value: float
    unit: str
    source: str

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "unit": self.unit, "source": self.source}


class Engine:
    """Base class: an engine's name, description, constants, and the four things it owns.

    Subclasses implement ``build_terms`` (schedule + executed operations + buffers, as
    ``simulator.terms.Terms``) and may override ``realize`` (placement rules), ``check``
    (what the engine cannot run), ``search_space`` (which knobs its planner varies) and
    ``searchable_fractions`` (which placement fractions the LP may choose)."""

    name: str = ""
    title: str = ""
    source: str = ""
    constants: tuple[EngineConstant, ...] = ()
    # Options of the engine's runtime (flags of the real program that change its schedule),
    # with their defaults; ``with_options`` returns a configured copy.
    options: dict = {}
    # Which placement fractions the search may move, per tensor kind: tiers an engine cannot
    # place a kind on are fixed at 0 (e.g. Accelerate keeps the cache on the GPU).
    tiers: dict = {"weights": ("gpu", "cpu", "disk"), "cache": ("gpu", "cpu", "disk"),
                   "activations": ("gpu", "cpu", "disk")}

    def build_terms(self, model, hw, workload, shape, dtype: str, tp: int = 1, pp: int = 1, dp: int = 1):
        raise NotImplementedError

    def check(self, model, hw, policy) -> None:
        """Raise PolicyError for a policy this engine cannot run."""

    def realize(self, model, policy):
        """The policy as this engine really places it (default: as asked)."""
        return policy

    def search_space(self, space):
        """The planner's candidates for this engine, from the generic ``SearchSpace``."""
        return space

    # How the planner searches this engine: "lp" (the placement LP over the engine's terms,
    # then rounding with the three hooks below) or "enumerate" (``candidate_policies``).
    searcher = "lp"
    # Whether `llmsim plan` compares this engine's best plan with the others' (engines modelled
    # for their published runs only say False).
    in_comparison = True

    def weight_options(self, model, fmt: str) -> list:
        """(asked, realized) weight placements the engine can run: by default whole tensors of
        each layer by the midpoint rule (``simulator.placement``), asked = realized."""
        from simulator.placement import achievable_tensor_placements
        return [(p, p) for p in achievable_tensor_placements([t.nbytes(fmt) for t in model.layer_tensors()])]

    def cache_splits(self, model, gpu_batch_size: int, frac, compressed: bool) -> tuple[int, list]:
        """(rows, whole-row (gpu, cpu, disk) splits near ``frac``) of one GPU batch's cache
        (default: its sequence x KV-head rows)."""
        from simulator.placement import row_options
        rows = gpu_batch_size * model.num_kv_heads
        return rows, row_options(rows, frac)

    def activation_splits(self, gpu_batch_size: int, frac) -> list[tuple[int, int, int]]:
        """Whole-sequence (gpu, cpu, disk) splits of a batch's hidden states near ``frac``."""
        from simulator.placement import row_options
        return row_options(gpu_batch_size, frac)

    def candidate_policies(self, model, hw, workload, space, gpus: int = 1) -> list:
        """For ``searcher == "enumerate"``: every policy the engine's planner considers."""
        raise NotImplementedError

    def with_options(self, **options) -> "Engine":
        unknown = set(options) - set(self.options)
        if unknown:
            raise PolicyError(f"engine {self.name}: unknown option {sorted(unknown)[0]!r} "
                              f"(allowed: {', '.join(self.options) or 'none'})")
        eng = type(self)(**{**self.option_values(), **options})
        return eng

    def option_values(self) -> dict:
        return {k: getattr(self, k, v) for k, v in self.options.items()}

    def key(self) -> tuple:
        return (self.name, *sorted(self.option_values().items()))

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other) -> bool:
        return isinstance(other, Engine) and self.key() == other.key()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.option_values().items())
        return f"<engine {self.name}{' (' + opts + ')' if opts else ''}>"

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "source": self.source, "options": self.option_values(),
                "constants": [c.to_dict() for c in self.constants]}


def register(engine_cls):
    """Class decorator: register an engine by its ``name``."""
    engine = engine_cls()
    ENGINES[engine.name] = engine
    return engine_cls


def engine_names() -> tuple[str, ...]:
    return tuple(ENGINES)


def get_engine(name, **options) -> Engine:
    """The registered engine ``name`` (an Engine passes through), configured with ``options``;
    a one-line PolicyError naming the flag, the value and the allowed names otherwise."""
    if isinstance(name, Engine):
        return name.with_options(**options) if options else name
    try:
        eng = ENGINES[name]
    except (KeyError, TypeError):
        raise PolicyError(f"--engine: {name!r} is not an engine (available: {', '.join(ENGINES)})") from None
    return eng.with_options(**options) if options else eng
