"""Credentials never shown: URLs, messages, command lines and config trees."""

from __future__ import annotations

from imgae_dx_jax.redact import REDACTED, public_args, public_config, public_url, redact_urls

SIGNED = "https://storage.example.com/archive.zip?X-Goog-Signature=deadbeef"


def test_urls_are_described_without_credentials():
    url = "https://me:pa55word@host.example:8443/nih/archive.zip?sig=abc123&x=1#frag"
    assert public_url(url) == "https://host.example:8443/nih/archive.zip"
    message = f"cannot open {url!r}: refused"
    assert redact_urls(message) == (
        "cannot open 'https://host.example:8443/nih/archive.zip?<redacted>': refused"
    )


def test_public_config_drops_secrets():
    tree = {
        "data": {"path": SIGNED, "stages": ["images_001"]},
        "kaggle": {"api_key": "s3cret", "token": "", "username": "me"},
    }
    clean = public_config(tree)
    assert clean["data"]["path"] == "https://storage.example.com/archive.zip"
    assert clean["kaggle"] == {"api_key": REDACTED, "token": "", "username": "me"}
    assert clean["data"]["stages"] == ["images_001"]


def test_command_lines_keep_their_urls_without_credentials():
    args = ["--source", "url", "--data", "https://u:p@host.example/a.zip?sig=1", "--epochs", "2"]
    assert public_args(args) == [
        "--source",
        "url",
        "--data",
        "https://host.example/a.zip",
        "--epochs",
        "2",
    ]
