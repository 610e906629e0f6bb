"""Hydra composition: recipes, overrides reaching constructors, unknown keys refused."""
from __future__ import annotations

import pytest

from helpers.commands import REPO, compose
from seq2seq.config import to_dict
from seq2seq.models.model import build_model


def composed(*overrides: str):
    return compose("train", *overrides)


def test_recipe_selects_groups_and_values():
    cfg = composed("recipe=multi30k_en_de_transformer")
    assert cfg.name == "multi30k_en_de_transformer"
    assert cfg.model.embed_dim == 256 and cfg.trainer.max_minutes == 30


def test_override_after_recipe_reaches_the_module():
    cfg = composed("recipe=multi30k_en_de_transformer", "model.encoder.layers=2", "model.decoder.ffn_dim=96",
                   "model.embed_dim=32", "model.encoder.heads=2", "model.decoder.heads=2", "model.attention.heads=2",
                   "model.dropout=0.3")
    model = build_model(to_dict(cfg.model), 100, 100)
    assert len(model.encoder.layers) == 2
    assert model.decoder.layers[0].ffn.up.out_features == 96
    assert model.encoder.dropout.p == 0.3
    assert model.encoder.embed is model.decoder.embed  # shared vocabulary, shared embedding
    assert model.output_layer.weight is model.decoder.embed.weight


def test_unknown_command_line_key_is_an_error():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"Could not override 'model.encoder.layer'"):
        composed("model.encoder.layer=2")


def test_unknown_key_inside_a_group_is_named():
    cfg = composed("+model.encoder.n_layers=3")
    with pytest.raises(ValueError, match="model.encoder.*n_layers"):
        build_model(to_dict(cfg.model), 100, 100)


def test_a_transformer_recipe_with_an_rnn_attention_is_refused_by_name():
    # the recipe's model.attention.heads is left over; the pairing is named before that key is
    cfg = composed("recipe=multi30k_en_de_transformer", "model/attention=bahdanau")
    with pytest.raises(ValueError, match="model/decoder=transformer cannot use model/attention=bahdanau.*multihead"):
        build_model(to_dict(cfg.model), 100, 100)


def test_shared_embeddings_need_a_joint_vocabulary():
    cfg = composed()
    with pytest.raises(ValueError, match="joint vocabulary"):
        build_model(to_dict(cfg.model), 100, 120)


def test_every_config_group_folder_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"seq2seq.conf." + ".".join(d.relative_to(REPO / "conf").parts)
               for d in (REPO / "conf").rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}
    assert folders - listed == set(), "add these config groups to [tool.setuptools] packages in pyproject.toml"
