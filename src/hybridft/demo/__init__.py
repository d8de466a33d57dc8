"""The demo: synthetic data generators and the demo story (``hybridft demo``), not library code.

It sits with the CLI at the top of the layers: it calls the library (data, train, evaluate,
registry, serve, release, monitor, sweep) and nothing in the library imports it.

``synthesize`` writes the deterministic demo data (``synth``); ``run_demo`` tells the story from
data to a served answer and a decision report (``run``); ``run_loop`` goes on round the loop:
canary, drift, review, retraining (``loop``)."""

from importlib import import_module
from typing import Any

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours (`hybridft data synth` imports
# only the generators, never the story: test_import_stays_light)
_EXPORTS = {
    "live_tickets": "loop",
    "run_loop": "loop",
    "run_demo": "run",
    "acting_as": "steps",
    "print_step": "steps",
    "SPLITS": "synth",
    "SynthManifest": "synth",
    "check_disjoint": "synth",
    "synthesize": "synth",
    "task_graph": "synth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
