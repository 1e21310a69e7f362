"""Speed of the importance-sampled log-likelihood: vaekit's estimator against pythae's `get_nll`.

One model, two estimators, in one run: a pythae VAE (784-400-20 MLP, Bernoulli) trained briefly on
dynamically binarised Fashion-MNIST (random data of the same shape where it is not installed, which
the output says), its weights copied into a vaekit VAE; both estimate log p(x) of the same 1,000 test
images (one fixed binarisation) with k = 1000. Prints medians of the repeats, the achieved fraction of
this machine's fp32 matmul peak (measured in the same run) and both estimates.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/nll_speed.py --json nll_speed.json
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import cpu_name, fashion_mnist_or_random, matmul_gflops, print_figures, timed, write_json
from peers import copy_into_vaekit, dynamic_binarisation_dataset, pythae_model, train_pythae

from vaekit.evaluate import negative_log_likelihood
from vaekit.models import VAE, ModelConfig
from vaekit.trainer import EVAL_SEED

HIDDEN, LATENT = (400,), 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=30.0, help="pythae training before the timing")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    train, test, description = fashion_mnist_or_random()
    print(f"data: {description}; CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    peak = matmul_gflops()
    torch.manual_seed(0)
    peer = pythae_model("vae", tuple(train.spec.shape), HIDDEN, LATENT)
    with tempfile.TemporaryDirectory() as tmp:
        top = train.spec.levels - 1
        dataset = dynamic_binarisation_dataset(train.x, top)
        train_pythae(peer, dataset, args.train_seconds, tmp, learning_rate=1e-3, per_device_train_batch_size=100)
    peer.eval()
    model = VAE(ModelConfig.for_data(train.spec, "bernoulli", "mlp", LATENT, HIDDEN))
    copy_into_vaekit(peer, model)
    model.eval()
    x = model.prepare(test.x[: args.items], torch.Generator().manual_seed(EVAL_SEED))

    with torch.no_grad():
        ours_s, ours = timed(lambda: negative_log_likelihood(model, x, args.k, progress=False), args.repeats)
        peer_s, peer_log_px = timed(lambda: peer.get_nll(x, n_samples=args.k, batch_size=100), args.repeats)
    decoder_flop = sum(2 * m.in_features * m.out_features for m in model.decoder.modules() if hasattr(m, "in_features"))
    encoder_flop = sum(2 * m.in_features * m.out_features for m in model.encoder.modules() if hasattr(m, "in_features"))
    flop = args.items * (args.k * decoder_flop + encoder_flop)
    result = {
        "cpu": cpu_name(),
        "data": description,
        "items": args.items,
        "k": args.k,
        "matmul_gflops": peak,
        "vaekit_seconds": ours_s,
        "pythae_seconds": peer_s,
        "speedup": peer_s / ours_s,
        "vaekit_gflops": flop / ours_s / 1e9,
        "vaekit_peak_fraction": flop / ours_s / 1e9 / peak,
        "pythae_peak_fraction": flop / peer_s / 1e9 / peak,
        "vaekit_nll": ours["nll"],
        "vaekit_nll_stderr": ours["nll_stderr"],
        "pythae_nll": -float(peer_log_px),
    }
    rows = [
        ("fp32 matmul peak", f"{peak:.0f} GFLOP/s"),
        (f"pythae get_nll, k={args.k}", f"{peer_s:.2f} s ({result['pythae_peak_fraction']:.2f} of peak)"),
        (f"vaekit, k={args.k}", f"{ours_s:.2f} s ({result['vaekit_peak_fraction']:.2f} of peak)"),
        ("speed-up", f"{result['speedup']:.1f}x"),
        ("NLL, vaekit", f"{ours['nll']:.3f} ± {ours['nll_stderr']:.3f} nats"),
        ("NLL, pythae", f"{result['pythae_nll']:.3f} nats"),
    ]
    print_figures(rows)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
