"""shapley-svc: Shapley-value importance of decoder blocks and sublayers, for depth pruning of LLMs."""

__version__ = "0.1.0"
