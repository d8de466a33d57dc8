"""The demo: synthetic data generators and the demo story (``hybridft demo``), not library code.

It sits with the CLI at the top of the layers: it calls the library (data, train, evaluate,
registry, serve, release, monitor, sweep) and nothing in the library imports it.

``synthesize`` writes the deterministic demo data (``synth``); ``run_demo`` tells the story from
data to a served answer and a decision report (``run``); ``run_loop`` goes on round the loop:
canary, drift, review, retraining (``loop``)."""

from hybridft.faces import lazy_face

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

__getattr__ = lazy_face(__name__, _EXPORTS)
