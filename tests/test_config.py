import json
from pathlib import Path

import pytest

from ddpmkit.config import DiffusionConfig, RunConfig, SampleConfig, option_fields, override
from ddpmkit.errors import ConfigError


def test_json_round_trip(tmp_path):
    cfg = override(
        RunConfig(),
        {
            "model.unet.channel_mult": "1,2,4",
            "train.lr": "3e-4",
            "sample.steps": "50",
            "data.image_size": 32,
            "train.compile": "true",
        },
    )
    cfg.to_json(tmp_path / "c.json")
    back = RunConfig.from_json(tmp_path / "c.json")
    assert back == cfg and back.model.unet.channel_mult == (1, 2, 4) and back.train.compile is True


def test_every_option_is_a_flag():
    names = {n for n, _, _ in option_fields(RunConfig)}
    assert {
        "train.lr",
        "diffusion.schedule",
        "model.unet.channel_mult",
        "model.mlp.hidden",
        "data.dataset",
        "sample.eta",
    } <= names


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


def test_configs_of_ddpmkit_0_1_load_into_the_model_sections():
    """Run directories of the first release saved a flat model section; they still load."""
    fixture = Path(__file__).parent / "fixtures" / "v0_1" / "digits" / "config.json"
    flat = json.loads(fixture.read_text())["model"]
    assert "base_channels" in flat  # the fixture really is in the old layout
    cfg = RunConfig.from_json(fixture)
    assert cfg.model.unet.base_channels == flat["base_channels"] and cfg.model.mlp.hidden == flat["hidden"]
    assert cfg.model.unet.channel_mult == tuple(flat["channel_mult"]) and cfg.model.kind == flat["kind"]


def test_flat_model_options_are_still_accepted_as_overrides():
    cfg = override(RunConfig(), {"model.hidden": "64", "model.base_channels": 8, "model.unet.num_groups": 4})
    assert (cfg.model.mlp.hidden, cfg.model.unet.base_channels, cfg.model.unet.num_groups) == (64, 8, 4)
    with pytest.raises(ConfigError, match="unknown option 'model.unet'"):
        override(RunConfig(), {"model.unet": 3})


def test_from_preset_with_overrides():
    cfg = RunConfig.from_preset("mnist", {"train.lr": "3e-4"}, train={"steps": 5}, data={"data_dir": "d"})
    assert cfg.preset == "mnist" and cfg.data.dataset == "mnist" and cfg.data.data_dir == "d"
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 5 and cfg.model.unet.patch_size == 2
    assert cfg.replace(**{"sample.sampler": "ddim"}).sample.sampler == "ddim"
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of"):
        RunConfig.from_preset("nope")


def test_one_validator_names_the_choices_everywhere():
    """Closed options and the sampler registry give the same one-line error."""
    with pytest.raises(ConfigError, match="unknown schedule 'cos'; choose one of linear, cosine"):
        DiffusionConfig(schedule="cos")
    with pytest.raises(ConfigError, match="unknown sampler 'plms'; choose one of ddpm, ddim"):
        SampleConfig(sampler="plms")
    with pytest.raises(ConfigError, match="sample.eta: cannot read nan as a finite number"):
        SampleConfig(eta=float("nan"))


@pytest.mark.parametrize("text, expected", [("7,14", (7, 14)), ("[7, 14]", (7, 14)), ("(7,)", (7,)),
                                            ("", ()), ("[]", ()), ("()", ())])  # fmt: skip
def test_tuples_from_the_command_line(text, expected):
    cfg = override(RunConfig(), {"model.unet.attn_resolutions": text})
    assert cfg.model.unet.attn_resolutions == expected


@pytest.mark.parametrize("key, value, ok", [
    ("train.ema_decay", "0.999", True), ("train.ema_decay", "1", False), ("train.ema_decay", "nan", False),
    ("train.lr_min_ratio", "1", True), ("train.lr_min_ratio", "-0.1", False),
    ("sample.threshold", "0.995", True), ("sample.threshold", "1", False),
])  # fmt: skip
def test_unit_interval_options(key, value, ok):
    if ok:
        override(RunConfig(), {key: value})
    else:
        with pytest.raises(ConfigError, match=key.split(".")[-1]):  # NaN is refused when read
            override(RunConfig(), {key: value})


def test_check_unit_refuses_nan_and_the_open_end():
    from ddpmkit.checks import check_unit

    check_unit("p", 0.0)
    check_unit("p", 1.0, include_one=True)
    for value, include_one in [(float("nan"), False), (float("nan"), True), (1.0, False), (-1e-9, True)]:
        with pytest.raises(ConfigError, match="p must lie in"):
            check_unit("p", value, include_one=include_one)


def test_folder_preset_round_trips_and_is_the_default_for_folders(tmp_path):
    from ddpmkit.config import preset_names
    from ddpmkit.data import preset_for

    assert "folder" in preset_names()
    cfg = RunConfig.from_preset("folder", {"data.dataset": f"folder:{tmp_path}"})
    assert cfg.data.hflip and cfg.diffusion.objective == "v" and cfg.model.kind == "unet"
    assert cfg.model.unet.patch_size == 2 and cfg.sample.guidance == 2.0
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert preset_for(f"folder:{tmp_path}") == preset_for("hf:user/set") == "folder"
