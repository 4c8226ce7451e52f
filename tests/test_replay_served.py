"""Replaying an image a server made: its record names the LoRA as the server lists it, not by a file here."""

from __future__ import annotations

from dataclasses import replace

from PIL import Image

from sana.outputs import GenerationRecord, save_image
from tests.cli_helpers import assert_one_line_error, run_sana

SERVED = GenerationRecord(prompt="a red circle", model="nano", family="sana", seed=7, steps=2, guidance=3.0,
                          width=32, height=32, dtype="fp32", version="0.1.0", extra={"served": True},
                          loras=[{"path": "style", "name": "style", "scale": 0.8, "sha256": "ab" * 32,
                                  "served": True}])


def test_a_local_replay_of_a_served_lora_says_where_it_can_run(tmp_path):
    image = save_image(Image.new("RGB", (32, 32), "teal"), tmp_path / "served.png", SERVED)
    result = run_sana("gen", "--from", str(image), "-o", str(tmp_path / "again.png"))
    line = assert_one_line_error(result)
    assert "made by a server with its LoRA 'style' (sha256 abababababab...)" in line
    assert "--server URL" in line and "--lora FILE" in line
    assert not (tmp_path / "again.png").exists()


def test_a_replay_sends_the_served_lora_by_its_name(tmp_path):
    from sana_cli.replay import served_lora_args

    image = save_image(Image.new("RGB", (32, 32), "teal"), tmp_path / "served.png", SERVED)
    assert served_lora_args(image) == ["style:0.8"]
    local = replace(SERVED, loras=[{"path": str(tmp_path / "mine.safetensors"), "scale": 0.5}])
    assert served_lora_args(save_image(Image.new("RGB", (32, 32)), tmp_path / "local.png", local)) == ["mine:0.5"]
