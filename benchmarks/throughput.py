"""Training speed against the reference loop of pytorch/examples `vae/main.py`, in one run on one machine.

Three figures, on Fashion-MNIST's 60,000 training images (random images of the same shape where it
is not installed, which the output says), both models 784-400-20 MLPs with a Bernoulli likelihood on
dynamically binarised images:
  - throughput at batch 128, examples/s, and vaekit's fraction of the machine's fp32 matmul peak, beside
    the fraction that the model's matmuls alone reach at that batch size (the ceiling for any loop);
  - time to target: the reference trains 10 epochs (batch 128, Adam 1e-3, a DataLoader over a per-item
    dataset); its held-out -ELBO is the target; vaekit's default recipe trains until it reaches it;
    the trial (of --trials seeds) whose ratio is the median is reported whole.
Held-out -ELBO of both models comes from the same estimator on the same fixed binarisation of the test set.

    python benchmarks/throughput.py --json throughput.json
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_name, fashion_mnist_or_random, matmul_gflops, print_figures, write_json
from torch import nn

from vaekit.models import VAE, ModelConfig
from vaekit.trainer import EVAL_SEED, TrainConfig, Trainer, evaluate_elbo, resolve_precision

BATCH = 128


# --- the reference: pytorch/examples vae/main.py, with a per-item binarising dataset ---------------------------
class PerItemImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images.numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i]).float().div(255)  # what ToTensor() does
        return torch.bernoulli(image), 0  # dynamic binarisation


class ReferenceVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def reference_epoch(model, optimizer, loader) -> float:
    """One epoch of the reference's train(); returns its wall time."""
    start = time.perf_counter()
    model.train()
    for x, _ in loader:
        optimizer.zero_grad()
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        loss = bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def as_vaekit(reference: ReferenceVAE, spec) -> VAE:
    """The same weights in a vaekit model, so that both are scored by one estimator."""
    model = VAE(ModelConfig.for_data(spec, "bernoulli", "mlp", 20, (400,)))
    with torch.no_grad():
        enc, dec = model.encoder.net, model.decoder.net
        # vaekit feeds a Bernoulli model's encoder 2x - 1; fold that into the first layer
        enc[0].weight.copy_(reference.fc1.weight / 2)
        enc[0].bias.copy_(reference.fc1.bias + reference.fc1.weight.sum(1) / 2)
        enc[2].weight.copy_(torch.cat([reference.fc21.weight, reference.fc22.weight]))
        enc[2].bias.copy_(torch.cat([reference.fc21.bias, reference.fc22.bias]))
        dec[0].load_state_dict(reference.fc3.state_dict())
        dec[2].load_state_dict(reference.fc4.state_dict())
    return model.eval()


# --- measurements ------------------------------------------------------------------------------------------------
def flop_per_example(model: VAE) -> float:
    """Training FLOPs of one example: forward 2·in·out per linear layer, backward twice that, less the
    input gradient of the first layer, which nothing needs."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return sum(6 * m.in_features * m.out_features for m in layers) - 2 * layers[0].in_features * layers[0].out_features


def matmul_only_examples_per_s(model: VAE, batch: int, repeats: int = 15) -> float:
    """Examples/s of the model's training matmuls alone (forward, weight and input gradients, no bias, no
    activation, no loss, no optimiser) at this batch size: the ceiling any training loop of this model
    can reach with these matmul kernels, since small matmuls run below the 1024x1024 peak."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().clone() for m in layers]
    inputs = [torch.randn(batch, w.shape[1]) for w in weights]
    grads = [torch.randn(batch, w.shape[0]) for w in weights]

    def step():
        for i, (w, x, g) in enumerate(zip(weights, inputs, grads, strict=True)):
            torch.mm(x, w.t())
            torch.mm(g.t(), x)
            if i > 0:  # the first layer's input gradient is not needed
                torch.mm(g, w)

    for _ in range(20):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(20):
            step()
        times.append((time.perf_counter() - start) / 20)
    return batch / statistics.median(times)


def heldout_neg_elbo(model: VAE, test_x: torch.Tensor) -> float:
    return evaluate_elbo(model, test_x, generator=torch.Generator().manual_seed(EVAL_SEED))["neg_elbo"]


def vaekit_trainer(spec, run_dir: Path, **options) -> Trainer:
    torch.manual_seed(options.get("seed", 0))
    model = VAE(ModelConfig.for_data(spec, "bernoulli", "mlp", 20, (400,)))
    return Trainer(model, TrainConfig(binarize="dynamic", patience=None, **options), run_dir, quiet=True)


def vaekit_examples_per_s(train, test, repeats: int) -> float:
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = vaekit_trainer(train.spec, Path(tmp), batch_size=BATCH, epochs=repeats + 1)
        trainer.fit(train, test)
        seconds = [m["seconds"] for m in trainer.metrics]
        rates = [len(train) / (b - a) for a, b in zip([0.0, *seconds[:-1]], seconds, strict=True)][1:]  # 1st warms up
    return statistics.median(rates)


def reference_run(train, test_x, epochs: int, repeats_for_rate: int, seed: int) -> tuple[float, float, float]:
    """(examples/s, seconds for `epochs` epochs, held-out -ELBO after them)."""
    torch.manual_seed(seed)
    model = ReferenceVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PerItemImages(train.x), batch_size=BATCH, shuffle=True)
    times = [reference_epoch(model, optimizer, loader) for _ in range(epochs)]
    return (
        len(train) / statistics.median(times[:repeats_for_rate]),
        sum(times),
        heldout_neg_elbo(as_vaekit(model, train.spec), test_x),
    )


def vaekit_time_to_target(train, test, target: float, seed: int) -> tuple[float, int, float]:
    """(training seconds, epochs, held-out -ELBO) of vaekit's default recipe at the first epoch reaching target."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = vaekit_trainer(train.spec, Path(tmp), seed=seed)
        trainer.fit(train, test, stop_below=target)
        for m in trainer.metrics:
            if m["heldout_neg_elbo"] <= target:
                return m["seconds"], int(m["epoch"]), m["heldout_neg_elbo"]
        last = trainer.metrics[-1]
        return math.inf, int(last["epoch"]), last["heldout_neg_elbo"]


def recipe_elbo_by_precision(train, test) -> dict[str, float]:
    """Held-out -ELBO after vaekit's whole default recipe in fp32 and in bf16 (same seed), and fp32 with
    another seed, which shows how far two equally good runs lie apart."""
    result = {}
    for name, options in {"fp32": dict(precision="fp32"), "bf16": dict(precision="bf16"),
                          "fp32_seed1": dict(precision="fp32", seed=1)}.items():  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            trainer = vaekit_trainer(train.spec, Path(tmp), **options)
            result[name] = min(m["heldout_neg_elbo"] for m in trainer.fit(train, test))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--repeats", type=int, default=3, help="epochs whose median gives a throughput")
    parser.add_argument("--ref-epochs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3, help="time-to-target trials (seeds 0, 1, ...): medians")
    parser.add_argument("--skip-precision-check", action="store_true", help="skip the fp32-vs-bf16 ELBO check")
    args = parser.parse_args()

    train, test, description = fashion_mnist_or_random()
    print(f"data: {description}; CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    probe = VAE(ModelConfig.for_data(train.spec, "bernoulli", "mlp", 20, (400,)))
    test_x = probe.prepare(test.x, torch.Generator().manual_seed(EVAL_SEED))
    peak = matmul_gflops()
    flop = flop_per_example(probe)
    ceiling = matmul_only_examples_per_s(probe, BATCH)
    ours = vaekit_examples_per_s(train, test, args.repeats)
    trials = []
    for seed in range(args.trials):
        ref_rate, ref_seconds, target = reference_run(train, test_x, args.ref_epochs, args.repeats, seed)
        ours_seconds, ours_epochs, ours_elbo = vaekit_time_to_target(train, test, target, seed)
        trial = {
            "ref_examples_per_s": ref_rate,
            "ref_seconds_to_target": ref_seconds,
            "target_neg_elbo": target,
            "vaekit_seconds_to_target": ours_seconds,
            "vaekit_epochs_to_target": ours_epochs,
            "vaekit_neg_elbo_at_target": ours_elbo,
            "time_to_target_ratio": ref_seconds / ours_seconds,
        }
        trials.append(trial)
        print(
            f"trial {seed}: reference {ref_seconds:.1f} s to {target:.2f}; vaekit {ours_seconds:.1f} s",
            flush=True,
        )
    # the trial whose time-to-target ratio is the median, whole (its figures belong together); rates: medians
    median = sorted(trials, key=lambda t: t["time_to_target_ratio"])[len(trials) // 2]
    ref_rate = statistics.median(t["ref_examples_per_s"] for t in trials)
    precision = {} if args.skip_precision_check else recipe_elbo_by_precision(train, test)
    result = {
        "cpu": cpu_name(),
        "data": description,
        "matmul_gflops": peak,
        "flop_per_example": flop,
        **median,
        "ref_examples_per_s": ref_rate,
        "vaekit_examples_per_s": ours,
        "throughput_ratio": ours / ref_rate,
        "roofline_fraction": ours * flop / (peak * 1e9),
        "ref_roofline_fraction": ref_rate * flop / (peak * 1e9),
        "matmul_only_roofline_fraction": ceiling * flop / (peak * 1e9),
        "trials": trials,
        "vaekit_precision": str(resolve_precision("auto", torch.device("cpu"))).removeprefix("torch."),
        "recipe_heldout_neg_elbo_by_precision": precision,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    rows = [
        ("fp32 matmul peak", f"{peak:.0f} GFLOP/s"),
        ("training cost", f"{flop / 1e6:.2f} MFLOP/example"),
        ("its matmuls alone, b. 128",
         f"{ceiling:,.0f} examples/s ({result['matmul_only_roofline_fraction']:.2f} of peak)"),
        ("reference, batch 128", f"{ref_rate:,.0f} examples/s ({result['ref_roofline_fraction']:.2f} of peak)"),
        ("vaekit, batch 128", f"{ours:,.0f} examples/s ({result['roofline_fraction']:.2f} of peak)"),
        ("throughput ratio", f"{result['throughput_ratio']:.2f}x"),
        (f"reference, {args.ref_epochs} epochs",
         f"{median['ref_seconds_to_target']:.1f} s to held-out -ELBO {median['target_neg_elbo']:.2f}"),
        ("vaekit default recipe", f"{median['vaekit_seconds_to_target']:.1f} s "
         f"({median['vaekit_epochs_to_target']} epochs) to {median['vaekit_neg_elbo_at_target']:.2f}"),
        ("time-to-target ratio", f"{median['time_to_target_ratio']:.2f}x (the median of {args.trials} trials)"),
        ("vaekit precision (auto)", result["vaekit_precision"]),
        *((f"recipe -ELBO, {k}", f"{v:.2f}") for k, v in precision.items()),
        ("peak RSS, this process", f"{result['peak_rss_mib']:.0f} MiB"),
    ]  # fmt: skip
    print_figures(rows)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
