"""The manifest fields the exporter added to edge_zo/bundle.py: weight_data and padding_side."""

from __future__ import annotations

import dataclasses

import pytest

from edge_zo.bundle import BundleError, Manifest, TrainedMatrix

pytestmark = pytest.mark.export


def manifest(**changes) -> Manifest:
    mat = TrainedMatrix("h.0.attn.c_attn.weight", (96, 32), layout="in_out",
                        inputs={"W": "w", "A": "w::A", "D": "w::D"},
                        weight_data={"location": "model.onnx.data", "offset": 64, "length": 12288})
    fields = dict(task="causal-lm", graph="lowrank", rank=4, probe_slots=2, max_seq_len=32,
                  matrices=[mat], source={}, exporter={})
    fields.update(changes)
    return Manifest(**fields)


def test_weight_data_and_padding_side_round_trip():
    import json
    original = manifest(padding_side="right")
    loaded = Manifest.from_dict(json.loads(original.to_json()))
    assert loaded == original and loaded.matrices[0].weight_data["offset"] == 64


def test_bad_weight_data_and_padding_side_are_refused():
    bad_record = dataclasses.replace(manifest().matrices[0], weight_data={"offset": 0})
    with pytest.raises(BundleError, match="weight_data keys"):
        manifest(matrices=[bad_record]).validate()
    with pytest.raises(BundleError, match="padding_side 'middle'"):
        manifest(padding_side="middle").validate()
