"""Character language model on tiny Shakespeare: jobformer against karpathy/nanoGPT's own ``train.py``.

nanoGPT runs as a separate process, from a scratch copy outside this repository (its code never enters
it), with the CPU command of its README::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

plus ``--always_save_checkpoint=True`` (its final weights are then on disk whatever its noisy estimate
said; the writes happen in its evaluation steps, which are not timed). Then jobformer trains the same model
size (``core.ml.train.train``, as in bench/lm_shakespeare.py) in this process, back to back, evaluating
every ``--eval-every`` steps, and the script prints:

- nanoGPT: tokens/s (its own per-iteration times, evaluation iterations left out), the training seconds of
  its N steps, its wall seconds, its final val loss (its estimate on 20 random batches) and the loss of its
  final checkpoint on jobformer's fixed validation windows (a small script run by a separate process in the
  scratch folder, with nanoGPT's model.py);
- jobformer: tokens/s, and the training seconds until its validation loss first reaches nanoGPT's
  final-checkpoint loss on those same windows (and its estimate);
- the ratios: fp32 tokens/s jobformer / nanoGPT, and time to nanoGPT's loss / nanoGPT's N-step time.

Get nanoGPT with ``git clone https://github.com/karpathy/nanoGPT``; nothing is downloaded: the scratch
copy's data/shakespeare_char/input.txt is written from ../shared/data before its prepare.py runs (a stub
``requests`` module next to it fails any download). Usage::

    python bench/nanogpt_side.py --nanogpt PATH [--steps 2000] [--eval-every 100] [--threads N]
                                 [--precision auto|fp32|bf16] [--jobformer-first | --concurrent]
                                 [--jobformer-steps N] [--jobformer-lr X] [--quick] [--json]
    python bench/nanogpt_side.py --target 1.90 ...   # jobformer only, against a given loss

See bench/README.md for how each number is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):  # core.ml and bench/lm_shakespeare.py, run as a script from anywhere
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from core.ml.threads import set_cpu_thread_defaults  # noqa: E402

# What `jobformer train` does before torch loads (a short OpenMP spin, unless the user chose one). nanoGPT's
# process inherits this environment: both sides run with the same OpenMP settings.
USER_SPIN = os.environ.get("GOMP_SPINCOUNT")
set_cpu_thread_defaults()

import torch  # noqa: E402
from lm_shakespeare import BATCH, CONTEXT, DATA, LR, run_jobformer  # noqa: E402

TOKENS_PER_STEP = BATCH * CONTEXT
NANOGPT_FILES = (
    "train.py",
    "model.py",
    "configurator.py",
    "config/train_shakespeare_char.py",
    "data/shakespeare_char/prepare.py",
)
ITER_LINE = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
CONFIG_EVAL_INTERVAL = 250  # config/train_shakespeare_char.py's
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")

NO_DOWNLOAD = '''"""Stands in for the requests package while nanoGPT's prepare.py runs: the data is already here."""


def get(*args, **kwargs):
    raise RuntimeError("nanogpt_side.py: prepare.py tried to download; input.txt should have been written")
'''

# Run by a separate Python process in the scratch folder, next to nanoGPT's model.py: the loss of its
# final checkpoint on jobformer's validation windows (val.bin is the same last 10% of the same characters:
# the first int(0.9 * n) tokens train, on both sides), T + 1 tokens at stride T, in batches of 64.
FIXED_EVAL = """
import json, sys
import numpy as np
import torch
from model import GPT, GPTConfig

ckpt = torch.load("out-shakespeare-char/ckpt.pt", map_location="cpu", weights_only=False)
model = GPT(GPTConfig(**ckpt["model_args"]))
state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
model.load_state_dict(state)
model.eval()
T = ckpt["model_args"]["block_size"]
val = torch.from_numpy(np.fromfile("data/shakespeare_char/val.bin", dtype=np.uint16).astype(np.int64))
starts = torch.arange(0, len(val) - T, T)
windows = val[starts[:, None] + torch.arange(T + 1)]
total = 0.0
with torch.no_grad():
    for i in range(0, len(windows), 64):
        w = windows[i : i + 64]
        _, loss = model(w[:, :-1].contiguous(), w[:, 1:].contiguous())
        total += float(loss) * len(w)
print(json.dumps({"iter_num": ckpt["iter_num"], "val_loss": total / len(windows), "windows": len(windows)}))
"""


def scratch_copy(nanogpt: Path, scratch: Path, data: Path) -> dict:
    """nanoGPT's files in ``scratch``, its data prepared there from ``data`` (no download)."""
    missing = [f for f in NANOGPT_FILES if not (nanogpt / f).is_file()]
    if missing:
        raise SystemExit(
            f"{nanogpt} is not a nanoGPT checkout (missing {', '.join(missing)}); get one with "
            "`git clone https://github.com/karpathy/nanoGPT`"
        )
    for f in NANOGPT_FILES:
        (scratch / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nanogpt / f, scratch / f)
    folder = scratch / "data" / "shakespeare_char"
    shutil.copyfile(data, folder / "input.txt")
    (folder / "requests.py").write_text(NO_DOWNLOAD)  # first on prepare.py's sys.path: its folder
    proc = subprocess.run(
        [sys.executable, "prepare.py"], cwd=folder, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT's prepare.py failed:\n{proc.stdout}\n{proc.stderr}")
    m = re.search(r"train has ([\d,]+) tokens\nval has ([\d,]+) tokens", proc.stdout)
    if not m or not all((folder / f).is_file() for f in ("train.bin", "val.bin", "meta.pkl")):
        raise SystemExit(f"nanoGPT's prepare.py did not write train.bin/val.bin/meta.pkl:\n{proc.stdout}")
    return {"train_tokens": int(m[1].replace(",", "")), "val_tokens": int(m[2].replace(",", ""))}


def nanogpt_command(steps: int, eval_interval: int) -> list[str]:
    cmd = [
        sys.executable,
        "-u",  # unbuffered: each line is timestamped as it is printed
        "train.py",
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--eval_iters=20",
        "--log_interval=1",
        "--block_size=64",
        "--batch_size=12",
        "--n_layer=4",
        "--n_head=4",
        "--n_embd=128",
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        "--dropout=0.0",
        "--always_save_checkpoint=True",
    ]
    if eval_interval != CONFIG_EVAL_INTERVAL:
        cmd.append(f"--eval_interval={eval_interval}")
    return cmd


def parse_log(lines: list[tuple[float, str]], steps: int, eval_interval: int) -> dict:
    """nanoGPT's numbers from its log lines (each with the seconds since launch it was read at).

    "iter N: ... time Y ms" is the wall time of iteration N on its own clock, from the end of iteration
    N - 1: it includes the evaluation (and checkpoint write) that iteration N starts with when
    N % eval_interval == 0. Those iterations and iteration 0 are left out of tokens/s; iteration ``steps``
    is the extra one nanoGPT runs after its last evaluation, left out too.
    """
    iters: dict[int, tuple[float, float]] = {}
    evals: list[dict] = []
    for t, line in lines:
        if m := ITER_LINE.match(line):
            iters[int(m[1])] = (float(m[2]), float(m[3]) / 1000)
        elif m := EVAL_LINE.match(line):
            evals.append({"step": int(m[1]), "train_loss": float(m[2]), "val_loss": float(m[3]), "wall": t})
    plain = [dt for n, (_, dt) in iters.items() if 0 < n < steps and n % eval_interval]
    if not plain or not evals or evals[-1]["step"] != steps:
        raise SystemExit(
            "nanoGPT's log has no final evaluation or no timed steps:\n" + "\n".join(lines_of(lines))
        )
    step_s = sum(plain) / len(plain)
    # Evaluation time: what each evaluating iteration took beyond a plain one (its last included).
    eval_s = sum(dt - step_s for n, (_, dt) in iters.items() if n % eval_interval == 0 and n <= steps)
    return {
        "steps": steps,
        "tokens_per_second": TOKENS_PER_STEP / step_s,
        "steps_timed": len(plain),
        "train_seconds": steps * step_s,  # its N steps at its mean step time, evaluations excluded
        "own_clock_seconds": sum(dt for n, (_, dt) in iters.items() if n < steps),
        "wall_seconds": evals[-1]["wall"],  # launch to its last evaluation's line
        "eval_seconds": eval_s,
        "val_loss": evals[-1]["val_loss"],
        "train_loss": evals[-1]["train_loss"],
        "evals": evals,
    }


def lines_of(lines: list[tuple[float, str]]) -> list[str]:
    return [line for _, line in lines[-30:]]


def run_nanogpt(scratch: Path, steps: int, eval_interval: int, threads: int) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads; nanoGPT sets none itself
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        nanogpt_command(steps, eval_interval),
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    if proc.wait() != 0:
        raise SystemExit(f"nanoGPT's train.py exited {proc.returncode}:\n" + "\n".join(lines_of(lines)))
    return parse_log(lines, steps, eval_interval)


def evaluate_checkpoint(scratch: Path, threads: int) -> dict:
    """nanoGPT's final checkpoint on jobformer's fixed windows, by a separate process (FIXED_EVAL)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    fixed = subprocess.run(
        [sys.executable, "-c", FIXED_EVAL], cwd=scratch, env=env, capture_output=True, text=True, timeout=600
    )
    if fixed.returncode != 0:
        raise SystemExit(f"evaluating nanoGPT's checkpoint failed:\n{fixed.stderr[-3000:]}")
    return json.loads(fixed.stdout.strip().splitlines()[-1])


def time_to(evals: list[dict], target: float) -> dict | None:
    """The first of jobformer's evaluations at or below ``target``, with its training seconds scaled from
    steps 2..s to s steps (nanoGPT's are its mean step time x N: neither counts a first step's warm-up),
    and "interpolated_seconds": where the line between it and the evaluation before crosses ``target``."""
    before = None
    for e in evals:
        if e["val_loss"] <= target:
            s = e["step"]
            scaled = e["train_seconds"] * s / max(1, s - 1)
            interpolated = scaled
            if before is not None:
                b = before["train_seconds"] * before["step"] / max(1, before["step"] - 1)
                f = (before["val_loss"] - target) / (before["val_loss"] - e["val_loss"])
                interpolated = b + f * (scaled - b)
            return {**e, "train_seconds_scaled": scaled, "interpolated_seconds": interpolated}
        before = e
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--nanogpt", type=Path, help="a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)"
    )
    p.add_argument(
        "--target", type=float, help="without --nanogpt: the val loss jobformer's time is taken to"
    )
    p.add_argument("--steps", type=int, default=2000, help="nanoGPT's max_iters and jobformer's max_steps")
    p.add_argument(
        "--jobformer-steps", type=int, help="jobformer's max_steps (default --steps): its schedule's length"
    )
    p.add_argument("--jobformer-lr", type=float, default=LR, help=f"jobformer's peak lr (default {LR:g})")
    p.add_argument(
        "--eval-every", type=int, default=100, help="jobformer's evaluation interval (default 100)"
    )
    p.add_argument("--quick", action="store_true", help="30 steps, evaluations every 10: a smoke run")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads on both sides (default: torch's)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="jobformer's")
    p.add_argument("--keep", type=Path, help="make the nanoGPT scratch folder here and keep it")
    p.add_argument(
        "--concurrent",
        action="store_true",
        help="train both at once, one thread each (sets --threads 1): load changes hit both alike",
    )
    p.add_argument("--jobformer-first", action="store_true", help="train jobformer first, then run nanoGPT")
    args = p.parse_args(argv)
    steps, eval_every = (30, 10) if args.quick else (args.steps, args.eval_every)
    if not args.data.is_file():
        p.error(f"{args.data} not found (the tiny Shakespeare file from ../shared/data)")
    if args.concurrent:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    order = "nanoGPT not run"
    if args.nanogpt:
        order = "jobformer then nanoGPT" if args.jobformer_first else "nanoGPT then jobformer"
        order = "both at once" if args.concurrent else order
    print(
        f"tiny shakespeare char LM, 4 layers, 4 heads, d_model 128, context {CONTEXT}, batch {BATCH}, "
        f"{steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads, jobformer precision "
        f"{args.precision}, {order}, "
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')} on both sides"
        f"{'' if USER_SPIN else ' (jobformer train sets it)'}, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    out: dict = {"steps": steps, "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0]}
    out["order"] = order

    tmp = tempfile.TemporaryDirectory(prefix="nanogpt-side-")
    scratch = args.keep or Path(tmp.name)

    def nanogpt_train() -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        out["nanogpt_data"] = scratch_copy(args.nanogpt.resolve(), scratch, args.data)
        # Its config's interval when it ends on one (2000 steps: 250), else one evaluation at the end.
        interval = 10 if args.quick else CONFIG_EVAL_INTERVAL if steps % CONFIG_EVAL_INTERVAL == 0 else steps
        out["nanogpt"] = run_nanogpt(scratch, steps, interval, args.threads)

    def nanogpt_report() -> None:
        ng = out["nanogpt"]
        ng["checkpoint"] = evaluate_checkpoint(scratch, args.threads)
        print(
            f"nanoGPT: tokens/s={ng['tokens_per_second']:.0f} train_s={ng['train_seconds']:.1f} "
            f"wall_s={ng['wall_seconds']:.1f} eval_s={ng['eval_seconds']:.1f} val_loss={ng['val_loss']:.4f} "
            f"(its estimate) checkpoint_val_loss={ng['checkpoint']['val_loss']:.4f} (step "
            f"{ng['checkpoint']['iter_num']}, {ng['checkpoint']['windows']} fixed windows) steps={steps}",
            flush=True,
        )

    def nanogpt_side() -> None:
        nanogpt_train()
        nanogpt_report()

    def jobformer_side() -> None:
        jf_steps = 30 if args.quick else args.jobformer_steps or steps
        out["jobformer_settings"] = {"steps": jf_steps, "lr": args.jobformer_lr, "eval_every": eval_every}
        jf = out["jobformer"] = run_jobformer(
            args.data, jf_steps, args.seed, args.precision, eval_every=eval_every, lr=args.jobformer_lr
        )
        curve = " ".join(f"{e['step']}:{e['val_loss']:.3f}" for e in jf["evals"])
        print(
            f"jobformer: tokens/s={jf['tokens_per_second']:.0f} train_s={jf['train_seconds']:.1f} "
            f"eval_s={jf['eval_seconds']:.1f} val_loss={jf['val_loss']:.4f} steps={jf['steps']}",
            flush=True,
        )
        print(f"jobformer val_loss by step: {curve}", flush=True)

    if args.concurrent and args.nanogpt:
        # Both at once, one thread each (one core each on 2 cores): a change in the machine's load hits both.
        # nanoGPT's checkpoint is evaluated once both have trained.
        worker = threading.Thread(target=nanogpt_train)
        worker.start()
        jobformer_side()
        worker.join()
        out["load_middle"] = os.getloadavg()[0]
        if "nanogpt" not in out:
            raise SystemExit("nanoGPT's side failed (see above)")
        nanogpt_report()
    else:
        sides = [nanogpt_side, jobformer_side] if args.nanogpt else [jobformer_side]
        if args.jobformer_first:
            sides.reverse()
        sides[0]()
        out["load_middle"] = os.getloadavg()[0]
        for side in sides[1:]:
            side()
    tmp.cleanup()
    jf = out["jobformer"]
    target = out["nanogpt"]["checkpoint"]["val_loss"] if args.nanogpt else args.target
    out["load_after"] = os.getloadavg()[0]
    if target is not None:
        hit = out["time_to_target"] = time_to(jf["evals"], target)
        if hit is None:
            print(f"jobformer never reached {target:.4f} in {jf['steps']} steps")
        else:
            print(
                f"jobformer reached {target:.4f} at step {hit['step']} (val_loss {hit['val_loss']:.4f}): "
                f"train_s={hit['train_seconds_scaled']:.1f} eval_s={hit['eval_seconds']:.1f} "
                f"wall_s={hit['wall_seconds']:.1f} (interpolated between evaluations: "
                f"train_s={hit['interpolated_seconds']:.1f})"
            )
    if args.nanogpt:
        ng = out["nanogpt"]
        ratio = out["ratio_tokens_per_second"] = jf["tokens_per_second"] / ng["tokens_per_second"]
        print(f"ratio tokens/s jobformer/nanoGPT: {ratio:.2f}x")
        estimate = time_to(jf["evals"], ng["val_loss"])
        for name, hit in (("checkpoint", out["time_to_target"]), ("estimate", estimate)):
            key = f"ratio_time_to_{name}_loss"
            out[key] = hit["train_seconds_scaled"] / ng["train_seconds"] if hit else None
            out[f"{key}_interpolated"] = hit["interpolated_seconds"] / ng["train_seconds"] if hit else None
            loss = target if name == "checkpoint" else ng["val_loss"]
            shown = (
                f"{out[key]:.2f}x (interpolated {out[key + '_interpolated']:.2f}x)" if hit else "not reached"
            )
            print(
                f"ratio time to nanoGPT's {name} loss ({loss:.4f}) jobformer/nanoGPT {steps} steps: {shown}"
            )
    print(
        f"load average: {out['load_before']:.2f} before, {out['load_middle']:.2f} between, "
        f"{out['load_after']:.2f} after (timings on a shared machine are noisy)"
    )
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
