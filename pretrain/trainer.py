"""The training loop: one-epoch data, a schedule multiplier per optimizer step, callbacks around it.

Resume and branching share one path: load a checkpoint (weights, optimizer, loader position,
RNG) and continue at its step. Resume continues the same run directory; ``init.checkpoint``
starts a new run directory from another run's checkpoint (a branch). What either may change is
checked first (``pretrain.resume``). Each step ends in one agreement of all ranks, before the step
is applied (``pretrain.guard``): non-finite values, stop signals, time-based checkpoints.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pretrain import checkpoint as ckpt_io
from pretrain import guard, resume
from pretrain.budget import total_steps_of
from pretrain.config import ConfigError, TrainConfig, save_config, to_dict
from pretrain.data import DataError, OneEpochLoader, TokenData, eval_batches
from pretrain.engines import make_engine
from pretrain.engines.base import group_hyperparameters, world_info
from pretrain.metrics import MetricsLogger, gpu_peak_flops, read_metrics, truncate_metrics
from pretrain.model import build_model, count_params, flops_per_token, resolve_vocab_size
from pretrain.schedules import lr_multiplier


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _attn_impl(cfg: TrainConfig) -> str:
    if cfg.model.attn_impl != "auto":
        return cfg.model.attn_impl
    return "sdpa"


class Callback:
    """Hooks the loop calls; subclasses override what they need."""

    def on_step_end(self, trainer: "Trainer", step: int) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...


@dataclass
class Evaluate(Callback):
    every: int

    def on_step_end(self, trainer, step):
        if self.every and step % self.every == 0 and step != trainer.stop_step:
            trainer.evaluate()

    def on_train_end(self, trainer):
        if trainer.last_eval_step != trainer.step:
            trainer.evaluate()


@dataclass
class Checkpoint(Callback):
    every: int
    save_final: bool
    at_steps: tuple[int, ...] = ()

    def on_step_end(self, trainer, step):
        due = (self.every and step % self.every == 0) or step in self.at_steps
        if due and step != trainer.stop_step and trainer.last_ckpt_step != step:
            trainer.save_checkpoint()

    def on_train_end(self, trainer):
        if self.save_final and trainer.last_ckpt_step != trainer.step:
            trainer.save_checkpoint()


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    final_val_loss: float
    checkpoint: Path | None
    metrics: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        # The saved config must work from any directory: make its paths absolute.
        cfg.data.manifest = str(Path(cfg.data.manifest).resolve()) if cfg.data.manifest else ""
        if cfg.dist.deepspeed_config:
            cfg.dist.deepspeed_config = str(Path(cfg.dist.deepspeed_config).resolve())
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.data = TokenData(cfg.data.manifest)
        self.vocab_size = resolve_vocab_size(cfg.model, self.data.vocab_size)
        self.total_steps = total_steps_of(cfg)
        self.stop_step = self.total_steps if cfg.budget.stop_at is None else cfg.budget.stop_at
        if not 0 < self.stop_step <= self.total_steps:
            raise ConfigError(f"budget.stop_at {cfg.budget.stop_at} must be in [1, {self.total_steps}] (the budget in steps)")
        _, _, world = world_info()
        b = cfg.budget
        if b.global_batch_size % (b.micro_batch_size * world):
            raise ConfigError(f"budget.global_batch_size {b.global_batch_size} must be a multiple of "
                              f"budget.micro_batch_size {b.micro_batch_size} x {world} processes")
        self.accum_steps = b.global_batch_size // (b.micro_batch_size * world)
        # One-epoch check before any process group or model exists: fail fast and cheaply.
        probe = OneEpochLoader(self.data, seq_len=cfg.data.seq_len, global_batch_size=b.global_batch_size,
                               micro_batch_size=b.micro_batch_size, world_size=world, seed=cfg.data.seed,
                               order=cfg.data.order)
        probe.check_budget(self.total_steps)
        del probe
        if self.data.num_sequences("val", cfg.data.seq_len) == 0:
            raise DataError(f"{self.data.path}: the validation split holds {self.data.num_tokens('val')} tokens, less "
                            f"than one sequence of {cfg.data.seq_len}; re-tokenize with a larger val_fraction")

        seed_everything(cfg.seed)
        data = self.data

        def model_fn(device):
            seed_everything(cfg.seed)
            return build_model(cfg.model, self.vocab_size, device=device, attn_impl=_attn_impl(cfg),
                               eos_id=data.eos_id, bos_id=data.bos_id, pad_id=data.pad_id)

        self.engine = make_engine(cfg, model_fn, self.accum_steps)
        self.rank, self.world_size = self.engine.rank, self.engine.world_size
        self.is_main = self.rank == 0
        self.ckpt_root = self.run_dir / "checkpoints"
        ledger = self.run_dir / "ledger" / f"rank-{self.rank:05d}.jsonl" if cfg.data.ledger else None
        self.loader = OneEpochLoader(data, seq_len=cfg.data.seq_len, global_batch_size=b.global_batch_size,
                                     micro_batch_size=b.micro_batch_size, rank=self.rank,
                                     world_size=self.world_size, seed=cfg.data.seed, order=cfg.data.order,
                                     ledger_path=ledger)
        self.step = 0
        self.skipped_steps = 0  # steps whose non-finite values were dropped (optim.skip_nonfinite)
        self.last_eval_step = -1
        self.last_ckpt_step = -1
        self._last_save_time = time.monotonic()
        self.final_val_loss = float("nan")
        model = self.engine.unwrapped
        self.n_params = count_params(model)
        self.n_params_non_emb = count_params(model, exclude_embeddings=True)
        self.flops_per_token = flops_per_token(cfg.model, self.n_params_non_emb, cfg.data.seq_len)
        self.peak_flops = gpu_peak_flops(cfg.dist.gpu_peak_flops) * self.world_size
        self._val = None
        self.logger: MetricsLogger | None = None

    # ------------------------------------------------------------------ state

    def _source(self) -> tuple[Path | None, bool]:
        """The checkpoint to continue from (verified) and whether it is a resume of this run."""
        cfg = self.cfg
        if cfg.checkpoint.resume == "auto":
            src = self._newest_verified()
            if src is not None:
                return src, True
        elif cfg.checkpoint.resume not in ("", "none"):
            return self._verified(ckpt_io.resolve(cfg.checkpoint.resume)), True
        else:
            existing = sorted(self.ckpt_root.glob(f"{ckpt_io.CKPT_PREFIX}*")) if self.ckpt_root.is_dir() else []
            if existing:
                raise ConfigError(f"{self.run_dir} already holds checkpoints ({existing[-1].name}); continue it with "
                                  "checkpoint.resume=auto or start in a new run_dir")
        if cfg.init.checkpoint:
            return self._verified(ckpt_io.resolve(cfg.init.checkpoint)), False
        return None, False

    def _restore(self) -> None:
        cfg = self.cfg
        src, is_resume = self._source()
        if src is None:
            return
        state = ckpt_io.read_trainer_state(src)
        load_opt = True if is_resume else cfg.init.load_optimizer
        load_data = True if is_resume else cfg.init.load_data_state
        # every refusal comes before anything is loaded
        if int(state["step"]) > self.total_steps:
            raise ConfigError(f"checkpoint {src} is at step {state['step']}, past this run's budget of {self.total_steps} steps")
        if load_data:  # checks the data, order and position first (sets only the loader's counter)
            self.loader.load_state(state["loader"])
        if load_opt:
            resume.check_engine(self.engine.name, state, src)
            resume.check_world_size(self.engine.name, state, self.world_size, src)
        notes = []
        if is_resume:
            notes.append(resume.check_schedule(cfg, state, self.total_steps, src))
        if not load_data:
            resume.check_data_state(cfg, state, self.data.fingerprint, src)
        self.engine.load(src, load_optimizer=load_opt)
        if load_opt:
            changed = resume.apply_hyperparameters(self.engine.optimizer_groups, group_hyperparameters(cfg))
            if changed:
                notes.append("optimizer hyper-parameters differ from the checkpoint's; using the configured ones: "
                             + "; ".join(changed))
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0)) if is_resume else 0
        saved_world = int(state.get("world_size", self.world_size))
        ckpt_io.load_rng(src, self.rank, saved_world)
        if saved_world != self.world_size:
            notes.append(f"world size {saved_world} -> {self.world_size}: rank r continues the random state of rank "
                         f"r mod {saved_world}")
        if is_resume:
            self.last_ckpt_step = self.step
            if any(r["step"] == self.step for r in read_metrics(self.run_dir / "metrics.jsonl", "eval")):
                self.last_eval_step = self.step
        self.loader.truncate_ledger(self.step)
        if self.is_main:
            for note in filter(None, notes):
                print(f"pretrain: {note}", flush=True)
            print(f"{'resumed' if is_resume else 'initialised'} from {src} at step {self.step}", flush=True)

    def _problem(self, src: Path) -> str | None:
        """Verify ``src`` with every rank checking its share of the files; the first problem, agreed by all."""
        try:
            info = ckpt_io.read_listing(src)
            found = ckpt_io.problems(src, ckpt_io.share(info["files"], self.rank, self.world_size))
        except ckpt_io.CheckpointError as e:
            found = [str(e)]
        return next((p for part in self.engine.gather(found) for p in part), None)

    def _verified(self, src: Path) -> Path:
        problem = self._problem(src)
        if problem is not None:
            raise ckpt_io.CheckpointError(problem)
        return src

    def _newest_verified(self) -> Path | None:
        """``resume=auto``: the newest checkpoint that verifies, naming every newer one skipped and why."""
        candidates, skipped = ckpt_io.resume_candidates(self.ckpt_root)
        found = None
        for src in candidates:
            problem = self._problem(src)
            if problem is None:
                found = src
                break
            skipped.append(problem)
        if skipped and found is None:
            raise ckpt_io.CheckpointError(
                f"no checkpoint in {self.ckpt_root} verifies ({'; '.join(skipped)}); resume from a good copy with "
                "checkpoint.resume=PATH, or start over in a new run_dir")
        if self.is_main:
            for problem in skipped:
                print(f"pretrain: resume=auto skips a checkpoint: {problem}", flush=True)
        return found

    def save_checkpoint(self) -> Path:
        """Every rank writes and hashes its own files; rank 0 writes the listing last, renames, moves ``latest``.

        Weights that are not finite on any rank are never written: the run stops instead.
        """
        bad = int(self.engine.sum(torch.tensor([0.0 if self.engine.weights_finite() else 1.0]))[0])
        if bad:
            raise guard.NonFiniteError(
                f"the weights at step {self.step} are not finite on {bad} rank(s); no checkpoint was written (the last "
                f"is {self._last_checkpoint()}). Lower optim.lr or raise schedule.warmup_steps, and resume from it with "
                "checkpoint.resume=auto")
        tmp = self.ckpt_root / f".tmp-{ckpt_io.step_dir_name(self.step)}"
        if self.is_main:
            ckpt_io.begin(self.ckpt_root, self.step)
        self.engine.barrier()
        written = self.engine.save(tmp) + [ckpt_io.write_rng(tmp, self.rank)]
        if self.is_main:
            state = {"step": self.step, "total_steps": self.total_steps, "world_size": self.world_size,
                     "global_batch_size": self.cfg.budget.global_batch_size, "skipped_steps": self.skipped_steps,
                     "loader": self.loader.state().to_dict(), "engine": self.engine.name,
                     "schedule": to_dict(self.cfg.schedule), "lr_mult": self._mult(max(self.step - 1, 0))}
            (tmp / "trainer.json").write_text(json.dumps(state, indent=1))
            save_config(self.cfg, tmp / "config.yaml")
            written += ["trainer.json", "config.yaml"]
        listing = self.engine.gather(ckpt_io.hash_files(tmp, written, self.rank))
        final = self.ckpt_root / ckpt_io.step_dir_name(self.step)
        if self.is_main:
            ckpt_io.finalize(self.ckpt_root, tmp, self.step, self.cfg.checkpoint.keep_last,
                             tuple(self.cfg.checkpoint.at_steps), listing=[e for part in listing for e in part])
        self.engine.barrier()  # nobody leaves (or exits on a signal) before the checkpoint is in place
        self.last_ckpt_step = self.step
        self._last_save_time = time.monotonic()
        return final

    def _last_checkpoint(self) -> str:
        pointer = self.ckpt_root / "latest"
        return str(self.ckpt_root / pointer.read_text().strip()) if pointer.is_file() else "none"

    # ------------------------------------------------------------------ loop

    def _mult(self, step: int) -> float:
        s = self.cfg.schedule
        return lr_multiplier(s.name, step, self.total_steps, **s.kwargs())

    @torch.no_grad()
    def evaluate(self) -> float:
        if self._val is None:
            self._val = eval_batches(self.data, seq_len=self.cfg.data.seq_len,
                                     micro_batch_size=self.cfg.budget.micro_batch_size,
                                     max_batches=self.cfg.eval.batches, rank=self.rank, world_size=self.world_size)
        model = self.engine.model
        model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        for tokens, counted in self._val:
            tokens = tokens.to(self.engine.device)
            loss = model(input_ids=tokens, labels=tokens).loss.double().cpu()
            n = tokens.shape[0] * (tokens.shape[1] - 1) if counted else 0
            total += torch.stack([loss * n, torch.tensor(float(n), dtype=torch.float64)])
        model.train()
        total = self.engine.sum(total).cpu()
        self.final_val_loss = float(total[0] / total[1])
        self.last_eval_step = self.step
        self.log({"type": "eval", "step": self.step, "tokens": self.loader.state().tokens_consumed,
                  "val_loss": self.final_val_loss})
        return self.final_val_loss

    def _save_due(self) -> bool:
        minutes = self.cfg.checkpoint.every_minutes
        return minutes > 0 and time.monotonic() - self._last_save_time >= 60 * minutes

    def _train_step(self, stops: guard.StopSignals) -> guard.Verdict:
        """Forward and backward over this rank's micro-batches, the ranks' agreement, then the optimizer step
        (or, for non-finite values, no step: stop, or skip and count it)."""
        t0 = time.perf_counter()
        mult = self._mult(self.step)
        lr = self.cfg.optim.lr * mult
        self.engine.set_lr(lr)
        micro_batches = self.loader.next_batch()
        losses = [self.engine.forward_backward(mb, 1.0 / self.accum_steps, sync=(i == self.accum_steps - 1))
                  for i, mb in enumerate(micro_batches)]
        local = torch.stack(losses).mean()
        norm = self.engine.grad_norm()
        verdict = guard.agree(self.engine, local, norm, stops.received, self._save_due())
        problem = guard.where_nonfinite(self.engine, local, norm) if verdict.nonfinite else None
        if problem is None:
            norm = self.engine.optimizer_step(norm)
            if not math.isfinite(norm):  # DeepSpeed checks the norm inside its step, and did not apply this one
                problem = f"non-finite gradient norm ({norm}), found by DeepSpeed before its step"
        elif self.cfg.optim.skip_nonfinite:
            self.engine.skip_step()
        self.step += 1
        if problem is not None:
            self._nonfinite(problem)
        dt = time.perf_counter() - t0
        tok_s = self.loader.tokens_per_step / dt
        record = {"type": "train", "step": self.step, "tokens": self.loader.state().tokens_consumed,
                  "loss": verdict.loss, "lr": lr, "lr_mult": mult, "grad_norm": norm, "tokens_per_s": tok_s, "time": dt}
        if self.peak_flops:
            record["mfu"] = tok_s * self.flops_per_token / self.peak_flops
        if problem is not None:
            record["skipped"] = True
        if self.step % self.cfg.logging.log_every == 0 or self.step == self.stop_step or problem is not None:
            self.log(record)
        return verdict

    def _nonfinite(self, problem: str) -> None:
        """Stop (the default) or count the skipped step; either way nothing non-finite was applied."""
        if not self.cfg.optim.skip_nonfinite:
            raise guard.NonFiniteError(
                f"step {self.step}: {problem}; the step was not applied and nothing was saved after it (the last "
                f"checkpoint is {self._last_checkpoint()}). Lower optim.lr or raise schedule.warmup_steps, or skip "
                "such steps with optim.skip_nonfinite=true (then resume with checkpoint.resume=auto)")
        self.skipped_steps += 1
        if self.is_main:
            print(f"pretrain: step {self.step}: {problem}; step skipped ({self.skipped_steps} so far, "
                  "optim.skip_nonfinite)", flush=True)

    def log(self, record: dict) -> None:
        if self.logger is not None:
            self.logger.log(record)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.engine.barrier()
        self._restore()
        self.engine.barrier()
        if self.is_main:  # records past the starting step belong to a lost or an earlier attempt
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        if self.is_main:
            print(f"model {cfg.model.family}: {self.n_params:,} parameters ({self.n_params_non_emb:,} non-embedding), "
                  f"{self.flops_per_token:.3g} training FLOPs/token; engine {self.engine.name} x{self.world_size}, "
                  f"{self.engine.precision}; budget {self.total_steps} steps x {self.loader.tokens_per_step:,} tokens "
                  f"= {self.total_steps * self.loader.tokens_per_step:,} tokens of "
                  f"{self.loader.num_sequences * cfg.data.seq_len:,} in one epoch", flush=True)
        self.logger = MetricsLogger(self.run_dir, enabled=self.is_main, total_steps=self.stop_step,
                                    start_step=self.step, wandb_mode=cfg.logging.wandb_mode,
                                    wandb_project=cfg.logging.wandb_project, config=to_dict(cfg),
                                    progress=cfg.logging.progress)
        callbacks: list[Callback] = [Evaluate(cfg.eval.every), Checkpoint(cfg.checkpoint.every, cfg.checkpoint.save_final,
                                                                     tuple(cfg.checkpoint.at_steps))]
        try:
            with guard.StopSignals() as stops:
                while self.step < self.stop_step:
                    verdict = self._train_step(stops)
                    stop = verdict.stop_reason(self.world_size) if self.step != self.stop_step else None
                    if stop:  # the grace period is for the checkpoint: it comes before an evaluation due now
                        if self.is_main:
                            print(f"pretrain: {stop}: saving the checkpoint of step {self.step}, then stopping", flush=True)
                        self.save_checkpoint()
                    for cb in callbacks:
                        cb.on_step_end(self, self.step)
                    if self.step == self.stop_step:
                        break
                    if verdict.save_due and self.last_ckpt_step != self.step:
                        self.save_checkpoint()
                    if stop:
                        raise guard.Preempted(stop, self.step, self.ckpt_root / ckpt_io.step_dir_name(self.step))
                # at the end the checkpoint comes first: an evaluation can never cost the trained model
                for cb in reversed(callbacks):
                    cb.on_train_end(self)
        finally:
            self.logger.close()
        result = TrainResult(self.run_dir, self.step, self.loader.state().tokens_consumed, self.final_val_loss,
                             ckpt_io.latest(self.ckpt_root) if self.ckpt_root.exists() else None)
        if self.is_main:
            summary = {"step": result.step, "tokens": result.tokens, "final_val_loss": result.final_val_loss,
                       "skipped_steps": self.skipped_steps,
                       "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                       "n_params": self.n_params, "flops_per_token": self.flops_per_token}
            ckpt_io.atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        self.engine.barrier()
        return result


def train(cfg: TrainConfig) -> TrainResult:
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.engine.close()

