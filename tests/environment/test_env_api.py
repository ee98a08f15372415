"""TRL 0.7.10's public paths and signatures of trl.environment, and the calculator example script."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from .._scripts import load_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tools_calculator.py"


def test_import_paths():
    import rlft
    import rlft.environment
    from rlft import TextEnvironment, TextHistory
    from rlft.environment.base_environment import TextEnvironment as Deep

    assert TextEnvironment is rlft.environment.TextEnvironment is Deep
    assert TextHistory is rlft.environment.TextHistory
    assert {"TextEnvironment", "TextHistory"} <= set(rlft.__all__)
    assert hasattr(rlft.environment, "StringStoppingCriteria")


def test_trl_signatures_and_methods():
    from rlft.environment import StringStoppingCriteria, TextEnvironment, TextHistory

    params = inspect.signature(TextEnvironment.__init__).parameters
    trl = {"model": None, "tokenizer": None, "tools": None, "reward_fn": None, "prompt": None, "max_turns": 4,
           "max_tool_reponse": 100, "max_length": None, "generation_kwargs": None}
    assert list(params)[1:10] == list(trl)  # TRL's positional order, rlft's keyword-only options after
    assert {name: params[name].default for name in trl} == trl
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(params)[10:])
    for method in ("run", "step", "parse_tool_call", "compute_reward", "generate", "tasks_end_check", "task_end_check"):
        assert callable(getattr(TextEnvironment, method)), method
    assert list(inspect.signature(TextHistory.__init__).parameters) == ["self", "text", "tokens", "system"]
    for method in ("append_segment", "complete", "split_query_response_tokens", "show_text", "show_tokens",
                   "show_colour_legend"):
        assert callable(getattr(TextHistory, method)), method
    assert isinstance(TextHistory.last_text_segment, property)
    assert list(inspect.signature(StringStoppingCriteria.__init__).parameters)[1:3] == ["stop_strings", "tokenizer"]


def test_unknown_keyword_fails():
    from rlft import TextEnvironment

    with pytest.raises(TypeError, match="unexpected keyword"):
        TextEnvironment(max_tool_respons=3)


@pytest.mark.filterwarnings("ignore:No dataset is provided")
def test_calculator_example_runs_on_a_tiny_model(model_path):
    """examples/tools_calculator.py: TRL 0.7.10's tool-example pattern with the import changed to rlft."""
    source = EXAMPLE.read_text()
    assert "from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, TextEnvironment" in source
    code = [line for line in source.splitlines() if line.startswith(("import", "from"))]
    assert not any("trl" in line for line in code)
    module = load_script("examples/tools_calculator.py", "tools_calculator")
    assert module.simple_calculator("12*3") == "36" and module.simple_calculator("5-9") == "-4"
    with pytest.raises(ValueError, match="cannot compute"):
        module.simple_calculator("2**8")
    rewards = module.exact_match_reward(["Result=10<submit>", "Result=11<submit>", "Result=10"], answers=[10, 10, 10])
    assert [float(r) for r in rewards] == [1.0, 0.0, 0.0]
    histories = module.main(["--smoke", "--model_name", model_path("gpt2")])
    assert len(histories) == 4 and all(h.completed for h in histories)
