"""prefkit.data: typed preference records, readers (``load``), validation, converters and writers.

See ``docs/data.md``. Importing this package does not import torch (``batch``/``encode`` do).
"""

from prefkit.data.condition import UserConditioning, condition_on_users, user_markers, users_of
from prefkit.data.convert import (
    attributes_to_score,
    convert,
    from_trl,
    pairs_to_unpaired,
    ranking_to_pairs,
    ratings_to_pairs,
    to_pairs,
    to_trl,
)
from prefkit.data.personas import PersonaConfig, Personas, Statement, make_personas, read_statements
from prefkit.data.readers import FORMATS, Records, load, read, row_to_records
from prefkit.data.records import (
    Completion,
    Message,
    Pair,
    Prompt,
    Ranking,
    Rating,
    Record,
    Role,
    Unpaired,
    is_chat,
    kind_of,
    num_chars,
    text_of,
)
from prefkit.data.summary import check_users, inspect_data
from prefkit.data.writers import write, write_jsonl, write_parquet

__all__ = [
    "FORMATS", "Completion", "Message", "Pair", "Prompt", "Ranking", "Rating", "Record", "Records", "Role",
    "Unpaired", "attributes_to_score", "convert", "from_trl", "inspect_data", "is_chat", "kind_of", "load",
    "num_chars", "pairs_to_unpaired", "ranking_to_pairs", "ratings_to_pairs", "read", "row_to_records",
    "text_of", "to_pairs", "to_trl", "write", "write_jsonl", "write_parquet",
    "PersonaConfig", "Personas", "Statement", "check_users", "make_personas", "read_statements",
    "UserConditioning", "condition_on_users", "user_markers", "users_of",
]
