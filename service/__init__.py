"""The hsrl HTTP service: OpenAI-compatible embeddings, nearest-neighbour search over ``hsrl.index`` indexes,
dynamic micro-batching, limits, API key, health and Prometheus metrics.

Start it with ``hsrl serve`` (:mod:`hsrl_service.cli`), or build an app in Python::

    from hsrl_service.app import create_app
    from hsrl_service.encoders import load_text_encoder
    from hsrl_service.runtime import Service

    app = create_app(Service([load_text_encoder("path/to/model")]))
"""
