"""Data layer: read -> validate -> render (template + loss mask) -> mix -> pack, plus fingerprints."""
