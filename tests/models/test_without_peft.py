"""rlft without peft installed (issue 18, item 11): TRL 0.7 made peft optional and tested that.

Each check runs in a fresh interpreter where ``sys.modules["peft"] = None``: importing peft then
raises ImportError and ``importlib.util.find_spec("peft")`` answers None, which is what both rlft
and transformers see when the package is not installed.
"""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    '''
    import sys, warnings
    sys.modules["peft"] = None
    warnings.simplefilter("ignore")
    model_dir = sys.argv[1]

    import rlft
    from rlft import AutoModelForCausalLMWithValueHead, SFTTrainer, is_peft_available
    assert not is_peft_available()

    # the non-peft features work
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)
    assert not model.is_peft_model

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    args = TrainingArguments(output_dir=sys.argv[2], report_to=[], use_cpu=True, max_steps=1, save_strategy="no",
                             per_device_train_batch_size=2, disable_tqdm=True)
    data = Dataset.from_dict({"text": ["the value is returned.", "return a new list."]})
    SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=data,
               processing_class=tok, dataset_text_field="text", max_seq_length=16).train()

    # a peft feature names the extra to install
    class NotAPeftConfig: pass
    attempts = {
        "value head": lambda: AutoModelForCausalLMWithValueHead.from_pretrained(model_dir, peft_config=NotAPeftConfig()),
        "sft": lambda: SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=data,
                                  processing_class=tok, dataset_text_field="text", max_seq_length=16,
                                  peft_config=NotAPeftConfig()),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except ImportError as err:
            assert 'pip install "rlft[peft]"' in str(err), (name, err)
        else:
            raise SystemExit(f"{name}: no ImportError without peft")
    print("OK")
    '''
)


@pytest.mark.slow  # a fresh interpreter that imports transformers and trains a step: ~15 s here
def test_rlft_works_without_peft_and_peft_features_name_the_extra(model_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, model_path("gpt2"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=240,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
