"""`keras-rmac serve`: registration, the loopback default, the token."""

import pytest

from keras_rmac.cli import main as cli_main
from keras_rmac.cli import serve as serve_command


def _args(*argv):
    parser = cli_main.build_parser("serve")
    return parser.parse_args(["serve", *argv])


def test_defaults_listen_on_loopback_only():
    args = _args("--index", "some_index")
    assert (args.host, args.port, args.token) == ("127.0.0.1", 8080, None)
    assert cli_main.SUBCOMMANDS["serve"].startswith("Serve an index")


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert serve_command.is_loopback(host) is loopback


def test_other_addresses_need_a_token(monkeypatch, caplog):
    monkeypatch.delenv(serve_command.TOKEN_ENV, raising=False)
    status = serve_command.run(_args("--index", "x", "--host", "0.0.0.0"))
    assert status == 2
    assert "--token" in caplog.text
