"""Speed of the pixel context's hidden units (`--context 3 --context-hidden H`) against the same units
computed with convolutions (a masked convolution in, 1x1 convolutions on channels-first maps: vaekit's form
before 2026-11-30; its masked convolution stayed until 2026-12-01), in one run.

For 28x28 one-channel images with a Bernoulli likelihood: a training step (forward and backward, a batch
of 256) and an importance-sampling pass (forward only, 8 images x 125 samples of z), each the median of
the repeats. Both forms are checked to agree before they are timed. Prints the machine's fp32 matmul rate,
measured in the same run.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/context_speed.py --json context_speed.json
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import cpu_name, matmul_gflops, print_figures, timed, write_json

from vaekit.nn import CausalContext

SHAPE = (1, 28, 28)


def convolutions(context: CausalContext, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The baseline: the same hidden units as convolutions on channels-first maps."""
    item = x.shape[-3:]
    seen = F.conv2d(x.reshape(-1, *item), context.masked_weight, padding=context.radius)
    own = params.clamp(-context.FEATURE_BOUND, context.FEATURE_BOUND).flatten(-4, -3)
    own = F.conv2d(own.reshape(-1, *own.shape[-3:]), context.from_params[..., None, None], context.bias)
    units = seen.view(*x.shape[:-3], *seen.shape[1:]) + own.view(*params.shape[:-4], *own.shape[1:])
    units = units.clamp(0.0, context.MAX_ACTIVATION)
    out = F.conv2d(units.reshape(-1, *units.shape[-3:]), context.out[..., None, None], context.out_bias)
    return out.view(*units.shape[:-3], context.n_params, *item)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    return timed(fn, repeats)[0]


def measure(hidden: int, repeats: int, gen: torch.Generator) -> dict:
    """Both forms' median seconds for `hidden` units, after checking that they agree."""
    torch.manual_seed(0)
    context = CausalContext(SHAPE[0], 3, hidden, 1)
    with torch.no_grad():  # nonzero output weights, as after training
        context.out.normal_(0, 0.1)
    batch = torch.bernoulli(torch.full((256, *SHAPE), 0.3), generator=gen)
    logits = torch.randn(256, 1, *SHAPE, generator=gen, requires_grad=True)
    images, sampled = batch[:8], torch.randn(125, 8, 1, *SHAPE, generator=gen)
    forms = {"matrix products": context, "convolutions": lambda x, p: convolutions(context, x, p)}
    with torch.no_grad():
        if not torch.allclose(forms["matrix products"](images, sampled), forms["convolutions"](images, sampled),
                              atol=1e-4):  # fmt: skip
            raise SystemExit(f"the two forms disagree with {hidden} hidden units")
    row = {"hidden": hidden}
    for name, form in forms.items():

        def step(form=form):
            context.zero_grad(set_to_none=True)
            form(batch, logits).square().mean().backward()

        def sample_pass(form=form):
            with torch.no_grad():
                form(images, sampled)

        row[name] = {
            "train_step_s": median_seconds(step, repeats),
            "sampling_pass_s": median_seconds(sample_pass, repeats),
        }
    new, old = row["matrix products"], row["convolutions"]
    row["train_speedup"] = old["train_step_s"] / new["train_step_s"]
    row["sampling_speedup"] = old["sampling_pass_s"] / new["sampling_pass_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[4, 8, 32])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "matmul_gflops": matmul_gflops(), "rows": []}
    figures = [("fp32 matmul peak", f"{result['matmul_gflops']:.0f} GFLOP/s")]
    gen = torch.Generator().manual_seed(0)
    for hidden in args.hidden:
        row = measure(hidden, args.repeats, gen)
        result["rows"].append(row)
        new, old = row["matrix products"], row["convolutions"]
        for what, key, speedup in (("training step", "train_step_s", "train_speedup"),
                                   ("sampling pass", "sampling_pass_s", "sampling_speedup")):  # fmt: skip
            times = f"{new[key] * 1e3:.1f} ms against {old[key] * 1e3:.1f} ms"
            figures.append((f"{hidden} units, {what}", f"{times} ({row[speedup]:.1f}x)"))
    print_figures(figures)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
