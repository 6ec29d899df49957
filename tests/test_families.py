"""Family helpers that need no pipeline: vocabulary norm statistics, initializer token positions."""

import pytest
import torch

from dti import DTIError
from dti.families import FAMILIES, detect_family, hub_commit, initializer_positions, snapshot_commit, vocab_norm_stats
from tests import tiny


def test_vocab_norm_stats_skip_zero_rows():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    stats = vocab_norm_stats(w)
    assert stats["mean"] == pytest.approx(8 / 3) and stats["min"] == 1.0 and stats["max"] == 5.0


def test_initializer_positions_with_right_and_left_padding():
    tok = tiny.clip_tokenizer()
    init = tok("stuffed animal", add_special_tokens=False).input_ids
    assert len(init) == 2
    right = tok("stuffed animal", padding="max_length", max_length=12).input_ids
    assert initializer_positions(right, init) == [1, 2]  # after BOS
    tok.padding_side = "left"
    left = tok("stuffed animal", padding="max_length", max_length=12).input_ids
    assert initializer_positions(left, init) == [9, 10]  # 8 pads, BOS, the two tokens, EOS
    gemma = tiny.gemma_tokenizer()
    g_init = gemma("stuffed animal", add_special_tokens=False).input_ids
    g_ids = gemma("stuffed animal", padding="max_length", max_length=20).input_ids
    assert g_ids[0] == gemma.bos_token_id and initializer_positions(g_ids, g_init) == list(range(1, 1 + len(g_init)))
    with pytest.raises(DTIError, match="not in its own encoding"):
        initializer_positions(right[:2], init)


def test_snapshot_commit_reads_the_hub_cache_layout(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    path = tmp_path / "hub" / "models--org--model" / "snapshots" / commit / "unet" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    assert snapshot_commit(path) == commit
    assert snapshot_commit(str(path)) == commit
    assert snapshot_commit(tmp_path / "hub" / "models--org--model" / "snapshots" / "main" / "config.json") is None
    assert snapshot_commit(tmp_path / "model_index.json") is None


def test_hub_commit_is_none_for_local_folders_and_unknown_offline_ids(tmp_path):
    assert hub_commit(str(tmp_path)) is None
    assert hub_commit("dti-tests/no-such-model-anywhere", "main") is None  # offline and not cached


def test_a_revision_is_refused_for_a_local_folder(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    for load in (lambda: detect_family(str(tmp_path), "v1.0"),
                 lambda: FAMILIES["sd"].load_pipeline(str(tmp_path), torch.device("cpu"), torch.float32, "v1.0")):
        with pytest.raises(DTIError, match=r"revision 'v1\.0' was given, but .* is a local folder"):
            load()
    assert detect_family(str(tmp_path)) == "sd"
