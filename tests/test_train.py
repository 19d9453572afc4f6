"""Training infrastructure: configs, checkpoints, seeding, resume equivalence, device names."""
import json
import os

import pytest
import torch
from torch import nn

from attnlens.errors import CheckpointError, FormatError, UnknownNameError
from attnlens.train import checkpoint as ckpt
from attnlens.train import loop
from attnlens.train.config import MatchingConfig, check_preset


# ----------------------------------------------------------------------------- configs
def test_config_roundtrip_and_unknown_keys(tmp_path):
    cfg = MatchingConfig.preset("quick").replace(rcar={"mode": "coop_rcar", "steps": 2}, channels=(4, 8))
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    back = MatchingConfig.load(path)
    assert back == cfg and back.channels == (4, 8) and back.rcar == {"mode": "coop_rcar", "steps": 2}
    with pytest.raises(UnknownNameError, match="embed_dim") as info:
        cfg.replace(embed_dimm=3)
    assert "embed_dimm" in str(info.value)
    with pytest.raises(UnknownNameError, match="quick, demo, full|demo, full, quick"):
        check_preset("huge")
    path.write_text("{\n  \"epochs\": 1,\n  oops\n}")
    with pytest.raises(FormatError, match=r"c\.json:3"):
        MatchingConfig.load(path)


def test_presets_differ_and_resolve_overrides():
    quick, demo = MatchingConfig.preset("quick"), MatchingConfig.preset("demo")
    assert quick.n_train < demo.n_train and quick.epochs <= demo.epochs
    assert MatchingConfig.resolve("quick", {"epochs": 7}).epochs == 7
    assert MatchingConfig.resolve("quick", {"task": "matching"}) == quick


# ----------------------------------------------------------------------------- toy training
class Toy(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


X = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5, 0.0])


def _train(run_dir, *, seed=0, epochs=3, resume=True, width=8, config=None):
    loop.set_seed(seed)
    model = Toy(width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batches(epoch, gen):
        order = torch.randperm(len(X), generator=gen)
        return [order[a:a + 8] for a in range(0, len(X), 8)]

    def loss_fn(idx, epoch, net):
        return ((net(X[idx]) - Y[idx]) ** 2).mean()

    def evaluate():
        return {"mse": float(((model(X) - Y) ** 2).mean())}

    state = loop.fit(model, opt, run_dir=run_dir, config=config or {"width": width, "epochs": epochs},
                     epochs=epochs, seed=seed, batches=batches, loss_fn=loss_fn, evaluate=evaluate, eval_every=1,
                     lr_at=lambda e: 1e-2 * (0.5 if e >= 2 else 1.0), grad_clip=1.0, progress=False,
                     resume=resume)
    return model, state


def _numbers(state):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in state["history"]]


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
    m1, s1 = _train(tmp_path / "a")
    m2, s2 = _train(tmp_path / "b")
    m3, s3 = _train(tmp_path / "c", seed=1)
    assert _numbers(s1) == _numbers(s2)
    for (k, v), (_, w) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v, w), k
    assert _numbers(s1) != _numbers(s3)


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    full_model, full = _train(tmp_path / "full", epochs=4)
    real_save = loop.save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(kwargs["epoch"])
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", epochs=4)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert ckpt.read_state(tmp_path / "cut")["epoch"] == 2
    torch.manual_seed(12345)  # the global RNG state must come from the checkpoint, not from here
    resumed_model, resumed = _train(tmp_path / "cut", epochs=4)
    assert calls == [1, 2]
    assert _numbers(resumed) == _numbers(full)
    for (k, v), (_, w) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(v, w), k
    # a finished run is not retrained
    again_model, again = _train(tmp_path / "cut", epochs=4)
    assert _numbers(again) == _numbers(full)
    assert torch.equal(again_model.net[0].weight, full_model.net[0].weight)


def test_resume_with_another_config_refuses(tmp_path):
    _train(tmp_path / "r", epochs=1)
    with pytest.raises(CheckpointError, match="differs in: epochs"):
        _train(tmp_path / "r", epochs=2)
    _train(tmp_path / "r", epochs=2, resume=False)  # starting over is allowed
    assert ckpt.read_state(tmp_path / "r")["epoch"] == 2


def test_checkpoint_files_and_safe_loading(tmp_path):
    model, _ = _train(tmp_path / "run", epochs=1)
    names = sorted(os.listdir(tmp_path / "run"))
    assert names == sorted(ckpt.CHECKPOINT_FILES)  # no temp files left behind
    trainer = torch.load(tmp_path / "run" / ckpt.TRAINER_FILE, weights_only=True)
    assert set(trainer) >= {"optimizer", "torch_rng"}
    state = json.loads((tmp_path / "run" / ckpt.STATE_FILE).read_text())
    assert state["epoch"] == 1 and "mse" in state["history"][0]
    fresh = Toy()
    ckpt.load_checkpoint(tmp_path / "run", fresh)
    assert torch.equal(fresh.net[0].weight, model.net[0].weight)


def test_checkpoint_of_another_architecture_names_keys(tmp_path):
    _train(tmp_path / "run", epochs=1)
    with pytest.raises(CheckpointError, match=r"net\.0\.weight: checkpoint \(8, 4\) vs model \(16, 4\)"):
        ckpt.load_checkpoint(tmp_path / "run", Toy(width=16))

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 8)

    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(tmp_path / "run", Other())
    msg = str(info.value)
    assert "missing from the checkpoint: encoder.bias, encoder.weight" in msg
    assert "unexpected in the checkpoint: net.0.bias, net.0.weight, net.3.bias, net.3.weight" in msg
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nothing", Toy())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ckpt.MODEL_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ckpt.load_checkpoint(tmp_path / "bad", Toy())


def test_device_names():
    assert loop.resolve_device("cpu") == torch.device("cpu")
    assert loop.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UnknownNameError, match="auto, cpu, cuda"):
        loop.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(loop.DeviceError, match="CUDA is not available"):
            loop.resolve_device("cuda")


def test_rng_state_roundtrip():
    import random

    import numpy as np

    loop.set_seed(5)
    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    json.dumps({k: v for k, v in state.items() if k not in ("torch", "cuda")})  # JSON-ready
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_finished_run_without_trainer_state_still_loads(tmp_path):
    model, full = _train(tmp_path / "run", epochs=2)
    (tmp_path / "run" / ckpt.TRAINER_FILE).unlink()  # as shipped in assets/: weights, config, state
    again_model, again = _train(tmp_path / "run", epochs=2)
    assert _numbers(again) == _numbers(full)
    assert torch.equal(again_model.net[0].weight, model.net[0].weight)
    with pytest.raises(CheckpointError, match="trainer.pt does not exist"):
        _train(tmp_path / "run", epochs=3, config={"width": 8, "epochs": 2})  # continuing needs it


def test_non_finite_gradients_stop_training_with_names(tmp_path):
    class SqrtAtZero(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return (self.w * x).pow(2).sum().sqrt()  # d sqrt / dx at 0 is inf -> NaN gradient

    model = SqrtAtZero()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="non-finite gradients at epoch 1 in w"):
        loop.fit(model, opt, run_dir=tmp_path, config={}, epochs=1, seed=0, batches=lambda e, g: [torch.zeros(3)],
                 loss_fn=lambda b, e, net: net(b), progress=False)
