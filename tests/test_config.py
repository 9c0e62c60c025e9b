import json

import pytest

from ddpmkit.config import RunConfig, option_fields, override
from ddpmkit.errors import ConfigError


def test_json_round_trip(tmp_path):
    cfg = override(
        RunConfig(),
        {
            "model.channel_mult": "1,2,4",
            "train.lr": "3e-4",
            "sample.steps": "50",
            "data.image_size": 32,
            "train.compile": "true",
        },
    )
    cfg.to_json(tmp_path / "c.json")
    back = RunConfig.from_json(tmp_path / "c.json")
    assert back == cfg and back.model.channel_mult == (1, 2, 4) and back.train.compile is True


def test_every_option_is_a_flag():
    names = {n for n, _, _ in option_fields()}
    assert {"train.lr", "diffusion.schedule", "model.channel_mult", "data.dataset", "sample.eta"} <= names


@pytest.mark.parametrize(
    "key,value",
    [
        ("diffusion.schedule", "exp"),
        ("diffusion.timesteps", 0),
        ("train.batch_size", 0),
        ("train.ema_decay", 1.0),
        ("model.dropout", 1.5),
        ("data.channels", 2),
        ("sample.eta", -1),
        ("train.precision", "fp8"),
        ("nope.x", 1),
        ("train.nope", 1),
        ("train.steps", "ten"),
        ("train.steps", 2.5),
    ],
)
def test_bad_values(key, value):
    with pytest.raises(ConfigError):
        override(RunConfig(), {key: value})


def test_unknown_keys_in_json(tmp_path):
    d = RunConfig().to_dict()
    d["train"]["lrr"] = 1
    (tmp_path / "c.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="lrr"):
        RunConfig.from_json(tmp_path / "c.json")
