"""pythae (https://github.com/clementchadebec/benchmark_VAE) as a peer in the benchmarks, never a dependency.

Install it beside vaekit with `pip install -c constraints.txt -e '.[bench]'`. Its models get MLPs of the
same shape as vaekit's, train on the same dynamically binarised data under a wall-clock budget, and
are scored by vaekit's importance-sampled estimator through `PythaeAdapter`.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from vaekit.dist import Bernoulli, DiagonalGaussian, GaussianMixture
from vaekit.models import ELBOResult, LatentVariableModel, ModelConfig


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def pythae_networks(dim: int, hidden: tuple[int, ...], latent: int):
    """An encoder and a decoder in pythae's interface: MLPs dim-hidden-latent and back, sigmoid outputs."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = _mlp([dim, *hidden, 2 * latent])

        def forward(self, x):
            mean, log_var = self.net(x.flatten(1)).chunk(2, -1)
            return ModelOutput(embedding=mean, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = _mlp([latent, *reversed(hidden), dim])

        def logits(self, z):
            return self.net(z)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.logits(z)))

    return Encoder(), Decoder()


def pythae_model(kind: str, shape: tuple[int, ...], hidden: tuple[int, ...], latent: int, **options):
    """pythae's VAE, IWAE or VAMP with a Bernoulli (BCE) likelihood and the MLPs above."""
    from pythae.models import IWAE, VAE, VAMP, IWAEConfig, VAEConfig, VAMPConfig

    classes = {"vae": (VAE, VAEConfig), "iwae": (IWAE, IWAEConfig), "vamp": (VAMP, VAMPConfig)}
    model_cls, config_cls = classes[kind]
    config = config_cls(input_dim=shape, latent_dim=latent, reconstruction_loss="bce", **options)
    encoder, decoder = pythae_networks(int(torch.tensor(shape).prod()), hidden, latent)
    return model_cls(config, encoder=encoder, decoder=decoder)


def dynamic_binarisation_dataset(levels: torch.Tensor, top_level: int):
    """pythae's dataset type, drawing a fresh binarisation of every image each time it is read."""
    from pythae.data.datasets import BaseDataset, DatasetOutput

    class Binarised(BaseDataset):
        def __init__(self):
            self.data, self.labels = levels, torch.zeros(len(levels))

        def __getitem__(self, index):
            image = self.data[index].float() / top_level
            return DatasetOutput(data=torch.bernoulli(image), labels=self.labels[index])

    return Binarised()


class _OutOfTime(Exception):
    pass


def train_pythae(model, dataset, budget_s: float, output_dir: str, **trainer_options) -> tuple[float, int]:
    """pythae's own trainer, stopped at the end of the first epoch past `budget_s` seconds.

    Returns (seconds trained, epochs)."""
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    start, epochs = time.perf_counter(), [0]

    class Budget(TrainingCallback):
        def on_epoch_end(self, training_config, **kwargs):
            epochs[0] += 1
            if time.perf_counter() - start >= budget_s:
                raise _OutOfTime

    config = BaseTrainerConfig(output_dir=output_dir, num_epochs=10**6, **trainer_options)
    trainer = BaseTrainer(model, train_dataset=dataset, training_config=config, callbacks=[Budget()])
    with contextlib.suppress(_OutOfTime):
        trainer.train()
    return time.perf_counter() - start, epochs[0]


class PythaeAdapter(LatentVariableModel):
    """A trained pythae VAE / IWAE / VAMP behind vaekit's model interface, for vaekit's estimators.

    log p(x|z) uses the decoder's logits (the same Bernoulli model as pythae's sigmoid + BCE, computed
    stably); log p(z) is N(0, I), or for VAMP the mixture of the encoded pseudo-inputs.
    """

    def __init__(self, model, config: ModelConfig):
        super().__init__()
        self.config, self.peer = config, model.eval()

    def encode(self, x, y=None) -> DiagonalGaussian:
        out = self.peer.encoder(x)
        return DiagonalGaussian(out.embedding, out.log_covariance)

    def decode(self, z, y=None) -> Bernoulli:
        return Bernoulli(self.peer.decoder.logits(z).view(*z.shape[:-1], *self.spec.shape))

    @property
    def prior(self):
        if self.peer.model_name != "VAMP":
            return DiagonalGaussian.standard((self.latent_dim,))
        pseudo = self.peer.pseudo_inputs(self.peer.idle_input).view(-1, *self.spec.shape)
        out = self.peer.encoder(pseudo)
        return GaussianMixture(out.embedding, out.log_covariance)

    def log_weights(self, x, noise, y=None):
        posterior = self.encode(x)
        z = posterior.mean + posterior.stddev * noise
        return self.decode(z).log_prob(x), self.prior.log_prob(z) - posterior.log_prob(z)

    def elbo(self, x, noise=None, y=None):
        noise = torch.randn(len(x), self.latent_dim) if noise is None else noise
        log_px_z, log_ratio = self.log_weights(x, noise[None])
        return ELBOResult(log_px_z[0], -log_ratio[0])


def copy_into_vaekit(peer, model) -> None:
    """pythae VAE weights into a vaekit MLP VAE of the same shape (vaekit's encoder sees 2x - 1, not x)."""
    peer_enc = [m for m in peer.encoder.net if isinstance(m, nn.Linear)]
    peer_dec = [m for m in peer.decoder.net if isinstance(m, nn.Linear)]
    ours_enc = [m for m in model.encoder.net if isinstance(m, nn.Linear)]
    ours_dec = [m for m in model.decoder.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for a, b in zip(ours_enc + ours_dec, peer_enc + peer_dec, strict=True):
            a.load_state_dict(b.state_dict())
        first, source = ours_enc[0], peer_enc[0]  # W x + b = (W / 2)(2x - 1) + b + W 1 / 2
        first.weight.copy_(source.weight / 2)
        first.bias.copy_(source.bias + source.weight.sum(1) / 2)
