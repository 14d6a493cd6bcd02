"""The fine-tuning APIs the bridge reads: one adapter per provider (``openai``: OpenAI, Azure
OpenAI and compatible endpoints; ``together``; ``fireworks``), each turning its API's objects
into the one job model of :mod:`bridge.sources.model`; :mod:`bridge.sources.config` says which
sources a configuration names, and builds them."""

from bridge.sources.config import (
    Destination,
    SourceConfig,
    make_source,
    routes_of,
    source_configs,
)

__all__ = ["Destination", "SourceConfig", "make_source", "routes_of", "source_configs"]
