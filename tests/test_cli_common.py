"""CLI plumbing: discovery, one-line errors with exit code 2, JSON output."""

import json

import pytest

from normfield.cli import main


def test_help_lists_reproduce(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "reproduce" in capsys.readouterr().out


def test_unknown_subcommand_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" in err


def test_reproduce_unknown_claim_exit_2(capsys, tmp_path):
    assert main(["reproduce", "NO-SUCH-CLAIM", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "CLAIM_ID" in err and "Traceback" not in err


def test_reproduce_list_json(capsys):
    assert main(["reproduce", "--list", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert isinstance(payload["claims"], list)
