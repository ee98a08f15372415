"""Language models with a scalar value head, for PPO.

The value head maps the last hidden state at every position to one number, the
critic's estimate of the return from that token on. It reads exactly the hidden
state the language-model head reads (the final layer's output), so one forward
yields logits and values together.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from .modeling_base import PreTrainedModelWrapper

#: Default standard deviation of the "normal" value-head initialisation (TRL 0.7's default).
DEFAULT_V_HEAD_INIT_RANGE = 0.2
V_HEAD_INIT_STRATEGIES = (None, "normal")


def _hidden_size(config) -> int:
    for attr in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    text = getattr(config, "text_config", None)
    if text is not None:
        return _hidden_size(text)
    raise ValueError(f"Cannot find the hidden size in config {type(config).__name__}; it has none of hidden_size/n_embd/d_model.")


def _set_cache(kwargs: dict, past_key_values) -> None:
    """Pass the KV cache as ``cache``: transformers 5 renamed ``past_key_values`` and warns on the old name."""
    if past_key_values is not None:
        if kwargs.get("cache") is not None:
            raise ValueError("Pass the KV cache once: as past_key_values (TRL's name) or as cache, not both.")
        kwargs["cache"] = past_key_values


def _cache_of(out):
    """The cache of a model output, read under its transformers 5 name (``out.past_key_values`` warns)."""
    return out.get("cache") if hasattr(out, "get") else getattr(out, "cache", None)


class ValueHead(nn.Module):
    """Dropout, then a linear map from the hidden size to one value per position.

    hidden_states: (B, T, H) -> values (B, T), fp32. The head's parameters keep
    whatever dtype they are given (fp32 by default, the model's dtype after
    ``model.to(dtype)``); the input is cast to that dtype and the output to fp32.
    """

    def __init__(self, config, summary_dropout_prob: float | None = None):
        super().__init__()
        if summary_dropout_prob is None:
            summary_dropout_prob = getattr(config, "summary_dropout_prob", None)
        self.dropout = nn.Dropout(summary_dropout_prob) if summary_dropout_prob else nn.Identity()
        self.summary = nn.Linear(_hidden_size(config), 1)

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = self.dropout(hidden_states.to(self.summary.weight.dtype))
        return self.summary(hidden_states).squeeze(-1).float()  # (B, T)


class _ValueHeadMixin:
    supported_args = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")

    def _check_lm_head(self) -> None:
        """A value-head model needs the language-model head's logits: reject a bare backbone early.

        ``GPT2Model`` or ``T5Model`` (``AutoModel``) would otherwise load fine and fail at the first
        forward, far from the mistake.
        """
        model = self.pretrained_model
        get_output = getattr(model, "get_output_embeddings", None)
        has_head = any(hasattr(model, name) for name in self.lm_head_namings)
        if not has_head and (get_output is None or get_output() is None):
            raise ValueError(
                f"{type(self).__name__} needs a model with a language-model head, but {type(model).__name__} has none "
                f"(no {' / '.join(self.lm_head_namings)}). Load it with {self.transformers_parent_class.__name__} "
                "(e.g. GPT2LMHeadModel, T5ForConditionalGeneration), not AutoModel."
            )

    def _build_value_head(self, kwargs) -> None:
        self._check_lm_head()
        strategy = kwargs.get("v_head_init_strategy")
        if strategy not in V_HEAD_INIT_STRATEGIES:
            raise ValueError(f"v_head_init_strategy must be one of {V_HEAD_INIT_STRATEGIES}, got {strategy!r}.")
        self.v_head = ValueHead(self.pretrained_model.config, summary_dropout_prob=kwargs.get("summary_dropout_prob"))
        device = next(self.pretrained_model.parameters()).device
        self.v_head.to(device)
        self._init_weights(**kwargs)

    def _init_weights(self, **kwargs) -> None:
        """Initialise the value head: PyTorch's default Linear init, or N(0, range) weights and zero bias for "normal"."""
        strategy = kwargs.get("v_head_init_strategy")
        if strategy == "normal":
            init_range = kwargs.get("v_head_initializer_range", DEFAULT_V_HEAD_INIT_RANGE)
            self.v_head.summary.weight.data.normal_(mean=0.0, std=init_range)
            self.v_head.summary.bias.data.zero_()

    def generate(self, *args, **kwargs):
        """Calls the wrapped model's ``generate`` with the same arguments."""
        return self.pretrained_model.generate(*args, **kwargs)

    @staticmethod
    def _pack(logits, loss, value, past, return_past_key_values):
        if return_past_key_values:
            return (logits, loss, value, past)
        return (logits, loss, value)


class AutoModelForCausalLMWithValueHead(_ValueHeadMixin, PreTrainedModelWrapper):
    """A causal language model (any ``AutoModelForCausalLM`` architecture) with a value head.

    Args:
        pretrained_model: the causal LM to wrap (a transformers or peft model).
        **kwargs: value-head options: ``summary_dropout_prob`` (dropout before the
            head, default None = none), ``v_head_initializer_range`` (std of the
            "normal" init, default 0.2), ``v_head_init_strategy`` (None for
            PyTorch's default init, or "normal").
    """

    transformers_parent_class = AutoModelForCausalLM
    lm_head_namings = ("lm_head", "embed_out", "output_projection")

    def __init__(self, pretrained_model, **kwargs):
        super().__init__(pretrained_model, **kwargs)
        self._build_value_head(kwargs)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, return_past_key_values=False, **kwargs):
        """Run the wrapped model; return ``(lm_logits, loss, value)``.

        input_ids, attention_mask: (B, T). ``past_key_values`` (TRL's name) or ``cache``
        (transformers 5's) is the KV cache to continue from. Returns logits (B, T, V) in the
        model's dtype, the model's loss (None without labels) and values (B, T) in fp32; with
        ``return_past_key_values=True`` the cache is appended as a fourth item.
        """
        kwargs["output_hidden_states"] = True
        kwargs.setdefault("return_dict", True)
        _set_cache(kwargs, past_key_values)
        if self.is_peft_model and getattr(self.pretrained_model.active_peft_config, "peft_type", None) == "PREFIX_TUNING":
            kwargs.pop("cache", None)  # prefix tuning supplies the cache itself
        out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        value = self.v_head(out.hidden_states[-1])  # (B, T)
        return self._pack(out.logits, out.loss, value, _cache_of(out), return_past_key_values)


class AutoModelForSeq2SeqLMWithValueHead(_ValueHeadMixin, PreTrainedModelWrapper):
    """An encoder-decoder model (any ``AutoModelForSeq2SeqLM`` architecture, e.g. T5, BART) with a value head
    on the decoder's last hidden state.

    Args:
        pretrained_model: the seq2seq model to wrap.
        **kwargs: value-head options, as for `AutoModelForCausalLMWithValueHead`.
    """

    transformers_parent_class = AutoModelForSeq2SeqLM
    lm_head_namings = ("lm_head", "embed_out", "output_projection")
    is_encoder_decoder = True

    def __init__(self, pretrained_model, **kwargs):
        super().__init__(pretrained_model, **kwargs)
        self._build_value_head(kwargs)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, return_past_key_values=False, **kwargs):
        """Run the wrapped model (pass ``decoder_input_ids`` or ``labels``); return ``(lm_logits, loss, value)``.

        Values (B, T_dec) are read from the decoder's last hidden state.
        """
        kwargs["output_hidden_states"] = True
        kwargs.setdefault("return_dict", True)
        _set_cache(kwargs, past_key_values)
        out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        value = self.v_head(out.decoder_hidden_states[-1])  # (B, T_dec)
        return self._pack(out.logits, out.loss, value, _cache_of(out), return_past_key_values)
