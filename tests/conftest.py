import numpy as np
import pytest

import vaekit


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Decoded-data caches go to a temporary folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAEKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, private_cache):
    """A small model trained for two epochs on digits: enough to exercise every command."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    return vaekit.train("digits", out, epochs=2, hidden=(32,), latent_dim=4, quiet=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def cut_training():
    """Train on digits as `vaekit.train` would, but stop as if killed right after `epoch` was saved."""
    from vaekit import trainer

    def cut(run_dir, epoch: int, **options) -> None:
        original_end = trainer.Trainer._end_epoch

        def end_then_stop(self, row):
            original_end(self, row)
            if self.epoch == epoch:
                raise KeyboardInterrupt

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trainer.Trainer, "_end_epoch", end_then_stop)
            with pytest.raises(KeyboardInterrupt):
                vaekit.train("digits", run_dir, **options)

    return cut
