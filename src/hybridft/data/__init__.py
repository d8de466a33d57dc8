"""Data layer: read -> validate -> render (template + loss mask) -> mix -> pack, plus
fingerprints; ``sources`` reads a job's named sources (eval splits, training rows)."""

from hybridft.faces import lazy_face

# public name -> the module that defines it, imported on first use: importing one light module
# of the package does not import its heavy neighbours (render: transformers)
_EXPORTS = {
    "fingerprint_examples": "fingerprint",
    "fingerprint_paths": "fingerprint",
    "ExampleStream": "reader",
    "read_examples": "reader",
    "Example": "records",
    "Message": "records",
    "render_examples": "render",
    "load_eval_sets": "sources",
    "read_source": "sources",
    "training_examples": "sources",
    "dataset_stats": "stats",
    "validate_paths": "stats",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_face(__name__, _EXPORTS)
