"""Train loop: grouped split, tokenizer, embeddings, AdamW with gradient-norm clipping, early stopping on
validation, a checkpoint every epoch (`--resume` continues from it), temperature calibration, metrics as JSON.

    sentiment-train --data ../shared/data/aclImdb_train.tar.gz --out-dir runs/lstm
    sentiment-train --out-dir runs/lstm --resume        # after a stop: continues at the next epoch
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from service.contract import TRUNCATIONS
from service.tokenization import TextTokenizer
from training.adversarial import adversarial_step
from training.augment import augmentation
from training.batches import batches, drop_final_enders, sentence_crops, sentence_enders
from training.calibration import expected_calibration_error, fit_temperature
from training.config import ModelConfig, TrainConfig
from training.data import DataError, grouped_split, load_labeled, load_unlabeled
from training.embeddings import load_glove, train_word2vec
from training.models import RecurrentClassifier
from training.pseudo import epoch_sample, pseudo_labels, soft_examples
from training.residual import MIXED, film_folds, fold_fits, offsets, shifted
from training.tokenizer import build_tokenizer

log = logging.getLogger("sentiment.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_text_tokenizer(tokenizer, cfg: TrainConfig) -> TextTokenizer:
    return TextTokenizer(tokenizer, max_tokens=cfg.max_tokens, truncation=cfg.truncation, head_tokens=cfg.head_tokens)


def split_examples(cfg: TrainConfig) -> tuple[list, list]:
    """The labeled reviews as training and validation examples (grouped by film), always in the same order."""
    examples = load_labeled(cfg.data)
    if cfg.max_train_examples:
        random.Random(cfg.seed).shuffle(examples)
        examples = examples[: cfg.max_train_examples]
    return grouped_split(examples, cfg.val_fraction, cfg.seed)


def prepare(cfg: TrainConfig, out: Path) -> dict:
    """Data, tokenizer and embeddings: cached in the run folder so a resumed run does not redo them."""
    cache = out / "prepared.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)
    train, val = split_examples(cfg)
    unsup = load_unlabeled(cfg.data) if cfg.embeddings == "word2vec" and not cfg.max_train_examples else []
    log.info("examples: %d train, %d validation (grouped by film), %d unlabeled", len(train), len(val), len(unsup))
    tokenizer = build_tokenizer([e.text for e in train] + unsup, cfg.max_vocab, cfg.min_frequency)
    text_tok = make_text_tokenizer(tokenizer, cfg)
    vocab = tokenizer.get_vocab()
    embeddings, coverage = None, 0.0
    if cfg.embeddings == "word2vec":
        sentences = [e.tokens for e in tokenizer.encode_batch([e.text for e in train] + unsup, add_special_tokens=False)]
        embeddings, coverage = train_word2vec(sentences, vocab, cfg.model.embedding_dim, cfg.w2v_epochs, cfg.seed)
    elif cfg.embeddings != "random":
        embeddings, coverage = load_glove(cfg.embeddings, vocab, cfg.model.embedding_dim, cfg.seed)
    log.info("embeddings: %s (%.1f%% of the vocabulary covered)", cfg.embeddings, 100 * coverage)

    def encode(rows):
        return [enc.ids for enc in text_tok.encode_batch([e.text for e in rows])], [e.label for e in rows]

    prepared = {
        "tokenizer_json": tokenizer.to_str(),
        "train": encode(train),
        "val": encode(val),
        "train_films": [e.group for e in train],  # residual training's folds follow films (training/residual.py)
        "embeddings": None if embeddings is None else torch.from_numpy(embeddings),
        "embedding_coverage": coverage,
        "counts": {"train": len(train), "val": len(val), "unlabeled": len(unsup), "val_films": len({e.group for e in val})},
    }
    torch.save(prepared, cache)
    return prepared


@torch.no_grad()
def predict_logits(model: RecurrentClassifier, ids, labels, batch_size: int = 256, part: str = "combined"):
    """Logits and labels in the same (length-bucketed) order. part: "combined" (the whole model), "rnn" (the
    network alone)."""
    model.eval()
    out, ys = [], []
    fn = model.rnn_logits if part == "rnn" else model
    for x, lengths, y in batches(ids, labels, batch_size, seed=None):
        out.append(fn(x, lengths))
        ys.append(y)
    return torch.cat(out), torch.cat(ys)


def evaluate(model, ids, labels) -> dict:
    logits, y = predict_logits(model, ids, labels, part="rnn")
    return {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}


# A resumed run keeps its checkpoint's settings except how long to train (`--resume --epochs 10` extends a run), the
# learning rate and augmentation (fine-tuning), and the n-gram fit, which happens after the network trains.
RESUME_OVERRIDES = (
    "epochs",
    "patience",
    "time_budget_min",
    "ngram_c",
    "negation_window",
    "augment",
    "lr",
    "self_training",
    "pseudo_margin",
    "pseudo_per_epoch",
    "adversarial_eps",
    "negation_phrases",
    "negation_contractions",
    "ngram_offset",
    "end_drop",
    "mix_on_crops",
)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False)
        cfg = dataclasses.replace(saved["train_config"], **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    prepared = prepare(cfg, out)
    tokenizer_json = prepared["tokenizer_json"]
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    cfg.model.vocab_size = len(vocab)
    if cfg.model.ngram_buckets:
        from training.ngrams import negation_ids

        cfg.model.negation_window = cfg.negation_window
        cfg.model.negation_ids, cfg.model.scope_break_ids = negation_ids(vocab) if cfg.negation_window else ((), ())
    model = initial_network(cfg, prepared)
    if cfg.init_from and not (resume and ckpt_path.exists()):
        load_pretrained(model, cfg.init_from)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "best_acc": -1.0, "best_state": None, "history": [], "bad_epochs": 0, "elapsed": 0.0}
    if resume and ckpt_path.exists():
        model.load_state_dict(network_state(saved["model"]), strict=False)
        opt.load_state_dict(saved["optimizer"])
        for group in opt.param_groups:  # a resumed run may continue at another rate (fine-tuning)
            group["lr"] = cfg.lr
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        log.info("resumed after epoch %d", state["epoch"])
    train_ids, train_y = prepared["train"]
    val_ids, val_y = prepared["val"]
    enders = sentence_enders(tokenizer_json)
    if cfg.self_training:
        prepared["pseudo"] = pseudo_labels(cfg, model, state, prepared, out)
    residual = residual_setup(cfg, prepared, out) if cfg.ngram_offset and cfg.model.ngram_buckets else None
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        if cfg.time_budget_min and state["elapsed"] >= cfg.time_budget_min * 60:
            break
        epoch = state["epoch"] + 1
        model.train()
        start, seen, loss_sum, correct, grad_norms = time.time(), 0, 0.0, 0, []
        crop_ids, crop_y, crop_src = sentence_crops(train_ids, train_y, enders, cfg.crop_share, cfg.seed + epoch)
        aug_ids, aug_y = augmentation(
            train_ids, train_y, vocab, cfg.augment, cfg.seed + epoch, cfg.negation_phrases, cfg.negation_contractions
        )
        crop_ids = drop_final_enders(crop_ids, enders, cfg.end_drop, cfg.seed + epoch)
        aug_ids = drop_final_enders(aug_ids, enders, cfg.end_drop, cfg.seed + epoch + 1)
        pseudo_ids, pseudo_y = (
            epoch_sample(prepared["pseudo"], cfg.pseudo_margin, cfg.pseudo_per_epoch, cfg.seed + epoch)
            if "pseudo" in prepared
            else ([], [])
        )
        epoch_ids = list(train_ids) + crop_ids + aug_ids + pseudo_ids
        epoch_y = torch.tensor(list(train_y) + crop_y + aug_y + pseudo_y)
        epoch_offsets = None
        if residual is not None:
            drawn = epoch_ids[len(train_ids) :]
            drawn_folds = np.concatenate([residual["folds"][crop_src], np.full(len(aug_ids) + len(pseudo_ids), MIXED)])
            drawn_offsets = offsets(residual["fits"], cfg.model, drawn, drawn_folds, cfg.ngram_offset)
            epoch_offsets = torch.cat([residual["train"], drawn_offsets])
        steps = math.ceil(len(epoch_ids) / cfg.batch_size)
        # Not a terminal (a background run): a line every 30 s in the log instead of a bar.
        bar = tqdm(
            # The "labels" batched are row numbers, so each row's label and offset travel with it.
            batches(epoch_ids, list(range(len(epoch_ids))), cfg.batch_size, cfg.seed + epoch),
            total=steps,
            desc=f"epoch {epoch}",
            file=sys.stderr,
            mininterval=5 if sys.stderr.isatty() else 30,
            dynamic_ncols=True,
        )
        for x, lengths, rows in bar:
            y = epoch_y[rows]
            offset = None if epoch_offsets is None else epoch_offsets[rows]
            opt.zero_grad(set_to_none=True)
            if cfg.adversarial_eps:
                # the clean loss is logged
                logits, loss, _ = adversarial_step(model, x, lengths, y, cfg.adversarial_eps, offset)
            else:
                logits = shifted(model.rnn_logits(x, lengths), offset)
                loss = F.cross_entropy(logits, y)
                loss.backward()
            # Clipping bounds the exploding-gradient steps of long recurrences; the norm is logged either way.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm if cfg.clip_norm > 0 else 1e12)
            grad_norms.append(float(norm))
            opt.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        if cfg.model.ngram_buckets:
            # Epochs are chosen by what ships: the network together with the n-gram branch and a mix refitted for
            # this epoch. A network that is weaker alone can be the better partner (measured: 0.904 alone, 0.922
            # together, against 0.916 and 0.920). The one pass over validation also gives the network's own figures.
            branch = fit_branch(cfg, model, prepared, out)
            val = {"loss": branch["val_loss_rnn"], "accuracy": branch["val_accuracy_rnn"]}
        else:
            val = evaluate(model, val_ids, val_y)
        took = time.time() - start
        state["elapsed"] += took
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "seconds": round(took, 1),
            "grad_norm_median": float(np.median(grad_norms)),
            "grad_norm_max": float(np.max(grad_norms)),
        }
        if cfg.model.ngram_buckets:
            row["val_accuracy_rnn"] = row["val_accuracy"]
            row["val_accuracy"] = branch["val_accuracy"]
        state["history"].append(row)
        log.info("epoch %d: %s", epoch, json.dumps(row))
        if row["val_accuracy"] > state["best_acc"]:
            state["best_acc"], state["bad_epochs"] = row["val_accuracy"], 0
            state["best_state"] = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "state": state,
                "train_config": cfg,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(ckpt_path)  # atomic: a stop mid-save keeps the previous checkpoint
    return finish(cfg, model, state, prepared, out)


def initial_network(cfg: TrainConfig, prepared: dict) -> RecurrentClassifier:
    """A new network with the run's initial embeddings (word2vec or GloVe; random ones stay as torch drew them)."""
    model = RecurrentClassifier(cfg.model)
    if prepared["embeddings"] is not None and cfg.embeddings != "random":
        model.load_embeddings(prepared["embeddings"])
    return model


def load_pretrained(model: RecurrentClassifier, path: str) -> None:
    """The embedding and recurrent layers of a language-model pretraining (training/pretrain.py)."""
    state = torch.load(path, weights_only=False)["network"]
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: pretrained for another network ({', '.join(wrong[:3])} differ)")
    model.load_state_dict(state, strict=False)
    log.info("started from the pretrained %s (%d tensors)", path, len(state))


def residual_setup(cfg: TrainConfig, prepared: dict, out: Path) -> dict:
    """Film folds of the training reviews and the out-of-fold n-gram fits (training/residual.py)."""
    train_ids, train_y = prepared["train"]
    # Runs prepared before the films were stored there read them back from the data (about 40 s).
    films = prepared.get("train_films") or [e.group for e in split_examples(cfg)[0]]
    if len(films) != len(train_ids):
        raise ValueError(f"{cfg.data} no longer matches the run's prepared data ({len(films)} vs {len(train_ids)} reviews)")
    folds = film_folds(films)
    fits = fold_fits(cfg, cfg.model, train_ids, train_y, folds, out)
    # The reviews' own offsets never change; only the crops, counterfactuals and pseudo-labels drawn per epoch do.
    return {"folds": folds, "fits": fits, "train": offsets(fits, cfg.model, train_ids, folds, cfg.ngram_offset)}


def network_state(state: dict) -> dict:
    """A state dict without the n-gram branch, which is refitted after training (its table size follows the
    n-gram settings, which a resumed run may change)."""
    return {k: v for k, v in state.items() if not k.startswith(("ngram.", "mix"))}


def fit_mix(rnn_logits: torch.Tensor, ngram: torch.Tensor, y: torch.Tensor) -> list[float]:
    """[a, b, c] of log-odds = a * recurrent log-odds + b * n-gram score + c, by logistic regression on validation:
    the weighting of the two parts and the calibration in one (temperature scaling is its b = 0 special case)."""
    from sklearn.linear_model import LogisticRegression

    x = np.stack([(rnn_logits[:, 1] - rnn_logits[:, 0]).numpy(), ngram.numpy()], axis=1)
    clf = LogisticRegression(C=1e4, max_iter=1000).fit(x, y.numpy())
    return [float(clf.coef_[0][0]), float(clf.coef_[0][1]), float(clf.intercept_[0])]


@torch.no_grad()
def predict_parts(model: RecurrentClassifier, ids, labels, batch_size: int = 256):
    """The network's logits, the n-gram branch's scores and the labels, all in the same (length-bucketed) order."""
    model.eval()
    rnn, ngram, ys = [], [], []
    for x, lengths, y in batches(ids, labels, batch_size, seed=None):
        rnn.append(model.rnn_logits(x, lengths))
        ngram.append(model.ngram_score(x, lengths))
        ys.append(y)
    return torch.cat(rnn), torch.cat(ngram), torch.cat(ys)


def validation_crops(prepared: dict, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """One sentence crop (1-3 sentences) of each validation review of two or more sentences, with its label.
    `finish` reports ECE on those of seed `cfg.seed`; `--mix-on-crops` fits the mix on those of `cfg.seed + 1`, so
    that figure is not measured on the texts the mix was fitted to."""
    ids, labels, _ = sentence_crops(*prepared["val"], sentence_enders(prepared["tokenizer_json"]), 1.0, seed)
    return ids, labels


def fit_branch(cfg: TrainConfig, model: RecurrentClassifier, prepared: dict, out: Path) -> dict:
    """NBSVM weights for the n-gram branch (cached in the run folder per C), then the mix on validation (reviews, plus
    one crop of each with `mix_on_crops`); accuracy on the reviews, and of each part alone."""
    from training.ngrams import fit_nbsvm

    mc = model.cfg
    start = time.time()
    pseudo = prepared.get("pseudo")
    cache = out / f"ngram_c{cfg.ngram_c:g}_neg{mc.negation_window}{'_self' if pseudo else ''}.npz"
    if cache.exists():
        saved = np.load(cache)
        weights, intercept = saved["weights"], float(saved["intercept"])
    elif pseudo:
        ids, labels, weight = soft_examples(pseudo)
        train_ids, train_y = prepared["train"]
        weights, intercept = fit_nbsvm(
            list(train_ids) + ids,
            list(train_y) + labels,
            mc,
            cfg.ngram_c,
            sample_weight=np.concatenate([np.ones(len(train_ids)), weight]),
        )
    else:
        weights, intercept = fit_nbsvm(*prepared["train"], mc, cfg.ngram_c)
    if not cache.exists():
        np.savez(cache, weights=weights, intercept=intercept)
    with torch.no_grad():
        model.ngram.weight.copy_(torch.from_numpy(weights)[:, None])
    rnn, ngram, y = predict_parts(model, *prepared["val"])
    if cfg.mix_on_crops:
        crops = predict_parts(model, *validation_crops(prepared, cfg.seed + 1))
        mix = fit_mix(*(torch.cat(pair) for pair in zip((rnn, ngram, y), crops)))
    else:
        mix = fit_mix(rnn, ngram, y)
    model.mix.copy_(torch.tensor(mix))
    combined = mix[0] * (rnn[:, 1] - rnn[:, 0]) + mix[1] * ngram + mix[2]
    return {
        "val_accuracy": ((combined > 0).long() == y).float().mean().item(),
        "mix": mix,
        "ngram_c": cfg.ngram_c,
        "negation_window": mc.negation_window,
        "self_training": bool(pseudo),
        "ngram_intercept": intercept,
        "ngram_fit_seconds": round(time.time() - start, 1),
        "val_accuracy_rnn": (rnn.argmax(1) == y).float().mean().item(),
        "val_loss_rnn": F.cross_entropy(rnn, y).item(),
        "val_accuracy_ngram": ((ngram + intercept > 0).long() == y).float().mean().item(),
    }


def finish(cfg: TrainConfig, model, state, prepared, out: Path) -> dict:
    model.load_state_dict(network_state(state["best_state"]), strict=False)
    extra = fit_branch(cfg, model, prepared, out) if cfg.model.ngram_buckets else {}
    extra.pop("val_accuracy", None)  # measured again below, through the model itself
    logits, y = predict_logits(model, *prepared["val"])
    # With an n-gram branch the mix already calibrates; temperature is then 1.
    temperature = 1.0 if extra else fit_temperature(logits, y)
    probs_raw, probs_cal = logits.softmax(1), (logits / temperature).softmax(1)
    crop_logits, crop_labels = predict_logits(model, *validation_crops(prepared, cfg.seed))
    metrics = {
        "val_accuracy": (logits.argmax(1) == y).float().mean().item(),
        **extra,
        "val_nll_before": F.cross_entropy(logits, y).item(),
        "val_nll_after": F.cross_entropy(logits / temperature, y).item(),
        "ece_before": expected_calibration_error(probs_raw, y),
        "ece_after": expected_calibration_error(probs_cal, y),
        "crop_accuracy": (crop_logits.argmax(1) == crop_labels).float().mean().item(),
        "ece_crops": expected_calibration_error((crop_logits / temperature).softmax(1), crop_labels),
        "temperature": temperature,
        "best_epoch": max(state["history"], key=lambda r: r["val_accuracy"])["epoch"],
        "epochs_run": state["epoch"],
        "train_seconds": round(state["elapsed"], 1),
        "embedding_coverage": prepared["embedding_coverage"],
        "counts": prepared["counts"],
        "history": state["history"],
    }
    state["best_state"] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(
        {
            "model": state["best_state"],
            "model_config": cfg.model,
            "train_config": cfg,
            "tokenizer_json": prepared["tokenizer_json"],
            "metrics": metrics,
        },
        out / "model.pt",
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info(
        "best validation accuracy %.4f (epoch %d); temperature %.3f; ECE %.4f -> %.4f",
        metrics["val_accuracy"],
        metrics["best_epoch"],
        temperature,
        metrics["ece_before"],
        metrics["ece_after"],
    )
    return metrics


# Model fields set from the training config and the vocabulary, not from the command line.
DERIVED_MODEL_FIELDS = ("negation_window", "negation_ids", "scope_break_ids")


def _add_dataclass_args(parser: argparse.ArgumentParser, cls, skip=("model",)) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind if kind in (int, float) else str, default=None)


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    parser = argparse.ArgumentParser(
        prog="sentiment-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_dataclass_args(parser, TrainConfig)
    _add_dataclass_args(parser, ModelConfig, skip=("vocab_size", "num_labels") + DERIVED_MODEL_FIELDS)
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    args = vars(parser.parse_args(argv))
    resume = args.pop("resume")
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(DERIVED_MODEL_FIELDS)
    model = ModelConfig(**{k: v for k, v in args.items() if k in model_fields and v is not None})
    if model.cell not in ("rnn", "lstm", "gru") or model.pooling not in ("last", "mean", "max", "meanmax"):
        parser.error("--cell must be rnn|lstm|gru and --pooling last|mean|max|meanmax")
    cfg = TrainConfig(model=model, **{k: v for k, v in args.items() if k not in model_fields and v is not None})
    if cfg.truncation not in TRUNCATIONS:
        parser.error(f"--truncation must be {'|'.join(TRUNCATIONS)}")
    ckpt_path = Path(cfg.out_dir) / "checkpoint.pt"
    if resume and ckpt_path.exists():
        # Stopping settings not given on the command line stay those of the run being resumed.
        saved = torch.load(ckpt_path, weights_only=False)["train_config"]
        cfg = dataclasses.replace(cfg, **{k: getattr(saved, k) for k in RESUME_OVERRIDES if args.get(k) is None})
    return cfg, resume


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg, resume = parse_config(argv)
    try:
        train(cfg, resume=resume)
    except (DataError, OSError, ValueError) as exc:
        print(f"sentiment-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
