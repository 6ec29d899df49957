"""Family helpers that need no pipeline: vocabulary norm statistics, initializer token positions."""

import pytest
import torch

from dti import DTIError
from dti.families import initializer_positions, vocab_norm_stats
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
