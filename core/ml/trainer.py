"""The training loop as a Trainer with named phases (docs/design.md, "The training loop").

    setup:  find the checkpoint to resume -> seed -> data (the task: split, vocabulary, tensors)
            -> model and optimizer -> resume (weights, optimizer, counters, RNG states)
    fit:    while steps remain: train_step -> ownership check -> train-loss read (divergence) -> progress
            -> evaluate_and_checkpoint (every ``eval_every`` steps and at each epoch end) -> stop checks
    result: TrainResult

What differs between tasks (data, batches, evaluation, the metric) is in ``core.ml.tasks``; the loop's
counters are a ``TrainingState`` (``core.ml.state``). Resuming is exact: N steps, a stop, then N more give
the parameters of 2N straight. In the service, ``callbacks.may_write()`` is asked after every step and
right before a checkpoint's rename, and ``lease_epoch`` scopes checkpoint names (docs/design.md, "One
owner per job").
"""

from __future__ import annotations

import gc
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from core.ml import checkpoint as ckpt
from core.ml.callbacks import Callbacks, CheckpointInfo, MetricPoint, Progress
from core.ml.config import TrainConfig
from core.ml.data import load_texts
from core.ml.device import autocast_for, resolve_device
from core.ml.distributed import Dist, accumulate_gradients
from core.ml.errors import ConfigError, DivergedError, OwnershipLost, Problem
from core.ml.init_from import init_weights, load_init
from core.ml.model import ARCHITECTURE, build_model, set_gradient_checkpointing
from core.ml.optim import ADAM_BETAS, lr_at, param_groups
from core.ml.state import Status, TrainingState, TrainResult, trainer_state_dict
from core.ml.tasks import Task, make_task, training_texts
from core.ml.tokenize import build_tokenizer

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between train-loss reads (.item() syncs a GPU) and train_loss metric points
STOP_POLL_EVERY = 5  # steps between callbacks.should_stop() polls
DIVERGE_FACTOR = 10.0  # train loss above this multiple of the first one ...
DIVERGE_CHECKS = 3  # ... this many LOG_EVERY checks in a row: diverged
# Fields that must match to resume from an existing checkpoint (the rest of `training` may change).
RESUME_FIELDS = ("task", "text_column", "label_column", "tokenizer", "model")
# Text to text's too, compared only for that task (older checkpoints' configs lack them).
RESUME_FIELDS_TEXT_TO_TEXT = ("source_column", "target_column", "target_tokenizer", "shared_vocabulary")


def _weights_view(section: object, task: str) -> object:
    """A config section without the choices that do not change the weights' meaning (a resume may change
    them): ``model.gradient_checkpointing``, and the n-gram bag's fields where there is no bag (another
    task than classification, or ``ngrams`` 0)."""
    if not isinstance(section, dict):
        return section
    skip = {"gradient_checkpointing"}
    if task != "classification" or not section.get("ngrams", 0):
        skip |= {"ngrams", "ngram_buckets"}
    return {k: v for k, v in section.items() if k not in skip}


# The classifier's n-gram table learns at this multiple of training.learning_rate (docs/design.md, "Training
# config and the model"): each of its rows is touched by few examples, as a linear model's weights are.
# Measured with bench/baseline_tfidf.py (README, "Why these defaults"): TREC-6 macro-F1 0.873 at 1x,
# 0.881 at 10x, 0.906 at 30x, 0.910 at 100x; SMS 0.965 at 10x, 0.969 at 30x, 0.984 at 100x.
NGRAM_LR_SCALE = 100.0


def _with_ngram_group(groups: list[dict], model: torch.nn.Module) -> list[dict]:
    """The classifier's n-gram table in a group of its own, at NGRAM_LR_SCALE times the learning rate."""
    bag = getattr(model, "ngram", None)
    if bag is None:
        return groups
    table = {id(p) for p in bag.parameters()}
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in table]
    return [*groups, {"params": list(bag.parameters()), "weight_decay": 0.0, "lr_scale": NGRAM_LR_SCALE}]


class Clock:
    """Training time and tokens seen: evaluations and checkpoint writes are not training time."""

    def __init__(self, step: int) -> None:
        self.start = self.mark = time.monotonic()
        self.start_step = step
        self.train_time, self.tokens = 0.0, 0

    def lap(self) -> None:
        """Count the time since the last mark as training."""
        now = time.monotonic()
        self.train_time += now - self.mark
        self.mark = now

    def restart(self) -> None:
        """Leave the time since the last mark out (it evaluated, or saved)."""
        self.mark = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def tokens_per_second(self) -> float:
        return self.tokens / self.train_time if self.train_time > 0 else 0.0


class Trainer:
    """Trains a model as ``config`` says on the file ``data_path``, writing checkpoints under ``out_dir``.

    ``run()`` is the whole of it; the phases it calls are public so that a reader (or a test) can follow
    one at a time. Arguments as in ``core.ml.train.train``; an unavailable device fails here, at once.
    """

    def __init__(
        self,
        config: TrainConfig,
        data_path: str | Path,
        out_dir: str | Path,
        callbacks: Callbacks | None = None,
        *,
        lease_epoch: int | None = None,
        resume_from: str | Path | None = "latest",
        dist: Dist | None = None,
    ) -> None:
        self.config, self.tc = config, config.training
        self.data_path, self.out_dir = Path(data_path), Path(out_dir)
        # Many processes (docs/design.md, "One job on many processes"): rank 0 alone reports and writes.
        self.dist = dist or Dist()
        self.cb = (callbacks or Callbacks()) if self.dist.is_main else Callbacks()
        self.lease_epoch = lease_epoch
        self.resume_from = resume_from
        self.device = self.dist.device(resolve_device(config.device))
        self.autocast = autocast_for(self.device, self.tc.precision)
        self.state = TrainingState()
        self.status: Status = "completed"
        self.saved: ckpt.SavedRun | None = None  # the checkpoint this run resumed from
        self.init: ckpt.SavedRun | None = None  # init_from's checkpoint, when the run starts afresh
        self.saved_step = -1  # the step of the newest checkpoint on disk
        self.task: Task
        self.model: torch.nn.Module
        self.net: torch.nn.Module  # what trains: the model, or the model in DistributedDataParallel
        self.optimizer: torch.optim.Optimizer
        self.total_steps = self.total_epochs = 0
        self.clock = Clock(0)

    def run(self) -> TrainResult:
        self.setup()
        self.fit()
        return self.result()

    # ---- setup ----

    def setup(self) -> None:
        """Everything before the first step. The order keeps the global RNG's draws those of every earlier
        version (same seed, same numbers): the data first, then the model's initialisation."""
        self.saved = self.find_resume_point()
        if (
            self.saved is None
        ):  # a resumed run has its own weights (docs/design.md, "Subword tokens and init_from")
            self.init = load_init(self.config)
        torch.manual_seed(self.tc.seed)
        random.seed(self.tc.seed)
        np.random.seed(self.tc.seed)
        self.setup_data()
        self.setup_model()
        if self.saved is not None:
            self.resume()

    def find_resume_point(self) -> ckpt.SavedRun | None:
        """The checkpoint ``resume_from`` names ("latest": the newest in ``out_dir``), read and checked."""
        where = ckpt.latest_checkpoint(self.out_dir) if self.resume_from == "latest" else self.resume_from
        if where is None:
            return None
        saved = ckpt.load_checkpoint(where)
        if self.config.task == "classification" and "ngram_buckets" not in saved.config.get("model", {}):
            # saved before the n-gram bag existed (a job queued before an upgrade): it goes on without one
            model = self.config.model.model_copy(update={"ngrams": 0})
            self.config = self.config.model_copy(update={"model": model})
        current = self.config.model_dump(mode="json")
        extra = RESUME_FIELDS_TEXT_TO_TEXT if self.config.task == "text_to_text" else ()
        for key in (*RESUME_FIELDS, *extra):
            task = self.config.task
            if _weights_view(current.get(key), task) != _weights_view(saved.config.get(key), task):
                raise ConfigError(
                    f"{self.out_dir} holds checkpoints trained with a different {key!r} "
                    f"({saved.config.get(key)!r}, now {current.get(key)!r}); use a new output directory, "
                    "or the config it was trained with",
                    problems=[Problem(["config", key], "differs from the checkpoint being resumed")],
                )
        return saved

    def setup_data(self) -> None:
        """Read, tokenize and hand the data to its task (the vocabulary sees the training split only)."""
        data = load_texts(self.data_path, self.config)
        tk = self.config.tokenizer
        source = self.saved or self.init  # its vocabulary (and BPE model) is kept
        vocab = source.vocab if source is not None else None
        tokenizer = build_tokenizer(tk, vocab)
        if tk.kind == "bpe" and vocab is None:  # subwords learned on the training split only
            vocab = tokenizer.fit(
                training_texts(self.config, data), max_vocab=tk.max_vocab, min_freq=tk.min_freq
            )
        token_lists = tokenizer.tokenize(data.texts)
        preset = vocab if self.saved is None else None  # a resumed task takes the checkpoint's itself
        self.task = task = make_task(self.config, data, token_lists, self.device, self.saved, preset)
        spe = task.steps_per_epoch
        self.total_steps = self.tc.max_steps if self.tc.max_steps is not None else self.tc.epochs * spe
        self.total_epochs = math.ceil(self.total_steps / spe)
        info, warnings = task.data_info, [*data.warnings, *task.warnings]
        self.cb.on_event(
            "data_loaded",
            f"{info['train_rows']:,} training and {info['val_rows']:,} validation rows "
            f"({info['skipped_rows']:,} skipped), vocabulary {len(task.vocab):,}",
            {**info, "vocab_size": len(task.vocab), "labels": task.labels, "warnings": warnings},
        )
        # Drop the Python-object copies of the data (millions of strings and ints for a large file): the
        # task's tensors hold all the loop needs, and the cyclic GC would otherwise rescan them for the
        # whole run (measured: ~20% fewer tokens/s on tiny_shakespeare).
        del data, token_lists
        gc.collect()
        for w in warnings:
            self.cb.on_event("warning", w)

    def setup_model(self) -> None:
        """The model (with the resumed checkpoint's weights) and AdamW."""
        task = self.task
        make_model = getattr(task, "make_model", None)  # text to text: two vocabularies (core.ml.tasks)
        if make_model is not None:
            self.model = make_model(self.saved)
        elif self.saved is not None:
            self.model = self.saved.model(self.config, self.device)
        else:
            model = build_model(self.config.task, self.config.model, len(task.vocab), len(task.labels))
            if self.init is not None:
                copied = init_weights(model, self.init, task.labels)
                self.cb.on_event(
                    "initialized",
                    f"{len(copied)} weight tensors from {self.init.path}",
                    {"init_from": str(self.init.path), "tensors": len(copied)},
                )
            self.model = model.to(self.device)
        set_gradient_checkpointing(self.model, self.config.model.gradient_checkpointing)
        self.net = self.dist.wrap(self.model, self.device)
        fused = self.device.type in ("cpu", "cuda")  # one kernel for the whole update, not one per tensor
        self.optimizer = torch.optim.AdamW(
            _with_ngram_group(param_groups(self.model, self.tc.weight_decay), self.model),
            lr=self.tc.learning_rate,
            betas=ADAM_BETAS,
            fused=fused,
        )

    def resume(self) -> None:
        """The optimizer, the counters and the RNG states of the checkpoint found by setup."""
        assert self.saved is not None
        state = ckpt.load_trainer_state(self.saved.path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.state = TrainingState.from_state_dict(state)
        self.task.data_rng.set_state(state["data_rng"])
        ckpt.restore_rng_state(state["rng"])  # last: building the model consumed the global RNG
        self.saved_step = step = self.state.step
        self.cb.on_event("resumed", f"resumed from {self.saved.path.name} at step {step}", {"step": step})

    # ---- the loop ----

    def fit(self) -> None:
        """Train until ``total_steps``, an early stop, a stop request or the time budget."""
        st, spe = self.state, self.task.steps_per_epoch
        st.epoch = min(self.total_epochs, st.step // spe + (1 if st.step % spe else 0))
        self.clock = Clock(st.step)
        self.model.train()
        while st.step < self.total_steps:
            n_tokens = self.train_step()
            self.clock.tokens += n_tokens
            if self.dist.any(not self.cb.may_write())[0]:  # ownership lost (service): stop, write nothing
                raise OwnershipLost(f"stopped at step {st.step}: this run no longer owns its job")
            if st.step % LOG_EVERY == 0 or st.step == self.total_steps:
                self.read_train_loss()
            self.report_progress()
            if self.evaluation_due() and self.evaluate_and_checkpoint():
                break
            if self.stop_requested():
                break

    def train_step(self) -> int:
        """One optimizer step on the task's next batch. Returns the batch's input tokens."""
        st, tc = self.state, self.tc
        epoch_idx = st.step // self.task.steps_per_epoch
        lr = lr_at(st.step, tc.learning_rate, self.warmup_steps(), self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batch = self.task.batch(st.step)  # the global batch; this rank trains on its share, in micro-batches
        loss = accumulate_gradients(
            self.net, batch, self.config.task, self.dist, tc.grad_accum_steps, self.autocast
        )
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.epoch = epoch_idx + 1
        st.loss_sum += loss.detach()  # stays a tensor until the next read: no device sync per step
        st.loss_count += 1
        if st.first_loss is None:  # the reference for divergence: the loss before any update
            st.first_loss = float(self.dist.sum(loss.detach()))
        return batch.tokens

    def warmup_steps(self) -> int:
        """training.warmup_steps; for a classifier at most a quarter of the run, so that a small set's few
        steps are not all warmup (1,000 rows, 87 steps: TREC-6 macro-F1 0.770 with 100, 0.795 with 21;
        waimai 0.824 and 0.850; bench/README.md)."""
        if self.config.task == "classification":
            return min(self.tc.warmup_steps, self.total_steps // 4)
        return self.tc.warmup_steps

    def read_train_loss(self) -> None:
        """The average train loss since the last read: a metric point, and the divergence checks."""
        st, lr = self.state, self.tc.learning_rate
        st.train_loss = float(self.dist.sum(st.loss_sum)) / st.loss_count  # the ranks' parts of each loss
        st.loss_sum, st.loss_count = 0.0, 0
        if not math.isfinite(st.train_loss):
            raise DivergedError(
                f"training diverged at step {st.step}: the loss became {st.train_loss}; lower "
                f"training.learning_rate (now {lr:g}), e.g. to {lr / 10:g}",
                step=st.step,
            )
        assert st.first_loss is not None
        st.high_loss_checks = st.high_loss_checks + 1 if st.train_loss > DIVERGE_FACTOR * st.first_loss else 0
        if st.high_loss_checks >= DIVERGE_CHECKS:
            raise DivergedError(
                f"training diverged at step {st.step}: the loss is {st.train_loss:.4g}, over "
                f"{DIVERGE_FACTOR:g}x its first value {st.first_loss:.4g}; lower training.learning_rate "
                f"(now {lr:g}), e.g. to {lr / 10:g}",
                step=st.step,
            )
        self.cb.on_metrics([MetricPoint(st.step, st.epoch, "train", "loss", st.train_loss)])

    def report_progress(self) -> None:
        st, clock = self.state, self.clock
        clock.lap()
        eta = (self.total_steps - st.step) * clock.train_time / (st.step - clock.start_step)
        percent = round(100 * (st.step / self.total_steps), 2)
        self.cb.on_progress(
            Progress(
                st.step,
                self.total_steps,
                st.epoch,
                self.total_epochs,
                percent,
                eta,
                clock.tokens_per_second(),
                st.train_loss,
            )
        )

    # ---- evaluation and checkpoints ----

    def evaluation_due(self) -> bool:
        step, every = self.state.step, self.tc.eval_every
        return (
            step % self.task.steps_per_epoch == 0
            or bool(every and step % every == 0)
            or step == self.total_steps
        )

    def evaluate_and_checkpoint(self) -> bool:
        """Evaluate, record the best, save a checkpoint. Returns True when early stopping ends the run."""
        st, metric = self.state, self.task.metric
        st.last_val = self.task.evaluate(self.model, self.autocast)
        if not math.isfinite(st.last_val["val_loss"]):
            raise DivergedError(
                f"training diverged at step {st.step}: the validation loss is {st.last_val['val_loss']}; "
                f"lower training.learning_rate (now {self.tc.learning_rate:g})",
                step=st.step,
            )
        points = [MetricPoint(st.step, st.epoch, "val", k[4:], v) for k, v in st.last_val.items()]
        points.append(
            MetricPoint(st.step, st.epoch, "train", "tokens_per_second", self.clock.tokens_per_second())
        )
        self.cb.on_metrics(points)
        value = st.last_val[metric]
        is_best = self.update_best(value)
        metrics = st.metrics()
        self.cb.on_event("evaluation", f"step {st.step}: {metric} {value:.4f}", {"step": st.step, **metrics})
        if st.step % self.task.steps_per_epoch == 0:
            self.cb.on_event(
                "epoch_end",
                f"epoch {st.epoch} ended at step {st.step}",
                {"epoch": st.epoch, "step": st.step, **metrics},
            )
        self.save(is_best, metrics)
        patience = self.tc.early_stopping_patience
        if patience and st.evals_since_best >= patience and st.step < self.total_steps:
            assert st.best is not None
            self.status = "early_stopped"
            self.cb.on_event(
                "early_stop",
                f"no improvement of {metric} in {st.evals_since_best} evaluations; "
                f"best {st.best['value']:.4f} at step {st.best['step']}",
                {"step": st.step, "best": st.best},
            )
            return True
        self.clock.restart()  # evaluation and saving are not training time
        return False

    def update_best(self, value: float) -> bool:
        """Whether ``value`` of the task's metric is the best so far (then it becomes ``state.best``)."""
        st, task = self.state, self.task
        best = st.best
        if best is not None and not (
            value > best["value"] if task.higher_is_better else value < best["value"]
        ):
            st.evals_since_best += 1
            return False
        checkpoint = ckpt.checkpoint_name(st.step, self.lease_epoch)
        st.best = {"step": st.step, "metric": task.metric, "value": value, "checkpoint": checkpoint}
        st.evals_since_best = 0
        return True

    def save(self, is_best: bool, metrics: dict[str, float]) -> CheckpointInfo | None:
        """Write a checkpoint of this step (atomically; ``may_write`` is asked before its rename). Rank 0
        writes; the other ranks hold the same weights and resume from what it wrote."""
        st, task = self.state, self.task
        if not self.dist.is_main:
            self.saved_step = st.step
            return None
        trainer_state = trainer_state_dict(
            st,
            optimizer=self.optimizer.state_dict(),
            # The schedule is a pure function of the step (lr_at); recorded for a reader, not restored.
            scheduler={
                "kind": "warmup_cosine",
                "warmup_steps": self.warmup_steps(),
                "total_steps": self.total_steps,
            },
            data_rng=task.data_rng.get_state(),
            rng=ckpt.capture_rng_state(),
        )
        meta = {
            "task": self.config.task,
            "labels": task.labels,
            "vocab_size": len(task.vocab),
            "architecture": ARCHITECTURE,
        }
        info = ckpt.save_checkpoint(
            self.out_dir,
            step=st.step,
            epoch=st.epoch,
            model_state=self.model.state_dict(),
            vocab=task.vocab.to_dict(),
            config=self.config.model_dump(mode="json"),
            meta=meta,
            trainer_state=trainer_state,
            metrics=metrics,
            is_best=is_best,
            best_name=st.best["checkpoint"] if st.best else None,
            lease_epoch=self.lease_epoch,
            may_commit=self.cb.may_write,
        )
        self.cb.on_checkpoint(info)
        self.saved_step = st.step
        return info

    # ---- stop checks and the result ----

    def stop_requested(self) -> bool:
        """A cooperative stop or the wall-clock budget: both leave a checkpoint to resume from."""
        st, limit = self.state, self.tc.max_time_seconds
        stop = st.step % STOP_POLL_EVERY == 0 and self.cb.should_stop()
        over_time = limit is not None and self.clock.elapsed() > limit
        stop, over_time = self.dist.any(stop, over_time)  # rank 0's stop and any rank's clock reach all
        if not (stop or over_time) or st.step >= self.total_steps:
            return False
        self.status = "stopped" if stop else "time_limit"
        if over_time:
            self.cb.on_event("time_limit", f"training.max_time_seconds ({limit:g}) spent at step {st.step}")
        if self.saved_step != st.step:
            self.save(False, st.metrics())
        return True

    def result(self) -> TrainResult:
        st = self.state
        final = st.metrics()
        if self.saved is not None and not st.last_val:  # resumed a finished run: its last evaluation
            final = {**self.saved.meta.get("metrics", {}), **final}
        best_path = (
            ckpt.checkpoints_root(self.out_dir) / st.best["checkpoint"]
            if st.best
            else ckpt.latest_checkpoint(self.out_dir)
        )
        return TrainResult(
            status=self.status,
            steps=st.step,
            epoch=st.epoch,
            metrics=final,
            best=st.best,
            tokens_per_second=self.clock.tokens_per_second(),
            data=self.task.data_info,
            checkpoint=str(best_path.resolve()) if best_path else None,
        )
