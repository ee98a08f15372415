"""``rlft bon``: best-of-n sampling. For each prompt, sample n continuations, score them, keep the best.

Writes samples/best.jsonl (every candidate with its score, the best first) and one
metrics row per prompt. Ctrl-C stops after the current prompt; --resume continues
with the next one.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from typing import Optional

from ._args import CLIError, merged_config, options_from_signature
from ._run import Finish, Plot, PromptRewardOptions, done_line, finish_run, fmt, mean_of, open_run, progress, run_result

DESCRIPTION = "Best-of-n sampling (BestOfNSampler): keep the best-scored of n generations per prompt."

BAR_KEYS = {"best": "score/best", "mean": "score/mean"}
PLOTS = [Plot("bon_scores.png", ["score/best", "score/mean", "score/gain"], "Best-of-n: scores per prompt", x_title="prompt",
              points=True)]
SAMPLES = "best"

CLI_DEFAULTS: dict = {}
TINY_PRESET = dict(model_name_or_path="tiny-gpt2", dataset="tiny", reward="length", max_prompts=6, max_new_tokens=8, seed=0)


@dataclass
class BoNScriptArguments(PromptRewardOptions):
    """Where the model, prompts and scorer come from, and how candidates are generated."""

    output_dir: Optional[str] = None
    """The run directory (default: runs/bon-<date>-<time>)."""


@functools.cache
def bon_options() -> type:
    """A dataclass of BestOfNSampler's keyword arguments (sample_size, seed, n_candidates)."""
    from ..extras.best_of_n_sampler import BestOfNSampler

    return options_from_signature("BoNOptions", BestOfNSampler.__init__, doc=BestOfNSampler.__doc__)


def arguments():
    return (BoNScriptArguments, bon_options())


def run(args: BoNScriptArguments, options) -> dict:
    """Sample as configured; returns a summary (run_dir, prompts, interrupted, exit_code, ...)."""
    import torch

    from ..core import LengthSampler
    from ..extras.best_of_n_sampler import BestOfNSampler
    from ..reporting import graceful_interrupt
    from . import _load

    args.check_new_tokens()
    model_path = _load.model_folder(args.model_name_or_path)
    if _load.is_encoder_decoder(model_path):
        raise CLIError("rlft bon samples continuations of causal language models; the model in "
                       f"{model_path} is an encoder-decoder.")
    tokenizer = _load.load_tokenizer(args.tokenizer_name_or_path or model_path)
    prompts = _load.load_prompts(args)
    reward_fn, reward_what = _load.load_text_reward(args.reward, args.reward_batch_size, args.reward_label)

    run_dir = open_run(args.output_dir, args, "bon", merged_config(args, options))
    done = len(run_dir.read_samples(SAMPLES)) if args.resume else 0
    run_dir.truncate_metrics(done)
    model = _load.load_lm(model_path, tokenizer).eval()
    scored: list[tuple[list[str], list[float]]] = []

    def scorer(texts):  # BestOfNSampler calls it once per prompt with that prompt's candidates
        scores = reward_fn(texts)
        scored.append((list(texts), scores))
        return scores

    length_sampler = LengthSampler(args.min_new_tokens, args.max_new_tokens + 1) if args.min_new_tokens else (lambda: args.max_new_tokens)
    sampler = BestOfNSampler(
        model, tokenizer, scorer, length_sampler, sample_size=options.sample_size, n_candidates=options.n_candidates,
        # call k of a sampler runs under seed + k: a resumed run continues the same sequence of seeds
        seed=None if options.seed is None else options.seed + done,
    )
    with graceful_interrupt() as stop, progress(len(prompts), "bon", BAR_KEYS, unit="prompt", initial=done) as bar:
        for index in range(done, len(prompts)):
            if stop.stop:
                break
            query = torch.tensor(tokenizer(prompts[index])["input_ids"], dtype=torch.long)
            best = sampler.generate(query, do_sample=True, top_k=0, top_p=1.0, temperature=args.temperature,
                                    pad_token_id=tokenizer.pad_token_id)[0]
            texts, scores = scored.pop()
            by_text = dict(zip(texts, scores))
            row = {"prompt": prompts[index], "best": best, "best_scores": [by_text[t] for t in best],
                   "candidates": texts, "scores": scores}
            run_dir.append_samples(SAMPLES, [row])
            metrics = {"score/best": max(scores), "score/mean": statistics.fmean(scores), "score/first": scores[0],
                       "score/gain": max(scores) - statistics.fmean(scores)}
            run_dir.log_metrics(index + 1, metrics)
            bar.update(1, tokens=sum(len(tokenizer(t)["input_ids"]) for t in texts), **metrics)
        finished = len(run_dir.read_samples(SAMPLES))
    interrupted = finished < len(prompts)

    results = run_dir.read_samples(SAMPLES)
    records = run_dir.read_metrics()
    summary = "\n".join([
        f"Best-of-{options.sample_size} sampling from `{args.model_name_or_path}` on prompts from `{args.dataset}`, "
        f"scored by {reward_what}.",
        "",
        done_line("prompts done", finished, len(prompts), interrupted),
        f"- mean score of one sample: {fmt(mean_of(records, 'score/first', True, 1.0))}; of the best of {options.sample_size}: "
        f"{fmt(mean_of(records, 'score/best', True, 1.0))}",
        "",
        "`samples/best.jsonl` holds, per prompt, the kept texts (`best`, best first) with their scores and every candidate.",
    ])
    table = [{"prompt": r["prompt"], "one sample": r["candidates"][0], "its score": r["scores"][0],
              f"best of {len(r['candidates'])}": r["best"][0], "best score": r["best_scores"][0]} for r in results]
    written = finish_run(run_dir, Finish(
        command="bon", title=f"Best-of-{options.sample_size}: {args.model_name_or_path}", summary=summary, plots=PLOTS,
        samples_table=table, samples_heading="One sample against the best of n",
    ), draw_plots=args.plots)
    return run_result(run_dir, interrupted, written, prompts=finished)
