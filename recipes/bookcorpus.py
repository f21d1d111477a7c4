"""Quick-Thought-style text pretraining with the paper's objectives (its Table 4, BookCorpus).

    accelerate launch recipes/bookcorpus.py                     # the paper's setting, streamed BookCorpus
    accelerate launch recipes/bookcorpus.py --dataset austen --model minilm --replay-dataset wordnet \\
        --max-steps 100 --time-budget-min 6.75   # make demo's core (the Makefile has every flag)
    accelerate launch recipes/bookcorpus.py --dataset my_books/ --loss "contrastive:1,tau=0.1"
    accelerate launch recipes/bookcorpus.py --dataset austen --encoder gru --loss "quickthought:1"  # Quick-Thought
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/bookcorpus.py --dataset austen

The pipeline reads top to bottom in ``hsrl/pipelines/bookcorpus.py`` (configuration, data, encoder, baseline
evaluation of the starting model, ``hsrl.training.fit``, evaluation, the model saved as a sentence-transformers
folder and ``OUTPUT/metrics.json``); this script is its command line: ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from hsrl.cli.config import parse_config
from hsrl.pipelines.bookcorpus import BookCorpusConfig, run


def main(argv: list[str] | None = None) -> int:
    return run(parse_config(BookCorpusConfig, argv))


if __name__ == "__main__":
    sys.exit(main())
