"""Downstream evaluation of frozen embeddings, one concern per module.

- :mod:`hsrl.evaluation.knn`: exact k-NN classification (the paper's 5-NN protocol).
- :mod:`hsrl.evaluation.text`: ``hsrl eval text`` (neighbour-sentence retrieval, book attribution, SentEval-style).
- :mod:`hsrl.evaluation.image`: ``hsrl eval image`` (linear probe and k-NN at any layer).
- :mod:`hsrl.evaluation.retrieval`: ``hsrl eval retrieval`` (recall/precision/MRR/nDCG/MAP through hsrl.index).
"""

from hsrl.evaluation.knn import knn_accuracy, knn_predict

__all__ = ["knn_accuracy", "knn_predict"]
