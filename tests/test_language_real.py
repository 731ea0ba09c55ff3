"""Both language-model recipes on the real WikiText-2 (when present): a short run beats the unigram baseline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import lightning_lottery
from lightning_lottery.app import run
from lightning_lottery.data.text import WikiText2DataModule, unigram_perplexity

CONF = Path(lightning_lottery.__file__).parent / "conf"
SUBSET = 30000  # tokens per split: the recipes' fast preset


@pytest.mark.parametrize(("recipe", "lr"), [("wikitext2_lstm", 0.01), ("wikitext2_transformer", 0.002)])
def test_short_run_on_real_wikitext2_beats_the_unigram_baseline(
    recipe: str, lr: float, shared_data: Path, tmp_path: Path
):
    if not (shared_data / "wikitext-2").is_dir():
        pytest.skip(f"WikiText-2 not found under {shared_data}")
    torch.set_num_threads(1)
    overrides = [
        f"recipe={recipe}",
        "preset=fast",
        f"experiment={recipe}",
        f"paths.output_dir={tmp_path}",
        f"paths.data_root={shared_data}",
        f"data.subset={SUBSET}",
        "trainer.max_steps=400",
        f"optim.lr={lr}",
        "data.batch_size=16",
        "trainer.val_check_interval=100",
        "lottery.rounds=1",
        "trainer.enable_progress_bar=false",
        "report=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        history = run(compose("config", overrides=overrides))["history"]
    corpus = WikiText2DataModule(root=shared_data, subset=SUBSET).corpus
    baseline = unigram_perplexity(corpus.train, corpus.test, len(corpus.vocabulary))
    for record in history:
        ppl = record["metrics"]["test_ppl"]  # at the validation-selected iteration
        assert math.isfinite(ppl) and ppl < baseline, (record["round"], ppl, baseline)
