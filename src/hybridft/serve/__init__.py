"""The serving runtime: OpenAI-compatible Ray Serve deployments of registered versions, the canary
router and the state it routes by, API keys, metrics, the request log, feedback and review queue.

What to release and when is decided above it (``hybridft.release``); the runtime only reads the
canary state file and logs what it served."""

from hybridft.faces import lazy_face

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours (Ray Serve, FastAPI)
_EXPORTS = {
    "CanarySpec": "canary",
    "CanaryState": "canary",
    "CanaryStore": "canary",
    "RouteWatcher": "canary",
    "ServePaths": "canary",
    "load_canary_spec": "canary",
    "manual_action": "canary",
    "ModelServer": "deployment",
    "ServeDeployer": "endpoint",
    "check_serve_config": "endpoint",
    "start_endpoint": "endpoint",
    "GenerationEngine": "generation",
    "SamplingParams": "generation",
    "KeyStore": "keys",
    "ServeModelArgs": "launch",
    "build_app": "launch",
    "deploy": "launch",
    "serve_version": "launch",
    "FeedbackStore": "review",
    "ReviewQueue": "review",
    "CanaryRouter": "router",
    "Route": "routing",
    "RouteTable": "routing",
    "choose_route": "routing",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_face(__name__, _EXPORTS)
