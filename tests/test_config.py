from dataclasses import dataclass

import pytest

from fedrec.config import (
    RunConfig,
    all_keys,
    key,
    load_config,
    load_toml,
    parse_override,
    validate,
    validate_dataclass,
)
from fedrec.errors import ConfigError


def test_defaults_and_flat_roundtrip():
    cfg = validate({})
    assert cfg.dataset.name == "adult" and cfg.partition.num_clients == 10
    assert cfg.runtime.backend == "ray"
    flat = cfg.to_flat()
    assert flat["train.local-epochs"] == 1 and flat["num-server-rounds"] == 5
    assert validate(flat) == cfg
    assert set(all_keys()) == set(flat)


def test_every_key_is_documented():
    for name, d in all_keys().items():
        assert d["doc"], name


def test_toml_flattens_tables(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("seed = 3\n[train]\nlr = 0.1\n[strategy.params]\nq = 2\n")
    assert load_toml(p) == {"seed": 3, "train.lr": 0.1, "strategy.params.q": 2}
    cfg = load_config(p, ["train.lr=0.2", "dataset.name=german"])
    assert cfg.seed == 3 and cfg.train.lr == 0.2 and cfg.dataset.name == "german"
    assert cfg.strategy_params == {"q": 2}


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'.*train\.lr"):
        validate({"train.lrr": 0.1})
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        validate({"bogus": 1})


def test_bad_values_name_key_and_allowed_values():
    with pytest.raises(
        ConfigError,
        match=r"'runtime\.backend'.*allowed values: ray, local, "
        "deployment",
    ):
        validate({"runtime.backend": "k8s"})
    with pytest.raises(ConfigError, match=r"'partition\.num-clients'.*> 0"):
        validate({"partition.num-clients": 0})
    with pytest.raises(ConfigError, match=r"'train\.lr'.*not a number"):
        validate({"train.lr": "fast"})
    with pytest.raises(ConfigError, match=r"'dataset\.test-fraction'.*\(0, 1\)"):
        validate({"dataset.test-fraction": 1.0})


def test_override_parsing():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override('a="x y"') == ("a", "x y")
    assert parse_override("a=plain") == ("a", "plain")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [1, 2]\n")
    with pytest.raises(ConfigError, match="'x'"):
        load_toml(bad)


def test_params_dataclass_validation():
    @dataclass(frozen=True)
    class P:
        q: float = key(0.0, "fairness exponent", check=lambda v: v >= 0, check_doc=">= 0")
        mode: str = key("a", "mode", choices=("a", "b"))

    assert validate_dataclass(P, {"q": 1}, "strategy.params.") == P(q=1.0)
    with pytest.raises(ConfigError, match=r"'strategy\.params\.mode'.*a, b"):
        validate_dataclass(P, {"mode": "c"}, "strategy.params.")
    with pytest.raises(ConfigError, match=r"unknown config key 'strategy\.params\.z'"):
        validate_dataclass(P, {"z": 1}, "strategy.params.")


def test_replace_validates():
    cfg = RunConfig()
    assert cfg.replace(**{"seed": 5}).seed == 5
    with pytest.raises(ConfigError):
        cfg.replace(**{"seed": -1})


def test_flower_app_config_lists_every_key():
    """`flwr run . --run-config k=v` only accepts keys present in pyproject.toml."""
    import tomllib
    from pathlib import Path

    from fedrec.config import flatten

    root = Path(__file__).resolve().parents[1]
    app_cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(flatten(app_cfg)) == set(all_keys())
    validate(flatten(app_cfg))
