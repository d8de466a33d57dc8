"""Releases: the canary controller and the evidence it decides on, above the serving runtime.

The runtime (``serve``) routes by the canary state and logs requests and feedback; this package
reads that log (``evidence``), judges the canary against the primary (``analysis``: the sequential
success test and the per-interval checks; ``simulate``: the Flagger-style baseline it is compared
with), sends labelled probes to both arms (``probes``), and moves the state and the registry
aliases through the policy's gates (``controller``)."""

from hybridft.faces import lazy_face

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours
# (the controller: the registry, pydantic, scipy)
_EXPORTS = {
    "SequentialDecision": "analysis",
    "SuccessTestConfig": "analysis",
    "success_test": "analysis",
    "success_test_vs_rate": "analysis",
    "CanaryController": "controller",
    "Deployer": "controller",
    "NoDeployer": "controller",
    "interval_checks": "evidence",
    "success_verdict": "evidence",
    "PROBE_KEY_NAME": "probes",
    "Prober": "probes",
    "load_probe_rows": "probes",
    "calibrate_fixed_rule": "simulate",
    "simulate_detection": "simulate",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_face(__name__, _EXPORTS)
