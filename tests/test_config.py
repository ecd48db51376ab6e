from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_example_config_loads_and_resolves_paths_against_its_folder():
    s = load_settings(ROOT / "config.example.toml")
    assert s.storage.database_url == f"sqlite+aiosqlite:///{ROOT / 'var/gateway.db'}"
    assert s.storage.root == ROOT / "var/storage"
    assert s.queues[0].name == "invoices"
    assert s.queues[0].processors[0].type == "folder"
    assert s.queues[0].processors[0].path == ROOT / "var/outbox/invoices"


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "[smtp]\nport = 2525\nprot = 1\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert str(p) in str(e.value)
    assert "smtp.prot: unknown key" in str(e.value)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, '[workers]\nconcurrency = "many"\n')
    with pytest.raises(ConfigError, match=r"workers\.concurrency"):
        load_settings(p)


def test_queue_must_name_known_organization(tmp_path):
    p = write(tmp_path, '[[queues]]\nname = "q"\norganization = "nope"\naddresses = ["a@b.c"]\n')
    with pytest.raises(ConfigError, match="unknown organization 'nope'"):
        load_settings(p)


def test_address_owned_by_two_queues_is_an_error(tmp_path):
    p = write(
        tmp_path,
        '[[organizations]]\nname="o"\n'
        '[[queues]]\nname="a"\norganization="o"\naddresses=["x@y.z"]\n'
        '[[queues]]\nname="b"\norganization="o"\naddresses=["X@y.z"]\n',
    )
    with pytest.raises(ConfigError, match="belongs to queues"):
        load_settings(p)


def test_processor_type_is_checked(tmp_path):
    p = write(
        tmp_path,
        '[[organizations]]\nname="o"\n[[queues]]\nname="a"\norganization="o"\n'
        '[[queues.processors]]\ntype="ftp"\n',
    )
    with pytest.raises(ConfigError, match="queues.0.processors.0"):
        load_settings(p)


def test_imap_plaintext_only_on_loopback(tmp_path):
    base = '[[organizations]]\nname="o"\n[[queues]]\nname="a"\norganization="o"\n'
    p = write(tmp_path, base + '[[imap]]\nname="m"\nhost="imap.example.com"\ntls="none"\nusername="u"\npassword="p"\nqueue="a"\n')
    with pytest.raises(ConfigError, match="loopback"):
        load_settings(p)
    p = write(tmp_path, base + '[[imap]]\nname="m"\nhost="127.0.0.1"\ntls="none"\nusername="u"\npassword="p"\nqueue="a"\n')
    assert load_settings(p).imap[0].tls == "none"


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[smtp\n"))


def test_gateway_config_env_var(tmp_path, monkeypatch):
    p = write(tmp_path, "[smtp]\nport = 2600\n")
    monkeypatch.setenv("GATEWAY_CONFIG", str(p))
    assert load_settings().smtp.port == 2600


def test_every_option_is_in_the_example_with_a_comment():
    """config.example.toml documents every key the settings accept."""
    import re

    from gateway import config as c

    text = (ROOT / "config.example.toml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    sections = {
        c.StorageSettings: "storage", c.SMTPSettings: "smtp", c.HTTPSettings: "http",
        c.WorkerSettings: "workers", c.LoggingSettings: "logging", c.QueueSettings: "queues",
        c.IMAPSettings: "imap", c.WebhookProcessor: "processors", c.CommandProcessor: "processors",
        c.FolderProcessor: "processors", c.SenderPolicy: "sender_policy",
        c.AuthenticationSettings: "authentication",
    }
    missing = []
    for model, section in sections.items():
        for name in model.model_fields:
            if section == "queues" and name == "processors":
                continue
            # A key line (`name = ...`, possibly commented out), or a mention in a comment.
            if not (re.search(rf"(?m)^#?\s*{name}\s*=", text) or re.search(rf"\b{name}\b", comments)):
                missing.append(f"{section}.{name}")
    assert not missing, missing
