"""widgets.ModelLoader: loads through the form, shows the config, reports errors."""

import pytest

from widgets import ModelLoader, config_table_html


def test_model_loader_loads_and_shows_config(tiny_checkpoints):
    seen = []
    loader = ModelLoader(source=tiny_checkpoints["qwen3"][0], on_loaded=seen.append)
    lm = loader.load()
    assert loader.model is lm and seen == [lm]
    assert "Qwen3ForCausalLM" in loader.details.value
    assert "Loaded" in loader.status.value and not loader.button.disabled
    assert "<td>24</td>" in config_table_html(lm)  # head_dim


def test_model_loader_shows_errors(tmp_path):
    loader = ModelLoader(source=str(tmp_path / "missing"))
    with pytest.raises(ValueError):
        loader.load()
    assert "Error" in loader.status.value and "not found" in loader.status.value
    assert loader.model is None and not loader.button.disabled
