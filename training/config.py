"""The two configs that define a run: `ModelConfig` (saved with every checkpoint and in the manifest, so the
network can be rebuilt from it) and `TrainConfig` (everything about how it is trained)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from service.contract import Truncation

Cell = Literal["rnn", "lstm", "gru"]
Pooling = Literal["last", "mean", "max", "meanmax"]


@dataclass
class ModelConfig:
    vocab_size: int = 30_000
    embedding_dim: int = 100
    cell: Cell = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pooling: Pooling = "meanmax"
    dropout: float = 0.4  # between layers and before the head
    embedding_dropout: float = 0.2  # drops whole embedding channels; IMDB overfits fast without it
    num_labels: int = 2
    # Hashed n-gram branch (NBSVM-style, Wang & Manning 2012): a linear score per uni/bi/tri-gram ending at each
    # position, summed over the review and added to the recurrent logit. Additive per position, so every prefix's
    # verdict and every token's share stay exact. 0 buckets = no branch.
    ngram_order: int = 3
    ngram_buckets: int = 0  # per order >= 2; a prime, so (key mod buckets) spreads the structured keys
    # Negation scope for the unigram features (training/ngrams.py); the ids are resolved from the vocabulary when
    # training. Tuples, not lists: checkpoints pickled before these fields existed still load with these defaults.
    negation_window: int = 0
    negation_ids: tuple[int, ...] = ()
    scope_break_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # A manifest round-trip through JSON gives lists; the config compares and pickles as tuples.
        self.negation_ids = tuple(int(i) for i in self.negation_ids)
        self.scope_break_ids = tuple(int(i) for i in self.scope_break_ids)

    @property
    def ngram_table_size(self) -> int:
        # unigrams by id (+1 for the begin-of-text id), then one hashed block per order >= 2
        if not self.ngram_buckets:
            return 0
        negated = self.vocab_size + 1 if self.negation_window else 0  # "NOT_word" unigrams after the hashed blocks
        return (self.vocab_size + 1) + (self.ngram_order - 1) * self.ngram_buckets + negated

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def feature_size(self) -> int:
        per_pool = 2 if self.pooling == "meanmax" else 1
        return self.hidden_size * self.directions * per_pool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainConfig:
    data: str = "../shared/data/aclImdb_train.tar.gz"
    out_dir: str = "runs/default"
    name: str = "imdb-lstm"
    seed: int = 13
    val_fraction: float = 0.1
    # Tokenizer
    max_vocab: int = 30_000
    min_frequency: int = 3
    # A safety cap, not a window: an RNN has no context limit, so whole reviews are scored. 20,000 tokens covers the
    # service's 20,000-character request limit (a token is at least one character).
    max_tokens: int = 20_000
    truncation: Truncation = "head_tail"
    head_tokens: int = 100  # only for texts over max_tokens: keep the head and the end (verdicts sit at the end)
    # Sentence crops (1-3 consecutive sentences of a training review, with its label) added each epoch: teaches the
    # recurrent part short texts ("Not bad at all!") that whole reviews rarely isolate. Share of reviews cropped.
    crop_share: float = 0.5
    # Share of the short texts drawn each epoch (crops, negation and contrast examples) whose final "." / "!" / "?"
    # is removed. They all end at a full stop, so without this the network learns to settle its verdict there and
    # the stop, not the sentiment word, takes the credit ("The plot was dreadful." -> "." ranked first); users also
    # type snippets without one ("not bad at all"). Whole reviews keep theirs. 0 = off (earlier recipes).
    end_drop: float = 0.0
    # Fit the mix (the weighting of network and n-gram branch, which is also the calibration) on validation reviews
    # plus one sentence crop of each, drawn with another seed than the crops whose ECE is reported. Fitted on whole
    # reviews alone it carried their confidence over to short texts: runs/drop100 was under-confident on crops (mean
    # confidence 0.72, accuracy 0.75, ECE 0.039); fitted on both, 0.025, cross-fitted. Off = earlier recipes.
    mix_on_crops: bool = False
    # Counterfactual negation pairs per epoch (and half as many "A, but B" contrasts), built from training sentences
    # (training/augment.py): review labels alone teach that "not bad" is negative. 0 = off.
    augment: int = 6000
    # Also negate nouns after an article ("was a waste" -> "was not a waste") and verbs after a modal ("would
    # recommend" -> "would not recommend"), not only words after a copula.
    negation_phrases: bool = False
    # Write half the inserted "not"s as a contraction with the copula or modal before them ("wasn't bad", "won't be
    # disappointed"), which the tokenizer keeps as single words.
    negation_contractions: bool = False
    # Self-training (training/pseudo.py; resumed runs only): the best model so far labels the 50k unlabeled reviews;
    # the n-gram fit takes them all with soft labels, and each epoch adds `pseudo_per_epoch` of those with
    # |P(positive) - 0.5| >= `pseudo_margin` to the network's data with hard labels.
    self_training: bool = False
    pseudo_margin: float = 0.3
    pseudo_per_epoch: int = 20_000
    # Adversarial training (training/adversarial.py, Miyato et al. 2016): each batch also trains on its embeddings
    # perturbed by eps (in embedding standard deviations, L2 over the review) along the loss gradient. Twice the
    # compute per step. 0 = off.
    adversarial_eps: float = 0.0
    # Residual training (training/residual.py): each example's loss is on the network's log-odds plus this times the
    # n-gram branch's calibrated out-of-fold log-odds, so the network learns what the branch misses. 0 = off.
    ngram_offset: float = 0.0
    # NBSVM fit of the n-gram branch: inverse L2 strength of the logistic regression (sklearn's C)
    negation_window: int = 3  # tokens after a negator whose unigram becomes "NOT_word" (0: off)
    ngram_c: float = 0.03  # grouped validation, counts features: C=0.03 gave 0.9128 alone
    # Embeddings: "random", "word2vec" (trained on train + unsup reviews) or a GloVe-format text file path
    embeddings: str = "word2vec"
    w2v_epochs: int = 5
    # A language-model-pretrained embedding and recurrent layer to start from (`python -m training.pretrain`, which
    # writes the run's lm.pt); read by the first stage only. "" = start from the embeddings above.
    init_from: str = ""
    # Optimisation
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0  # 0 disables gradient-norm clipping
    patience: int = 2
    max_train_examples: int = 0  # 0 = all; small values make quick experiments and tests
    # One thread: the fused RNN kernels synchronise their threads at every time step; on this 2-core machine with
    # anything else running, 2 threads measured 10x slower per batch than 1 (1.8 s vs 15-40 s).
    threads: int = 1
    time_budget_min: float = 0.0  # 0 = none; stops after the epoch that crosses it (fixed-budget comparisons)
    model: ModelConfig = field(default_factory=ModelConfig)
