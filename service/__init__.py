"""The hsrl HTTP service: OpenAI-compatible embeddings, nearest-neighbour search over ``hsrl.index`` indexes,
dynamic micro-batching, limits, API key, health and Prometheus metrics.

Start it with ``hsrl serve`` (:mod:`service.cli`), or build an app in Python::

    from service.app import create_app
    from service.encoders import load_text_encoder
    from service.runtime import Service

    app = create_app(Service([load_text_encoder("path/to/model")]))
"""
