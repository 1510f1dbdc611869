"""The claim registry: a claim module that fails to import raises (no silent entry), aliases in --list."""

from __future__ import annotations

import importlib
import json

import pytest

from normfield.claims import registry
from normfield.cli import main


def test_a_broken_claim_module_raises(monkeypatch):
    real = importlib.import_module

    def broken(name, *a, **kw):
        if name == "normfield.claims.karakida":
            raise ImportError("cannot import name 'gone' from 'normfield.fisher'")
        return real(name, *a, **kw)

    monkeypatch.setattr(registry, "_DISCOVERED", False)
    monkeypatch.setattr(registry.importlib, "import_module", broken)
    with pytest.raises(ImportError, match="gone"):
        registry.all_claims()
    monkeypatch.setattr(registry.importlib, "import_module", real)
    assert registry.all_claims() and registry.import_errors() == {}


def test_list_shows_aliases(capsys, monkeypatch):
    monkeypatch.setitem(registry._ALIASES, "R-both", ("J-eq10", "K-thm4.1"))
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    row = next(l for l in out.splitlines() if l.strip().startswith("R-both"))
    assert "J-eq10 + K-thm4.1" in row
    assert main(["reproduce", "--list", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["aliases"]["R-both"] == ["J-eq10", "K-thm4.1"]
    assert all(c["id"] != "R-both" for c in payload["claims"])  # the claims list holds claims only
