"""`dataset`: verified pairs to mlx-lm chat JSONL, with seeded splits, length stats and template hygiene.

    mlx-partner dataset                      # data/pairs/*.jsonl -> data/{train,valid,test}.jsonl
    mlx-partner dataset --pairs mine.jsonl   # add hand-written pairs ({question, answer} per line)

    pairs.py          reading pairs files (generate's and hand-written), bad lines, exact duplicates
    duplicates.py     near-duplicate groups (question and answer alike, capped), boundary echoes (pure)
    splits.py         plan_splits (pure): per-theme shares, kinds balanced, near-duplicates together
    stats.py          token-length statistics
    system_prompt.py  the system prompt from profile.md, saved as data/system_prompt.txt
    manifest.py       data/dataset.json: the split hash and ids that vouch for the files
    write.py          run_dataset: the stage itself, and the report as text

Prompts go through the model's chat template with `mlx_partner.prompts`, which `chat` and `eval`
use too, so the model sees in chat exactly what it saw in training. Import from the defining
module; the names below are the package's public API.
"""

from .duplicates import Grouping, drop_boundary_echoes, group_pairs, near_duplicate_groups
from .manifest import dataset_hash, load_manifest, manifest_path, previous_test_ids
from .pairs import Pair, drop_duplicates, pair_files, read_pairs
from .splits import SplitPlan, plan_splits, split_capacity
from .stats import LengthStats, length_stats
from .system_prompt import load_system_prompt, resolve_system_prompt, system_prompt_from_profile
from .write import DatasetReport, format_report, run_dataset

__all__ = [
    "DatasetReport",
    "Grouping",
    "LengthStats",
    "Pair",
    "SplitPlan",
    "dataset_hash",
    "drop_boundary_echoes",
    "drop_duplicates",
    "format_report",
    "group_pairs",
    "length_stats",
    "load_manifest",
    "load_system_prompt",
    "manifest_path",
    "near_duplicate_groups",
    "pair_files",
    "plan_splits",
    "previous_test_ids",
    "read_pairs",
    "resolve_system_prompt",
    "run_dataset",
    "split_capacity",
    "system_prompt_from_profile",
]
