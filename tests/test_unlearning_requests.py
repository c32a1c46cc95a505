"""Unlearning requests: parsing, validation against the run's universe, the audit log."""

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.unlearning.requests import AuditLog, Universe, load_requests

U = Universe(
    num_users=20,
    num_items=50,
    num_clients=4,
    attributes=("gender", "age"),
    train_pairs=frozenset({(3, 10), (3, 42), (7, 1)}),
)


def test_request_file_round_trip(tmp_path):
    f = tmp_path / "req.toml"
    f.write_text(
        """
[[request]]
kind = "users"
users = [3, 17, 3]
round = 5

[[request]]
kind = "interactions"
name = "alice-deletes-two"
pairs = [[3, 10], [3, 42]]

[[request]]
kind = "client"
clients = [2]

[[request]]
kind = "attribute"
attributes = ["gender"]
"""
    )
    reqs = load_requests(f, U)
    assert [r.kind for r in reqs] == ["users", "interactions", "client", "attribute"]
    assert reqs[0].ids == (3, 17) and reqs[0].round == 5  # duplicates dropped
    np.testing.assert_array_equal(reqs[1].users(), [3])
    assert reqs[1].label == "alice-deletes-two"
    assert reqs[1].to_json() == {
        "kind": "interactions",
        "pairs": [[3, 10], [3, 42]],
        "name": "alice-deletes-two",
    }


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"kind": "user", "users": [1]}, "kind must be one of interactions, users"),
        ({"kind": "users", "users": []}, "the forget set is empty"),
        ({"kind": "users", "users": [1], "items": [2]}, "unknown key"),
        ({"kind": "users", "users": [25]}, r"unknown user id\(s\) \[25\]; the run has users 0..19"),
        ({"kind": "items", "items": [-1, 50]}, r"unknown item id\(s\) \[-1, 50\]"),
        ({"kind": "client", "clients": [4]}, "clients 0..3"),
        ({"kind": "interactions", "pairs": [[3, 11]]}, "not training interactions"),
        ({"kind": "interactions", "pairs": [[3]]}, r"\[user, item\]"),
        ({"kind": "attribute", "attributes": ["race"]}, "unknown attribute"),
        ({"kind": "users", "users": [1], "round": -1}, "round must be >= 0"),
        ({"kind": "users", "users": [1.5]}, "must hold integers"),
    ],
)
def test_bad_requests_get_one_clear_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_requests({"request": [raw]}, U)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_requests(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[request]\nkind=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_requests(bad)
    with pytest.raises(ConfigError, match="at least one"):
        load_requests({"request": []})
    with pytest.raises(ConfigError, match="top-level"):
        load_requests({"request": [{"kind": "users", "users": [1]}], "method": "x"})


def test_audit_log_appends_one_line_per_request(tmp_path):
    (req,) = load_requests({"request": [{"kind": "users", "users": [1, 2]}]}, U)
    log = AuditLog(tmp_path / "run" / "unlearning.jsonl")
    assert log.entries() == []
    e = log.record(
        req,
        "retrain",
        rounds=20,
        bytes_up=100,
        bytes_down=200,
        seconds=1.5,
        metrics={"mia_auc": 0.51},
    )
    log.record(req, "sisa", rounds=3, bytes_up=10, bytes_down=20, seconds=0.2)
    got = log.entries()
    assert got[0] == e and got[0]["request"] == {"kind": "users", "users": [1, 2]}
    assert [x["method"] for x in got] == ["retrain", "sisa"] and got[1]["metrics"] == {}
