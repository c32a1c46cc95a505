"""Deployment over TLS with SuperNode authentication on 127.0.0.1 (the marked test starts
Flower servers), and the checks of ``runtime.root-certificates``."""

import json
import tomllib

import pytest

import fedrec
from fedrec.config import validate
from fedrec.errors import ConfigError
from fedrec.runtime.certs import make_supernode_keys, make_test_certificates
from fedrec.runtime.deployment import LoopbackFederation, flwr_home


def test_root_certificates_select_tls_and_are_checked_early(tmp_path):
    certs = make_test_certificates(tmp_path / "certs")
    cfg = validate({"runtime.superlink": "127.0.0.1:9", "runtime.root-certificates": str(certs.ca)})
    conn = tomllib.loads((flwr_home(cfg, tmp_path / "h1") / "config.toml").read_text())
    assert conn["superlink"]["fedrec"] == {
        "address": "127.0.0.1:9",
        "root-certificates": str(certs.ca.resolve()),
    }
    plain = tomllib.loads((flwr_home(validate({}), tmp_path / "h2") / "config.toml").read_text())
    assert plain["superlink"]["fedrec"]["insecure"] is True
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    for path, why in [
        (tmp_path / "missing.pem", "does not exist"),
        (tmp_path, "is not a file"),
        (not_pem, "no PEM certificate"),
    ]:
        with pytest.raises(ConfigError, match=f"runtime.root-certificates.*{why}") as err:
            fedrec.run(
                {"runtime.root-certificates": str(path)},
                backend="deployment",
                out=tmp_path / "never",
            )
        assert "\n" not in str(err.value)
        assert not (tmp_path / "never").exists()


def test_supernode_keys_are_openssh_ecdsa(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    private, public = make_supernode_keys(tmp_path, "node")
    key = load_ssh_private_key(private.read_bytes(), None)
    pub = load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
        pub, ec.EllipticCurvePublicKey
    )
    assert key.public_key().public_numbers() == pub.public_numbers()
    assert private.stat().st_mode & 0o077 == 0


@pytest.mark.deployment
@pytest.mark.slow
@pytest.mark.e2e
def test_tls_and_supernode_auth_admit_only_registered_nodes(tmp_path, small_config):
    certs = make_test_certificates(tmp_path / "certs")
    registered, registered_pub = make_supernode_keys(tmp_path / "keys", "registered")
    stranger, _ = make_supernode_keys(tmp_path / "keys", "stranger")
    cfg = {
        **small_config,
        "num-server-rounds": 1,
        "runtime.num-nodes": 1,
        "runtime.timeout": 240,
        "output.checkpoint": False,
        "output.keep-client-state": False,
    }
    with LoopbackFederation(tmp_path / "fed", certificates=certs, supernode_auth=True) as fed:
        fed.start_superlink()
        reg = fed.register(registered_pub)
        assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-2000:]
        # an unregistered key, and no key at all (self-registration): both refused
        refused = {
            "stranger": fed.start_supernode(1, 2, private_key=stranger, name="stranger"),
            "anonymous": fed.start_supernode(1, 2, name="anonymous"),
        }
        fed.start_supernode(0, 1, private_key=registered, name="registered")
        for name, proc in refused.items():
            assert proc.wait(timeout=90) != 0, name
            log = fed.log(name)
            assert "Failed to initialize the connection to the SuperLink" in log, log[-2000:]
        assert "Failed to activate SuperNode" in fed.log("stranger")
        assert "must be registered" in fed.log("anonymous")
        summary = fedrec.run(
            cfg, backend="deployment", out=tmp_path / "dep", overrides=fed.overrides()
        )
        ls = fed.flwr("supernode", "ls", "loopback", "--format", "json")
        superlink_log = fed.log("superlink")
    assert "insecure" not in superlink_log.lower()  # TLS on the SuperLink's one port
    assert ls.returncode == 0, ls.stdout[-2000:] + ls.stderr[-2000:]
    nodes = json.loads(ls.stdout)["nodes"]
    assert len(nodes) == 1  # the refused nodes were never created
    assert summary["num_rounds"] == 1 and summary["num_nodes"] == 1
    local = fedrec.run(cfg, backend="local", out=tmp_path / "local")
    assert summary["final"] == local["final"]
