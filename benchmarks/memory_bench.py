"""Peak memory of the log-prob gather and of reference models, measured in spawned children.

    python benchmarks/memory_bench.py

Prints peak RSS increase (MiB) for:
- the naive ``log_softmax(logits.float()).gather(...)`` against rlft's chunked
  ``selected_log_probs`` on bf16 logits of shape (4, 256, 4096);
- a full frozen reference copy against one sharing 11 of 12 blocks, for a
  ~10M-parameter GPT-2 with a value head.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rlft.utils.memory import peak_rss_delta  # noqa: E402
from tests.functional.test_logprobs import _chunked_run, _inputs, _naive_run  # noqa: E402
from tests.models.test_reference import _big_model, _copy_full, _copy_shared  # noqa: E402

MIB = 2**20


def main() -> None:
    naive = peak_rss_delta(_naive_run, _inputs) / MIB
    chunked = peak_rss_delta(_chunked_run, _inputs) / MIB
    print(f"log-probs (4x256x4096 bf16): naive {naive:.1f} MiB, rlft chunked {chunked:.1f} MiB, ratio {chunked / naive:.2f}")
    full = peak_rss_delta(_copy_full, _big_model) / MIB
    shared = peak_rss_delta(_copy_shared, _big_model) / MIB
    print(f"reference model (GPT-2 12x256): full copy {full:.1f} MiB, sharing 11 blocks {shared:.1f} MiB, ratio {shared / full:.2f}")


if __name__ == "__main__":
    main()
