"""Device cards fitted by edgelearn's own tools (installed as the package data `edgelearn.bundled`)."""
