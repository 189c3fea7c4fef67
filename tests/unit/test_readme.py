"""The README is the front door: it must document every setting the sink reads."""

from __future__ import annotations

from pathlib import Path

from sink.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        info.alias for info in Settings.model_fields.values() if f"`{info.alias}`" not in README
    ]
    assert missing == []


def test_the_two_commands_are_the_makefile_targets() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci
