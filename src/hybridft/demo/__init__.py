"""The demo: synthetic data generators and the demo story (``hybridft demo``), not library code.

It sits with the CLI at the top of the layers: it calls the library (data, train, evaluate,
registry, serve, monitor, sweep) and nothing in the library imports it.

``synthesize`` writes the deterministic demo data (``synth``); ``run_demo`` tells the story from
data to a served answer and a decision report (``run``); ``run_loop`` goes on round the loop:
canary, drift, review, retraining (``loop``).
"""

from hybridft.demo.loop import live_tickets, run_loop
from hybridft.demo.run import run_demo
from hybridft.demo.steps import acting_as, print_step
from hybridft.demo.synth import SPLITS, SynthManifest, check_disjoint, synthesize, task_graph

__all__ = [
    "SPLITS",
    "SynthManifest",
    "acting_as",
    "check_disjoint",
    "live_tickets",
    "print_step",
    "run_demo",
    "run_loop",
    "synthesize",
    "task_graph",
]
