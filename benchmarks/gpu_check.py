"""The GPU check of issue 12, for a machine with one CUDA device (run by benchmarks/gpu_check.sh).

1. the tests marked ``cuda`` (tests/model; skipped where there is no CUDA);
2. the main job (scripts/main.sh's command: AlphaRec + BiFair on ml100k, properties/main_job.yaml)
   on CUDA, its seconds per epoch and test metrics;
3. the group gradients w.r.t. theta of AlphaRec on CUDA, ``batched`` (one vmapped backward)
   vs ``loop`` (one backward per group), N = 2 and 18 groups (ALGORITHMS.md 9.3; the trainers'
   ``group_grad_method: auto`` assumes batched wins on CUDA), equal to 1e-4;
4. the [B, K] negative scores at the games shape (B 4096, K 256, 14.5k items, D 64), forward +
   backward, dense vs sampled vs the [B, K, D] gather (recbole_bifair/model/negative_scores.py);

then one table. Each part has its own time limit so the whole stays under 8 minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRY_RUN = "--cpu_dry_run" in sys.argv  # the script's own check where no GPU is lent: CPU, 1 epoch
LIMITS = {"tests": 120, "main job": 240}  # seconds; parts 3-4 take well under a minute


def run_part(name: str, command: list[str]) -> tuple[int | None, str]:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=LIMITS[name])
    except subprocess.TimeoutExpired as expired:
        return None, (expired.stdout or "") if isinstance(expired.stdout, str) else ""
    return done.returncode, done.stdout + done.stderr


def cuda_tests() -> list[tuple[str, str]]:
    code, output = run_part("tests", [sys.executable, "-m", "pytest", "tests/model", "-m", "cuda", "-q", "-p", "no:cacheprovider"])
    summary = next((line for line in reversed(output.splitlines()) if re.search(r"passed|failed|error|skipped|deselected", line)), "no summary")
    status = "timed out" if code is None else ("ok" if code == 0 else f"exit {code}")
    return [("tests marked cuda", f"{status}: {summary.strip('= ')}")]


def main_job() -> list[tuple[str, str]]:
    results = Path(tempfile.mkdtemp()) / "gpu_main.json"
    command = [
        sys.executable, "run_recbole.py", "--model=AlphaRec", "--trainer=BiFair", "--dataset=ml100k",
        "--config_files=properties/main_job.yaml", f"--use_gpu={not DRY_RUN}", f"--results_file={results}",
        f"--checkpoint_dir={results.parent}",
    ] + (["--epochs=1", "--eval_step=1"] if DRY_RUN else [])  # fmt: skip
    start = time.monotonic()
    code, output = run_part("main job", command)
    wall = time.monotonic() - start
    if code != 0 or not results.exists():
        tail = " | ".join(output.strip().splitlines()[-2:])
        return [("main job on CUDA", f"{'timed out' if code is None else f'exit {code}'} after {wall:.0f} s: {tail}")]
    result = json.loads(results.read_text())
    epochs = result["timing"]["epoch_seconds"]
    test = result["test"]
    return [
        ("main job on CUDA", f"{len(epochs)} epochs, {wall:.0f} s wall, device {device_of(output)}"),
        ("main job s/epoch", f"median {sorted(epochs)[len(epochs) // 2]:.2f} (first {epochs[0]:.2f}, min {min(epochs):.2f})"),
        ("main job test @20", f"R {test['recall@20']:.4f}, pop CV {test['pop_cv@20']:.4f}, pop MIN {test['pop_min@20']:.4f}"),
    ]


def device_of(log: str) -> str:
    match = re.search(r"device\s*[=:]\s*(\S+)", log)
    return match.group(1) if match else "?"


def synchronize() -> None:
    import torch

    if not DRY_RUN:
        torch.cuda.synchronize()


def cuda_timed(function, repeats: int = 3) -> float:
    function()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize()
    return (time.perf_counter() - start) / repeats


def group_gradients_rows() -> list[tuple[str, str]]:
    import torch
    from recbole.utils import init_seed

    from recbole_bifair.quick_start import build_config, build_data
    from recbole_bifair.registry import get_model
    from recbole_bifair.trainer.balancing import group_gradients

    config = build_config("AlphaRec", "ml100k", config_dict={"use_gpu": not DRY_RUN})
    init_seed(config["seed"], True)
    _dataset, train_data, _valid, _test = build_data(config)
    model = get_model("AlphaRec")(config, train_data._dataset).to(config["device"])
    users, pos, neg = model.sample_batch(next(iter(train_data)).to(config["device"]))
    params = model.projector_parameters()
    rows = []
    for n_groups in (2, 18):
        groups = torch.arange(len(users), device=users.device) % n_groups

        def losses(groups=groups, n_groups=n_groups):
            per_sample = model(users, pos, neg)
            return torch.stack([per_sample[groups == group].mean() for group in range(n_groups)])

        seconds, grads = {}, {}
        for method in ("batched", "loop"):
            grads[method] = group_gradients(losses(), params, retain_graph=False, method=method)
            seconds[method] = cuda_timed(lambda method=method: group_gradients(losses(), params, retain_graph=False, method=method))
        difference = (grads["batched"] - grads["loop"]).abs().max().item()
        scale = grads["loop"].abs().max().item()
        rows.append((
            f"group gradients N = {n_groups}",
            f"batched {seconds['batched'] * 1e3:.1f} ms, loop {seconds['loop'] * 1e3:.1f} ms, batched / loop "
            f"{seconds['batched'] / seconds['loop']:.2f}x; max |diff| {difference:.1e} (max |g| {scale:.1e})",
        ))  # fmt: skip
    return rows


def negative_score_rows() -> list[tuple[str, str]]:
    import torch
    import torch.nn.functional as F

    from recbole_bifair.model.negative_scores import negative_scores

    device = torch.device("cpu" if DRY_RUN else "cuda")
    n_users, n_items, batch, k, dim = 11870, 14497, 4096, 256, 64
    user_emb = torch.randn(n_users, dim, device=device, requires_grad=True)
    item_emb = torch.randn(n_items, dim, device=device, requires_grad=True)
    users = torch.randint(0, n_users, (batch,), device=device)
    neg = torch.randint(1, n_items, (batch, k), device=device)

    def run(method):
        scores = negative_scores(method, user_emb, F.normalize(user_emb[users], dim=-1), F.normalize(item_emb, dim=-1), users, neg)
        torch.autograd.grad(scores.sum(), [user_emb, item_emb])

    seconds = {method: cuda_timed(lambda method=method: run(method)) for method in ("dense", "sampled", "gather")}
    return [("negative scores, games shape", ", ".join(f"{m} {s * 1e3:.2f} ms" for m, s in seconds.items()))]


def main() -> int:
    import torch

    if not (torch.cuda.is_available() or DRY_RUN):
        print(f"error: no CUDA device here (torch {torch.__version__}); the GPU check needs one", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = "CPU (dry run of the script)" if DRY_RUN else torch.cuda.get_device_name(0)
    rows = [("device", f"{name}, torch {torch.__version__}")]
    for part in (cuda_tests, main_job, group_gradients_rows, negative_score_rows):
        start = time.monotonic()
        try:
            rows.extend(part())
        except Exception as error:  # noqa: BLE001 (one failing part must not hide the others)
            rows.append((part.__name__, f"failed: {type(error).__name__}: {error}"))
        print(f"[{part.__name__} done in {time.monotonic() - start:.0f} s]", file=sys.stderr, flush=True)
    print("\n| check | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
