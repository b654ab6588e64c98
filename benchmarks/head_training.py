"""Benchmark: training a grid cell's seeds one after another (what `train_head` does) against all seeds at once as
one batched model (`torch.func.stack_module_state` + `vmap`, one AdamW over the stacked parameters).

Issue 24 asked whether training the seeds of a cell together cuts the grid's head-training time while giving the
same heads. Both arms train 5 seeds of the default lane's head shape (mUSE v3 512-d text, EfficientNet-Lite2
1280-d images, a linear head of 256, batch 128) on the same Gaussian stand-in for emoji_cldr's 865 English training
pairs (3 captions per image), with one torch thread as in the grid's workers, for the default budget of 840 steps;
each seed keeps its own initialisation and batch order, so the batched heads should equal the sequential ones.
Both arms alternate over 2 rounds; the report gives the best of each and the largest weight difference.

Usage: .venv/bin/python benchmarks/head_training.py → benchmarks/results/head_training.{json,md}
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from results_io import header, write_results
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from xlr_pipeline.core.training.configs import HeadConfig
from xlr_pipeline.core.training.head import ProjectionHead, new_head, objective_loss, train_head

TEXT_DIM, IMAGE_DIM, PAIRS, SEEDS, STEPS, ROUNDS = 512, 1280, 865, 5, 840, 2


class _BothBranches(nn.Module):
    """A head's two projections as one forward, so `functional_call` can run it with stacked parameters."""

    def __init__(self, head: ProjectionHead):
        super().__init__()
        self.head = head

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.project_text(text), self.head.project_image(image)


def train_seeds_batched(
    text: np.ndarray, image: np.ndarray, image_ids: np.ndarray, configs: list[HeadConfig]
) -> list[dict[str, torch.Tensor]]:
    """The candidate: every config (the same but for its seed) trained in one vmapped model; each seed's weights."""
    text_t, image_t = torch.tensor(text), torch.tensor(image)
    groups = torch.from_numpy(np.unique(image_ids, return_inverse=True)[1])
    heads = [_BothBranches(new_head(TEXT_DIM, IMAGE_DIM, config)) for config in configs]
    for wrapped in heads:
        wrapped.head.fit_normalisation(text_t, image_t)
    params, buffers = stack_module_state(heads)
    template = copy.deepcopy(heads[0]).to("meta")
    config = configs[0]

    def loss(p, b, t, i, g):
        projected_text, projected_image = functional_call(template, (p, b), (t, i))
        return objective_loss(config, projected_text, projected_image, g)

    batched_loss = vmap(loss)
    optimiser = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    steps = 0
    while steps < config.steps:
        orders = [torch.randperm(len(text), generator=generator) for generator in generators]
        for start in range(0, len(text), config.batch_size):
            if steps == config.steps:
                break
            rows = torch.stack([order[start : start + config.batch_size] for order in orders])
            losses = batched_loss(params, buffers, text_t[rows], image_t[rows], groups[rows])
            if not torch.isfinite(losses).all():
                raise ValueError(f"diverged at step {steps + 1}")
            optimiser.zero_grad()
            losses.sum().backward()
            optimiser.step()
            steps += 1
    return [{name: tensor[s].detach() for name, tensor in params.items()} for s in range(len(configs))]


def main() -> None:
    torch.set_num_threads(1)  # as in the grid's training workers
    rng = np.random.default_rng(0)
    text = rng.normal(size=(PAIRS, TEXT_DIM)).astype(np.float32)
    image = rng.normal(size=(PAIRS, IMAGE_DIM)).astype(np.float32)
    image_ids = np.arange(PAIRS) // 3
    rows, markdown = [], []
    for objective in ("infonce", "m3"):
        configs = [HeadConfig(objective=objective, steps=STEPS, seed=seed) for seed in range(SEEDS)]
        timings: dict[str, list[float]] = {"sequential": [], "batched": []}
        for _ in range(ROUNDS):
            started = time.perf_counter()
            sequential = [train_head(text, image, image_ids, config).head for config in configs]
            timings["sequential"].append(time.perf_counter() - started)
            started = time.perf_counter()
            batched = train_seeds_batched(text, image, image_ids, configs)
            timings["batched"].append(time.perf_counter() - started)
        difference = max(
            (weights[f"head.{name}"] - tensor).abs().max().item()
            for head, weights in zip(sequential, batched)
            for name, tensor in head.named_parameters()
        )
        best = {arm: min(seconds) for arm, seconds in timings.items()}
        rows.append(
            {
                "objective": objective,
                "seeds": SEEDS,
                "steps": STEPS,
                "sequential_s": round(best["sequential"], 2),
                "batched_s": round(best["batched"], 2),
                "speedup": round(best["sequential"] / best["batched"], 2),
                "max_weight_difference": float(f"{difference:.2e}"),
                "ms_per_head_step_sequential": round(1000 * best["sequential"] / (SEEDS * STEPS), 2),
            }
        )
    result = header("head_training", "synthetic (emoji_cldr's default head shape)") | {
        "shape": {"text_dim": TEXT_DIM, "image_dim": IMAGE_DIM, "pairs": PAIRS, "batch": HeadConfig().batch_size},
        "threads": 1,
        "rounds": ROUNDS,
        "rows": rows,
    }
    markdown += [
        f"# Head training: seeds one after another vs batched with vmap ({result['date']}, 1 torch thread)",
        "",
        f"{SEEDS} seeds × {STEPS} steps, linear head {TEXT_DIM}/{IMAGE_DIM} → {HeadConfig().embed_dim}, "
        f"{PAIRS} pairs, batch {HeadConfig().batch_size}; best of {ROUNDS} alternating rounds.",
        "",
        "| objective | sequential (s) | batched (s) | speed-up | ms per head-step (sequential) | max weight difference |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['objective']} | {r['sequential_s']} | {r['batched_s']} | {r['speedup']}× | "
            f"{r['ms_per_head_step_sequential']} | {r['max_weight_difference']:.1e} |"
            for r in rows
        ),
        "",
        f"Steps per pass over the data: {math.ceil(PAIRS / HeadConfig().batch_size)}.",
    ]
    write_results(result, markdown)


if __name__ == "__main__":
    main()
